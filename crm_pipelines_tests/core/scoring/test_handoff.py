"""Hand-off: notifications against real local Slack/Teams/SMTP servers, exactly once, consent and
suppression, brochures, the SLA."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.platform.notify import Message, SmtpChannel, WebhookChannel, slack_payload, teams_payload
from crm_pipelines.core.platform.schema import ALERT_LEDGER, PRINT_QUEUE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.scoring.handoff import Channels, Lead, check_sla, hand_off, load_territories
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines.devtools.smtp_sink import SmtpSink
from crm_pipelines.devtools.webhook_sink import WebhookSink
from crm_pipelines.settings import DEFAULT_CONFIG_DIR
from crm_pipelines_tests.conftest import READY_PORTAL

TERRITORIES = load_territories(DEFAULT_CONFIG_DIR / "territories.yaml")
NOW = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
NASTY = "Müller & Söhne <!channel> *fett* [x](http://evil)"


def lead(key="lead:trade_fair_leads:TF-1", **kw) -> Lead:
    base = dict(alert_key=key, kind="trade_fair_lead", golden_id="GC-00000001", record_key="trade_fair_leads:TF-1",
                name="Jürgen Weiß", company=NASTY, postal_code="80331", city="München", industry="Maschinenbau",
                score=72.0, reasons="pricing_page +30 (2×)", landed_at=NOW - timedelta(seconds=5), contact_crm_id="501")
    base.update(kw)
    return Lead(**base)


def no_sleep(_s):
    pass


def test_slack_and_teams_payloads_escape_what_users_typed():
    msg = Message("Neuer Messe-Lead: Jürgen", fields=[("Firma", NASTY)], link="https://crm/1")
    slack = json.dumps(slack_payload(msg))
    assert "<!channel>" not in slack and "&lt;!channel&gt;" in slack and "&amp;" in slack
    teams = teams_payload(msg)
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    fact = card["content"]["body"][1]["facts"][0]["value"]
    assert "\\*fett\\*" in fact and "\\[x\\]" in fact and "Müller" in fact
    long = Message("t", fields=[("x", "ä" * 5000)])
    assert len(slack_payload(long)["blocks"][1]["text"]["text"]) <= 3000


def test_webhooks_retry_429_and_500_then_surface_the_failure():
    with WebhookSink(throttle_next=1, fail_next=1) as sink:
        ok = WebhookChannel(sink.url, "slack", sleep=no_sleep).send(Message("Hallo"))
        assert ok.ok and ok.attempts == 3 and sink.refused == 2
        assert sink.texts()[0].startswith("Hallo")
    with WebhookSink(fail_next=10) as sink:
        bad = WebhookChannel(sink.url, "teams", max_attempts=3, sleep=no_sleep).send(Message("Hallo"))
        assert not bad.ok and bad.attempts == 3 and "HTTP 500" in bad.detail and sink.received == []


def test_smtp_delivers_utf8_text_and_escaped_html_and_retries_a_temporary_refusal():
    with SmtpSink(fail_next=1) as smtp:
        d = SmtpChannel("127.0.0.1", smtp.port, "crm@example.de", sleep=no_sleep).send(
            Message("Heißer Lead: Weiß", fields=[("Firma", NASTY)]), "j.huber@example.de")
        assert d.ok and d.attempts == 2
        (mail,) = smtp.wait_for(1)
        assert mail["Subject"] == "Heißer Lead: Weiß" and mail["To"] == "j.huber@example.de"
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        assert NASTY in text and "&lt;!channel&gt;" in html and "<!channel>" not in html


def test_each_lead_is_handed_off_exactly_once_with_owner_task_and_every_channel(sqlite_url):
    wh = Warehouse(sqlite_url)
    with WebhookSink() as slack, WebhookSink() as teams, SmtpSink() as smtp, CrmServer(custom_properties=READY_PORTAL) as crm:
        channels = Channels(slack=WebhookChannel(slack.url, "slack", sleep=no_sleep),
                            teams=WebhookChannel(teams.url, "teams", sleep=no_sleep),
                            email=SmtpChannel("127.0.0.1", smtp.port, sleep=no_sleep))
        hub = HubSpotConnector.create(crm.url, None)
        leads = [lead(), lead("lead:trade_fair_leads:TF-2", name="Anna Roth", postal_code="80333")]
        first = hand_off(wh, leads, TERRITORIES, channels, hub, "run-1", now=NOW, crm_url="https://crm.example")
        assert (first.new, first.tasks_created, first.notified) == (2, 2, {"slack": 2, "teams": 2, "email": 2})
        # A sensor re-evaluating, a retried run, a second batch: nothing goes out twice.
        for run in ("run-2", "run-3"):
            again = hand_off(wh, leads, TERRITORIES, channels, hub, run, now=NOW)
            assert (again.new, again.already_done, again.tasks_created, again.notified) == (0, 2, 0, {})
        assert len(slack.received) == len(teams.received) == len(smtp.messages) == 2 and len(crm.tasks()) == 2
        ledger = wh.read_frame(sa.select(ALERT_LEDGER)).set_index("alert_key")
        owners = ledger["owner_id"].tolist()
        assert sorted(owners) == ["90011", "90012"]  # round robin in the Süd team (PLZ 8)
        row = ledger.loc["lead:trade_fair_leads:TF-1"]
        assert row["status"] == "notified" and pd_ts(row["due_at"]) == NOW + timedelta(hours=2)
        task = crm.tasks()[0]["properties"]
        assert task["hubspot_owner_id"] in owners and task["hs_timestamp"].startswith("2026-11-20T11:00:00")
        # What the rep reads: enough to act, no e-mail address, no phone; the CRM link.
        text = slack.texts()[0]
        assert "Jürgen Weiß" in text and "&lt;!channel&gt;" in text and "@" not in text
        assert "https://crm.example/501" in text
        mails = {m["To"] for m in smtp.messages}
        assert mails == {"j.huber@example-maschinenbau.de", "a.demir@example-maschinenbau.de"}


def test_a_failed_channel_is_retried_next_time_without_repeating_the_others(sqlite_url):
    wh = Warehouse(sqlite_url)
    with WebhookSink() as slack, WebhookSink(fail_next=100) as teams:
        channels = Channels(slack=WebhookChannel(slack.url, "slack", sleep=no_sleep),
                            teams=WebhookChannel(teams.url, "teams", max_attempts=2, sleep=no_sleep))
        first = hand_off(wh, [lead()], TERRITORIES, channels, None, "run-1", now=NOW)
        assert first.failed == {"teams": 1} and first.notified == {"slack": 1}
        row = wh.read_frame(sa.select(ALERT_LEDGER)).iloc[0]
        assert row["status"] == "failed" and json.loads(row["notified"])["teams"].startswith("failed")
        teams.fail_next = 0
        second = hand_off(wh, [lead()], TERRITORIES, channels, None, "run-2", now=NOW)
        assert second.notified == {"teams": 1} and len(slack.received) == 1 and len(teams.received) == 1
        assert wh.read_frame(sa.select(ALERT_LEDGER)).iloc[0]["status"] == "notified"


def test_suppressed_and_no_consent_contacts_get_no_alert_and_hot_leads_queue_a_brochure(sqlite_url):
    wh = Warehouse(sqlite_url)
    with WebhookSink() as slack:
        channels = Channels(slack=WebhookChannel(slack.url, "slack", sleep=no_sleep))
        leads = [lead("sql:GC-1:1", kind="sql_crossing", suppressed=True),
                 lead("sql:GC-2:1", kind="sql_crossing", golden_id="GC-2", may_contact=False),
                 lead("sql:GC-3:1", kind="sql_crossing", golden_id="GC-3", brochure=True)]
        report = hand_off(wh, leads, TERRITORIES, channels, None, "run-1", now=NOW)
        assert (report.suppressed, report.no_consent, report.notified, report.brochures_queued) == (1, 1, {"slack": 1}, 1)
        assert len(slack.received) == 1 and "sql:GC-3:1" in slack.texts()[0]
        queue = wh.read_frame(sa.select(PRINT_QUEUE))
        assert queue["golden_id"].tolist() == ["GC-3"] and queue["status"].tolist() == ["queued"]
        statuses = dict(wh.read_frame(sa.select(ALERT_LEDGER.c.alert_key, ALERT_LEDGER.c.status)).values)
        assert statuses == {"sql:GC-1:1": "suppressed", "sql:GC-2:1": "no_consent", "sql:GC-3:1": "notified"}
        # Later runs do not alert them either (the decision is recorded), and the brochure is queued once.
        again = hand_off(wh, leads, TERRITORIES, channels, None, "run-2", now=NOW)
        assert again.already_done == 3 and len(slack.received) == 1 and len(wh.read_frame(sa.select(PRINT_QUEUE))) == 1


def test_sla_records_the_response_time_and_escalates_overdue_follow_ups_once(sqlite_url):
    wh = Warehouse(sqlite_url)
    with CrmServer(custom_properties=READY_PORTAL) as crm, WebhookSink() as leads_channel:
        hub = HubSpotConnector.create(crm.url, None)
        hand_off(wh, [lead(), lead("lead:trade_fair_leads:TF-2", name="Anna Roth")], TERRITORIES, Channels(), hub,
                 "run-1", now=NOW)
        done_task = crm.tasks()[0]["id"]
        crm.complete_task(done_task)
        lead_ch = WebhookChannel(leads_channel.url, "slack", sleep=no_sleep)

        def escalate(team, msg):
            return lead_ch.send(replace(msg, title=f"[{team.lead.name}] {msg.title}"))

        # An hour after the hand-off neither is near its due time (2 hours): nothing is asked of the CRM.
        before = crm.stats()["counts"]["requests"]
        early = check_sla(wh, hub, TERRITORIES, escalate, now=NOW + timedelta(hours=1))
        assert (early.open, early.checked, early.done) == (2, 0, 0)
        assert crm.stats()["counts"]["requests"] == before
        # Ten minutes before due both are checked, with one batch read of their tasks.
        near = check_sla(wh, hub, TERRITORIES, escalate, now=NOW + timedelta(minutes=110))
        assert (near.checked, near.done, near.escalated) == (2, 1, 0) and len(near.response_minutes) == 1
        assert near.response_minutes[0] > 0
        assert crm.stats()["counts"]["requests"] == before + 1
        late = check_sla(wh, hub, TERRITORIES, escalate, now=NOW + timedelta(hours=3))
        assert (late.open, late.checked, late.escalated) == (1, 1, 1)
        assert "Katrin Berger" in leads_channel.texts()[0] and "lead:trade_fair_leads:TF-2" in leads_channel.texts()[0]
        # Checked a moment ago: not again before the recheck interval.
        assert check_sla(wh, hub, TERRITORIES, escalate, now=NOW + timedelta(hours=3, minutes=5)).checked == 0
        again = check_sla(wh, hub, TERRITORIES, escalate, now=NOW + timedelta(hours=4))
        assert (again.checked, again.escalated) == (1, 0)
        ledger = wh.read_frame(sa.select(ALERT_LEDGER)).set_index("alert_key")
        assert ledger.loc["lead:trade_fair_leads:TF-1", "status"] == "done"
        assert ledger.loc["lead:trade_fair_leads:TF-1", "first_activity_at"] is not None


def pd_ts(value):
    import pandas as pd

    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts


def test_the_alert_goes_out_before_the_crm_task_and_never_waits_on_its_retries(sqlite_url):
    from crm_pipelines.devtools.processes import free_port

    wh = Warehouse(sqlite_url)
    with WebhookSink() as slack:
        channels = Channels(slack=WebhookChannel(slack.url, "slack", sleep=no_sleep))
        waits_seen_by: list[int] = []

        def retry_pause(_seconds):  # each CRM retry pause: how many alerts had gone out by then
            waits_seen_by.append(len(slack.received))

        down = HubSpotConnector.create(f"http://127.0.0.1:{free_port()}", None, max_attempts=3, sleep=retry_pause)
        report = hand_off(wh, [lead()], TERRITORIES, channels, down, "run-1", now=NOW)
        assert waits_seen_by and all(n == 1 for n in waits_seen_by)
        assert (report.notified, report.tasks_created, report.tasks_pending) == ({"slack": 1}, 0, 1)
        row = wh.read_frame(sa.select(ALERT_LEDGER)).iloc[0]
        assert row["status"] == "notified" and row["task_crm_id"] is None

        # The task follows when the lead is handed over again with the CRM back; no second alert.
        with CrmServer(custom_properties=READY_PORTAL) as crm:
            again = hand_off(wh, [lead()], TERRITORIES, channels, HubSpotConnector.create(crm.url, None), "run-2", now=NOW)
            assert (again.tasks_created, again.already_done, len(slack.received)) == (1, 1, 1)
            assert len(crm.tasks()) == 1
        assert wh.read_frame(sa.select(ALERT_LEDGER)).iloc[0]["task_crm_id"] is not None
