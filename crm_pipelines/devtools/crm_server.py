"""A local HubSpot-compatible CRM on 127.0.0.1, for the demo and the tests. A development tool.

Implements the subset of HubSpot's CRM v3 API that crm_pipelines uses, with the real
limits: at most 100 inputs per batch, a rolling 10-second rate limit answered with 429,
``Retry-After`` and the ``X-HubSpot-RateLimit-*`` headers, 207 multi-status when some rows
are invalid (malformed e-mail, e-mail owned by another contact, blocklisted after a GDPR
delete, unknown lifecycle stage), 400 for unknown properties, 401 without the token.
State lives in SQLite (a file, or memory). Faults are injected from the constructor or,
while running, with ``POST /_faults`` (JSON, keys of :class:`Faults`); ``GET /_stats``
reports what happened, including the most requests the server ever saw in one window.

    python -m crm_pipelines.devtools.crm_server --db .crm_data/crm_server.db --port 8766 --token dev-token
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ID_PROPERTY = "crm_golden_id"
PROPERTIES = {
    "contacts": {"email", "firstname", "lastname", "salutation", "phone", "mobilephone", "jobtitle", "company",
                 "address", "zip", "city", "country", "lifecyclestage", "hubspot_owner_id", ID_PROPERTY,
                 "crm_account_golden_id", "academic_title", "lead_score", "lead_grade", "erp_customer_number",
                 "associatedcompanyid", "crm_email_consent", "crm_phone_consent", "crm_post_consent"},
    "companies": {"name", "domain", "phone", "address", "zip", "city", "country", "industry", "numberofemployees",
                  "lifecyclestage", "hubspot_owner_id", ID_PROPERTY, "legal_form", "register_court",
                  "register_number", "vat_id", "erp_customer_number", "annualrevenue"},
}
PROPERTIES["tasks"] = {"hs_task_subject", "hs_task_body", "hs_timestamp", "hs_task_status", "hs_task_priority",
                       "hubspot_owner_id"}
LIFECYCLE_STAGES = {"subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                    "evangelist", "other"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
MAX_BATCH = 100


@dataclass
class Faults:
    error_rate: float = 0.0      # share of write requests answered 500 before anything is applied
    throttle_rate: float = 0.0   # share of requests answered 429 (with Retry-After) although under the limit
    drop_rate: float = 0.0       # share of write requests applied, then the connection closed unanswered
    fail_next: int = 0           # the next N requests answer 503
    slow_seconds: float = 0.0    # delay before every answer
    retry_after: float = 1.0     # what injected 429s ask for


class CrmServer:
    def __init__(self, db: str | Path = ":memory:", port: int = 0, token: str | None = None,
                 max_requests: int = 190, window_seconds: float = 10.0, faults: Faults | None = None, seed: int = 0):
        self.token = token
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._window: deque[float] = deque()
        self.peak_window = 0
        self.counts: Counter = Counter()
        # Every e-mail address any write request carried, accepted or not: lets a test prove that a
        # person never even reached the CRM's door.
        self.emails_received: Counter = Counter()
        self.gdpr_calls: list[tuple[float, str]] = []  # (time.time(), identifier): when each GDPR delete arrived
        if db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS objects (
                id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, ext_id TEXT, email TEXT,
                properties TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
            CREATE UNIQUE INDEX IF NOT EXISTS objects_ext ON objects(type, ext_id);
            CREATE INDEX IF NOT EXISTS objects_email ON objects(type, email);
            CREATE TABLE IF NOT EXISTS associations (from_type TEXT, from_id INTEGER, to_type TEXT, to_id INTEGER,
                PRIMARY KEY (from_type, from_id, to_type, to_id));
            CREATE TABLE IF NOT EXISTS blocklist (email TEXT PRIMARY KEY, deleted_at TEXT NOT NULL);
        """)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CrmServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.db.close()

    def __enter__(self) -> "CrmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_faults(self, **changes) -> None:
        with self._lock:
            self.faults = Faults(**{**asdict(self.faults), **changes})

    def seed(self, object_type: str, records: list[dict]) -> int:
        """Loads existing CRM objects ({"id", "properties"}) as they are, e.g. the demo's CRM snapshot."""
        now = _now()
        with self._lock:
            self.db.execute("BEGIN")
            for r in records:
                props = {k: v for k, v in (r.get("properties") or {}).items() if v is not None}
                self.db.execute("INSERT OR REPLACE INTO objects (id, type, ext_id, email, properties, created_at, updated_at) "
                                "VALUES (?,?,?,?,?,?,?)", (int(r["id"]), object_type, props.get(ID_PROPERTY), _email(props),
                                                           json.dumps(props), r.get("createdAt") or now,
                                                           r.get("updatedAt") or now))
            self.db.execute("COMMIT")
        return len(records)

    def seed_from_landing(self, landing: str | Path) -> dict[str, int]:
        """Seeds from the CRM snapshot pages of a landing zone (latest version of each object wins)."""
        out = {}
        known_elsewhere: dict[str, dict] = {}
        for source, object_type in (("crm_contacts", "contacts"), ("crm_accounts", "companies")):
            latest: dict[str, dict] = dict(known_elsewhere) if object_type == "companies" else {}
            for page in sorted(Path(landing, source).glob("*/*.json")):
                try:
                    results = json.loads(page.read_text(encoding="utf-8")).get("results", [])
                except (ValueError, AttributeError):
                    continue  # the demo's deliberately broken files; ingestion quarantines them
                for r in results:
                    if isinstance(r, dict) and str(r.get("id", "")).isdigit() and not r.get("archived"):
                        latest[str(r["id"])] = r
                        company = str((r.get("properties") or {}).get("associatedcompanyid") or "")
                        if object_type == "contacts" and company.isdigit():
                            # The pages hold the day's changes only; a contact's company exists in the CRM
                            # even when it did not change in the days the snapshot covers.
                            known_elsewhere.setdefault(company, {"id": company, "properties": {
                                "name": (r.get("properties") or {}).get("company")}})
            out[object_type] = self.seed(object_type, list(latest.values()))
        return out

    # ------------------------------------------------------------------ inspection (tests, demo)

    def objects(self, object_type: str, archived: bool | None = False) -> list[dict]:
        with self._lock:
            sql = "SELECT id, ext_id, properties, archived FROM objects WHERE type = ?"
            args: list = [object_type]
            if archived is not None:
                sql += " AND archived = ?"
                args.append(int(archived))
            rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [{"id": str(i), "ext_id": e, "properties": json.loads(p), "archived": bool(a)} for i, e, p, a in rows]

    def associations(self) -> list[tuple[str, str, str, str]]:
        with self._lock:
            rows = self.db.execute("SELECT from_type, from_id, to_type, to_id FROM associations").fetchall()
        return [(a, str(b), c, str(d)) for a, b, c, d in rows]

    def count(self, object_type: str) -> dict:
        """Live objects of a type and how many distinct golden IDs they carry (duplicates show as a gap)."""
        with self._lock:
            n, distinct = self.db.execute("SELECT COUNT(*), COUNT(DISTINCT ext_id) FROM objects WHERE type = ? "
                                          "AND archived = 0", (object_type,)).fetchone()
        return {"objects": n, "distinct_ext_ids": distinct}

    def stats(self) -> dict:
        with self._lock:
            return {"counts": dict(self.counts), "peak_window": self.peak_window, "max_requests": self.max_requests,
                    "window_seconds": self.window_seconds, "faults": asdict(self.faults)}

    # ------------------------------------------------------------------ request handling

    def admit(self) -> tuple[int, dict, dict] | None:
        """Rate limit and injected faults; None to go on, else the error answer."""
        with self._lock:
            self.counts["requests"] += 1
            f = self.faults
            now = time.monotonic()
            while self._window and self._window[0] <= now - self.window_seconds:
                self._window.popleft()
            if len(self._window) >= self.max_requests:
                self.counts["429_limit"] += 1
                wait = self._window[0] + self.window_seconds - now
                return 429, _rate_body(), self._limit_headers(0, wait)
            if f.throttle_rate and self._rng.random() < f.throttle_rate:
                self.counts["429_injected"] += 1
                return 429, _rate_body(), self._limit_headers(self.max_requests - len(self._window), f.retry_after)
            self._window.append(now)
            self.peak_window = max(self.peak_window, len(self._window))
            if f.fail_next > 0:
                self.faults = Faults(**{**asdict(f), "fail_next": f.fail_next - 1})
                self.counts["503_injected"] += 1
                return 503, {"status": "error", "message": "Service unavailable"}, {}
        return None

    def _limit_headers(self, remaining: int, retry_after: float) -> dict:
        return {"X-HubSpot-RateLimit-Max": str(self.max_requests), "X-HubSpot-RateLimit-Remaining": str(max(remaining, 0)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000)),
                # Whole seconds as HTTP says; a sub-second setting (tests) is passed through as a decimal.
                "Retry-After": f"{retry_after:.3f}" if 0 < retry_after < 1 else str(max(1, math.ceil(retry_after)))}

    def ok_headers(self) -> dict:
        with self._lock:
            remaining = self.max_requests - len(self._window)
        return {"X-HubSpot-RateLimit-Max": str(self.max_requests), "X-HubSpot-RateLimit-Remaining": str(max(remaining, 0)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000))}

    def upsert(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/upsert: by our external ID (the unique property ``crm_golden_id``); creates when unknown."""
        return self._write(object_type, body, by_external_id=True)

    def update(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/update: by the CRM's own object ID; unknown IDs fail per row."""
        return self._write(object_type, body, by_external_id=False)

    def _write(self, object_type: str, body: dict, by_external_id: bool) -> tuple[int, dict]:
        inputs = body.get("inputs")
        if object_type not in PROPERTIES or not isinstance(inputs, list):
            return 400, _validation("the body needs 'inputs' and a known object type")
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        with self._lock:
            for i in inputs:
                email = (i.get("properties") or {}).get("email") if isinstance(i, dict) else None
                if email:
                    self.emails_received[str(email).strip().lower()] += 1
        ids = [str(i.get("id")) for i in inputs]
        if len(set(ids)) != len(ids):
            return 400, _validation("Duplicate IDs found in batch input")
        for i in inputs:
            if by_external_id and i.get("idProperty") != ID_PROPERTY:
                return 400, _validation(f"idProperty must be the unique property '{ID_PROPERTY}'")
            unknown = sorted(set(i.get("properties") or {}) - PROPERTIES[object_type])
            if unknown:
                return 400, {"status": "error", "category": "VALIDATION_ERROR",
                             "message": f"Property values were not valid: {', '.join(unknown)}: PROPERTY_DOESNT_EXIST"}
        now = _now()
        results, errors = [], []
        with self._lock:
            self.db.execute("BEGIN")
            for i, ident in zip(inputs, ids):
                props = {k: (None if v is None else str(v)) for k, v in (i.get("properties") or {}).items()}
                if by_external_id:
                    props[ID_PROPERTY] = ident
                    row = self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND ext_id = ?",
                                          (object_type, ident)).fetchone()
                else:
                    row = self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND id = ?",
                                          (object_type, int(ident) if ident.isdigit() else -1)).fetchone()
                    if not row:
                        errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                                       "message": f"no {object_type} object with id {ident}", "context": {"ids": [ident]}})
                        continue
                problem = self._invalid(object_type, row[0] if row else None, props)
                if problem:
                    errors.append({"status": "error", "category": "VALIDATION_ERROR", "message": problem,
                                   "context": {"ids": [ident]}})
                    continue
                if row:
                    merged = {**json.loads(row[1]), **props}
                    self.db.execute("UPDATE objects SET properties = ?, ext_id = ?, email = ?, archived = 0, updated_at = ? "
                                    "WHERE id = ?", (json.dumps(merged), merged.get(ID_PROPERTY), _email(merged), now, row[0]))
                    results.append(_object(row[0], merged, now, new=False))
                    self.counts[f"{object_type}_updated"] += 1
                else:
                    cur = self.db.execute(
                        "INSERT INTO objects (type, ext_id, email, properties, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                        (object_type, ident, _email(props), json.dumps(props), now, now))
                    results.append(_object(cur.lastrowid, props, now, new=True))
                    self.counts[f"{object_type}_created"] += 1
            self.db.execute("COMMIT")
        body_out = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": _now()}
        if errors:
            body_out.update(errors=errors, numErrors=len(errors))
            return 207, body_out
        return 200, body_out

    def _invalid(self, object_type: str, own_id: int | None, props: dict) -> str | None:
        stage = props.get("lifecyclestage")
        if stage and stage not in LIFECYCLE_STAGES:
            return f"Property values were not valid: lifecyclestage: '{stage}' is not a valid option: INVALID_OPTION"
        if object_type != "contacts" or not props.get("email"):
            return None
        email = props["email"].strip().lower()
        if not EMAIL.match(email):
            return f"Property values were not valid: email: {email} is not a valid email address: INVALID_EMAIL"
        if self.db.execute("SELECT 1 FROM blocklist WHERE email = ?", (email,)).fetchone():
            return f"Property values were not valid: email: {email} was GDPR-deleted and is blocklisted: BLOCKLISTED"
        other = self.db.execute("SELECT 1 FROM objects WHERE type = 'contacts' AND email = ? AND id != ?",
                                (email, own_id if own_id is not None else -1)).fetchone()
        if other:
            return f"Contact already exists with email {email}: CONFLICT"
        return None

    def read(self, object_type: str, query: dict) -> tuple[int, dict]:
        if object_type not in PROPERTIES:
            return 404, {"status": "error", "message": f"unknown object type {object_type}"}
        limit = min(int((query.get("limit") or ["10"])[0]), 100)
        after = int((query.get("after") or ["0"])[0] or 0)
        wanted = [p for p in ",".join(query.get("properties") or []).split(",") if p]
        with self._lock:
            rows = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects "
                                   "WHERE type = ? AND archived = 0 AND id > ? ORDER BY id LIMIT ?",
                                   (object_type, after, limit + 1)).fetchall()
        results = []
        for oid, props, created, updated in rows[:limit]:
            p = json.loads(props)
            shown = {k: p.get(k) for k in wanted} if wanted else p
            # HubSpot names the modification stamp differently per object type.
            modified = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
            shown.update({"hs_object_id": str(oid), "createdate": created, modified: updated})
            results.append({"id": str(oid), "properties": shown, "createdAt": created, "updatedAt": updated,
                            "archived": False})
        body: dict = {"results": results}
        if len(rows) > limit:
            body["paging"] = {"next": {"after": str(rows[limit - 1][0])}}
        return 200, body

    def get(self, object_type: str, object_id: str) -> tuple[int, dict]:
        with self._lock:
            row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? AND id = ? "
                                  "AND archived = 0", (object_type, int(object_id) if object_id.isdigit() else -1)).fetchone()
        if row is None:
            return 404, {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "resource not found"}
        props = json.loads(row[1])
        props.update(hs_object_id=str(row[0]), hs_lastmodifieddate=row[3])
        return 200, {"id": str(row[0]), "properties": props, "createdAt": row[2], "updatedAt": row[3], "archived": False}

    def complete_task(self, task_id: str) -> None:
        """What a rep does in the CRM when the follow-up is done (tests, demo)."""
        with self._lock:
            row = self.db.execute("SELECT properties FROM objects WHERE type = 'tasks' AND id = ?", (int(task_id),)).fetchone()
            props = {**json.loads(row[0]), "hs_task_status": "COMPLETED"}
            self.db.execute("UPDATE objects SET properties = ?, updated_at = ? WHERE id = ?",
                            (json.dumps(props), _now(), int(task_id)))

    def tasks(self) -> list[dict]:
        return self.objects("tasks")

    def archive(self, object_type: str, body: dict) -> tuple[int, dict | None]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        with self._lock:
            for i in inputs:
                self.db.execute("UPDATE objects SET archived = 1, updated_at = ? WHERE type = ? AND id = ?",
                                (_now(), object_type, int(i["id"])))
            self.counts[f"{object_type}_archived"] += len(inputs)
        return 204, None

    def associate(self, from_type: str, to_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        results, errors = [], []
        with self._lock:
            for i in inputs:
                a, b = int(i["from"]["id"]), int(i["to"]["id"])
                known = self.db.execute("SELECT COUNT(*) FROM objects WHERE (type = ? AND id = ?) OR (type = ? AND id = ?)",
                                        (from_type, a, to_type, b)).fetchone()[0]
                if known < 2:
                    errors.append({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "unknown object",
                                   "context": {"fromObjectId": [str(a)]}})
                    continue
                self.db.execute("INSERT OR IGNORE INTO associations VALUES (?,?,?,?)", (from_type, a, to_type, b))
                results.append({"from": {"id": str(a)}, "to": [{"toObjectId": b}]})
        body_out: dict = {"status": "COMPLETE", "results": results}
        if errors:
            body_out.update(errors=errors, numErrors=len(errors))
            return 207, body_out
        return 200, body_out

    def create_tasks(self, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        now, results = _now(), []
        with self._lock:
            for i in inputs:
                props = i.get("properties") or {}
                cur = self.db.execute("INSERT INTO objects (type, properties, created_at, updated_at) VALUES ('tasks',?,?,?)",
                                      (json.dumps(props), now, now))
                for assoc in i.get("associations") or []:
                    self.db.execute("INSERT OR IGNORE INTO associations VALUES ('tasks',?,'contacts',?)",
                                    (cur.lastrowid, int(assoc["to"]["id"])))
                results.append(_object(cur.lastrowid, props, now, new=True))
        return 201, {"status": "COMPLETE", "results": results}

    def gdpr_delete(self, body: dict) -> tuple[int, dict | None]:
        key, prop = str(body.get("objectId", "")), body.get("idProperty") or "hs_object_id"
        with self._lock:
            self.gdpr_calls.append((time.time(), key))
            if prop == "email":
                row = self.db.execute("SELECT id, email FROM objects WHERE type = 'contacts' AND email = ?",
                                      (key.strip().lower(),)).fetchone()
            else:
                row = self.db.execute("SELECT id, email FROM objects WHERE type = 'contacts' AND id = ?",
                                      (int(key) if key.isdigit() else -1,)).fetchone()
            email = (row[1] if row else None) or (key.strip().lower() if prop == "email" else None)
            if email:
                self.db.execute("INSERT OR IGNORE INTO blocklist VALUES (?, ?)", (email, _now()))
            if not row:
                return 404, {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "resource not found"}
            self.db.execute("DELETE FROM objects WHERE id = ?", (row[0],))
            self.db.execute("DELETE FROM associations WHERE (from_type = 'contacts' AND from_id = ?) "
                            "OR (to_type = 'contacts' AND to_id = ?)", (row[0], row[0]))
            self.counts["gdpr_deleted"] += 1
        return 204, None


def _handler(server: CrmServer):
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
            refused = server.admit()
            if refused:
                return self._send(*refused)
            f = server.faults
            if f.slow_seconds:
                time.sleep(f.slow_seconds)
            write = method in ("POST", "PUT")
            if write and f.error_rate and server._rng.random() < f.error_rate:
                server.counts["500_injected"] += 1
                return self._send(500, {"status": "error", "message": "internal error"})
            if body.get("_invalid"):
                return self._send(400, _validation("the body is not valid JSON"))
            status, out = self._dispatch(method, url.path, parse_qs(url.query), body)
            if write and f.drop_rate and server._rng.random() < f.drop_rate:
                # The change is applied but the answer never arrives: the client must not create twice.
                server.counts["dropped_after_apply"] += 1
                self.close_connection = True
                return
            self._send(status, out, server.ok_headers() if status < 400 else None)

        def _dispatch(self, method: str, path: str, query: dict, body: dict):
            parts = path.strip("/").split("/")
            if parts[:3] == ["crm", "v3", "objects"]:
                if method == "GET" and len(parts) == 4:
                    return server.read(parts[3], query)
                if method == "GET" and len(parts) == 5:
                    return server.get(parts[3], parts[4])
                if method == "POST" and parts[4:] == ["batch", "upsert"]:
                    return server.upsert(parts[3], body)
                if method == "POST" and parts[4:] == ["batch", "update"]:
                    return server.update(parts[3], body)
                if method == "POST" and parts[4:] == ["batch", "archive"]:
                    return server.archive(parts[3], body)
                if method == "POST" and parts[3:] == ["tasks", "batch", "create"]:
                    return server.create_tasks(body)
                if method == "POST" and parts[3:] == ["contacts", "gdpr-delete"]:
                    return server.gdpr_delete(body)
            if method == "PUT" and parts[:3] == ["crm", "v4", "associations"] and parts[5:] == ["batch", "associate",
                                                                                                  "default"]:
                return server.associate(parts[3], parts[4], body)
            return 404, {"status": "error", "message": f"no route for {method} {path}"}

        def _control(self, method: str, path: str, body: dict) -> None:
            if path == "/_faults" and method == "POST":
                server.set_faults(**body)
                return self._send(200, asdict(server.faults))
            if path == "/_stats":
                return self._send(200, server.stats())
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _email(props: dict) -> str | None:
    e = props.get("email")
    return e.strip().lower() if e else None


def _object(oid: int, props: dict, now: str, new: bool) -> dict:
    return {"id": str(oid), "properties": props, "createdAt": now, "updatedAt": now, "archived": False, "new": new}


def _validation(message: str) -> dict:
    return {"status": "error", "category": "VALIDATION_ERROR", "message": message}


def _rate_body() -> dict:
    return {"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT",
            "category": "RATE_LIMITS", "policyName": "TEN_SECONDLY_ROLLING"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=".crm_data/crm_server.db", help="SQLite file for the CRM's state")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    p.add_argument("--max-requests", type=int, default=190, help="requests per window (HubSpot Pro: 190 / 10 s)")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--throttle-rate", type=float, default=0.0)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--slow-seconds", type=float, default=0.0)
    args = p.parse_args()
    faults = Faults(error_rate=args.error_rate, throttle_rate=args.throttle_rate, drop_rate=args.drop_rate,
                    slow_seconds=args.slow_seconds)
    server = CrmServer(args.db, port=args.port, token=args.token, max_requests=args.max_requests, faults=faults)
    print(f"local CRM on {server.url} (state in {args.db}); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
