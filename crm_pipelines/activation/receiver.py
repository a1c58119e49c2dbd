"""The webhook endpoint the marketing tool calls: ``POST /brevo?token=...`` -> a landing file of
``email_engagement`` (see :mod:`crm_pipelines.core.activation.webhooks`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from ..core.activation.webhooks import land_events, token_ok
from ..core.platform.http import LocalHTTPServer

MAX_BODY = 5 * 1024 * 1024   # Brevo's batches: up to 500 events


class WebhookReceiver:
    def __init__(self, landing_root: str | Path, token: str, port: int = 0, host: str = "127.0.0.1"):
        if not token:
            raise ValueError("the webhook receiver needs a token: Brevo's webhooks are unsigned")
        self.landing_root = Path(landing_root)
        self.token = token
        self.files: list[Path] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):  # payloads hold addresses: nothing of them in logs
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if 0 < length <= MAX_BODY else b""
                if not token_ok(parse_qs(url.query).get("token", [None])[-1], receiver.token):
                    receiver.refused += 1
                    return self._answer(401, {"error": "unknown token"})
                if length > MAX_BODY:
                    return self._answer(413, {"error": "body too large"})
                try:
                    payload = json.loads(raw or b"null")
                except ValueError:
                    # A broken body still lands (as a line the load quarantines), so nothing vanishes unseen.
                    payload = {"unparsable_body": raw[:2000].decode("utf-8", "replace")}
                if payload is None:
                    return self._answer(400, {"error": "empty body"})
                path = land_events(receiver.landing_root, payload)
                if path is not None:
                    receiver.files.append(path)
                return self._answer(200, {"landed": path.name if path else None})

        self.httpd = LocalHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def url(self, path: str = "/brevo") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def start(self) -> "WebhookReceiver":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
