"""Attribution: which touches earned the revenue of a won deal or an order.

A **journey** is what led to one outcome (a closed-won deal, an order not linked to a deal, or nothing yet): its
touches on every channel the project knows (web, forms, trade fairs, newsletters and e-mail journeys, print
mailings, service, sales) in time order, and its milestones: the lead's creation, the deal's creation, the close.
Only touches up to the close count for a won journey.

Rule-based models give each touch of a converted journey a share of its revenue (the shares of a journey sum to 1):

- ``first_touch``, ``last_touch``: all of it to the first (last) touch;
- ``linear``: the same share to every touch;
- ``time_decay``: a share halving with every ``half_life_days`` (HubSpot: 7) the touch lies before the close;
- ``u_shaped``: 40 % first touch, 40 % the lead-creation touch, 20 % spread over the touches between them;
- ``w_shaped``: 30 % first, 30 % lead creation, 30 % deal creation, 10 % over the touches between;
- ``full_path``: 22.5 % each to first, lead creation, deal creation and closing touch, 10 % over those between.

The milestone touch is the last touch at or before the milestone (the lead's creation, the deal's); a missing
milestone falls back to the one before it (no lead date: the first touch; no deal: the lead-creation touch), and
milestones never go backwards. Milestones that fall on the same touch add up; when no touch lies between them, the
middle share goes to the milestone touches in proportion to their weights; a single touch gets everything.

The data-driven model ``markov`` (Anderl et al. 2016) takes every journey, converted or not, as a path through a
first-order Markov chain (start, channels, conversion, null). A channel's **removal effect** is the relative drop
of the probability to reach conversion from the start when every transition into the channel goes to null
instead; the revenue is shared in proportion to the removal effects. The probabilities are computed exactly: the
absorption probabilities of the absorbing chain solve ``(I - Q) x = r`` (one small linear system per channel),
so the same data gives the same credit on every run, unlike the simulation of the popular R package.

Everything is vectorised over arrays of integer codes; a model's shares are turned into credits per group (channel,
or channel and campaign, ...) at once, so memory holds one model's shares at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RULE_MODELS = ("first_touch", "last_touch", "linear", "time_decay", "u_shaped", "w_shaped", "full_path")
MODELS = (*RULE_MODELS, "markov")
# (first, lead creation, deal creation, close) weights and the middle share of the position-based models.
POSITION_WEIGHTS = {
    "u_shaped": ((0.4, 0.4, 0.0, 0.0), 0.2),
    "w_shaped": ((0.3, 0.3, 0.3, 0.0), 0.1),
    "full_path": ((0.225, 0.225, 0.225, 0.225), 0.1),
}


@dataclass
class Attribution:
    credits: pd.DataFrame                    # one row per group (the ``by`` columns), one column per model: revenue
    revenue: float                           # revenue of the converted journeys with at least one touch
    unattributed: float                      # revenue of converted journeys without any touch
    journeys: int
    converted: int
    touches: int
    removal_effects: dict[str, float] = field(default_factory=dict)   # channel -> Markov removal effect
    conversion_probability: float = 0.0      # Markov: from the start to conversion, with every channel


def attribute(touches: pd.DataFrame, outcomes: pd.DataFrame, by: tuple[str, ...] = ("channel",),
              models: tuple[str, ...] = MODELS, half_life_days: float = 7.0) -> Attribution:
    """``touches``: ``journey``, ``channel``, ``at`` (and the other ``by`` columns); ``outcomes``: one row per
    journey with ``journey``, ``revenue`` (0 or missing: not converted), ``closed_at``, ``lead_at``, ``deal_at``
    (missing allowed). Journeys without an outcome row count as not converted."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown attribution model(s) {unknown}; models: {', '.join(MODELS)}")
    prepared = _prepare(touches, outcomes, by)
    result = pd.DataFrame(index=prepared.group_index)
    for model in models:
        if model == "markov":
            continue
        shares = _shares(model, prepared, half_life_days)
        credit = shares * prepared.revenue_of_touch
        result[model] = np.bincount(prepared.group, weights=credit, minlength=len(prepared.group_index))
    effects: dict[str, float] = {}
    p_conv = 0.0
    if "markov" in models:
        effects, p_conv = removal_effects(prepared.path_journey, prepared.path_channel, prepared.path_converted,
                                          len(prepared.channels))
        total = sum(effects.values())
        per_channel = np.array([effects.get(i, 0.0) for i in range(len(prepared.channels))])
        share = per_channel / total if total > 0 else np.zeros_like(per_channel)
        channel_credit = share * prepared.revenue
        # Within a channel, its groups (campaigns, say) share its credit as its touches of converted journeys do.
        within = np.bincount(prepared.group, minlength=len(prepared.group_index)).astype(np.float64)
        per_group_channel = prepared.group_channel
        channel_touches = np.bincount(per_group_channel, weights=within, minlength=len(prepared.channels))
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(channel_touches[per_group_channel] > 0, within / channel_touches[per_group_channel], 0.0)
        result["markov"] = channel_credit[per_group_channel] * frac
    credits = result.reset_index()
    for col in ("channel", *by):
        if col not in credits.columns:  # no touch counted: an empty table that still has the group columns
            credits.insert(0, col, pd.Series(dtype=object))
    credits = credits[[*dict.fromkeys(("channel", *by)), *[c for c in credits.columns if c not in ("channel", *by)]]]
    return Attribution(credits, float(prepared.revenue), float(prepared.unattributed),
                       prepared.n_journeys, prepared.n_converted, prepared.n_touches,
                       {str(prepared.channels[k]): float(v) for k, v in effects.items()}, float(p_conv))


# ---------------------------------------------------------------------------- preparation

@dataclass
class _Prepared:
    journey: np.ndarray            # per counted touch (of converted journeys, up to the close): journey code
    pos: np.ndarray                # position within its journey
    n: np.ndarray                  # per journey code: counted touches
    at: np.ndarray                 # per counted touch: epoch seconds
    close_at: np.ndarray           # per journey code: epoch seconds of the close
    milestones: np.ndarray         # per journey code: positions of (first, lead, deal, close), shape (J, 4)
    revenue_of_touch: np.ndarray   # per counted touch: its journey's revenue
    group: np.ndarray              # per counted touch: group code
    group_index: pd.Index | pd.MultiIndex
    group_channel: np.ndarray      # per group: channel code
    channels: np.ndarray
    path_journey: np.ndarray       # per touch of every journey (Markov paths), sorted: journey code
    path_channel: np.ndarray
    path_converted: np.ndarray     # per journey code of the paths: converted
    revenue: float
    unattributed: float
    n_journeys: int
    n_converted: int
    n_touches: int


_EPOCH = pd.Timestamp(0, tz="UTC")


def _epoch(values) -> np.ndarray:
    """Seconds since 1970 as floats, NaN where missing."""
    return (pd.Series(pd.to_datetime(values, utc=True)) - _EPOCH).dt.total_seconds().to_numpy(dtype=np.float64)


def _prepare(touches: pd.DataFrame, outcomes: pd.DataFrame, by: tuple[str, ...]) -> _Prepared:
    if "channel" not in by:
        by = ("channel", *by)
    missing = [c for c in ("journey", "at", *by) if c not in touches.columns]
    if missing:
        raise ValueError(f"touches lack the column(s) {missing}")
    out = outcomes.drop_duplicates("journey", keep="last")
    journey_codes, journeys = pd.factorize(pd.concat([touches["journey"], out["journey"]], ignore_index=True),
                                           sort=False)
    t_journey = journey_codes[: len(touches)]
    o_journey = journey_codes[len(touches):]
    n_j = len(journeys)
    revenue = np.zeros(n_j)
    revenue[o_journey] = pd.to_numeric(out["revenue"], errors="coerce").fillna(0.0).to_numpy()
    close_at = np.full(n_j, np.nan)
    lead_at = np.full(n_j, np.nan)
    deal_at = np.full(n_j, np.nan)
    for arr, col in ((close_at, "closed_at"), (lead_at, "lead_at"), (deal_at, "deal_at")):
        if col in out.columns:
            arr[o_journey] = _epoch(out[col])
    converted = revenue > 0
    at = _epoch(touches["at"])
    channel_codes, channels = pd.factorize(touches["channel"], sort=True)
    order = np.lexsort((at, t_journey))
    t_journey, at, channel_codes = t_journey[order], at[order], channel_codes[order]
    group_frame = touches[list(by)].iloc[order].reset_index(drop=True)

    # Markov paths: every journey's touches (a won journey's up to its close).
    close_of_touch = close_at[t_journey]
    in_window = ~(converted[t_journey] & ~np.isnan(close_of_touch) & (at > close_of_touch))
    path_journey, path_channel = t_journey[in_window], channel_codes[in_window]

    # Credited touches: converted journeys only, up to the close.
    keep = in_window & converted[t_journey]
    journey, at_k, groups = t_journey[keep], at[keep], group_frame[keep]
    n = np.bincount(journey, minlength=n_j)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    pos = np.arange(len(journey)) - starts[journey]
    credited = converted & (n > 0)
    unattributed = float(revenue[converted & (n == 0)].sum())
    # Close: the journey's close, or its last touch where the close date is missing.
    last_at = np.full(n_j, np.nan)
    if len(journey):
        last_at[journey[starts[credited] + n[credited] - 1]] = at_k[starts[credited] + n[credited] - 1]
    close_eff = np.where(np.isnan(close_at), last_at, close_at)
    milestones = np.zeros((n_j, 4), dtype=np.int64)
    lead_pos = _last_at_or_before(journey, at_k, lead_at, n_j)
    deal_pos = _last_at_or_before(journey, at_k, deal_at, n_j)
    lead_pos = np.where(lead_pos < 0, 0, lead_pos)
    deal_pos = np.maximum(np.where(deal_pos < 0, lead_pos, deal_pos), lead_pos)
    milestones[:, 1] = lead_pos
    milestones[:, 2] = deal_pos
    milestones[:, 3] = np.maximum(n - 1, deal_pos)
    if len(groups):
        g_codes, g_index = _group_codes(groups, by)
        names = g_index.get_level_values("channel") if isinstance(g_index, pd.MultiIndex) else g_index
        chan_of_group = pd.Index(channels).get_indexer(names)
    else:
        g_codes, g_index = np.zeros(0, dtype=np.int64), pd.Index([], name="channel")
        chan_of_group = np.zeros(0, dtype=np.int64)
    return _Prepared(journey, pos, n, at_k, close_eff, milestones, revenue[journey], g_codes, g_index,
                     chan_of_group, np.asarray(channels), path_journey, path_channel, converted,
                     float(revenue[credited].sum()), unattributed, n_j, int(converted.sum()), int(len(journey)))


def _group_codes(groups: pd.DataFrame, by: tuple[str, ...]):
    if len(by) == 1:
        codes, uniques = pd.factorize(groups[by[0]], sort=True)
        return codes, pd.Index(uniques, name=by[0])
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(groups[list(by)]), sort=True)
    return codes, pd.MultiIndex.from_tuples(list(uniques), names=list(by))


def _last_at_or_before(journey: np.ndarray, at: np.ndarray, moment: np.ndarray, n_j: int) -> np.ndarray:
    """Per journey: the position of its last touch at or before ``moment`` (-1: none, or no moment)."""
    m = moment[journey]
    hit = ~np.isnan(m) & (at <= m)
    return np.bincount(journey, weights=hit.astype(np.float64), minlength=n_j).astype(np.int64) - 1


# ---------------------------------------------------------------------------- rule-based models

def _shares(model: str, p: _Prepared, half_life_days: float) -> np.ndarray:
    j, pos, n = p.journey, p.pos, p.n
    if model == "first_touch":
        return (pos == 0).astype(np.float64)
    if model == "last_touch":
        return (pos == n[j] - 1).astype(np.float64)
    if model == "linear":
        return 1.0 / n[j]
    if model == "time_decay":
        age_days = np.maximum(p.close_at[j] - p.at, 0.0) / 86400.0
        w = np.exp2(-age_days / half_life_days)
        return w / np.bincount(j, weights=w, minlength=len(n))[j]
    weights, middle = POSITION_WEIGHTS[model]
    ms = p.milestones[j]                                    # (touches, 4)
    share = np.zeros(len(j))
    is_milestone = np.zeros(len(j), dtype=bool)
    for k, w in enumerate(weights):
        if w == 0:
            continue
        hit = pos == ms[:, k]
        share += w * hit
        is_milestone |= hit
    last = ms[:, [k for k, w in enumerate(weights) if w > 0][-1]]
    mid = (pos > 0) & (pos < last) & ~is_milestone
    n_mid = np.bincount(j, weights=mid.astype(np.float64), minlength=len(n))
    share += np.where(mid, middle / np.maximum(n_mid[j], 1.0), 0.0)
    # No touch between the milestones: their weights are scaled up to the whole journey.
    total = np.bincount(j, weights=share, minlength=len(n))
    return share / total[j]


# ---------------------------------------------------------------------------- Markov

def removal_effects(path_journey: np.ndarray, path_channel: np.ndarray, converted: np.ndarray,
                    n_channels: int) -> tuple[dict[int, float], float]:
    """Removal effect per channel code and the conversion probability of the full chain. States: 0 start,
    1..C channels, C+1 conversion, C+2 null. ``path_*`` sorted by journey and time; ``converted`` per journey."""
    C = n_channels
    start, conv, null = 0, C + 1, C + 2
    size = C + 3
    if len(path_journey) == 0:
        return {}, 0.0
    state = path_channel.astype(np.int64) + 1
    first = np.ones(len(path_journey), dtype=bool)
    first[1:] = path_journey[1:] != path_journey[:-1]
    last = np.ones(len(path_journey), dtype=bool)
    last[:-1] = path_journey[1:] != path_journey[:-1]
    src = np.concatenate([np.full(int(first.sum()), start), state[:-1][~last[:-1]], state[last]])
    dst = np.concatenate([state[first], state[1:][~first[1:]],
                          np.where(converted[path_journey[last]], conv, null)])
    counts = np.bincount(src * size + dst, minlength=size * size).reshape(size, size).astype(np.float64)
    out = counts.sum(axis=1, keepdims=True)
    P = np.divide(counts, out, out=np.zeros_like(counts), where=out > 0)
    transient = np.arange(0, C + 1)
    Q = P[np.ix_(transient, transient)]
    r = P[transient, conv]
    base = _absorb(Q, r, None)
    if base <= 0:
        return {k: 0.0 for k in range(C)}, 0.0
    effects = {}
    for k in range(C):
        effects[k] = max(0.0, 1.0 - _absorb(Q, r, k + 1) / base)
    return effects, base


def _absorb(Q: np.ndarray, r: np.ndarray, removed: int | None) -> float:
    """Probability to be absorbed in conversion from the start; a removed state leads to null."""
    A = np.eye(len(Q)) - Q
    b = r.copy()
    if removed is not None:
        A[removed, :] = 0.0
        A[removed, removed] = 1.0
        b[removed] = 0.0
    # States never left (no outgoing transitions counted) have a zero row in Q: x = r = 0 there, as it should.
    x = np.linalg.lstsq(A, b, rcond=None)[0] if np.linalg.matrix_rank(A) < len(A) else np.linalg.solve(A, b)
    return float(x[0])
