"""A local Brevo-compatible marketing tool on 127.0.0.1, for the demo and the tests. A development tool.

Implements the part of Brevo's v3 API that crm_pipelines uses, as Brevo documents it, and is at least
as strict as the real service where it matters to a connector:

- authentication by the ``api-key`` header (401 ``unauthorized`` without it);
- contact attributes (``GET /v3/contacts/attributes``, ``POST /v3/contacts/attributes/{category}/{name}``;
  a second creation is ``duplicate_parameter``), folders and lists (``GET`` at most 50 per page);
- every write refuses a parameter it does not know (400 ``invalid_parameter``), as Brevo does;
- ``POST /v3/contacts/import`` (JSON rows, at most 10 MB, ``listIds`` or ``newList`` required): asynchronous, answered 202 with a ``processId``, applied later by a worker, status at
  ``GET /v3/processes/{id}``, the ``notifyUrl`` called when done; attributes the account does not define
  are dropped, as Brevo does; a blocklisted contact stays blocklisted;
- ``POST /v3/contacts/batch`` answers 410: deprecated since 30 October 2026;
- list membership ``POST /v3/contacts/lists/{id}/contacts/add|remove`` with ``emails`` or ``ids``, at most
  150 per call (``out_of_range`` beyond), 201 with ``success``/``failure`` per address;
- ``GET|PUT|DELETE /v3/contacts/{identifier}`` (e-mail or ID), ``GET /v3/contacts`` (``modifiedSince``,
  at most 1,000 per page), ``POST /v3/contacts/doubleOptinConfirmation``;
- automation events ``POST /v3/events`` and ``/v3/events/batch`` (207 when some fail), event names limited
  to letters, digits, ``-`` and ``_``;
- marketing webhooks registered with ``POST /v3/webhooks`` and sent as Brevo sends them (one JSON object
  per event, or batches when ``batched``);
- rate limits per endpoint family as on the general tier (contacts and events: 10 per second and 36,000
  per hour; everything else 100 per hour), each answer with ``x-sib-ratelimit-limit|remaining|reset``,
  429 ``too_many_requests`` **without** ``Retry-After``.

What the tool does with a contact, so engagement comes back in the demo and the tests: each automation
event and each addition to a list that an automation listens to "sends" an e-mail, and ``simulate``
(or ``POST /_simulate``) produces the recipient's reaction (delivered, opened, click, unsubscribed,
hard bounce, spam) as webhooks. Unsubscribes, spam complaints and hard bounces blocklist the address.

What a connector must never do is counted in ``GET /_stats``: ``resubscribed`` (a write that lifted a
blocklisting), ``blocked_list_adds`` (a blocklisted contact added to a list), ``foreign_removals``
(a membership removed from a list the connector did not create), ``duplicate_events`` (an event ID
seen twice). Faults (``POST /_faults``): 5xx before anything is applied, 429s under the limit, latency.

    python -m crm_pipelines.devtools.brevo_server --port 8767 --api-key dev-key
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import requests

from ...core.platform.http import LocalHTTPServer
from .handler import handler_for

MAX_LIST_CALL = 150
MAX_IMPORT_BYTES = 10 * 1024 * 1024
EVENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
ATTRIBUTE_TYPES = {"text", "float", "date", "boolean", "id", "category", "multiple-choice"}
ATTRIBUTE_CATEGORIES = {"normal", "transactional", "category", "calculated", "global"}
IMPORT_KEYS = {"fileUrl", "fileBody", "jsonBody", "listIds", "notifyUrl", "newList", "emailBlacklist", "disableNotification",
               "smsBlacklist", "updateExistingContacts", "emptyContactsAttributes"}
WEBHOOK_EVENTS = {"delivered", "opened", "click", "softBounce", "hardBounce", "spam", "unsubscribed", "listAddition",
                  "contactUpdated", "contactDeleted"}
# A marketing webhook names its event in snake case in the payload.
PAYLOAD_EVENT = {"delivered": "delivered", "opened": "opened", "click": "click", "softBounce": "soft_bounce",
                 "hardBounce": "hard_bounce", "spam": "spam", "unsubscribed": "unsubscribed",
                 "listAddition": "list_addition", "contactUpdated": "contact_updated", "contactDeleted": "contact_deleted"}
BLOCKING = {"unsubscribed": "unsubscribed", "spam": "spam", "hardBounce": "hard_bounce"}
# Brevo's general tier: (per second, per hour) per endpoint family.
LIMITS = {"contacts": (10, 36_000), "events": (10, 36_000), "other": (None, 100)}
# Brevo's standard attributes exist in every account.
STANDARD_ATTRIBUTES = {"FIRSTNAME": "text", "LASTNAME": "text", "SMS": "text", "EXT_ID": "text"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error(status: int, code: str, message: str) -> tuple[int, dict]:
    return status, {"code": code, "message": message}


def unknown_keys(body: dict, allowed: set[str]) -> tuple[int, dict] | None:
    """Brevo refuses a parameter it does not know (400 invalid_parameter): so does this server."""
    extra = sorted(set(body) - allowed)
    return error(400, "invalid_parameter", f"Unknown parameter: {extra[0]}") if extra else None


@dataclass
class Faults:
    error_rate: float = 0.0      # share of requests answered 500 before anything is applied
    fail_next: int = 0           # the next N requests answer 503
    throttle_rate: float = 0.0   # share of requests answered 429 although under the limit
    latency_min: float = 0.0     # every answer delayed by a time drawn from [latency_min, latency_max]
    latency_max: float = 0.0


@dataclass
class Behaviour:
    """How recipients react to each e-mail the tool sends (shares of recipients), for the simulation."""
    open_rate: float = 0.0
    click_rate: float = 0.0      # of those who opened
    unsubscribe_rate: float = 0.0
    hard_bounce_rate: float = 0.0
    spam_rate: float = 0.0


@dataclass
class Contact:
    id: int
    email: str
    attributes: dict = field(default_factory=dict)
    list_ids: set = field(default_factory=set)
    blocklisted: bool = False
    blocked_reason: str | None = None
    created_at: str = field(default_factory=now_iso)
    modified_at: str = field(default_factory=now_iso)
    modified_ts: float = field(default_factory=time.time)

    def as_json(self) -> dict:
        return {"id": self.id, "email": self.email, "emailBlacklisted": self.blocklisted, "smsBlacklisted": False,
                "attributes": dict(self.attributes), "listIds": sorted(self.list_ids), "listUnsubscribed": [],
                "createdAt": self.created_at, "modifiedAt": self.modified_at}


class BrevoServer:
    def __init__(self, port: int = 0, api_key: str | None = None, faults: Faults | None = None, seed: int = 0,
                 import_delay: float = 0.2, limits: dict | None = None, behaviour: Behaviour | None = None,
                 automations: dict | None = None, state_file: str | Path | None = None):
        """``automations``: event name, list ID or list name -> the number of e-mails its workflow sends (the
        tool's side of a journey; each one "sent" gets a simulated reaction by ``behaviour``). ``state_file``:
        the account (attributes, folders, lists, contacts) is read from it at start and written at stop, so a
        second demo run finds what the first one sent, as a real account would."""
        self.api_key = api_key
        self.faults = faults or Faults()
        self.behaviour = behaviour or Behaviour()
        self.automations = dict(automations or {})
        self.limits = {**LIMITS, **(limits or {})}
        self.import_delay = import_delay
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._windows: dict[tuple[str, str], deque] = {}
        self.attributes: dict[str, dict] = {n: {"name": n, "category": "normal", "type": t} for n, t in STANDARD_ATTRIBUTES.items()}
        self.folders: dict[int, str] = {}
        self.lists: dict[int, dict] = {}
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        self.processes: dict[int, dict] = {}
        self.webhooks: dict[int, dict] = {}
        self.events: list[dict] = []                  # every automation event accepted
        self.sent: list[dict] = []                    # every e-mail "sent": {"email", "automation", "at"}
        self.doi_pending: dict[str, dict] = {}
        self.counts: Counter = Counter()
        self.emails_received: Counter = Counter()     # every address any write carried, accepted or not
        self.first_received: dict[str, float] = {}   # address -> time.time() of the first write carrying it
        self.event_times: list[tuple[str, str, float]] = []   # (event name, address, time.time()) per event accepted
        self.deleted: list[str] = []                  # addresses of contacts deleted through the API
        self.peak_per_second: Counter = Counter()     # family -> most requests seen in one second
        self._event_ids: set[str] = set()
        self._next = {"contact": 1, "list": 1, "folder": 1, "process": 1, "webhook": 1}
        self._webhook_queue: deque = deque()
        self._worker_stop = threading.Event()
        self.httpd = LocalHTTPServer(("127.0.0.1", port), handler_for(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._threads: list[threading.Thread] = []
        self.state_file = Path(state_file) if state_file else None
        if self.state_file and self.state_file.is_file():
            self._load(json.loads(self.state_file.read_text(encoding="utf-8")))

    def _load(self, state: dict) -> None:
        self.attributes.update(state["attributes"])
        self.folders = {int(k): v for k, v in state["folders"].items()}
        self.lists = {int(k): v for k, v in state["lists"].items()}
        for c in state["contacts"]:
            contact = Contact(c["id"], c["email"], c["attributes"], set(c["list_ids"]), c["blocklisted"], c["blocked_reason"],
                              c["created_at"], c["modified_at"], c["modified_ts"])
            self.contacts[contact.id] = contact
            self.by_email[contact.email] = contact.id
        self._next.update(state["next"])

    def save(self) -> None:
        if self.state_file is None:
            return
        with self._lock:
            state = {"attributes": self.attributes, "folders": self.folders, "lists": self.lists, "next": self._next,
                     "contacts": [{**asdict(c), "list_ids": sorted(c.list_ids)} for c in self.contacts.values()]}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(self.state_file)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "BrevoServer":
        for target in (self.httpd.serve_forever, self._deliver_webhooks):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.save()
        self._worker_stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "BrevoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_faults(self, **changes) -> None:
        with self._lock:
            self.faults = Faults(**{**asdict(self.faults), **changes})

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] += 1
        return value

    # ------------------------------------------------------------------ rate limits

    @staticmethod
    def family(path: str) -> str:
        if path.startswith("/v3/contacts"):
            return "contacts"
        if path.startswith("/v3/events"):
            return "events"
        return "other"

    def admit(self, path: str) -> tuple[tuple[int, dict] | None, dict]:
        """Counts the request against its family's windows; (refusal or None, rate-limit headers)."""
        fam = self.family(path)
        per_second, per_hour = self.limits[fam]
        now = time.monotonic()
        with self._lock:
            tightest = None
            for name, limit, span in (("second", per_second, 1.0), ("hour", per_hour, 3600.0)):
                if limit is None:
                    continue
                w = self._windows.setdefault((fam, name), deque())
                while w and w[0] <= now - span:
                    w.popleft()
                remaining = limit - len(w)
                reset = (w[0] + span - now) if w else span
                if tightest is None or remaining < tightest[1] or (remaining == tightest[1] and span < tightest[3]):
                    tightest = (limit, remaining, reset, span)
            limit, remaining, reset, _span = tightest
            if remaining <= 0:
                self.counts["throttled"] += 1
                headers = {"x-sib-ratelimit-limit": str(limit), "x-sib-ratelimit-remaining": "0",
                           "x-sib-ratelimit-reset": str(max(1, int(reset + 0.999)))}
                return error(429, "too_many_requests", "The expected rate limit is exceeded."), headers
            for name, lim, _ in (("second", per_second, 1.0), ("hour", per_hour, 3600.0)):
                if lim is not None:
                    self._windows[(fam, name)].append(now)
            if per_second is not None:
                self.peak_per_second[fam] = max(self.peak_per_second[fam], len(self._windows[(fam, "second")]))
            headers = {"x-sib-ratelimit-limit": str(limit), "x-sib-ratelimit-remaining": str(remaining - 1),
                       "x-sib-ratelimit-reset": str(max(1, int(reset + 0.999)))}
            return None, headers

    def fault(self, path: str = "") -> tuple[int, dict] | None:
        """An injected error, or None. Injected 429s hit the per-second families (contacts, events) only, as a
        shared account's other clients would cause them; an hourly endpoint's 429 would mean an hour's wait."""
        f = self.faults
        with self._lock:
            if f.fail_next > 0:
                f.fail_next -= 1
                self.counts["injected_errors"] += 1
                return error(503, "service_unavailable", "Service temporarily unavailable")
            r = self._rng.random()
            if r < f.error_rate:
                self.counts["injected_errors"] += 1
                return error(500, "internal_error", "Internal server error")
            if self._rng.random() < f.throttle_rate and self.limits[self.family(path)][0] is not None:
                self.counts["throttled"] += 1
                return error(429, "too_many_requests", "The expected rate limit is exceeded.")
        return None

    def delay(self) -> float:
        f = self.faults
        return self._rng.uniform(f.latency_min, f.latency_max) if f.latency_max > 0 else 0.0

    # ------------------------------------------------------------------ attributes, folders, lists

    def create_attribute(self, category: str, name: str, body: dict) -> tuple[int, dict | None]:
        if category not in ATTRIBUTE_CATEGORIES:
            return error(400, "invalid_parameter", f"Invalid attribute category: {category}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            return error(400, "invalid_parameter", "Attribute name must start with a letter and hold letters, digits, _")
        refused = unknown_keys(body, {"type", "value", "enumeration", "isRecurring", "multiCategoryOptions"})
        if refused:
            return refused
        kind = body.get("type", "text")
        if kind not in ATTRIBUTE_TYPES:
            return error(400, "invalid_parameter", f"Invalid attribute type: {kind}")
        with self._lock:
            if name.upper() in self.attributes:
                return error(400, "duplicate_parameter", "Attribute name already exists")
            self.attributes[name.upper()] = {"name": name.upper(), "category": category, "type": kind}
        return 201, None

    def create_folder(self, body: dict) -> tuple[int, dict]:
        refused = unknown_keys(body, {"name"})
        if refused:
            return refused
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return error(400, "missing_parameter", "name is missing")
        with self._lock:
            fid = self._id("folder")
            self.folders[fid] = name
        return 201, {"id": fid}

    def create_list(self, body: dict) -> tuple[int, dict]:
        refused = unknown_keys(body, {"name", "folderId"})
        if refused:
            return refused
        name, folder = body.get("name"), body.get("folderId")
        if not isinstance(name, str) or not name.strip():
            return error(400, "missing_parameter", "name is missing")
        if not isinstance(folder, int):
            return error(400, "missing_parameter", "folderId is missing")
        with self._lock:
            if folder not in self.folders:
                return error(404, "document_not_found", "Folder ID does not exist")
            lid = self._id("list")
            self.lists[lid] = {"id": lid, "name": name, "folderId": folder, "created_by_api": True}
        return 201, {"id": lid}

    def make_foreign_list(self, name: str, emails: list[str]) -> int:
        """A list the marketing team built by hand in the tool (not through the connector)."""
        with self._lock:
            fid = self._id("folder")
            self.folders[fid] = "Marketing (manuell)"
            lid = self._id("list")
            self.lists[lid] = {"id": lid, "name": name, "folderId": fid, "created_by_api": False}
            for e in emails:
                self._upsert(e, {}, {lid})
        return lid

    def list_page(self, kind: str, params: dict) -> tuple[int, dict]:
        limit, offset = _int(params.get("limit"), 10), _int(params.get("offset"), 0)
        if limit is None or offset is None or not 0 <= limit <= 50 or offset < 0:
            return error(400, "out_of_range", "limit must be between 0 and 50")
        with self._lock:
            if kind == "lists":
                rows = [{"id": i, "name": v["name"], "folderId": v["folderId"],
                         "totalSubscribers": sum(1 for c in self.contacts.values() if i in c.list_ids)}
                        for i, v in sorted(self.lists.items())]
            else:
                rows = [{"id": i, "name": n} for i, n in sorted(self.folders.items())]
        return 200, {kind: rows[offset:offset + limit], "count": len(rows)}

    def membership(self, list_id: int, body: dict, add: bool) -> tuple[int, dict]:
        with self._lock:
            if list_id not in self.lists:
                return error(404, "document_not_found", "List ID does not exist")
            refused = unknown_keys(body, {"emails", "ids", "extIds"} | (set() if add else {"all"}))
            if refused:
                return refused
            if not add and body.get("all") is True:
                return error(400, "invalid_parameter", "removing all contacts is not offered by this local tool")
            emails, ids = body.get("emails"), body.get("ids")
            if emails is None and ids is None:
                return error(400, "missing_parameter", "emails or ids is required")
            items = emails if emails is not None else ids
            if not isinstance(items, list) or not items:
                return error(400, "invalid_parameter", "emails/ids must be a non-empty array")
            if len(items) > MAX_LIST_CALL:
                return error(400, "out_of_range", f"You can pass a maximum of {MAX_LIST_CALL} emails or ids per request")
            success, failure = [], []
            for item in items:
                if emails is not None:
                    self._saw(str(item))
                cid = self.by_email.get(str(item).lower()) if emails is not None else (item if item in self.contacts else None)
                contact = self.contacts.get(cid) if cid is not None else None
                if contact is None:
                    failure.append(item)
                    continue
                if add:
                    if contact.blocklisted:
                        self.counts["blocked_list_adds"] += 1
                    if list_id not in contact.list_ids:
                        contact.list_ids.add(list_id)
                        self._touch(contact)
                        self._automation(contact, list_id)
                    success.append(item)
                else:
                    if list_id in contact.list_ids:
                        if not self.lists[list_id]["created_by_api"]:
                            self.counts["foreign_removals"] += 1
                        contact.list_ids.discard(list_id)
                        self._touch(contact)
                        success.append(item)
                    else:
                        failure.append(item)
            self.counts["list_adds" if add else "list_removals"] += len(success)
        return 201, {"contacts": {"success": success, "failure": failure}}

    # ------------------------------------------------------------------ contacts

    def _saw(self, email: str) -> None:
        email = email.lower()
        self.emails_received[email] += 1
        self.first_received.setdefault(email, time.time())

    def _touch(self, c: Contact) -> None:
        c.modified_at, c.modified_ts = now_iso(), time.time()

    def _upsert(self, email: str, attributes: dict, list_ids: set) -> Contact:
        email = email.lower()
        cid = self.by_email.get(email)
        if cid is None:
            cid = self._id("contact")
            self.contacts[cid] = Contact(cid, email)
            self.by_email[email] = cid
        c = self.contacts[cid]
        for k, v in attributes.items():
            if k.upper() in self.attributes:  # attributes the account does not define are dropped
                c.attributes[k.upper()] = v
            else:
                self.counts["dropped_attributes"] += 1
        new_lists = set(list_ids) - c.list_ids
        if c.blocklisted and new_lists:
            self.counts["blocked_list_adds"] += 1
        c.list_ids |= set(list_ids)
        self._touch(c)
        for lid in new_lists:
            self._automation(c, lid)
        return c

    def find(self, identifier: str) -> Contact | None:
        if identifier.isdigit():
            return self.contacts.get(int(identifier))
        cid = self.by_email.get(identifier.lower())
        return self.contacts.get(cid) if cid is not None else None

    def get_contact(self, identifier: str) -> tuple[int, dict]:
        with self._lock:
            c = self.find(identifier)
            return (200, c.as_json()) if c else error(404, "document_not_found", "Contact does not exist")

    def update_contact(self, identifier: str, body: dict) -> tuple[int, dict | None]:
        allowed = {"attributes", "emailBlacklisted", "smsBlacklisted", "listIds", "unlinkListIds", "ext_id"}
        unknown = set(body) - allowed
        if unknown:
            return error(400, "invalid_parameter", f"Unknown parameter: {sorted(unknown)[0]}")
        with self._lock:
            c = self.find(identifier)
            if c is None:
                return error(404, "document_not_found", "Contact does not exist")
            self.emails_received[c.email] += 1
            if body.get("emailBlacklisted") is False and c.blocklisted:
                self.counts["resubscribed"] += 1
                c.blocklisted, c.blocked_reason = False, None
            elif body.get("emailBlacklisted") is True:
                c.blocklisted, c.blocked_reason = True, "api"
            for lid in body.get("unlinkListIds") or []:
                if lid in c.list_ids and not self.lists.get(lid, {}).get("created_by_api", True):
                    self.counts["foreign_removals"] += 1
                c.list_ids.discard(lid)
            self._upsert(c.email, body.get("attributes") or {}, set(body.get("listIds") or []))
        return 204, None

    def delete_contact(self, identifier: str) -> tuple[int, dict | None]:
        with self._lock:
            c = self.find(identifier)
            if c is None:
                return error(404, "document_not_found", "Contact does not exist")
            del self.contacts[c.id]
            del self.by_email[c.email]
            self.deleted.append(c.email)
            self._webhook("contactDeleted", c.email, {})
        return 204, None

    def contacts_page(self, params: dict) -> tuple[int, dict]:
        limit, offset = _int(params.get("limit"), 50), _int(params.get("offset"), 0)
        if limit is None or offset is None or not 0 <= limit <= 1000 or offset < 0:
            return error(400, "out_of_range", "limit must be between 0 and 1000")
        since = params.get("modifiedSince")
        since_ts = None
        if since:
            try:
                since_ts = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return error(400, "invalid_parameter", "modifiedSince must be an ISO 8601 date-time")
        with self._lock:
            rows = [c for c in sorted(self.contacts.values(), key=lambda c: (c.modified_ts, c.id))
                    if since_ts is None or c.modified_ts >= since_ts]
            return 200, {"contacts": [c.as_json() for c in rows[offset:offset + limit]], "count": len(rows)}

    def import_contacts(self, body: dict, raw_size: int) -> tuple[int, dict]:
        unknown = set(body) - IMPORT_KEYS
        if unknown:
            return error(400, "invalid_parameter", f"Unknown parameter: {sorted(unknown)[0]}")
        if raw_size > MAX_IMPORT_BYTES:
            return error(400, "out_of_range", "The import body exceeds 10 MB; use fileUrl")
        if not body.get("listIds") and not body.get("newList"):
            return error(400, "missing_parameter", "listIds is mandatory if newList is not defined")
        rows = body.get("jsonBody")
        if not isinstance(rows, list) or not rows:
            return error(400, "missing_parameter", "jsonBody, fileBody or fileUrl is required")
        with self._lock:
            missing = [lid for lid in body.get("listIds") or [] if lid not in self.lists]
            if missing:
                return error(404, "document_not_found", f"List ID {missing[0]} does not exist")
            pid = self._id("process")
            self.processes[pid] = {"id": pid, "status": "queued", "name": "import", "rows": len(rows), "invalid": 0}
            for r in rows:
                if isinstance(r, dict) and isinstance(r.get("email"), str):
                    self._saw(r["email"])
        timer = threading.Timer(self.import_delay, self._run_import, args=(pid, body))
        timer.daemon = True
        timer.start()
        return 202, {"processId": pid}

    def _run_import(self, pid: int, body: dict) -> None:
        with self._lock:
            proc = self.processes[pid]
            proc["status"] = "in_process"
            lists = set(body.get("listIds") or [])
            for r in body["jsonBody"]:
                email = r.get("email") if isinstance(r, dict) else None
                attrs = r.get("attributes") or {} if isinstance(r, dict) else {}
                if not isinstance(email, str) or not EMAIL.match(email) or not isinstance(attrs, dict):
                    proc["invalid"] += 1
                    continue
                if body.get("emailBlacklist"):
                    c = self._upsert(email, attrs, lists)
                    c.blocklisted = True
                elif body.get("updateExistingContacts", True) or email.lower() not in self.by_email:
                    if not body.get("emptyContactsAttributes"):
                        attrs = {k: v for k, v in attrs.items() if v not in (None, "")}
                    self._upsert(email, attrs, lists)
            proc["status"] = "completed"
            self.counts["imports"] += 1
            self.counts["imported_rows"] += proc["rows"] - proc["invalid"]
        if body.get("notifyUrl"):
            try:
                requests.post(body["notifyUrl"], json={"processId": pid, "status": "completed"}, timeout=5)
            except requests.RequestException:
                pass

    def process(self, pid: int) -> tuple[int, dict]:
        with self._lock:
            p = self.processes.get(pid)
            if p is None:
                return error(404, "document_not_found", "Process does not exist")
            return 200, {"id": p["id"], "status": p["status"], "name": p["name"]}

    def double_opt_in(self, body: dict) -> tuple[int, dict]:
        refused = unknown_keys(body, {"email", "includeListIds", "templateId", "redirectionUrl", "attributes"})
        if refused:
            return refused
        for key in ("email", "includeListIds", "templateId", "redirectionUrl"):
            if body.get(key) in (None, "", []):
                return error(400, "missing_parameter", f"{key} is missing")
        if not EMAIL.match(str(body["email"])):
            return error(400, "invalid_parameter", "email is not valid")
        with self._lock:
            self.emails_received[body["email"].lower()] += 1
            self.doi_pending[body["email"].lower()] = body
        return 201, {"id": len(self.doi_pending)}

    def confirm_double_opt_in(self, email: str) -> bool:
        """The recipient clicks the confirmation link: the contact is created in the lists, a listAddition
        webhook goes out (the tool's report that the double opt-in is confirmed)."""
        with self._lock:
            body = self.doi_pending.pop(email.lower(), None)
            if body is None:
                return False
            self._upsert(email, body.get("attributes") or {}, set(body["includeListIds"]))
            self._webhook("listAddition", email, {"list_id": sorted(body["includeListIds"]), "doi": True})
        return True

    # ------------------------------------------------------------------ events, automations, engagement

    def create_events(self, items: list, batch: bool) -> tuple[int, dict | None]:
        if not isinstance(items, list) or not items or (batch and len(items) > 200):
            return error(400, "invalid_parameter", "events must be a non-empty array of at most 200")
        failed = []
        with self._lock:
            for i, ev in enumerate(items):
                problem = self._event_problem(ev)
                if problem:
                    if not batch:
                        return error(400, "invalid_parameter", problem)
                    failed.append({"index": i, "message": problem})
                    continue
                ident = ev["identifiers"]
                email = (ident.get("email_id") or "").lower()
                if email:
                    self._saw(email)
                    self.event_times.append((ev["event_name"], email, time.time()))
                event_id = str((ev.get("event_properties") or {}).get("event_id") or "")
                if event_id:
                    if event_id in self._event_ids:
                        self.counts["duplicate_events"] += 1
                    self._event_ids.add(event_id)
                c = self.find(email) if email else self.contacts.get(ident.get("contact_id"))
                if c is None and email:
                    c = self._upsert(email, {}, set())
                if c is not None and ev.get("contact_properties"):
                    self._upsert(c.email, ev["contact_properties"], set())
                self.events.append({**ev, "received_at": time.time()})
                self.counts["events"] += 1
                if c is not None:
                    self._automation(c, ev["event_name"])
        if failed:
            return 207, {"failed": failed}
        return 204, None

    @staticmethod
    def _event_problem(ev) -> str | None:
        if not isinstance(ev, dict):
            return "event must be an object"
        if not isinstance(ev.get("event_name"), str) or not EVENT_NAME.match(ev["event_name"]):
            return "event_name is missing or holds characters other than letters, digits, - and _"
        ident = ev.get("identifiers")
        if not isinstance(ident, dict) or not any(ident.get(k) for k in ("email_id", "contact_id", "ext_id", "phone_id")):
            return "identifiers must hold at least one identifier"
        if ident.get("email_id") and not EMAIL.match(str(ident["email_id"])):
            return "identifiers.email_id is not a valid e-mail address"
        unknown = set(ev) - {"event_name", "identifiers", "contact_properties", "event_properties", "event_date", "object"}
        if unknown:
            return f"Unknown parameter: {sorted(unknown)[0]}"
        return None

    def _automation(self, c: Contact, trigger) -> None:
        """An automation listening to this list or event sends its e-mails (called under the lock)."""
        mails = self.automations.get(trigger)
        if mails is None and isinstance(trigger, int) and trigger in self.lists:
            mails = self.automations.get(self.lists[trigger]["name"])
        if not mails or c.blocklisted:
            return
        for step in range(int(mails)):
            camp = f"{trigger}#{step + 1}"
            self.sent.append({"email": c.email, "automation": trigger, "step": step + 1, "at": time.time()})
            self.simulate(c.email, camp)

    def simulate(self, email: str, campaign: str, reaction: str | None = None) -> list[str]:
        """What the recipient of one e-mail does: delivered, then perhaps opened/click, unsubscribed,
        hard bounce or spam by :class:`Behaviour` (or exactly ``reaction``). Returns the webhook events."""
        b, r = self.behaviour, self._rng
        with self._lock:
            c = self.find(email)
            if c is None or c.blocklisted:
                return []
            if reaction is not None:
                events = ["delivered", reaction] if reaction not in ("hardBounce",) else [reaction]
            elif r.random() < b.hard_bounce_rate:
                events = ["hardBounce"]
            else:
                events = ["delivered"]
                if r.random() < b.open_rate:
                    events.append("opened")
                    if r.random() < b.click_rate:
                        events.append("click")
                if r.random() < b.unsubscribe_rate:
                    events.append("unsubscribed")
                elif r.random() < b.spam_rate:
                    events.append("spam")
            for ev in events:
                if ev in BLOCKING:
                    c.blocklisted, c.blocked_reason = True, BLOCKING[ev]
                    self._touch(c)
                self._webhook(ev, c.email, {"camp_id": zlib.crc32(campaign.encode()) % 100000, "tag": campaign})
        return events

    def register_webhook(self, body: dict) -> tuple[int, dict]:
        refused = unknown_keys(body, {"url", "events", "type", "batched", "description", "domain", "auth", "headers",
                                      "channel"})
        if refused:
            return refused
        url, events = body.get("url"), body.get("events")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return error(400, "invalid_parameter", "url is not valid")
        if not isinstance(events, list) or not events or set(events) - WEBHOOK_EVENTS:
            return error(400, "invalid_parameter", f"events must be among {sorted(WEBHOOK_EVENTS)}")
        if body.get("type", "transactional") != "marketing":
            return error(400, "invalid_parameter", "this local tool sends marketing webhooks only")
        with self._lock:
            wid = self._id("webhook")
            self.webhooks[wid] = {"id": wid, "url": url, "events": set(events), "batched": bool(body.get("batched"))}
        return 201, {"id": wid}

    def _webhook(self, event: str, email: str, extra: dict) -> None:
        now = time.time()
        payload = {"event": PAYLOAD_EVENT[event], "email": email, "id": None, "date_event": now_iso(),
                   "ts_event": int(now), "ts": int(now), "message-id": f"<{self._rng.getrandbits(64):x}@local-brevo>",
                   **({"reason": "mailbox does not exist"} if event == "hardBounce" else {}), **extra}
        for hook in self.webhooks.values():
            if event in hook["events"]:
                self._webhook_queue.append((hook, {**payload, "id": hook["id"]}))

    def _deliver_webhooks(self) -> None:
        """Posts queued webhook events, one request per event (or per batch of up to 500 when the hook is
        batched); an endpoint that fails gets the events again later, as Brevo retries."""
        session = requests.Session()
        while not self._worker_stop.is_set():
            if not self._webhook_queue:
                self._worker_stop.wait(0.05)
                continue
            hook, first = self._webhook_queue.popleft()
            batch = [first]
            if hook["batched"]:
                while self._webhook_queue and len(batch) < 500 and self._webhook_queue[0][0] is hook:
                    batch.append(self._webhook_queue.popleft()[1])
            try:
                resp = session.post(hook["url"], json=batch if hook["batched"] else first, timeout=5)
                ok = resp.status_code < 300
            except requests.RequestException:
                ok = False
            with self._lock:
                self.counts["webhooks_sent" if ok else "webhooks_failed"] += len(batch)
            if not ok:
                for item in reversed(batch):
                    self._webhook_queue.appendleft((hook, item))
                self._worker_stop.wait(0.5)

    def webhooks_pending(self) -> int:
        return len(self._webhook_queue)

    def stats(self) -> dict:
        with self._lock:
            return {**dict(self.counts), "contacts": len(self.contacts), "lists": len(self.lists),
                    "blocklisted": sum(c.blocklisted for c in self.contacts.values()),
                    "peak_per_second": dict(self.peak_per_second), "webhooks_pending": len(self._webhook_queue),
                    "sent": len(self.sent), "events_received": len(self.events)}


def _int(value, default: int) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
