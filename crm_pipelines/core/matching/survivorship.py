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

from .settings import SurvivorshipSpec


def survive(records: pd.DataFrame, cluster: np.ndarray, fields: list[str], spec: SurvivorshipSpec,
            ts_col: str = "record_ts") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Golden values per cluster (index = cluster label) and the lineage (cluster, field, record_key, rule)."""
    rank = {s: i for i, s in enumerate(spec.source_priority)}
    base = pd.DataFrame({
        "cluster": cluster,
        "rank": records["source"].map(rank).fillna(len(rank)).astype(int).to_numpy(),
        "ts": pd.to_datetime(records[ts_col], utc=True).fillna(pd.Timestamp(0, tz="UTC")).to_numpy(),
        "record_key": records["record_key"].to_numpy(),
    })
    golden = pd.DataFrame(index=pd.RangeIndex(int(cluster.max() + 1) if len(cluster) else 0))
    lineage_parts = []
    followers = {m: g[0] for g in spec.groups.values() if g[0] in fields for m in g[1:] if m in fields}
    sources: dict[str, pd.Series] = {}
    by_rule: dict[str, list[str]] = {}
    for f in fields:
        if f not in followers:
            by_rule.setdefault(spec.rule_for(f), []).append(f)
    for rule, cols in by_rule.items():
        if rule == "most_frequent":
            for f in cols:
                values, source = _most_frequent(base, records[f])
                golden[f] = values
                sources[f] = source
                lineage_parts.append(_lineage(source, f, rule))
            continue
        order = ["cluster", "rank", "ts", "record_key"] if rule == "source_priority" else ["cluster", "ts", "rank", "record_key"]
        asc = [True, True, False, True] if rule == "source_priority" else [True, False, True, True]
        frame = base.copy()
        for f in cols:
            frame[f] = records[f].to_numpy()
            frame[f"__src_{f}"] = np.where(records[f].notna().to_numpy(), base["record_key"], None)
        frame = frame.sort_values(order, ascending=asc, kind="stable")
        first = frame.groupby("cluster", sort=True).first()  # first non-missing value per column
        for f in cols:
            golden[f] = first[f].reindex(golden.index)
            sources[f] = first[f"__src_{f}"].reindex(golden.index)
            lineage_parts.append(_lineage(sources[f], f, rule))
    if followers:
        position = pd.Series(np.arange(len(records)), index=records["record_key"].to_numpy())
        for f, anchor in followers.items():
            src = sources[anchor]
            pos = src.map(position)
            has = pos.notna().to_numpy()
            values = np.full(len(src), None, dtype=object)
            column = records[f].astype(object).where(records[f].notna(), None).to_numpy()
            values[has] = column[pos[has].astype(int).to_numpy()]
            golden[f] = pd.Series(values, index=golden.index)
            supplied = pd.Series(np.where(pd.notna(values), src.to_numpy(), None), index=golden.index)
            lineage_parts.append(_lineage(supplied, f, f"with {anchor}"))
    lineage = pd.concat(lineage_parts, ignore_index=True) if lineage_parts else pd.DataFrame(
        columns=["cluster", "field", "record_key", "rule"])
    return golden, lineage.dropna(subset=["record_key"]).reset_index(drop=True)


def _most_frequent(base: pd.DataFrame, values: pd.Series) -> tuple[pd.Series, pd.Series]:
    frame = base.assign(value=values.to_numpy()).dropna(subset=["value"])
    n = int(base["cluster"].max() + 1) if len(base) else 0
    if frame.empty:
        empty = pd.Series([None] * n, dtype=object)
        return empty, empty
    frame["votes"] = frame.groupby(["cluster", "value"])["value"].transform("size")
    frame = frame.sort_values(["cluster", "votes", "rank", "ts", "record_key"], ascending=[True, False, True, False, True],
                              kind="stable")
    best = frame.drop_duplicates("cluster").set_index("cluster")
    return best["value"].reindex(range(n)), best["record_key"].reindex(range(n))


def _lineage(source: pd.Series, field: str, rule: str) -> pd.DataFrame:
    return pd.DataFrame({"cluster": source.index.to_numpy(), "field": field, "record_key": source.to_numpy(), "rule": rule})
