"""The print group in Dagster: lists built behind blocking checks, released only after approval
(job or approval file through the sensor), brochures from the hand-off queue."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import PRINT_LISTS, PRINT_QUEUE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines_tests.defs.test_golden import checks_of, golden_world


def test_a_campaign_list_is_built_approved_by_file_and_released(tmp_path, demo_landing):
    with golden_world(tmp_path, demo_landing) as (settings, defs, instance):
        assert defs.resolve_job_def("score_leads").execute_in_process(instance=instance).success
        built = defs.resolve_job_def("build_print_lists").execute_in_process(instance=instance)
        assert built.success and all(checks_of(built).values())
        md = {e.materialization.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
              for e in built.get_asset_materialization_events()}
        herbst = md["print/herbst-bayern"]
        assert herbst["dagster/row_count"] > 0 and herbst["audience"] == herbst["dagster/row_count"] + sum(
            herbst["excluded"].values())
        list_id = herbst["list_id"]

        # Releasing without an approval fails, and nothing reaches the outbox.
        outbox = settings.data_dir.resolve() / "print" / "outbox"
        refused = defs.resolve_job_def("release_print_list").execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {"release_op": {"config": {"list_id": list_id}}}})
        assert not refused.success
        assert not outbox.exists() or not list(outbox.iterdir())

        # The approver drops an approval file; the sensor releases the list once.
        approvals = settings.data_dir.resolve() / "print" / "approvals"
        approvals.mkdir(parents=True)
        wh = Warehouse.for_url(settings.default_warehouse_url)
        sha = wh.scalar(sa.select(PRINT_LISTS.c.csv_sha256).where(PRINT_LISTS.c.list_id == list_id))
        (approvals / f"{list_id}.approved").write_text(f"Katrin Berger\nsha256: {sha[:16]}\nfreigegeben nach Probedruck\n",
                                                        encoding="utf-8")
        sensor = defs.resolve_sensor_def("print_approvals")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert len(tick.run_requests) == 1
        released = defs.resolve_job_def("release_print_list").execute_in_process(
            instance=instance, run_config=tick.run_requests[0].run_config)
        assert released.success
        assert sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor)).run_requests == []
        files = sorted(p.name for p in outbox.iterdir())
        assert len(files) == 2 and files[0].startswith("herbst-bayern_") and files[1].endswith(".manifest.json")
        wh = Warehouse.for_url(settings.default_warehouse_url)
        row = wh.read_frame(sa.select(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id)).iloc[0]
        assert (row["status"], row["approved_by"]) == ("released", "Katrin Berger")


def test_queued_brochures_are_printed_one_person_each_under_the_approved_template(tmp_path, demo_landing):
    with golden_world(tmp_path, demo_landing) as (settings, defs, instance):
        wh = Warehouse.for_url(settings.default_warehouse_url)
        # Customers with a full address, queued by the hand-off (a hot lead: a brochure).
        customers = wh.read_raw_sql("SELECT golden_id FROM golden.contacts WHERE erp_customer_number IS NOT NULL "
                                    "AND street IS NOT NULL AND postal_code IS NOT NULL AND city IS NOT NULL "
                                    "ORDER BY golden_id LIMIT 3")["golden_id"].tolist()
        wh.ensure_tables([PRINT_QUEUE])
        with wh.engine.begin() as conn:
            for i, gid in enumerate(customers):
                conn.execute(sa.insert(PRINT_QUEUE).values(alert_key=f"sql:{gid}:{i}", golden_id=gid,
                                                           campaign="broschuere", queued_at=datetime.now(timezone.utc),
                                                           status="queued"))
        sensor = defs.resolve_sensor_def("print_jobs_queue")
        job = defs.resolve_job_def("print_single_jobs")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert len(tick.run_requests) == 1
        first = job.execute_in_process(instance=instance)
        md = {k: v.value for e in first.get_asset_materialization_events() for k, v in e.materialization.metadata.items()}
        assert first.success and all(checks_of(first).values())
        # Nobody approved the template yet: every eligible job waits on its own built list, none is printed.
        assert md["jobs"] == 3 and md["printed"] == 0 and md["waiting_for_template_approval"] >= 1
        assert md["waiting"] + sum(md["dropped"].values()) == 3
        outbox = settings.data_dir.resolve() / "print" / "outbox"
        assert not outbox.exists() or not list(outbox.glob("*.csv"))
        # The same waiting jobs do not ask for another run.
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor,
                                                             resources=defs.resources))
        assert again.run_requests == []

        # Marketing approves the template by file (the rules' SHA-256 from the template proof).
        approvals = settings.data_dir.resolve() / "print" / "approvals"
        approvals.mkdir(parents=True)
        sha = md["rules_sha256"]
        (approvals / "broschuere.template.approved").write_text(f"Katrin Berger\nsha256: {sha[:16]}\n", encoding="utf-8")
        approval_tick = defs.resolve_sensor_def("print_approvals").evaluate_tick(dg.build_sensor_context(instance=instance))
        [request] = approval_tick.run_requests
        assert request.job_name == "approve_print_template"
        assert defs.resolve_job_def("approve_print_template").execute_in_process(
            instance=instance, run_config=request.run_config).success
        # Now the waiting jobs are worth a run; it prints each one for its one person.
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor,
                                                            resources=defs.resources))
        assert len(tick.run_requests) == 1
        second = job.execute_in_process(instance=instance)
        md2 = {k: v.value for e in second.get_asset_materialization_events() for k, v in e.materialization.metadata.items()}
        assert second.success and all(checks_of(second).values())
        assert md2["printed"] == md["waiting"] >= 1
        files = sorted(outbox.glob("*.csv"))
        assert len(files) == md2["printed"]
        assert all(len(f.read_text(encoding="utf-8").splitlines()) == 2 for f in files)   # header + one recipient
        status = wh.read_frame(sa.select(PRINT_QUEUE.c.status))["status"].tolist()
        assert status.count("printed") == md2["printed"]
        third = job.execute_in_process(instance=instance)
        md3 = {k: v.value for e in third.get_asset_materialization_events() for k, v in e.materialization.metadata.items()}
        assert md3["printed"] == 0 and len(list(outbox.glob("*.csv"))) == len(files)   # printed once, not again
