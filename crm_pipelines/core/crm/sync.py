"""The sync engine: diff against what was last sent, push in batches, remember every row's outcome.

What reverse-ETL practice asks for, and where it lives here:
- only new and changed rows go out: ``ops.crm_sync_state`` keeps, per golden ID, the hash of the
  payload last accepted by the CRM and the CRM's ID;
- modes: ``upsert`` (create or update), ``update_only`` (never create), ``mirror`` (also archive
  objects whose golden record left the model);
- every write is logged per row in ``ops.crm_sync_log`` (append-only); rows that were rejected or
  failed are sent again on the next run;
- a dry run reports would-create / would-update / unchanged / invalid counts and sends nothing;
- state is committed after every batch, so a run killed halfway resumes where it stopped; the
  batch in flight when it died is sent again, and since upserts are keyed by our golden ID
  (and known CRM objects are updated by their CRM ID) sending twice never creates twice;
- a failure rate (rows rejected, failed or invalid in this run over the rows of the model) above the
  threshold fails the run and alerts; the first good run after a failed one sends a recovery notice;
- only one push per object type at a time (a lock that dies with its process).
"""

from __future__ import annotations

import json
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..masking import mask_text
from ..schema import CRM_SYNC_LOG, CRM_SYNC_RUNS, CRM_SYNC_STATE
from ..warehouse import LockBusy, Warehouse
from .payloads import is_missing, payload_hashes, property_columns
from .protocol import ARCHIVED, CREATED, FAILED, REJECTED, UPDATED, CrmConnector, RowResult, UpsertInput
from .settings import ObjectSync, SyncSettings

OK = {CREATED, UPDATED}
INVALID = "invalid"
EMAIL_FORMAT = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
Log = Callable[[str], None]


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
    batches: int = 0
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    status: str = "ok"
    failure_rate: float = 0.0
    messages: dict = field(default_factory=dict)  # masked message -> count, the most frequent few

    def as_dict(self) -> dict:
        return asdict(self)


def plan(payload: pd.DataFrame, state: pd.DataFrame, spec: ObjectSync, required: tuple[str, ...]) -> pd.DataFrame:
    """Per payload row: the operation (create / update / unchanged / skip / invalid) and why.

    ``state`` is this object type's rows of ``ops.crm_sync_state``.
    """
    df = payload.copy()
    df["payload_hash"] = payload_hashes(payload)
    st = state.set_index("golden_id") if len(state) else pd.DataFrame(
        columns=["crm_id", "payload_hash", "last_status", "associated_crm_id"])
    prev_hash = df["golden_id"].map(st["payload_hash"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_status = df["golden_id"].map(st["last_status"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_crm = df["golden_id"].map(st["crm_id"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    df["prev_status"] = prev_status
    df["associated_crm_id"] = df["golden_id"].map(st["associated_crm_id"]) if len(st) else None
    # The CRM ID we learnt by pushing wins over the one the golden record brought from the CRM snapshot.
    df["crm_id"] = prev_crm.where(prev_crm.notna(), df["crm_id"])
    ok_before = prev_status.isin(list(OK))
    unchanged = ok_before & (prev_hash == df["payload_hash"])
    invalid = pd.Series(False, index=df.index)
    reason = pd.Series(None, index=df.index, dtype=object)
    for prop in required:
        miss = df[prop].isna()
        reason = reason.where(~(miss & reason.isna()), f"required property '{prop}' is empty")
        invalid |= miss
    if "email" in df.columns:
        bad = df["email"].notna() & ~df["email"].fillna("").str.match(EMAIL_FORMAT)
        reason = reason.where(~(bad & reason.isna()), "e-mail address is malformed")
        invalid |= bad
    # One CRM object, one golden record: when several golden records claim the same CRM ID (a
    # contact's stale company association, a split the steward has not confirmed), the one already
    # synced to it, else the oldest golden ID, keeps it; the others wait for a steward.
    # (The mask applies to both sides: assigning a Series to an empty frame would adopt its index.)
    has_id = df["crm_id"].notna()
    claimed = df[has_id].assign(_synced=ok_before[has_id]).sort_values(["crm_id", "_synced", "golden_id"],
                                                                             ascending=[True, False, True])
    losers = claimed[claimed.duplicated("crm_id", keep="first")]
    if len(losers):
        owner = claimed.drop_duplicates("crm_id").set_index("crm_id")["golden_id"]
        conflict = df.index.isin(losers.index) & ~unchanged
        reason = reason.where(~(conflict & reason.isna()),
                              "CRM ID " + df["crm_id"].astype(str) + " also belongs to " + df["crm_id"].map(owner).astype(str)
                              + ": a steward decides whether they are one")
        invalid |= conflict
    has_crm = df["crm_id"].notna()
    op = np.where(unchanged, "unchanged", np.where(invalid, INVALID, np.where(has_crm, "update", "create")))
    if spec.mode == "update_only":
        op = np.where(op == "create", "skip", op)
    df["operation"] = op
    df["reason"] = reason
    df["retry"] = prev_status.isin([REJECTED, FAILED, INVALID]) & np.isin(op, ["create", "update"])
    return df


def push(wh: Warehouse, connector: CrmConnector, payload: pd.DataFrame, spec: ObjectSync, settings: SyncSettings,
         run_id: str, dry_run: bool = False, log: Log | None = None, alert: Log | None = None,
         after_batch: Callable[[int], None] | None = None) -> SyncReport:
    """Pushes one object type. Raises :class:`SyncFailed` (after recording everything) above the
    failure threshold, :class:`SyncBusy` when another run pushes the same type."""
    log = log or (lambda _m: None)
    alert = alert or (lambda _m: None)
    wh.ensure_tables([CRM_SYNC_STATE, CRM_SYNC_LOG, CRM_SYNC_RUNS])
    try:
        with wh.exclusive(f"crm_push_{spec.object_type}"):
            return _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch)
    except LockBusy as exc:
        raise SyncBusy(f"another run is pushing {spec.object_type} to the CRM right now; try again when it is done") from exc


def _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch) -> SyncReport:
    started = _now()
    report = SyncReport(spec.object_type, spec.mode, dry_run, rows_in=len(payload))
    state = load_state(wh, spec.object_type)
    planned = plan(payload, state, spec, spec.required)
    counts = planned["operation"].value_counts()
    report.unchanged = int(counts.get("unchanged", 0))
    report.to_create = int(counts.get("create", 0))
    report.to_update = int(counts.get("update", 0))
    report.skipped_not_in_crm = int(counts.get("skip", 0))
    report.invalid = int(counts.get(INVALID, 0))
    report.retried = int(planned["retry"].sum())
    gone = pd.DataFrame(columns=state.columns)
    if spec.mode == "mirror" and len(state):
        gone = state[~state["golden_id"].isin(payload["golden_id"]) & state["crm_id"].notna()
                     & (state["last_status"] != ARCHIVED)]
    report.to_archive = len(gone)
    log(f"{spec.object_type}: {report.rows_in:,} rows: {report.to_create:,} to create, {report.to_update:,} to update, "
        f"{report.unchanged:,} unchanged, {report.invalid:,} invalid, {report.skipped_not_in_crm:,} skipped, "
        f"{report.to_archive:,} to archive{' (dry run: nothing is sent)' if dry_run else ''}")
    if dry_run:
        report.status = "dry_run"
        _record_run(wh, run_id, report, started)
        return report

    before = connector.stats.as_dict()
    now = _now()
    invalid = planned[planned["operation"] == INVALID]
    if len(invalid):
        _commit(wh, spec.object_type, run_id, invalid, [RowResult(g, INVALID, message=r) for g, r in
                                                        zip(invalid["golden_id"], invalid["reason"])], state, now)
    todo = planned[planned["operation"].isin(["create", "update"])].reset_index(drop=True)
    props = property_columns(payload)
    account_ids = _account_crm_ids(wh, spec)
    batch_size = connector.max_batch
    n_batches = (len(todo) + batch_size - 1) // batch_size
    # Up to max_in_flight batches are on the wire while the main thread commits the answers in batch
    # order; only the main thread writes to the warehouse. A batch the CRM applied but whose answer
    # was not committed yet is sent again by the next run, which updates (keyed by golden ID).
    with ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="crm-push") as senders:
        pending: deque = deque()

        def submit(b: int) -> None:
            chunk = todo.iloc[b * batch_size:(b + 1) * batch_size]
            pending.append((b, chunk, senders.submit(_send, connector, settings, spec, chunk, props)))

        for b in range(min(settings.max_in_flight, n_batches)):
            submit(b)
        while pending:
            b, chunk, future = pending.popleft()
            results = future.result()
            if b + settings.max_in_flight < n_batches:
                submit(b + settings.max_in_flight)
            _count(report, results)
            assoc = _associate(connector, spec, chunk, results, account_ids, report)
            _commit(wh, spec.object_type, run_id, chunk, results, state, _now(), assoc)
            report.batches += 1
            if b % 50 == 0 or b == n_batches - 1:
                log(f"{spec.object_type}: batch {b + 1}/{n_batches}: {report.created:,} created, "
                    f"{report.updated:,} updated, {report.rejected:,} rejected, {report.failed:,} failed")
            if after_batch:
                after_batch(b)
    _associate_unchanged(wh, connector, spec, planned, account_ids, report, run_id, state)
    for start in range(0, len(gone), batch_size):
        chunk = gone.iloc[start:start + batch_size]
        results = connector.archive(spec.object_type, list(zip(chunk["golden_id"], chunk["crm_id"])))
        for r in results:
            if r.status == ARCHIVED:
                report.archived += 1
            else:
                report.failed += 1
        _commit(wh, spec.object_type, run_id, chunk.assign(payload_hash=None, operation="archive"), results, state,
                _now())
    after = connector.stats.as_dict()
    report.requests = after["requests"] - before["requests"]
    report.throttled = after["throttled"] - before["throttled"]
    report.retries = after["retries"] - before["retries"]
    # Over the whole model, not over the rows sent: one stubborn row retried alone on a quiet day is
    # 100 % of that run's rows but no sign of a broken sync; a CRM outage or a bad mapping still is.
    attempted = report.rows_in + report.to_archive
    report.failure_rate = round((report.rejected + report.failed + report.invalid) / attempted, 4) if attempted else 0.0
    report.messages = _top_messages(wh, run_id, spec.object_type)
    previous = _previous_status(wh, spec.object_type)
    if report.failure_rate > settings.failure_rate_threshold:
        report.status = "failed"
        _record_run(wh, run_id, report, started)
        message = (f"CRM push of {spec.object_type} failed: {report.rejected + report.failed + report.invalid:,} of "
                   f"{attempted:,} rows rejected, failed or invalid ({report.failure_rate:.1%} > threshold "
                   f"{settings.failure_rate_threshold:.1%}); they are retried on the next run. See ops.crm_sync_log, "
                   f"run {run_id}.")
        alert(message)
        raise SyncFailed(message, report)
    _record_run(wh, run_id, report, started)
    if previous == "failed":
        alert(f"CRM push of {spec.object_type} recovered: {report.sent:,} rows sent, failure rate {report.failure_rate:.1%}.")
    return report


def load_state(wh: Warehouse, object_type: str) -> pd.DataFrame:
    wh.ensure_tables([CRM_SYNC_STATE])
    t = CRM_SYNC_STATE
    return wh.read_frame(sa.select(t.c.golden_id, t.c.crm_id, t.c.payload_hash, t.c.last_status, t.c.attempts,
                                   t.c.associated_crm_id).where(t.c.object_type == object_type))


def _send(connector: CrmConnector, settings: SyncSettings, spec: ObjectSync, chunk: pd.DataFrame,
          props: list[str]) -> list[RowResult]:
    values = chunk[props].to_numpy(dtype=object)
    # A payload read back from a table or a file may carry NaN for empty: the CRM gets null (JSON has no NaN).
    inputs = [UpsertInput(g, {p: None if is_missing(v) else v for p, v in zip(props, row)})
              for g, row in zip(chunk["golden_id"], values)]
    is_update = (chunk["operation"] == "update").to_numpy()
    out: dict[str, RowResult] = {}
    if is_update.any():
        upd = [i for i, u in zip(inputs, is_update) if u]
        # Stamping our golden ID on a CRM object that came from the CRM: from then on it is keyed by it.
        upd = [UpsertInput(i.key, {**i.properties, settings.id_property: i.key}) for i in upd]
        for r in connector.update(spec.object_type, upd, chunk["crm_id"][is_update].tolist()):
            out[r.key] = r
    if (~is_update).any():
        for r in connector.upsert(spec.object_type, settings.id_property, [i for i, u in zip(inputs, is_update) if not u]):
            out[r.key] = r
    return [out[g] for g in chunk["golden_id"]]


def _count(report: SyncReport, results: list[RowResult]) -> None:
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


def _account_crm_ids(wh: Warehouse, spec: ObjectSync) -> dict[str, str]:
    if not spec.associate_with:
        return {}
    st = load_state(wh, spec.associate_with)
    st = st[st["crm_id"].notna() & st["last_status"].isin(list(OK))]
    return dict(zip(st["golden_id"], st["crm_id"]))


def _associate(connector, spec: ObjectSync, chunk: pd.DataFrame, results: list[RowResult], account_ids: dict,
               report: SyncReport) -> dict[str, str]:
    """Links freshly written contacts to their company; returns golden ID -> associated company CRM ID."""
    if not spec.associate_with or "account_id" not in chunk.columns:
        return {}
    pairs = []
    for r, acc, done in zip(results, chunk["account_id"], chunk["associated_crm_id"]):
        target = account_ids.get(acc) if acc else None
        if r.status in OK and r.crm_id and target and target != done:
            pairs.append((r.key, r.crm_id, target))
    return _link(connector, spec, pairs, report)


def _link(connector, spec: ObjectSync, pairs: list[tuple[str, str, str]], report: SyncReport) -> dict[str, str]:
    linked = {}
    for start in range(0, len(pairs), connector.max_batch):
        batch = pairs[start:start + connector.max_batch]
        target = {k: t for k, _, t in batch}
        for r in connector.associate(spec.object_type, spec.associate_with, batch):
            if r.status in OK:
                report.associated += 1
                linked[r.key] = target[r.key]
            else:
                report.association_failures += 1
    return linked


def _associate_unchanged(wh, connector, spec, planned, account_ids, report, run_id, state) -> None:
    """Contacts that did not change but whose company got its CRM ID only now still need the link."""
    if not spec.associate_with or "account_id" not in planned.columns:
        return
    rows = planned[(planned["operation"] == "unchanged") & planned["crm_id"].notna()]
    targets = rows["account_id"].map(account_ids)
    rows = rows[targets.notna() & (targets != rows["associated_crm_id"])]
    if not len(rows):
        return
    linked = _link(connector, spec, list(zip(rows["golden_id"], rows["crm_id"], rows["account_id"].map(account_ids))),
                   report)
    if linked:
        t = CRM_SYNC_STATE
        with wh.engine.begin() as conn:
            for g, target in linked.items():
                conn.execute(sa.update(t).where(t.c.object_type == spec.object_type, t.c.golden_id == g)
                             .values(associated_crm_id=target))


def _commit(wh: Warehouse, object_type: str, run_id: str, chunk: pd.DataFrame, results: list[RowResult],
            state: pd.DataFrame, at: datetime, associated: dict | None = None) -> None:
    """One transaction per batch: the new state of its rows and their log lines."""
    associated = associated or {}
    prev = state.set_index("golden_id") if len(state) else None
    state_rows, log_rows = [], []
    for r, (_, row) in zip(results, chunk.iterrows()):
        ok = r.status in OK or r.status == ARCHIVED
        crm_id = r.crm_id or (row.get("crm_id") if pd.notna(row.get("crm_id")) else None)
        attempts = 1
        if prev is not None and r.key in prev.index and not ok:
            attempts = int(prev.at[r.key, "attempts"] or 0) + 1
        message = mask_text(r.message) if r.message else None
        assoc = associated.get(r.key, row.get("associated_crm_id"))
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


def _record_run(wh: Warehouse, run_id: str, report: SyncReport, started: datetime) -> None:
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, CRM_SYNC_RUNS, pd.DataFrame([{
            "run_id": run_id, "object_type": report.object_type, "mode": report.mode, "dry_run": report.dry_run,
            "started_at": started, "finished_at": _now(), "status": report.status,
            "counts": json.dumps({k: v for k, v in report.as_dict().items() if isinstance(v, (int, float))}),
        }]))


def _previous_status(wh: Warehouse, object_type: str) -> str | None:
    t = CRM_SYNC_RUNS
    return wh.scalar(sa.select(t.c.status).where(t.c.object_type == object_type, t.c.dry_run.is_(False))
                     .order_by(t.c.started_at.desc()).limit(1))


def _top_messages(wh: Warehouse, run_id: str, object_type: str, n: int = 5) -> dict:
    t = CRM_SYNC_LOG
    rows = wh.read_frame(sa.select(t.c.message, sa.func.count().label("n"))
                         .where(t.c.run_id == run_id, t.c.object_type == object_type, t.c.message.is_not(None))
                         .group_by(t.c.message).order_by(sa.func.count().desc()).limit(n))
    # Messages can still name a value; strip long specifics so the metadata stays a summary.
    return {str(m)[:200]: int(c) for m, c in zip(rows["message"], rows["n"])}


def _now() -> datetime:
    return datetime.now(timezone.utc)
