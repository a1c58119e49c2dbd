"""A run launcher whose run workers can be checked for life, so that a killed run recovers by itself.

Dagster's ``DefaultRunLauncher`` starts each run worker as a process of the code server; if that
code server is still alive when the worker is killed, it reports the run failed itself. If the
code server went too (killed with the run, a machine restart), nobody reports: the run stays
STARTED for ever and the default launcher cannot tell the daemon otherwise.

This launcher is the default one plus ``check_run_worker_health``: the worker's process ID is in
the run's engine event "Started process for run (pid: N)"; a process that no longer exists (or
is a newer process that reused the number) is reported FAILED, and run monitoring in the daemon
(``run_monitoring`` in ``dagster.yaml``) marks the run failed. Either way the daemon then frees the
run's concurrency slots ``free_slots_after_run_end_seconds`` later, so the next push is not
"blocked by limit for pool crm_push" (``docs/operations.md``, "A killed run").
"""

from __future__ import annotations

import psutil
from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher


def worker_pid(instance, run_id: str) -> tuple[int, float] | None:
    """The run worker's process ID and the time it was reported, from the run's engine events."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None and getattr(data, "metadata", None) else None
        if pid is not None and (event.message or entry.user_message or "").startswith("Started process for run"):
            return int(pid.value), entry.timestamp
    return None


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher that tells run monitoring whether a run's worker process still lives."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        found = worker_pid(self._instance, run.run_id)
        if found is None:
            # Not started yet (run monitoring's start timeout covers a worker that never comes up).
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no worker process reported yet")
        pid, reported_at = found
        try:
            proc = psutil.Process(pid)
            # A process ID can be reused: a process created after the report is not the worker.
            alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= reported_at + 1
        except psutil.Error:
            alive = False
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)",
                                    run_worker_id=str(pid))
