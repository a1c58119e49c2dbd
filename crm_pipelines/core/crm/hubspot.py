"""The HubSpot CRM v3 connector (plain requests over :class:`~.http.HttpTransport`).

Endpoints used (HubSpot's public API reference):
- ``GET  /crm/v3/objects/{type}?limit=100&after=…&properties=…``: paged reads;
- ``POST /crm/v3/objects/{type}/batch/upsert``: ``{"inputs": [{"id", "idProperty", "properties"}]}``,
  100 inputs at most; 200 when every row succeeded, 207 with per-row ``errors`` otherwise;
- ``POST /crm/v3/objects/{type}/batch/update``: objects we know by the CRM's own ID;
- ``POST /crm/v3/objects/{type}/batch/read``: by ID or by a unique property (``idProperty``: email);
- ``POST /crm/v3/objects/{type}/search``: what changed since a moment (``lastmodifieddate`` for contacts,
  ``hs_lastmodifieddate`` otherwise), 200 per page, at most 10,000 results per query, 5 requests/s;
- ``GET  /crm/v3/objects/{type}?archived=true``: what was deleted (archived) in the CRM;
- ``POST /crm/v3/objects/{type}/batch/archive``: mirror mode;
- ``POST /crm/v4/associations/{from}/{to}/batch/associate/default``: contact -> company, 1,000 pairs per call;
- ``GET/POST /crm/v3/properties/{type}`` and ``.../groups``: the portal's property definitions;
- ``POST /crm/v3/objects/tasks/batch/create``: follow-up tasks, associated with their contact;
- ``POST /crm/v3/objects/contacts/gdpr-delete``: permanent deletion that also blocklists the e-mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence
from urllib.parse import quote

from ..platform.http import CallStats, HttpTransport, RateLimiter, Response, ServiceUnavailable
from .protocol import (ABSENT, ARCHIVED, CREATED, DELETED, FAILED, REJECTED, UPDATED, CrmAuthError, RowResult, Task,
                       UpsertInput)

TASK_TO_CONTACT = 204  # HubSpot-defined association type id "task to contact"
MODIFIED = {"contacts": "lastmodifieddate"}  # the search's modification stamp; hs_lastmodifieddate elsewhere
SEARCH_PAGE = 200
HISTORY_BATCH = 50          # records per batch read with propertiesWithHistory
ASSOCIATION_BATCH = 1000    # objects per v4 association batch read
SEARCH_CAP = 10_000
EXISTING_ID = re.compile(r"Existing ID: (\d+)")


@dataclass
class HubSpotConnector:
    transport: HttpTransport
    name: str = "hubspot"
    max_batch: int = 100
    page_size: int = 100
    max_association_batch: int = 1000
    max_list_batch: int = 1000   # record IDs per membership call (HubSpot takes up to 100,000)
    search_cap: int = SEARCH_CAP       # results one search query can page through
    # The search endpoints allow 5 requests per second per account; one in reserve for other clients.
    search_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(max_requests=4, window_seconds=1.0))

    @classmethod
    def create(cls, base_url: str, token: str | None, max_requests: int = 190, window_seconds: float = 10.0,
               timeout: float = 30.0, max_attempts: int = 6, **transport: Any) -> "HubSpotConnector":
        limiter = RateLimiter(max_requests=max_requests, window_seconds=window_seconds)
        return cls(HttpTransport(base_url, token, limiter, timeout=timeout, max_attempts=max_attempts, **transport))

    @property
    def stats(self) -> CallStats:
        return self.transport.stats

    # ------------------------------------------------------------------ reads

    def read_objects(self, object_type: str, properties: Sequence[str], archived: bool = False) -> Iterator[dict]:
        after: str | None = None
        while True:
            params = {"limit": self.page_size, "properties": ",".join(properties), "archived": str(archived).lower()}
            if after:
                params["after"] = after
            resp = self._ok(self.transport.request("GET", f"/crm/v3/objects/{object_type}", params=params),
                            f"reading {object_type}")
            yield from resp.body.get("results", [])
            after = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return

    def get_object(self, object_type: str, object_id: str, properties: Sequence[str] = ()) -> dict | None:
        """One object by the CRM's ID (None when it does not exist, e.g. deleted)."""
        params = {"properties": ",".join(properties)} if properties else None
        resp = self.transport.request("GET", f"/crm/v3/objects/{object_type}/{object_id}", params=params)
        if resp.status == 404:
            return None
        return self._ok(resp, f"reading {object_type} {object_id}").body

    def changed_since(self, object_type: str, since_ms: int, properties: Sequence[str]) -> Iterator[dict]:
        """Every object modified at or after ``since_ms`` (epoch milliseconds), oldest first. The search
        stops at 10,000 results per query, so a long backlog is read as several queries, each starting
        at the last modification stamp seen (objects seen twice at that stamp are skipped)."""
        stamp = MODIFIED.get(object_type, "hs_lastmodifieddate")
        lower, seen_at_lower = int(since_ms), set()
        while True:
            after, last_ms, seen, fresh = 0, None, set(), 0
            while True:
                body = {"filterGroups": [{"filters": [{"propertyName": stamp, "operator": "GTE", "value": str(lower)}]}],
                        "sorts": [{"propertyName": stamp, "direction": "ASCENDING"}],
                        "properties": sorted(set(properties) | {stamp, "hs_merged_object_ids"}),
                        "limit": SEARCH_PAGE, "after": str(after)}
                resp = self._ok(self.transport.request("POST", f"/crm/v3/objects/{object_type}/search", json=body,
                                                       also=self.search_limiter), f"searching {object_type}")
                for obj in resp.body.get("results", []):
                    if obj["id"] in seen_at_lower:
                        continue
                    ms = epoch_ms((obj.get("properties") or {}).get(stamp) or obj.get("updatedAt"))
                    if ms is not None and ms != last_ms:
                        last_ms, seen = ms, set()
                    seen.add(obj["id"])
                    fresh += 1
                    yield obj
                nxt = ((resp.body.get("paging") or {}).get("next") or {}).get("after")
                if not nxt:
                    return
                after = int(nxt)
                if after + SEARCH_PAGE > self.search_cap:
                    break
            if not fresh or last_ms is None:
                raise ServiceUnavailable(f"searching {object_type}: more than {self.search_cap:,} objects share one "
                                     "modification stamp; read them with a full pull instead")
            # The next query starts at the newest stamp seen; what was already read at that stamp is skipped.
            seen_at_lower = (seen_at_lower | seen) if last_ms == lower else seen
            lower = last_ms

    def read_by(self, object_type: str, values: Sequence[str], properties: Sequence[str] = (),
                id_property: str | None = None) -> dict[str, dict]:
        """Objects by their IDs (or by a unique property such as ``email``): value -> object; absent ones left out.
        Reading a merged-away ID answers with the record it was merged into."""
        out: dict[str, dict] = {}
        values = list(dict.fromkeys(values))
        for start in range(0, len(values), self.max_batch):
            chunk = values[start:start + self.max_batch]
            # The key comes back as a property: by a unique property, that one; by ID, the merged-away IDs.
            extra = id_property or "hs_merged_object_ids"
            body: dict[str, Any] = {"inputs": [{"id": v} for v in chunk],
                                    "properties": sorted(set(properties) | {extra})}
            if id_property:
                body["idProperty"] = id_property
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/read", json=body)
            self._auth(resp)
            if resp.status not in (200, 207):
                raise ServiceUnavailable(f"reading {object_type}: HTTP {resp.status}: {_message(resp)}")
            results = resp.body.get("results", [])
            if id_property:
                by_value = {str((r.get("properties") or {}).get(id_property) or "").strip().lower(): r for r in results}
                for v in chunk:
                    if v.strip().lower() in by_value:
                        out[v] = by_value[v.strip().lower()]
            else:
                for r in results:
                    out[str(r["id"])] = r
                # A merged-away ID comes back as its survivor: map it through hs_merged_object_ids.
                for r in results:
                    for alias in str((r.get("properties") or {}).get("hs_merged_object_ids") or "").split(";"):
                        if alias in chunk and alias not in out:
                            out[alias] = r
        return out

    # ------------------------------------------------------------------ deals (the closed loop)

    def pipelines(self, object_type: str = "deals") -> list[dict]:
        """The object type's pipelines with their stages (``metadata.probability``, ``metadata.isClosed``)."""
        resp = self._ok(self.transport.request("GET", f"/crm/v3/pipelines/{object_type}"),
                        f"reading the {object_type} pipelines")
        return list(resp.body.get("results", []))

    def read_with_history(self, object_type: str, ids: Sequence[str], properties: Sequence[str],
                          history_of: Sequence[str]) -> dict[str, dict]:
        """Objects by ID with the full history of ``history_of`` (``propertiesWithHistory``: newest first); HubSpot
        takes at most 50 records per such read. ID -> object; absent ones left out."""
        out: dict[str, dict] = {}
        ids = list(dict.fromkeys(str(i) for i in ids))
        for start in range(0, len(ids), HISTORY_BATCH):
            chunk = ids[start:start + HISTORY_BATCH]
            body = {"inputs": [{"id": i} for i in chunk], "properties": sorted(set(properties)),
                    "propertiesWithHistory": sorted(set(history_of))}
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/read", json=body)
            self._auth(resp)
            if resp.status not in (200, 207):
                raise ServiceUnavailable(f"reading {object_type} with history: HTTP {resp.status}: {_message(resp)}")
            for r in resp.body.get("results", []):
                out[str(r["id"])] = r
        return out

    def associations(self, from_type: str, to_type: str, ids: Sequence[str]) -> dict[str, list[str]]:
        """The v4 associations of each object: ID -> the associated objects' IDs (objects without any left out)."""
        out: dict[str, list[str]] = {}
        ids = list(dict.fromkeys(str(i) for i in ids))
        for start in range(0, len(ids), ASSOCIATION_BATCH):
            chunk = ids[start:start + ASSOCIATION_BATCH]
            resp = self.transport.request("POST", f"/crm/v4/associations/{from_type}/{to_type}/batch/read",
                                          json={"inputs": [{"id": i} for i in chunk]})
            self._auth(resp)
            if resp.status not in (200, 207):
                raise ServiceUnavailable(f"reading {from_type} -> {to_type} associations: HTTP {resp.status}: "
                                         f"{_message(resp)}")
            for r in resp.body.get("results", []):
                out[str(r["from"]["id"])] = [str(t["toObjectId"]) for t in r.get("to") or []]
        return out

    # ------------------------------------------------------------------ the portal's properties

    def properties(self, object_type: str) -> dict[str, dict]:
        """The portal's property definitions of a type: name -> definition."""
        resp = self._ok(self.transport.request("GET", f"/crm/v3/properties/{object_type}"),
                        f"reading the {object_type} properties")
        return {d["name"]: d for d in resp.body.get("results", [])}

    def property_groups(self, object_type: str) -> set[str]:
        resp = self._ok(self.transport.request("GET", f"/crm/v3/properties/{object_type}/groups"),
                        f"reading the {object_type} property groups")
        return {g["name"] for g in resp.body.get("results", [])}

    def create_property_group(self, object_type: str, name: str, label: str) -> str:
        """``created`` or ``exists``."""
        resp = self.transport.request("POST", f"/crm/v3/properties/{object_type}/groups",
                                      json={"name": name, "label": label, "displayOrder": -1})
        return self._created(resp, f"property group {object_type}.{name}")

    def create_property(self, object_type: str, definition: dict) -> str:
        """``created`` or ``exists``; any other refusal raises with HubSpot's message."""
        resp = self.transport.request("POST", f"/crm/v3/properties/{object_type}", json=definition)
        return self._created(resp, f"property {object_type}.{definition['name']}")

    def _created(self, resp: Response, what: str) -> str:
        self._auth(resp)
        if resp.status in (200, 201):
            return "created"
        if resp.status == 409:
            return "exists"
        raise ServiceUnavailable(f"creating {what}: HTTP {resp.status}: {_message(resp)}")

    # ------------------------------------------------------------------ writes

    def upsert(self, object_type: str, id_property: str, inputs: Sequence[UpsertInput]) -> list[RowResult]:
        self._check_batch(inputs)
        body = {"inputs": [{"id": i.key, "idProperty": id_property, "properties": i.properties} for i in inputs]}
        try:
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/upsert", json=body)
        except ServiceUnavailable as exc:
            return [RowResult(i.key, FAILED, message=str(exc)) for i in inputs]
        self._auth(resp)
        keys = [i.key for i in inputs]
        if resp.status in (200, 201, 207):
            done: dict[str, RowResult] = {}
            for r in resp.body.get("results", []):
                key = str((r.get("properties") or {}).get(id_property) or r.get("id"))
                done[key] = RowResult(key, CREATED if r.get("new") else UPDATED, crm_id=str(r.get("id")))
            for key, message in _row_errors(resp.body, keys):
                done.setdefault(key, RowResult(key, REJECTED, message=message))
            return [done.get(k) or RowResult(k, FAILED, message="the CRM returned no result for this row") for k in keys]
        if resp.status == 409 and object_type == "contacts":
            return self._split_conflict(object_type, id_property, inputs, resp)
        return [RowResult(k, REJECTED, message=_message(resp)) for k in keys]

    def _split_conflict(self, object_type: str, id_property: str, inputs: Sequence[UpsertInput],
                        resp: Response) -> list[RowResult]:
        """A whole batch refused with 409 "Contact already exists" names one contact at most: look the batch's
        e-mails up, answer the rows whose address another contact holds, and send the others again."""
        emails = {i.key: str(i.properties.get("email") or "").strip().lower() for i in inputs}
        existing = self.read_by(object_type, [e for e in emails.values() if e], [id_property], id_property="email")
        clash = {k: existing[e] for k, e in emails.items() if e in existing
                 and (existing[e].get("properties") or {}).get(id_property) != k}
        if not clash:
            return [RowResult(i.key, REJECTED, message=_message(resp)) for i in inputs]
        rest = [i for i in inputs if i.key not in clash]
        out = {r.key: r for r in (self.upsert(object_type, id_property, rest) if rest else [])}
        for k, obj in clash.items():
            out[k] = RowResult(k, REJECTED, message=f"CONFLICT: Contact already exists. Existing ID: {obj['id']}")
        return [out[i.key] for i in inputs]

    def update(self, object_type: str, inputs: Sequence[UpsertInput], crm_ids: Sequence[str]) -> list[RowResult]:
        self._check_batch(inputs)
        body = {"inputs": [{"id": c, "properties": i.properties} for i, c in zip(inputs, crm_ids)]}
        try:
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/update", json=body)
        except ServiceUnavailable as exc:
            return [RowResult(i.key, FAILED, crm_id=c, message=str(exc)) for i, c in zip(inputs, crm_ids)]
        self._auth(resp)
        if resp.status in (200, 207):
            ok = {str(r.get("id")) for r in resp.body.get("results", [])}
            errors = dict(_row_errors(resp.body, crm_ids))
            out = []
            for i, c in zip(inputs, crm_ids):
                if c in ok:
                    out.append(RowResult(i.key, UPDATED, crm_id=c))
                elif c in errors:
                    out.append(RowResult(i.key, REJECTED, crm_id=c, message=errors[c]))
                else:
                    out.append(RowResult(i.key, FAILED, crm_id=c, message="the CRM returned no result for this row"))
            return out
        return [RowResult(i.key, REJECTED, crm_id=c, message=_message(resp)) for i, c in zip(inputs, crm_ids)]

    def archive(self, object_type: str, keys_and_ids: Sequence[tuple[str, str]]) -> list[RowResult]:
        self._check_batch(keys_and_ids)
        body = {"inputs": [{"id": crm_id} for _, crm_id in keys_and_ids]}
        try:
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/archive", json=body)
        except ServiceUnavailable as exc:
            return [RowResult(k, FAILED, crm_id=c, message=str(exc)) for k, c in keys_and_ids]
        self._auth(resp)
        status, message = (ARCHIVED, None) if resp.status in (200, 204) else (REJECTED, _message(resp))
        return [RowResult(k, status, crm_id=c, message=message) for k, c in keys_and_ids]

    def associate(self, from_type: str, to_type: str, pairs: Sequence[tuple[str, str, str]]) -> list[RowResult]:
        if len(pairs) > self.max_association_batch:
            raise ValueError(f"{self.name}: {len(pairs)} associations in one request, at most "
                             f"{self.max_association_batch} allowed")
        body = {"inputs": [{"from": {"id": a}, "to": {"id": b}} for _, a, b in pairs]}
        try:
            resp = self.transport.request("POST", f"/crm/v4/associations/{from_type}/{to_type}/batch/associate/default",
                                          json=body)
        except ServiceUnavailable as exc:
            return [RowResult(k, FAILED, crm_id=a, message=str(exc)) for k, a, _ in pairs]
        self._auth(resp)
        if resp.status in (200, 201, 204, 207):
            failed = {}
            for err in (resp.body or {}).get("errors", []):
                for ctx_ids in (err.get("context") or {}).values():
                    for i in ctx_ids if isinstance(ctx_ids, list) else [ctx_ids]:
                        failed[str(i)] = err.get("message", "rejected")
            return [RowResult(k, REJECTED if a in failed else UPDATED, crm_id=a, message=failed.get(a)) for k, a, _ in pairs]
        smaller = _batch_limit(resp, len(pairs))
        if smaller:
            # A portal (or a compatible server) that takes fewer pairs per call: from now on that many.
            self.max_association_batch = smaller
            return [r for start in range(0, len(pairs), smaller)
                    for r in self.associate(from_type, to_type, pairs[start:start + smaller])]
        return [RowResult(k, REJECTED, crm_id=a, message=_message(resp)) for k, a, _ in pairs]

    def create_tasks(self, tasks: Sequence[Task]) -> list[RowResult]:
        self._check_batch(tasks)
        inputs = []
        for t in tasks:
            props = {"hs_task_subject": t.subject, "hs_task_body": t.body, "hs_timestamp": t.due_at,
                     "hs_task_status": "NOT_STARTED", "hs_task_priority": t.priority}
            if t.owner_id:
                props["hubspot_owner_id"] = t.owner_id
            item: dict[str, Any] = {"properties": props}
            if t.contact_crm_id:
                item["associations"] = [{"to": {"id": t.contact_crm_id}, "types": [
                    {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}]}]
            inputs.append(item)
        try:
            resp = self.transport.request("POST", "/crm/v3/objects/tasks/batch/create", json={"inputs": inputs})
        except ServiceUnavailable as exc:
            return [RowResult(t.key, FAILED, message=str(exc)) for t in tasks]
        self._auth(resp)
        if resp.status in (200, 201):
            ids = [str(r.get("id")) for r in resp.body.get("results", [])]
            return [RowResult(t.key, CREATED, crm_id=ids[i] if i < len(ids) else None) for i, t in enumerate(tasks)]
        return [RowResult(t.key, REJECTED, message=_message(resp)) for t in tasks]

    def gdpr_delete(self, identifier: str, by: str = "email") -> RowResult:
        """``by="email"`` (also blocklists the address) or ``by="id"`` (the CRM's contact ID)."""
        body = {"objectId": identifier, "idProperty": "email"} if by == "email" else {"objectId": identifier}
        try:
            resp = self.transport.request("POST", "/crm/v3/objects/contacts/gdpr-delete", json=body)
        except ServiceUnavailable as exc:
            return RowResult(identifier, FAILED, message=str(exc))
        self._auth(resp)
        if resp.status in (200, 204):
            return RowResult(identifier, DELETED)
        if resp.status == 404:
            return RowResult(identifier, ABSENT, message="no such contact in the CRM")
        return RowResult(identifier, REJECTED, message=_message(resp))

    # ------------------------------------------------------------------ lists (segments)

    def ensure_list(self, name: str) -> str:
        """The ID of the MANUAL contact list of this name, created if missing (HubSpot list names are unique)."""
        path = f"/crm/v3/lists/object-type-id/0-1/name/{quote(name, safe='')}"
        resp = self.transport.request("GET", path)
        self._auth(resp)
        if resp.status == 200:
            return str(resp.body["list"]["listId"])
        if resp.status != 404:
            raise ServiceUnavailable(f"looking up list {name!r}: HTTP {resp.status}: {_message(resp)}")
        created = self._ok(self.transport.request("POST", "/crm/v3/lists", json={
            "name": name, "objectTypeId": "0-1", "processingType": "MANUAL"}), f"creating list {name!r}")
        return str(created.body["list"]["listId"])

    def change_list(self, list_id: str, record_ids: Sequence[str], add: bool) -> tuple[list[str], list[str]]:
        """(changed, missing) record IDs; at most ``max_list_batch`` per request, split here."""
        done, missing = [], []
        verb = "add" if add else "remove"
        for i in range(0, len(record_ids), self.max_list_batch):
            part = [str(r) for r in record_ids[i:i + self.max_list_batch]]
            body = self._ok(self.transport.request("PUT", f"/crm/v3/lists/{list_id}/memberships/{verb}", json=part),
                            f"list {list_id} memberships/{verb}").body or {}
            done += [str(r) for r in body.get("recordIdsAdded" if add else "recordIdsRemoved") or []]
            missing += [str(r) for r in body.get("recordIdsMissing") or []]
        return done, missing

    def list_members(self, list_id: str) -> list[str]:
        out, after = [], None
        while True:
            params = {"limit": 250, **({"after": after} if after else {})}
            body = self._ok(self.transport.request("GET", f"/crm/v3/lists/{list_id}/memberships", params=params),
                            f"reading list {list_id}").body or {}
            out += [str(r["recordId"]) for r in body.get("results") or []]
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return out

    # ------------------------------------------------------------------ helpers

    def _check_batch(self, items: Sequence) -> None:
        if len(items) > self.max_batch:
            raise ValueError(f"{self.name}: {len(items)} inputs in one request, at most {self.max_batch} allowed")

    @staticmethod
    def _auth(resp: Response) -> None:
        if resp.status in (401, 403):
            raise CrmAuthError(f"the CRM refused the credentials (HTTP {resp.status}): {_message(resp)}")

    def _ok(self, resp: Response, what: str) -> Response:
        self._auth(resp)
        if resp.status != 200:
            raise ServiceUnavailable(f"{what}: HTTP {resp.status}: {_message(resp)}")
        return resp


def _batch_limit(resp: Response, sent: int) -> int | None:
    """The smaller batch size a 400 "Batch input limit is N" (or "at most N inputs") asks for, if any."""
    if resp.status != 400:
        return None
    text = _message(resp).lower()
    if "limit" not in text and "at most" not in text and "too many" not in text:
        return None
    numbers = [int(n) for n in re.findall(r"\d+", text) if 0 < int(n) < sent]
    return min(numbers) if numbers else (sent // 2 if sent > 1 and "batch" in text else None)


def existing_id(message: str | None) -> str | None:
    """The CRM ID a "Contact already exists. Existing ID: 123" answer names."""
    m = EXISTING_ID.search(message or "")
    return m.group(1) if m else None


def epoch_ms(value) -> int | None:
    if value in (None, ""):
        return None
    text = str(value)
    if text.isdigit():
        return int(text)
    from datetime import datetime
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _message(resp: Response) -> str:
    body = resp.body if isinstance(resp.body, dict) else {}
    parts = [str(body.get("category") or ""), str(body.get("message") or "")]
    text = ": ".join(p for p in parts if p) or f"HTTP {resp.status}"
    return f"HTTP {resp.status} {text}"[:1000]


def _row_errors(body: dict, keys: Sequence[str]) -> list[tuple[str, str]]:
    """(key, message) per failed row of a 207 answer; the row is named in the error's context."""
    wanted = set(keys)
    out = []
    for err in body.get("errors", []) or []:
        message = f"{err.get('category', 'error')}: {err.get('message', '')}".strip()
        for value in (err.get("context") or {}).values():
            for v in value if isinstance(value, list) else [value]:
                if str(v) in wanted:
                    out.append((str(v), message[:1000]))
    return out
