"""Run hygiene: run history pruned by age, the warehouse vacuumed and measured, recovery notices,
freshness policies on the assets users rely on."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.platform.maintenance import vacuum, warehouse_sizes
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs.automation import prune_runs
from crm_pipelines.defs.resources import AlertResource
from crm_pipelines.devtools.webhook_sink import WebhookSink
from crm_pipelines_tests.defs.test_sources import settings_for


def test_old_finished_runs_are_pruned_with_their_events(tmp_path):
    defs = build_defs(settings_for(tmp_path, tmp_path))
    job = defs.resolve_job_def("verify_audit_trail")
    with dg.instance_for_test() as instance:
        runs = [job.execute_in_process(instance=instance).run_id for _ in range(3)]
        assert len(instance.get_run_records()) == 3
        # Nothing is older than 90 days yet.
        assert prune_runs(instance, 90) == 0
        # Seen from 100 days later, all three are.
        assert prune_runs(instance, 90, now=datetime.now(timezone.utc) + timedelta(days=100)) == 3
        assert instance.get_run_records() == []
        assert all(list(instance.all_logs(r)) == [] for r in runs)


def test_the_maintenance_job_vacuums_and_reports_sizes(tmp_path, warehouse_url):
    wh = Warehouse(warehouse_url)
    t = sa.Table("bulk", sa.MetaData(), sa.Column("x", sa.Text()), schema="staging")
    wh.ensure_tables([t])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(t), [{"x": "ä" * 500} for _ in range(4000)])
    grown = warehouse_sizes(wh)
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(t))
    vacuum(wh)
    after = warehouse_sizes(wh)
    assert set(after) == {"raw", "staging", "golden", "marts", "ops"}
    assert after["staging"] < grown["staging"]


def test_the_job_reports_in_dagster(tmp_path):
    defs = build_defs(settings_for(tmp_path, tmp_path))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("maintenance").execute_in_process(instance=instance)
        assert result.success
        md = {k: v.value for e in result.all_events if e.is_successful_output
              for k, v in e.step_output_data.metadata.items()}
        assert md["runs_deleted"] == 0 and md["run_retention_days"] == 90 and "ops" in md["warehouse_mb_by_layer"]
    assert defs.resolve_schedule_def("weekly_maintenance").cron_schedule == "30 4 * * 0"


def test_a_success_after_a_failure_sends_a_recovery_notice(tmp_path):
    defs = build_defs(settings_for(tmp_path, tmp_path))
    with WebhookSink() as ops, dg.instance_for_test() as instance:
        job = defs.resolve_job_def("erase_person")
        sensor = defs.resolve_sensor_def("run_recoveries")
        resources = {"alerts": AlertResource(webhook_url=ops.url)}

        def tick(result):
            event = next(e.dagster_event for e in instance.all_logs(result.run_id)
                         if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS)
            ctx = dg.build_run_status_sensor_context(sensor_name="run_recoveries", dagster_event=event,
                                                     dagster_instance=instance, dagster_run=result.dagster_run,
                                                     resources=resources)
            return sensor(ctx)

        ok = defs.resolve_job_def("verify_audit_trail").execute_in_process(instance=instance)
        tick(ok)
        assert ops.received == []  # nothing failed before
        failed = job.execute_in_process(instance=instance, raise_on_error=False,
                                        run_config={"ops": {"erase_one": {"config": {}}}})
        assert not failed.success
        (tmp_path / "landing").mkdir(exist_ok=True)
        fixed = job.execute_in_process(instance=instance, raise_on_error=False, run_config={
            "ops": {"erase_one": {"config": {"email": "niemand@example.de"}}}})
        assert fixed.success
        tick(fixed)
        ops.wait_for(1)
        assert ops.texts()[0].startswith("Recovered") and "job erase_person succeeded again" in ops.texts()[0]


def test_freshness_policies_on_golden_contacts_and_lead_alerts():
    defs = build_defs()
    graph = defs.resolve_asset_graph()
    golden = graph.get(dg.AssetKey(["golden", "contacts"])).freshness_policy
    assert golden is not None and golden.deadline_cron == "0 7 * * *" and golden.timezone == "Europe/Berlin"
    alerts = graph.get(dg.AssetKey("lead_alerts")).freshness_policy
    assert alerts is not None and alerts.fail_window.to_timedelta() == timedelta(minutes=90)
