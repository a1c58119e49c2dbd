"""The scoring group in Dagster: the near-real-time lead path through its sensor, SQL crossings,
schedules, the run-failure alert, the funnel report."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import datetime, timezone

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import ALERT_LEDGER, GOLDEN_CONTACTS, LEAD_SCORE_HISTORY, LEAD_SCORES
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs.resources import LandingZoneResource, WarehouseResource
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines.devtools.webhook_sink import WebhookSink
from crm_pipelines_tests.conftest import READY_PORTAL
from crm_pipelines_tests.defs.test_crm import TOKEN, push_crm
from crm_pipelines_tests.defs.test_golden import restore_golden
from crm_pipelines_tests.defs.test_sources import EMAIL, run_range, settings_for

TODAY = "2026-11-21"
HEADER = "Scan-ID;Messe;Scan-Zeitpunkt;Anrede;Titel;Vorname;Nachname;Firma;Position;Straße;PLZ;Ort;Land;Telefon;Mobil;" \
         "E-Mail;Interesse;Notiz;Opt-In\n"


def scan(sid: str, first: str, last: str, email: str, company: str = "Neukunde GmbH", plz: str = "80331") -> str:
    return f"{sid};SPS Nürnberg;21.11.2026 10:15;Herr;;{first};{last};{company};Einkauf;Hauptstr. 1;{plz};München;" \
           f"Deutschland;;;{email};Antriebe;;ja\n"


def _world(tmp_path, demo_landing, monkeypatch, crm, slack):
    root, manifest = demo_landing
    landing = tmp_path / "landing"
    shutil.copytree(root, landing)
    monkeypatch.setenv("CRM_API_TOKEN", TOKEN)
    monkeypatch.setenv("CRM_SALES_SLACK_WEBHOOK_URL", slack.url)
    settings = replace(settings_for(tmp_path, landing), crm_url=crm.url, sales_slack_set=True)
    return landing, manifest, settings, build_defs(settings)


def _sensor(defs, instance, name, landing, cursor=None, wh_url=None):
    resources = {"landing": LandingZoneResource(root=str(landing))}
    if wh_url:
        resources["warehouse"] = WarehouseResource(url=wh_url)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = defs.resolve_sensor_def(name).evaluate_tick(ctx)
    return result.run_requests or [], result.cursor


def test_a_trade_fair_lead_reaches_its_rep_once_through_the_sensor(tmp_path, demo_landing, monkeypatch):
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm, WebhookSink() as slack:
        crm.seed_from_landing(demo_landing[0])
        landing, manifest, settings, defs = _world(tmp_path, demo_landing, monkeypatch, crm, slack)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            _, cursor = _sensor(defs, instance, "new_leads", landing)  # what had landed before: seen once
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            known = wh.execute_first(sa.select(g.c.email, g.c.first_name, g.c.last_name).where(
                g.c.email.is_not(None), g.c.first_name.is_not(None), g.c.last_name.is_not(None),
                g.c.postal_code.like("8%")).order_by(g.c.golden_id).limit(1))
            folder = landing / "trade_fair_leads" / TODAY
            folder.mkdir(parents=True)
            (folder / "sps_20261121_1015.csv").write_text(
                "\ufeff" + HEADER + scan("TF-X-1", "Lea", "Sommer", "lea.sommer@neukunde.de")
                + scan("TF-X-2", known.first_name, known.last_name, known.email), encoding="utf-8")

            requests_, cursor = _sensor(defs, instance, "new_leads", landing, cursor)
            assert [r.tags["crm/landing_file"] for r in requests_] == [f"trade_fair_leads/{TODAY}/sps_20261121_1015.csv"]
            job = defs.resolve_job_def("fast_lead_path")
            result = job.execute_in_process(instance=instance, run_config=requests_[0].run_config)
            assert result.success
            slack.wait_for(2)
            texts = slack.texts()
            assert len(texts) == 2 and any("Lea Sommer" in t for t in texts)
            assert all("Neuer Messe-Lead" in t for t in texts)
            # The known person is matched to their golden contact.
            ledger = wh.read_frame(sa.select(ALERT_LEDGER)).set_index("alert_key")
            assert ledger.loc["lead:trade_fair_leads:TF-X-2", "golden_id"] is not None
            assert ledger.loc["lead:trade_fair_leads:TF-X-1", "landed_at"] is not None
            assert len(crm.tasks()) == 2

            # The sensor ticks again, and the run is retried: no second alert.
            again, _ = _sensor(defs, instance, "new_leads", landing, cursor)
            assert again == []
            assert job.execute_in_process(instance=instance, run_config=requests_[0].run_config).success
            assert len(slack.received) == 2 and len(crm.tasks()) == 2
            # The raw partition the fast path loaded is visible as a materialisation.
            mat = instance.get_latest_materialization_event(dg.AssetKey(["raw", "trade_fair_leads"]))
            assert mat.asset_materialization.partition == TODAY
            # No address in clear text in the runs' logs or metadata.
            blob = "\n".join(r.user_message or "" for r in instance.all_logs(result.run_id))
            assert [m for m in EMAIL.findall(blob) if not m.split("@")[0].endswith("***")] == []


def test_an_sql_crossing_is_alerted_once_and_scores_have_history(tmp_path, demo_landing, monkeypatch):
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm, WebhookSink() as slack:
        crm.seed_from_landing(demo_landing[0])
        landing, manifest, settings, defs = _world(tmp_path, demo_landing, monkeypatch, crm, slack)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            assert push_crm(defs, instance).success
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            # A customer (contract: may be called) who suddenly studies prices and joins webinars.
            email = wh.scalar(sa.select(g.c.email).where(g.c.email.is_not(None), g.c.erp_customer_number.is_not(None))
                              .limit(1))
            now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
            day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            folder = landing / "behaviour_events" / day
            folder.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({"event_id": f"hot-{i}", "type": t, "ts": now_ms - i * 1000, "anonymous_id": "anon-hot",
                                 "email": email, "contact_id": None, "page": {"url": u, "title": None} if u else None,
                                 "content_id": None, "utm": {"campaign": None, "source": None}})
                     for i, (t, u) in enumerate([("pricing_view", "https://x.de/preise")] * 3
                                                + [("webinar_attended", None)] * 2)]
            (folder / "events_hot.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            run_range(defs, instance, day, day, selection=[dg.AssetKey(["raw", "behaviour_events"])])

            job = defs.resolve_job_def("score_leads")
            first = job.execute_in_process(instance=instance)
            assert first.success
            gid = wh.scalar(sa.select(g.c.golden_id).where(g.c.email == email))
            stage = wh.scalar(sa.select(LEAD_SCORES.c.stage).where(LEAD_SCORES.c.golden_id == gid))
            assert stage == "sql"
            alerts = wh.read_frame(sa.select(ALERT_LEDGER).where(ALERT_LEDGER.c.golden_id == gid))
            assert len(alerts) == 1 and alerts["status"].iloc[0] == "notified"
            texts = [t for t in slack.texts() if "Heißer Lead (SQL)" in t]
            assert texts and any("pricing_page" in t for t in texts)
            sent = len(slack.received)
            checks = {c.check_name: c.passed for c in first.get_asset_check_evaluations()}
            assert checks["alerts_delivered"] is True
            assert job.execute_in_process(instance=instance).success
            assert len(slack.received) == sent  # still the same crossing: no second alert
            assert wh.scalar(sa.select(sa.func.count()).select_from(LEAD_SCORE_HISTORY)) > 0
            mats = {e.materialization.asset_key.to_user_string(): e.materialization.metadata
                    for e in first.get_asset_materialization_events()}
            assert set(mats) == {"lead_scores", "lead_score_history", "lead_alerts"}


def test_schedules_follow_the_sync_frequency_matrix():
    defs = build_defs()
    with dg.instance_for_test() as instance:
        def requests_of(name, when):
            schedule = defs.resolve_schedule_def(name)
            ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                            repository_def=defs.get_repository_def())
            data = schedule.evaluate_tick(ctx)
            return schedule, data.run_requests

        at = datetime(2026, 11, 21, 0, 30, tzinfo=timezone.utc)  # 01:30 in Berlin
        hourly, reqs = requests_of("hourly_behaviour", at)
        assert hourly.cron_schedule == "5 * * * *" and reqs[0].partition_key == "2026-11-21"
        nightly, reqs = requests_of("nightly_refresh", at)
        assert nightly.execution_timezone == "Europe/Berlin" and reqs[0].partition_key == "2026-11-20"
        assert reqs[0].tags["crm/nightly"] == "2026-11-20"
        newsletter, reqs = requests_of("daily_newsletter", at)
        assert newsletter.cron_schedule == "0 6 * * *" and reqs[0].partition_key == "2026-11-20"
        assert defs.resolve_schedule_def("weekly_reactivation").cron_schedule == "0 5 * * 1"
        assert defs.resolve_schedule_def("hourly_scoring").job_name == "score_leads"


def test_a_failed_run_is_reported_to_the_data_engineering_channel(tmp_path, monkeypatch):
    with WebhookSink() as ops:
        monkeypatch.setenv("CRM_ALERT_WEBHOOK_URL", ops.url)
        defs = build_defs(settings_for(tmp_path, tmp_path))
        with dg.instance_for_test() as instance:
            failed = defs.resolve_job_def("erase_person").execute_in_process(
                instance=instance, raise_on_error=False, run_config={"ops": {"erase_one": {"config": {}}}})
            assert not failed.success
            event = next(entry.dagster_event for entry in instance.all_logs(failed.run_id)
                         if entry.dagster_event and entry.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE)
            sensor = defs.resolve_sensor_def("run_failures")
            ctx = dg.build_run_status_sensor_context(sensor_name="run_failures", dagster_event=event,
                                                     dagster_instance=instance, dagster_run=failed.dagster_run,
                                                     resources={"alerts": _alerts(ops.url)}).for_run_failure()
            sensor(ctx)
            ops.wait_for(1)
            text = ops.texts()[0]
            assert "erase_person" in text and failed.run_id[:8] in text and "erase_one" in text


def _alerts(url):
    from crm_pipelines.defs.resources import AlertResource

    return AlertResource(webhook_url=url)


def test_a_channel_that_still_fails_shows_as_a_failed_check():
    from crm_pipelines.core.scoring.handoff import HandoffReport
    from crm_pipelines.defs.scoring import _delivered

    assert _delivered(HandoffReport(notified={"slack": 2})).passed is True
    failed = _delivered(HandoffReport(notified={"slack": 1}, failed={"teams": 1}))
    assert failed.passed is False and failed.metadata["failed_by_channel"].value == {"teams": 1}
