"""A local HubSpot-compatible CRM on 127.0.0.1, for the demo and the tests. A development tool.

Implements the part of HubSpot's CRM v3 API that crm_pipelines uses, as HubSpot documents it:

- objects: paged lists (``archived=true`` for deleted ones), reads by ID (a merged-away ID answers
  with its survivor), ``batch/read`` by ID or a unique property, ``batch/upsert`` by a property with
  unique values, ``batch/update`` by ID, ``batch/archive``, ``search`` (filters, sorts, 200 per page,
  10,000 results per query, 5 requests/s), ``merge``, tasks, the GDPR delete (blocklists the address);
- a portal's property definitions: the HubSpot-defined ones (with the lifecycle stages and part of the
  industry options) and custom ones created through ``/crm/v3/properties/{type}`` (and ``/groups``);
  a write naming an unknown or read-only property, an option outside an enumeration or a number
  that is not one is refused for the whole batch (400 ``VALIDATION_ERROR``, HubSpot's error shape);
- 207 multi-status for rows that fail alone (malformed or blocklisted e-mail, "Contact already
  exists. Existing ID: …", an unknown ID); a lifecycle stage never moves backwards;
- v4 default associations, 1,000 pairs per call;
- Lists v3: create (``MANUAL``, ``DYNAMIC``, ``SNAPSHOT``; names unique), look up by name, membership
  ``PUT .../memberships/add|remove`` (record IDs; only on MANUAL and SNAPSHOT lists) and reads;
- at most 100 inputs per batch, a rolling 10-second rate limit answered with 429, ``Retry-After``
  and the ``X-HubSpot-RateLimit-*`` headers; 401 without the token.

State lives in SQLite (a file, or memory). Faults are injected from the constructor or, while
running, with ``POST /_faults`` (JSON, keys of :class:`Faults`: errors, 429s, answers lost after
the change was applied, latency, a 409 for a whole batch); ``GET /_stats`` reports what happened,
including the most requests the server ever saw in one window, writes to dead IDs and attempts to
lower a stage.

    python -m crm_pipelines.devtools.crm_server --db .crm_data/crm_server.db --port 8766 --token dev-token
"""


from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path

from ...core.platform.http import LocalHTTPServer
from .handler import handler_for
from .deals import DealsMixin
from .lists import ListsMixin
from .portal import PortalMixin
from .protocol import (DEFAULT_GROUPS, ID_PROPERTY, READ_ONLY, SEARCH_RESULT_CAP, SEARCHES_PER_SECOND, as_int,
                       default_properties, email_of, now_iso, rate_limit_body, validation_error)
from .reads import ReadsMixin
from .writes import WritesMixin


@dataclass
class Faults:
    error_rate: float = 0.0      # share of write requests answered 500 before anything is applied
    read_error_rate: float = 0.0  # share of reads and searches answered 503 (the API's bad minutes hit reads too)
    throttle_rate: float = 0.0   # share of requests answered 429 (with Retry-After) although under the limit
    drop_rate: float = 0.0       # share of write requests applied, then the connection closed unanswered
    fail_next: int = 0           # the next N requests answer 503
    slow_seconds: float = 0.0    # delay before every answer
    slow_write_seconds: float = 0.0  # delay before every answer to a write (reads and searches answer at once)
    latency_min: float = 0.0     # plus a delay drawn uniformly from [latency_min, latency_max] per answer
    latency_max: float = 0.0
    retry_after: float = 1.0     # what injected 429s ask for
    # Answer a batch with an e-mail another contact holds by refusing the whole batch (409, naming the
    # first such contact), as HubSpot's batch/create does, instead of that row alone (207).
    conflict_as_409: bool = False


class CrmServer(PortalMixin, WritesMixin, ReadsMixin, ListsMixin, DealsMixin):
    def __init__(self, db: str | Path = ":memory:", port: int = 0, token: str | None = None,
                 max_requests: int = 190, window_seconds: float = 10.0, faults: Faults | None = None, seed: int = 0,
                 custom_properties: dict[str, list[dict]] | None = None, search_cap: int = SEARCH_RESULT_CAP):
        """``custom_properties`` (object type -> property definitions as the properties API takes them)
        are created at start, as if the portal had been set up; without them the portal is fresh."""
        self.token = token
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self.search_cap = search_cap
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._window: deque[float] = deque()
        self._searches: deque[float] = deque()
        self.peak_window = 0
        self.counts: Counter = Counter()
        # Every e-mail address any write request carried, accepted or not: lets a test prove that a
        # person never even reached the CRM's door.
        self.emails_received: Counter = Counter()
        self.gdpr_calls: list[tuple[float, str]] = []  # (time.time(), identifier): when each GDPR delete arrived
        self.writes_to_dead_ids: list[str] = []        # object IDs a write named after they were merged away or deleted
        self.lifecycle_lowered: list[str] = []         # writes that tried to move a stage backwards (kept, as HubSpot does)
        if db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a development tool: durable enough, and not fsync-bound
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS objects (
                id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, ext_id TEXT, email TEXT,
                properties TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL, archived_at TEXT);
            CREATE UNIQUE INDEX IF NOT EXISTS objects_ext_live ON objects(type, ext_id) WHERE archived = 0;
            CREATE INDEX IF NOT EXISTS objects_email ON objects(type, email);
            CREATE INDEX IF NOT EXISTS objects_updated ON objects(type, updated_at);
            CREATE TABLE IF NOT EXISTS associations (from_type TEXT, from_id INTEGER, to_type TEXT, to_id INTEGER,
                PRIMARY KEY (from_type, from_id, to_type, to_id));
            CREATE TABLE IF NOT EXISTS blocklist (email TEXT PRIMARY KEY, deleted_at TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS merged (type TEXT, id INTEGER, into_id INTEGER, PRIMARY KEY (type, id));
            CREATE TABLE IF NOT EXISTS property_defs (type TEXT, name TEXT, definition TEXT, PRIMARY KEY (type, name));
            CREATE TABLE IF NOT EXISTS property_groups (type TEXT, name TEXT, definition TEXT, PRIMARY KEY (type, name));
            CREATE TABLE IF NOT EXISTS history (type TEXT, id INTEGER, property TEXT, value TEXT, timestamp TEXT,
                source TEXT);
            CREATE INDEX IF NOT EXISTS history_object ON history(type, id, property);
        """)
        self._lists_schema()
        self.started_at = now_iso()
        self.definitions = default_properties()
        self.groups = {t: {g: {"name": g, "label": g, "displayOrder": -1, "archived": False} for g in gs}
                       for t, gs in DEFAULT_GROUPS.items()}
        for t, name, d in self.db.execute("SELECT type, name, definition FROM property_defs").fetchall():
            self.definitions.setdefault(t, {})[name] = json.loads(d)
        for t, name, d in self.db.execute("SELECT type, name, definition FROM property_groups").fetchall():
            self.groups.setdefault(t, {})[name] = json.loads(d)
        for object_type, defs in (custom_properties or {}).items():
            for d in defs:
                group = d.get("groupName")
                if group and group not in self.groups[object_type]:
                    self.create_group(object_type, {"name": group, "label": group})
                if d["name"] not in self.definitions[object_type]:
                    status, body = self.create_property(object_type, d)
                    if status != 201:
                        raise ValueError(f"custom property {object_type}.{d['name']}: {body['message']}")
        self.httpd = LocalHTTPServer(("127.0.0.1", port), handler_for(self))
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
        now = now_iso()
        with self._lock:
            self.db.execute("BEGIN")
            for r in records:
                props = {k: v for k, v in (r.get("properties") or {}).items() if v is not None and k not in READ_ONLY}
                self.db.execute("INSERT OR REPLACE INTO objects (id, type, ext_id, email, properties, created_at, updated_at) "
                                "VALUES (?,?,?,?,?,?,?)", (int(r["id"]), object_type, props.get(ID_PROPERTY), email_of(props),
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
        with self._lock:  # a contact's associatedcompanyid is its association with that company
            self.db.execute("INSERT OR IGNORE INTO associations SELECT 'contacts', c.id, 'companies', co.id FROM objects c "
                            "JOIN objects co ON co.type = 'companies' AND co.id = CAST(json_extract(c.properties, "
                            "'$.associatedcompanyid') AS INTEGER) WHERE c.type = 'contacts'")
        deals = Path(landing, "_crm_deals", "deals.jsonl")
        if deals.exists():  # the sales team's deals (the generator's), with their stage history
            with open(deals, encoding="utf-8") as fh:
                out["deals"] = self.seed_deals([json.loads(line) for line in fh if line.strip()])
        return out

    # ------------------------------------------------------------------ what people do in the CRM (tests, demo)

    def edit(self, object_type: str, object_id: str, at: str | None = None, **props) -> None:
        """A sales rep edits a record in the CRM's UI: no validation, the modification stamp moves (to ``at``,
        an ISO time, when a test plays a later moment)."""
        with self._lock:
            row = self.db.execute("SELECT properties FROM objects WHERE type = ? AND id = ?",
                                  (object_type, int(object_id))).fetchone()
            merged = {**json.loads(row[0]), **props}
            self.db.execute("UPDATE objects SET properties = ?, email = ?, updated_at = ? WHERE id = ?",
                            (json.dumps(merged), email_of(merged), at or now_iso(), int(object_id)))

    def delete(self, object_type: str, object_id: str) -> None:
        """An ordinary delete in the CRM's UI: the record is archived (restorable), not GDPR-deleted."""
        self.archive(object_type, {"inputs": [{"id": str(object_id)}]})

    def restore(self, object_type: str, object_id: str) -> None:
        """A user restores a deleted record from the CRM's recycle bin."""
        with self._lock:
            self.db.execute("UPDATE objects SET archived = 0, archived_at = NULL, updated_at = ? WHERE type = ? AND id = ?",
                            (now_iso(), object_type, int(object_id)))

    def merge(self, object_type: str, primary_id: str, merged_id: str) -> tuple[int, dict]:
        """``POST /crm/v3/objects/{type}/merge``: the second record disappears into the first; its ID stays an
        alias that reads answer with the primary record; writes to it fail."""
        with self._lock:
            rows = {r[0]: r for r in self.db.execute(
                "SELECT id, properties, ext_id FROM objects WHERE type = ? AND archived = 0 AND id IN (?, ?)",
                (object_type, as_int(primary_id), as_int(merged_id))).fetchall()}
            if len(rows) < 2 or primary_id == merged_id:
                return 400, validation_error("both objects must exist and differ to be merged")
            primary, loser = rows[as_int(primary_id)], rows[as_int(merged_id)]
            props = json.loads(primary[1])
            loser_props = json.loads(loser[1])
            for k, v in loser_props.items():  # the primary's values win; the other fills gaps
                props.setdefault(k, v)
            ids = [i for i in str(props.get("hs_merged_object_ids") or "").split(";") if i]
            ids += [str(loser[0])] + [i for i in str(loser_props.get("hs_merged_object_ids") or "").split(";") if i]
            props["hs_merged_object_ids"] = ";".join(ids)
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM objects WHERE id = ?", (loser[0],))
            self.db.execute("UPDATE objects SET properties = ?, updated_at = ? WHERE id = ?",
                            (json.dumps(props), now_iso(), primary[0]))
            self.db.execute("INSERT OR REPLACE INTO merged VALUES (?, ?, ?)", (object_type, loser[0], primary[0]))
            self.db.execute("UPDATE merged SET into_id = ? WHERE type = ? AND into_id = ?", (primary[0], object_type, loser[0]))
            for col, other in (("from_id", "to_id"), ("to_id", "from_id")):
                self.db.execute(f"UPDATE OR IGNORE associations SET {col} = ? WHERE {col} = ? AND "
                                f"{'from_type' if col == 'from_id' else 'to_type'} = ?", (primary[0], loser[0], object_type))
            self.db.execute("COMMIT")
        return self.get(object_type, str(primary[0]))

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
                    "window_seconds": self.window_seconds, "faults": asdict(self.faults),
                    "writes_to_dead_ids": len(self.writes_to_dead_ids), "lifecycle_lowered": len(self.lifecycle_lowered)}

    # ------------------------------------------------------------------ request handling

    def admit(self, search: bool = False) -> tuple[int, dict, dict] | None:
        """Rate limits and injected faults; None to go on, else the error answer."""
        with self._lock:
            self.counts["requests"] += 1
            f = self.faults
            now = time.monotonic()
            while self._window and self._window[0] <= now - self.window_seconds:
                self._window.popleft()
            if len(self._window) >= self.max_requests:
                self.counts["429_limit"] += 1
                wait = self._window[0] + self.window_seconds - now
                return 429, rate_limit_body(), self._limit_headers(0, wait)
            if search:
                while self._searches and self._searches[0] <= now - 1.0:
                    self._searches.popleft()
                if len(self._searches) >= SEARCHES_PER_SECOND:
                    self.counts["429_search"] += 1
                    return 429, {**rate_limit_body(), "message": "You have reached your secondly limit.",
                                 "policyName": "SECONDLY"}, {}
                self._searches.append(now)
            if f.throttle_rate and self._rng.random() < f.throttle_rate:
                self.counts["429_injected"] += 1
                return 429, rate_limit_body(), self._limit_headers(self.max_requests - len(self._window), f.retry_after)
            self._window.append(now)
            self.peak_window = max(self.peak_window, len(self._window))
            if f.fail_next > 0:
                self.faults = Faults(**{**asdict(f), "fail_next": f.fail_next - 1})
                self.counts["503_injected"] += 1
                return 503, {"status": "error", "message": "Service unavailable"}, {}
        return None

    def delay(self) -> float:
        f = self.faults
        extra = self._rng.uniform(f.latency_min, max(f.latency_min, f.latency_max)) if f.latency_max else 0.0
        return f.slow_seconds + extra

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
