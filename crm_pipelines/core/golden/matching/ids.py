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
    """Golden IDs per cluster label as sequence numbers: a string per cluster (and per created ID) came to
    gigabytes at 10 million contacts; the strings are made for the clusters a caller writes."""

    seqs: np.ndarray                                   # sequence number of the golden ID per cluster label
    prefix: str
    events: list[dict] = field(default_factory=list)   # merged / split, for the registry and the audit
    next_seq: int = 1
    created_seqs: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # in order

    def ids_of(self, clusters: np.ndarray | slice) -> np.ndarray:
        """The golden IDs of these cluster labels, as strings."""
        return format_ids(self.prefix, self.seqs[clusters])

    @property
    def cluster_ids(self) -> list[str]:
        return self.ids_of(slice(None)).tolist()

    @property
    def created(self) -> list[str]:
        return format_ids(self.prefix, self.created_seqs).tolist()

    def event_counts(self) -> dict[str, int]:
        counts = {"created": len(self.created_seqs)} if len(self.created_seqs) else {}
        for e in self.events:
            counts[e["event"]] = counts.get(e["event"], 0) + 1
        return counts


def format_id(prefix: str, seq: int) -> str:
    return f"{prefix}-{seq:08d}"


def format_ids(prefix: str, seqs: np.ndarray) -> np.ndarray:
    return np.array([f"{prefix}-{s:08d}" for s in np.asarray(seqs).tolist()], dtype=object)


def id_seq(golden_id: str) -> int:
    return int(golden_id.rsplit("-", 1)[1])


def id_seqs(golden_ids) -> np.ndarray:
    """Sequence numbers of golden IDs (-1 where missing)."""
    values = pd.Series(np.asarray(golden_ids, dtype=object))
    have = values.notna().to_numpy()
    out = np.full(len(values), -1, dtype=np.int64)
    if have.any():
        out[have] = values[have].str.rsplit("-", n=1).str[1].astype(np.int64).to_numpy()
    return out


def assign_ids(record_keys: np.ndarray, labels: np.ndarray, previous: "dict[str, str] | pd.Series", prefix: str,
               next_seq: int) -> IdAssignment:
    """Golden ID per cluster label, given the previous record -> ID mapping."""
    old = pd.Series(np.asarray(record_keys, dtype=object)).map(previous)
    return assign_id_seqs(id_seqs(old.to_numpy(dtype=object)), labels, prefix, next_seq)


def assign_id_seqs(old: np.ndarray, labels: np.ndarray, prefix: str, next_seq: int) -> IdAssignment:
    """Golden ID per cluster label, given each record's previous golden ID as a sequence number (-1: none)."""
    n_clusters = int(labels.max() + 1) if len(labels) else 0
    known = old >= 0
    cluster_size = np.bincount(labels, minlength=n_clusters)

    # Each old ID's home: the cluster holding most of its former members (ties: the larger
    # cluster, then the lower label, for determinism).
    counts = pd.DataFrame({"old": old[known], "label": labels[known]}).groupby(["old", "label"]).size() \
        .reset_index(name="members")
    counts["size"] = cluster_size[counts["label"].to_numpy()] if len(counts) else []
    counts = counts.sort_values(["old", "members", "size", "label"], ascending=[True, False, False, True])
    home = counts.drop_duplicates("old", keep="first")
    spread = counts.groupby("old")["label"].nunique()

    # Per cluster, the candidate IDs are the old IDs at home there; the oldest (smallest) wins.
    home = home.sort_values(["label", "old"])
    winners = home.drop_duplicates("label", keep="first")
    losers = home[~home.index.isin(winners.index)].merge(winners[["label", "old"]], on="label", suffixes=("", "_winner"))
    seqs = np.full(n_clusters, -1, dtype=np.int64)
    seqs[winners["label"].to_numpy(dtype=np.int64)] = winners["old"].to_numpy(dtype=np.int64)
    events: list[dict] = [{"event": "merged", "golden_id": format_id(prefix, a), "into": format_id(prefix, b)}
                          for a, b in zip(losers["old"].tolist(), losers["old_winner"].tolist())]
    fresh = np.flatnonzero(seqs < 0)
    created = np.arange(next_seq, next_seq + len(fresh), dtype=np.int64)
    seqs[fresh] = created
    next_seq += len(fresh)
    keeper = dict(zip(home["old"].tolist(), seqs[home["label"].to_numpy(dtype=np.int64)].tolist())) if len(home) else {}
    events += [{"event": "split", "golden_id": format_id(prefix, old),
                "into": format_id(prefix, keeper[old]) if old in keeper else None}
               for old, parts in spread.items() if parts > 1]
    return IdAssignment(seqs=seqs, prefix=prefix, events=events, next_seq=next_seq, created_seqs=created)
