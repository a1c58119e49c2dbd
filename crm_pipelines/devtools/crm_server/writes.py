"""Object writes: batch upsert by a unique property, update by ID, archive, associations, tasks and the
GDPR delete, with HubSpot's partial failures (207) and its rule that a lifecycle stage never moves back."""

from __future__ import annotations

import json
import time
from collections import Counter

from .protocol import (EMAIL, ID_PROPERTY, LIFECYCLE_ORDER, MAX_ASSOCIATION_BATCH, MAX_BATCH, as_int, correlation_id,
                       email_of, now_iso, object_body, validation_error)


class WritesMixin:
    """Methods of :class:`CrmServer` for the write endpoints."""

    def upsert(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/upsert: by a unique property (``idProperty``); creates when unknown."""
        return self._write(object_type, body, by_external_id=True)

    def update(self, object_type: str, body: dict) -> tuple[int, dict]:
        """batch/update: by the CRM's own object ID; unknown IDs fail per row."""
        return self._write(object_type, body, by_external_id=False)

    def _write(self, object_type: str, body: dict, by_external_id: bool) -> tuple[int, dict]:
        inputs = body.get("inputs")
        if object_type not in ("contacts", "companies") or not isinstance(inputs, list):
            return 400, validation_error("the body needs 'inputs' and a known object type")
        if len(inputs) > MAX_BATCH:
            return 400, validation_error(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        with self._lock:
            for i in inputs:
                email = (i.get("properties") or {}).get("email") if isinstance(i, dict) else None
                if email:
                    self.emails_received[str(email).strip().lower()] += 1
        ids = [str(i.get("id")) for i in inputs]
        if len(set(ids)) != len(ids):
            return 400, validation_error("Duplicate IDs found in batch input")
        id_property = None
        if by_external_id:
            id_property = inputs[0].get("idProperty") if inputs else None
            d = self.definitions[object_type].get(id_property or "")
            if d is None or not d.get("hasUniqueValue") or any(i.get("idProperty") != id_property for i in inputs):
                return 400, validation_error(f"Unable to perform update/upsert by non-unique property '{id_property}'")
        problems = []
        for i in inputs:
            problems += self._property_errors(object_type, i.get("properties") or {})
        if problems:
            self.counts["400_properties"] += 1
            return 400, {"status": "error", "category": "VALIDATION_ERROR", "correlationId": correlation_id(),
                         "message": "Property values were not valid: " + json.dumps(problems),
                         "errors": [{"message": p["message"], "code": p["error"], "context": {"propertyName": [p["name"]]}}
                                    for p in problems]}
        now = now_iso()
        with self._lock:
            self.db.execute("BEGIN")
            try:
                return self._write_rows(object_type, inputs, ids, by_external_id, id_property, now)
            except BaseException:
                # Whatever went wrong (a unique index the rows collide on), the next request must not find
                # this batch's transaction still open.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def _write_rows(self, object_type: str, inputs: list, ids: list[str], by_external_id: bool, id_property, now: str):
        results, errors, done = [], [], Counter()
        for i, ident in zip(inputs, ids):
            props = {k: (None if v is None else str(v)) for k, v in (i.get("properties") or {}).items()}
            if by_external_id:
                props[id_property] = ident
                row = self._find(object_type, id_property, ident)
            else:
                row = self.db.execute("SELECT id, properties FROM objects WHERE type = ? AND id = ? AND archived = 0",
                                      (object_type, as_int(ident))).fetchone()
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
                             "correlationId": correlation_id()}
            if problem:
                errors.append({**problem, "context": {"ids": [ident]}})
                continue
            if row:
                old = json.loads(row[1])
                props = self._keep_stage(object_type, row[0], old, props)
                merged = {k: v for k, v in {**old, **props}.items() if v is not None}
                self.db.execute("UPDATE objects SET properties = ?, ext_id = ?, email = ?, updated_at = ? "
                                "WHERE id = ?", (json.dumps(merged), merged.get(ID_PROPERTY), email_of(merged), now, row[0]))
                results.append(object_body(row[0], merged, now, new=False))
                done[f"{object_type}_updated"] += 1
            else:
                props = {k: v for k, v in props.items() if v is not None}
                cur = self.db.execute(
                    "INSERT INTO objects (type, ext_id, email, properties, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                    (object_type, props.get(ID_PROPERTY), email_of(props), json.dumps(props), now, now))
                results.append(object_body(cur.lastrowid, props, now, new=True))
                done[f"{object_type}_created"] += 1
        self.db.execute("COMMIT")
        self.counts.update(done)
        body_out = {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now_iso()}
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
                                   (object_type, as_int(value))).fetchone()
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

    def complete_task(self, task_id: str) -> None:
        """What a rep does in the CRM when the follow-up is done (tests, demo)."""
        with self._lock:
            row = self.db.execute("SELECT properties FROM objects WHERE type = 'tasks' AND id = ?", (int(task_id),)).fetchone()
            props = {**json.loads(row[0]), "hs_task_status": "COMPLETED"}
            self.db.execute("UPDATE objects SET properties = ?, updated_at = ? WHERE id = ?",
                            (json.dumps(props), now_iso(), int(task_id)))

    def tasks(self) -> list[dict]:
        return self.objects("tasks")

    def archive(self, object_type: str, body: dict) -> tuple[int, dict | None]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_BATCH:
            return 400, validation_error(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        with self._lock:
            now = now_iso()
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE objects SET archived = 1, updated_at = ?, archived_at = ? WHERE type = ? AND id = ?",
                                [(now, now, object_type, as_int(i["id"])) for i in inputs])
            self.db.execute("COMMIT")
            self.counts[f"{object_type}_archived"] += len(inputs)
        return 204, None

    def associate(self, from_type: str, to_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if len(inputs) > MAX_ASSOCIATION_BATCH:
            return 400, validation_error(f"Batch input limit is {MAX_ASSOCIATION_BATCH}, got {len(inputs)}")
        pairs = [(as_int(i["from"]["id"]), as_int(i["to"]["id"])) for i in inputs]
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
            return 400, validation_error(f"Batch input limit is {MAX_BATCH}, got {len(inputs)}")
        problems = []
        for i in inputs:
            problems += self._property_errors("tasks", i.get("properties") or {})
        if problems:
            return 400, {"status": "error", "category": "VALIDATION_ERROR",
                         "message": "Property values were not valid: " + json.dumps(problems)}
        now, results = now_iso(), []
        with self._lock:
            for i in inputs:
                props = i.get("properties") or {}
                cur = self.db.execute("INSERT INTO objects (type, properties, created_at, updated_at) VALUES ('tasks',?,?,?)",
                                      (json.dumps(props), now, now))
                for assoc in i.get("associations") or []:
                    self.db.execute("INSERT OR IGNORE INTO associations VALUES ('tasks',?,'contacts',?)",
                                    (cur.lastrowid, int(assoc["to"]["id"])))
                results.append(object_body(cur.lastrowid, props, now, new=True))
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
                self.db.execute("INSERT OR IGNORE INTO blocklist VALUES (?, ?)", (email, now_iso()))
            if not row:
                return 404, {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "resource not found"}
            self.db.execute("DELETE FROM objects WHERE id = ?", (row[0],))
            self.db.execute("DELETE FROM associations WHERE (from_type = 'contacts' AND from_id = ?) "
                            "OR (to_type = 'contacts' AND to_id = ?)", (row[0], row[0]))
            self.counts["gdpr_deleted"] += 1
        return 204, None
