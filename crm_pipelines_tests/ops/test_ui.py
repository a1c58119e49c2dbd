"""The UI as users see it: the webserver and the daemon on the demo data, pages rendered by headless
Chromium (Debian's package), a materialisation launched through the UI's GraphQL endpoint.

Screenshots go to a temporary folder, or to CRM_SCREENSHOT_DIR when set
(`make screenshots` refreshes docs/screenshots/ that way)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from crm_pipelines.devtools.processes import dagster_services, free_port, stop_groups, wait_until
from crm_pipelines_tests.ops.util import Browser, graphql, launch_run, wait_http

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed "
                                                         "(`make test` installs it where it can: root and apt-get)")
GROUPS = ("sources", "golden", "privacy", "crm", "scoring", "print", "activation", "reporting")


def chromium(args: list[str], profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1600,1000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def page(base: str, path: str, profile: Path) -> str:
    return chromium(["--dump-dom", f"{base}{path}"], profile)


def shot(base: str, path: str, out: Path, profile: Path) -> Path:
    chromium([f"--screenshot={out}", f"{base}{path}"], profile)
    return out


def test_the_ui_shows_every_group_and_the_blocking_checks_and_runs_what_it_launches(tmp_path, monkeypatch):
    from crm_pipelines.core.platform.schema import MATCH_RUNS
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.definitions import build_defs
    from crm_pipelines.demo.generator import GeneratorConfig
    from crm_pipelines.demo.runner import run_demo
    from crm_pipelines.settings import Settings

    home, data, landing = tmp_path / "home", tmp_path / "data", tmp_path / "landing"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), "CRM_DATA_DIR": str(data), "CRM_LANDING_DIR": str(landing),
           "CRM_PARTITION_START": "2026-01-01", "GX_ANALYTICS_ENABLED": "false",
           # Runs the daemon starts (those the UI launches, the sensors') run their steps in their run process.
           "CRM_EXECUTOR": "in_process"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    instance = dg.DagsterInstance.get()
    try:
        assert run_demo(GeneratorConfig(contacts=300, seed=5, days=2), settings=settings, instance=instance,
                        progress=lambda m: None) == 0
        # A failed blocking check to look at: the match rate "jumped" (as after a broken mapping).
        wh = Warehouse.for_url(settings.default_warehouse_url)
        with wh.engine.begin() as conn:
            conn.execute(sa.update(MATCH_RUNS).values(match_rate=0.0))
        # Only golden/accounts runs again, so the golden contacts page still shows the demo's good run.
        failed = build_defs(settings).resolve_job_def("build_golden").execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(["golden", "accounts"])])
        assert not failed.success
    finally:
        instance.dispose()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs = dagster_services({**os.environ, **env}, port)
    profile = tmp_path / "chromium"
    shots = Path(os.environ.get("CRM_SCREENSHOT_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        wait_http(f"{base}/server_info", 180)
        graphql(base, "mutation { setNuxSeen }")  # no welcome dialog over the screenshots

        groups_page = page(base, "/asset-groups", profile)
        for group in GROUPS:
            assert f">{group}<" in groups_page, f"asset group {group} not shown"
        checks_page = page(base, "/assets/golden/contacts?view=checks", profile)
        for check in ("unique_email", "every_record_one_golden_id", "match_rate_stable", "gx_golden_contacts"):
            assert check in checks_page, f"blocking check {check} not shown"
        failed_page = page(base, "/assets/golden/accounts?view=checks", profile)
        assert "match_rate_stable" in failed_page and "Failed" in failed_page

        shot(base, "/asset-groups", shots / "asset-graph.png", profile)
        shot(base, "/assets/golden/contacts", shots / "golden-contacts.png", profile)
        shot(base, "/assets/golden/accounts?view=checks&checkDetail=match_rate_stable", shots / "failed-blocking-check.png",
             profile)
        for name in ("asset-graph.png", "golden-contacts.png", "failed-blocking-check.png"):
            assert (shots / name).stat().st_size > 20_000, name

        # The reporting group's charts, as a user opens them: the asset page, then "[Show Markdown]" on the chart.
        browser = Browser(CHROMIUM, tmp_path / "chromium-cdp", free_port())
        try:
            for asset, alt, name in (("reporting/funnel", "funnel", "reporting-funnel.png"),
                                     ("reporting/attribution", "attribution by channel and model",
                                      "reporting-attribution.png")):
                image = browser.markdown_image(f"{base}/assets/{asset}", "chart")
                assert image["alt"] == alt and image["width"] > 400 and image["height"] > 200, (asset, image)
                browser.screenshot(shots / name)
        finally:
            browser.close()

        # Launch a small materialisation the way the UI's "Materialize" button does.
        run_id = launch_run(base, "score_leads", [["lead_score_history"]], {"crm/launched_by": "ui-test"})
        status = _wait_for_run(base, run_id, 240)
        assert status == "SUCCESS"
    finally:
        stop_groups(procs)


def _wait_for_run(base: str, run_id: str, timeout: float) -> str:
    """The run's status once it finished (queued, then started by the daemon, then done)."""
    seen: list[str] = []

    def finished() -> bool:
        seen.append(graphql(base, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                            {"id": run_id})["runOrError"]["status"])
        return seen[-1] in ("SUCCESS", "FAILURE", "CANCELED")

    wait_until(finished, timeout, f"run {run_id} finishing", interval=0.5)
    return seen[-1]
