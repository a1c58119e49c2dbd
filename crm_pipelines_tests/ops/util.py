"""Helpers for tests that run Dagster's own processes: waiting for a server, GraphQL (free ports and
waiting in general: crm_pipelines.devtools.processes)."""

from __future__ import annotations

import requests

from crm_pipelines.devtools.processes import wait_until


def wait_http(url: str, timeout: float) -> None:
    """Until the server answers (a server process's start-up is not an event we can subscribe to)."""

    def answers() -> bool:
        try:
            return requests.get(url, timeout=5).status_code < 500
        except requests.ConnectionError:
            return False

    wait_until(answers, timeout, f"{url} answering")


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    resp = requests.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def launch_run(base: str, job: str, asset_selection: list[list[str]] | None = None, tags: dict | None = None) -> str:
    """Launches a job the way the UI's "Materialize" button does (queued, then started by the daemon)."""
    from crm_pipelines.nightly.__main__ import Dagster

    return Dagster(base).launch(job, tags or {}, asset_selection)
