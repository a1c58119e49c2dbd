"""One entity-resolution pass: block, compare, fit the model, score, cluster, collect the review queue."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from .cluster import ClusterResult, cluster
from .engine import LOADED_DERIVATIONS, CandidatePairs, Columns, FSModel, block, comparison_levels, estimate_u, fit, score, term_frequencies
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


def must_link_pairs(df: pd.DataFrame, columns: tuple[str, ...],
                    shared: np.ndarray | None = None) -> Iterator[tuple[int, int, str]]:
    """Records with the same value of a must-link column, each linked to the first record with it, in record
    order; a shared mailbox links nobody. Found with integer codes and yielded a block at a time: at 10 million
    contacts there are millions of links, and a tuple of Python objects is about a hundred bytes."""
    for col in columns:
        codes = pd.factorize(df[col])[0]  # -1 for missing
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
        a, b = first[by_record], order[by_record]
        del codes, ok, order, value, starts, first, linked, by_record
        why = f"same {col}"
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


def resolve(df: pd.DataFrame, spec: EntityMatchSpec, must_link: list[tuple[int, int, str]] | None = None,
            cannot_link: list[tuple[int, int]] | None = None, log: Log | None = None, seed: int = 0,
            drop_blocking_columns: bool = False) -> Resolution:
    """``drop_blocking_columns``: the columns only the blocking reads are taken out of ``df`` once the candidate
    pairs are found (the golden steps hand their frame over: what follows needs its memory)."""
    log = log or (lambda _m: None)
    timings: dict[str, float] = {}
    t = time.monotonic()
    n = len(df)
    pairs = block(df, spec)
    if drop_blocking_columns:
        for col in sorted(blocking_only_columns(spec) & set(df.columns)):
            del df[col]
    timings["blocking"] = time.monotonic() - t
    log(f"{spec.entity}: {n:,} records, {len(pairs):,} candidate pairs ({timings['blocking']:.1f}s)")

    t = time.monotonic()
    shared = None
    if (spec.shared_mailboxes or spec.shared_mailbox_names) and "email_norm" in df.columns:
        shared = shared_mailboxes(df["email_norm"], df.get("first_key"), df.get("last_key"), spec.shared_mailboxes,
                                  spec.shared_mailbox_names)
        df["email_shared"] = shared  # the e-mail comparison weighs an exact match on it as a similar mailbox
        log(f"{spec.entity}: {int(shared.sum()):,} records with a role or shared mailbox")
    cols = Columns(df, spec.name_swap or ())
    levels = comparison_levels(df, pairs.left, pairs.right, spec, cols)
    timings["comparing"] = time.monotonic() - t

    t = time.monotonic()
    u = estimate_u(df, spec, spec.u_sample_pairs, seed=seed, cols=cols)
    del cols  # the per-column arrays are done with: what follows reuses their memory
    tf = term_frequencies(df, spec)
    model = fit(levels, spec, u, tf, n)
    weight, prob = score(df, pairs.left, pairs.right, levels, model, spec)
    timings["model"] = time.monotonic() - t
    log(f"{spec.entity}: model fitted in {model.iterations} EM iterations, prior {model.prior:.2e} ({timings['model']:.1f}s)")

    t = time.monotonic()
    auto = must_link_pairs(df, spec.must_link, shared)
    # Evidence alone, as if the prior were even: below the contradiction band the records differ.
    evidence = weight - math.log2(model.prior / (1 - model.prior))
    contradiction = evidence < math.log2(spec.contradiction_threshold / (1 - spec.contradiction_threshold))
    if shared is not None:
        # Namesakes whose company numbered their mailboxes (mueller@ / mueller2@ at one domain) are two
        # people: the pair is a contradiction that keeps their clusters apart.
        apart = numbered_apart(df["email_norm"], pairs.left, pairs.right)
        contradiction |= apart
        prob = np.where(apart, 0.0, prob)
        log(f"{spec.entity}: {int(apart.sum()):,} candidate pairs with numbered mailboxes at one domain kept apart")
    result = cluster(n, pairs.left, pairs.right, prob, spec.match_threshold, contradiction,
                     spec.max_cluster_size, must_link=list(must_link or []), cannot_link=list(cannot_link or []),
                     auto_link=auto)
    timings["clustering"] = time.monotonic() - t

    labels = result.labels
    band = (prob >= spec.review_threshold) & (prob < spec.match_threshold)
    apart = labels[pairs.left] != labels[pairs.right]
    idx = np.flatnonzero(band & apart)
    review = pd.DataFrame({"a": pairs.left[idx], "b": pairs.right[idx], "probability": prob[idx],
                           "reason": "review band"})
    if result.refused:
        refused = pd.DataFrame(result.refused, columns=["a", "b", "probability", "reason"])
        refused = refused[labels[refused["a"].to_numpy()] != labels[refused["b"].to_numpy()]]
        review = pd.concat([review, refused], ignore_index=True)
    review = review.drop_duplicates(["a", "b"]).reset_index(drop=True)
    stats = {
        "records": n, "clusters": int(labels.max() + 1) if n else 0, "candidate_pairs": int(len(pairs)),
        "possible_pairs": n * (n - 1) // 2, "review_pairs": int(len(review)), "blocking": pairs.stats,
        "seconds": {k: round(v, 2) for k, v in timings.items()}, **result.stats,
    }
    return Resolution(labels, pairs, levels, weight, prob, model, result, review, stats)


def explain_pair(res: Resolution, spec: EntityMatchSpec, a: int, b: int) -> list[dict]:
    """Per comparison: the level two records reached and the weight it contributed."""
    code = min(a, b) * res.n_records + max(a, b)
    codes = res.pairs.left * res.n_records + res.pairs.right
    hit = np.flatnonzero(codes == code)
    if not len(hit):
        return []
    i = int(hit[0])
    weights = res.model.weights()
    out = []
    for c, comp in enumerate(spec.comparisons):
        lv = int(res.levels[comp.name][i])
        out.append({"comparison": comp.name, "level": comp.level_names()[lv] if lv >= 0 else "no data",
                    "weight": round(float(weights[c][lv]), 2) if lv >= 0 else 0.0})
    return out
