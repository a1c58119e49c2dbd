"""The HTTP side: routes HubSpot's URLs to the server's methods, checks the token, applies the rate
limit and the injected faults, and answers in HubSpot's shapes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

from .protocol import not_found, validation_error

if TYPE_CHECKING:
    from . import CrmServer


def handler_for(server: CrmServer):
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

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw or b"{}")
            except ValueError:
                return {"_invalid": True}

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            body = self._body() if method in ("POST", "PUT") else {}
            if url.path.startswith("/_"):
                return self._control(method, url.path, body)
            if server.token and self.headers.get("Authorization") != f"Bearer {server.token}":
                return self._send(401, {"status": "error", "category": "INVALID_AUTHENTICATION",
                                        "message": "Authentication credentials not found."})
            parts = url.path.strip("/").split("/")
            refused = server.admit(search=parts[-1:] == ["search"])
            if refused:
                return self._send(*refused)
            f = server.faults
            write = method in ("POST", "PUT", "PATCH", "DELETE") and parts[-1:] not in (["search"], ["read"])
            delay = server.delay() + (f.slow_write_seconds if write else 0.0)
            if delay:
                time.sleep(delay)
            if write and f.error_rate and server._rng.random() < f.error_rate:
                server.counts["500_injected"] += 1
                return self._send(500, {"status": "error", "message": "internal error"})
            if not write and f.read_error_rate and server._rng.random() < f.read_error_rate:
                server.counts["503_injected"] += 1
                return self._send(503, {"status": "error", "message": "Service Unavailable"})
            if isinstance(body, dict) and body.get("_invalid"):
                return self._send(400, validation_error("the body is not valid JSON"))
            status, out = self._dispatch(method, parts, parse_qs(url.query), body)
            if write and f.drop_rate and server._rng.random() < f.drop_rate:
                # The change is applied but the answer never arrives: the client must not create twice.
                server.counts["dropped_after_apply"] += 1
                self.close_connection = True
                return
            self._send(status, out, server.ok_headers() if status < 400 else None)

        def _dispatch(self, method: str, parts: list[str], query: dict, body: dict):
            if parts[:3] == ["crm", "v3", "objects"] and len(parts) >= 4:
                kind, rest = parts[3], parts[4:]
                if method == "GET" and not rest:
                    return server.read(kind, query)
                if method == "GET" and len(rest) == 1:
                    return server.get(kind, rest[0], query)
                if method == "POST":
                    if rest == ["batch", "upsert"]:
                        return server.upsert(kind, body)
                    if rest == ["batch", "update"]:
                        return server.update(kind, body)
                    if rest == ["batch", "read"]:
                        return server.batch_read(kind, body)
                    if rest == ["batch", "archive"]:
                        return server.archive(kind, body)
                    if rest == ["search"]:
                        return server.search(kind, body)
                    if rest == ["merge"]:
                        return server.merge(kind, str(body.get("primaryObjectId")), str(body.get("objectIdToMerge")))
                    if kind == "tasks" and rest == ["batch", "create"]:
                        return server.create_tasks(body)
                    if kind == "contacts" and rest == ["gdpr-delete"]:
                        return server.gdpr_delete(body)
            if parts[:3] == ["crm", "v3", "properties"] and len(parts) >= 4:
                kind, rest = parts[3], parts[4:]
                if method == "GET" and not rest:
                    return server.list_properties(kind)
                if method == "GET" and rest == ["groups"]:
                    return server.list_groups(kind)
                if method == "GET" and len(rest) == 1:
                    return server.get_property(kind, rest[0])
                if method == "POST" and not rest:
                    return server.create_property(kind, body)
                if method == "POST" and rest == ["groups"]:
                    return server.create_group(kind, body)
            if parts[:3] == ["crm", "v3", "lists"]:
                rest = parts[3:]
                if method == "POST" and not rest:
                    return server.create_list(body)
                if method == "GET" and len(rest) == 4 and rest[0] == "object-type-id" and rest[2] == "name":
                    return server.list_by_name(rest[1], unquote(rest[3]))
                if method == "PUT" and len(rest) == 3 and rest[1] == "memberships" and rest[2] in ("add", "remove"):
                    return server.change_members(rest[0], body, add=rest[2] == "add")
                if method == "GET" and len(rest) == 2 and rest[1] == "memberships":
                    return server.read_members(rest[0], query)
            if method == "POST" and parts[:3] == ["crm", "v4", "associations"] and parts[5:] == ["batch", "associate",
                                                                                                   "default"]:
                return server.associate(parts[3], parts[4], body)
            if method == "POST" and parts[:3] == ["crm", "v4", "associations"] and parts[5:] == ["batch", "read"]:
                return server.read_associations(parts[3], parts[4], body)
            if method == "GET" and parts[:3] == ["crm", "v3", "pipelines"] and len(parts) == 4:
                return server.pipelines(parts[3])
            return 404, not_found(f"no route for {method} /{'/'.join(parts)}")

        def _control(self, method: str, path: str, body: dict) -> None:
            if path == "/_faults" and method == "POST":
                server.set_faults(**body)
                return self._send(200, asdict(server.faults))
            if path == "/_stats":
                return self._send(200, server.stats())
            if path == "/_move_deal" and method == "POST":
                # What a rep does in the CRM (benchmarks drive a server in another process this way).
                server.move_deal(str(body.get("id")), str(body.get("stage")), at=body.get("at"))
                return self._send(200, {"moved": body.get("id")})
            if path.startswith("/_count"):
                return self._send(200, server.count(parse_qs(urlparse(self.path).query).get("type", ["contacts"])[0]))
            return self._send(404, {"status": "error", "message": "unknown control path"})

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

        def do_PUT(self):  # noqa: N802
            self._route("PUT")

    return Handler
