"""Journeys: the holdout never receives one, the frequency cap holds across e-mail, print and sales, exits
take contacts off the journey's list, a print journey queues one single-recipient job per contact, an
abandonment trigger fires when its window closes and not when the prospect came back."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.activation.brevo import BrevoConnector
from crm_pipelines.core.activation.journeys import in_holdout, journey_funnel, run_journeys
from crm_pipelines.core.activation.membership import update_segments
from crm_pipelines.core.activation.segments import load_segment
from crm_pipelines.core.activation.settings import load_activation_settings, load_journey, load_journeys
from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.platform.schema import (ALERT_LEDGER, JOURNEY_ENROLLMENTS, PRINT_LISTS, PRINT_QUEUE,
                                                PRINT_RECIPIENTS)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.devtools.brevo_server import BrevoServer
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

from .world import HASHER, NOW, add_contacts, add_events, add_orders, email, gid, set_contact

KEY = "journey-key"
SETTINGS = load_activation_settings(DEFAULT_CONFIG_DIR / "activation.yaml")


@pytest.fixture
def brevo():
    with BrevoServer(api_key=KEY, import_delay=0.02) as server:
        yield server


def _tool(server):
    tool = BrevoConnector.connect(server.url, KEY, poll_seconds=0.05)
    tool.transport.backoff_base = 0.01
    return tool


def _write(tmp_path: Path, folder: str, name: str, body: str) -> Path:
    d = tmp_path / folder
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(f"name: {name}\ndescription: test\n{body}", encoding="utf-8")
    return p


def _setup(tmp_path, wh, journeys: dict[str, str]):
    seg = load_segment(_write(tmp_path, "segments", "leads", "conditions:\n  - {field: lead.stage, in: [lead, sql]}\n"))
    update_segments(wh, {"leads": seg}, "r", now=NOW)
    for name, body in journeys.items():
        _write(tmp_path, "journeys", name, body)
    return load_journeys(tmp_path / "journeys", {"leads"})


EMAIL_JOURNEY = ("entry: {segment: leads}\nchannel: email\ndestination: {list: 'Journey: Test', event: journey_test}\n"
                 "exit: [became_sql, converted, unsubscribed, erased]\nreentry: never\nholdout: 0.2\n")


def run(wh, tool, journeys, settings=SETTINGS, now=NOW):
    return {r.journey: r for r in run_journeys(wh, tool, journeys, settings, SuppressionList(wh, HASHER).screen(), HASHER,
                                               "run", now=now)}


def test_the_shipped_journeys_load():
    segments = {p.stem for p in (DEFAULT_CONFIG_DIR / "segments").glob("*.yaml")}
    journeys = load_journeys(DEFAULT_CONFIG_DIR / "journeys", segments)
    assert {"welcome_series", "lead_nurture", "mql_to_sql", "reengagement", "quote_abandonment", "churn_prevention",
            "hot_lead_brochure"} <= set(journeys)
    assert journeys["quote_abandonment"].trigger.wait_minutes == 30
    assert journeys["hot_lead_brochure"].channel == "print"


def test_journey_errors_name_the_key(tmp_path):
    p = _write(tmp_path, "journeys", "j", "entry: {segment: nope}\nchannel: email\ndestination: {event: x}\nexit: [erased]\n")
    with pytest.raises(ConfigError) as exc:
        load_journey(p, {"leads"})
    assert exc.value.key == "entry.segment" and "unknown segment" in exc.value.message
    p = _write(tmp_path, "journeys", "k", "entry: {segment: leads}\nchannel: email\ndestination: {event: 'a b'}\nexit: [erased]\n")
    with pytest.raises(ConfigError, match="destination.event"):
        load_journey(p, {"leads"})


def test_the_holdout_never_receives_the_journey_and_stays_stable(tmp_path, sqlite_url, brevo):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 301)))
    journeys = _setup(tmp_path, wh, {"test": EMAIL_JOURNEY})
    tool = _tool(brevo)
    rep = run(wh, tool, journeys)["test"]
    expected_holdout = {gid(i) for i in range(1, 301) if in_holdout(SETTINGS.holdout_salt, "test", gid(i), 0.2)}
    assert 30 < len(expected_holdout) < 90 and rep.holdout == len(expected_holdout)
    assert rep.enrolled == 300 - len(expected_holdout) and rep.events_sent == rep.enrolled
    held_emails = {email(int(g[2:])) for g in expected_holdout}
    lid = next(i for i, v in brevo.lists.items() if v["name"] == "Journey: Test")
    on_list = {c.email for c in brevo.contacts.values() if lid in c.list_ids}
    evented = {e["identifiers"]["email_id"] for e in brevo.events}
    assert not (held_emails & on_list) and not (held_emails & evented) and not (held_emails & set(brevo.emails_received))
    # A second run: nobody enrolled twice, the holdout is the same.
    again = run(wh, tool, journeys)["test"]
    assert again.enrolled == 0 and again.holdout == 0 and brevo.stats()["events"] == rep.enrolled
    rows = wh.read_select(sa.select(JOURNEY_ENROLLMENTS))
    assert set(rows[rows["arm"] == "holdout"]["golden_id"]) == expected_holdout
    # The holdout converts too (an order), and the funnel compares the arms.
    add_orders(wh, [("C-1", NOW + timedelta(days=1))])
    set_contact(wh, 1, erp_customer_number="C-1")
    out = run(wh, tool, journeys, now=NOW + timedelta(days=2))["test"]
    assert out.exited == {"converted": 1}
    funnel = journey_funnel(wh, "test")
    assert list(funnel["arm"]) == ["treatment", "holdout"] and funnel["entered"].sum() == 300
    assert funnel["converted"].sum() == 1 and "uplift" in funnel.attrs


def test_exit_takes_the_contact_off_the_journey_list(tmp_path, sqlite_url, brevo):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 11)))
    journeys = _setup(tmp_path, wh, {"test": EMAIL_JOURNEY.replace("holdout: 0.2", "holdout: 0")})
    tool = _tool(brevo)
    run(wh, tool, journeys)
    set_contact(wh, 3, stage="sql")
    set_contact(wh, 4, email_consent="withdrawn")
    rep = run(wh, tool, journeys, now=NOW + timedelta(hours=1))["test"]
    assert rep.exited == {"became_sql": 1, "unsubscribed": 1}
    lid = next(i for i, v in brevo.lists.items() if v["name"] == "Journey: Test")
    on_list = {c.email for c in brevo.contacts.values() if lid in c.list_ids}
    assert email(3) not in on_list and email(4) not in on_list and email(5) in on_list
    # reentry: never, so 3 does not come back when it drops to lead again.
    set_contact(wh, 3, stage="lead")
    assert run(wh, tool, journeys, now=NOW + timedelta(days=1))["test"].enrolled == 0


def test_the_frequency_cap_holds_across_email_print_and_sales(tmp_path, sqlite_url, brevo):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2, 3], erp={1: "K1", 2: "K2", 3: "K3"})   # customers: post is allowed
    add_contacts(wh, [4])                                          # a prospect without postal consent
    # Contact 1: a print mailing and a sales hand-off this week; 2: one print mailing; 3: none.
    wh.ensure_tables([PRINT_LISTS, PRINT_RECIPIENTS, ALERT_LEDGER])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(PRINT_LISTS).values(list_id="L1", campaign="herbst", run_id="r", created_at=NOW,
                                                   folder="x", csv_sha256="a", rules_sha256="b", recipients=2,
                                                   status="released", released_at=NOW - timedelta(days=2)))
        conn.execute(sa.insert(PRINT_RECIPIENTS), [{"list_id": "L1", "recipient_id": "R1", "golden_id": gid(1), "variant": "A"},
                                                   {"list_id": "L1", "recipient_id": "R2", "golden_id": gid(2), "variant": "A"}])
        conn.execute(sa.insert(ALERT_LEDGER).values(alert_key="sql:1", kind="sql_crossing", golden_id=gid(1),
                                                    created_at=NOW - timedelta(days=1), status="notified"))
    print_journey = ("entry: {segment: leads}\nchannel: print\nprint: {campaign: broschuere}\n"
                     "exit: [erased]\nreentry: never\nholdout: 0\n")
    journeys = _setup(tmp_path, wh, {"a_mail": EMAIL_JOURNEY.replace("holdout: 0.2", "holdout: 0"),
                                     "b_print": print_journey})
    settings = replace(SETTINGS, touches_per_week=2)
    reps = run(wh, _tool(brevo), journeys, settings)
    # 1 has 2 touches already: capped in both. 2 has 1: the mail journey takes its second, print is capped.
    # 3: mail and print (2 touches).
    assert (reps["a_mail"].enrolled, reps["a_mail"].capped) == (3, 1)
    assert (reps["b_print"].enrolled, reps["b_print"].capped) == (1, 2)
    # 4 got its e-mail but no brochure: a print job would drop it, so it is not enrolled (nor counted as touched).
    assert reps["b_print"].stopped == {"no_consent": 1}
    queued = wh.read_select(sa.select(PRINT_QUEUE))
    assert list(queued["golden_id"]) == [gid(3)] and queued["alert_key"].iloc[0] == f"journey:b_print:{gid(3)}:1"
    assert email(1) not in {e["identifiers"]["email_id"] for e in brevo.events}
    # A week later the touches have aged out: the capped contacts enter.
    later = run(wh, _tool(brevo), journeys, settings, now=NOW + timedelta(days=8))
    assert later["a_mail"].enrolled == 1 and later["b_print"].enrolled == 2


def test_abandonment_trigger_fires_when_its_window_closes(tmp_path, sqlite_url, brevo):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2, 3, 4])
    add_events(wh, [(1, "pricing_page", NOW - timedelta(minutes=40)),                      # fires
                    (2, "pricing_page", NOW - timedelta(minutes=40)), (2, "demo_video", NOW - timedelta(minutes=25)),
                    (3, "pricing_page", NOW - timedelta(minutes=10)),                      # window still open
                    (4, "pricing_page", NOW - timedelta(hours=6))])                         # beyond the lookback
    body = ("entry:\n  trigger: {event: pricing_page, wait_minutes: 30, unless: [demo_video, web_form_lead], "
            "lookback_minutes: 240}\nchannel: email\ndestination: {event: journey_quote_abandoned}\n"
            "exit: [converted, unsubscribed, erased]\nreentry: {after_days: 14}\nholdout: 0\n")
    journeys = _setup(tmp_path, wh, {"abandon": body})
    tool = _tool(brevo)
    assert run(wh, tool, journeys)["abandon"].enrolled == 1
    assert [e["identifiers"]["email_id"] for e in brevo.events] == [email(1)]
    # 25 minutes later 3's window has closed.
    assert run(wh, tool, journeys, now=NOW + timedelta(minutes=25))["abandon"].enrolled == 1
    assert [e["identifiers"]["email_id"] for e in brevo.events] == [email(1), email(3)]
    assert pd.Series([e["event_name"] for e in brevo.events]).eq("journey_quote_abandoned").all()
