"""Lead scoring rules one by one, the territories, and the YAML validation."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.scoring.handoff import load_territories
from crm_pipelines.core.scoring.rules import attribute_events, load_scoring_rules, score_contacts, update_stage_times
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

RULES = load_scoring_rules(DEFAULT_CONFIG_DIR / "scoring.yaml")
NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def contacts(**cols) -> pd.DataFrame:
    base = {"golden_id": ["GC-1"], "email": ["j.weiss@beispiel-gmbh.de"], "job_title": [None], "postal_code": ["01067"],
            "account_id": [None], "email_consent": [None], "erp_customer_number": [None]}
    base.update({k: [v] for k, v in cols.items()})
    return pd.DataFrame(base)


def events(*rows) -> pd.DataFrame:
    """rows: (event_type, days ago, url)."""
    return pd.DataFrame([{"golden_id": "GC-1", "event_type": t, "occurred_at": NOW - timedelta(days=d), "url": u}
                         for t, d, u in rows], columns=["golden_id", "event_type", "occurred_at", "url"])


NO_ACCOUNTS = pd.DataFrame(columns=["golden_id", "industry", "employee_count"])


def score(evts, c=None, accounts=NO_ACCOUNTS):
    r = score_contacts(evts, c if c is not None else contacts(), accounts, RULES, NOW)
    row = r.scores.iloc[0]
    return float(row["score"]), row["stage"], {k: (p, e) for k, p, e in json.loads(row["explanation"])}, r


def test_a_fresh_pricing_page_view_counts_in_full_and_decays_by_its_half_life():
    assert score(events(("pricing_page", 0, "https://x.de/preise")))[0] == 15.0
    # 21 days is one half-life of the pricing rule: half the points.
    assert score(events(("pricing_page", 21, "https://x.de/preise")))[0] == 7.5
    assert score(events(("pricing_page", 42, "https://x.de/preise")))[0] == 3.8


def test_url_patterns_and_event_types_select_the_rule():
    assert score(events(("page_view", 0, "https://x.de/produkte/antriebe")))[2] == {"product_pages": (3.0, 1)}
    assert score(events(("page_view", 0, "https://x.de/pricing")))[2] == {"pricing_page": (15.0, 1)}
    assert score(events(("page_view", 0, "https://x.de/blog/preise-2025")))[0] == 0  # /preise must be a path segment
    assert score(events(("demo_video", 0, None)))[2] == {"demo_video": (12.0, 1)}
    assert score(events(("whitepaper_download", 0, None)))[2] == {"whitepaper": (15.0, 1)}
    assert score(events(("webinar_attended", 0, None)))[2] == {"webinar": (20.0, 1)}
    assert score(events(("email_click", 0, "https://x.de/news")))[2] == {"email_click": (3.0, 1)}
    assert score(events(("email_open", 0, None)))[0] == 0


def test_the_cap_counts_only_the_most_recent_events():
    many = events(*[("pricing_page", d, "https://x.de/preise") for d in (0, 0, 0, 0, 0, 30, 60)])
    s, _, reasons, _ = score(many)
    assert reasons["pricing_page"] == (45.0, 3) and s == 45.0


def test_fit_points_for_industry_size_region_and_job_title():
    accounts = pd.DataFrame({"golden_id": ["GA-1"], "industry": ["Maschinenbau"], "employee_count": [250]})
    s, _, reasons, result = score(events(), contacts(account_id="GA-1", postal_code="80331",
                                                     job_title="Leiter Einkauf"), accounts)
    every = dict(zip(result.contributions["rule"], result.contributions["points"]))
    assert every == {"fit:industry": 10.0, "fit:company_size": 10.0, "fit:region": 5.0, "fit:job_title": 10.0,
                     "fit:job_title2": 8.0}
    assert s == 43.0 and len(reasons) == 3  # the explanation keeps the three strongest
    big = pd.DataFrame({"golden_id": ["GA-1"], "industry": ["Chemie"], "employee_count": [800]})
    assert score(events(), contacts(account_id="GA-1"), big)[0] == 15.0  # only the first (largest) band


def test_negative_points_and_a_floor_at_zero():
    assert score(events(("pricing_page", 0, "https://x.de/preise")), contacts(email="max@gmx.de"))[0] == 5.0
    assert score(events(("webinar_attended", 0, None)), contacts(email="spy@wettbewerber-maschinen.de"))[0] == 0.0
    s, _, reasons, _ = score(events(("webinar_attended", 0, None), ("unsubscribe", 1, None)))
    assert reasons["negative:unsubscribed"] == (-20.0, 0) and s == 0.0
    assert score(events(("webinar_attended", 0, None)), contacts(email_consent="withdrawn"))[0] == 0.0
    assert score(events(("webinar_attended", 0, None), ("email_bounce", 0, None)))[0] == 5.0


def test_stages_and_the_explanation_names_the_strongest_reasons():
    evts = events(("webinar_attended", 0, None), ("webinar_attended", 1, None), ("pricing_page", 0, "https://x.de/preise"),
                  ("pricing_page", 0, "https://x.de/preise"), ("email_click", 0, "https://x.de/n"))
    s, stage, reasons, result = score(evts)
    assert s >= RULES.sql and stage == "sql"
    explanation = json.loads(result.scores["explanation"].iloc[0])
    assert [e[0] for e in explanation] == ["webinar", "pricing_page", "email_click"]
    assert score(events(("webinar_attended", 0, None), ("whitepaper_download", 0, None),
                        ("demo_video", 0, None)))[1] == "mql"


def test_stage_times_are_kept_and_a_new_crossing_gets_a_new_sql_since():
    first = pd.DataFrame({"golden_id": ["GC-1"], "score": [80.0], "stage": ["sql"], "explanation": ["[]"]})
    t1 = update_stage_times(first, pd.DataFrame(), NOW)
    assert t1.loc[0, "sql_since"] == t1.loc[0, "sql_at"] == t1.loc[0, "mql_at"] == pd.Timestamp(NOW)
    later = NOW + timedelta(days=1)
    t2 = update_stage_times(first, t1, later)
    assert t2.loc[0, "sql_since"] == pd.Timestamp(NOW)  # still the same crossing
    dropped = update_stage_times(first.assign(stage="mql", score=50.0), t2, later)
    assert pd.isna(dropped.loc[0, "sql_since"]) and dropped.loc[0, "sql_at"] == pd.Timestamp(NOW)
    again = update_stage_times(first, dropped, later + timedelta(days=3))
    assert again.loc[0, "sql_since"] == pd.Timestamp(later + timedelta(days=3))


def test_events_are_attributed_by_email_crm_id_and_a_stitched_anonymous_id():
    ev = pd.DataFrame({"email": ["A@x.de", None, None, None], "crm_contact_id": [None, "77", None, None],
                       "anonymous_id": ["anon-1", "anon-2", "anon-1", "anon-9"]})
    got = attribute_events(ev, {"a@x.de": "GC-1"}, {"77": "GC-2"})
    assert got.tolist() == ["GC-1", "GC-2", "GC-1", None]


def test_invalid_scoring_rules_name_the_file_and_key(tmp_path):
    bad = (DEFAULT_CONFIG_DIR / "scoring.yaml").read_text(encoding="utf-8").replace("cap: 3", "cap: drei", 1)
    path = tmp_path / "scoring.yaml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_scoring_rules(path)
    assert "scoring.yaml" in str(err.value) and "behaviour.pricing_page.cap" in str(err.value)
    path.write_text((DEFAULT_CONFIG_DIR / "scoring.yaml").read_text(encoding="utf-8").replace(
        "event_types: [demo_video]", "event_types: [hover]"), encoding="utf-8")
    with pytest.raises(ConfigError, match="behaviour.demo_video.event_types"):
        load_scoring_rules(path)


def test_territory_rules_capacity_and_round_robin(tmp_path):
    t = load_territories(DEFAULT_CONFIG_DIR / "territories.yaml")
    assert t.team_for("80331", "Maschinenbau").name == "sued"
    assert t.team_for("80331", "Medizintechnik").name == "medizintechnik"  # industry first
    assert t.team_for("45127", None).name == "west" and t.team_for("01067", None).name == "nord_ost"
    assert t.team_for(None, None).name == "nord_ost"  # the catch-all
    # Round robin among equals, in the order listed; the one with fewer open hand-offs first.
    assert t.assign("80331", None, {}, {})[1].id == "90011"
    assert t.assign("80331", None, {"90011": 1}, {"90011": 1})[1].id == "90012"
    assert t.assign("80331", None, {"90011": 1, "90012": 1}, {"90011": 5, "90012": 1})[1].id == "90012"
    # Everyone at capacity: the team lead takes it.
    assert t.assign("80331", None, {"90011": 25, "90012": 25}, {})[1].id == "90001"
    ranges = tmp_path / "territories.yaml"
    ranges.write_text((DEFAULT_CONFIG_DIR / "territories.yaml").read_text(encoding="utf-8").replace(
        'plz: ["0", "1", "2", "3"]', 'plz: ["01000-09999"]'), encoding="utf-8")
    t2 = load_territories(ranges)
    assert t2.team_for("01067", None).name == "nord_ost" and t2.team_for("10115", None).name == "nord_ost"
    ranges.write_text((DEFAULT_CONFIG_DIR / "territories.yaml").read_text(encoding="utf-8").replace(
        "team: west,", "team: westen,"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules\[2\].team"):
        load_territories(ranges)


def test_stage_times_read_back_in_whole_seconds_still_take_a_new_crossing():
    first = pd.DataFrame({"golden_id": ["GC-1", "GC-2"], "score": [80.0, 10.0], "stage": ["sql", "lead"],
                          "explanation": ["[]", "[]"]})
    stored = update_stage_times(first, pd.DataFrame(), NOW)
    for col in ("mql_at", "sql_at", "sql_since"):
        stored[col] = stored[col].astype("datetime64[s, UTC]")  # what SQLite hands back
    later = NOW + timedelta(days=1, microseconds=123)
    again = update_stage_times(first.assign(stage=["sql", "sql"], score=[80.0, 75.0]), stored, later)
    assert again.loc[1, "sql_since"] == pd.Timestamp(later)
