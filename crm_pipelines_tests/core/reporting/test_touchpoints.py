"""The touchpoint table: every channel's touches of known contacts, with campaign and moment; what is no touch
(bounces, unsubscribes, anonymous visits, unreleased print lists) stays out; offline channels feed attribution."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import ALERT_LEDGER, PERSON_RECORDS, PRINT_LISTS, PRINT_RECIPIENTS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.reporting.attribution import attribute
from crm_pipelines.core.reporting.touchpoints import build_touchpoints
from crm_pipelines_tests.core.activation.world import NOW, _raw, add_contacts, add_events, gid


def test_every_channel_lands_in_one_table_and_feeds_attribution(sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2])
    with wh.engine.begin() as conn:
        # Contact 1's web form (from add_contacts) was submitted 30 days ago; the same person scanned at a fair.
        conn.execute(sa.update(PERSON_RECORDS).values(record_ts=NOW - timedelta(days=30)))
    _raw(wh, "web_form_leads", "contact", [{"source_record_id": "1", "campaign": "herbst-2026"},
                                           {"source_record_id": "2", "campaign": None}], NOW)
    add_events(wh, [(1, "pricing_page", NOW - timedelta(days=20)), (1, "email_click", NOW - timedelta(days=10)),
                    (2, "page_view", NOW - timedelta(days=5))])
    add_events(wh, [(1, "email_open", NOW - timedelta(days=9)), (2, "email_hard_bounce", NOW - timedelta(days=8))],
               source="email_engagement")
    # An anonymous visit (nobody known) is no touch.
    _raw(wh, "behaviour_events", "behaviour_event", [{"source_record_id": "anon1", "event_type": "page_view",
                                                      "occurred_at": NOW, "anonymous_id": "a-1"}], NOW)
    wh.ensure_tables([PRINT_LISTS, PRINT_RECIPIENTS, ALERT_LEDGER])
    with wh.engine.begin() as conn:
        for lid, status, released in (("L1", "released", NOW - timedelta(days=7)), ("L2", "built", None)):
            conn.execute(sa.insert(PRINT_LISTS).values(list_id=lid, campaign="herbst-bayern", run_id="r", created_at=NOW,
                                                       folder="x", csv_sha256="a", rules_sha256="b", recipients=1,
                                                       status=status, released_at=released))
            conn.execute(sa.insert(PRINT_RECIPIENTS).values(list_id=lid, recipient_id="R1", golden_id=gid(1), variant="A"))
        conn.execute(sa.insert(ALERT_LEDGER).values(alert_key="sql:1", kind="sql_crossing", golden_id=gid(1),
                                                    created_at=NOW - timedelta(days=3), status="notified"))
    touches = build_touchpoints(wh)
    mine = touches[touches["golden_id"] == gid(1)]
    assert list(mine["channel"]) == ["web_form", "web", "email", "email", "print", "sales"]   # oldest first
    assert mine.iloc[0]["campaign"] == "herbst-2026" and mine.iloc[4]["campaign"] == "herbst-bayern"
    assert list(touches[touches["golden_id"] == gid(2)]["channel"]) == ["web_form", "web"]   # the bounce is none
    assert touches["touch_key"].is_unique and len(touches) == 8
    assert build_touchpoints(wh).equals(touches)        # the same table on every build

    # Contact 1 orders for 5,000 today: the print mailing and the sales hand-off are credited like the web.
    outcomes = pd.DataFrame({"journey": [gid(1)], "revenue": [5000.0], "closed_at": [NOW],
                             "lead_at": [NOW - timedelta(days=30)], "deal_at": [NOW - timedelta(days=3)]})
    credits = attribute(touches.rename(columns={"golden_id": "journey"}), outcomes).credits.set_index("channel")
    assert credits.loc["print", "linear"] == pytest.approx(5000.0 / 6) and credits.loc["sales", "last_touch"] == 5000.0
    assert credits.loc["web_form", "u_shaped"] == 5000.0           # first touch is the lead's creation
    assert credits.loc["sales", "w_shaped"] == pytest.approx(1500.0)             # the deal's creation
