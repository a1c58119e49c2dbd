"""Deals as HubSpot serves them: pipelines with their stages (``/crm/v3/pipelines/deals``: each stage's probability
and whether it closes the deal), deals in the objects table with a history of their ``dealstage`` (every change
with its time, returned newest first by a batch read with ``propertiesWithHistory``, at most 50 records then), and
the v4 batch read of a deal's associations to contacts and companies."""

from __future__ import annotations

import json

from .protocol import as_int, not_found, now_iso, validation_error

HISTORY_BATCH = 50
ASSOCIATION_BATCH = 1000
# The portal's deal pipeline (stage id, label, probability, closed).
STAGES = (("appointmentscheduled", "Termin vereinbart", 0.2, False), ("qualifiedtobuy", "Qualifiziert", 0.4, False),
          ("presentationscheduled", "Präsentation", 0.6, False), ("decisionmakerboughtin", "Entscheider überzeugt", 0.8,
                                                                   False),
          ("contractsent", "Angebot versandt", 0.9, False), ("closedwon", "Gewonnen", 1.0, True),
          ("closedlost", "Verloren", 0.0, True))


def pipeline_body(created: str) -> dict:
    return {"id": "default", "label": "Vertrieb", "displayOrder": 0, "archived": False, "createdAt": created,
            "updatedAt": created,
            "stages": [{"id": sid, "label": label, "displayOrder": i, "archived": False, "createdAt": created,
                        "updatedAt": created,
                        "metadata": {"isClosed": "true" if closed else "false", "probability": str(prob)}}
                       for i, (sid, label, prob, closed) in enumerate(STAGES)]}


class DealsMixin:
    """Methods of :class:`CrmServer` for deals, pipelines, property history and association reads."""

    def pipelines(self, object_type: str) -> tuple[int, dict]:
        if object_type != "deals":
            return 404, not_found(f"no pipelines for {object_type}")
        return 200, {"results": [pipeline_body(self.started_at)]}

    def seed_deals(self, deals: list[dict]) -> int:
        """Existing deals: ``{"id", "properties", "history": [(stage, iso time), ...] oldest first, "contacts": [ids],
        "companies": [ids]}``; the last history entry is the deal's stage, its time the deal's modification."""
        with self._lock:
            self.db.execute("BEGIN")
            for d in deals:
                history = d.get("history") or []
                props = dict(d.get("properties") or {})
                if history:
                    props["dealstage"] = history[-1][0]
                created = history[0][1] if history else now_iso()
                updated = history[-1][1] if history else created
                oid = int(d["id"])
                self.db.execute("INSERT OR REPLACE INTO objects (id, type, ext_id, email, properties, created_at, "
                                "updated_at) VALUES (?,?,?,?,?,?,?)", (oid, "deals", None, None, json.dumps(props),
                                                                      created, updated))
                self.db.execute("DELETE FROM history WHERE type = 'deals' AND id = ?", (oid,))
                self.db.executemany("INSERT INTO history (type, id, property, value, timestamp, source) VALUES "
                                    "('deals', ?, 'dealstage', ?, ?, 'CRM_UI')", [(oid, s, t) for s, t in history])
                for kind in ("contacts", "companies"):
                    self.db.executemany("INSERT OR IGNORE INTO associations VALUES ('deals', ?, ?, ?)",
                                        [(oid, kind, int(x)) for x in d.get(kind) or []])
            self.db.execute("COMMIT")
        return len(deals)

    def move_deal(self, deal_id: str, stage: str, at: str | None = None, **props) -> None:
        """A rep moves a deal to another stage (and may set amount, close date ...): history and stamp follow."""
        at = at or now_iso()
        with self._lock:
            row = self.db.execute("SELECT properties FROM objects WHERE type = 'deals' AND id = ?",
                                  (int(deal_id),)).fetchone()
            if row is None:
                raise KeyError(deal_id)
            p = {**json.loads(row[0]), **{k: str(v) for k, v in props.items()}, "dealstage": stage}
            self.db.execute("UPDATE objects SET properties = ?, updated_at = ? WHERE type = 'deals' AND id = ?",
                            (json.dumps(p), at, int(deal_id)))
            self.db.execute("INSERT INTO history (type, id, property, value, timestamp, source) VALUES "
                            "('deals', ?, 'dealstage', ?, ?, 'CRM_UI')", (int(deal_id), stage, at))

    def history_of(self, object_type: str, oid: int, prop: str) -> list[dict]:
        rows = self.db.execute("SELECT value, timestamp, source FROM history WHERE type = ? AND id = ? AND property = ? "
                               "ORDER BY timestamp DESC, rowid DESC", (object_type, oid, prop)).fetchall()
        return [{"value": v, "timestamp": t, "sourceType": s} for v, t, s in rows]

    def read_associations(self, from_type: str, to_type: str, body: dict) -> tuple[int, dict]:
        inputs = body.get("inputs") or []
        if not isinstance(inputs, list) or len(inputs) > ASSOCIATION_BATCH:
            return 400, validation_error(f"Batch input limit is {ASSOCIATION_BATCH}, got {len(inputs)}")
        results, missing = [], []
        with self._lock:
            for i in inputs:
                oid = as_int((i or {}).get("id"))
                exists = self.db.execute("SELECT 1 FROM objects WHERE type = ? AND id = ? AND archived = 0",
                                         (from_type, oid)).fetchone()
                if not exists:
                    missing.append(str((i or {}).get("id")))
                    continue
                to = self.db.execute("SELECT to_id FROM associations WHERE from_type = ? AND from_id = ? AND to_type = ? "
                                     "ORDER BY to_id", (from_type, oid, to_type)).fetchall()
                if to:
                    results.append({"from": {"id": str(oid)}, "to": [
                        {"toObjectId": t, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 3,
                                                                "label": None}]} for (t,) in to]})
        out: dict = {"status": "COMPLETE", "results": results}
        if missing:
            out.update(numErrors=1, errors=[{"status": "error", "category": "OBJECT_NOT_FOUND",
                                             "message": "No objects found", "context": {"ids": missing}}])
            return 207, out
        return 200, out
