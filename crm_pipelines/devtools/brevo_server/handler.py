"""The HTTP side: routes Brevo's URLs to the server's methods, checks the api-key, applies the rate
limits and the injected faults, and answers in Brevo's shapes."""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

if TYPE_CHECKING:
    from . import BrevoServer

ROUTES = [
    ("GET", r"/v3/contacts/attributes", "attributes"),
    ("POST", r"/v3/contacts/attributes/(?P<category>[^/]+)/(?P<name>[^/]+)", "create_attribute"),
    ("GET", r"/v3/contacts/folders", "folders"),
    ("POST", r"/v3/contacts/folders", "create_folder"),
    ("GET", r"/v3/contacts/lists", "lists"),
    ("POST", r"/v3/contacts/lists", "create_list"),
    ("POST", r"/v3/contacts/lists/(?P<list_id>\d+)/contacts/add", "add"),
    ("POST", r"/v3/contacts/lists/(?P<list_id>\d+)/contacts/remove", "remove"),
    ("POST", r"/v3/contacts/import", "import"),
    ("POST", r"/v3/contacts/batch", "batch"),
    ("POST", r"/v3/contacts/doubleOptinConfirmation", "doi"),
    ("GET", r"/v3/contacts", "contacts"),
    ("GET", r"/v3/contacts/(?P<identifier>[^/]+)", "get_contact"),
    ("PUT", r"/v3/contacts/(?P<identifier>[^/]+)", "update_contact"),
    ("DELETE", r"/v3/contacts/(?P<identifier>[^/]+)", "delete_contact"),
    ("GET", r"/v3/processes/(?P<pid>\d+)", "process"),
    ("POST", r"/v3/events", "event"),
    ("POST", r"/v3/events/batch", "events"),
    ("POST", r"/v3/webhooks", "webhook"),
]


def handler_for(server: BrevoServer):
    routes = [(m, re.compile(p + "$"), name) for m, p, name in ROUTES]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):  # keep test output clean
            pass

        def _send(self, status: int, body, headers: dict | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: dict | list = {}
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._send(400, {"code": "bad_request", "message": "Input must be a valid JSON object"})
            if url.path.startswith("/_"):
                return self._control(method, url.path, body)
            if server.api_key and self.headers.get("api-key") != server.api_key:
                return self._send(401, {"code": "unauthorized", "message": "Key not found"})
            refused, headers = server.admit(url.path)
            if refused:
                return self._send(*refused, headers)  # 429 without Retry-After, as Brevo answers
            delay = server.delay()
            if delay:
                time.sleep(delay)
            faulted = server.fault(url.path)
            if faulted:
                return self._send(*faulted, headers)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            for m, pattern, name in routes:
                match = pattern.match(url.path)
                if match and m == method:
                    status, answer = self._dispatch(name, {k: unquote(v) for k, v in match.groupdict().items()},
                                                    body, params, len(raw))
                    return self._send(status, answer, headers)
            return self._send(404, {"code": "document_not_found", "message": f"{method} {url.path} does not exist"}, headers)

        def _dispatch(self, name: str, path: dict, body, params: dict, size: int):
            if not isinstance(body, dict) and name != "events":
                return 400, {"code": "invalid_parameter", "message": "body must be a JSON object"}
            s = server
            if name == "attributes":
                with s._lock:
                    return 200, {"attributes": list(s.attributes.values())}
            if name == "create_attribute":
                return s.create_attribute(path["category"], path["name"], body)
            if name in ("folders", "lists"):
                return s.list_page(name, params)
            if name == "create_folder":
                return s.create_folder(body)
            if name == "create_list":
                return s.create_list(body)
            if name in ("add", "remove"):
                return s.membership(int(path["list_id"]), body, add=name == "add")
            if name == "import":
                return s.import_contacts(body, size)
            if name == "batch":
                return 410, {"code": "method_not_allowed",
                             "message": "POST /v3/contacts/batch is deprecated since 30 October 2026; use /v3/contacts/import"}
            if name == "doi":
                return s.double_opt_in(body)
            if name == "contacts":
                return s.contacts_page(params)
            if name == "get_contact":
                return s.get_contact(path["identifier"])
            if name == "update_contact":
                return s.update_contact(path["identifier"], body)
            if name == "delete_contact":
                return s.delete_contact(path["identifier"])
            if name == "process":
                return s.process(int(path["pid"]))
            if name == "event":
                return s.create_events([body], batch=False)
            if name == "events":
                return s.create_events(body.get("events") if isinstance(body, dict) else None, batch=True)
            if name == "webhook":
                return s.register_webhook(body)
            raise AssertionError(name)

        def _control(self, method: str, path: str, body) -> None:
            if path == "/_stats" and method == "GET":
                return self._send(200, server.stats())
            if path == "/_faults" and method == "POST":
                server.set_faults(**body)
                return self._send(200, {"ok": True})
            if path == "/_simulate" and method == "POST":
                return self._send(200, {"events": server.simulate(body["email"], body.get("campaign", "manual"),
                                                                  body.get("reaction"))})
            if path == "/_confirm" and method == "POST":
                return self._send(200, {"confirmed": server.confirm_double_opt_in(body["email"])})
            return self._send(404, {"code": "document_not_found", "message": path})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_DELETE(self):
            self._route("DELETE")

    return Handler
