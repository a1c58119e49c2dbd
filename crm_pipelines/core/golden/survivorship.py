"""Survivorship: one golden record per cluster, field by field, with the record each value came from.

Rules per field (config ``survivorship``): ``source_priority`` (the most trusted source
that has a value; ties to the most recent), ``most_recent`` (the latest non-empty value;
ties to the more trusted source), ``most_frequent`` (the value most records agree on;
ties to the more trusted, then the more recent record). A field *group* (config ``groups``)
takes all its fields from the record that supplied its first field, so an address is never
stitched together from two records.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .matching.settings import SurvivorshipSpec


def survive(records: pd.DataFrame, cluster: np.ndarray, fields: list[str], spec: SurvivorshipSpec,
            ts_col: str = "record_ts") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Golden values per cluster (index = cluster label) and the lineage (cluster, field, record_key, rule)
    of the clusters with more than one record (a single record's lineage is the record itself).

    Each rule sorts the records once and every field then takes a position per cluster, so no copy
    of the string columns is made: at a million records the strings are most of the memory."""
    rank = {s: i for i, s in enumerate(spec.source_priority)}
    n_clusters = int(cluster.max() + 1) if len(cluster) else 0
    keys = records["record_key"].to_numpy()
    base = pd.DataFrame({
        "cluster": cluster,
        "rank": records["source"].map(rank).fillna(len(rank)).astype(int).to_numpy(),
        "ts": pd.to_datetime(records[ts_col], utc=True).fillna(pd.Timestamp(0, tz="UTC")).to_numpy(),
        "record_key": _key_order(keys),  # ties go to the smaller record key
    })
    golden = pd.DataFrame(index=pd.RangeIndex(n_clusters))
    followers = {m: g[0] for g in spec.groups.values() if g[0] in fields for m in g[1:] if m in fields}
    chosen: dict[str, np.ndarray] = {}  # field -> position of the record that supplies it per cluster, -1 none
    rules: dict[str, str] = {}
    by_rule: dict[str, list[str]] = {}
    for f in fields:
        if f not in followers:
            by_rule.setdefault(spec.rule_for(f), []).append(f)
    for rule, cols in by_rule.items():
        if rule == "most_frequent":
            for f in cols:
                chosen[f], rules[f] = _most_frequent(base, records[f], n_clusters), rule
            continue
        order = ["cluster", "rank", "ts", "record_key"] if rule == "source_priority" else ["cluster", "ts", "rank", "record_key"]
        asc = [True, True, False, True] if rule == "source_priority" else [True, False, True, True]
        perm = base.sort_values(order, ascending=asc, kind="stable").index.to_numpy()
        for f in cols:
            # The first record in rule order with a value, per cluster (the sort is by cluster first).
            have = perm[records[f].notna().to_numpy()[perm]]
            cl = cluster[have]
            first = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]]) if len(cl) else np.empty(0, np.int64)
            pos = np.full(n_clusters, -1, dtype=np.int64)
            pos[cl[first]] = have[first]
            chosen[f], rules[f] = pos, rule
    for f, anchor in followers.items():
        pos = chosen[anchor].copy()
        has = pos >= 0
        has[has] = records[f].notna().to_numpy()[pos[has]]
        pos[~has] = -1
        chosen[f], rules[f] = pos, f"with {anchor}"
    multi = np.bincount(cluster, minlength=n_clusters) > 1 if n_clusters else np.zeros(0, bool)
    lineage_parts = []
    for f in fields:
        pos = chosen[f]
        has = pos >= 0
        values = np.full(n_clusters, None, dtype=object)
        values[has] = records[f].to_numpy(dtype=object)[pos[has]]
        golden[f] = pd.Series(values, index=golden.index, dtype=object)
        keep = np.flatnonzero(has & multi)
        lineage_parts.append(pd.DataFrame({"cluster": keep, "field": f, "record_key": keys[pos[keep]], "rule": rules[f]}))
    lineage = pd.concat(lineage_parts, ignore_index=True) if lineage_parts else pd.DataFrame(
        columns=["cluster", "field", "record_key", "rule"])
    return golden, lineage


def _key_order(keys: np.ndarray) -> np.ndarray:
    """Integers that sort as the record keys do: the positions when the records come sorted by key (as
    the golden steps read them), else the keys' ranks. Sorting by them instead of the strings spares
    a factorization of every key per sort (13 million of them at 10 million contacts)."""
    if len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1])):
        return np.arange(len(keys), dtype=np.int64)
    return pd.factorize(keys, sort=True)[0].astype(np.int64)


def _most_frequent(base: pd.DataFrame, values: pd.Series, n_clusters: int) -> np.ndarray:
    """Position of the record with the value most records of the cluster share, per cluster (-1 none)."""
    pos = np.full(n_clusters, -1, dtype=np.int64)
    frame = base.assign(value=values.to_numpy(), pos=np.arange(len(base))).dropna(subset=["value"])
    if frame.empty:
        return pos
    frame["votes"] = frame.groupby(["cluster", "value"])["value"].transform("size")
    frame = frame.sort_values(["cluster", "votes", "rank", "ts", "record_key"], ascending=[True, False, True, False, True],
                              kind="stable")
    best = frame.drop_duplicates("cluster")
    pos[best["cluster"].to_numpy()] = best["pos"].to_numpy()
    return pos
