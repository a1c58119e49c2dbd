"""The production profile as `make prod-local` runs it: PostgreSQL instance and warehouse, queued runs
with limits, daemon and webserver as separate processes."""

from __future__ import annotations

import threading

import pytest
import requests

from crm_pipelines.devtools.processes import free_port
from crm_pipelines_tests.ops.util import graphql, wait_http

pytestmark = pytest.mark.postgres


def test_prod_local_runs_daemon_and_webserver_on_postgres_with_queued_runs(tmp_path, capsys, monkeypatch):
    from crm_pipelines.devtools.prod_local import start
    from crm_pipelines.nightly.__main__ import main as nightly

    # Each run's steps in its run process: the chain below is about the daemon, the sensors and the CLI,
    # and one process per step (22 in ingest_sources) would spend most of the suite's time starting them.
    monkeypatch.setenv("CRM_EXECUTOR", "in_process")
    monkeypatch.setenv("CRM_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks/geheim")  # a secret: not in the env file

    port = free_port()
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    said: list[str] = []

    def run():
        try:
            start(port, tmp_path / "landing", tmp_path / "data", tmp_path / "home", stop, ready, log=said.append)
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

        # What a newcomer is told: the empty landing zone and what to do, the UI, the warehouse, the
        # credentials, an environment file for the command-line tools.
        text = "\n".join(said)
        assert f"{tmp_path / 'landing'} is EMPTY" in text and "make prod-local DEMO_DATA=1" in text
        assert f"http://127.0.0.1:{port}" in text and "warehouse:       postgresql://postgres:***@" in text
        env_file = (tmp_path / "data" / "prod" / "env.sh").read_text()
        assert "export CRM_WAREHOUSE_URL=postgresql://postgres:postgres@127.0.0.1:" in env_file
        assert "export CRM_SCHEDULES=running" in env_file and "export CRM_EXECUTOR=in_process" in env_file
        assert "geheim" not in env_file

        # The nightly chain for a day, by hand, through the webserver and the daemon: an empty night is
        # green from the load through golden to scores and the CRM push.
        assert nightly(["--ui", base, "run", "--from", "2026-11-01", "--wait"]) == 0
        out = capsys.readouterr().out
        assert "chain 2026-11-01: every run succeeded" in out
        for job in ("ingest_sources", "build_golden", "score_leads", "push_crm"):
            assert job in out
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2)
