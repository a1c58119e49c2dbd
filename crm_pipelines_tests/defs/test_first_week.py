"""Day one in production: the things a first week does to the pipeline that no operator should have to fix."""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy.identity import IdentityHasher, load_or_create_salt
from crm_pipelines.core.schema import ALERT_LEDGER, raw_table
from crm_pipelines.core.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs import sources as sources_defs
from crm_pipelines.defs.resources import LOCAL_CRM_URL, CrmResource, LandingZoneResource, WarehouseResource
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines.defs.sources import raw_asset_key
from crm_pipelines_tests.conftest import put
from crm_pipelines_tests.defs.test_sources import run_range, settings_for

DAY = "2026-11-10"


def _lead(n: int, email: str, last: str) -> str:
    return json.dumps({"lead_id": f"WF-20261110-{n:06d}", "submitted_at": "2026-11-10T09:15:00+01:00", "form": "kontakt",
                       "salutation": "Frau", "first_name": "Anna", "last_name": last, "email": email,
                       "company_name": "Beispiel Hydraulik GmbH", "zip": "20095", "city": "Hamburg", "country": "DE",
                       "newsletter_opt_in": False}, ensure_ascii=False)


def test_an_erasure_arriving_during_an_ingest_waits_for_it_and_the_night_stays_balanced(
        tmp_path, landing, warehouse_url, monkeypatch, mappings):
    erased = "anna.loeschmann@beispiel-hydraulik.de"
    put(landing, "web_form_leads", DAY, "leads_0000.jsonl",
        "\n".join([_lead(1, erased, "Löschmann"), _lead(2, "anna.bleibt@beispiel-hydraulik.de", "Bleibtreu")]) + "\n")
    monkeypatch.setenv("CRM_WAREHOUSE_URL", warehouse_url)  # the resource reads it through EnvVar
    settings = settings_for(tmp_path, landing, url=warehouse_url)
    defs = build_defs(settings)

    # The load pauses after writing its partition, before its balance check, until the erasure is waiting.
    loaded, erasure_waiting = threading.Event(), threading.Event()
    real = sources_defs.ingest_partition

    def paused(*args, **kwargs):
        report = real(*args, **kwargs)
        loaded.set()
        assert erasure_waiting.wait(120), "the erasure never reached the lock"
        return report

    monkeypatch.setattr(sources_defs, "ingest_partition", paused)
    outcome: dict = {}
    with dg.instance_for_test() as instance:
        ingest = threading.Thread(target=lambda: outcome.update(result=run_range(
            defs, instance, DAY, DAY, selection=[raw_asset_key("web_form_leads")], raise_on_error=False)))
        ingest.start()
        assert loaded.wait(120)
        wh = Warehouse.for_url(warehouse_url)
        messages: list[str] = []

        def log(message: str) -> None:
            messages.append(message)
            if message.startswith("waiting for the loads in flight"):
                erasure_waiting.set()

        report = erase(wh, IdentityHasher(load_or_create_salt(settings.salt_file)), mappings, emails=[erased],
                       request_id="req-during-ingest", source="test", actor="test", log=log)
        erasure_waiting.set()  # should the erasure not have waited, the load must not hang the test
        ingest.join(120)

    result = outcome["result"]
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["rows_balance"] is True
    assert messages[0] == "waiting for the loads in flight to finish (raw layer)"
    # The erasure ran after the load: it found the row the load wrote and took it out.
    assert report.tables.get("raw.web_form_leads") == 1
    t = raw_table("web_form_leads", mappings["web_form_leads"].entity)
    assert set(wh.read_frame(sa.select(t.c.email))["email"]) == {"anna.bleibt@beispiel-hydraulik.de"}


def _tick(defs, instance, name: str, resources: dict, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = defs.resolve_sensor_def(name).evaluate_tick(ctx)
    return result.run_requests or [], result.cursor, result.skip_message


def test_the_lead_sensor_starts_from_now_and_leaves_older_deliveries_to_the_nightly_load(tmp_path, landing):
    from crm_pipelines_tests.defs.test_scoring import HEADER, TODAY, scan

    for n in range(3):  # weeks-old scans already in the landing zone when the daemon first starts
        put(landing, "trade_fair_leads", TODAY, f"sps_old_{n}.csv", HEADER + scan(f"TF-O-{n}", "Alt", "Scan", "a@b.de"))
    defs = build_defs(settings_for(tmp_path, landing))
    resources = {"landing": LandingZoneResource(root=str(landing))}
    with dg.instance_for_test() as instance:
        requests_, cursor, skipped = _tick(defs, instance, "new_leads", resources)
        assert requests_ == [] and cursor
        assert skipped == "3 file(s) left to the nightly load (first start); watching from now"

        fresh = put(landing, "trade_fair_leads", TODAY, "sps_new.csv", HEADER + scan("TF-N-1", "Neu", "Scan", "n@b.de"))
        requests_, cursor, _ = _tick(defs, instance, "new_leads", resources, cursor)
        assert [r.tags["crm/landing_file"] for r in requests_] == [f"trade_fair_leads/{TODAY}/{fresh.name}"]

        # A file that landed two hours ago while the daemon was down: the nightly load's, not an alert.
        late = put(landing, "trade_fair_leads", TODAY, "sps_late.csv", HEADER + scan("TF-L-1", "Spät", "Scan", "l@b.de"))
        two_hours_ago = late.stat().st_mtime - 7200
        os.utime(late, (two_hours_ago, two_hours_ago))
        requests_, cursor, skipped = _tick(defs, instance, "new_leads", resources, cursor)
        assert requests_ == [] and skipped.startswith("1 file(s) left to the nightly load (older than 60 minutes)")
        assert _tick(defs, instance, "new_leads", resources, cursor)[0] == []


def test_the_sla_sensor_is_quiet_until_a_hand_off_is_due_and_says_so_when_there_is_no_crm(tmp_path, landing, sqlite_url):
    wh = Warehouse.for_url(sqlite_url)
    wh.ensure_tables([ALERT_LEDGER])
    now = datetime.now(timezone.utc)
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(ALERT_LEDGER).values(alert_key="lead:trade_fair_leads:TF-1", kind="trade_fair_lead",
                                                    created_at=now, due_at=now + timedelta(hours=2), status="notified",
                                                    task_crm_id="1"))
    defs = build_defs(settings_for(tmp_path, landing))
    with dg.instance_for_test() as instance:
        def tick(crm_url: str):
            return _tick(defs, instance, "sla", {"warehouse": WarehouseResource(url=sqlite_url),
                                                 "crm": CrmResource(base_url=crm_url)})

        requests_, _, skipped = tick(LOCAL_CRM_URL)
        assert requests_ == [] and skipped == "no hand-off near or past its due time"
        with wh.engine.begin() as conn:
            conn.execute(sa.update(ALERT_LEDGER).values(due_at=now + timedelta(minutes=5)))
        requests_, _, skipped = tick(LOCAL_CRM_URL)  # nothing listens on the local CRM's port here
        assert requests_ == [] and skipped.startswith("1 hand-off(s) due for a check, but no CRM: CRM_API_URL is not set")
        with CrmServer() as crm:
            requests_, _, _ = tick(crm.url)
        assert len(requests_) == 1 and requests_[0].tags["crm/sla_due"] == "1"
