"""The Brevo connector and the audience sync against the local Brevo-compatible server: list membership
follows the segments (enter, leave, re-enter), rate limits are kept, 429s without Retry-After and 5xx
are retried without loss or duplicates, only our memberships are ever removed, nobody is re-subscribed,
an unsubscribe that comes back by webhook stops every further activation, an erasure deletes the
contact in the tool."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.activation.receiver import WebhookReceiver
from crm_pipelines.core.activation.audience import sync_audiences
from crm_pipelines.core.activation.brevo import BrevoConnector
from crm_pipelines.core.activation.erasure import MarketingToolErasureTarget
from crm_pipelines.core.activation.protocol import ToolAuthError, ToolEvent
from crm_pipelines.core.activation.settings import load_activation_settings
from crm_pipelines.core.golden.consent import refresh_golden_consent
from crm_pipelines.core.platform.schema import ACTIVATION_MEMBERS, GOLDEN_CONTACTS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.privacy.ledger import build_consent_events
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.core.sources.ingest import ingest_partition
from crm_pipelines.devtools.brevo_server import BrevoServer
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

from .world import HASHER, NOW, _raw, add_contacts, email, gid, set_contact

KEY = "test-brevo-key"
SETTINGS = load_activation_settings(DEFAULT_CONFIG_DIR / "activation.yaml")
LIST = "Segment: Test"


@pytest.fixture
def brevo():
    with BrevoServer(api_key=KEY, import_delay=0.05) as server:
        yield server


def connect(server: BrevoServer, **kw) -> BrevoConnector:
    tool = BrevoConnector.connect(server.url, KEY, poll_seconds=0.05, **kw)
    tool.transport.backoff_base = 0.01
    return tool


def on_list(server: BrevoServer, name: str) -> set[str]:
    lid = next(i for i, v in server.lists.items() if v["name"] == name)
    return {c.email for c in server.contacts.values() if lid in c.list_ids}


def sync(wh, tool, wanted):
    screen = SuppressionList(wh, HASHER).screen()
    return sync_audiences(wh, tool, SETTINGS, {LIST: {gid(i) for i in wanted}}, screen, HASHER)


def test_wrong_key_stops_the_sync(brevo):
    tool = BrevoConnector.connect(brevo.url, "wrong")
    with pytest.raises(ToolAuthError):
        tool.ensure_list("x", "crm_pipelines")


def test_list_membership_follows_the_segment_enter_leave_reenter(brevo, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 401)))
    tool = connect(brevo)
    first = sync(wh, tool, range(1, 301))
    assert on_list(brevo, LIST) == {email(i) for i in range(1, 301)}
    assert first.upserted == 300 and brevo.stats()["imports"] == 1       # one bulk import, not 300 calls
    assert brevo.contacts[brevo.by_email[email(5)]].attributes["LEAD_STAGE"] == "lead"
    # 1..100 leave, 301..400 enter; the all-contacts list keeps whoever is still activated.
    sync(wh, tool, range(101, 401))
    assert on_list(brevo, LIST) == {email(i) for i in range(101, 401)}
    # Re-enter.
    sync(wh, tool, range(1, 401))
    assert on_list(brevo, LIST) == {email(i) for i in range(1, 401)}
    # Nothing changed: no import, no list call.
    before = brevo.stats()
    sync(wh, tool, range(1, 401))
    after = brevo.stats()
    assert after["imports"] == before["imports"] and after.get("list_adds") == before.get("list_adds")
    # Every list call held at most 150 addresses (the server refuses more) and the pace stayed within 10/s.
    assert max(brevo.peak_per_second.values()) <= 10 and brevo.stats().get("throttled", 0) == 0


def test_429_without_retry_after_and_5xx_are_retried_without_loss_or_duplicates(brevo, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 1201)))
    # Our pace twice the server's: its x-sib-ratelimit-remaining / -reset hold us back; and 429s without
    # Retry-After (injected under the limit, as a shared account's other clients cause them) and 5xx on top.
    brevo.limits["contacts"] = (5, 36_000)
    brevo.set_faults(error_rate=0.15, throttle_rate=0.1)
    tool = connect(brevo, per_second=10, max_attempts=12)
    report = sync(wh, tool, range(1, 1201))
    stats = brevo.stats()
    assert stats["throttled"] > 0 and stats["injected_errors"] > 0
    assert report.calls["throttled"] > 0 and report.calls["server_errors"] > 0 and report.calls["window_exhausted"] > 0
    assert brevo.peak_per_second["contacts"] <= 5
    assert on_list(brevo, LIST) == {email(i) for i in range(1, 1201)}
    members = wh.read_select(sa.select(ACTIVATION_MEMBERS).where(ACTIVATION_MEMBERS.c.list_name == LIST))
    assert len(members) == 1200 and members["golden_id"].is_unique
    events = [ToolEvent(f"ev-{i}", "journey_test", email(i), {}, NOW.isoformat()) for i in range(1, 401)]
    brevo.limits["events"] = (5, 36_000)
    results = tool.send_events(events)
    assert all(err is None for _, err in results)
    assert brevo.stats()["events"] == 400 and brevo.stats().get("duplicate_events", 0) == 0


def test_only_our_memberships_are_removed_and_nobody_is_resubscribed(brevo, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 21)))
    tool = connect(brevo)
    sync(wh, tool, range(1, 21))
    # The marketing team's own list with some of the same people, and a contact they put on our list by hand.
    foreign = brevo.make_foreign_list("Messe-Einladung (manuell)", [email(1), email(2), "kunde@extern.de"])
    our_id = next(i for i, v in brevo.lists.items() if v["name"] == LIST)
    brevo.contacts[brevo.by_email["kunde@extern.de"]].list_ids.add(our_id)
    # 3 unsubscribes in the tool; 4 complains (spam); both come back through the contact pull.
    brevo.simulate(email(3), "newsletter", "unsubscribed")
    brevo.simulate(email(4), "newsletter", "spam")
    report = sync(wh, tool, range(1, 11))   # 11..20 leave the segment
    assert report.tool_state["blocked"] == 2 and report.stopped == {"tool_blocked": 2}
    assert on_list(brevo, LIST) == {email(i) for i in range(1, 11) if i not in (3, 4)} | {"kunde@extern.de"}
    assert {c.email for c in brevo.contacts.values() if foreign in c.list_ids} == {email(1), email(2), "kunde@extern.de"}
    # The segment wants them back: they stay out, blocked stays blocked.
    sync(wh, tool, range(1, 21))
    stats = brevo.stats()
    assert email(3) not in on_list(brevo, LIST) and brevo.contacts[brevo.by_email[email(3)]].blocklisted
    assert stats.get("resubscribed", 0) == 0 and stats.get("blocked_list_adds", 0) == 0
    assert stats.get("foreign_removals", 0) == 0


def test_unsubscribe_by_webhook_withdraws_consent_and_stops_activation(brevo, sqlite_url, tmp_path, mappings):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2, 3])
    # Consent in the ledger (a preference-centre opt-in with double opt-in) for all three.
    _raw(wh, "consent_changes", "consent_event",
         [{"source_record_id": f"c{i}", "email": email(i), "channel": "email", "status": "granted",
           "legal_basis": "consent", "occurred_at": NOW - timedelta(days=30), "double_opt_in_at": NOW - timedelta(days=30)}
          for i in (1, 2, 3)], NOW - timedelta(days=30))
    build_consent_events(wh, HASHER)
    refresh_golden_consent(wh)
    landing = tmp_path / "landing"
    with WebhookReceiver(landing, token="hook-token") as receiver:
        tool = connect(brevo)
        status, _ = brevo.register_webhook({"url": receiver.url(), "events": ["delivered", "opened", "click",
                                                                               "unsubscribed", "hardBounce", "spam"],
                                           "type": "marketing"})
        assert status == 201
        sync(wh, tool, [1, 2, 3])
        assert on_list(brevo, LIST) == {email(1), email(2), email(3)}
        brevo.simulate(email(2), "welcome#1", "unsubscribed")
        brevo.simulate(email(1), "welcome#1", "click")
        deadline = pd.Timestamp.now() + pd.Timedelta(seconds=10)
        while (brevo.webhooks_pending() or len(receiver.files) < 4) and pd.Timestamp.now() < deadline:
            brevo._worker_stop.wait(0.02)
        # A request without the token is refused and lands nothing.
        import requests
        assert requests.post(receiver.url().replace("hook-token", "guess"), json={"event": "spam"}).status_code == 401
    day = NOW.strftime("%Y-%m-%d")
    days = sorted(p.name for p in (landing / "email_engagement").iterdir())
    for d in days:
        rep = ingest_partition(mappings["email_engagement"], d, landing, wh, "webhooks")
        assert rep.rows_read == rep.rows_loaded + rep.rows_quarantined and rep.rows_quarantined == 0
    build_consent_events(wh, HASHER)
    refresh_golden_consent(wh)
    consent = dict(wh.read_select(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.email_consent)).values)
    assert consent == {gid(1): "granted", gid(2): "withdrawn", gid(3): "granted"}
    report = sync(wh, tool, [1, 2, 3])
    assert on_list(brevo, LIST) == {email(1), email(3)}
    assert report.stopped.get("no_consent") == 1 or report.stopped.get("tool_blocked") == 1
    assert brevo.stats().get("blocked_list_adds", 0) == 0 and day


def test_erasure_deletes_the_contact_in_the_tool(brevo, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2])
    tool = connect(brevo)
    sync(wh, tool, [1, 2])
    target = MarketingToolErasureTarget(tool)
    assert target.erase("email", email(1)) == ("deleted", None)
    assert target.erase("email", email(1)) == ("absent", None)
    assert target.erase("crm_contact_id", "123") == ("absent", None)
    assert email(1) not in brevo.by_email and email(1) in brevo.deleted
    brevo.set_faults(fail_next=50)
    tool.transport.max_attempts = 2
    assert target.erase("email", email(2))[0] == "failed"   # the outbox tries again later


def test_contacts_without_consent_or_suppressed_are_never_sent(brevo, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2])
    add_contacts(wh, [3], consent="unconfirmed")
    add_contacts(wh, [4], consent="objected")
    set_contact(wh, 2, email=email(2))
    SuppressionList(wh, HASHER).add([("email", HASHER.email(email(2)))], subject="s", reason="erasure", request_id="r1")
    tool = connect(brevo)
    report = sync(wh, tool, [1, 2, 3, 4])
    assert on_list(brevo, LIST) == {email(1)}
    assert report.stopped == {"suppressed": 1, "no_consent": 2}
    assert all(brevo.emails_received[email(i)] == 0 for i in (2, 3, 4))


def test_an_opt_in_box_waits_for_the_double_opt_in_the_tool_reports(brevo, sqlite_url, tmp_path, mappings):
    from crm_pipelines.core.activation.audience import request_double_opt_ins
    wh = Warehouse(sqlite_url)
    add_contacts(wh, [1, 2], consent=None)
    # Both ticked the web form's newsletter box; nobody confirmed yet.
    _raw(wh, "web_form_leads", "contact", [{"source_record_id": str(i), "email": email(i), "marketing_opt_in": True,
                                            "created_at": NOW - timedelta(days=1)} for i in (1, 2)], NOW)
    build_consent_events(wh, HASHER)
    refresh_golden_consent(wh)
    assert set(wh.read_select(sa.select(GOLDEN_CONTACTS.c.email_consent))["email_consent"].fillna("none")) == {"none"}
    tool = connect(brevo)
    screen = SuppressionList(wh, HASHER).screen()
    assert request_double_opt_ins(wh, tool, SETTINGS, screen, HASHER) == {"requested": 2, "waiting": 0}
    assert request_double_opt_ins(wh, tool, SETTINGS, screen, HASHER)["requested"] == 0     # once per person
    assert set(brevo.doi_pending) == {email(1), email(2)}
    assert sync(wh, tool, [1, 2]).stopped == {"no_consent": 2}                              # a box is no consent
    landing = tmp_path / "landing"
    with WebhookReceiver(landing, token="t0ken") as receiver:
        brevo.register_webhook({"url": receiver.url(), "events": ["listAddition"], "type": "marketing"})
        assert brevo.confirm_double_opt_in(email(1))
        deadline = pd.Timestamp.now() + pd.Timedelta(seconds=10)
        while not receiver.files and pd.Timestamp.now() < deadline:
            brevo._worker_stop.wait(0.02)
    for d in sorted(p.name for p in (landing / "email_engagement").iterdir()):
        ingest_partition(mappings["email_engagement"], d, landing, wh, "webhooks")
    build_consent_events(wh, HASHER)
    refresh_golden_consent(wh)
    consent = dict(wh.read_select(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.email_consent)).values)
    assert consent[gid(1)] == "granted" and consent[gid(2)] is None
    sync(wh, tool, [1, 2])
    assert on_list(brevo, LIST) == {email(1)}


def test_setup_creates_attributes_lists_and_the_webhook_once(brevo, monkeypatch, capsys):
    from crm_pipelines.activation.__main__ import main
    monkeypatch.setenv("CRM_MARKETING_API_URL", brevo.url)
    monkeypatch.setenv("CRM_MARKETING_API_KEY", KEY)
    assert main(["setup", "--webhook-url", "https://crm.example.de/brevo?token=t"]) == 0
    assert "LEAD_SCORE" in brevo.attributes and brevo.attributes["LEAD_SCORE"]["type"] == "float"
    ours = {v["name"] for v in brevo.lists.values()}
    assert {SETTINGS.all_contacts_list, SETTINGS.doi_list, "Segment: Heiße Leads", "Journey: Willkommensserie"} <= ours
    assert len(brevo.webhooks) == 1 and next(iter(brevo.webhooks.values()))["batched"]
    lists = len(brevo.lists)
    assert main(["setup"]) == 0 and len(brevo.lists) == lists     # run again: nothing twice
    assert "attributes created: none" in capsys.readouterr().out.splitlines()[-1]


def test_the_local_tool_is_as_strict_as_brevo(brevo):
    import requests
    h = {"api-key": KEY}
    assert requests.post(f"{brevo.url}/v3/contacts/batch", json={"contacts": []}, headers=h).status_code == 410
    r = requests.post(f"{brevo.url}/v3/contacts/folders", json={"name": "x", "colour": "red"}, headers=h)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter") and "x-sib-ratelimit-remaining" in r.headers
    r = requests.post(f"{brevo.url}/v3/contacts/lists/1/contacts/add", json={"emails": ["a@b.de"] * 151}, headers=h)
    assert r.status_code == 404      # no such list yet; with one, more than 150 is out_of_range
    fid = requests.post(f"{brevo.url}/v3/contacts/folders", json={"name": "f"}, headers=h).json()["id"]
    lid = requests.post(f"{brevo.url}/v3/contacts/lists", json={"name": "l", "folderId": fid}, headers=h).json()["id"]
    r = requests.post(f"{brevo.url}/v3/contacts/lists/{lid}/contacts/add", json={"emails": ["a@b.de"] * 151}, headers=h)
    assert (r.status_code, r.json()["code"]) == (400, "out_of_range")
    r = requests.post(f"{brevo.url}/v3/events", json={"event_name": "a b", "identifiers": {"email_id": "a@b.de"}}, headers=h)
    assert r.status_code == 400
    assert requests.get(f"{brevo.url}/v3/contacts/lists", headers={"api-key": "wrong"}).json()["code"] == "unauthorized"
