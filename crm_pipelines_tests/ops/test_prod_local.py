"""The production profile as `make prod-local` runs it: PostgreSQL instance and warehouse, queued runs
with limits, daemon and webserver as separate processes."""

from __future__ import annotations

import threading

import pytest
import requests

from crm_pipelines.devtools.processes import free_port
from crm_pipelines_tests.ops.util import graphql, wait_http

pytestmark = pytest.mark.postgres


def test_prod_local_runs_daemon_and_webserver_on_postgres_with_queued_runs(tmp_path):
    from crm_pipelines.devtools.prod_local import start

    port = free_port()
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            start(port, tmp_path / "landing", tmp_path / "data", tmp_path / "home", stop, ready, log=lambda m: None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            ready.set()

    (tmp_path / "landing").mkdir()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(120) and not errors, errors
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/server_info", 180)
        info = graphql(base, "{ instance { runQueuingSupported info "
                             "daemonHealth { allDaemonStatuses { daemonType healthy required } } } }")["instance"]
        assert info["runQueuingSupported"] is True
        assert "PostgresRunStorage" in info["info"] and "QueuedRunCoordinator" in info["info"]
        for limit in ("crm/push", "crm/print-release", "crm/nightly"):
            assert limit in info["info"]
        # The daemon is a separate process that reports its heartbeat through the instance.
        statuses = {d["daemonType"] for d in info["daemonHealth"]["allDaemonStatuses"] if d["required"]}
        assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= statuses
        repos = graphql(base, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name "
                              "jobs { name } } } } }")["repositoriesOrError"]["nodes"]
        jobs = {j["name"] for r in repos for j in r["jobs"]}
        assert {"push_crm", "release_print_list", "build_golden"} <= jobs
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
