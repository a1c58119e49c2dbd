"""The Brevo v3 connector (plain requests over :class:`~..platform.http.HttpTransport`).

Why not the official ``brevo-python`` client: it is generated from the OpenAPI file and sends one
request when asked, so the parts that matter here would still be ours: the per-endpoint pacing
(contacts and events: 10 per second *and* 36,000 per hour), the 429 that comes without Retry-After
(wait for ``x-sib-ratelimit-reset``), retries of 5xx and dropped connections, the 150-address split
of list calls, waiting for the asynchronous import. The transport that already does this for the CRM
does it here with Brevo's header names, for a dozen endpoints; a generated client of several hundred
models is not worth its weight for that.

Bulk upserts go through ``POST /v3/contacts/import`` (``/v3/contacts/batch`` is deprecated since
30 October 2026): JSON rows, at most 10 MB per import, split here well below that.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence
from urllib.parse import quote

from ..platform.http import BREVO_HEADERS, CallStats, HttpTransport, RateLimiter, Response, ServiceUnavailable
from .protocol import RemoteState, ToolAuthError, ToolContact, ToolEvent, ToolRejected

MAX_LIST_CALL = 150
# Brevo allows 10 MB per import; a safe margin, as its documentation recommends (about 8 MB).
IMPORT_BYTES = 4 * 1024 * 1024
PAGE = 1000        # contacts per page (Brevo's maximum)
LIST_PAGE = 50     # lists and folders per page (Brevo's maximum)


def _family_limits(per_second: int, per_hour: int) -> tuple[RateLimiter, RateLimiter]:
    return (RateLimiter(max_requests=per_second, window_seconds=1.0, margin_seconds=0.05),
            RateLimiter(max_requests=per_hour, window_seconds=3600.0))


@dataclass
class BrevoConnector:
    transport: HttpTransport
    name: str = "brevo"
    max_list_call: int = MAX_LIST_CALL
    contacts_limits: tuple[RateLimiter, ...] = field(default_factory=lambda: _family_limits(10, 36_000))
    events_limits: tuple[RateLimiter, ...] = field(default_factory=lambda: _family_limits(10, 36_000))
    other_limits: tuple[RateLimiter, ...] = field(default_factory=lambda: (RateLimiter(max_requests=100, window_seconds=3600.0),))
    import_timeout: float = 600.0
    poll_seconds: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    _lists: dict = field(default_factory=dict, init=False, repr=False)      # (folder, name) -> list ID
    _folders: dict = field(default_factory=dict, init=False, repr=False)    # folder name -> ID

    @classmethod
    def connect(cls, base_url: str, api_key: str | None, *, timeout: float = 30.0, max_attempts: int = 6,
                per_second: int = 10, per_hour: int = 36_000, **kwargs) -> "BrevoConnector":
        # The families' own limiters pace the calls; the transport's general one only guards the total.
        transport = HttpTransport(base_url, api_key, RateLimiter(max_requests=10 * per_second, window_seconds=1.0),
                                  timeout=timeout, max_attempts=max_attempts, headers=BREVO_HEADERS,
                                  auth_header="api-key", auth_prefix="")
        return cls(transport, contacts_limits=_family_limits(per_second, per_hour),
                   events_limits=_family_limits(per_second, per_hour), **kwargs)

    @property
    def stats(self) -> CallStats:
        return self.transport.stats

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, *, json_body=None, params: dict | None = None,
              ok: tuple[int, ...] = (200, 201, 202, 204), allow: tuple[int, ...] = ()) -> Response:
        family = self.contacts_limits if path.startswith("/v3/contacts") else \
            self.events_limits if path.startswith("/v3/events") else self.other_limits
        resp = self.transport.request(method, path, json=json_body, params=params, also=family)
        if resp.status in ok or resp.status in allow:
            return resp
        if resp.status in (401, 403):
            raise ToolAuthError(f"{self.name} refused the API key (HTTP {resp.status})")
        raise ToolRejected(f"{method} {path}: HTTP {resp.status}: {_message(resp)}")

    # ------------------------------------------------------------------ account set-up

    def ensure_attributes(self, definitions: dict[str, str]) -> list[str]:
        existing = {a["name"].upper() for a in (self._call("GET", "/v3/contacts/attributes").body or {}).get("attributes", [])}
        created = []
        for name, kind in definitions.items():
            if name.upper() in existing:
                continue
            resp = self._call("POST", f"/v3/contacts/attributes/normal/{quote(name.upper())}", json_body={"type": kind},
                              allow=(400,))
            if resp.status == 400 and (resp.body or {}).get("code") != "duplicate_parameter":
                raise ToolRejected(f"creating attribute {name}: {_message(resp)}")
            created.append(name.upper())
        return created

    def _paged(self, path: str, key: str) -> Iterator[dict]:
        offset = 0
        while True:
            body = self._call("GET", path, params={"limit": LIST_PAGE, "offset": offset}).body or {}
            rows = body.get(key) or []
            yield from rows
            offset += len(rows)
            if not rows or offset >= int(body.get("count") or 0):
                return

    def ensure_list(self, name: str, folder: str) -> int:
        if not self._lists:
            # One read of the account's folders and lists for all the lists a sync names (read again when
            # one is missing: someone may have created it since).
            self._read_lists()
        if (folder, name) not in self._lists:
            self._read_lists()
        if (folder, name) in self._lists:
            return self._lists[(folder, name)]
        folder_id = self._folders.get(folder)
        if folder_id is None:
            folder_id = self._folders[folder] = int(
                self._call("POST", "/v3/contacts/folders", json_body={"name": folder}).body["id"])
        list_id = self._call("POST", "/v3/contacts/lists", json_body={"name": name, "folderId": folder_id}).body["id"]
        self._lists[(folder, name)] = int(list_id)
        return int(list_id)

    def _read_lists(self) -> None:
        names = {}
        for f in self._paged("/v3/contacts/folders", "folders"):
            names.setdefault(int(f["id"]), f["name"])
            self._folders.setdefault(f["name"], int(f["id"]))
        for lst in self._paged("/v3/contacts/lists", "lists"):
            folder = names.get(int(lst.get("folderId") or -1))
            if folder is not None:
                self._lists.setdefault((folder, lst["name"]), int(lst["id"]))

    # ------------------------------------------------------------------ contacts and lists

    def upsert(self, contacts: Sequence[ToolContact], list_id: int) -> int:
        accepted = 0
        for chunk in _by_size([{"email": c.email, "attributes": c.attributes} for c in contacts], IMPORT_BYTES):
            body = {"jsonBody": chunk, "listIds": [list_id], "updateExistingContacts": True,
                    "emptyContactsAttributes": True, "disableNotification": True}
            pid = self._call("POST", "/v3/contacts/import", json_body=body).body["processId"]
            self._wait(int(pid))
            accepted += len(chunk)
        return accepted

    def _wait(self, pid: int) -> None:
        """Until the import's process completed. ``/v3/processes`` is one of Brevo's unlisted endpoints (100 requests
        an hour for the account): the polls back off (``poll_seconds``, doubling, at most 30 s apart), so an import
        of a few seconds costs a handful of them."""
        deadline = time.monotonic() + self.import_timeout
        wait = self.poll_seconds
        while True:
            self.sleep(wait)
            status = (self._call("GET", f"/v3/processes/{pid}").body or {}).get("status")
            if status == "completed":
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{self.name} import {pid} not completed after {self.import_timeout:.0f} s (status {status})")
            wait = min(wait * 2, 30.0)

    def _membership(self, list_id: int, emails: Sequence[str], verb: str) -> tuple[list[str], list[str]]:
        done, failed = [], []
        for i in range(0, len(emails), self.max_list_call):
            part = list(emails[i:i + self.max_list_call])
            body = self._call("POST", f"/v3/contacts/lists/{list_id}/contacts/{verb}", json_body={"emails": part}).body or {}
            contacts = body.get("contacts") or {}
            done += [str(e) for e in contacts.get("success") or []]
            failed += [str(e) for e in contacts.get("failure") or []]
        return done, failed

    def add_to_list(self, list_id: int, emails: Sequence[str]) -> tuple[list[str], list[str]]:
        return self._membership(list_id, emails, "add")

    def remove_from_list(self, list_id: int, emails: Sequence[str]) -> tuple[list[str], list[str]]:
        return self._membership(list_id, emails, "remove")

    def changed_since(self, since_iso: str | None) -> Iterator[RemoteState]:
        offset = 0
        while True:
            params = {"limit": PAGE, "offset": offset, "sort": "asc", **({"modifiedSince": since_iso} if since_iso else {})}
            body = self._call("GET", "/v3/contacts", params=params).body or {}
            rows = body.get("contacts") or []
            for c in rows:
                yield RemoteState(str(c.get("email") or "").lower(), bool(c.get("emailBlacklisted")),
                                  str(c.get("modifiedAt") or ""), tuple(c.get("listIds") or ()))
            offset += len(rows)
            if not rows or offset >= int(body.get("count") or 0):
                return

    def send_events(self, events: Sequence[ToolEvent]) -> list[tuple[str, str | None]]:
        out = []
        for i in range(0, len(events), 200):
            part = list(events[i:i + 200])
            payload = {"events": [{"event_name": e.name, "identifiers": {"email_id": e.email}, "event_date": e.occurred_at,
                                   "event_properties": {**e.properties, "event_id": e.event_id}} for e in part]}
            resp = self._call("POST", "/v3/events/batch", json_body=payload, allow=(207,))
            failed = {int(f.get("index", -1)): str(f.get("message")) for f in ((resp.body or {}).get("failed") or [])} \
                if resp.status == 207 else {}
            out += [(e.event_id, failed.get(k)) for k, e in enumerate(part)]
        return out

    def delete_contact(self, email: str) -> str:
        resp = self._call("DELETE", f"/v3/contacts/{quote(email, safe='')}", allow=(404,))
        return "absent" if resp.status == 404 else "deleted"

    def register_webhook(self, url: str, events: Sequence[str], batched: bool = True) -> int:
        """A marketing webhook calling ``url`` for ``events`` (batched: up to 500 events per call)."""
        body = {"url": url, "events": list(events), "type": "marketing", "batched": batched}
        return int(self._call("POST", "/v3/webhooks", json_body=body).body["id"])

    def request_double_opt_in(self, email: str, list_id: int, attributes: dict, *, template_id: int,
                              redirection_url: str) -> None:
        self._call("POST", "/v3/contacts/doubleOptinConfirmation",
                   json_body={"email": email, "includeListIds": [list_id], "templateId": template_id,
                              "redirectionUrl": redirection_url,
                              "attributes": {k: v for k, v in attributes.items() if v is not None}})


def _by_size(rows: list[dict], limit: int) -> Iterator[list[dict]]:
    chunk, size = [], 0
    for r in rows:
        n = len(json.dumps(r)) + 1
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += n
    if chunk:
        yield chunk


def _message(resp: Response) -> str:
    body = resp.body if isinstance(resp.body, dict) else {}
    return f"{body.get('code', '')}: {body.get('message', '')}".strip(": ")[:300]
