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
LIFECYCLE_ORDER = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                   "evangelist")
LIFECYCLE_STAGES = set(LIFECYCLE_ORDER) | {"other"}
# A part of HubSpot's fixed company industry options (the portal's own list is longer).
INDUSTRIES = ("ACCOUNTING", "AUTOMOTIVE", "BUILDING_MATERIALS", "CHEMICALS", "COMPUTER_SOFTWARE", "CONSTRUCTION",
              "ELECTRICAL_ELECTRONIC_MANUFACTURING", "FOOD_PRODUCTION", "INDUSTRIAL_AUTOMATION",
              "LOGISTICS_AND_SUPPLY_CHAIN", "MACHINERY", "MECHANICAL_OR_INDUSTRIAL_ENGINEERING", "MEDICAL_DEVICES",
              "MINING_METALS", "PACKAGING_AND_CONTAINERS", "PAPER_FOREST_PRODUCTS", "PLASTICS", "RENEWABLES_ENVIRONMENT",
              "UTILITIES", "WHOLESALE")
TYPES = {"string": {"text", "textarea", "phonenumber", "html", "file"}, "number": {"number", "calculation"},
         "enumeration": {"select", "radio", "checkbox", "booleancheckbox", "calculation_equation"},
         "date": {"date"}, "datetime": {"date"}, "bool": {"booleancheckbox"}}
READ_ONLY = {"hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate", "hs_merged_object_ids"}
MAX_BATCH = 100
MAX_ASSOCIATION_BATCH = 1000
MAX_SEARCH_PAGE = 200
SEARCH_RESULT_CAP = 10_000        # HubSpot's search returns at most 10,000 results per query
SEARCHES_PER_SECOND = 5           # the search endpoints' own limit, besides the 10-second one


def _prop(name: str, ptype: str = "string", field: str = "text", group: str = "contactinformation",
          options: tuple[str, ...] = (), read_only: bool = False) -> dict:
    return {"name": name, "label": name, "type": ptype, "fieldType": field, "groupName": group,
            "options": [{"label": o, "value": o, "displayOrder": i, "hidden": False} for i, o in enumerate(options)],
            "hasUniqueValue": False, "hubspotDefined": True,
            "modificationMetadata": {"readOnlyValue": read_only, "archivable": False, "readOnlyDefinition": True}}


def _defaults() -> dict[str, dict[str, dict]]:
    """The HubSpot-defined properties a fresh portal has, for the object types served here."""
    common = [_prop("hs_object_id", "number", "number", read_only=True),
              _prop("createdate", "datetime", "date", read_only=True),
              _prop("hs_lastmodifieddate", "datetime", "date", read_only=True),
              {**_prop("hubspot_owner_id", "enumeration", "select"), "externalOptions": True},
              _prop("lifecyclestage", "enumeration", "radio", options=tuple(LIFECYCLE_ORDER) + ("other",))]
    contacts = common + [_prop(n) for n in ("email", "firstname", "lastname", "salutation", "jobtitle", "company",
                                            "address", "zip", "city", "country")]
    contacts += [_prop("phone", field="phonenumber"), _prop("mobilephone", field="phonenumber"),
                 _prop("lastmodifieddate", "datetime", "date", read_only=True),
                 _prop("hs_merged_object_ids", "enumeration", "checkbox", read_only=True),
                 _prop("associatedcompanyid", "number", "number")]
    contacts[[p["name"] for p in contacts].index("email")]["hasUniqueValue"] = True
    companies = common + [_prop(n, group="companyinformation") for n in ("name", "domain", "address", "zip", "city",
                                                                         "country")]
    companies += [_prop("phone", field="phonenumber", group="companyinformation"),
                  _prop("industry", "enumeration", "select", "companyinformation", INDUSTRIES),
                  _prop("numberofemployees", "number", "number", "companyinformation"),
                  _prop("annualrevenue", "number", "number", "companyinformation"),
                  _prop("hs_merged_object_ids", "enumeration", "checkbox", read_only=True)]
    tasks = [_prop(n, group="task") for n in ("hs_task_subject", "hs_task_body")]
    tasks += [_prop("hs_timestamp", "datetime", "date", "task"),
              _prop("hs_task_status", "enumeration", "select", "task", ("NOT_STARTED", "IN_PROGRESS", "WAITING",
                                                                         "COMPLETED", "DEFERRED")),
              _prop("hs_task_priority", "enumeration", "select", "task", ("NONE", "LOW", "MEDIUM", "HIGH")),
              {**_prop("hubspot_owner_id", "enumeration", "select", "task"), "externalOptions": True}]
    return {t: {p["name"]: p for p in props} for t, props in
            (("contacts", contacts), ("companies", companies), ("tasks", tasks))}


DEFAULT_GROUPS = {"contacts": ["contactinformation"], "companies": ["companyinformation"], "tasks": ["task"]}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


@dataclass
class Faults:
    error_rate: float = 0.0      # share of write requests answered 500 before anything is applied
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


class CrmServer:
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
        """)
        self.definitions = _defaults()
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
                props = {k: v for k, v in (r.get("properties") or {}).items() if v is not None and k not in READ_ONLY}
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
        with self._lock:  # a contact's associatedcompanyid is its association with that company
            self.db.execute("INSERT OR IGNORE INTO associations SELECT 'contacts', c.id, 'companies', co.id FROM objects c "
                            "JOIN objects co ON co.type = 'companies' AND co.id = CAST(json_extract(c.properties, "
                            "'$.associatedcompanyid') AS INTEGER) WHERE c.type = 'contacts'")
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
                            (json.dumps(merged), _email(merged), at or _now(), int(object_id)))

    def delete(self, object_type: str, object_id: str) -> None:
        """An ordinary delete in the CRM's UI: the record is archived (restorable), not GDPR-deleted."""
        self.archive(object_type, {"inputs": [{"id": str(object_id)}]})

    def restore(self, object_type: str, object_id: str) -> None:
        """A user restores a deleted record from the CRM's recycle bin."""
        with self._lock:
            self.db.execute("UPDATE objects SET archived = 0, archived_at = NULL, updated_at = ? WHERE type = ? AND id = ?",
                            (_now(), object_type, int(object_id)))

    def merge(self, object_type: str, primary_id: str, merged_id: str) -> tuple[int, dict]:
        """``POST /crm/v3/objects/{type}/merge``: the second record disappears into the first; its ID stays an
        alias that reads answer with the primary record; writes to it fail."""
        with self._lock:
            rows = {r[0]: r for r in self.db.execute(
                "SELECT id, properties, ext_id FROM objects WHERE type = ? AND archived = 0 AND id IN (?, ?)",
                (object_type, _int(primary_id), _int(merged_id))).fetchall()}
            if len(rows) < 2 or primary_id == merged_id:
                return 400, _validation("both objects must exist and differ to be merged")
            primary, loser = rows[_int(primary_id)], rows[_int(merged_id)]
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
                            (json.dumps(props), _now(), primary[0]))
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
                return 429, _rate_body(), self._limit_headers(0, wait)
            if search:
                while self._searches and self._searches[0] <= now - 1.0:
                    self._searches.popleft()
                if len(self._searches) >= SEARCHES_PER_SECOND:
                    self.counts["429_search"] += 1
                    return 429, {**_rate_body(), "message": "You have reached your secondly limit.",
                                 "policyName": "SECONDLY"}, {}
                self._searches.append(now)
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

    # ------------------------------------------------------------------ the properties API

    def list_properties(self, object_type: str) -> tuple[int, dict]:
        if object_type not in self.definitions:
            return 404, _not_found(f"unknown object type {object_type}")
        with self._lock:
            return 200, {"results": [dict(d) for d in self.definitions[object_type].values()]}

    def get_property(self, object_type: str, name: str) -> tuple[int, dict]:
        d = self.definitions.get(object_type, {}).get(name)
        return (200, dict(d)) if d else (404, _not_found(f"Unable to find property {name} for object type {object_type}"))

    def create_property(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in self.definitions:
            return 404, _not_found(f"unknown object type {object_type}")
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return 400, _validation(f"Missing required fields: {', '.join(missing)}")
        name, ptype, field = str(body["name"]), body["type"], body["fieldType"]
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            return 400, _validation(f"Property name '{name}' must be lower case letters, digits and underscores")
        if ptype not in TYPES:
            return 400, _validation(f"Unknown property type '{ptype}'; allowed: {', '.join(TYPES)}")
        if field not in TYPES[ptype]:
            return 400, _validation(f"fieldType '{field}' is not valid for type '{ptype}'")
        options = body.get("options") or []
        if ptype == "enumeration" and field != "booleancheckbox" and not options:
            return 400, _validation("An enumeration property needs options")
        if any(not isinstance(o, dict) or not o.get("label") or o.get("value") in (None, "") for o in options):
            return 400, _validation("Every option needs a label and a value")
        if body.get("hasUniqueValue") and ptype not in ("string", "number"):
            return 400, _validation("Only string and number properties can have unique values")
        with self._lock:
            if body["groupName"] not in self.groups[object_type]:
                return 400, _validation(f"Property group '{body['groupName']}' does not exist")
            if name in self.definitions[object_type]:
                return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS",
                             "message": f"A property named '{name}' already exists."}
            d = {"name": name, "label": body["label"], "type": ptype, "fieldType": field, "groupName": body["groupName"],
                 "description": body.get("description", ""), "hasUniqueValue": bool(body.get("hasUniqueValue")),
                 "options": [{"label": o["label"], "value": str(o["value"]), "displayOrder": o.get("displayOrder", i),
                              "hidden": bool(o.get("hidden", False))} for i, o in enumerate(options)],
                 "hubspotDefined": False, "createdAt": _now(),
                 "modificationMetadata": {"readOnlyValue": False, "archivable": True, "readOnlyDefinition": False}}
            self.definitions[object_type][name] = d
            self.db.execute("INSERT OR REPLACE INTO property_defs VALUES (?, ?, ?)", (object_type, name, json.dumps(d)))
            self.counts["properties_created"] += 1
        return 201, dict(d)

    def create_group(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in self.groups:
            return 404, _not_found(f"unknown object type {object_type}")
        if not body.get("name") or not body.get("label"):
            return 400, _validation("A property group needs a name and a label")
        with self._lock:
            if body["name"] in self.groups[object_type]:
                return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS",
                             "message": f"A group named '{body['name']}' already exists."}
            g = {"name": body["name"], "label": body["label"], "displayOrder": body.get("displayOrder", -1), "archived": False}
            self.groups[object_type][body["name"]] = g
            self.db.execute("INSERT OR REPLACE INTO property_groups VALUES (?, ?, ?)",
                            (object_type, body["name"], json.dumps(g)))
        return 201, dict(g)

    def list_groups(self, object_type: str) -> tuple[int, dict]:
        if object_type not in self.groups:
            return 404, _not_found(f"unknown object type {object_type}")
        return 200, {"results": list(self.groups[object_type].values())}

    def _property_errors(self, object_type: str, props: dict) -> list[dict]:
        """What HubSpot refuses a whole batch for: unknown properties, read-only ones, values outside an
        enumeration's options, numbers that are not numbers (no surrounding spaces either)."""
        out = []
        defs = self.definitions[object_type]
        for name, value in props.items():
            d = defs.get(name)
            if d is None:
                out.append(_prop_error(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'))
                continue
            if d["modificationMetadata"].get("readOnlyValue"):
                out.append(_prop_error(name, "READ_ONLY_VALUE", f'"{name}" is a read only property; its value cannot be set.'))
                continue
            if value is None or value == "":
                continue  # clearing a value is always allowed
            text = str(value)
            if d["type"] == "enumeration" and d["options"] and not d.get("externalOptions"):
                allowed = {o["value"] for o in d["options"]}
                chosen = text.split(";") if d["fieldType"] == "checkbox" else [text]
                bad = [c for c in chosen if c not in allowed]
                if bad:
                    out.append(_prop_error(name, "INVALID_OPTION", f"{bad[0]} was not one of the allowed options: "
                                                                   f"{', '.join(sorted(allowed))}"))
            elif d["type"] == "number":
                try:
                    float(text)
                    ok = text == text.strip() and text.lower() not in ("nan", "inf", "-inf", "infinity")
                except ValueError:
                    ok = False
                if not ok:
                    out.append(_prop_error(name, "INVALID_DECIMAL", f"{text} is not a valid number"))
        return out

    # ------------------------------------------------------------------ object writes

    def upsert(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/upsert: by a unique property (``idProperty``); creates when unknown."""
        return self._write(object_type, body, by_external_id=True)

    def update(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/update: by the CRM's own object ID; unknown IDs fail per row."""
        return self._write(object_type, body, by_external_id=False)

    def _write(self, object_type: str, body: dict, by_external_id: bool) -> tuple[int, dict]:
        inputs = body.get("inputs")
        if object_type not in ("contacts", "companies") or not isinstance(inputs, list):
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
        id_property = None
        if by_external_id:
            id_property = inputs[0].get("idProperty") if inputs else None
            d = self.definitions[object_type].get(id_property or "")
            if d is None or not d.get("hasUniqueValue") or any(i.get("idProperty") != id_property for i in inputs):
                return 400, _validation(f"Unable to perform update/upsert by non-unique property '{id_property}'")
        problems = []
        for i in inputs:
            problems += self._property_errors(object_type, i.get("properties") or {})
        if problems:
            self.counts["400_properties"] += 1
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "correlationId": _correlation(),
                         "message": "Property values were not valid: " + json.dumps(problems),
                         "errors": [{"message": p["message"], "code": p["error"], "context": {"propertyName": [p["name"]]}}
                                    for p in problems]}
        now = _now()
        results, errors, done = [], [], Counter()
        with self._lock:
            self.db.execute("BEGIN")
            for i, ident in zip(inputs, ids):
                props = {k: (None if v is None else str(v)) for k, v in (i.get("properties") or {}).items()}
                if by_external_id:
                    props[id_property] = ident
                    row = self._find(object_type, id_property, ident)
                else:
                    row = self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND id = ? AND archived = 0",
                                          (object_type, _int(ident))).fetchone()
                    if not row:
                        self.writes_to_dead_ids.append(ident)
                        errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                                       "message": "Object not found.  objectId are usually numeric.",
                                       "context": {"ids": [ident]}})
                        continue
                problem = self._invalid(object_type, row[0] if row else None, props)
                if problem and problem["category"] == "CONFLICT" and self.faults.conflict_as_409:
                    self.db.execute("ROLLBACK")
                    self.counts["409_batch"] += 1
                    return 409, {"status": "error", "category": "CONFLICT", "message": problem["message"],
                                 "correlationId": _correlation()}
                if problem:
                    errors.append({**problem, "context": {"ids": [ident]}})
                    continue
                if row:
                    old = json.loads(row[1])
                    props = self._keep_stage(object_type, row[0], old, props)
                    merged = {k: v for k, v in {**old, **props}.items() if v is not None}
                    self.db.execute("UPDATE objects SET properties = ?, ext_id = ?, email = ?, updated_at = ? "
                                    "WHERE id = ?", (json.dumps(merged), merged.get(ID_PROPERTY), _email(merged), now, row[0]))
                    results.append(_object(row[0], merged, now, new=False))
                    done[f"{object_type}_updated"] += 1
                else:
                    props = {k: v for k, v in props.items() if v is not None}
                    cur = self.db.execute(
                        "INSERT INTO objects (type, ext_id, email, properties, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                        (object_type, props.get(ID_PROPERTY), _email(props), json.dumps(props), now, now))
                    results.append(_object(cur.lastrowid, props, now, new=True))
                    done[f"{object_type}_created"] += 1
            self.db.execute("COMMIT")
            self.counts.update(done)
        body_out = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": _now()}
        if errors:
            body_out.update(errors=errors, numErrors=len(errors))
            return 207, body_out
        return 200, body_out

    def _find(self, object_type: str, prop: str, value: str):
        if prop == "email" and object_type == "contacts":
            return self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND email = ? AND archived = 0",
                                   (object_type, value.strip().lower())).fetchone()
        if prop == "hs_object_id":
            return self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND id = ? AND archived = 0",
                                   (object_type, _int(value))).fetchone()
        if prop == ID_PROPERTY:
            return self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND ext_id = ? AND archived = 0",
                                   (object_type, value)).fetchone()
        return self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND archived = 0 AND "
                               "json_extract(properties, ?) = ?", (object_type, f"$.{prop}", value)).fetchone()

    def _keep_stage(self, object_type: str, oid: int, old: dict, props: dict) -> dict:
        """A lifecycle stage does not move backwards unless it is cleared first (HubSpot's rule)."""
        new, current = props.get("lifecyclestage"), old.get("lifecyclestage")
        if new and current in LIFECYCLE_ORDER and new in LIFECYCLE_ORDER and \
                LIFECYCLE_ORDER.index(new) < LIFECYCLE_ORDER.index(current):
            self.lifecycle_lowered.append(str(oid))
            return {k: v for k, v in props.items() if k != "lifecyclestage"}
        return props

    def _invalid(self, object_type: str, own_id: int | None, props: dict) -> dict | None:
        if object_type != "contacts" or not props.get("email"):
            return None
        email = props["email"].strip().lower()
        if not EMAIL.match(email):
            return {"status": "error", "category": "VALIDATION_ERROR",
                    "message": f"Property values were not valid: email: {email} is not a valid email address: INVALID_EMAIL"}
        if self.db.execute("SELECT 1 FROM blocklist WHERE email = ?", (email,)).fetchone():
            return {"status": "error", "category": "VALIDATION_ERROR",
                    "message": f"Property values were not valid: email: {email} was GDPR-deleted and is blocklisted: BLOCKLISTED"}
        other = self.db.execute("SELECT id FROM objects WHERE type = 'contacts' AND email = ? AND id != ? AND archived = 0",
                                (email, own_id if own_id is not None else -1)).fetchone()
        if other:
            return {"status": "error", "category": "CONFLICT", "message": f"Contact already exists. Existing ID: {other[0]}"}
        return None

    # ------------------------------------------------------------------ object reads

    def _shown(self, object_type: str, oid: int, props: dict, created: str, updated: str, wanted: list[str],
               archived_at: str | None = None) -> dict:
        p = dict(props)
        # HubSpot names the modification stamp differently per object type, and always returns it.
        stamp = "lastmodifieddate" if object_type == "contacts" else "hs_lastmodifieddate"
        p.update(hs_object_id=str(oid), createdate=created)
        p[stamp] = updated
        if wanted:
            keep = set(wanted) | {"hs_object_id", "createdate", stamp}
            # Properties the portal does not define are left out of reads without an error.
            p = {k: p.get(k) for k in keep if k in p or (k in self.definitions[object_type] and k not in READ_ONLY)}
            if "hs_lastmodifieddate" in wanted:
                p["hs_lastmodifieddate"] = updated
        out = {"id": str(oid), "properties": p, "createdAt": created, "updatedAt": updated,
               "archived": archived_at is not None}
        if archived_at:
            out["archivedAt"] = archived_at
        return out

    def read(self, object_type: str, query: dict) -> tuple[int, dict]:
        if object_type not in self.definitions:
            return 404, _not_found(f"unknown object type {object_type}")
        limit = min(int((query.get("limit") or ["10"])[0]), 100)
        after = int((query.get("after") or ["0"])[0] or 0)
        archived = (query.get("archived") or ["false"])[0] == "true"
        wanted = [p for p in ",".join(query.get("properties") or []).split(",") if p]
        with self._lock:
            rows = self.db.execute("SELECT id, properties, created_at, updated_at, archived_at FROM objects "
                                   "WHERE type = ? AND archived = ? AND id > ? ORDER BY id LIMIT ?",
                                   (object_type, int(archived), after, limit + 1)).fetchall()
        results = [self._shown(object_type, oid, json.loads(props), created, updated, wanted,
                               archived_at if archived else None)
                   for oid, props, created, updated, archived_at in rows[:limit]]
        body: dict = {"results": results}
        if len(rows) > limit:
            body["paging"] = {"next": {"after": str(rows[limit - 1][0])}}
        return 200, body

    def get(self, object_type: str, object_id: str, query: dict | None = None) -> tuple[int, dict]:
        wanted = [p for p in ",".join((query or {}).get("properties") or []).split(",") if p]
        with self._lock:
            oid = self._alias(object_type, _int(object_id))
            row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? AND id = ? "
                                  "AND archived = 0", (object_type, oid)).fetchone()
        if row is None:
            return 404, _not_found("resource not found")
        return 200, self._shown(object_type, row[0], json.loads(row[1]), row[2], row[3], wanted)

    def _alias(self, object_type: str, oid: int) -> int:
        row = self.db.execute("SELECT into_id FROM merged WHERE type = ? AND id = ?", (object_type, oid)).fetchone()
        return row[0] if row else oid

    def batch_read(self, object_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        prop = body.get("idProperty") or "hs_object_id"
        d = self.definitions.get(object_type, {}).get(prop)
        if prop != "hs_object_id" and (d is None or not d.get("hasUniqueValue")):
            return 400, _validation(f"Unable to read by non-unique property '{prop}'")
        wanted = body.get("properties") or []
        results, missing = [], []
        with self._lock:
            for i in inputs:
                ident = str(i.get("id"))
                if prop == "hs_object_id":
                    oid = self._alias(object_type, _int(ident))
                    row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? "
                                          "AND id = ? AND archived = 0", (object_type, oid)).fetchone()
                else:
                    found = self._find(object_type, prop, ident)
                    row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE id = ?",
                                          (found[0],)).fetchone() if found else None
                if row is None:
                    missing.append(ident)
                    continue
                results.append(self._shown(object_type, row[0], json.loads(row[1]), row[2], row[3], wanted))
        out: dict = {"status": "COMPLETE", "results": results}
        if missing:
            out.update(numErrors=1, errors=[{"status": "error", "category": "OBJECT_NOT_FOUND",
                                             "message": "Could not get some objects, they may be deleted or not exist.",
                                             "context": {"ids": missing}}])
            return 207, out
        return 200, out

    def search(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in ("contacts", "companies"):
            return 404, _not_found(f"unknown object type {object_type}")
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_PAGE:
            return 400, _validation(f"limit must be between 1 and {MAX_SEARCH_PAGE}")
        offset = int(body.get("after") or 0)
        if offset + limit > self.search_cap:
            return 400, _validation(f"The search returns at most {self.search_cap} results per query; narrow the "
                                    "filters instead of paging further")
        groups = body.get("filterGroups") or []
        if len(groups) > 5 or sum(len(g.get("filters") or []) for g in groups) > 25:
            return 400, _validation("at most 5 filter groups and 25 filters")
        with self._lock:
            rows = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? "
                                   "AND archived = 0", (object_type,)).fetchall()
        records = []
        for oid, props, created, updated in rows:
            p = {**json.loads(props), "hs_object_id": str(oid), "createdate": created, "hs_lastmodifieddate": updated,
                 "lastmodifieddate": updated}
            try:
                if not groups or any(all(_matches(p, f) for f in g.get("filters") or []) for g in groups):
                    records.append((oid, p, created, updated))
            except ValueError as exc:
                return 400, _validation(str(exc))
        for s in reversed(body.get("sorts") or [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]):
            name = s.get("propertyName") if isinstance(s, dict) else str(s).lstrip("-")
            desc = (s.get("direction") == "DESCENDING") if isinstance(s, dict) else str(s).startswith("-")
            records.sort(key=lambda r: _sort_key(r[1].get(name)), reverse=desc)
        page = records[offset:offset + limit]
        wanted = body.get("properties") or ["email", "firstname", "lastname"] if object_type == "contacts" else \
            body.get("properties") or ["name", "domain"]
        out: dict = {"total": len(records), "results": [self._shown(object_type, oid, p, c, u, wanted)
                                                         for oid, p, c, u in page]}
        if offset + limit < len(records):
            out["paging"] = {"next": {"after": str(offset + limit)}}
        return 200, out

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
            now = _now()
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE objects SET archived = 1, updated_at = ?, archived_at = ? WHERE type = ? AND id = ?",
                                [(now, now, object_type, _int(i["id"])) for i in inputs])
            self.db.execute("COMMIT")
            self.counts[f"{object_type}_archived"] += len(inputs)
        return 204, None

    def associate(self, from_type: str, to_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_ASSOCIATION_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_ASSOCIATION_BATCH}, got {len(inputs)}")
        pairs = [(_int(i["from"]["id"]), _int(i["to"]["id"])) for i in inputs]
        results, errors, linked = [], [], []
        with self._lock:
            live = {(t, i) for t, i in self._live(from_type, [a for a, _ in pairs])} | \
                {(t, i) for t, i in self._live(to_type, [b for _, b in pairs])}
            for a, b in pairs:
                if (from_type, a) not in live or (to_type, b) not in live:
                    self.writes_to_dead_ids.append(str(a))
                    errors.append({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "unknown object",
                                   "context": {"fromObjectId": [str(a)]}})
                    continue
                linked.append((a, b))
                results.append({"from": {"id": str(a)}, "to": {"id": str(b)},
                                "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1}})
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO associations VALUES (?,?,?,?)",
                                [(from_type, a, to_type, b) for a, b in linked])
            if from_type == "contacts" and to_type == "companies":
                self.db.executemany("UPDATE objects SET properties = json_set(properties, '$.associatedcompanyid', ?) "
                                    "WHERE id = ?", [(str(b), a) for a, b in linked])
            self.db.execute("COMMIT")
            self.counts["associations"] += len(results)
        body_out: dict = {"status": "COMPLETE", "results": results}
        if errors:
            body_out.update(errors=errors, numErrors=len(errors))
            return 207, body_out
        return 200, body_out

    def _live(self, object_type: str, ids: list[int]) -> list[tuple[str, int]]:
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out += [(object_type, r[0]) for r in self.db.execute(
                f"SELECT id FROM objects WHERE type = ? AND archived = 0 AND id IN ({','.join('?' * len(chunk))})",
                (object_type, *chunk)).fetchall()]
        return out

    def create_tasks(self, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, _validation(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        problems = []
        for i in inputs:
            problems += self._property_errors("tasks", i.get("properties") or {})
        if problems:
            return 400, {"status": "error", "category": "VALIDATION_ERROR",
                         "message": "Property values were not valid: " + json.dumps(problems)}
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


def _matches(p: dict, f: dict) -> bool:
    name, op, value = f.get("propertyName"), f.get("operator", "EQ"), f.get("value")
    have = p.get(name)
    if op == "HAS_PROPERTY":
        return have not in (None, "")
    if op == "NOT_HAS_PROPERTY":
        return have in (None, "")
    if op == "IN":
        return have is not None and str(have) in {str(v) for v in f.get("values") or []}
    if op not in ("EQ", "NEQ", "GT", "GTE", "LT", "LTE"):
        raise ValueError(f"unsupported operator {op}")
    if have is None:
        return op == "NEQ"
    a, b = _sort_key(have), _sort_key(value)
    if type(a) is not type(b):
        a, b = str(have), str(value)
    return {"EQ": a == b, "NEQ": a != b, "GT": a > b, "GTE": a >= b, "LT": a < b, "LTE": a <= b}[op]


def _sort_key(v):
    """Dates as milliseconds (HubSpot compares date filters given as epoch milliseconds or ISO), numbers as numbers."""
    if v is None:
        return ""
    text = str(v)
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    if re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z?", text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
    return text.lower()


def _int(value) -> int:
    text = str(value)
    return int(text) if text.isdigit() else -1


def _prop_error(name: str, code: str, message: str) -> dict:
    return {"isValid": False, "message": message, "error": code, "name": name, "localizedErrorMessage": message}


def _correlation() -> str:
    return f"{random.getrandbits(64):016x}"


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
            if body.get("_invalid"):
                return self._send(400, _validation("the body is not valid JSON"))
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
            if method == "POST" and parts[:3] == ["crm", "v4", "associations"] and parts[5:] == ["batch", "associate",
                                                                                                   "default"]:
                return server.associate(parts[3], parts[4], body)
            return 404, _not_found(f"no route for {method} /{'/'.join(parts)}")

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


def _not_found(message: str) -> dict:
    return {"status": "error", "category": "OBJECT_NOT_FOUND", "message": message}


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
    p.add_argument("--latency", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.0, 0.0),
                   help="answer after a delay drawn uniformly from [MIN, MAX] seconds")
    p.add_argument("--custom-properties", type=Path, default=None,
                   help="JSON {object type: [property definitions]} created at start (a portal already set up)")
    args = p.parse_args()
    faults = Faults(error_rate=args.error_rate, throttle_rate=args.throttle_rate, drop_rate=args.drop_rate,
                    slow_seconds=args.slow_seconds, latency_min=args.latency[0], latency_max=args.latency[1])
    custom = json.loads(args.custom_properties.read_text(encoding="utf-8")) if args.custom_properties else None
    server = CrmServer(args.db, port=args.port, token=args.token, max_requests=args.max_requests, faults=faults,
                       custom_properties=custom)
    print(f"local CRM on {server.url} (state in {args.db}); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
