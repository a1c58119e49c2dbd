"""Day one in production: the things a first week does to the pipeline that no operator should have to fix."""

from __future__ import annotations

import json
import threading

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy.identity import IdentityHasher, load_or_create_salt
from crm_pipelines.core.schema import raw_table
from crm_pipelines.core.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs import sources as sources_defs
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
