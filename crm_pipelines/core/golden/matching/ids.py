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
    events: list[dict] = field(default_factory=list)   # merged / split, for the registry and the audit
    next_seq: int = 1
    # The IDs created, in order: a first run creates one per golden record, and a dict per event came
    # to gigabytes at 10 million contacts.
    created: list[str] = field(default_factory=list)

    def event_counts(self) -> dict[str, int]:
        counts = {"created": len(self.created)} if self.created else {}
        for e in self.events:
            counts[e["event"]] = counts.get(e["event"], 0) + 1
        return counts


def format_id(prefix: str, seq: int) -> str:
    return f"{prefix}-{seq:08d}"


def id_seq(golden_id: str) -> int:
    return int(golden_id.rsplit("-", 1)[1])


def assign_ids(record_keys: np.ndarray, labels: np.ndarray, previous: "dict[str, str] | pd.Series", prefix: str,
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

    # Per cluster, the candidate IDs are the old IDs at home there; the oldest wins.
    home = home.assign(seq=home["old"].map(id_seq)).sort_values(["label", "seq"])
    winners = home.drop_duplicates("label", keep="first")
    losers = home[~home.index.isin(winners.index)].merge(winners[["label", "old"]], on="label", suffixes=("", "_winner"))
    ids = np.empty(n_clusters, dtype=object)
    ids[winners["label"].to_numpy(dtype=np.int64)] = winners["old"].to_numpy()
    events: list[dict] = [{"event": "merged", "golden_id": a, "into": b}
                          for a, b in zip(losers["old"], losers["old_winner"])]
    fresh = np.flatnonzero(pd.isna(ids))
    new_ids = [format_id(prefix, next_seq + i) for i in range(len(fresh))]
    ids[fresh] = new_ids
    next_seq += len(fresh)
    keeper = dict(zip(home["old"], ids[home["label"].to_numpy(dtype=np.int64)])) if len(home) else {}
    events += [{"event": "split", "golden_id": old, "into": keeper.get(old)} for old, parts in spread.items() if parts > 1]
    return IdAssignment(cluster_ids=[str(i) for i in ids.tolist()], events=events, next_seq=next_seq, created=new_ids)
