"""The push's outcome and memory in the warehouse: the report of a run, the per-row state and log
(``ops.crm_sync_state``, ``ops.crm_sync_log``) committed after every batch, held and gone rows, the
run record the failure-rate alert and the recovery notice compare against."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from ..platform.masking import mask_text
from ..platform.schema import CRM_SYNC_LOG, CRM_SYNC_RUNS, CRM_SYNC_STATE
from ..platform.warehouse import Warehouse
from .changes import DELETED
from .protocol import ARCHIVED, CREATED, REJECTED, UPDATED, RowResult
from .settings import ObjectSync

OK = {CREATED, UPDATED}


INVALID = "invalid"


class SyncFailed(Exception):
    def __init__(self, message: str, report: "SyncReport"):
        super().__init__(message)
        self.report = report


class SyncBusy(Exception):
    """Another run is pushing this object type right now."""


@dataclass
class SyncReport:
    object_type: str
    mode: str
    dry_run: bool
    rows_in: int = 0
    unchanged: int = 0
    to_create: int = 0
    to_update: int = 0
    to_archive: int = 0
    skipped_not_in_crm: int = 0
    invalid: int = 0
    retried: int = 0
    sent: int = 0
    created: int = 0
    updated: int = 0
    archived: int = 0
    rejected: int = 0
    failed: int = 0
    associated: int = 0
    association_failures: int = 0
    adopted: int = 0              # "already exists" answers resolved by taking over the CRM's record
    deleted_in_crm: int = 0       # rows whose CRM object a user deleted (left alone under keep_deleted)
    held: int = 0                 # changed only in fields the CRM owns: nothing sent
    recreated: int = 0            # ... or created anew under recreate_and_flag
    batches: int = 0
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    status: str = "ok"
    failure_rate: float = 0.0
    messages: dict = field(default_factory=dict)  # masked message -> count, the most frequent few

    def as_dict(self) -> dict:
        return asdict(self)


def hold_rows(wh, object_type: str, rows: pd.DataFrame) -> None:
    """Rows changed only where the CRM owns the field: their new hash is remembered, nothing is sent."""
    if not len(rows):
        return
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id == sa.bindparam("g"))
                     .values(payload_hash=sa.bindparam("h")),
                     [{"g": g, "h": h} for g, h in zip(rows["golden_id"], rows["payload_hash"])])


def mark_gone(wh, object_type: str, golden_ids: list[str]) -> None:
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id.in_(golden_ids))
                     .values(last_status=DELETED, payload_hash=None, last_message="the CRM no longer has this object"))


def note_row(wh, object_type: str, golden_id: str, message: str) -> None:
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id == golden_id)
                     .values(last_message=mask_text(message)))


def count_results(report: SyncReport, results: list[RowResult]) -> None:
    for r in results:
        report.sent += 1
        if r.status == CREATED:
            report.created += 1
        elif r.status == UPDATED:
            report.updated += 1
        elif r.status == REJECTED:
            report.rejected += 1
        else:
            report.failed += 1


def account_crm_ids(wh: Warehouse, spec: ObjectSync) -> dict[str, str]:
    if not spec.associate_with:
        return {}
    st = load_state(wh, spec.associate_with)
    st = st[st["crm_id"].notna() & st["last_status"].isin(list(OK))]
    return dict(zip(st["golden_id"], st["crm_id"]))


def commit_links(wh: Warehouse, object_type: str, sent: list[tuple[list, list[RowResult]]], report: SyncReport) -> None:
    linked = {}
    for batch, results in sent:
        target = {k: t for k, _, t in batch}
        for r in results:
            if r.status in OK:
                report.associated += 1
                linked[r.key] = target[r.key]
            else:
                report.association_failures += 1
    if not linked:
        return
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id == sa.bindparam("g"))
                     .values(associated_crm_id=sa.bindparam("a")), [{"g": g, "a": a} for g, a in linked.items()])


def commit_batch(wh: Warehouse, object_type: str, run_id: str, chunk: pd.DataFrame, results: list[RowResult],
            state: pd.DataFrame, at: datetime) -> None:
    """One transaction per batch: the new state of its rows and their log lines."""
    prev = state.set_index("golden_id") if len(state) else None
    state_rows, log_rows = [], []
    for r, (_, row) in zip(results, chunk.iterrows()):
        ok = r.status in OK or r.status == ARCHIVED
        crm_id = r.crm_id or (row.get("crm_id") if pd.notna(row.get("crm_id")) else None)
        attempts = 1
        if prev is not None and r.key in prev.index and not ok:
            attempts = int(prev.at[r.key, "attempts"] or 0) + 1
        message = mask_text(r.message) if r.message else None
        if ok and row.get("recreated"):
            message = "re-created after a user deleted it in the CRM (on_crm_delete: recreate_and_flag)"
        assoc = row.get("associated_crm_id")
        state_rows.append({
            "object_type": object_type, "golden_id": r.key, "crm_id": crm_id,
            # A row that did not arrive keeps no hash: the next run sends it again, whatever changed.
            "payload_hash": row.get("payload_hash") if ok else None, "last_status": r.status,
            "last_message": message, "last_synced_at": at, "last_run_id": run_id, "attempts": attempts,
            "associated_crm_id": assoc if isinstance(assoc, str) else None,
        })
        log_rows.append({"at": at, "run_id": run_id, "object_type": object_type, "golden_id": r.key, "crm_id": crm_id,
                         "operation": row.get("operation"), "status": r.status, "message": message})
    states = pd.DataFrame(state_rows)
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        keys = states["golden_id"].tolist()
        for start in range(0, len(keys), 500):
            conn.execute(sa.delete(t).where(t.c.object_type == object_type, t.c.golden_id.in_(keys[start:start + 500])))
        wh.bulk_insert(conn, t, states)
        wh.bulk_insert(conn, CRM_SYNC_LOG, pd.DataFrame(log_rows))


def load_state(wh: Warehouse, object_type: str) -> pd.DataFrame:
    wh.ensure_tables([CRM_SYNC_STATE])
    t = CRM_SYNC_STATE
    return wh.read_frame(sa.select(t.c.golden_id, t.c.crm_id, t.c.payload_hash, t.c.last_status, t.c.attempts,
                                   t.c.associated_crm_id).where(t.c.object_type == object_type))


def record_run(wh: Warehouse, run_id: str, report: SyncReport, started: datetime) -> None:
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, CRM_SYNC_RUNS, pd.DataFrame([{
            "run_id": run_id, "object_type": report.object_type, "mode": report.mode, "dry_run": report.dry_run,
            "started_at": started, "finished_at": utc_now(), "status": report.status,
            "counts": json.dumps({k: v for k, v in report.as_dict().items() if isinstance(v, (int, float))}),
        }]))


def previous_status(wh: Warehouse, object_type: str) -> str | None:
    t = CRM_SYNC_RUNS
    return wh.scalar(sa.select(t.c.status).where(t.c.object_type == object_type, t.c.dry_run.is_(False))
                     .order_by(t.c.started_at.desc()).limit(1))


def top_messages(wh: Warehouse, run_id: str, object_type: str, n: int = 5) -> dict:
    t = CRM_SYNC_LOG
    rows = wh.read_frame(sa.select(t.c.message, sa.func.count().label("n"))
                         .where(t.c.run_id == run_id, t.c.object_type == object_type, t.c.message.is_not(None))
                         .group_by(t.c.message).order_by(sa.func.count().desc()).limit(n))
    # Messages can still name a value; strip long specifics so the metadata stays a summary.
    return {str(m)[:200]: int(c) for m, c in zip(rows["message"], rows["n"])}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)

