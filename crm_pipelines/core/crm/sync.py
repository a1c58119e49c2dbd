"""The sync engine: diff against what was last sent, push in batches, remember every row's outcome.

What reverse-ETL practice asks for, and where it lives here:
- only new and changed rows go out: ``ops.crm_sync_state`` keeps, per golden ID, the hash of the
  properties last accepted by the CRM and the CRM's ID;
- who owns a field (``field_policy`` in sync.yaml): the warehouse, the CRM (set at creation only), or
  the CRM once filled; ``lifecyclestage`` only moves forward from what the CRM holds
  (``ops.crm_remote``, kept by the incremental pull);
- a preflight reads the portal's property definitions once and refuses the push before any write when
  a property is missing, and rows whose value the portal would refuse;
- creates and updates travel in batches of their own; contact -> company links are collected and sent
  1,000 at a time from the sender threads; "already exists" answers adopt the CRM's record, and
  updates to a merged-away ID follow the survivor;
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

import hashlib
import json
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..masking import mask_text
from ..schema import CRM_SYNC_LOG, CRM_SYNC_RUNS, CRM_SYNC_STATE
from ..warehouse import LockBusy, Warehouse
from .changes import DELETED, load_remote
from .hubspot import existing_id
from .payloads import is_missing, property_columns
from .properties import preflight, value_problem
from .protocol import ARCHIVED, CREATED, FAILED, REJECTED, UPDATED, CrmConnector, RowResult, UpsertInput
from .settings import LIFECYCLE_ORDER, ObjectSync, SyncSettings

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


def plan(payload: pd.DataFrame, state: pd.DataFrame, spec: ObjectSync, required: tuple[str, ...],
         remote: pd.DataFrame | None = None, on_crm_delete: str = "keep_deleted") -> pd.DataFrame:
    """Per payload row: the operation (create / update / unchanged / skip / invalid / deleted_in_crm), why,
    and ``_send``: the properties that go out once the field policies have been applied.

    ``state`` is this object type's rows of ``ops.crm_sync_state``; ``remote`` its rows of ``ops.crm_remote``
    (what the CRM holds, as the last pull saw it).
    """
    df = payload.copy()
    st = state.set_index("golden_id") if len(state) else pd.DataFrame(
        columns=["crm_id", "payload_hash", "last_status", "associated_crm_id"])
    prev_hash = df["golden_id"].map(st["payload_hash"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_status = df["golden_id"].map(st["last_status"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_crm = df["golden_id"].map(st["crm_id"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    df["prev_status"] = prev_status
    df["associated_crm_id"] = df["golden_id"].map(st["associated_crm_id"]) if len(st) else None
    # The CRM ID we learnt by pushing wins over the one the golden record brought from the CRM snapshot.
    df["crm_id"] = prev_crm.where(prev_crm.notna(), df["crm_id"])
    remote = remote if remote is not None else pd.DataFrame(columns=["crm_id", "golden_id", "properties", "archived",
                                                                      "merged_into"])
    merged = {str(a): str(s) for a, s in zip(remote["crm_id"], remote["merged_into"]) if isinstance(s, str) and s}
    archived = {str(c) for c, a in zip(remote["crm_id"], remote["archived"]) if bool(a)}
    live = {str(c): p for c, p, a in zip(remote["crm_id"], remote["properties"], remote["archived"]) if not bool(a)}
    # A merged-away ID is followed to its survivor (chains too), whoever brought it.
    df["crm_id"] = [_survivor(c, merged) if isinstance(c, str) else c for c in df["crm_id"]]
    deleted = df["crm_id"].isin(archived) | (prev_status == DELETED)
    recreate = deleted & (on_crm_delete == "recreate_and_flag")
    df.loc[recreate, "crm_id"] = None
    if spec.associate_with:
        # What the CRM already links counts as linked: no request for it.
        known = [(live.get(c) or {}).get("associatedcompanyid") if isinstance(c, str) else None for c in df["crm_id"]]
        df["associated_crm_id"] = df["associated_crm_id"].where(df["associated_crm_id"].notna(),
                                                                pd.Series(known, index=df.index, dtype=object))
    props = property_columns(payload)
    values = df[props].to_numpy(dtype=object)
    has_crm = df["crm_id"].notna().to_numpy()
    sends = [_shape(spec, props, row, live.get(c) if isinstance(c, str) else None, bool(u))
             for row, c, u in zip(values, df["crm_id"], has_crm)]
    df["_send"] = sends
    # The hash is of our values, not of what the policies let through against the CRM's current values:
    # a change sales made in the CRM does not make a row "changed" on our side. Fields the CRM owns once
    # the object exists are left out: a change of ours there has nothing to send.
    hashed = [i for i, p in enumerate(props) if spec.policy(p) != "crm"]
    df["payload_hash"] = [_hash({props[i]: (None if is_missing(row[i]) else row[i]) for i in hashed}) for row in values]
    ok_before = prev_status.isin(list(OK))
    unchanged = ok_before & (prev_hash == df["payload_hash"]) & ~recreate
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
    # contact's stale company association, a split the steward has not confirmed, a merge in the CRM),
    # the one already synced to it, else the oldest golden ID, keeps it; the others wait for a steward.
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
    op = np.where(deleted & ~recreate & (op != INVALID), DELETED, op)
    # Changed only in fields the CRM owns now: nothing to send; the new hash is kept (see _hold).
    nothing = np.array([op_ == "update" and not send for op_, send in zip(op, sends)], dtype=bool)
    op = np.where(nothing, "held", op)
    if spec.mode == "update_only":
        op = np.where(op == "create", "skip", op)
    df["operation"] = op
    df["reason"] = reason
    df["recreated"] = recreate & (op == "create")
    df["retry"] = prev_status.isin([REJECTED, FAILED, INVALID]) & np.isin(op, ["create", "update"])
    return df


def _survivor(crm_id: str, merged: dict[str, str]) -> str:
    seen = set()
    while crm_id in merged and crm_id not in seen:
        seen.add(crm_id)
        crm_id = merged[crm_id]
    return crm_id


def _shape(spec: ObjectSync, props: list[str], row, remote: dict | None, update: bool) -> dict:
    """The properties one row sends. A create sends every value it has. An update leaves out CRM-owned
    fields, fill-when-empty fields the CRM has filled (or whose CRM value we do not know), and a lifecycle
    stage that would not move the CRM's stage forward. An empty value is never sent: we do not clear
    what somebody typed into the CRM because we know nothing of it (erasure goes through the GDPR delete)."""
    out = {}
    for p, v in zip(props, row):
        if is_missing(v):
            continue
        if not update:
            out[p] = v
            continue
        if p == "lifecyclestage":
            if remote is not None and _forward(remote.get("lifecyclestage"), v):
                out[p] = v
            continue
        policy = spec.policy(p)
        if policy == "crm":
            continue
        if policy == "fill_empty":
            if remote is not None and remote.get(p) in (None, ""):
                out[p] = v
            continue
        out[p] = v
    return out


def _forward(current, new: str) -> bool:
    """Whether setting ``new`` moves the stage forward from ``current`` (HubSpot never moves it back;
    a stage outside the order, such as "other", was set by a person and stays)."""
    if new not in LIFECYCLE_ORDER:
        return False
    if current in (None, ""):
        return True
    if current not in LIFECYCLE_ORDER:
        return False
    return LIFECYCLE_ORDER.index(new) > LIFECYCLE_ORDER.index(current)


def _hash(send: dict) -> str:
    text = json.dumps(send, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def push(wh: Warehouse, connector: CrmConnector, payload: pd.DataFrame, spec: ObjectSync, settings: SyncSettings,
         run_id: str, dry_run: bool = False, log: Log | None = None, alert: Log | None = None,
         after_batch: Callable[[int], None] | None = None, remote: pd.DataFrame | None = None) -> SyncReport:
    """Pushes one object type. Raises :class:`~.properties.PortalNotReady` before any write when the portal
    lacks a property, :class:`SyncFailed` (after recording everything) above the failure threshold,
    :class:`SyncBusy` when another run pushes the same type."""
    log = log or (lambda _m: None)
    alert = alert or (lambda _m: None)
    wh.ensure_tables([CRM_SYNC_STATE, CRM_SYNC_LOG, CRM_SYNC_RUNS])
    try:
        with wh.exclusive(f"crm_push_{spec.object_type}"):
            return _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch, remote)
    except LockBusy as exc:
        raise SyncBusy(f"another run is pushing {spec.object_type} to the CRM right now; try again when it is done") from exc


def _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch, remote) -> SyncReport:
    started = _now()
    report = SyncReport(spec.object_type, spec.mode, dry_run, rows_in=len(payload))
    definitions = connector.properties(spec.object_type)
    props = property_columns(payload)
    preflight(definitions, spec.object_type, settings.id_property, props)
    state = load_state(wh, spec.object_type)
    remote = load_remote(wh, spec.object_type) if remote is None else remote
    planned = plan(payload, state, spec, spec.required, remote, settings.on_crm_delete)
    _refuse_values(planned, definitions, spec.object_type)
    counts = planned["operation"].value_counts()
    report.unchanged = int(counts.get("unchanged", 0))
    report.to_create = int(counts.get("create", 0))
    report.to_update = int(counts.get("update", 0))
    report.skipped_not_in_crm = int(counts.get("skip", 0))
    report.invalid = int(counts.get(INVALID, 0))
    report.deleted_in_crm = int(counts.get(DELETED, 0))
    report.recreated = int(planned["recreated"].sum())
    report.held = int(counts.get("held", 0))
    report.retried = int(planned["retry"].sum())
    gone = pd.DataFrame(columns=state.columns)
    if spec.mode == "mirror" and len(state):
        gone = state[~state["golden_id"].isin(payload["golden_id"]) & state["crm_id"].notna()
                     & ~state["last_status"].isin([ARCHIVED, DELETED])]
    report.to_archive = len(gone)
    log(f"{spec.object_type}: {report.rows_in:,} rows: {report.to_create:,} to create, {report.to_update:,} to update, "
        f"{report.unchanged:,} unchanged, {report.invalid:,} invalid, {report.skipped_not_in_crm:,} skipped, "
        f"{report.deleted_in_crm:,} deleted in the CRM, {report.to_archive:,} to archive"
        f"{' (dry run: nothing is sent)' if dry_run else ''}")
    if dry_run:
        report.status = "dry_run"
        _record_run(wh, run_id, report, started)
        return report

    before = connector.stats.as_dict()
    now = _now()
    _hold(wh, spec.object_type, planned[planned["operation"] == "held"])
    invalid = planned[planned["operation"] == INVALID]
    if len(invalid):
        _commit(wh, spec.object_type, run_id, invalid, [RowResult(g, INVALID, message=r) for g, r in
                                                        zip(invalid["golden_id"], invalid["reason"])], state, now)
    # Creates and updates go out in batches of their own: one request per batch, never two half-full ones.
    batches = []
    for op in ("create", "update"):
        part = planned[planned["operation"] == op]
        batches += [part.iloc[i:i + connector.max_batch] for i in range(0, len(part), connector.max_batch)]
    linker = _Linker(connector, spec, _account_crm_ids(wh, spec))
    _run_batches(wh, connector, settings, spec, batches, linker, report, state, run_id, log, after_batch)
    _repair(wh, connector, settings, spec, planned, linker, report, state, run_id, log)
    _associate_unchanged(planned, linker)
    _commit_links(wh, spec.object_type, linker.flush(), report)
    for start in range(0, len(gone), connector.max_batch):
        chunk = gone.iloc[start:start + connector.max_batch]
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


def _refuse_values(planned: pd.DataFrame, definitions: dict, object_type: str) -> None:
    """Rows with a value the portal would refuse (and with it their whole batch) become invalid here."""
    sending = planned["operation"].isin(["create", "update"])
    for i in planned.index[sending]:
        for name, value in planned.at[i, "_send"].items():
            problem = value_problem(definitions.get(name) or {}, object_type, name, value)
            if problem:
                planned.at[i, "operation"] = INVALID
                planned.at[i, "reason"] = problem
                break


class _Linker:
    """Collects contact -> company links as writes succeed and sends them in batches of the connector's
    association size from whichever sender thread fills one; the main thread commits the outcome."""

    def __init__(self, connector: CrmConnector, spec: ObjectSync, targets: dict[str, str]):
        self.connector, self.spec, self.targets = connector, spec, targets
        self.size = getattr(connector, "max_association_batch", connector.max_batch)
        self._pending: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def wanted(self, chunk: pd.DataFrame, results: list[RowResult]) -> list[tuple[str, str, str]]:
        if not self.spec.associate_with or "account_id" not in chunk.columns:
            return []
        pairs = []
        for r, acc, done in zip(results, chunk["account_id"], chunk["associated_crm_id"]):
            target = self.targets.get(acc) if isinstance(acc, str) else None
            if r.status in OK and r.crm_id and target and target != done:
                pairs.append((r.key, r.crm_id, target))
        return pairs

    def add(self, pairs: list[tuple[str, str, str]]) -> list[tuple[list, list[RowResult]]]:
        """Queues pairs; sends every full batch now (on the calling thread)."""
        with self._lock:
            self._pending += pairs
            full = []
            while len(self._pending) >= self.size:
                full.append(self._pending[:self.size])
                self._pending = self._pending[self.size:]
        return [(b, self._send(b)) for b in full]

    def flush(self) -> list[tuple[list, list[RowResult]]]:
        with self._lock:
            rest, self._pending = self._pending, []
        return [(rest[i:i + self.size], self._send(rest[i:i + self.size])) for i in range(0, len(rest), self.size)]

    def _send(self, batch: list) -> list[RowResult]:
        return self.connector.associate(self.spec.object_type, self.spec.associate_with, batch)


def _run_batches(wh, connector, settings, spec, batches, linker, report, state, run_id, log, after_batch) -> None:
    """Up to ``max_in_flight`` requests on the wire, a few more batches queued so no sender ever waits for
    the main thread; the main thread commits each batch as it comes back (its own transaction), whatever
    the order. A batch the CRM applied but whose answer was not committed yet is sent again by the next
    run, which updates (keyed by golden ID or CRM ID)."""
    n = len(batches)
    with ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="crm-push") as senders:
        waiting: dict = {}
        next_batch = 0

        def fill() -> None:
            nonlocal next_batch
            while next_batch < n and len(waiting) < settings.max_in_flight + 2:
                chunk = batches[next_batch]
                waiting[senders.submit(_send_and_link, connector, settings, spec, chunk, linker)] = (next_batch, chunk)
                next_batch += 1

        fill()
        done_batches = 0
        while waiting:
            finished, _ = wait(list(waiting), return_when=FIRST_COMPLETED)
            for future in finished:
                b, chunk = waiting.pop(future)
                results, links = future.result()
                _count(report, results)
                _commit(wh, spec.object_type, run_id, chunk, results, state, _now())
                _commit_links(wh, spec.object_type, links, report)
                report.batches += 1
                done_batches += 1
                if done_batches % 50 == 1 or done_batches == n:
                    log(f"{spec.object_type}: batch {done_batches}/{n}: {report.created:,} created, "
                        f"{report.updated:,} updated, {report.rejected:,} rejected, {report.failed:,} failed")
                if after_batch:
                    after_batch(b)
            fill()


def _send_and_link(connector, settings, spec, chunk: pd.DataFrame, linker: _Linker):
    results = _send(connector, settings, spec, chunk)
    return results, linker.add(linker.wanted(chunk, results))


def _send(connector: CrmConnector, settings: SyncSettings, spec: ObjectSync, chunk: pd.DataFrame) -> list[RowResult]:
    """One request: a batch is all creates (upsert by golden ID) or all updates (by the CRM's ID, stamping
    our golden ID on objects that came from the CRM, so they are never created a second time)."""
    if (chunk["operation"] == "update").all():
        inputs = [UpsertInput(g, {**send, settings.id_property: g}) for g, send in zip(chunk["golden_id"], chunk["_send"])]
        return connector.update(spec.object_type, inputs, chunk["crm_id"].tolist())
    inputs = [UpsertInput(g, dict(send)) for g, send in zip(chunk["golden_id"], chunk["_send"])]
    return connector.upsert(spec.object_type, settings.id_property, inputs)


def _repair(wh, connector, settings, spec, planned, linker, report, state, run_id, log) -> None:
    """Rows the CRM refused for a reason we can resolve in this run:

    - "Contact already exists. Existing ID: …": the CRM has the person, but the golden layer does not
      know that record (its CRM record was quarantined, or sales created it): adopt its ID and update it,
      unless it carries another golden record's ID (then a steward decides);
    - an update to an ID that no longer exists: merged away (the CRM answers a read of it with the
      survivor: follow it) or deleted by a user (``on_crm_delete`` decides).
    """
    t = CRM_SYNC_STATE
    rows = wh.read_frame(sa.select(t.c.golden_id, t.c.crm_id, t.c.last_status, t.c.last_message)
                         .where(t.c.object_type == spec.object_type, t.c.last_run_id == run_id,
                                t.c.last_status == REJECTED))
    if not len(rows):
        return
    by_key = planned.set_index("golden_id")
    conflict = rows[rows["last_message"].fillna("").str.contains("already exists", case=False)]
    dead = rows[rows["last_message"].fillna("").str.contains("OBJECT_NOT_FOUND|not found", case=False)
                & rows["crm_id"].notna()]
    targets: dict[str, str] = {}
    for g, message in zip(conflict["golden_id"], conflict["last_message"]):
        found = existing_id(message)
        if found:
            targets[g] = found
    lookup = [g for g in conflict["golden_id"] if g not in targets and isinstance(by_key.at[g, "email"], str)] \
        if "email" in by_key.columns else []
    if lookup:
        found = connector.read_by(spec.object_type, [by_key.at[g, "email"] for g in lookup], [settings.id_property],
                                  id_property="email")
        targets.update({g: str(found[by_key.at[g, "email"]]["id"]) for g in lookup if by_key.at[g, "email"] in found})
    dead_ids = dict(zip(dead["golden_id"], dead["crm_id"]))
    survivors = connector.read_by(spec.object_type, list(dead_ids.values()), [settings.id_property]) if dead_ids else {}
    gone = []
    for g, old in dead_ids.items():
        if old in survivors and str(survivors[old]["id"]) != old:
            targets[g] = str(survivors[old]["id"])
        else:
            gone.append(g)
    if gone:
        _mark_gone(wh, spec.object_type, gone)
        report.deleted_in_crm += len(gone)
    if not targets:
        return
    owners = connector.read_by(spec.object_type, list(set(targets.values())), [settings.id_property])
    adopt, refused = [], []
    taken = set(state.loc[state["crm_id"].notna(), "crm_id"]) if len(state) else set()
    for g, crm_id in targets.items():
        holder = ((owners.get(crm_id) or {}).get("properties") or {}).get(settings.id_property)
        if (holder and holder != g) or (crm_id in taken and crm_id != by_key.at[g, "crm_id"]):
            refused.append((g, crm_id, holder))
        else:
            adopt.append((g, crm_id))
    for g, crm_id, holder in refused:
        report.rejected += 0  # already counted when the CRM refused it
        _note(wh, spec.object_type, g, crm_id, f"CRM object {crm_id} belongs to golden record {holder or 'another record'}: "
                                            "a steward decides whether they are one")
    if not adopt:
        return
    chunk_all = by_key.loc[[g for g, _ in adopt]].reset_index()
    chunk_all["crm_id"] = [c for _, c in adopt]
    chunk_all["operation"] = "update"
    chunk_all["_send"] = [dict(s) for s in chunk_all["_send"]]  # the create's full set: the CRM's record is ours now
    for start in range(0, len(chunk_all), connector.max_batch):
        chunk = chunk_all.iloc[start:start + connector.max_batch]
        results = _send(connector, settings, spec, chunk)
        fixed = [r for r in results if r.status in OK]
        report.adopted += len(fixed)
        report.rejected -= len(fixed)
        report.updated += len(fixed)
        _commit(wh, spec.object_type, run_id, chunk.assign(operation="adopt"), results, load_state(wh, spec.object_type),
                _now())
        _commit_links(wh, spec.object_type, linker.add(linker.wanted(chunk, results)), report)
    log(f"{spec.object_type}: {report.adopted:,} existing CRM records adopted, {len(refused):,} left to a steward, "
        f"{len(gone):,} deleted in the CRM")


def _hold(wh, object_type: str, rows: pd.DataFrame) -> None:
    """Rows changed only where the CRM owns the field: their new hash is remembered, nothing is sent."""
    if not len(rows):
        return
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id == sa.bindparam("g"))
                     .values(payload_hash=sa.bindparam("h")),
                     [{"g": g, "h": h} for g, h in zip(rows["golden_id"], rows["payload_hash"])])


def _mark_gone(wh, object_type: str, golden_ids: list[str]) -> None:
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id.in_(golden_ids))
                     .values(last_status=DELETED, payload_hash=None, last_message="the CRM no longer has this object"))


def _note(wh, object_type: str, golden_id: str, crm_id: str, message: str) -> None:
    t = CRM_SYNC_STATE
    with wh.engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.golden_id == golden_id)
                     .values(last_message=mask_text(message)))


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


def _associate_unchanged(planned: pd.DataFrame, linker: _Linker) -> None:
    """Contacts that did not change but whose company got its CRM ID only now still need the link."""
    if not linker.spec.associate_with or "account_id" not in planned.columns:
        return
    rows = planned[(planned["operation"] == "unchanged") & planned["crm_id"].notna()]
    targets = rows["account_id"].map(linker.targets)
    rows = rows[targets.notna() & (targets != rows["associated_crm_id"])]
    if len(rows):
        with linker._lock:
            linker._pending += list(zip(rows["golden_id"], rows["crm_id"], rows["account_id"].map(linker.targets)))


def _commit_links(wh: Warehouse, object_type: str, sent: list[tuple[list, list[RowResult]]], report: SyncReport) -> None:
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
        if ok and row.get("recreated"):
            message = "re-created after a user deleted it in the CRM (on_crm_delete: recreate_and_flag)"
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


def load_state(wh: Warehouse, object_type: str) -> pd.DataFrame:
    wh.ensure_tables([CRM_SYNC_STATE])
    t = CRM_SYNC_STATE
    return wh.read_frame(sa.select(t.c.golden_id, t.c.crm_id, t.c.payload_hash, t.c.last_status, t.c.attempts,
                                   t.c.associated_crm_id).where(t.c.object_type == object_type))


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
