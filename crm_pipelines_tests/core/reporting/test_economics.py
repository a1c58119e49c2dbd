"""Revenue linking, journeys, campaign economics, the Rücklaufquote against the print holdout, the funnel table and
the reporting configuration, each computed by hand on a small example."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.platform.schema import PRINT_HOLDOUTS, PRINT_LISTS, PRINT_RECIPIENTS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.reporting.economics import economics, journeys, print_response, run_attribution
from crm_pipelines.core.reporting.funnel import funnel_table
from crm_pipelines.core.reporting.revenue import Deals, link_orders
from crm_pipelines.core.reporting.settings import load_costs, load_reporting_settings
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=timezone.utc)
SETTINGS = load_reporting_settings(DEFAULT_CONFIG_DIR / "reporting.yaml")


def day(n: float) -> pd.Timestamp:
    return pd.Timestamp(T0 + timedelta(days=n))


def won_deals(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["deal_id", "account_id", "close_date", "created_at", "erp_order_number"])


def test_orders_link_to_the_deal_that_names_them_else_the_nearest_close_of_their_account():
    won = won_deals([("D1", "A1", day(0), day(-30), "0005000001"), ("D2", "A1", day(40), day(10), None),
                     ("D3", "A2", day(0), day(-5), None)])
    orders = pd.DataFrame({"source_record_id": ["5000001", "0004000001", "0004000002", "0004000003", "0004000004",
                                                "0004000005"],
                           "account_id": ["A9", "A1", "A1", "A2", "A2", None],
                           "booked_at": [day(90), day(35), day(5), day(61), day(-14), day(0)]})
    linked = link_orders(orders, won, SETTINGS).set_index("source_record_id")
    # Named by the rep (zeros typed or not): the deal, whatever the account or date.
    assert tuple(linked.loc["5000001", ["deal_id", "link"]]) == ("D1", "crm")
    # Day 35 lies 35 days after D1's close and 5 days before D2's: the nearer close wins.
    assert tuple(linked.loc["0004000001", ["deal_id", "link"]]) == ("D2", "account_time")
    assert linked.loc["0004000002", "deal_id"] == "D1"
    # 61 days after the close is outside the 60-day window; 14 days before it is inside.
    assert tuple(linked.loc["0004000003", ["deal_id", "link"]]) == (None, "account")
    assert linked.loc["0004000004", "deal_id"] == "D3"
    assert linked.loc["0004000005", "link"] == "account"     # no account: no rule applies


def _world():
    """One won deal (10,000) of contacts c1 + c2 touched at a fair, on the web and by a print mailing; one order of
    account A2 without a deal (2,000) after c3's newsletter touch; c4 touched and never converted."""
    touches = pd.DataFrame([
        ("t1", "c1", "trade_fair", "Hannover Messe", None, day(-20)),
        ("t2", "c2", "web", "herbst-2026", "pricing_page", day(-15)),
        ("t3", "c1", "print", "herbst-bayern", None, day(-5)),
        ("t4", "c1", "web", "herbst-2026", "page_view", day(3)),           # after the close: not counted
        ("t5", "c3", "newsletter", "newsletter", None, day(-2)),
        ("t6", "c4", "web", None, "page_view", day(-1)),
    ], columns=["touch_key", "golden_id", "channel", "campaign", "detail", "at"])
    deals = Deals(pd.DataFrame({"deal_id": ["D1", "D2"], "is_closed": [True, True], "is_won": [True, False],
                                "close_date": [day(0), day(1)], "created_at": [day(-10), day(-3)],
                                "account_id": ["A1", "A1"], "contact_id": ["c1", "c1"]}),
                  pd.DataFrame({"deal_id": ["D1", "D1", "D2"], "golden_id": ["c1", "c2", "c1"]}))
    lines = pd.DataFrame({"kind": ["deal", "order"], "deal_id": ["D1", None], "order_id": [None, "O1"],
                          "account_id": ["A1", "A2"], "booked_at": [day(0), day(2)], "net": [10_000.0, 2_000.0]})
    contacts = pd.DataFrame({"golden_id": ["c1", "c2", "c3", "c4"], "account_id": ["A1", "A1", "A2", None],
                             "lead_at": [day(-25), day(-16), day(-30), day(-2)]})
    return touches, deals, lines, contacts


def test_a_print_mailing_and_a_trade_fair_earn_credit_and_every_model_credits_exactly_the_revenue():
    j = journeys(*_world(), SETTINGS)
    by = j.outcomes.set_index("journey")
    assert by.loc["deal:D1", "revenue"] == 10_000 and by.loc["deal:D2", "revenue"] == 0
    assert by.loc["order:O1", "revenue"] == 2_000
    assert set(j.touches.loc[j.touches["journey"] == "contact:c4", "touch_key"]) == {"t6"}
    result = run_attribution(j, SETTINGS)
    credits = result.credits.set_index("channel")
    assert result.revenue == 12_000
    for model in SETTINGS.models:
        assert credits[model].sum() == pytest.approx(12_000), model
    # Deal D1's counted touches: fair (first, lead creation of c1), web (c2), print (last before the close).
    assert credits.loc["trade_fair", "first_touch"] == pytest.approx(10_000)
    assert credits.loc["print", "last_touch"] == pytest.approx(10_000)
    assert credits.loc["print", "linear"] == pytest.approx(10_000 / 3)
    assert credits.loc["trade_fair", "linear"] == pytest.approx(10_000 / 3)
    assert credits.loc["newsletter", "linear"] == pytest.approx(2_000)       # the repeat order's only touch
    # Position-based models credit the print mailing where it stands: the last touch before the close.
    for model in ("last_touch", "linear", "time_decay", "full_path", "markov"):
        assert credits.loc["print", model] > 0, model
    for model in ("first_touch", "linear", "time_decay", "u_shaped", "w_shaped", "full_path", "markov"):
        assert credits.loc["trade_fair", model] > 0, model
    assert credits.loc["print", "u_shaped"] == 0    # after the lead creation and not first: U gives it nothing

def test_romi_and_cac_come_from_the_cost_file(tmp_path):
    costs_file = tmp_path / "costs.yaml"
    costs_file.write_text("currency: CHF\ncosts:\n"
                          "  - {campaign: herbst-bayern, channel: print, period: 2026-09, amount: 1000}\n"
                          "  - {campaign: herbst-bayern, channel: print, period: 2026-10, amount: 500}\n"
                          "  - {campaign: Hannover Messe, channel: trade_fair, period: 2026-10, amount: 20000}\n"
                          "  - {campaign: vergessen, channel: web, period: 2026-10, amount: 10}\n", encoding="utf-8")
    costs = load_costs(costs_file, SETTINGS)
    assert costs["cost"].sum() == pytest.approx(21_510 * 1.06)      # CHF into EUR at the configured rate
    j = journeys(*_world(), SETTINGS)
    e = economics(j, costs, SETTINGS, pd.DataFrame({"golden_id": ["c1", "c2", "c2"],
                                                    "segment": ["hot_leads", "hot_leads", "web_visitors"]}))
    camp = e.campaigns.set_index("campaign")
    # W-shaped on D1: fair 30 % first + 30 % lead creation (c1's lead touch), print 30 % deal creation... computed by
    # the engine; ROMI and CAC must follow from its revenue and customers and the file's cost.
    for name, cost in (("herbst-bayern", 1_500 * 1.06), ("Hannover Messe", 20_000 * 1.06)):
        row = camp.loc[name]
        assert row["cost"] == pytest.approx(cost)
        assert row["romi"] == pytest.approx(round((row["revenue"] - cost) / cost, 4))
        if row["customers"] > 0:
            assert row["cac"] == pytest.approx(cost / row["customers"], rel=1e-3)   # customers shown to 3 places
        else:
            assert pd.isna(row["cac"])         # no customer credited: the acquisition cost is unknown, not 0
    assert camp.loc["Hannover Messe", "customers"] > 0 and camp.loc["herbst-bayern", "romi"] == -1.0
    assert camp["revenue"].sum() == pytest.approx(12_000)
    assert pd.isna(camp.loc["newsletter", "cost"]) and pd.isna(camp.loc["newsletter", "romi"])  # no cost: unknown
    # The newsletter touched only a repeat order: revenue, but no customer acquired; the won deal is one customer.
    assert camp.loc["newsletter", "revenue"] == pytest.approx(2_000) and camp.loc["newsletter", "customers"] == 0
    assert camp["customers"].sum() == pytest.approx(1.0, abs=1e-3)
    assert e.cost_without_touches == ["vergessen"]
    channels = e.channels.set_index("channel")
    assert channels.loc["print", "cost"] == pytest.approx(1_500 * 1.06)
    seg = e.segments.set_index("segment")
    assert seg.loc["hot_leads", "cost"] == pytest.approx(21_500 * 1.06)   # both campaigns touched only members
    assert seg.loc["hot_leads", "revenue"] == pytest.approx(10_000) and seg.loc["hot_leads", "customers"] == 1
    # W-shaped on D1: the fair (first touch and lead creation, 60 %, plus 2/3 of the 10 % between) and c2's web
    # visit (deal creation, 30 %, plus 1/3 of the 10 %); the print touch after the deal's creation gets nothing.
    # A segment holding only c2 earns c2's share, not the deal.
    assert seg.loc["web_visitors", "revenue"] == pytest.approx(10_000 / 3, abs=0.01)   # shown to the cent


def test_the_ruecklaufquote_is_measured_against_the_lists_holdout(sqlite_url):
    wh = Warehouse(sqlite_url)
    wh.ensure_tables([PRINT_LISTS, PRINT_RECIPIENTS, PRINT_HOLDOUTS])
    drop = T0
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(PRINT_LISTS).values(list_id="L1", campaign="herbst-bayern", run_id="r", created_at=drop,
                                                   folder="x", csv_sha256="a", rules_sha256="b", recipients=10,
                                                   status="released", released_at=drop))
        conn.execute(sa.insert(PRINT_RECIPIENTS), [{"list_id": "L1", "recipient_id": f"R{i}", "golden_id": f"m{i}",
                                                    "variant": "A"} for i in range(10)])
        conn.execute(sa.insert(PRINT_HOLDOUTS), [{"list_id": "L1", "golden_id": f"h{i}", "campaign": "herbst-bayern"}
                                                 for i in range(5)])
    touches = pd.DataFrame([
        ("a", "m0", "web_form", None, None, day(3)), ("b", "m1", "web", None, "pricing_page", day(10)),
        ("c", "m2", "trade_fair", None, None, day(59)), ("d", "m3", "web_form", None, None, day(61)),   # too late
        ("e", "m4", "web", None, "page_view", day(5)),                                                 # no response
        ("f", "m0", "web_form", None, None, day(4)),                                                   # counted once
        ("g", "h0", "web_form", None, None, day(8)), ("h", "h1", "web_form", None, None, day(-1)),     # before drop
    ], columns=["touch_key", "golden_id", "channel", "campaign", "detail", "at"])
    deals = Deals(pd.DataFrame({"deal_id": ["D1"], "created_at": [day(20)]}),
                  pd.DataFrame({"deal_id": ["D1"], "golden_id": ["m5"]}))
    lines = pd.DataFrame(columns=["kind", "account_id", "booked_at"])
    r = print_response(wh, touches, lines, deals, SETTINGS).iloc[0]
    assert (r["mailed"], r["mailed_responded"], r["holdout"], r["holdout_responded"]) == (10, 4, 5, 1)
    assert (r["response_rate"], r["holdout_rate"], r["uplift"]) == (0.4, 0.2, 0.2)


def test_the_funnel_counts_every_stage_reached_or_passed():
    facts = pd.DataFrame({
        "golden_id": ["a", "b", "c", "d", "e"],
        "lead_at": [day(0)] * 5,
        "mql_at": [day(2), day(3), pd.NaT, pd.NaT, day(1)],
        "sql_at": [day(4), pd.NaT, pd.NaT, pd.NaT, day(2)],
        "opportunity_at": [day(5), pd.NaT, day(6), pd.NaT, day(3)],   # c: a deal sales opened without our score
        "won_at": [day(10), pd.NaT, pd.NaT, pd.NaT, pd.NaT],
        "lost_at": [pd.NaT, pd.NaT, day(9), pd.NaT, pd.NaT],
        "month": ["2026-10"] * 4 + ["2026-11"], "source": ["web_form_leads"] * 3 + ["crm_contacts"] * 2,
        "campaign": ["(none)"] * 5, "territory": ["Süd"] * 5})
    t = funnel_table(facts).set_index(["dimension", "value"])
    total = t.loc[("all", "all")]
    assert [total[s] for s in ("lead", "mql", "sql", "opportunity", "closed_won", "closed_lost")] == [5, 4, 3, 3, 1, 1]
    assert total["mql_rate"] == 0.8 and total["sql_rate"] == 0.75 and total["won_rate"] == round(1 / 3, 4)
    assert total["win_rate"] == 0.5
    assert total["days_to_mql"] == 2.0             # median of 2, 3, 1
    assert t.loc[("source", "web_form_leads"), "opportunity"] == 2
    assert t.loc[("month", "2026-11"), "sql"] == 1


@pytest.mark.parametrize("text, key", [
    ("attribution: {models: [first_touch, shapley], economics_model: first_touch}\nrevenue: {reporting_currency: EUR, "
     "exchange_rates: {EUR: 1}}\n", "attribution.models[1]"),
    ("attribution: {models: [linear], economics_model: markov}\nrevenue: {reporting_currency: EUR, exchange_rates: "
     "{EUR: 1}}\n", "attribution.economics_model"),
    ("attribution: {models: [linear], economics_model: linear}\nrevenue: {reporting_currency: EUR, exchange_rates: "
     "{EUR: 1.1}}\n", "revenue.exchange_rates.EUR"),
])
def test_reporting_settings_errors_name_file_and_key(tmp_path, text, key):
    path = tmp_path / "reporting.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_reporting_settings(path)
    assert err.value.key == key and "reporting.yaml" in str(err.value)


def test_a_cost_line_with_a_bad_period_names_its_line(tmp_path):
    path = tmp_path / "costs.yaml"
    path.write_text("currency: EUR\ncosts:\n  - {campaign: a, channel: print, period: 2026-11, amount: 1}\n"
                    "  - {campaign: b, channel: print, period: November, amount: 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_costs(path, SETTINGS)
    assert err.value.key == "costs[1].period" and err.value.line == 4


def test_lead_response_time_is_reported_per_dimension_value():
    never = pd.to_datetime(pd.Series([pd.NaT] * 3), utc=True)
    facts = pd.DataFrame({"golden_id": ["a", "b", "c"], "lead_at": [day(0)] * 3, "mql_at": [day(1)] * 3,
                          "sql_at": [day(1)] * 3, "opportunity_at": never, "won_at": never,
                          "lost_at": never, "month": ["2026-10"] * 3,
                          "source": ["trade_fair_leads", "trade_fair_leads", "web_form_leads"],
                          "campaign": ["(none)"] * 3, "territory": ["Nord", "Süd", "Süd"]})
    responses = pd.DataFrame({"golden_id": ["a", "a", "b", "c"], "minutes": [10.0, 30.0, 50.0, 200.0]})
    t = funnel_table(facts, responses=responses).set_index(["dimension", "value"])["median_response_minutes"]
    assert t[("all", "all")] == 40.0
    assert t[("source", "trade_fair_leads")] == 30.0 and t[("source", "web_form_leads")] == 200.0
    assert t[("territory", "Süd")] == 125.0 and t[("territory", "Nord")] == 20.0
