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

Here: the push itself (batches, senders, links, adoption of existing records); what it would send is
:mod:`.plan`, what it did and remembers is :mod:`.state`.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable

import pandas as pd

from ..platform.schema import CRM_SYNC_LOG, CRM_SYNC_RUNS, CRM_SYNC_STATE
from ..platform.warehouse import LockBusy, Warehouse
from .changes import DELETED, VALUE_FIELDS, load_remote, mirror_properties
from .hubspot import existing_id
from .payloads import property_columns
from .plan import plan, shape_row
from .properties import preflight, value_problem
from .protocol import ARCHIVED, REJECTED, CrmConnector, RowResult, UpsertInput
from .settings import ObjectSync, SyncSettings
from .state import (INVALID, OK, SyncBusy, SyncFailed, SyncReport, account_crm_ids, commit_batch, commit_links,
                    count_results, hold_rows, load_state, mark_gone, note_row, previous_status, record_run,
                    top_messages, utc_now)

Log = Callable[[str], None]


def push(wh: Warehouse, connector: CrmConnector, payload: pd.DataFrame, spec: ObjectSync, settings: SyncSettings,
         run_id: str, dry_run: bool = False, log: Log | None = None, alert: Log | None = None,
         after_batch: Callable[[int], None] | None = None, remote: pd.DataFrame | None = None,
         partial: bool = False) -> SyncReport:
    """Pushes one object type. Raises :class:`~.properties.PortalNotReady` before any write when the portal
    lacks a property, :class:`SyncFailed` (after recording everything) above the failure threshold,
    :class:`SyncBusy` when another run pushes the same type.

    ``partial``: the payload holds only some objects (a consent change pushed at once): objects missing from it are
    not archived, and objects the CRM does not have yet are left to the next full push (no creates)."""
    log = log or (lambda _m: None)
    alert = alert or (lambda _m: None)
    wh.ensure_tables([CRM_SYNC_STATE, CRM_SYNC_LOG, CRM_SYNC_RUNS])
    try:
        with wh.exclusive(f"crm_push_{spec.object_type}"):
            return _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch, remote,
                                partial)
    except LockBusy as exc:
        raise SyncBusy(f"another run is pushing {spec.object_type} to the CRM right now; try again when it is done") from exc


def _push_locked(wh, connector, payload, spec, settings, run_id, dry_run, log, alert, after_batch, remote,
                 partial=False) -> SyncReport:
    started = utc_now()
    report = SyncReport(spec.object_type, f"{spec.mode} (partial)" if partial else spec.mode, dry_run,
                        rows_in=len(payload))
    definitions = connector.properties(spec.object_type)
    props = property_columns(payload)
    preflight(definitions, spec.object_type, settings.id_property, props)
    state = load_state(wh, spec.object_type)
    remote = load_remote(wh, spec.object_type) if remote is None else remote
    planned = plan(payload, state, spec, spec.required, remote, settings.on_crm_delete)
    _refuse_values(planned, definitions, spec.object_type)
    if partial:
        planned.loc[planned["operation"] == "create", "operation"] = "skip"
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
    if spec.mode == "mirror" and len(state) and not partial:
        gone = state[~state["golden_id"].isin(payload["golden_id"]) & state["crm_id"].notna()
                     & ~state["last_status"].isin([ARCHIVED, DELETED])]
    report.to_archive = len(gone)
    log(f"{spec.object_type}: {report.rows_in:,} rows: {report.to_create:,} to create, {report.to_update:,} to update, "
        f"{report.unchanged:,} unchanged, {report.invalid:,} invalid, {report.skipped_not_in_crm:,} skipped, "
        f"{report.deleted_in_crm:,} deleted in the CRM, {report.to_archive:,} to archive"
        f"{' (dry run: nothing is sent)' if dry_run else ''}")
    if dry_run:
        report.status = "dry_run"
        record_run(wh, run_id, report, started)
        return report

    before = connector.stats.as_dict()
    now = utc_now()
    hold_rows(wh, spec.object_type, planned[planned["operation"] == "held"])
    invalid = planned[planned["operation"] == INVALID]
    if len(invalid):
        commit_batch(wh, spec.object_type, run_id, invalid, [RowResult(g, INVALID, message=r) for g, r in
                                                        zip(invalid["golden_id"], invalid["reason"])], state, now)
    # Creates and updates go out in batches of their own: one request per batch, never two half-full ones.
    batches = []
    for op in ("create", "update"):
        part = planned[planned["operation"] == op]
        batches += [part.iloc[i:i + connector.max_batch] for i in range(0, len(part), connector.max_batch)]
    linker = _Linker(connector, spec, account_crm_ids(wh, spec))
    # Links of records whose CRM ID we know need no write result: queued now, sent once the creates are done.
    linker.queue(_known_links(planned, linker))
    adopter = _Adopter(connector, settings, spec, planned, props, state, linker)
    dead = _run_batches(wh, connector, settings, spec, batches, linker, adopter, report, state, run_id, log,
                        after_batch)
    _follow_dead(wh, connector, settings, spec, dead, adopter, report, run_id)
    commit_links(wh, spec.object_type, linker.drain(), report)
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
        commit_batch(wh, spec.object_type, run_id, chunk.assign(payload_hash=None, operation="archive"), results, state,
                utc_now())
    after = connector.stats.as_dict()
    report.requests = after["requests"] - before["requests"]
    report.throttled = after["throttled"] - before["throttled"]
    report.retries = after["retries"] - before["retries"]
    # Over the whole model, not over the rows sent: one stubborn row retried alone on a quiet day is
    # 100 % of that run's rows but no sign of a broken sync; a CRM outage or a bad mapping still is.
    attempted = report.rows_in + report.to_archive
    report.failure_rate = round((report.rejected + report.failed + report.invalid) / attempted, 4) if attempted else 0.0
    report.messages = top_messages(wh, run_id, spec.object_type)
    previous = previous_status(wh, spec.object_type)
    if report.failure_rate > settings.failure_rate_threshold:
        report.status = "failed"
        record_run(wh, run_id, report, started)
        message = (f"CRM push of {spec.object_type} failed: {report.rejected + report.failed + report.invalid:,} of "
                   f"{attempted:,} rows rejected, failed or invalid ({report.failure_rate:.1%} > threshold "
                   f"{settings.failure_rate_threshold:.1%}); they are retried on the next run. See ops.crm_sync_log, "
                   f"run {run_id}.")
        alert(message)
        raise SyncFailed(message, report)
    record_run(wh, run_id, report, started)
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
                    commit_links(wh, spec.object_type, future.result(), report)
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
                count_results(report, results)
                commit_batch(wh, spec.object_type, run_id, chunk, results, state, utc_now())
                commit_links(wh, spec.object_type, links, report)
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
            rows["_send"] = [shape_row(self.spec, self.props, v, r, True)
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
        commit_batch(wh, object_type, run_id, chunk.assign(operation="adopt"), results, load_state(wh, object_type), utc_now())
        adopter.linker.queue(adopter.linker.wanted(chunk, results))
    for g, message in outcome["left"]:
        adopter.left += 1
        note_row(wh, object_type, g, message)


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
        mark_gone(wh, spec.object_type, gone)
        report.deleted_in_crm += len(gone)
    _commit_adopted(wh, spec.object_type, run_id, adopter.take_over(targets), adopter, report)


def _flags(props: dict, names: list[str]) -> dict:
    return {n: (props[n] if n in VALUE_FIELDS else True) for n in names if props.get(n) not in (None, "")}

