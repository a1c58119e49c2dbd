"""Stable golden IDs across re-runs.

Rules: a golden ID survives while its members stay together. When clusters that had
different IDs merge, the older ID wins and the others are recorded as merged into it.
When a cluster splits, the part holding most of its former members keeps the ID; the
other parts get new IDs. IDs are sequence numbers with a prefix (``GC-00000042``), so
"older" is "smaller".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class IdAssignment:
    cluster_ids: list[str]                       # golden ID per cluster label
    events: list[dict] = field(default_factory=list)   # created / merged / split, for the registry and the audit
    next_seq: int = 1


def format_id(prefix: str, seq: int) -> str:
    return f"{prefix}-{seq:08d}"


def id_seq(golden_id: str) -> int:
    return int(golden_id.rsplit("-", 1)[1])


def assign_ids(record_keys: np.ndarray, labels: np.ndarray, previous: dict[str, str], prefix: str,
               next_seq: int) -> IdAssignment:
    """Golden ID per cluster label, given the previous record -> ID mapping."""
    n_clusters = int(labels.max() + 1) if len(labels) else 0
    frame = pd.DataFrame({"key": record_keys, "label": labels})
    frame["old"] = frame["key"].map(previous)
    known = frame.dropna(subset=["old"])
    cluster_size = np.bincount(labels, minlength=n_clusters)

    # Each old ID's home: the cluster holding most of its former members (ties: the larger
    # cluster, then the lower label, for determinism).
    counts = known.groupby(["old", "label"]).size().reset_index(name="members")
    counts["size"] = cluster_size[counts["label"].to_numpy()] if len(counts) else []
    counts = counts.sort_values(["old", "members", "size", "label"], ascending=[True, False, False, True])
    home = counts.drop_duplicates("old", keep="first")
    spread = counts.groupby("old")["label"].nunique()

    ids: list[str | None] = [None] * n_clusters
    events: list[dict] = []
    # Per cluster, the candidate IDs are the old IDs at home there; the oldest wins.
    home = home.assign(seq=home["old"].map(id_seq)).sort_values(["label", "seq"])
    for label, group in home.groupby("label", sort=False):
        winner = group.iloc[0]["old"]
        ids[int(label)] = winner
        for loser in group["old"].iloc[1:]:
            events.append({"event": "merged", "golden_id": loser, "into": winner})
    for label in range(n_clusters):
        if ids[label] is None:
            ids[label] = format_id(prefix, next_seq)
            events.append({"event": "created", "golden_id": ids[label], "into": None})
            next_seq += 1
    for old, parts in spread.items():
        if parts > 1:
            kept_by = home.loc[home["old"] == old, "label"]
            keeper = ids[int(kept_by.iloc[0])] if len(kept_by) else None
            events.append({"event": "split", "golden_id": old, "into": keeper})
    return IdAssignment(cluster_ids=[str(i) for i in ids], events=events, next_seq=next_seq)
