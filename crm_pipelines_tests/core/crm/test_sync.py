"""The sync engine against the local CRM server: diffing, row log, retries, resume, dry run, modes, alerts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.crm.payloads import build_payload
from crm_pipelines.core.crm.settings import load_sync_settings
from crm_pipelines.core.crm.sync import SyncBusy, SyncFailed, load_state, push
from crm_pipelines.core.platform.alerts import post_alert
from crm_pipelines.core.platform.schema import CRM_SYNC_LOG, CRM_SYNC_RUNS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines.devtools.webhook_sink import WebhookSink
from crm_pipelines.settings import DEFAULT_CONFIG_DIR
from crm_pipelines_tests.conftest import READY_PORTAL

TOKEN = "sync-test-token"
SETTINGS = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
COMPANIES, CONTACTS = SETTINGS.objects["companies"], SETTINGS.objects["contacts"]


def golden_accounts(n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "golden_id": [f"GA-{i:08d}" for i in range(1, n + 1)],
        "company_name": [f"Musterfirma {i} GmbH" for i in range(1, n + 1)],
        "postal_code": ["01067"] * n, "city": ["Dresden"] * n, "country": ["DE"] * n,
        "street": ["Hauptstraße"] * n, "house_number": [str(i) for i in range(1, n + 1)],
    })


def golden_contacts(n: int, accounts: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "golden_id": [f"GC-{i:08d}" for i in range(1, n + 1)],
        "email": [f"person{i}@musterfirma{i % 7}.de" for i in range(1, n + 1)],
        "first_name": ["Jürgen"] * n, "last_name": [f"Müller{i}" for i in range(1, n + 1)],
        "postal_code": ["01067"] * n, "country": ["DE"] * n,
        "account_id": [f"GA-{(i % accounts) + 1:08d}" if accounts else None for i in range(1, n + 1)],
        "sources": ["web_form_leads"] * n,
    })


def hub(server: CrmServer, **kw) -> HubSpotConnector:
    kw.setdefault("backoff_base", 0.001)
    return HubSpotConnector.create(server.url, TOKEN, timeout=5, **kw)


def log_rows(wh: Warehouse, run_id: str | None = None) -> pd.DataFrame:
    q = sa.select(CRM_SYNC_LOG)
    if run_id:
        q = q.where(CRM_SYNC_LOG.c.run_id == run_id)
    return wh.read_frame(q)


@pytest.fixture
def crm():
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as server:
        yield server


def test_happy_path_then_unchanged_data_sends_zero_requests(warehouse_url, crm):
    wh = Warehouse(warehouse_url)
    accounts, contacts = golden_accounts(3), golden_contacts(250, accounts=3)
    connector = hub(crm)
    ra = push(wh, connector, build_payload(accounts, COMPANIES), COMPANIES, SETTINGS, "run-1")
    rc = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-1")
    assert (ra.created, rc.created, rc.batches, rc.associated) == (3, 250, 3, 250)
    stored = crm.objects("contacts")
    assert len(stored) == 250 and {o["ext_id"] for o in stored} == set(contacts["golden_id"])
    first = {o["ext_id"]: o for o in stored}["GC-00000001"]["properties"]
    assert (first["lastname"], first["zip"], first["email"]) == ("Müller1", "01067", "person1@musterfirma1.de")
    company_of = {str(o["id"]): o["ext_id"] for o in crm.objects("companies")}
    links = {a[1]: company_of[a[3]] for a in crm.associations() if a[0] == "contacts"}
    by_crm_id = {o["id"]: o["ext_id"] for o in stored}
    expected = dict(zip(contacts["golden_id"], contacts["account_id"]))
    assert {by_crm_id[c]: g for c, g in links.items()} == expected
    state = load_state(wh, "contacts")
    assert len(state) == 250 and set(state["last_status"]) == {"created"} and state["crm_id"].notna().all()
    log = log_rows(wh, "run-1")
    assert len(log) == 253 and set(log["operation"]) == {"create"}

    before = crm.stats()["counts"]["requests"]
    again = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-2")
    # Unchanged data: only the preflight's one read of the portal's property definitions.
    assert (again.unchanged, again.sent, again.requests) == (250, 0, 0)
    assert crm.stats()["counts"]["requests"] == before + 1
    # One changed contact: exactly one row goes out, as an update of the object we created.
    contacts.loc[7, "last_name"] = "Müller-Lüdenscheidt"
    third = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-3")
    assert (third.to_update, third.updated, third.unchanged, third.requests) == (1, 1, 249, 1)
    assert {o["ext_id"]: o["properties"].get("lastname") for o in crm.objects("contacts")}["GC-00000008"] == \
        "Müller-Lüdenscheidt"
    # A change in a field sales owns once the contact exists (jobtitle) has nothing to send: no write at all.
    contacts.loc[8, "job_title"] = "Einkauf"
    fourth = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-4")
    assert (fourth.unchanged, fourth.sent, fourth.requests) == (250, 0, 0)
    assert "jobtitle" not in {o["ext_id"]: o["properties"] for o in crm.objects("contacts")}["GC-00000009"]
    assert len(crm.objects("contacts")) == 250


def test_partial_failures_land_in_the_row_log_and_are_retried_next_run(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    contacts = golden_contacts(40)
    # This address was GDPR-deleted in the CRM, which blocklists it: the CRM refuses that row alone (207).
    crm.gdpr_delete({"objectId": "taken@musterfirma.de", "idProperty": "email"})
    contacts.loc[9, "email"] = "taken@musterfirma.de"
    connector = hub(crm)
    first = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-1")
    assert (first.created, first.rejected, first.requests) == (39, 1, 1)
    log = log_rows(wh, "run-1")
    rejected = log[log["status"] == "rejected"]
    assert rejected["golden_id"].tolist() == ["GC-00000010"]
    assert "BLOCKLISTED" in rejected["message"].iloc[0]
    # The row log never holds the address in clear text.
    assert "taken@musterfirma.de" not in rejected["message"].iloc[0]

    # Unchanged, the rejected row is still sent again (and only it), and counted as a retry.
    second = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-2")
    assert (second.sent, second.retried, second.rejected, second.unchanged) == (1, 1, 1, 39)
    assert load_state(wh, "contacts").set_index("golden_id").at["GC-00000010", "attempts"] == 2
    # The steward fixes the source; the next run creates it.
    contacts.loc[9, "email"] = "neu@musterfirma.de"
    third = push(wh, connector, build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-3")
    assert (third.sent, third.created, third.retried) == (1, 1, 1)
    assert len(crm.objects("contacts")) == 40


def test_dry_run_reports_and_sends_nothing(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    contacts = golden_contacts(30)
    push(wh, hub(crm), build_payload(contacts.head(10), CONTACTS), CONTACTS, SETTINGS, "run-1")
    contacts.loc[0, "last_name"] = "Schulze"
    contacts.loc[3, "email"] = "kein-at-zeichen"
    before = crm.stats()["counts"]["requests"] + 1  # the preflight reads the property definitions
    state_before = load_state(wh, "contacts")
    report = push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "dry", dry_run=True)
    assert crm.stats()["counts"]["requests"] == before
    assert (report.to_create, report.to_update, report.unchanged, report.invalid, report.sent) == (20, 1, 8, 1, 0)
    assert report.status == "dry_run"
    pd.testing.assert_frame_equal(load_state(wh, "contacts"), state_before)
    assert log_rows(wh, "dry").empty
    run = wh.read_frame(sa.select(CRM_SYNC_RUNS).where(CRM_SYNC_RUNS.c.run_id == "dry"))
    assert bool(run["dry_run"].iloc[0]) and json.loads(run["counts"].iloc[0])["to_create"] == 20


def test_invalid_rows_are_never_sent_and_are_logged_with_the_reason(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    contacts = golden_contacts(30)
    contacts.loc[2, "email"] = "kein-at-zeichen"
    report = push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-1")
    assert (report.invalid, report.created) == (1, 29)
    row = log_rows(wh, "run-1").set_index("golden_id").loc["GC-00000003"]
    assert (row["status"], row["message"]) == ("invalid", "e-mail address is malformed")


def test_update_only_never_creates_and_mirror_archives_what_left_the_model(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    accounts = golden_accounts(5)
    accounts["crm_company_id"] = None
    crm.seed("companies", [{"id": "777", "properties": {"name": "Altkunde AG"}}])
    accounts.loc[0, "crm_company_id"] = "777"  # came from the CRM snapshot
    update_only = replace(COMPANIES, mode="update_only")
    r = push(wh, hub(crm), build_payload(accounts, update_only), update_only, SETTINGS, "run-1")
    assert (r.updated, r.created, r.skipped_not_in_crm) == (1, 0, 4)
    assert [o["properties"]["name"] for o in crm.objects("companies")] == ["Musterfirma 1 GmbH"]
    # Stamped with our golden ID: from now on it is the same object by either key.
    assert crm.objects("companies")[0]["ext_id"] == "GA-00000001"

    mirror = replace(COMPANIES, mode="mirror")
    push(wh, hub(crm), build_payload(accounts, mirror), mirror, SETTINGS, "run-2")
    assert len(crm.objects("companies")) == 5
    gone = accounts[accounts["golden_id"] != "GA-00000004"]
    r = push(wh, hub(crm), build_payload(gone, mirror), mirror, SETTINGS, "run-3")
    assert (r.to_archive, r.archived, r.unchanged) == (1, 1, 4)
    assert [o["ext_id"] for o in crm.objects("companies", archived=True)] == ["GA-00000004"]
    assert log_rows(wh, "run-3")[["golden_id", "operation", "status"]].values.tolist() == [
        ["GA-00000004", "archive", "archived"]]
    # The archived one is not archived twice.
    assert push(wh, hub(crm), build_payload(gone, mirror), mirror, SETTINGS, "run-4").to_archive == 0


def test_failure_rate_above_the_threshold_fails_alerts_and_recovers(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    contacts = golden_contacts(120)
    with WebhookSink() as sink:
        def alert(text):
            post_alert(sink.url, text)

        crm.set_faults(error_rate=1.0)
        with pytest.raises(SyncFailed) as err:
            push(wh, hub(crm, max_attempts=2), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-1",
                 alert=alert)
        assert err.value.report.failed == 120 and err.value.report.status == "failed"
        assert "120 of 120 rows" in sink.texts()[0] and "threshold 5.0%" in sink.texts()[0]
        runs = wh.read_frame(sa.select(CRM_SYNC_RUNS))
        assert runs["status"].tolist() == ["failed"]
        assert set(load_state(wh, "contacts")["last_status"]) == {"failed"}

        crm.set_faults(error_rate=0.0)
        ok = push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-2", alert=alert)
        assert (ok.created, ok.retried) == (120, 120)
        sink.wait_for(2)
        assert "recovered" in sink.texts()[1]
        # A third, quiet run sends no further notice.
        push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-3", alert=alert)
        assert len(sink.texts()) == 2


def test_a_second_push_of_the_same_type_is_refused_while_one_runs(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    payload = build_payload(golden_contacts(5), CONTACTS)
    with wh.exclusive("crm_push_contacts"):
        with pytest.raises(SyncBusy, match="another run is pushing contacts"):
            push(wh, hub(crm), payload, CONTACTS, SETTINGS, "run-2")
    assert push(wh, hub(crm), payload, CONTACTS, SETTINGS, "run-3").created == 5


class _DiesAfterSending:
    """A connector that loses its process right after the CRM applied one batch, before its commit."""

    def __init__(self, inner: HubSpotConnector, fatal_key: str):
        self.inner, self.fatal_key = inner, fatal_key

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upsert(self, object_type, id_property, inputs):
        out = self.inner.upsert(object_type, id_property, inputs)
        if inputs[0].key == self.fatal_key:
            raise KeyboardInterrupt("killed between the CRM's answer and the state commit")
        return out


def test_a_push_interrupted_after_the_crm_applied_a_batch_resumes_without_duplicates(warehouse_url, crm):
    wh = Warehouse(warehouse_url)
    payload = build_payload(golden_contacts(1000), CONTACTS)
    with pytest.raises(KeyboardInterrupt):
        push(wh, _DiesAfterSending(hub(crm), fatal_key="GC-00000301"), payload, CONTACTS, SETTINGS, "run-1")
    # Some batches are committed; the 4th reached the CRM unrecorded, and so may others that were on the wire.
    applied = len(crm.objects("contacts"))
    committed = len(load_state(wh, "contacts"))
    assert committed < 1000 and applied >= committed + 100 and committed % 100 == 0
    resumed = push(wh, hub(crm), payload, CONTACTS, SETTINGS, "run-2")
    # What reached the CRM unrecorded is sent again; keyed by golden ID it updates instead of creating twice.
    assert (resumed.unchanged, resumed.sent, resumed.updated, resumed.created) == (
        committed, 1000 - committed, applied - committed, 1000 - applied)
    stored = crm.objects("contacts")
    assert len(stored) == 1000 and len({o["ext_id"] for o in stored}) == 1000
    assert crm.stats()["counts"]["contacts_created"] == 1000


KILLED_PUSH = textwrap.dedent("""
    import os, signal, sys
    import pandas as pd
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.core.crm.sync import push
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    url, crm_url, token, payload_file, kill_after = sys.argv[1:]
    settings = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
    payload = pd.read_json(payload_file, orient="records", dtype=False)

    done = []

    def after_batch(b):  # b is the batch's index; they complete in any order: count them instead
        done.append(b)
        if len(done) == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    push(Warehouse(url), HubSpotConnector.create(crm_url, token), payload, settings.objects["contacts"], settings,
         "killed-run", after_batch=after_batch)
""")


def test_a_push_process_killed_mid_run_resumes_without_duplicates(sqlite_url, crm, tmp_path):
    wh = Warehouse(sqlite_url)
    payload = build_payload(golden_contacts(800), CONTACTS)
    payload_file = tmp_path / "payload.json"
    payload.to_json(payload_file, orient="records")
    proc = subprocess.run([sys.executable, "-c", KILLED_PUSH, sqlite_url, crm.url, TOKEN, str(payload_file), "2"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    applied = len(crm.objects("contacts"))
    committed = len(load_state(wh, "contacts"))  # batches are committed as they come back, in any order
    assert 100 <= committed < 800 and committed % 100 == 0 and committed <= applied
    # The killed process still held the push lock; the operating system released it with the process.
    resumed = push(wh, hub(crm), payload, CONTACTS, SETTINGS, "run-2")
    assert (resumed.unchanged, resumed.updated, resumed.created) == (committed, applied - committed, 800 - applied)
    assert len({o["ext_id"] for o in crm.objects("contacts")}) == len(crm.objects("contacts")) == 800
    assert crm.stats()["counts"]["contacts_created"] == 800


def test_a_429_storm_with_batches_in_flight_stays_under_the_servers_limit(sqlite_url):
    from crm_pipelines.devtools.crm_server import Faults

    wh = Warehouse(sqlite_url)
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, max_requests=12, window_seconds=0.5, faults=Faults(throttle_rate=0.2, retry_after=0.05),
                   seed=5) as server:
        # The client believes it may send 20 per window, with three batches on the wire: only the
        # server's 429s and Retry-After hold it back.
        fast = replace(SETTINGS, max_in_flight=3)
        report = push(wh, hub(server, max_requests=20, window_seconds=0.5, max_attempts=40),
                      build_payload(golden_contacts(3000), CONTACTS), CONTACTS, fast, "storm")
        stats = server.stats()
        assert report.created == 3000 and report.throttled > 0 and stats["counts"]["429_injected"] > 0
        assert stats["peak_window"] <= 12
        assert server.count("contacts") == {"objects": 3000, "distinct_ext_ids": 3000}
