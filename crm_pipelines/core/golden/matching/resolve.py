"""One entity-resolution pass: block, compare, fit the model, score, cluster, collect the review queue."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import Callable, Iterator

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ...platform.frames import return_free_memory, value_codes
from .cluster import ClusterResult, cluster
from .engine import (LOADED_DERIVATIONS, CandidatePairs, Columns, FSModel, LevelCodes, block, comparison_levels,
                     estimate_u, fit, score, term_frequencies)
from .mailboxes import numbered_apart, shared_mailboxes
from .settings import EntityMatchSpec

Log = Callable[[str], None]


@dataclass
class Resolution:
    labels: np.ndarray
    pairs: CandidatePairs
    levels: dict[str, np.ndarray]
    weight: np.ndarray
    prob: np.ndarray
    model: FSModel
    clusters: ClusterResult
    review: pd.DataFrame  # positions a, b, probability, reason
    stats: dict = field(default_factory=dict)

    @property
    def n_records(self) -> int:
        return len(self.labels)

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max() + 1) if len(self.labels) else 0

    @property
    def match_rate(self) -> float:
        """Share of records merged away: 1 - clusters / records."""
        return 1.0 - self.n_clusters / self.n_records if self.n_records else 0.0

    def only_pairs(self, keep: np.ndarray) -> "Resolution":
        """The resolution with the candidate pairs at ``keep`` (sorted positions) only, their levels and scores:
        what explains a merge or a review pair, without the arrays of every pair."""
        pairs = CandidatePairs(self.pairs.left[keep], self.pairs.right[keep], self.pairs.rule[keep], self.pairs.stats)
        return Resolution(self.labels, pairs, {k: v[keep] for k, v in self.levels.items()}, self.weight[keep],
                          self.prob[keep], self.model, self.clusters, self.review, self.stats)


def must_link_arrays(df: pd.DataFrame, columns: tuple[str, ...], shared: np.ndarray | None = None,
                     known_codes: dict[str, np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Per must-link column: records with the same value, each linked to the first record with it, in record
    order (positions a < b); a shared mailbox links nobody. Found with integer codes (``known_codes``: those of
    columns the caller has already coded)."""
    out = []
    for col in columns:
        codes = (known_codes or {}).get(col)
        if codes is None:
            codes = value_codes(df[col])  # -1 for missing
        if shared is not None and col == "email_norm" and shared.any():
            codes = np.where(shared, -1, codes)
        ok = np.flatnonzero(codes >= 0)
        if not len(ok):
            continue
        order = ok[np.argsort(codes[ok], kind="stable")]  # by value, then by position
        value = codes[order]
        starts = np.r_[True, value[1:] != value[:-1]]
        first = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
        linked = np.flatnonzero(~starts)
        by_record = linked[np.argsort(order[linked], kind="stable")]
        out.append((first[by_record], order[by_record], f"same {col}"))
    return out


def must_link_pairs(df: pd.DataFrame, columns: tuple[str, ...],
                    shared: np.ndarray | None = None) -> Iterator[tuple[int, int, str]]:
    """:func:`must_link_arrays` as (a, b, why), yielded a block at a time: at 10 million contacts there are
    millions of links, and a tuple of Python objects is about a hundred bytes."""
    return _link_tuples(must_link_arrays(df, columns, shared))


def _link_tuples(links: list[tuple[np.ndarray, np.ndarray, str]]) -> Iterator[tuple[int, int, str]]:
    for a, b, why in links:
        for start in range(0, len(a), _LINK_BLOCK):
            yield from zip(a[start:start + _LINK_BLOCK].tolist(), b[start:start + _LINK_BLOCK].tolist(), repeat(why))


_LINK_BLOCK = 65_536


def blocking_only_columns(spec: EntityMatchSpec) -> set[str]:
    """The columns the blocking rules read and nothing after them does."""
    blocking = {alt for rule in spec.blocking for col in rule for alt in col.split("|")}
    later = {c for comp in spec.comparisons for c in comp.columns} | set(spec.must_link) | set(spec.name_swap or ())
    if spec.shared_mailboxes or spec.shared_mailbox_names:
        later |= {"email_norm", "first_key", "last_key"}
    later |= set(LOADED_DERIVATIONS.values()) | {"mailbox_is_name"}
    return blocking - later


def columns_after_fit(spec: EntityMatchSpec) -> set[str]:
    """The columns read once the model is fitted: the must-link columns and, with shared mailboxes, the e-mail
    (numbered mailboxes, same-e-mail links)."""
    return set(spec.must_link) | ({"email_norm"} if spec.shared_mailboxes or spec.shared_mailbox_names else set())


def resolve(df: pd.DataFrame, spec: EntityMatchSpec, must_link: list[tuple[int, int, str]] | None = None,
            cannot_link: list[tuple[int, int]] | None = None, log: Log | None = None, seed: int = 0,
            release_columns: bool = False) -> Resolution:
    """``release_columns``: ``df`` is handed over and its columns are taken out as soon as nothing more reads
    them, those only the blocking reads once the candidate pairs are found and all but
    :func:`columns_after_fit` once the model is fitted (the golden steps: what follows needs their memory)."""
    log = log or (lambda _m: None)
    timings: dict[str, float] = {}
    t = time.monotonic()
    n = len(df)
    release = (lambda: return_free_memory(n)) if release_columns else (lambda: None)

    def blocking_done(columns: set[str]) -> None:
        for col in sorted(columns & blocking_only_columns(spec) & set(df.columns)):
            del df[col]
        release()

    pairs = block(df, spec, blocking_done if release_columns else None)
    release()
    timings["blocking"] = time.monotonic() - t
    log(f"{spec.entity}: {n:,} records, {len(pairs):,} candidate pairs ({timings['blocking']:.1f}s)")

    t = time.monotonic()
    cols = Columns(df, spec.name_swap or ())
    shared = email_codes = None  # with shared mailboxes: the e-mails' codes, coded once for every use below
    if (spec.shared_mailboxes or spec.shared_mailbox_names) and "email_norm" in df.columns:
        email_codes = cols.codes("email_norm")
        shared = shared_mailboxes(df["email_norm"], df.get("first_key"), df.get("last_key"), spec.shared_mailboxes,
                                  spec.shared_mailbox_names, codes=email_codes)
        df["email_shared"] = shared  # the e-mail comparison weighs an exact match on it as a similar mailbox
        log(f"{spec.entity}: {int(shared.sum()):,} records with a role or shared mailbox")
        release()
    packing = LevelCodes(spec)
    level_codes = _level_codes_in_chunks(df, pairs, spec, cols, packing)
    timings["comparing"] = time.monotonic() - t

    t = time.monotonic()
    u = estimate_u(df, spec, spec.u_sample_pairs, seed=seed, cols=cols)
    del cols  # the per-column arrays are done with: what follows reuses their memory
    release()
    tf = term_frequencies(df, spec)
    patterns, counts = packing.histogram(level_codes)
    model = fit(patterns, spec, u, tf, n, counts=counts)
    if release_columns:
        for col in sorted(set(df.columns) - columns_after_fit(spec)):
            del df[col]
    timings["model"] = time.monotonic() - t
    log(f"{spec.entity}: model fitted in {model.iterations} EM iterations, prior {model.prior:.2e} ({timings['model']:.1f}s)")

    t = time.monotonic()
    # Every pair scored a chunk at a time; of every pair only two flags stay: whether it reaches the review band
    # and whether it contradicts. What the clustering and the evidence need is then taken out.
    reviewable = np.zeros(len(pairs), dtype=bool)
    contradiction = np.zeros(len(pairs), dtype=bool)
    n_apart = 0
    for part in _chunks(len(pairs)):
        _, prob, against, apart = _scored(df, pairs.left[part], pairs.right[part],
                                          packing.unpack(level_codes[part]), model, spec, email_codes)
        reviewable[part] = prob >= spec.review_threshold
        contradiction[part] = against
        n_apart += int(np.count_nonzero(apart))
    links = must_link_arrays(df, spec.must_link, shared,
                             {"email_norm": email_codes} if email_codes is not None else None)
    keep = _pairs_to_keep(n, pairs, reviewable, contradiction, links, list(must_link or []))
    del reviewable, contradiction
    release()
    left, right = pairs.left[keep], pairs.right[keep]
    levels = packing.unpack(level_codes[keep])
    del level_codes
    weight, prob, contradiction, _ = _scored(df, left, right, levels, model, spec, email_codes)
    if email_codes is not None:
        log(f"{spec.entity}: {n_apart:,} candidate pairs with numbered mailboxes at one domain kept apart")
    kept = CandidatePairs(left, right, pairs.rule[keep], pairs.stats)
    n_pairs = len(pairs)
    del pairs
    result = cluster(n, left, right, prob, spec.match_threshold, contradiction,
                     spec.max_cluster_size, must_link=list(must_link or []), cannot_link=list(cannot_link or []),
                     auto_link=_link_tuples(links))
    timings["clustering"] = time.monotonic() - t

    labels = result.labels
    band = (prob >= spec.review_threshold) & (prob < spec.match_threshold)
    apart = labels[left] != labels[right]
    idx = np.flatnonzero(band & apart)
    review = pd.DataFrame({"a": left[idx], "b": right[idx], "probability": prob[idx], "reason": "review band"})
    if result.refused:
        refused = pd.DataFrame(result.refused, columns=["a", "b", "probability", "reason"])
        refused = refused[labels[refused["a"].to_numpy()] != labels[refused["b"].to_numpy()]]
        review = pd.concat([review, refused], ignore_index=True)
    review = review.drop_duplicates(["a", "b"]).reset_index(drop=True)
    stats = {
        "records": n, "clusters": int(labels.max() + 1) if n else 0, "candidate_pairs": n_pairs,
        "kept_pairs": int(len(kept)), "possible_pairs": n * (n - 1) // 2, "review_pairs": int(len(review)),
        "blocking": kept.stats,
        "seconds": {k: round(v, 2) for k, v in timings.items()}, **result.stats,
    }
    return Resolution(labels, kept, levels, weight, prob, model, result, review, stats)


# Candidate pairs compared and scored at a time.
PAIR_CHUNK = 4_000_000


def _chunks(n: int) -> Iterator[slice]:
    return (slice(start, min(start + PAIR_CHUNK, n)) for start in range(0, n, PAIR_CHUNK))


def _level_codes_in_chunks(df: pd.DataFrame, pairs: CandidatePairs, spec: EntityMatchSpec, cols: Columns,
                           packing: LevelCodes) -> np.ndarray:
    """:func:`comparison_levels` of every pair, a chunk of pairs at a time (its gathered codes and values are per
    pair of the chunk), packed into one code per pair (:class:`LevelCodes`)."""
    out = np.zeros(len(pairs), dtype=packing.dtype)
    for part in _chunks(len(pairs)):
        out[part] = packing.pack(comparison_levels(df, pairs.left[part], pairs.right[part], spec, cols))
    return out


def _scored(df: pd.DataFrame, left: np.ndarray, right: np.ndarray, levels: dict[str, np.ndarray], model: FSModel,
            spec: EntityMatchSpec,
            email_codes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weight, probability, contradiction and numbered mailboxes of pairs. A pair contradicts when its evidence
    alone (as if the prior were even) is below the contradiction band, when its records differ in every comparison
    of one of the ``conflicts`` groups (both known) and share no identifier, or when its records' mailboxes at one domain differ only in a
    trailing number (``email_codes`` given): namesakes whose company numbered their mailboxes (mueller@ /
    mueller2@) are two people, and their probability is 0.

    The conflicts: name, postcode and town agreeing add up to near-certainty, so two companies of one name in one
    town (another website, another street) scored as one and a mention naming only the name and town chained
    them together; each disagreement alone is common among a company's own records (group domains, moves)."""
    weight, prob = score(df, left, right, levels, model, spec)
    evidence = weight - math.log2(model.prior / (1 - model.prior))
    contradiction = evidence < math.log2(spec.contradiction_threshold / (1 - spec.contradiction_threshold))
    if spec.conflicts:
        # An identifier both records carry and share (an exact comparison agreeing) outweighs the conflict: a company
        # that moved and changed to its group's domain is still the one CRM company.
        identified = np.logical_or.reduce([levels[c.name] == c.top_level for c in spec.comparisons if c.kind == "exact"]
                                          + [np.zeros(len(left), dtype=bool)])
        for group in spec.conflicts:
            contradiction |= np.logical_and.reduce([levels[name] == 0 for name in group]) & ~identified
    apart = np.zeros(len(left), dtype=bool)
    if email_codes is not None:
        apart = numbered_apart(df["email_norm"], left, right, email_codes)
        contradiction |= apart
        prob = np.where(apart, 0.0, prob)
    return weight, prob, contradiction, apart


def _pairs_to_keep(n: int, pairs: CandidatePairs, reviewable: np.ndarray, contradiction: np.ndarray,
                   links: list[tuple[np.ndarray, np.ndarray, str]], must_link: list[tuple[int, int, str]]) -> np.ndarray:
    """Positions of the pairs the clustering and the evidence need: those reaching the review band, the links'
    pairs, and the contradictions within a connected component of the pairs that may merge (review band and
    above, links). A contradiction is looked at only when the clusters of both its records are merged, and
    merges never join two such components: the other contradictions change nothing."""
    hit = np.flatnonzero(reviewable)
    # 32-bit positions (as the graph stores them): tens of millions of edges at 10 million records.
    a = np.concatenate([pairs.left[hit].astype(np.int32), *(x.astype(np.int32) for x, _y, _w in links),
                        np.array([int(x) for x, _y, _w in must_link], dtype=np.int32)])
    b = np.concatenate([pairs.right[hit].astype(np.int32), *(y.astype(np.int32) for _x, y, _w in links),
                        np.array([int(y) for _x, y, _w in must_link], dtype=np.int32)])
    del hit
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _count, component = connected_components(graph, directed=False)
    del graph, a, b
    keep = reviewable.copy()
    for part in _chunks(len(pairs)):
        keep[part] |= contradiction[part] & (component[pairs.left[part]] == component[pairs.right[part]])
    for x, y, _why in links:  # their evidence is written with the merge edges
        at = pair_positions(pairs, n, x, y)
        keep[at[at >= 0]] = True
    return np.flatnonzero(keep)


def pair_positions(pairs: CandidatePairs, n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Position of each pair (a, b), in either order, among the candidate pairs (sorted), -1 where it is not one;
    searched a chunk of pairs at a time (the codes of every pair at once would be another 8 bytes a pair)."""
    out = np.full(len(a), -1, dtype=np.int64)
    if not len(a) or not len(pairs):
        return out
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    want = np.minimum(a, b) * n + np.maximum(a, b)
    order = np.argsort(want, kind="stable")
    wanted = want[order]
    for part in _chunks(len(pairs)):
        codes = pairs.left[part].astype(np.int64) * n + pairs.right[part]
        lo, hi = np.searchsorted(wanted, codes[0]), np.searchsorted(wanted, codes[-1], side="right")
        if lo == hi:
            continue
        at = np.searchsorted(codes, wanted[lo:hi])
        found = codes[np.minimum(at, len(codes) - 1)] == wanted[lo:hi]
        out[order[lo:hi][found]] = part.start + at[found]
    return out
