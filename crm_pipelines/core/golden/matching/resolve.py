"""One entity-resolution pass: block, compare, fit the model, score, cluster, collect the review queue."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from .cluster import ClusterResult, cluster
from .engine import CandidatePairs, Columns, FSModel, block, comparison_levels, estimate_u, fit, score, term_frequencies
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


def must_link_pairs(df: pd.DataFrame, columns: tuple[str, ...],
                    shared: np.ndarray | None = None) -> list[tuple[int, int, str]]:
    """Records with the same value of a must-link column; a shared mailbox links nobody."""
    out = []
    for col in columns:
        s = df[col]
        if shared is not None and col == "email_norm" and shared.any():
            s = s.where(~shared)
        ok = np.flatnonzero(s.notna().to_numpy())
        if not len(ok):
            continue
        codes, _ = pd.factorize(s.iloc[ok])
        first = pd.Series(ok).groupby(codes).transform("first").to_numpy()
        link = first != ok
        out.extend((int(a), int(b), f"same {col}") for a, b in zip(first[link], ok[link]))
    return out


def resolve(df: pd.DataFrame, spec: EntityMatchSpec, must_link: list[tuple[int, int, str]] | None = None,
            cannot_link: list[tuple[int, int]] | None = None, log: Log | None = None, seed: int = 0) -> Resolution:
    log = log or (lambda _m: None)
    timings: dict[str, float] = {}
    t = time.monotonic()
    n = len(df)
    pairs = block(df, spec)
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
