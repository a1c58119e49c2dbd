"""Segments: configuration errors name file and key; conditions decide membership; the incremental update
changes only the contacts new data names, and agrees with a full recomputation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm_pipelines.core.activation.membership import affected_since, current_members, update_segments
from crm_pipelines.core.activation.segments import load_segment, load_segments
from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.platform.schema import SEGMENT_HISTORY
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

from .world import NOW, add_contacts, add_events, add_orders, gid, set_contact


def _segment(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\ndescription: test\n{body}", encoding="utf-8")
    return p


def test_the_shipped_segments_load():
    segments = load_segments(DEFAULT_CONFIG_DIR / "segments")
    assert {"hot_leads", "new_subscribers", "inactive_contacts", "churn_risk"} <= set(segments)
    assert segments["hot_leads"].destinations == {"brevo": "Segment: Heiße Leads", "crm": "crm_pipelines: Heiße Leads"}


@pytest.mark.parametrize("body, key, message", [
    ("conditions:\n  - {field: lead.stag, in: [sql]}\n  - {feild: x}\n", "conditions[1]", "exactly one of"),
    ("conditions:\n  - {field: person.stage, in: [sql]}\n", "conditions[0].field", "namespace"),
    ("conditions:\n  - {events: {types: [pricing_pag], within_days: 3, at_least: 1}}\n", "conditions[0].events.types[0]",
     "unknown event type"),
    ("conditions:\n  - {orders: {within_days: 3}}\n", "conditions[0].orders", "at_least or at_most"),
    ("conditions:\n  - {consent: fax}\n", "conditions[0].consent", "one of email"),
    ("conditions:\n  - {consent: email}\ndestinations: {mailchimp: {list: x}}\n", "destinations.mailchimp",
     "unknown destination"),
])
def test_segment_errors_name_file_key_and_line(tmp_path, body, key, message):
    path = _segment(tmp_path, "seg", body)
    with pytest.raises(ConfigError) as exc:
        load_segment(path)
    assert exc.value.key == key and message in exc.value.message and exc.value.file == str(path)
    assert exc.value.line is not None


def test_conditions_over_profile_behaviour_orders_and_consent(tmp_path, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2, 3, 4], erp={3: "C-3"})
    add_contacts(wh, [5], consent="withdrawn")
    set_contact(wh, 2, stage="sql")
    add_events(wh, [(1, "pricing_page", NOW - timedelta(days=2)), (1, "pricing_page", NOW - timedelta(days=3)),
                    (4, "pricing_page", NOW - timedelta(days=30)), (5, "pricing_page", NOW - timedelta(days=1))])
    add_orders(wh, [("C-3", NOW - timedelta(days=100))])
    segs = {
        "engaged": load_segment(_segment(tmp_path, "engaged", "conditions:\n  - {consent: email}\n"
                                         "  - {events: {types: [pricing_page], within_days: 7, at_least: 2}}\n")),
        "sql_or_customer": load_segment(_segment(tmp_path, "sql_or_customer", "match: any\nconditions:\n"
                                                 "  - {field: lead.stage, equals: sql}\n"
                                                 "  - {orders: {within_days: 365, at_least: 1}}\n")),
    }
    result = update_segments(wh, segs, "run-1", now=NOW)
    assert set(current_members(wh, "engaged")["golden_id"]) == {gid(1)}  # 4: too long ago; 5: no consent
    assert set(current_members(wh, "sql_or_customer")["golden_id"]) == {gid(2), gid(3)}
    assert result.entered == {"engaged": 1, "sql_or_customer": 2} and result.mode == "full"


def test_incremental_update_touches_only_the_named_contacts_and_keeps_history(tmp_path, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 51)))
    seg = {"visitors": load_segment(_segment(tmp_path, "visitors", "conditions:\n"
                                             "  - {events: {types: [pricing_page], within_days: 7, at_least: 1}}\n"))}
    add_events(wh, [(i, "pricing_page", NOW - timedelta(days=1)) for i in (1, 2, 3)], loaded_at=NOW - timedelta(hours=2))
    update_segments(wh, seg, "night", now=NOW - timedelta(hours=1))
    assert set(current_members(wh, "visitors")["golden_id"]) == {gid(1), gid(2), gid(3)}

    # New events for 4 and 5 arrive; 2's event falls out of the window by the time of the update.
    add_events(wh, [(4, "pricing_page", NOW), (5, "pricing_page", NOW)], loaded_at=NOW)
    affected, newest, rows = affected_since(wh, NOW - timedelta(minutes=30))
    assert affected == {gid(4), gid(5)} and rows == 2 and newest >= NOW
    later = NOW + timedelta(days=6, hours=23, minutes=30)
    inc = update_segments(wh, seg, "sensor", only=sorted(affected), now=later)
    assert inc.evaluated == 2 and inc.entered == {"visitors": 2} and inc.left == {"visitors": 0}
    # Contacts not named stay as they were, even those a full pass would now let go (2's window closed).
    assert set(current_members(wh, "visitors")["golden_id"]) == {gid(i) for i in (1, 2, 3, 4, 5)}
    full = update_segments(wh, seg, "night", now=later + timedelta(days=1))
    assert full.left == {"visitors": 5}
    hist = wh.read_select(sa.select(SEGMENT_HISTORY).order_by(SEGMENT_HISTORY.c.seq))
    assert list(hist["change"].value_counts().sort_index()) == [5, 5]  # entered 5, left 5
    assert set(hist[hist["run_id"] == "sensor"]["golden_id"]) == {gid(4), gid(5)}
    assert all(r.startswith("not: pricing_page") for r in hist[hist["change"] == "left"]["reason"])


def test_a_contact_that_is_gone_leaves_on_the_full_pass(tmp_path, sqlite_url):
    from .world import remove_contact
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2])
    seg = {"all": load_segment(_segment(tmp_path, "all", "conditions:\n  - {consent: email}\n"))}
    update_segments(wh, seg, "r1", now=NOW)
    remove_contact(wh, 2)
    res = update_segments(wh, seg, "r2", now=NOW)
    assert res.left == {"all": 1} and set(current_members(wh, "all")["golden_id"]) == {gid(1)}
