"""Attribution models on journeys small enough to compute by hand: every model's credits sum to the revenue it
credits, the position-based weights and HubSpot's rules, time decay, the exact Markov removal effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crm_pipelines.core.reporting.attribution import MODELS, attribute, removal_effects

DAY0 = pd.Timestamp("2026-10-01", tz="UTC")


def day(d: float) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=d)


def journeys():
    touches = pd.DataFrame([
        # J1: won for 1,000; lead created at the fair, deal created at the print mailing, closed on day 12.
        ("J1", "web", day(0), "herbst"), ("J1", "trade_fair", day(2), "sps"), ("J1", "email", day(5), "nurture"),
        ("J1", "print", day(8), "broschuere"), ("J1", "sales", day(10), "hand-off"),
        ("J1", "web", day(13), "herbst"),                       # after the close: not credited
        # J2: an order for 600 after a single newsletter touch, no lead or deal date.
        ("J2", "newsletter", day(1), "nl-10"),
        # J3: not converted.
        ("J3", "web", day(3), "herbst"), ("J3", "email", day(4), "nurture"),
    ], columns=["journey", "channel", "at", "campaign"])
    outcomes = pd.DataFrame([
        {"journey": "J1", "revenue": 1000.0, "closed_at": day(12), "lead_at": day(2), "deal_at": day(8)},
        {"journey": "J2", "revenue": 600.0, "closed_at": day(3), "lead_at": None, "deal_at": None},
        {"journey": "J3", "revenue": 0.0, "closed_at": None, "lead_at": day(4), "deal_at": None},
        {"journey": "J4", "revenue": 400.0, "closed_at": day(9), "lead_at": None, "deal_at": None},  # no touch
    ])
    return touches, outcomes


def credits(result) -> dict[str, dict[str, float]]:
    frame = result.credits.set_index("channel")
    return {m: {c: round(v, 6) for c, v in frame[m].items() if round(v, 6)} for m in frame.columns}


def test_every_rule_based_model_by_hand():
    touches, outcomes = journeys()
    result = attribute(touches, outcomes)
    c = credits(result)
    assert c["first_touch"] == {"web": 1000.0, "newsletter": 600.0}
    assert c["last_touch"] == {"sales": 1000.0, "newsletter": 600.0}
    assert c["linear"] == {"web": 200.0, "trade_fair": 200.0, "email": 200.0, "print": 200.0, "sales": 200.0,
                           "newsletter": 600.0}
    # U-shaped: first touch and lead creation are neighbours, nothing between: 40/40 scaled to 50/50.
    assert c["u_shaped"] == {"web": 500.0, "trade_fair": 500.0, "newsletter": 600.0}
    # W-shaped: 30 % first, lead creation, deal creation; 10 % to the e-mail between them; nothing to sales.
    assert c["w_shaped"] == {"web": 300.0, "trade_fair": 300.0, "print": 300.0, "email": 100.0, "newsletter": 600.0}
    # Full path: 22.5 % to first, lead, deal and closing touch; 10 % to the e-mail between.
    assert c["full_path"] == {"web": 225.0, "trade_fair": 225.0, "print": 225.0, "sales": 225.0, "email": 100.0,
                              "newsletter": 600.0}
    # Time decay, half-life 7 days before the close on day 12: ages 12, 10, 7, 4, 2 days.
    w = {ch: 2 ** (-age / 7) for ch, age in (("web", 12), ("trade_fair", 10), ("email", 7), ("print", 4), ("sales", 2))}
    total = sum(w.values())
    assert c["time_decay"] == {**{ch: round(1000 * v / total, 6) for ch, v in w.items()}, "newsletter": 600.0}
    # Each model credits exactly the revenue of the converted journeys that had a touch; J4's is unattributed.
    assert result.revenue == 1600.0 and result.unattributed == 400.0
    for model in MODELS:
        assert result.credits[model].sum() == pytest.approx(1600.0)
    assert (result.journeys, result.converted, result.touches) == (4, 3, 6)


def test_markov_removal_effects_computed_exactly():
    # Paths: A > B > conversion, A > null, B > conversion. P(conv) = 2/3 * 1/2 + 1/3 = 2/3.
    # Without A: 1/3 (removal effect 1/2); without B: 0 (removal effect 1). Shares 1/3 and 2/3.
    touches = pd.DataFrame({"journey": ["p1", "p1", "p2", "p3"], "channel": ["A", "B", "A", "B"],
                            "at": [day(0), day(1), day(0), day(0)]})
    outcomes = pd.DataFrame({"journey": ["p1", "p2", "p3"], "revenue": [300.0, 0.0, 600.0],
                             "closed_at": [day(2), None, day(2)]})
    result = attribute(touches, outcomes, models=("markov",))
    assert result.conversion_probability == pytest.approx(2 / 3)
    assert result.removal_effects == pytest.approx({"A": 0.5, "B": 1.0})
    assert credits(result)["markov"] == {"A": 300.0, "B": 600.0}
    # The same data, the same credit: no simulation, no seed.
    again = attribute(touches.sample(frac=1, random_state=3), outcomes, models=("markov",))
    assert credits(again) == credits(result)


def test_markov_on_the_full_example_sums_to_the_revenue_and_splits_channels_by_campaign():
    touches, outcomes = journeys()
    by_campaign = attribute(touches, outcomes, by=("channel", "campaign"))
    assert by_campaign.credits["markov"].sum() == pytest.approx(1600.0)
    per_channel = attribute(touches, outcomes).credits.set_index("channel")["markov"]
    summed = by_campaign.credits.groupby("channel")["markov"].sum()
    pd.testing.assert_series_equal(summed.sort_index(), per_channel.sort_index(), check_names=False)
    # Offline channels take part like online ones: print and the trade fair carry the won journey.
    effects = by_campaign.removal_effects
    assert effects["print"] > 0 and effects["trade_fair"] > 0
    # Campaigns inside a channel keep their own rows; rule-based credits land on the campaign of the touch.
    rows = by_campaign.credits.set_index(["channel", "campaign"])
    assert rows.loc[("web", "herbst"), "first_touch"] == 1000.0


def test_removal_effects_without_conversions_are_zero_and_unknown_models_are_refused():
    effects, p = removal_effects(np.array([0, 0]), np.array([0, 1]), np.array([False]), 2)
    assert p == 0.0 and effects == {0: 0.0, 1: 0.0}
    touches, outcomes = journeys()
    with pytest.raises(ValueError, match="unknown attribution model"):
        attribute(touches, outcomes, models=("last_click",))
