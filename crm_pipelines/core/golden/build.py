"""Golden accounts and contacts built: records resolved, fields survived, IDs kept stable, the result
persisted with its lineage, match edges and the match-rate reference.

Plain Python over the warehouse (no Dagster): the assets in ``defs/golden.py`` call these functions,
and tests call them directly. Order of a run: person records, account records (ERP, CRM and the company
mentions of persons; :mod:`.staging`), register enrichment (:mod:`.enrichment`), accounts resolved,
contacts resolved and linked to their account (:mod:`.crosswalk`), review queue (:mod:`.review`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import (ACCOUNT_CROSSWALK, ACCOUNT_LINEAGE, ACCOUNT_RECORDS, CONTACT_LINEAGE, GOLDEN_ACCOUNTS,
                               GOLDEN_CONTACTS, GOLDEN_TABLES, MATCH_EDGES, MATCH_RUNS, PERSON_CROSSWALK,
                               PERSON_RECORDS, REVIEW_CANDIDATES)
from ..platform.warehouse import Warehouse, replace_table
from ..privacy import consent
from ..privacy.ledger import load_consent_events
from .crosswalk import PREFIX, account_of_contacts, current_map, next_seq, register_ids, update_crosswalk
from .matching.ids import assign_ids, id_seq
from .matching.resolve import Resolution, resolve
from .matching.settings import EntityMatchSpec, MatchingConfig
from .records import SIGNATURE_COLUMNS, account_signatures
from .review import decision_links, decisions
from .staging import ACCOUNT_FIELDS, CONTACT_FIELDS, Log, apply_register, load_account_records, load_person_records, now
from .survivorship import survive


@dataclass
class GoldenResult:
    entity: str
    resolution: Resolution
    golden: pd.DataFrame
    crosswalk: pd.DataFrame  # current record -> golden ID
    events: list[dict]  # merged and split IDs (the created ones are counted in id_events)
    stats: dict = field(default_factory=dict)
    id_events: dict[str, int] = field(default_factory=dict)  # created / merged / split -> how many


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
    """Position of each (a, b) in the candidate pairs, -1 where the pair was not compared."""
    n = res.n_records
    codes = res.pairs.left * n + res.pairs.right
    want = np.minimum(a, b) * n + np.maximum(a, b)
    pos = np.searchsorted(codes, want)
    pos = np.clip(pos, 0, max(len(codes) - 1, 0))
    found = (len(codes) > 0) & (codes[pos] == want) if len(codes) else np.zeros(len(want), bool)
    return np.where(found, pos, -1)


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


def _persist(wh: Warehouse, entity: str, res: Resolution, spec: EntityMatchSpec, keys: np.ndarray, crosswalk: pd.DataFrame,
             cluster_ids: list[str], run_id: str, at: datetime, xw_table: sa.Table, started: float,
             match_rate: float, max_change: float, max_growth: float) -> dict:
    rep_key = keys.__getitem__
    # Match edges: the pairs that joined records, with their evidence, for explanations. Written a
    # slice at a time in one transaction: the evidence of millions of merges as text at once was the
    # largest thing a 10-million-contact golden step held at its end.
    merges = res.clusters.merge_edges
    wh.ensure_tables([MATCH_EDGES])
    with wh.engine.begin() as conn:
        wh.delete_where(conn, MATCH_EDGES, entity=entity)
        for start in range(0, len(merges), _EDGE_ROWS):
            part = merges[start:start + _EDGE_ROWS]
            a = np.array([m[0] for m in part])
            b = np.array([m[1] for m in part])
            idx = _pair_index(res, a, b)
            evidence = _evidence(res, spec, np.where(idx >= 0, idx, 0))
            wh.bulk_insert(conn, MATCH_EDGES, pd.DataFrame({
                "entity": entity, "golden_id": [cluster_ids[res.labels[x]] for x in a],
                "record_a": [rep_key(x) for x in a], "record_b": [rep_key(x) for x in b],
                "probability": [m[2] for m in part], "reason": [m[3] for m in part],
                "evidence": [e if i >= 0 else "{}" for e, i in zip(evidence, idx)], "run_id": run_id}))
    review = res.review
    idx = _pair_index(res, review["a"].to_numpy(), review["b"].to_numpy()) if len(review) else np.empty(0, int)
    cand = pd.DataFrame({
        "entity": entity, "record_a": [rep_key(x) for x in review["a"]], "record_b": [rep_key(x) for x in review["b"]],
        "probability": review["probability"].to_numpy(), "reason": review["reason"].to_numpy(),
        "evidence": _evidence(res, spec, np.where(idx >= 0, idx, 0)) if len(review) else [], "run_id": run_id})
    replace_table(wh, REVIEW_CANDIDATES, cand, where={"entity": entity})
    changes = update_crosswalk(wh, xw_table, crosswalk, run_id, at)
    reference = _reference_run(wh, entity)
    # The first nights (or a new source) grow the record base by half or more at a time, and the share of
    # merged records rises with it: that is growth, not a broken mapping. Past max_growth the new rate
    # becomes the reference; the jump check compares runs over a comparable base.
    grew = reference is not None and res.n_records > reference[1] * (1 + max_growth)
    previous = None if reference is None or grew else reference[0]
    accepted = res.n_records > 0 and (previous is None or abs(match_rate - previous) <= max_change)
    seconds = time.monotonic() - started
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, MATCH_RUNS, pd.DataFrame([{
            "run_id": run_id, "entity": entity, "run_at": pd.Timestamp(at), "records": res.n_records,
            "clusters": res.n_clusters, "match_rate": match_rate, "candidate_pairs": res.stats["candidate_pairs"],
            "possible_pairs": res.stats["possible_pairs"], "review_pairs": len(review), "seconds": seconds,
            "accepted": accepted}]))
    return {"crosswalk_changes": changes, "previous_match_rate": previous, "seconds": round(seconds, 2),
            "reference_records": reference[1] if reference else 0, "record_base_grew": grew}


def resolve_accounts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.accounts
    # The records are read twice: the signature columns for the matching, then, once those are freed,
    # the golden fields. Held together they were the step's peak (see resolve_contacts).
    accounts = apply_register(load_account_records(wh, _ACCOUNT_MATCHING_COLUMNS), wh)
    sig, codes = account_signatures(accounts)
    keys = pd.Index(accounts["record_key"].to_numpy(), dtype=object)
    dec = decisions(wh, "accounts")
    # Decisions name records; the resolution runs over signatures: a record's position is its signature's.
    must, cannot, unknown = decision_links(dec, lambda k: np.where((i := keys.get_indexer(k)) >= 0, codes[i], -1))
    with_register_id = int(accounts["register_id"].notna().sum())
    read_order = _key_digest(keys)
    accounts = keys = None  # freed before the resolution
    res = resolve(sig, spec, must_link=must, cannot_link=cannot, log=log)
    rep = sig["record_key"].to_numpy()  # a signature's record, for the match edges
    n_signatures = len(sig)
    del sig
    accounts = apply_register(load_account_records(wh, _ACCOUNT_GOLDEN_COLUMNS), wh)
    _check_same_records(read_order, accounts["record_key"], ACCOUNT_RECORDS)
    accounts = accounts.drop(columns=[c for c in ("company_key", "city_key", "register_id") if c in accounts.columns])
    labels = res.labels[codes] if len(codes) else np.empty(0, np.int64)
    ids = assign_ids(accounts["record_key"].to_numpy(), labels, current_map(wh, ACCOUNT_CROSSWALK), PREFIX["accounts"],
                     next_seq(wh, "accounts"))
    golden, lineage = survive(accounts, labels, ACCOUNT_FIELDS, cfg.survivorship["accounts"])
    gid = pd.Series(ids.cluster_ids)
    golden = golden.assign(golden_id=gid.to_numpy())
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    golden["sources"] = _sources_per_cluster(accounts["source"].to_numpy(), labels, len(gid))
    golden = golden.rename(columns={"company_base": "base_name"})
    golden["run_id"] = run_id
    register_ids(wh, "accounts", ids, run_id, at)
    replace_table(wh, GOLDEN_ACCOUNTS, golden)
    replace_table(wh, ACCOUNT_LINEAGE, _lineage_rows(lineage, gid, ACCOUNT_FIELDS))  # multi-record clusters only
    crosswalk = pd.DataFrame({"record_key": accounts["record_key"], "source": accounts["source"],
                              "source_record_id": accounts["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    rate = 1 - len(golden) / len(accounts) if len(accounts) else 0.0
    extra = _persist(wh, "accounts", res, spec, rep, crosswalk, ids.cluster_ids, run_id, at, ACCOUNT_CROSSWALK, started, rate,
                     cfg.max_match_rate_change, cfg.max_record_growth)
    stats = {**res.stats, **extra, "records": len(accounts), "signatures": n_signatures, "golden": len(golden),
             "decisions_applied": len(must) + len(cannot), "decisions_unknown_records": unknown,
             "register_ids": with_register_id, "match_rate": rate}
    return GoldenResult("accounts", res, golden, crosswalk, ids.events, stats, ids.event_counts())


# What the golden steps need of a record besides the golden fields, once the matching is done.
_BOOKKEEPING = {"record_key", "source", "source_record_id", "record_ts"}


# resolve_accounts: what the signatures and the register lookup read; then the golden fields, with the
# (name, city) keys the register cache is looked up by.
_ACCOUNT_MATCHING_COLUMNS = set(SIGNATURE_COLUMNS) | {"record_key", "source", "register_court", "register_number"}


_ACCOUNT_GOLDEN_COLUMNS = set(ACCOUNT_FIELDS) | _BOOKKEEPING | {"company_key", "city_key"}


def _key_digest(keys) -> np.ndarray:
    """A 64-bit hash per record key: enough to tell that a second read returned the same records in
    the same order, at an eighth of the keys' memory."""
    return pd.util.hash_array(np.asarray(keys, dtype=object))


def _check_same_records(digest: np.ndarray, keys: pd.Series, table: sa.Table) -> None:
    if len(digest) != len(keys) or not np.array_equal(digest, _key_digest(keys)):
        raise RuntimeError(f"{table.schema}.{table.name} changed while the golden step was reading it "
                           f"({len(digest):,} records at the first read, {len(keys):,} at the second): "
                           "another run rebuilt the records; materialise the golden step again")


def _spec_columns(spec: EntityMatchSpec) -> set[str]:
    """Every column the blocking rules, comparisons and links of a spec read."""
    cols = {alt for rule in spec.blocking for col in rule for alt in col.split("|")}
    cols |= {c for comp in spec.comparisons for c in comp.columns}
    return cols | set(spec.must_link) | set(spec.name_swap or ())


def resolve_contacts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.persons
    # The records are read twice: the matching columns (keys, phonetic codes, e-mails, phones), and,
    # once the matching is done and they are freed, the golden fields. Read together, the 13 million
    # records of 10 million contacts held both sets at once, and that was the step's peak.
    matching = load_person_records(wh, _spec_columns(spec) | {"record_key", "mailbox_is_name"})
    dec = decisions(wh, "persons")
    must, cannot, unknown = decision_links(dec, pd.Index(matching["record_key"].to_numpy(), dtype=object).get_indexer)
    read_order = _key_digest(matching["record_key"])
    matching = matching.drop(columns="record_key")
    res = resolve(matching, spec, must_link=must, cannot_link=cannot, log=log)
    del matching
    persons = load_person_records(wh, set(CONTACT_FIELDS) | _BOOKKEEPING)
    _check_same_records(read_order, persons["record_key"], PERSON_RECORDS)
    keys = pd.Index(persons["record_key"].to_numpy(), dtype=object)
    labels = res.labels
    ids = assign_ids(persons["record_key"].to_numpy(), labels, current_map(wh, PERSON_CROSSWALK), PREFIX["persons"],
                     next_seq(wh, "persons"))
    golden, lineage = survive(persons, labels, CONTACT_FIELDS, cfg.survivorship["persons"])
    # The fields live on in the golden records: the records' own arrays (and the values no golden
    # record took) are freed for what follows, which needs the bookkeeping only.
    persons = persons[[c for c in persons.columns if c in _BOOKKEEPING]].copy()
    gid = pd.Series(ids.cluster_ids)
    golden = golden.rename(columns={"email_norm": "email"}).assign(golden_id=gid.to_numpy())
    golden["email"] = _one_contact_per_email(golden["email"], ids.cluster_ids)
    lineage["field"] = lineage["field"].replace({"email_norm": "email"})
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    grouped = pd.DataFrame({"l": labels, "ts": persons["record_ts"].to_numpy()}).groupby("l")
    golden["sources"] = _sources_per_cluster(persons["source"].to_numpy(), labels, len(gid))
    golden["first_seen_at"] = grouped["ts"].min().reindex(range(len(gid))).to_numpy()
    golden["last_seen_at"] = grouped["ts"].max().reindex(range(len(gid))).to_numpy()
    golden["account_id"] = account_of_contacts(wh, persons, labels, len(gid))
    verdicts = consent.current(load_consent_events(wh), pd.Series(labels, index=keys), len(gid))
    for column in verdicts.columns:  # column by column: a concat copied every golden column once more
        golden[column] = verdicts[column].to_numpy()
    golden["run_id"] = run_id
    register_ids(wh, "persons", ids, run_id, at)
    replace_table(wh, GOLDEN_CONTACTS, golden)
    replace_table(wh, CONTACT_LINEAGE, _lineage_rows(lineage, gid, [*CONTACT_FIELDS[:4], "email", *CONTACT_FIELDS[5:]]))
    crosswalk = pd.DataFrame({"record_key": persons["record_key"], "source": persons["source"],
                              "source_record_id": persons["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    extra = _persist(wh, "persons", res, spec, persons["record_key"].to_numpy(), crosswalk, ids.cluster_ids, run_id, at,
                     PERSON_CROSSWALK, started, res.match_rate, cfg.max_match_rate_change,
                     cfg.max_record_growth)
    stats = {**res.stats, **extra, "golden": len(golden), "match_rate": res.match_rate,
             "decisions_applied": len(must) + len(cannot),
             "decisions_unknown_records": unknown, "linked_to_account": int(golden["account_id"].notna().sum())}
    return GoldenResult("persons", res, golden, crosswalk, ids.events, stats, ids.event_counts())


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


def _one_contact_per_email(emails: pd.Series, cluster_ids: list[str]) -> pd.Series:
    """A shared mailbox a steward split between people stays with the oldest golden contact only."""
    frame = pd.DataFrame({"email": emails.to_numpy(), "seq": [id_seq(i) for i in cluster_ids]}, index=emails.index)
    dup = frame["email"].notna() & frame.duplicated("email", keep=False)
    if not dup.any():
        return emails
    keeper = frame[dup].sort_values("seq").drop_duplicates("email").index
    return emails.where(~dup | emails.index.isin(keeper), None)


def ensure_golden_tables(wh: Warehouse) -> None:
    wh.ensure_tables(list(GOLDEN_TABLES))
