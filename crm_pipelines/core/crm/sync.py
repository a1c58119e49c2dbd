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
from .changes import DELETED, VALUE_FIELDS, load_remote, mirror_properties
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
    frame = df[props].astype(object)
    frame = frame.where(frame.notna(), None)
    values = frame.to_numpy(dtype=object)
    shaper = _Shaper(spec, props)
    sends = [shaper.shape(row, live.get(c) if isinstance(c, str) else None) if isinstance(c, str) else shaper.create(row)
             for row, c in zip(values, df["crm_id"])]
    df["_send"] = sends
    # The hash is of our values, not of what the policies let through against the CRM's current values:
    # a change sales made in the CRM does not make a row "changed" on our side. Fields the CRM owns once
    # the object exists are left out: a change of ours there has nothing to send.
    hashed = [p for p in props if spec.policy(p) != "crm"]
    df["payload_hash"] = _hashes(frame[hashed])
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


class _Shaper:
    """The properties one row sends. A create sends every value it has. An update leaves out CRM-owned
    fields, fill-when-empty fields the CRM has filled (or whose CRM value we do not know), and a lifecycle
    stage that would not move the CRM's stage forward. An empty value is never sent: we do not clear
    what somebody typed into the CRM because we know nothing of it (erasure goes through the GDPR delete).
    Values come in with None for empty."""

    def __init__(self, spec: ObjectSync, props: list[str]):
        self.props = props
        self.always = [i for i, p in enumerate(props) if p != "lifecyclestage" and spec.policy(p) == "warehouse"]
        self.fill = [i for i, p in enumerate(props) if p != "lifecyclestage" and spec.policy(p) == "fill_empty"]
        self.stage = props.index("lifecyclestage") if "lifecyclestage" in props else None

    def create(self, row) -> dict:
        return {p: v for p, v in zip(self.props, row) if v is not None}

    def shape(self, row, remote: dict | None) -> dict:
        props = self.props
        out = {props[i]: row[i] for i in self.always if row[i] is not None}
        if remote is None:
            return out
        for i in self.fill:
            if row[i] is not None and remote.get(props[i]) in (None, ""):
                out[props[i]] = row[i]
        if self.stage is not None and row[self.stage] is not None and _forward(remote.get("lifecyclestage"),
                                                                                row[self.stage]):
            out["lifecyclestage"] = row[self.stage]
        return out


def _shape(spec: ObjectSync, props: list[str], row, remote: dict | None, update: bool) -> dict:
    values = [None if is_missing(v) else v for v in row]
    shaper = _Shaper(spec, props)
    return shaper.shape(values, remote) if update else shaper.create(values)


def _hashes(frame: pd.DataFrame) -> list[str]:
    """A stable hash of each row's values (pandas' SipHash with its fixed key: the same values give the
    same hash in every run), with the column names, so a changed mapping changes every hash."""
    if not len(frame):
        return []
    text = frame.astype(str).where(frame.notna(), "\x00")  # None and "None" must differ
    rows = pd.util.hash_pandas_object(text, index=False).to_numpy()
    salt = int(hashlib.sha256(",".join(frame.columns).encode()).hexdigest()[:15], 16)
    return [f"{(int(h) ^ salt):016x}" for h in rows]


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
    # Links of records whose CRM ID we know need no write result: queued now, sent once the creates are done.
    linker.queue(_known_links(planned, linker))
    adopter = _Adopter(connector, settings, spec, planned, props, state, linker)
    dead = _run_batches(wh, connector, settings, spec, batches, linker, adopter, report, state, run_id, log,
                        after_batch)
    _follow_dead(wh, connector, settings, spec, dead, adopter, report, run_id)
    _commit_links(wh, spec.object_type, linker.drain(), report)
    if adopter.adopted or adopter.left or dead:
        log(f"{spec.object_type}: {adopter.adopted:,} existing CRM records adopted, {adopter.left:,} left to a "
            f"steward, {report.deleted_in_crm:,} deleted in the CRM")
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
    checked = {name for name, d in definitions.items()
               if (d.get("type") == "enumeration" and d.get("options") and not d.get("externalOptions"))
               or d.get("type") == "number"}
    allowed = {name: {o.get("value") for o in definitions[name]["options"]} for name in checked
               if definitions[name].get("type") == "enumeration" and definitions[name].get("fieldType") != "checkbox"}
    sending = planned["operation"].isin(["create", "update"]).to_numpy()
    bad = {}
    for i, send, go in zip(planned.index, planned["_send"], sending):
        if not go:
            continue
        for name in checked.intersection(send):
            if send[name] in allowed.get(name, ()):
                continue  # the common case, without building a message
            problem = value_problem(definitions[name], object_type, name, send[name])
            if problem:
                bad[i] = problem
                break
    if bad:
        rows = list(bad)
        planned.loc[rows, "operation"] = INVALID
        planned.loc[rows, "reason"] = [bad[i] for i in rows]


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

    def queue(self, pairs: list[tuple[str, str, str]]) -> None:
        """Queues pairs without sending (they go with the next full batch or :meth:`drain`)."""
        with self._lock:
            self._pending += pairs

    def drain(self) -> list[tuple[list, list[RowResult]]]:
        """Sends everything queued (on the calling thread)."""
        with self._lock:
            rest, self._pending = self._pending, []
        return [(rest[i:i + self.size], self._send(rest[i:i + self.size])) for i in range(0, len(rest), self.size)]

    def _send(self, batch: list) -> list[RowResult]:
        return self.connector.associate(self.spec.object_type, self.spec.associate_with, batch)


def _run_batches(wh, connector, settings, spec, batches, linker, adopter, report, state, run_id, log,
                 after_batch) -> dict[str, str]:
    """Up to ``max_in_flight`` requests on the wire, a few more tasks queued so no sender ever waits for
    the main thread; the main thread commits each batch as it comes back (its own transaction), whatever
    the order. A batch the CRM applied but whose answer was not committed yet is sent again by the next
    run, which updates (keyed by golden ID or CRM ID).

    Creates go first. Once every create is answered, the queued links and the adoption of contacts the
    CRM already had ("already exists") are sent beside the updates, not after them: nothing waits at the
    end for the rate-limit window. Returns the updates refused because their CRM ID no longer exists
    (golden ID -> CRM ID), for :func:`_follow_dead`."""
    n = len(batches)
    creates_left = sum(1 for c in batches if c["operation"].iloc[0] == "create")
    conflicts: list[RowResult] = []
    dead: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="crm-push") as senders:
        waiting: dict = {}
        next_batch = 0
        second_phase = False

        def fill() -> None:
            nonlocal next_batch
            while next_batch < n and len(waiting) < settings.max_in_flight + 2:
                chunk = batches[next_batch]
                waiting[senders.submit(_send_and_link, connector, settings, spec, chunk, linker)] = \
                    ("write", next_batch, chunk)
                next_batch += 1

        def after_creates() -> None:
            nonlocal second_phase
            second_phase = True
            waiting[senders.submit(linker.drain)] = ("links", None, None)
            if conflicts:
                waiting[senders.submit(adopter.resolve, list(conflicts))] = ("adopt", None, None)

        if not creates_left:
            after_creates()
        fill()
        done_batches = 0
        while waiting:
            finished, _ = wait(list(waiting), return_when=FIRST_COMPLETED)
            for future in finished:
                kind, b, chunk = waiting.pop(future)
                if kind == "links":
                    _commit_links(wh, spec.object_type, future.result(), report)
                    continue
                if kind == "adopt":
                    _commit_adopted(wh, spec.object_type, run_id, future.result(), adopter, report)
                    continue
                results, links = future.result()
                for r, c in zip(results, chunk["crm_id"]):
                    if r.status != REJECTED:
                        continue
                    message = (r.message or "").lower()
                    if "already exists" in message and chunk["operation"].iloc[0] == "create":
                        conflicts.append(r)
                    elif isinstance(c, str) and ("object_not_found" in message or "not found" in message):
                        dead[r.key] = c
                _count(report, results)
                _commit(wh, spec.object_type, run_id, chunk, results, state, _now())
                _commit_links(wh, spec.object_type, links, report)
                report.batches += 1
                done_batches += 1
                if chunk["operation"].iloc[0] == "create":
                    creates_left -= 1
                if done_batches % 50 == 1 or done_batches == n:
                    log(f"{spec.object_type}: batch {done_batches}/{n}: {report.created:,} created, "
                        f"{report.updated:,} updated, {report.rejected:,} rejected, {report.failed:,} failed")
                if after_batch:
                    after_batch(b)
            if not creates_left and not second_phase:
                after_creates()
            fill()
    return dead


def _send_and_link(connector, settings, spec, chunk: pd.DataFrame, linker: _Linker):
    results = _send(connector, settings, spec, chunk)
    # Updates' links were queued before sending (their CRM IDs were known); creates' need the new IDs.
    pairs = linker.wanted(chunk, results) if chunk["operation"].iloc[0] == "create" else []
    return results, linker.add(pairs)


def _known_links(planned: pd.DataFrame, linker: _Linker) -> list[tuple[str, str, str]]:
    """Records the CRM has (updates, unchanged) that are not linked to their company's CRM record yet."""
    if not linker.spec.associate_with or "account_id" not in planned.columns:
        return []
    rows = planned[planned["operation"].isin(["update", "unchanged"]) & planned["crm_id"].notna()]
    targets = rows["account_id"].map(linker.targets)
    keep = targets.notna() & (targets != rows["associated_crm_id"])
    return list(zip(rows["golden_id"][keep], rows["crm_id"][keep], targets[keep]))


def _send(connector: CrmConnector, settings: SyncSettings, spec: ObjectSync, chunk: pd.DataFrame) -> list[RowResult]:
    """One request: a batch is all creates (upsert by golden ID) or all updates (by the CRM's ID, stamping
    our golden ID on objects that came from the CRM, so they are never created a second time)."""
    if (chunk["operation"] == "update").all():
        inputs = [UpsertInput(g, {**send, settings.id_property: g}) for g, send in zip(chunk["golden_id"], chunk["_send"])]
        return connector.update(spec.object_type, inputs, chunk["crm_id"].tolist())
    inputs = [UpsertInput(g, dict(send)) for g, send in zip(chunk["golden_id"], chunk["_send"])]
    return connector.upsert(spec.object_type, settings.id_property, inputs)


class _Adopter:
    """Resolves "Contact already exists. Existing ID: …": the CRM has the person, but the golden layer does
    not know that record (its CRM record was quarantined, or sales created it). The record is read; unless
    it carries another golden record's ID (then a steward decides), it is updated by its ID with our golden
    ID stamped on it, under the field policies, and is ours from then on. Runs on a sender thread: only
    requests here; the main thread commits (:func:`_commit_adopted`)."""

    def __init__(self, connector, settings, spec, planned, props, state, linker: "_Linker"):
        self.connector, self.settings, self.spec, self.props, self.linker = connector, settings, spec, props, linker
        self.by_key = planned.set_index("golden_id")
        self.taken = dict(zip(state["crm_id"], state["golden_id"])) if len(state) else {}
        self.adopted = 0
        self.left = 0

    def resolve(self, refused: list[RowResult]) -> dict:
        targets: dict[str, str] = {}
        lookup = []
        for r in refused:
            found = existing_id(r.message)
            if found:
                targets[r.key] = found
            elif "email" in self.by_key.columns and isinstance(self.by_key.at[r.key, "email"], str):
                lookup.append(r.key)
        if lookup:
            emails = [self.by_key.at[g, "email"] for g in lookup]
            found = self.connector.read_by(self.spec.object_type, emails, [self.settings.id_property], id_property="email")
            targets.update({g: str(found[e]["id"]) for g, e in zip(lookup, emails) if e in found})
        return self.take_over(targets)

    def take_over(self, targets: dict[str, str]) -> dict:
        """golden ID -> CRM ID to make ours: reads them, updates those nobody else holds."""
        out: dict = {"written": [], "left": []}
        if not targets:
            return out
        mirrored = mirror_properties(self.settings, self.spec.object_type)
        owners = self.connector.read_by(self.spec.object_type, list(set(targets.values())), mirrored)
        adopt = []
        for g, crm_id in targets.items():
            holder = ((owners.get(crm_id) or {}).get("properties") or {}).get(self.settings.id_property) \
                or self.taken.get(crm_id)
            if crm_id not in owners:
                out["left"].append((g, f"CRM object {crm_id} could not be read"))
            elif holder and holder != g:
                out["left"].append((g, f"CRM object {crm_id} belongs to golden record {holder}: a steward decides "
                                       "whether they are one"))
            else:
                adopt.append((g, crm_id))
        if adopt:
            rows = self.by_key.loc[[g for g, _ in adopt]].reset_index()
            rows["crm_id"] = [c for _, c in adopt]
            rows["operation"] = "update"
            # The CRM's record was somebody's before it was ours: the field policies apply as to any update.
            remote = [_flags((owners[c].get("properties") or {}), mirrored) for _, c in adopt]
            rows["_send"] = [_shape(self.spec, self.props, v, r, True)
                             for v, r in zip(rows[self.props].to_numpy(dtype=object), remote)]
            for start in range(0, len(rows), self.connector.max_batch):
                chunk = rows.iloc[start:start + self.connector.max_batch]
                out["written"].append((chunk, _send(self.connector, self.settings, self.spec, chunk)))
        return out


def _commit_adopted(wh, object_type: str, run_id: str, outcome: dict, adopter: _Adopter, report: SyncReport) -> None:
    for chunk, results in outcome["written"]:
        fixed = sum(1 for r in results if r.status in OK)
        adopter.adopted += fixed
        report.adopted += fixed
        report.rejected -= fixed
        report.updated += fixed
        _commit(wh, object_type, run_id, chunk.assign(operation="adopt"), results, load_state(wh, object_type), _now())
        adopter.linker.queue(adopter.linker.wanted(chunk, results))
    for g, message in outcome["left"]:
        adopter.left += 1
        _note(wh, object_type, g, message)


def _follow_dead(wh, connector, settings, spec, dead: dict[str, str], adopter: _Adopter, report, run_id) -> None:
    """Updates refused because the CRM ID no longer exists (no pull in between): a merged-away ID answers a
    read with its survivor, which the row is re-pointed to and updated; an ID without an answer was
    deleted by a user (``on_crm_delete`` decides on the next run)."""
    if not dead:
        return
    survivors = connector.read_by(spec.object_type, list(dead.values()), [settings.id_property])
    targets, gone = {}, []
    for g, old in dead.items():
        survivor = survivors.get(old)
        if survivor is None:
            # A CRM that does not list merged IDs on the survivor still answers a read of the old ID with it.
            survivor = connector.get_object(spec.object_type, old)
        if survivor is not None and str(survivor["id"]) != old:
            targets[g] = str(survivor["id"])
        else:
            gone.append(g)
    if gone:
        _mark_gone(wh, spec.object_type, gone)
        report.deleted_in_crm += len(gone)
    _commit_adopted(wh, spec.object_type, run_id, adopter.take_over(targets), adopter, report)


def _flags(props: dict, names: list[str]) -> dict:
    return {n: (props[n] if n in VALUE_FIELDS else True) for n in names if props.get(n) not in (None, "")}


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


def _note(wh, object_type: str, golden_id: str, message: str) -> None:
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
