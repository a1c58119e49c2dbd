"""Engagement coming back from the marketing tool feeds the lead score like the website's events."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from crm_pipelines.core.platform.schema import LEAD_SCORES
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.scoring.leads import build_lead_scores
from crm_pipelines.core.scoring.rules import load_scoring_rules
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

from .world import NOW, add_contacts, add_events, gid

RULES = load_scoring_rules(DEFAULT_CONFIG_DIR / "scoring.yaml")


def test_opens_and_clicks_from_the_tool_raise_the_score_and_an_unsubscribe_lowers_it(sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2, 3])
    add_events(wh, [(1, "email_open", NOW - timedelta(days=1)), (1, "email_click", NOW - timedelta(days=1))],
               source="email_engagement")
    add_events(wh, [(3, "unsubscribe", NOW - timedelta(days=1))], source="email_engagement")
    build_lead_scores(wh, RULES, "r", now=NOW)
    scores = dict(wh.read_select(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.score)).values)
    assert scores[gid(1)] > scores[gid(2)] > scores[gid(3)]
    explained = wh.scalar(sa.select(LEAD_SCORES.c.explanation).where(LEAD_SCORES.c.golden_id == gid(1)))
    assert "email_click" in explained
