"""The privacy-request ledger (``ops.privacy_requests``) and the erasure's reach beyond the warehouse:
requests received and done, each connected system (the CRM) asked to erase the person, outcomes kept in
the outbox and retried until every target answered, and the requests of a landing file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, Sequence

import pandas as pd
import sqlalchemy as sa

from ..platform.audit import AuditEntry, append
from ..platform.masking import mask_text
from ..platform.schema import ERASURE_OUTBOX, PRIVACY_REQUESTS
from ..platform.warehouse import Warehouse, tables_present
from ..sources.mapping import SourceMapping


class ErasureTarget(Protocol):
    """A connected system the project writes personal data to."""

    name: str

    def erase(self, kind: str, identifier: str) -> tuple[str, str | None]:
        """Erases one identifier (kind ``email`` or ``crm_contact_id``) there; returns (status, message)
        with status ``deleted``, ``absent`` (nothing there), ``failed`` (try again later) or ``rejected``."""


@dataclass
class CrmErasureTarget:
    """The CRM: a permanent GDPR delete by e-mail (which blocklists the address) and by contact ID."""

    connector: object
    name: str = "crm"

    def erase(self, kind: str, identifier: str) -> tuple[str, str | None]:
        r = self.connector.gdpr_delete(identifier, by="email" if kind == "email" else "id")
        return r.status, r.message


def record_request(wh: Warehouse, request_id: str, kind: str, subject: str, source: str, status: str,
             details: dict | None = None) -> None:
    wh.ensure_tables([PRIVACY_REQUESTS])
    t = PRIVACY_REQUESTS
    now = datetime.now(timezone.utc)
    with wh.engine.begin() as conn:
        exists = conn.execute(sa.select(t.c.request_id).where(t.c.request_id == request_id)).first()
        done = now if status == "completed" else None
        if exists is None:
            conn.execute(sa.insert(t).values(request_id=request_id, kind=kind, subject=subject, source=source,
                                             received_at=now, completed_at=done, status=status,
                                             details=json.dumps(details, default=str) if details else None))
        else:
            conn.execute(sa.update(t).where(t.c.request_id == request_id).values(
                status=status, completed_at=done, details=json.dumps(details, default=str) if details else None))


def propagate(wh: Warehouse, target: ErasureTarget, request_id: str, subject: str,
               identifiers: list[tuple[str, str]], actor: str, run_id: str | None) -> dict[str, int]:
    """Erases in one target; what it could not confirm waits in the outbox for the next attempt."""
    counts: dict[str, int] = {}
    waiting, done = [], []
    for kind, identifier in identifiers:
        try:
            status, message = target.erase(kind, identifier)
        except Exception as exc:  # noqa: BLE001 - the system is unreachable: retried from the outbox
            status, message = "failed", type(exc).__name__
        counts[status] = counts.get(status, 0) + 1
        (waiting if status == "failed" else done).append((kind, identifier, message))
    wh.ensure_tables([ERASURE_OUTBOX])
    t = ERASURE_OUTBOX
    now = datetime.now(timezone.utc)
    with wh.engine.begin() as conn:
        for kind, identifier, _ in done:
            conn.execute(sa.delete(t).where(t.c.request_id == request_id, t.c.target == target.name, t.c.kind == kind,
                                            t.c.identifier == identifier))
        for kind, identifier, message in waiting:
            key = (t.c.request_id == request_id, t.c.target == target.name, t.c.kind == kind, t.c.identifier == identifier)
            if conn.execute(sa.select(t.c.attempts).where(*key)).first() is None:
                conn.execute(sa.insert(t).values(request_id=request_id, target=target.name, kind=kind,
                                                 identifier=identifier, subject=subject, added_at=now, attempts=1,
                                                 last_error=mask_text(message or "")[:500]))
            else:
                conn.execute(sa.update(t).where(*key).values(attempts=t.c.attempts + 1,
                                                             last_error=mask_text(message or "")[:500]))
    append(wh, [AuditEntry(f"erasure.{target.name}", actor, subject, counts, run_id)])
    return counts


def retry_pending(wh: Warehouse, targets: Sequence[ErasureTarget], actor: str, run_id: str | None = None) -> dict:
    """Sends the erasures a system could not confirm earlier; completes their requests when nothing waits."""
    if not tables_present(wh, [ERASURE_OUTBOX]):
        return {}
    t = ERASURE_OUTBOX
    waiting = wh.read_frame(sa.select(t))
    out: dict[str, dict] = {}
    by_name = {tg.name: tg for tg in targets}
    for (request_id, target_name, subject), rows in waiting.groupby(["request_id", "target", "subject"]):
        target = by_name.get(target_name)
        if target is None:
            continue
        out[request_id] = propagate(wh, target, request_id, subject, list(zip(rows["kind"], rows["identifier"])),
                                     actor, run_id)
        still = wh.scalar(sa.select(sa.func.count()).select_from(t).where(t.c.request_id == request_id))
        if not still:
            record_request(wh, request_id, "erasure", subject, "retry", "completed")
            append(wh, [AuditEntry("erasure.completed", actor, subject, {"request_id": request_id}, run_id)])
    return out


def pending_requests(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [PRIVACY_REQUESTS]):
        return pd.DataFrame(columns=["request_id", "subject", "source"])
    t = PRIVACY_REQUESTS
    return wh.read_frame(sa.select(t.c.request_id, t.c.subject, t.c.source).where(t.c.kind == "erasure",
                                                                                    t.c.status == "pending"))


def request_done(wh: Warehouse, request_id: str) -> bool:
    if not tables_present(wh, [PRIVACY_REQUESTS]):
        return False
    t = PRIVACY_REQUESTS
    return wh.scalar(sa.select(t.c.status).where(t.c.request_id == request_id)) == "completed"


def requests_in_file(path, mapping: SourceMapping) -> tuple[list[dict], int]:
    """The valid erasure requests of a landing file (the webhook's JSON lines), and how many lines
    were not usable (ingestion quarantines those with their reason)."""
    from ..sources.mapping import apply_mapping
    from ..sources.readers import read_file

    out, bad = [], 0
    for chunk in read_file(path, mapping):
        mapped = apply_mapping(mapping, chunk.frame, chunk.problems)
        bad += len(mapped.bad_positions)
        for row in mapped.good.itertuples(index=False):
            out.append({"request_id": f"{mapping.source}:{row.source_record_id}", "email": row.email,
                        "crm_contact_id": row.crm_contact_id, "requested_by": row.requested_by})
    return out, bad

