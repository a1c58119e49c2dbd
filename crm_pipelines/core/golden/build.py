"""Golden accounts and contacts built: records resolved, fields survived, IDs kept stable, the result
persisted with its lineage, match edges and the match-rate reference.

Plain Python over the warehouse (no Dagster): the assets in ``defs/golden.py`` call these functions,
and tests call them directly. The matching holds its columns of every record; what follows it (survivorship,
lineage, crosswalk, match edges) works a part of whole clusters at a time (:mod:`.parts`). Order of a run: person records, account records (ERP, CRM and the company
mentions of persons; :mod:`.staging`), register enrichment (:mod:`.enrichment`), accounts resolved,
contacts resolved, then linked to their account (:mod:`.crosswalk`), review queue (:mod:`.review`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.frames import drop_category_engines, return_free_memory
from ..platform.schema import (ACCOUNT_CROSSWALK, ACCOUNT_LINEAGE, ACCOUNT_RECORDS, CONTACT_LINEAGE, GOLDEN_ACCOUNTS,
                               GOLDEN_CONTACTS, GOLDEN_TABLES, MATCH_EDGES, MATCH_RUNS, PERSON_CROSSWALK,
                               PERSON_RECORDS, REVIEW_CANDIDATES)
from ..platform.warehouse import KeyRange, Warehouse
from ..privacy import consent
from ..privacy.ledger import load_consent_events
from .crosswalk import PREFIX, account_links, current_map, link_contacts_to_accounts, next_seq, register_ids
from .matching.ids import IdAssignment, assign_id_seqs, format_ids, id_seqs
from .matching.engine import arrow_near_unique, concat_compact, in_arrow
from .matching.resolve import Resolution, pair_positions, resolve
from .matching.settings import EntityMatchSpec, MatchingConfig
from .records import SIGNATURE_COLUMNS, account_signatures
from .review import decision_links, decisions
from .parts import PART_RECORDS, ClusterParts
from .staging import (ACCOUNT_FIELDS, CONTACT_FIELDS, SLICE_RECORDS, Log, apply_register, load_account_records,
                      load_person_records, now, register_found)
from .survivorship import survive


@dataclass
class GoldenResult:
    entity: str
    resolution: Resolution | None  # None once handed on (:meth:`without_resolution`)
    n_golden: int
    examples: pd.DataFrame  # golden_id, record_count of a few golden records made of several records
    events: list[dict]  # merged and split IDs (the created ones are counted in id_events)
    stats: dict = field(default_factory=dict)
    id_events: dict[str, int] = field(default_factory=dict)  # created / merged / split -> how many
    weights: list[dict] = field(default_factory=list)  # the fitted model per comparison level (FSModel.describe)

    def without_resolution(self) -> "GoldenResult":
        """What the step reports, without the resolution's arrays: handed from golden/contacts' write to its
        account link through Dagster's IO manager."""
        return GoldenResult(self.entity, None, self.n_golden, self.examples, self.events, self.stats, self.id_events,
                            self.weights)


# Golden records of several records a result names (for the explanations in the step's metadata).
_EXAMPLES = 20


def _evidence(res: Resolution, spec: EntityMatchSpec, idx: np.ndarray) -> list[str]:
    weights = res.model.weights()
    names = [c.name for c in spec.comparisons]
    level_names = [c.level_names() for c in spec.comparisons]
    out = []
    for i in idx:
        ev = {}
        for c, name in enumerate(names):
            lv = int(res.levels[name][i])
            if lv >= 0:
                ev[name] = [level_names[c][lv], round(float(weights[c][lv]), 2)]
        out.append(json.dumps(ev, ensure_ascii=False))
    return out


def _pair_index(res: Resolution, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Position of each (a, b) in the resolution's candidate pairs, -1 where the pair was not compared."""
    return pair_positions(res.pairs, res.n_records, a, b)


def _evidence_only(res: Resolution) -> Resolution:
    """The resolution with only the candidate pairs the golden step writes the evidence of (merge edges, review
    pairs): the levels and scores of every pair (tens of millions at 10 million contacts) would stay in memory
    through the write."""
    merges, review = res.clusters.merge_edges, res.review
    idx = _pair_index(res, np.concatenate([merges.a, review["a"].to_numpy(np.int64)]),
                      np.concatenate([merges.b, review["b"].to_numpy(np.int64)]))
    return res.only_pairs(np.unique(idx[idx >= 0]))


def _reference_run(wh: Warehouse, entity: str) -> tuple[float, int] | None:
    """Match rate and record count of the last accepted run with records: a jump stays flagged until fixed or
    accepted. A run over nothing (an empty first night) has a rate of 0 that says nothing: never the reference."""
    wh.ensure_tables([MATCH_RUNS])
    row = wh.read_frame(sa.select(MATCH_RUNS.c.match_rate, MATCH_RUNS.c.records)
                        .where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.accepted, MATCH_RUNS.c.records > 0)
                        .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    return (float(row["match_rate"].iloc[0]), int(row["records"].iloc[0])) if len(row) else None


def accept_match_rate(wh: Warehouse, entity: str) -> float | None:
    """Accepts the latest run's match rate as the new reference (the change was legitimate); runs over no
    records are not candidates."""
    wh.ensure_tables([MATCH_RUNS])
    latest = wh.read_frame(sa.select(MATCH_RUNS.c.run_id, MATCH_RUNS.c.match_rate).where(MATCH_RUNS.c.entity == entity,
                                                                                          MATCH_RUNS.c.records > 0)
                           .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    if latest.empty:
        return None
    with wh.engine.begin() as conn:
        conn.execute(sa.update(MATCH_RUNS).where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.run_id == latest["run_id"].iloc[0])
                     .values(accepted=True))
    return float(latest["match_rate"].iloc[0])


def _lineage_rows(lineage: pd.DataFrame, ids: pd.Series, fields: list[str]) -> pd.DataFrame:
    """One row per (golden ID, contributing record) with the fields it supplied and their rules.

    The fields of a pair are a bit mask OR-ed over integer codes of (cluster, record): at 10 million
    contacts the lineage has tens of millions of rows, and grouping them by two string columns held
    more memory than the golden records themselves. The few distinct masks are spelled out once each."""
    if lineage.empty:
        return pd.DataFrame(columns=["golden_id", "record_key", "fields", "rules"])
    bit = {f: 1 << i for i, f in enumerate(fields)}
    firsts = lineage.drop_duplicates("field")
    rule_of = dict(zip(firsts["field"], firsts["rule"]))
    cluster = lineage["cluster"].to_numpy(np.int64)
    record, keys = pd.factorize(lineage["record_key"].to_numpy(dtype=object))
    pair = cluster * max(len(keys), 1) + record
    order = np.argsort(pair, kind="stable")
    sorted_pair = pair[order]
    starts = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1]])
    masks = np.bitwise_or.reduceat(lineage["field"].map(bit).to_numpy(np.int64)[order], starts)
    first = order[starts]
    del pair, order, sorted_pair
    # In cluster order (a table has no order of its own; sorting by the two strings cost as much again).
    grouped = pd.DataFrame({"golden_id": ids.reindex(cluster[first]).to_numpy(),
                            "record_key": np.asarray(keys, dtype=object)[record[first]], "mask": masks})
    names = {m: [f for f in fields if m & bit[f]] for m in pd.unique(grouped["mask"])}
    grouped["fields"] = grouped["mask"].map({m: ",".join(v) for m, v in names.items()})
    grouped["rules"] = grouped["mask"].map({m: ",".join(rule_of.get(f, "") for f in v) for m, v in names.items()})
    return grouped.drop(columns="mask")


_EDGE_ROWS = 200_000


@dataclass
class _Step:
    """What differs between the two golden steps once their records are resolved."""

    entity: str  # persons / accounts
    records: sa.Table
    golden: sa.Table
    lineage: sa.Table
    crosswalk: sa.Table
    fields: list[str]  # survived
    lineage_fields: list[str]  # as the golden table names them
    read: Callable[[KeyRange], pd.DataFrame]  # a slice of records: golden fields and bookkeeping, in key order
    # golden records of a part, its records, each record's cluster in the part, the part's clusters (labels)
    finish: Callable[[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray], pd.DataFrame]


@dataclass
class _Written:
    ids: IdAssignment
    n_records: int
    n_golden: int
    examples: pd.DataFrame
    crosswalk_changes: int


class _MergeEdges:
    """The pairs that joined records (the clustering's merge edges) as arrays, grouped by the part their cluster
    is in: each part writes its own, with their evidence, for explanations."""

    def __init__(self, res: Resolution, as_record: Callable, labels: np.ndarray, part_of_cluster: np.ndarray):
        merges = res.clusters.merge_edges
        self.pair = _pair_index(res, merges.a, merges.b)  # where the evidence is, -1 where the pair was not compared
        self.a, self.b = as_record(merges.a), as_record(merges.b)  # as records
        self.probability = merges.probability
        self.reason = merges.reason
        part = part_of_cluster[labels[self.a]] if len(merges) else np.empty(0, np.int64)
        self._order = np.argsort(part, kind="stable")
        self._bounds = np.searchsorted(part[self._order], np.arange(int(part.max()) + 2 if len(part) else 1))

    def frames(self, p: int, records: pd.DataFrame, golden_ids: Callable, res: Resolution, spec: EntityMatchSpec,
               entity: str, run_id: str) -> Iterator[pd.DataFrame]:
        """Part ``p``'s edges, ``_EDGE_ROWS`` at a time, keyed by the part's records."""
        mine = self._order[self._bounds[p]:self._bounds[p + 1]] if p + 1 < len(self._bounds) else self._order[:0]
        positions, keys = records["_pos"].to_numpy(), records["record_key"].to_numpy()
        for start in range(0, len(mine), _EDGE_ROWS):
            rows = mine[start:start + _EDGE_ROWS]
            idx = self.pair[rows]
            evidence = _evidence(res, spec, np.where(idx >= 0, idx, 0))
            yield pd.DataFrame({
                "entity": entity, "golden_id": golden_ids(self.a[rows]),
                "record_a": keys[np.searchsorted(positions, self.a[rows])],
                "record_b": keys[np.searchsorted(positions, self.b[rows])],
                "probability": self.probability[rows], "reason": self.reason[rows],
                "evidence": [e if i >= 0 else "{}" for e, i in zip(evidence, idx)], "run_id": run_id})


def _write_golden(wh: Warehouse, step: _Step, cfg: MatchingConfig, res: Resolution, labels: np.ndarray,
                  record_of: np.ndarray | None, first: _FirstRead, run_id: str, at: datetime,
                  log: Log | None, on_slice: Callable[[pd.DataFrame, int], None] | None = None) -> _Written:
    """The golden records, their lineage, crosswalk and match edges of resolved records, a part of whole
    clusters at a time (:mod:`.parts`): the records are read by the first read's key ranges, checked against it
    by their keys' digest, and spilled by cluster; their previous golden IDs come with each slice. IDs are then
    assigned over all records (integers), and each part is survived and written, all parts in one transaction.

    ``labels``: cluster per record (read order); ``record_of``: per position of the resolution (a signature)
    the record it stands for, None when the resolution's positions are the records'."""
    spec = getattr(cfg, step.entity)
    review = res.review
    review_a, review_b = review["a"].to_numpy(np.int64), review["b"].to_numpy(np.int64)
    as_record = (lambda x: x) if record_of is None else record_of.__getitem__
    # Review pairs may join records of two parts: their keys are picked up while the records stream past.
    wanted = np.unique(np.concatenate([as_record(review_a), as_record(review_b)]))
    wanted_keys = np.empty(len(wanted), dtype=object)  # the record key of each wanted position
    old = np.full(len(labels), -1, dtype=np.int64)
    offset = 0
    with ClusterParts(labels, PART_RECORDS) as parts:
        for i, key_range in enumerate(first.ranges, 1):
            records = step.read(key_range)
            n = len(records)
            first.check(records["record_key"], offset)
            old[offset:offset + n] = id_seqs(records["record_key"].map(current_map(wh, step.crosswalk, key_range=key_range))
                                             .to_numpy(dtype=object))
            lo, hi = np.searchsorted(wanted, offset), np.searchsorted(wanted, offset + n)
            wanted_keys[lo:hi] = records["record_key"].to_numpy()[wanted[lo:hi] - offset]
            if on_slice is not None:
                on_slice(records, offset)
            parts.add(records)
            offset += n
            if log and len(first.ranges) > 1:
                log(f"golden {step.entity}: {offset:,} of {len(labels):,} records read and spilled "
                    f"({i}/{len(first.ranges)} slices)")
        if offset != first.records:
            first.changed(offset)
        ids = assign_id_seqs(old, labels, PREFIX[step.entity], next_seq(wh, step.entity))
        register_ids(wh, step.entity, ids, run_id, at)
        edges = _MergeEdges(res, as_record, labels, parts.part_of_cluster)
        survivorship = cfg.survivorship[step.entity]
        n_golden, changes, examples = 0, 0, []
        wh.ensure_tables([step.golden, step.lineage, step.crosswalk, MATCH_EDGES, REVIEW_CANDIDATES])
        with wh.engine.begin() as conn:
            conn.execute(sa.delete(step.golden))
            conn.execute(sa.delete(step.lineage))
            wh.delete_where(conn, MATCH_EDGES, entity=step.entity)
            for p, (records, clusters, local) in enumerate(parts.parts()):
                golden, lineage = survive(records, local, step.fields, survivorship)
                gid = ids.ids_of(clusters)
                golden = step.finish(golden.assign(golden_id=gid), records, local, clusters)
                golden["run_id"] = run_id
                wh.bulk_insert(conn, step.golden, golden)
                if len(lineage):
                    lineage["field"] = lineage["field"].map(dict(zip(step.fields, step.lineage_fields)))
                    wh.bulk_insert(conn, step.lineage, _lineage_rows(lineage, pd.Series(gid), step.lineage_fields))
                several = golden["record_count"].to_numpy() > 1
                if len(examples) < _EXAMPLES and several.any():
                    examples.append(golden.loc[several, ["golden_id", "record_count"]].head(_EXAMPLES))
                n_golden += len(golden)
                del golden, lineage
                changes += _crosswalk_part(wh, conn, step.crosswalk, records, old[records["_pos"].to_numpy()],
                                           ids.seqs[records["_label"].to_numpy()], gid[local], run_id, at)
                for frame in edges.frames(p, records, lambda a: ids.ids_of(labels[a]), res, spec, step.entity, run_id):
                    wh.bulk_insert(conn, MATCH_EDGES, frame)
                if log and parts.n_parts > 1:
                    log(f"golden {step.entity}: part {p + 1}/{parts.n_parts} written ({n_golden:,} golden records)")
            if step.golden is GOLDEN_CONTACTS:
                _one_contact_per_email(conn)
            changes += _close_gone(wh, conn, step.crosswalk, step.records, at)
    _write_review_candidates(wh, step.entity, res, spec, review, as_record, wanted, wanted_keys, run_id)
    examples_frame = pd.concat(examples, ignore_index=True).head(_EXAMPLES) if examples else \
        pd.DataFrame(columns=["golden_id", "record_count"])
    return _Written(ids, offset, n_golden, examples_frame, changes)


def _write_review_candidates(wh: Warehouse, entity: str, res: Resolution, spec: EntityMatchSpec,
                             review: pd.DataFrame, as_record: Callable, wanted: np.ndarray, wanted_keys: np.ndarray,
                             run_id: str) -> None:
    """The entity's review candidates replaced, ``_EDGE_ROWS`` at a time with their evidence (at 10 million
    contacts there were six million account pairs in the review band: as one frame with their evidence, gigabytes)."""
    wh.ensure_tables([REVIEW_CANDIDATES])
    with wh.engine.begin() as conn:
        wh.delete_where(conn, REVIEW_CANDIDATES, entity=entity)
        for start in range(0, len(review), _EDGE_ROWS):
            part = review.iloc[start:start + _EDGE_ROWS]
            a, b = part["a"].to_numpy(np.int64), part["b"].to_numpy(np.int64)
            idx = _pair_index(res, a, b)
            wh.bulk_insert(conn, REVIEW_CANDIDATES, pd.DataFrame({
                "entity": entity, "record_a": wanted_keys[np.searchsorted(wanted, as_record(a))],
                "record_b": wanted_keys[np.searchsorted(wanted, as_record(b))],
                "probability": part["probability"].to_numpy(), "reason": part["reason"].to_numpy(),
                "evidence": _evidence(res, spec, np.where(idx >= 0, idx, 0)), "run_id": run_id}))


def _crosswalk_part(wh: Warehouse, conn, table: sa.Table, records: pd.DataFrame, old: np.ndarray, new: np.ndarray,
                    golden_ids: np.ndarray, run_id: str, at: datetime) -> int:
    """SCD2 for a part's records: rows whose golden ID changed are closed, changed and new records get a row."""
    changed = (old >= 0) & (old != new)
    fresh = old < 0
    close = records["record_key"].to_numpy()[changed].tolist()
    for i in range(0, len(close), 500):
        conn.execute(sa.update(table).where(table.c.valid_to.is_(None), table.c.record_key.in_(close[i:i + 500]))
                     .values(valid_to=at))
    rows = changed | fresh
    wh.bulk_insert(conn, table, pd.DataFrame({
        "record_key": records["record_key"].to_numpy()[rows], "source": records["source"].to_numpy()[rows],
        "source_record_id": records["source_record_id"].to_numpy()[rows], "golden_id": golden_ids[rows],
        "valid_from": pd.Timestamp(at), "valid_to": pd.NaT, "run_id": run_id}))
    return len(close) + int(fresh.sum())


def _close_gone(wh: Warehouse, conn, table: sa.Table, records: sa.Table, at: datetime) -> int:
    """Closes the current crosswalk rows of records that are no longer there."""
    return conn.execute(sa.update(table).where(
        table.c.valid_to.is_(None), ~sa.exists().where(records.c.record_key == table.c.record_key))
        .values(valid_to=at)).rowcount or 0


def _record_match_run(wh: Warehouse, entity: str, res: Resolution, n_records: int, n_clusters: int, match_rate: float,
                      run_id: str, at: datetime, started: float, max_change: float, max_growth: float) -> dict:
    reference = _reference_run(wh, entity)
    # The first nights (or a new source) grow the record base by half or more at a time, and the share of
    # merged records rises with it: that is growth, not a broken mapping. Past max_growth the new rate
    # becomes the reference; the jump check compares runs over a comparable base.
    grew = reference is not None and n_records > reference[1] * (1 + max_growth)
    previous = None if reference is None or grew else reference[0]
    accepted = n_records > 0 and (previous is None or abs(match_rate - previous) <= max_change)
    seconds = time.monotonic() - started
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, MATCH_RUNS, pd.DataFrame([{
            "run_id": run_id, "entity": entity, "run_at": pd.Timestamp(at), "records": n_records,
            "clusters": n_clusters, "match_rate": match_rate, "candidate_pairs": res.stats["candidate_pairs"],
            "possible_pairs": res.stats["possible_pairs"], "review_pairs": len(res.review), "seconds": seconds,
            "accepted": accepted}]))
    return {"previous_match_rate": previous, "seconds": round(seconds, 2),
            "reference_records": reference[1] if reference else 0, "record_base_grew": grew}


def resolve_accounts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.accounts
    # The matching reads the signature columns of every record, a slice at a time, into distinct signatures in
    # Arrow columns; the golden fields are read afterwards, a slice at a time (_write_golden).
    register = register_found(wh)
    dec = decisions(wh, "accounts")
    sig, codes, first, with_register_id = _load_account_signatures(wh, register, dec, log)
    # Decisions name records; the resolution runs over signatures: a record's position is its signature's.
    must, cannot, unknown = decision_links(dec, lambda k: np.where((i := first.position(k)) >= 0, codes[i], -1))
    res = _evidence_only(resolve(sig, spec, must_link=must, cannot_link=cannot, log=log, release_columns=True))
    n_signatures = len(sig)
    del sig
    # A signature stands for the first record that has it (account_signatures).
    first_record = np.full(n_signatures, len(codes), dtype=np.int64)
    np.minimum.at(first_record, codes, np.arange(len(codes), dtype=np.int64))
    labels = res.labels[codes] if len(codes) else np.empty(0, np.int64)

    def read(key_range: KeyRange) -> pd.DataFrame:
        records = apply_register(load_account_records(wh, _ACCOUNT_GOLDEN_COLUMNS, key_range), wh, register)
        return records.drop(columns=[c for c in ("company_key", "city_key", "register_id") if c in records.columns])

    def finish(golden: pd.DataFrame, records: pd.DataFrame, local: np.ndarray, clusters: np.ndarray) -> pd.DataFrame:
        n = len(clusters)
        golden["record_count"] = np.bincount(local, minlength=n)
        golden["sources"] = _sources_per_cluster(records["source"].to_numpy(), local, n)
        return golden.rename(columns={"company_base": "base_name"})

    step = _Step("accounts", ACCOUNT_RECORDS, GOLDEN_ACCOUNTS, ACCOUNT_LINEAGE, ACCOUNT_CROSSWALK, ACCOUNT_FIELDS,
                 ACCOUNT_FIELDS, read, finish)
    written = _write_golden(wh, step, cfg, res, labels, first_record, first, run_id, at, log)
    rate = 1 - written.n_golden / written.n_records if written.n_records else 0.0
    extra = _record_match_run(wh, "accounts", res, written.n_records, written.n_golden, rate, run_id, at, started,
                              cfg.max_match_rate_change, cfg.max_record_growth)
    stats = {**res.stats, **extra, "crosswalk_changes": written.crosswalk_changes, "records": written.n_records,
             "signatures": n_signatures, "golden": written.n_golden, "decisions_applied": len(must) + len(cannot),
             "decisions_unknown_records": unknown, "register_ids": with_register_id, "match_rate": rate}
    return GoldenResult("accounts", res, written.n_golden, written.examples, written.ids.events, stats,
                        written.ids.event_counts(), res.model.describe(spec.comparisons))


# What the golden steps need of a record besides the golden fields, once the matching is done.
_BOOKKEEPING = {"record_key", "source", "source_record_id", "record_ts"}


# resolve_accounts: what the signatures and the register lookup read; then the golden fields, with the
# (name, city) keys the register cache is looked up by.
_ACCOUNT_MATCHING_COLUMNS = set(SIGNATURE_COLUMNS) | {"record_key", "source", "register_court", "register_number"}


_ACCOUNT_GOLDEN_COLUMNS = set(ACCOUNT_FIELDS) | _BOOKKEEPING | {"company_key", "city_key"}


class _FirstRead:
    """The matching's read of a records table, a key range at a time (:meth:`Warehouse.key_ranges`): the ranges
    (the golden fields are read by the same ones), a digest of the record keys and the positions of the records
    steward decisions name, taken slice by slice so that the keys are never held whole."""

    def __init__(self, wh: Warehouse, table: sa.Table, dec: pd.DataFrame, log: Log | None, what: str):
        # The table's name, not the table: the first read is handed from the matching step to the write step
        # (ContactMatches), so it holds nothing that does not pickle.
        self.table_name, self.where, self.log, self.what = table.name, f"{table.schema}.{table.name}", log, what
        self.ranges = wh.key_ranges(wh.qualified(table), "record_key", SLICE_RECORDS)
        self._named = list(set(dec.get("record_a", [])) | set(dec.get("record_b", [])))
        self._digests: list[np.ndarray] = []
        self._found: dict[str, int] = {}
        self.records = 0
        self.near_unique: list[str] | None = None  # decided on the first slice, the same for all

    def take(self, keys: np.ndarray, i: int) -> None:
        """The record keys of slice ``i`` (counted from 1), in read order."""
        self._digests.append(_key_digest(keys))
        if self._named:
            at = pd.Index(keys).get_indexer(self._named)
            self._found.update((k, self.records + int(p)) for k, p in zip(self._named, at) if p >= 0)
        self.records += len(keys)
        if self.log and len(self.ranges) > 1:
            self.log(f"{self.table_name}: {self.what} of {self.records:,} records read ({i}/{len(self.ranges)} slices)")

    def in_arrow(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.near_unique is None:
            self.near_unique = arrow_near_unique(frame)
        return in_arrow(frame, self.near_unique)

    def position(self, keys: list) -> np.ndarray:
        """The read position of each record key (-1 for a record that is not there)."""
        return np.array([self._found.get(k, -1) for k in keys], dtype=np.int64)

    def check(self, keys, start: int) -> None:
        """``keys`` of the second read, from position ``start``, against the first read."""
        digest = self._joined_digests()[start:start + len(keys)]
        if len(digest) != len(keys) or not np.array_equal(digest, _key_digest(keys)):
            self.changed(start + len(keys))

    def changed(self, second: int) -> None:
        raise RuntimeError(f"{self.where} changed while the golden step was reading it "
                           f"({self.records:,} records at the first read, {second:,} or more at the second): "
                           "another run rebuilt the records; materialise the golden step again (for contacts: "
                           "golden/contact_matches and golden/contacts together)")

    def done(self) -> None:
        """The matching has read and resolved: what is left is the ranges and the keys' digest (what the write
        checks against), without the log and the positions of named records."""
        self.log = None
        self._found = {}
        self._named = []
        self._joined_digests()

    def _joined_digests(self) -> np.ndarray:
        """The slices' digests as one array (joined once)."""
        if len(self._digests) != 1:
            self._digests = [np.concatenate(self._digests) if self._digests else np.empty(0, np.uint64)]
        return self._digests[0]


def _load_matching(wh: Warehouse, table: sa.Table, load: Callable, columns: set[str], dec: pd.DataFrame,
                   log: Log | None) -> tuple[pd.DataFrame, _FirstRead]:
    """The matching columns of every record in key order, read a slice at a time and held in Arrow
    (:meth:`_FirstRead.in_arrow`): near-unique text as Arrow strings, the rest categoricals of Arrow strings, so
    that no Python string outlives the read (a few surviving ones per block of the read's memory kept all of it)."""
    first = _FirstRead(wh, table, dec, log, "matching columns")
    frames = []
    for i, key_range in enumerate(first.ranges, 1):
        part = load(wh, columns | {"record_key"}, key_range)
        first.take(part["record_key"].to_numpy(dtype=object), i)
        frames.append(first.in_arrow(part.drop(columns="record_key")))
    matching = concat_compact(frames) if len(frames) != 1 else frames[0]
    del frames
    drop_category_engines(matching)
    return_free_memory(len(matching))
    return matching, first


def _load_account_signatures(wh: Warehouse, register: pd.DataFrame, dec: pd.DataFrame,
                             log: Log | None) -> tuple[pd.DataFrame, np.ndarray, _FirstRead, int]:
    """The account records' signatures (:func:`account_signatures`) read a slice at a time: each slice's distinct
    signatures in Arrow (as :func:`_load_matching`), then the slices' signatures made distinct over all of them by
    integer codes of their columns (in order of first appearance, as over the whole table at once). Returns the
    signatures, each record's signature, the first read and the number of records with a register ID."""
    first = _FirstRead(wh, ACCOUNT_RECORDS, dec, log, "signatures")
    frames, slice_codes = [], []
    with_register_id = 0
    for i, key_range in enumerate(first.ranges, 1):
        accounts = apply_register(load_account_records(wh, _ACCOUNT_MATCHING_COLUMNS, key_range), wh, register)
        first.take(accounts["record_key"].to_numpy(dtype=object), i)
        with_register_id += int(accounts["register_id"].notna().sum())
        sig, codes = account_signatures(accounts)
        del accounts
        frames.append(first.in_arrow(sig[SIGNATURE_COLUMNS + ["source"]]))
        slice_codes.append(codes)
    if not frames:
        return pd.DataFrame(columns=SIGNATURE_COLUMNS + ["source", "records"]), np.empty(0, np.int64), first, 0
    starts = np.cumsum([0] + [len(f) for f in frames[:-1]])
    every = concat_compact(frames) if len(frames) > 1 else frames[0]
    del frames
    # The same signature in two slices: one code over all of them (missing is a value of its own, as in
    # account_signatures).
    combined = np.zeros(len(every), dtype=np.int64)
    for col in SIGNATURE_COLUMNS:
        col_codes, uniques = pd.factorize(every[col])
        combined = pd.factorize(combined * (len(uniques) + 1) + (col_codes + 1))[0].astype(np.int64)
    first_rows = np.flatnonzero(~pd.Series(combined).duplicated().to_numpy())
    codes = np.concatenate([combined[start + c] for start, c in zip(starts, slice_codes)])
    sig = every.iloc[first_rows].reset_index(drop=True)
    del every
    sig["records"] = np.bincount(codes, minlength=len(sig))
    drop_category_engines(sig)
    return_free_memory(len(codes))
    return sig, codes, first, with_register_id


def _key_digest(keys) -> np.ndarray:
    """A 64-bit hash per record key: enough to tell that a second read returned the same records in
    the same order, at an eighth of the keys' memory."""
    return pd.util.hash_array(np.asarray(keys, dtype=object))


def _spec_columns(spec: EntityMatchSpec) -> set[str]:
    """Every column the blocking rules, comparisons and links of a spec read."""
    cols = {alt for rule in spec.blocking for col in rule for alt in col.split("|")}
    cols |= {c for comp in spec.comparisons for c in comp.columns}
    return cols | set(spec.must_link) | set(spec.name_swap or ())


@dataclass
class ContactMatches:
    """The person records resolved (:func:`match_contacts`), what :func:`write_contacts` writes. Apart because the
    matching needs only the person records: in the nightly job it and the write run beside the account records and
    golden accounts; the link to the golden accounts (:func:`~.crosswalk.link_contacts_to_accounts`) follows both.
    Pickles, so that Dagster's IO manager hands it from one step to the next."""

    resolution: Resolution
    first: _FirstRead  # the matching's read: the write reads by the same key ranges and checks the same keys
    settings: str  # sha256 of the matching settings it was resolved with
    decisions_applied: int
    decisions_unknown_records: int
    seconds: float


def match_contacts(wh: Warehouse, cfg: MatchingConfig, log: Log | None = None) -> ContactMatches:
    """Person records resolved into people: their matching columns read a slice at a time (near-unique ones as
    Arrow strings), blocked, compared, scored and clustered, steward decisions honoured. Writes nothing."""
    started = time.monotonic()
    spec = cfg.persons
    dec = decisions(wh, "persons")
    matching, first = _load_matching(wh, PERSON_RECORDS, load_person_records,
                                     _spec_columns(spec) | {"mailbox_is_name"}, dec, log)
    must, cannot, unknown = decision_links(dec, first.position)
    res = _evidence_only(resolve(matching, spec, must_link=must, cannot_link=cannot, log=log,
                                 release_columns=True))
    del matching
    first.done()
    return ContactMatches(res, first, cfg.sha256, len(must) + len(cannot), unknown, time.monotonic() - started)


def resolve_contacts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    """:func:`match_contacts`, :func:`write_contacts`, then the link to the golden accounts (one process; the Dagster
    assets run them as three steps). The link's counts are added to the result's stats."""
    result = write_contacts(wh, cfg, match_contacts(wh, cfg, log), run_id, log)
    result.stats.update(link_contacts_to_accounts(wh))
    return result


def write_contacts(wh: Warehouse, cfg: MatchingConfig, matches: ContactMatches, run_id: str,
                   log: Log | None = None) -> GoldenResult:
    """The golden contacts of resolved person records, each given its consent per channel (read now: the consent
    ledger may be newer than the matching), written with lineage, crosswalk, match edges and review candidates
    (:func:`_write_golden`). Each keeps the golden account its golden ID was linked to (None for a new one) until
    :func:`~.crosswalk.link_contacts_to_accounts` links it anew: the golden accounts may still be being built, and
    readers between the two steps see last night's links, not none."""
    if matches.settings != cfg.sha256:
        raise RuntimeError("the person records were resolved with other matching settings than matching.yaml's "
                           f"(sha256 {matches.settings[:12]} against {cfg.sha256[:12]}): materialise "
                           "golden/contact_matches and golden/contacts together")
    # The run's seconds (match_runs) are the matching's and the write's, not the wait between them.
    started = time.monotonic() - matches.seconds
    at = now()
    res, first = matches.resolution, matches.first
    labels = res.labels
    consent_events = load_consent_events(wh, for_verdicts=True)
    event_keys = consent_events["person_record_key"].to_numpy(dtype=object)
    event_label = np.full(len(consent_events), -1, dtype=np.int64)  # the cluster of each consent event's record

    linked_contacts, linked_accounts = account_links(wh)

    def read(key_range: KeyRange) -> pd.DataFrame:
        return load_person_records(wh, set(CONTACT_FIELDS) | _BOOKKEEPING, key_range)

    def on_slice(persons: pd.DataFrame, offset: int) -> None:
        at_record = pd.Index(persons["record_key"].to_numpy(), dtype=object).get_indexer(event_keys)
        hit = at_record >= 0
        event_label[hit] = labels[offset + at_record[hit]]

    def finish(golden: pd.DataFrame, persons: pd.DataFrame, local: np.ndarray, clusters: np.ndarray) -> pd.DataFrame:
        n = len(clusters)
        golden = golden.rename(columns={"email_norm": "email"})
        golden["record_count"] = np.bincount(local, minlength=n)
        golden["sources"] = _sources_per_cluster(persons["source"].to_numpy(), local, n)
        seen = pd.DataFrame({"l": local, "ts": persons["record_ts"].to_numpy()}).groupby("l")["ts"]
        golden["first_seen_at"] = seen.min().reindex(range(n)).to_numpy()
        golden["last_seen_at"] = seen.max().reindex(range(n)).to_numpy()
        golden["account_id"] = _linked_account(golden["golden_id"], linked_contacts, linked_accounts)
        mine = np.isin(event_label, clusters)
        verdicts = consent.current(consent_events[mine].reset_index(drop=True),
                                   np.searchsorted(clusters, event_label[mine]), n)
        for column in verdicts.columns:  # column by column: a concat copied every golden column once more
            golden[column] = verdicts[column].to_numpy()
        return golden

    step = _Step("persons", PERSON_RECORDS, GOLDEN_CONTACTS, CONTACT_LINEAGE, PERSON_CROSSWALK, CONTACT_FIELDS,
                 [*CONTACT_FIELDS[:4], "email", *CONTACT_FIELDS[5:]], read, finish)
    written = _write_golden(wh, step, cfg, res, labels, None, first, run_id, at, log, on_slice)
    extra = _record_match_run(wh, "persons", res, written.n_records, written.n_golden, res.match_rate, run_id, at,
                              started, cfg.max_match_rate_change, cfg.max_record_growth)
    stats = {**res.stats, **extra, "crosswalk_changes": written.crosswalk_changes, "golden": written.n_golden,
             "match_rate": res.match_rate, "decisions_applied": matches.decisions_applied,
             "decisions_unknown_records": matches.decisions_unknown_records}
    return GoldenResult("persons", res, written.n_golden, written.examples, written.ids.events, stats,
                        written.ids.event_counts(), res.model.describe(cfg.persons.comparisons))


def _linked_account(golden_ids: pd.Series, contacts: np.ndarray, accounts: np.ndarray) -> np.ndarray:
    """The golden account each golden ID is linked to (:func:`~.crosswalk.account_links`), None where none."""
    seqs = id_seqs(golden_ids.to_numpy(dtype=object))
    at = np.minimum(np.searchsorted(contacts, seqs), max(len(contacts) - 1, 0))
    hit = (seqs >= 0) & (contacts[at] == seqs) if len(contacts) else np.zeros(len(seqs), dtype=bool)
    out = np.full(len(seqs), None, dtype=object)
    out[hit] = format_ids(PREFIX["accounts"], accounts[at[hit]])
    return out


def _sources_per_cluster(source: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per cluster its records' distinct sources, sorted and joined by commas (None for a cluster
    without records). A set of sources is a bit mask (there are a handful of sources), so the
    strings are made once per distinct set, not once per golden record as a groupby lambda did."""
    codes, names = pd.factorize(source, sort=True)
    if len(names) > 62 or (codes < 0).any():  # more sources than bits, or a record without one
        joined = pd.Series(source).groupby(labels).agg(lambda s: ",".join(sorted(set(s))))
        return joined.reindex(range(n)).to_numpy(dtype=object, na_value=None)
    masks = np.zeros(n, dtype=np.int64)
    np.bitwise_or.at(masks, labels, np.left_shift(1, codes.astype(np.int64)))
    distinct, which = np.unique(masks, return_inverse=True)
    text = np.array([",".join(name for i, name in enumerate(names) if int(m) >> i & 1) or None for m in distinct],
                    dtype=object)
    return text[which]


def _one_contact_per_email(conn) -> None:
    """A shared mailbox a steward split between people stays with the oldest golden contact only (over the
    written golden contacts: the parts are written one at a time)."""
    table = GOLDEN_CONTACTS
    shared = sa.select(table.c.email).where(table.c.email.is_not(None)).group_by(table.c.email) \
        .having(sa.func.count() > 1)
    rows = pd.DataFrame(conn.execute(sa.select(table.c.email, table.c.golden_id).where(table.c.email.in_(shared)))
                        .fetchall(), columns=["email", "golden_id"])
    if rows.empty:
        return
    rows["seq"] = id_seqs(rows["golden_id"].to_numpy(dtype=object))
    keepers = set(rows.sort_values("seq").drop_duplicates("email")["golden_id"])
    losers = [g for g in rows["golden_id"] if g not in keepers]
    for i in range(0, len(losers), 500):
        conn.execute(sa.update(table).where(table.c.golden_id.in_(losers[i:i + 500])).values(email=None))


def ensure_golden_tables(wh: Warehouse) -> None:
    wh.ensure_tables(list(GOLDEN_TABLES))
