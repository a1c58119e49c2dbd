"""Object reads: pages, reads by ID (a merged-away ID answers with its survivor), batch reads by ID or a
unique property, and search with its filters, sorts, page size and result cap."""

from __future__ import annotations

import json
import re
from datetime import datetime

from .deals import HISTORY_BATCH
from .protocol import MAX_BATCH, MAX_SEARCH_PAGE, READ_ONLY, as_int, not_found, validation_error

# What a search returns without a ``properties`` list.
SEARCH_DEFAULTS = {"contacts": ["email", "firstname", "lastname"], "companies": ["name", "domain"],
                   "deals": ["dealname", "amount", "dealstage", "pipeline", "closedate"]}


class ReadsMixin:
    """Methods of :class:`CrmServer` for the read and search endpoints."""

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
            return 404, not_found(f"unknown object type {object_type}")
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
            oid = self._alias(object_type, as_int(object_id))
            row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? AND id = ? "
                                  "AND archived = 0", (object_type, oid)).fetchone()
        if row is None:
            return 404, not_found("resource not found")
        return 200, self._shown(object_type, row[0], json.loads(row[1]), row[2], row[3], wanted)

    def _alias(self, object_type: str, oid: int) -> int:
        row = self.db.execute("SELECT into_id FROM merged WHERE type = ? AND id = ?", (object_type, oid)).fetchone()
        return row[0] if row else oid

    def batch_read(self, object_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        with_history = body.get("propertiesWithHistory") or []
        # A read with property histories takes at most 50 records (HubSpot's limit), else 100.
        cap = HISTORY_BATCH if with_history else MAX_BATCH
        if len(inputs) > cap:
            return 400, validation_error(f"Batch input limit is {cap}, got {len(inputs)}"
                                         + (" (with propertiesWithHistory)" if with_history else ""))
        prop = body.get("idProperty") or "hs_object_id"
        d = self.definitions.get(object_type, {}).get(prop)
        if prop != "hs_object_id" and (d is None or not d.get("hasUniqueValue")):
            return 400, validation_error(f"Unable to read by non-unique property '{prop}'")
        wanted = body.get("properties") or []
        results, missing = [], []
        with self._lock:
            for i in inputs:
                ident = str(i.get("id"))
                if prop == "hs_object_id":
                    oid = self._alias(object_type, as_int(ident))
                    row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE type = ? "
                                          "AND id = ? AND archived = 0", (object_type, oid)).fetchone()
                else:
                    found = self._find(object_type, prop, ident)
                    row = self.db.execute("SELECT id, properties, created_at, updated_at FROM objects WHERE id = ?",
                                          (found[0],)).fetchone() if found else None
                if row is None:
                    missing.append(ident)
                    continue
                shown = self._shown(object_type, row[0], json.loads(row[1]), row[2], row[3], wanted)
                if with_history:
                    shown["propertiesWithHistory"] = {p: self.history_of(object_type, row[0], p) for p in with_history}
                results.append(shown)
        out: dict = {"status": "COMPLETE", "results": results}
        if missing:
            out.update(numErrors=1, errors=[{"status": "error", "category": "OBJECT_NOT_FOUND",
                                             "message": "Could not get some objects, they may be deleted or not exist.",
                                             "context": {"ids": missing}}])
            return 207, out
        return 200, out

    def search(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in ("contacts", "companies", "deals"):
            return 404, not_found(f"unknown object type {object_type}")
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_PAGE:
            return 400, validation_error(f"limit must be between 1 and {MAX_SEARCH_PAGE}")
        offset = int(body.get("after") or 0)
        if offset + limit > self.search_cap:
            return 400, validation_error(f"The search returns at most {self.search_cap} results per query; narrow the "
                                    "filters instead of paging further")
        groups = body.get("filterGroups") or []
        if len(groups) > 5 or sum(len(g.get("filters") or []) for g in groups) > 25:
            return 400, validation_error("at most 5 filter groups and 25 filters")
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
                return 400, validation_error(str(exc))
        for s in reversed(body.get("sorts") or [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]):
            name = s.get("propertyName") if isinstance(s, dict) else str(s).lstrip("-")
            desc = (s.get("direction") == "DESCENDING") if isinstance(s, dict) else str(s).startswith("-")
            records.sort(key=lambda r: _sort_key(r[1].get(name)), reverse=desc)
        page = records[offset:offset + limit]
        wanted = body.get("properties") or SEARCH_DEFAULTS[object_type]
        out: dict = {"total": len(records), "results": [self._shown(object_type, oid, p, c, u, wanted)
                                                         for oid, p, c, u in page]}
        if offset + limit < len(records):
            out["paging"] = {"next": {"after": str(offset + limit)}}
        return 200, out


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
