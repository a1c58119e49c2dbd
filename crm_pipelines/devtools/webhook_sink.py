"""A chat webhook on 127.0.0.1 that keeps what it receives: a stand-in for a Slack incoming webhook
or a Teams workflow URL, for the demo and the tests. A development tool.

It answers like Slack (``200 ok``) and can be told to fail (``fail_next`` requests answer 500) or
to throttle (``429`` with ``Retry-After``), so alerting code can be tested against real HTTP.

    python -m crm_pipelines.devtools.webhook_sink --port 8767
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler

from ..core.platform.http import LocalHTTPServer


class WebhookSink:
    def __init__(self, port: int = 0, fail_next: int = 0, throttle_next: int = 0):
        self.received: list[dict] = []
        self.fail_next = fail_next
        self.throttle_next = throttle_next
        self.refused = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.httpd = LocalHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "WebhookSink":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "WebhookSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def texts(self) -> list[str]:
        """Every accepted message as plain text: Slack's text and blocks, or the Adaptive Card's text
        blocks and facts."""
        with self._lock:
            messages = list(self.received)
        out = []
        for m in messages:
            parts = [m["text"]] if "text" in m else []
            for block in m.get("blocks") or []:
                parts.append((block.get("text") or {}).get("text", ""))
                parts += [e.get("text", "") for e in block.get("elements") or []]
            for att in m.get("attachments") or []:
                for b in (att.get("content") or {}).get("body", []):
                    parts.append(b.get("text", ""))
                    parts += [f"{f['title']}: {f['value']}" for f in b.get("facts") or []]
            out.append("\n".join(p for p in parts if p))
        return out

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Blocks until ``count`` messages arrived (event-driven, not polling) or the timeout passed."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    def _accept(self, body: dict) -> tuple[int, dict]:
        with self._arrived:
            if self.throttle_next > 0:
                self.throttle_next -= 1
                self.refused += 1
                return 429, {"Retry-After": "1"}
            if self.fail_next > 0:
                self.fail_next -= 1
                self.refused += 1
                return 500, {}
            self.received.append(body)
            self._arrived.notify_all()
            return 200, {}


def _handler(sink: WebhookSink):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):
            pass

        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                status, headers, reply = 400, {}, b"invalid_payload"
            else:
                status, headers = sink._accept(body)
                reply = b"ok" if status == 200 else b"error"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(reply)

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8767)
    args = p.parse_args()
    sink = WebhookSink(args.port)
    print(f"webhook sink on {sink.url}; every message is printed; Ctrl-C stops")
    original = sink._accept

    def printing(body: dict):
        print(json.dumps(body, ensure_ascii=False))
        return original(body)

    sink._accept = printing  # type: ignore[method-assign]
    try:
        sink.httpd.serve_forever()
    except KeyboardInterrupt:
        sink.httpd.server_close()


if __name__ == "__main__":
    main()
