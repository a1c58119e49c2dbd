"""A run whose worker process was killed is recognised as dead, marked failed by run monitoring,
and no longer holds what it held."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

LAUNCHER = {"run_launcher": {"module": "crm_pipelines.defs.launcher", "class": "LocalRunLauncher"},
            "run_monitoring": {"enabled": True, "poll_interval_seconds": 30, "max_resume_run_attempts": 0}}


def test_a_killed_run_worker_is_reported_dead_and_its_run_marked_failed():
    with dg.instance_for_test(overrides=LAUNCHER) as instance:
        # A stand-in run worker: a real process that the test kills with SIGKILL, as the OOM killer would.
        worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        run = instance.add_run(DagsterRun(job_name="crm_push", status=DagsterRunStatus.STARTED))
        instance.report_engine_event(f"Started process for run (pid: {worker.pid}).", run,
                                     EngineEventData.in_process(worker.pid))
        launcher = instance.run_launcher
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        health = launcher.check_run_worker_health(run)
        assert health.status == WorkerStatus.FAILED and str(worker.pid) in health.msg

        record = instance.get_run_records(dg.RunsFilter(run_ids=[run.run_id]))[0]
        monitor_started_run(instance, None, record, logging.getLogger("test"))
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


def test_a_run_not_started_yet_is_not_declared_dead():
    with dg.instance_for_test(overrides=LAUNCHER) as instance:
        run = instance.add_run(DagsterRun(job_name="crm_push", status=DagsterRunStatus.STARTED))
        assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.UNKNOWN


def _launch_push(base: str) -> str:
    from crm_pipelines_tests.ops.util import launch_run

    return launch_run(base, "push_crm")


@pytest.mark.postgres
@pytest.mark.slow
def test_a_push_killed_mid_way_frees_its_slot_and_the_next_push_completes_on_its_own(tmp_path, demo_landing,
                                                                                      postgres_url, monkeypatch):
    """The production profile with its daemon: a push is killed (its whole process tree, SIGKILL) while
    batches are on the wire; nobody touches anything; the next push runs and completes, and the CRM
    holds every golden contact exactly once."""
    import shutil

    import psutil
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import CRM_SYNC_STATE, GOLDEN_CONTACTS
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.definitions import build_defs
    from crm_pipelines.devtools.crm_server import CrmServer
    from crm_pipelines.devtools.processes import BIN, ROOT, dagster_services, free_port, stop_groups, wait_until
    from crm_pipelines.settings import Settings
    from crm_pipelines_tests.conftest import READY_PORTAL
    from crm_pipelines_tests.defs.test_crm import TOKEN
    from crm_pipelines_tests.defs.test_golden import load_and_match
    from crm_pipelines_tests.ops.util import wait_http

    src, manifest = demo_landing
    landing = tmp_path / "landing"
    shutil.copytree(src, landing)
    wh_url = sa.engine.make_url(postgres_url)
    admin = sa.create_engine(wh_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    instance_db = wh_url.database + "_instance"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{instance_db}"')
    home = tmp_path / "home"
    home.mkdir()
    # The production profile, with run monitoring polling every 5 s instead of 30 (a test's minute).
    (home / "dagster.yaml").write_text((ROOT / "dagster.prod.yaml").read_text()
                                       .replace("poll_interval_seconds: 30", "poll_interval_seconds: 5")
                                       .replace("free_slots_after_run_end_seconds: 30",
                                                "free_slots_after_run_end_seconds: 5"))
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed_from_landing(landing)
        env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": wh_url.host, "DAGSTER_PG_PORT": str(wh_url.port),
               "DAGSTER_PG_USERNAME": wh_url.username, "DAGSTER_PG_PASSWORD": wh_url.password or "",
               "DAGSTER_PG_DB": instance_db, "CRM_WAREHOUSE_URL": postgres_url, "CRM_LANDING_DIR": str(landing),
               "CRM_DATA_DIR": str(tmp_path / "data"), "CRM_API_URL": crm.url, "CRM_API_TOKEN": TOKEN,
               "CRM_PRIVACY_SALT": "killed-run-test-salt-0123456789", "GX_ANALYTICS_ENABLED": "false",
               # The push's steps in its run process: the kill takes the run's whole process tree either way,
               # and the sensors' runs beside it (new leads, consent) then cost one process each, not one per step.
               "CRM_EXECUTOR": "in_process"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        full_env = dict(os.environ)
        subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=full_env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        instance = dg.DagsterInstance.get()
        # The nightly part before the push, in this process, on the same instance and warehouse.
        load_and_match(build_defs(Settings.from_env()), instance, manifest)
        wh = Warehouse.for_url(postgres_url)
        golden = set(wh.read_frame(sa.select(GOLDEN_CONTACTS.c.golden_id))["golden_id"])

        port = free_port()
        procs = dagster_services(full_env, port)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/server_info", 180)
            crm.set_faults(slow_write_seconds=2.0)  # batches take long enough to be killed on the wire
            first = _launch_push(base)
            counts = crm.counts
            wait_until(lambda: counts["contacts_created"] + counts["contacts_updated"] > 0
                       or instance.get_run_by_id(first).is_finished, 240, "the first push writing contacts")
            assert not instance.get_run_by_id(first).is_finished
            from crm_pipelines.defs.launcher import worker_pid

            pid, _ = worker_pid(instance, first)
            tree = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
            for proc in tree:
                proc.kill()
            psutil.wait_procs(tree, timeout=30)

            # Nobody touches the UI: the run is failed (by the code server that started it, or when
            # that is gone too, by run monitoring through the launcher) and its pool slot is freed.
            wait_until(lambda: instance.get_run_by_id(first).status == DagsterRunStatus.FAILURE, 120,
                       "the killed push marked failed")
            crm.set_faults(slow_write_seconds=0.0)
            second = _launch_push(base)
            wait_until(lambda: instance.get_run_by_id(second).is_finished, 300, "the second push")
            assert instance.get_run_by_id(second).status == DagsterRunStatus.SUCCESS, [
                e.dagster_event.message or str(e.dagster_event.event_specific_data)[:600]
                for e in instance.all_logs(second) if e.dagster_event and "FAIL" in e.dagster_event.event_type_value]
        finally:
            stop_groups(procs)
        # Nothing lost, nothing twice: every contact the sync state calls sent is in the CRM under its
        # CRM ID, and no golden contact is there twice.
        pushed = [o["ext_id"] for o in crm.objects("contacts") if o["ext_id"]]
        assert len(pushed) == len(set(pushed)) and set(pushed) <= golden
        st = CRM_SYNC_STATE
        sent = wh.read_frame(sa.select(st.c.golden_id, st.c.crm_id).where(
            st.c.object_type == "contacts", st.c.last_status.in_(["created", "updated", "unchanged"])))
        assert len(sent) >= 0.95 * len(golden)
        in_crm = {str(o["id"]): o["ext_id"] for o in crm.objects("contacts")}
        assert all(in_crm.get(str(c)) == g for g, c in zip(sent["golden_id"], sent["crm_id"]))
    instance.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{instance_db}" WITH (FORCE)')
    admin.dispose()
