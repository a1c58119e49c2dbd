"""A local company-register service on 127.0.0.1, for the demo and the tests. A development tool.

Serves ``GET /companies/search?name=&city=`` over the companies in a JSON-lines file
(the demo generator writes ``_register/companies.jsonl``), with the real register's
habits available on demand: a rate limit answered with 429 and ``Retry-After``, server
errors, slow answers and dropped connections. Faults are set in the constructor or,
while running, with ``POST /_faults`` (JSON body, same keys as :class:`Faults`).

    python -m crm_pipelines.devtools.register_server data/landing/_register/companies.jsonl --port 8765
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from rapidfuzz import fuzz

from ..core.cleaning.addresses import street_key
from ..core.cleaning.companies import parse_company_name
from ..core.platform.http import LocalHTTPServer


@dataclass
class Faults:
    fail_next: int = 0          # the next N searches answer 503
    error_rate: float = 0.0     # share of searches answered 500
    drop_next: int = 0          # the next N searches close the connection without an answer
    slow_seconds: float = 0.0   # delay before every answer
    limit_per_hour: int = 0     # 0: no limit; else 429 with Retry-After beyond it
    retry_after: int = 1


class RegisterServer:
    def __init__(self, companies: list[dict], port: int = 0, faults: Faults | None = None, seed: int = 0):
        self.faults = faults or Faults()
        self.requests = 0
        self._rng = random.Random(seed)
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()
        self._index: dict[str, list[dict]] = {}
        for c in companies:
            key = parse_company_name(c.get("name")).key
            for token in set(key.split()):
                self._index.setdefault(token, []).append({**c, "_key": key, "_city": street_key(c.get("city"))})
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                if self.path != "/_faults":
                    return self._send(404, {"error": "not found"})
                length = int(self.headers.get("Content-Length", 0))
                update = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.faults = Faults(**{**asdict(server.faults), **update})
                self._send(200, asdict(server.faults))

            def do_GET(self):  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/companies/search":
                    return self._send(404, {"error": "not found"})
                with server._lock:
                    server.requests += 1
                    f = server.faults
                    if f.slow_seconds:
                        time.sleep(f.slow_seconds)
                    if f.drop_next > 0:
                        f.drop_next -= 1
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return None
                    if f.limit_per_hour:
                        now = time.monotonic()
                        while server._calls and now - server._calls[0] > 3600:
                            server._calls.popleft()
                        if len(server._calls) >= f.limit_per_hour:
                            return self._send(429, {"error": "rate limit"}, {"Retry-After": str(f.retry_after)})
                        server._calls.append(now)
                    if f.fail_next > 0:
                        f.fail_next -= 1
                        return self._send(503, {"error": "unavailable"})
                    if f.error_rate and server._rng.random() < f.error_rate:
                        return self._send(500, {"error": "internal"})
                q = parse_qs(url.query)
                name = (q.get("name") or [""])[0]
                city = (q.get("city") or [""])[0]
                if not name:
                    return self._send(400, {"error": "name is required"})
                self._send(200, {"results": server.search(name, city)})

        self.httpd = LocalHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def search(self, name: str, city: str) -> list[dict]:
        key = parse_company_name(name).key
        city_key = street_key(city) if city else None
        seen, out = set(), []
        for token in set(key.split()):
            for c in self._index.get(token, []):
                if id(c) in seen:
                    continue
                seen.add(id(c))
                if city_key and c["_city"] != city_key:
                    continue
                if fuzz.token_set_ratio(key, c["_key"]) >= 80:
                    out.append({k: v for k, v in c.items() if not k.startswith("_")})
        return out[:5]

    def start(self) -> "RegisterServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "RegisterServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "RegisterServer":
        with open(path, encoding="utf-8") as fh:
            return cls([json.loads(line) for line in fh if line.strip()], **kw)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("companies", type=Path)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--limit-per-hour", type=int, default=0)
    args = p.parse_args()
    server = RegisterServer.from_file(args.companies, port=args.port, faults=Faults(limit_per_hour=args.limit_per_hour))
    print(f"register on {server.url} ({sum(len(v) for v in server._index.values())} index entries); Ctrl-C stops")
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
