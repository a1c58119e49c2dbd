"""Access and portability (DSGVO Art. 15 and 20): everything held about a person, as one JSON.

The export walks the same inventory as erasure, so it lists every table that holds the person
(and which tables were searched), plus their consent history, their current consent per channel,
what was sent to the CRM about them (the sync log of their golden IDs) and the processing history
from the audit trail.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import sqlalchemy as sa

from ..platform.audit import AuditEntry, append, history
from ..platform.schema import CRM_SYNC_LOG
from ..platform.warehouse import Warehouse, tables_present
from ..privacy_screen.identity import IdentityHasher
from ..privacy_screen.suppression import SuppressionList
from ..sources.mapping import SourceMapping
from .erasure import find_person
from .inventory import build_inventory, locate, to_records
from .requests import record_request

FORMAT = "crm_pipelines.access_export/1"


def export_person(wh: Warehouse, hasher: IdentityHasher, mappings: dict[str, SourceMapping], *,
                  emails: Sequence[str] = (), crm_contact_ids: Sequence[str] = (), request_id: str, source: str,
                  actor: str, run_id: str | None = None) -> dict:
    person = find_person(wh, hasher, emails, crm_contact_ids)
    locators = build_inventory(mappings)
    found = locate(wh, locators, person, hasher)
    data = {name: to_records(rows) for name, rows in found.items() if rows is not None and len(rows)}
    consent = sorted(data.get("staging.consent_events", []), key=lambda e: str(e.get("occurred_at")))
    current = [{k: v for k, v in row.items() if k.endswith("_consent") or k.endswith("_consent_basis") or k == "golden_id"}
               for row in data.get("golden.contacts", [])]
    sent = []
    if person.golden_ids and tables_present(wh, [CRM_SYNC_LOG]):
        t = CRM_SYNC_LOG
        sent = to_records(wh.read_frame(sa.select(t).where(t.c.golden_id.in_(sorted(person.golden_ids)))
                                        .order_by(t.c.at)))
    suppressed = any(SuppressionList(wh, hasher).contains_email(e) for e in person.emails)
    doc = {
        "format": FORMAT,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "request_id": request_id,
        "subject": person.subject,
        "identifiers": {"emails": sorted(person.emails), "crm_contact_ids": sorted(person.crm_contact_ids),
                        "golden_ids": sorted(person.golden_ids)},
        "suppressed": suppressed,
        "tables_searched": [loc.name for loc in locators],
        "data": data,
        "consent_history": consent,
        "current_consent": current,
        "sent_to_crm": sent,
        "processing_history": history(wh, [person.subject, *sorted(person.golden_ids)]),
    }
    record_request(wh, request_id, "export", person.subject, source, "completed",
             {"tables": {k: len(v) for k, v in data.items()}})
    append(wh, [AuditEntry("access.exported", actor, person.subject,
                           {"request_id": request_id, "tables": {k: len(v) for k, v in data.items()}}, run_id)])
    return doc


def write_export(doc: dict, out: str | Path) -> Path:
    """Writes the export for handing over; readable by the owner only (it is the person's data)."""
    import os

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, indent=2, default=str)
    return path
