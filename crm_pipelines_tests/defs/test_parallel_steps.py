"""The steps that run in parallel (person records per source, lead scores per contact range) give
exactly what one pass over everything gives, whatever the number of ranges."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pandas as pd
import pytest

from crm_pipelines.core.golden.records import person_records
from crm_pipelines.core.golden.staging import load_person_records, read_raw
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.scoring.leads import build_lead_scores, plan_scoring
from crm_pipelines.core.scoring.rules import load_scoring_rules
from crm_pipelines.core.sources.roles import PERSON_SOURCES
from crm_pipelines.definitions import build_defs
from crm_pipelines_tests.defs.test_golden import run_golden
from crm_pipelines_tests.defs.test_sources import run_range, settings_for

NOW = datetime(2026, 11, 20, 5, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_landing):
    root, manifest = demo_landing
    tmp = tmp_path_factory.mktemp("parallel")
    settings = settings_for(tmp, root)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        result = run_golden(defs, instance)
        steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    return Warehouse.for_url(settings.default_warehouse_url), settings, steps


def _frame(df: pd.DataFrame, key: str) -> pd.DataFrame:
    df = df.sort_values(key).reset_index(drop=True)
    return df.astype(object).where(df.notna(), None)


def test_person_records_cleaned_per_source_equal_one_pass_over_all_sources(built):
    wh, _settings, steps = built
    assert {f"staging__person_records.clean_person_source[{s}]" for s in PERSON_SOURCES} <= steps
    stored = load_person_records(wh)[["record_key", "email_norm", "phone_e164", "first_kp", "last_kp", "org_key",
                                        "postal_code", "leitregion"]]
    at_once = person_records(read_raw(wh, PERSON_SOURCES))[list(stored.columns)]
    pd.testing.assert_frame_equal(_frame(stored, "record_key"), _frame(at_once, "record_key"))


@pytest.mark.parametrize("ranges", [2, 7])
def test_lead_scores_per_contact_range_equal_one_range(built, ranges):
    wh, settings, _steps = built
    rules = load_scoring_rules(settings.config_dir / "scoring.yaml")
    columns = "golden_id, score, stage, explanation, mql_at, sql_at, sql_since"
    build_lead_scores(wh, rules, "one", NOW, ranges=1)
    one = _frame(wh.read_raw_sql(f"SELECT {columns} FROM marts.lead_scores"), "golden_id")
    wh.engine.dispose()
    build_lead_scores(wh, rules, "many", NOW, ranges=ranges)
    many = _frame(wh.read_raw_sql(f"SELECT {columns} FROM marts.lead_scores"), "golden_id")
    assert len(one) > 100 and (one["score"].astype(float) > 0).sum() > 10
    pd.testing.assert_frame_equal(one, many)
    plan = plan_scoring(wh, ranges, NOW)
    assert len(plan.ranges) == ranges
    sizes = [len(e) for e in plan.events]
    assert sum(sizes) > 0 and plan.ranges[0][0] is None and plan.ranges[-1][1] is None
    # The ranges tile the IDs: each upper bound is the next range's lower bound.
    assert all(plan.ranges[k][1] == plan.ranges[k + 1][0] for k in range(ranges - 1))
