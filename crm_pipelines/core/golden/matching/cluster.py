"""Clustering scored pairs into entities, with protection against chaining.

Connected components over match-band edges would let a chain of weak links (A~B,
B~C, C~D) merge records that were compared directly and found to differ (A vs D).
Here edges are merged strongest first, and a merge is refused when any pair already
compared across the two clusters scored below the contradiction threshold, when a
steward said "different", or when the cluster would grow past the size limit. A pair
contradicts when its comparisons alone (without the prior) say "different": a pair that
merely lacks evidence does not. Must-
links (same normalised e-mail, steward "same") are merged first and unconditionally.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np


@dataclass
class MergeEdges:
    """The pairs that joined two clusters, as arrays (32 bytes a merge; a tuple of Python objects is about five
    times that, and 10 million contacts have millions of merges)."""

    a: np.ndarray            # record positions
    b: np.ndarray
    probability: np.ndarray
    reason_code: np.ndarray  # index into reasons
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.a)

    def __iter__(self) -> Iterator[tuple[int, int, float, str]]:
        return zip(self.a.tolist(), self.b.tolist(), self.probability.tolist(),
                   (self.reasons[c] for c in self.reason_code.tolist()))

    @property
    def reason(self) -> np.ndarray:
        return np.asarray(self.reasons, dtype=object)[self.reason_code] if len(self.a) else np.empty(0, object)


class _Merges:
    """Merges as they happen, in typed arrays (8 bytes a value, not a tuple of objects)."""

    def __init__(self) -> None:
        self.a, self.b, self.p, self.code = array("q"), array("q"), array("d"), array("q")
        self.reasons: dict[str, int] = {}

    def add(self, a: int, b: int, p: float, why: str) -> None:
        self.a.append(a)
        self.b.append(b)
        self.p.append(p)
        code = self.reasons.get(why)
        if code is None:
            code = self.reasons[why] = len(self.reasons)
        self.code.append(code)

    def __len__(self) -> int:
        return len(self.a)

    def done(self) -> MergeEdges:
        return MergeEdges(np.frombuffer(self.a, np.int64).copy(), np.frombuffer(self.b, np.int64).copy(),
                          np.frombuffer(self.p, np.float64).copy(), np.frombuffer(self.code, np.int64).copy(),
                          list(self.reasons))


@dataclass
class ClusterResult:
    labels: np.ndarray               # cluster number per record (0..k-1), dense
    merge_edges: MergeEdges          # the pairs that joined clusters, with probability and why
    refused: list[tuple[int, int, float, str]]      # match-band edges not merged, and why
    stats: dict = field(default_factory=dict)


class _UnionFind:
    """Parents, sizes and each cluster's members as a ring (``next``) in typed arrays: 24 bytes a record, where a
    list of Python ints and a dict of member lists took several times that."""

    def __init__(self, n: int):
        self.parent = array("q", range(n))
        self.next = array("q", range(n))
        self.size = array("q", [1]) * n

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def cluster(self, root: int) -> Iterator[int]:
        """The members of the cluster of ``root``."""
        nxt = self.next
        member = root
        while True:
            yield member
            member = nxt[member]
            if member == root:
                return

    def union(self, ra: int, rb: int) -> int:
        size = self.size
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        size[ra] += size[rb]
        self.next[ra], self.next[rb] = self.next[rb], self.next[ra]  # splice the two rings
        return ra


def cluster(n: int, left: np.ndarray, right: np.ndarray, prob: np.ndarray, match_threshold: float,
            contradiction: np.ndarray, max_cluster_size: int,
            must_link: list[tuple[int, int, str]] = (), cannot_link: list[tuple[int, int]] = (),
            auto_link: Iterable[tuple[int, int, str]] = ()) -> ClusterResult:
    """``must_link``: steward "same", merged first and unconditionally. ``auto_link``: rule-based
    links (same normalised e-mail), merged next unless a steward said "different". Then the
    match-band pairs, strongest first, unless contradicted."""
    uf = _UnionFind(n)
    # Vetoes as a compressed adjacency list (indptr/indices), built with numpy: there can be
    # millions of contradicting pairs and only a few merges ever need to look at them.
    ca = np.flatnonzero(contradiction)
    va = np.concatenate([left[ca], right[ca], np.array([a for a, _ in cannot_link] + [b for _, b in cannot_link], dtype=np.int64)])
    vb = np.concatenate([right[ca], left[ca], np.array([b for _, b in cannot_link] + [a for a, _ in cannot_link], dtype=np.int64)])
    order = np.argsort(va, kind="stable")
    indices = vb[order]
    indptr = np.searchsorted(va[order], np.arange(n + 1))

    merges = _Merges()
    refused: list[tuple[int, int, float, str]] = []

    hard: dict[int, set[int]] = {}
    for a, b in cannot_link:
        hard.setdefault(int(a), set()).add(int(b))
        hard.setdefault(int(b), set()).add(int(a))

    def conflicts(ra: int, rb: int, steward_only: bool = False) -> bool:
        small, other = (ra, rb) if uf.size[ra] <= uf.size[rb] else (rb, ra)
        for member in uf.cluster(small):
            neighbours = hard.get(member, ()) if steward_only else indices[indptr[member]:indptr[member + 1]].tolist()
            for v in neighbours:
                if uf.find(v) == other:
                    return True
        return False

    forced = 0
    for a, b, why in must_link:
        ra, rb = uf.find(int(a)), uf.find(int(b))
        if ra != rb:
            uf.union(ra, rb)
            merges.add(int(a), int(b), 1.0, why)
            forced += 1
    for a, b, why in auto_link:
        ra, rb = uf.find(int(a)), uf.find(int(b))
        if ra == rb:
            continue
        if hard and conflicts(ra, rb, steward_only=True):
            refused.append((int(a), int(b), 1.0, f"{why}, but a steward said different"))
            continue
        uf.union(ra, rb)
        merges.add(int(a), int(b), 1.0, why)
        forced += 1

    candidates = np.flatnonzero(prob >= match_threshold)
    order = candidates[np.argsort(-prob[candidates], kind="stable")]
    del candidates
    vetoed = too_big = 0
    for a, b, p in _in_blocks(left, right, prob, order):
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        if conflicts(ra, rb):
            refused.append((a, b, p, "contradicted by a compared pair or a steward decision"))
            vetoed += 1
            continue
        if uf.size[ra] + uf.size[rb] > max_cluster_size:
            refused.append((a, b, p, f"cluster would exceed {max_cluster_size} records"))
            too_big += 1
            continue
        uf.union(ra, rb)
        merges.add(a, b, p, "match")

    roots = np.fromiter((uf.find(i) for i in range(n)), dtype=np.int64, count=n)
    del uf
    _, labels = np.unique(roots, return_inverse=True)
    return ClusterResult(labels=labels, merge_edges=merges.done(), refused=refused,
                         stats={"forced_merges": forced, "match_merges": len(merges) - forced, "vetoed": vetoed,
                                "size_limited": too_big, "clusters": int(labels.max() + 1) if n else 0})


def _in_blocks(left: np.ndarray, right: np.ndarray, prob: np.ndarray, order: np.ndarray,
               size: int = 1_000_000) -> Iterator[tuple[int, int, float]]:
    """(a, b, probability) of the pairs in ``order``, made Python values a block at a time: tens of millions of
    candidate pairs as three lists of Python numbers would be several gigabytes."""
    for start in range(0, len(order), size):
        at = order[start:start + size]
        yield from zip(left[at].tolist(), right[at].tolist(), prob[at].tolist())
