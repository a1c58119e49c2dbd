"""A run whose worker process was killed is recognised as dead, marked failed by run monitoring,
and no longer holds what it held."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import dagster as dg
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
