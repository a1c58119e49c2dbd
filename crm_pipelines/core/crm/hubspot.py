"""The HubSpot CRM v3 connector (plain requests over :class:`~.http.HttpTransport`).

Endpoints used (HubSpot's public API reference):
- ``GET  /crm/v3/objects/{type}?limit=100&after=…&properties=…``: paged reads;
- ``POST /crm/v3/objects/{type}/batch/upsert``: ``{"inputs": [{"id", "idProperty", "properties"}]}``,
  100 inputs at most; 200 when every row succeeded, 207 with per-row ``errors`` otherwise;
- ``POST /crm/v3/objects/{type}/batch/archive``: mirror mode;
- ``PUT  /crm/v4/associations/{from}/{to}/batch/associate/default``: contact -> company;
- ``POST /crm/v3/objects/tasks/batch/create``: follow-up tasks, associated with their contact;
- ``POST /crm/v3/objects/contacts/gdpr-delete``: permanent deletion that also blocklists the e-mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .http import CallStats, CrmUnavailable, HttpTransport, RateLimiter, Response
from .protocol import (ABSENT, ARCHIVED, CREATED, DELETED, FAILED, REJECTED, UPDATED, CrmAuthError, RowResult, Task,
                       UpsertInput)

TASK_TO_CONTACT = 204  # HubSpot-defined association type id "task to contact"


@dataclass
class HubSpotConnector:
    transport: HttpTransport
    name: str = "hubspot"
    max_batch: int = 100
    page_size: int = 100

    @classmethod
    def create(cls, base_url: str, token: str | None, max_requests: int = 190, window_seconds: float = 10.0,
               timeout: float = 30.0, max_attempts: int = 6, **transport: Any) -> "HubSpotConnector":
        limiter = RateLimiter(max_requests=max_requests, window_seconds=window_seconds)
        return cls(HttpTransport(base_url, token, limiter, timeout=timeout, max_attempts=max_attempts, **transport))

    @property
    def stats(self) -> CallStats:
        return self.transport.stats

    # ------------------------------------------------------------------ reads

    def read_objects(self, object_type: str, properties: Sequence[str]) -> Iterator[dict]:
        after: str | None = None
        while True:
            params = {"limit": self.page_size, "properties": ",".join(properties), "archived": "false"}
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

    # ------------------------------------------------------------------ writes

    def upsert(self, object_type: str, id_property: str, inputs: Sequence[UpsertInput]) -> list[RowResult]:
        self._check_batch(inputs)
        body = {"inputs": [{"id": i.key, "idProperty": id_property, "properties": i.properties} for i in inputs]}
        try:
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/upsert", json=body)
        except CrmUnavailable as exc:
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
        return [RowResult(k, REJECTED, message=_message(resp)) for k in keys]

    def update(self, object_type: str, inputs: Sequence[UpsertInput], crm_ids: Sequence[str]) -> list[RowResult]:
        self._check_batch(inputs)
        body = {"inputs": [{"id": c, "properties": i.properties} for i, c in zip(inputs, crm_ids)]}
        try:
            resp = self.transport.request("POST", f"/crm/v3/objects/{object_type}/batch/update", json=body)
        except CrmUnavailable as exc:
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
        except CrmUnavailable as exc:
            return [RowResult(k, FAILED, crm_id=c, message=str(exc)) for k, c in keys_and_ids]
        self._auth(resp)
        status, message = (ARCHIVED, None) if resp.status in (200, 204) else (REJECTED, _message(resp))
        return [RowResult(k, status, crm_id=c, message=message) for k, c in keys_and_ids]

    def associate(self, from_type: str, to_type: str, pairs: Sequence[tuple[str, str, str]]) -> list[RowResult]:
        self._check_batch(pairs)
        body = {"inputs": [{"from": {"id": a}, "to": {"id": b}} for _, a, b in pairs]}
        try:
            resp = self.transport.request("PUT", f"/crm/v4/associations/{from_type}/{to_type}/batch/associate/default",
                                          json=body)
        except CrmUnavailable as exc:
            return [RowResult(k, FAILED, crm_id=a, message=str(exc)) for k, a, _ in pairs]
        self._auth(resp)
        if resp.status in (200, 201, 204, 207):
            failed = {}
            for err in (resp.body or {}).get("errors", []):
                for ctx_ids in (err.get("context") or {}).values():
                    for i in ctx_ids if isinstance(ctx_ids, list) else [ctx_ids]:
                        failed[str(i)] = err.get("message", "rejected")
            return [RowResult(k, REJECTED if a in failed else UPDATED, crm_id=a, message=failed.get(a)) for k, a, _ in pairs]
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
        except CrmUnavailable as exc:
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
        except CrmUnavailable as exc:
            return RowResult(identifier, FAILED, message=str(exc))
        self._auth(resp)
        if resp.status in (200, 204):
            return RowResult(identifier, DELETED)
        if resp.status == 404:
            return RowResult(identifier, ABSENT, message="no such contact in the CRM")
        return RowResult(identifier, REJECTED, message=_message(resp))

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
            raise CrmUnavailable(f"{what}: HTTP {resp.status}: {_message(resp)}")
        return resp


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
