"""Scale-out on Celery: the nightly jobs (ingest, golden, scores) run with dagster-celery's executor on a
real Redis broker (Debian's redis-server, on 127.0.0.1) and two `dagster-celery worker` processes, and
give exactly the warehouse that the same jobs give in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from crm_pipelines.devtools.celery_local import CeleryWorkers, RedisServer

ROOT = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="Debian's redis-server package is not installed "
                                                      "(`make test` installs it where it can: root and apt-get)")
AS_OF = "2026-11-20T06:00:00+01:00"
# What each table must hold identically; columns that name the run or the moment of writing are left out.
COMPARED = {
    "staging.person_records": ("record_key", ()),
    "staging.account_records": ("record_key", ()),
    "golden.contacts": ("golden_id", ("run_id",)),
    "golden.accounts": ("golden_id", ("run_id",)),
    "golden.crosswalk": ("record_key", ()),
    "golden.person_crosswalk": ("record_key", ("run_id", "valid_from")),
    "golden.account_crosswalk": ("record_key", ("run_id", "valid_from")),
    "marts.lead_scores": ("golden_id", ("run_id",)),
}


@pytest.fixture
def redis_url(tmp_path):
    with RedisServer(tmp_path) as server:
        yield server.url


def _env(tmp_path: Path, name: str, landing: Path, executor: str, broker: str | None) -> dict:
    home, data = tmp_path / name / "home", tmp_path / name / "data"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRM_", "DAGSTER_"))}
    env.update({"DAGSTER_HOME": str(home), "CRM_DATA_DIR": str(data), "CRM_LANDING_DIR": str(landing),
                "CRM_PARTITION_START": "2026-01-01", "CRM_PRIVACY_SALT": "equivalence-test-salt",
                "CRM_EXECUTOR": executor, "GX_ANALYTICS_ENABLED": "false",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    if broker:
        env.update({"CRM_CELERY_BROKER": f"{broker}/0", "CRM_CELERY_BACKEND": f"{broker}/1"})
    return env


def _nightly(env: dict, first: str, last: str, log: Path) -> None:
    """The nightly chain's jobs through `dagster job execute`, as an operator would run them by hand."""
    runs = [("ingest_sources", {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}),
            ("build_golden", {}), ("score_leads", {"crm/score_as_of": AS_OF})]
    for job, tags in runs:
        cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "crm_pipelines.definitions", "-a", "defs",
               "-j", job, "--tags", json.dumps(tags)]
        with log.open("a") as out:
            proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=900)
        assert proc.returncode == 0, f"{job} failed with {env['CRM_EXECUTOR']}; see {log}:\n{log.read_text()[-6000:]}"


def _tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    from crm_pipelines.core.platform.warehouse import Warehouse, default_url

    wh = Warehouse.for_url(default_url(data_dir.resolve()))
    out = {}
    for table, (key, skip) in COMPARED.items():
        df = wh.read_raw_sql(f"SELECT * FROM {table}").drop(columns=list(skip))
        df = df.sort_values([key, *([c for c in ("valid_to",) if c in df.columns])]).reset_index(drop=True)
        out[table] = df.astype(object).where(df.notna(), None)
    wh.engine.dispose()
    return out


def test_the_nightly_jobs_on_celery_workers_give_what_one_process_gives(tmp_path, demo_landing, redis_url, monkeypatch):
    landing, manifest = demo_landing
    first, last = manifest["partitions"][0], manifest["partitions"][-1]

    # The one-process reference runs beside the Celery runs (own instance, own warehouse): the two are compared
    # afterwards, and neither waits for the other.
    single = _env(tmp_path, "in_process", landing, "in_process", None)
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(_nightly, single, first, last, tmp_path / "in_process.log")
        celery_env = _env(tmp_path, "celery", landing, "celery", redis_url)
        monkeypatch.setenv("DAGSTER_HOME", celery_env["DAGSTER_HOME"])  # dagster.yaml reads it
        # The instance's storage exists before the workers start (two processes creating it at once would race).
        dg.DagsterInstance.from_config(celery_env["DAGSTER_HOME"]).dispose()
        with CeleryWorkers(celery_env, 2, prefix="crm", log_dir=tmp_path):
            _nightly(celery_env, first, last, tmp_path / "celery.log")
        reference.result()

    # Every step of the Celery runs ran in a worker, and both workers took steps.
    with dg.DagsterInstance.from_config(celery_env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        where: dict[str, str] = {}
        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event and event.is_engine_event and "in celery worker" in (record.message or ""):
                    where[f"{run.job_name}:{event.step_key}"] = str(event.engine_event_data.metadata["Celery worker"].value)
        assert {w.split("@")[0] for w in where.values()} == {"crm0", "crm1"}
        assert sum(k.startswith("build_golden:staging__person_records.clean_person_source") for k in where) == 5
        assert sum(k.startswith("score_leads:lead_scores.score_contact_range") for k in where) == 4

    one, many = _tables(Path(single["CRM_DATA_DIR"])), _tables(Path(celery_env["CRM_DATA_DIR"]))
    for table in COMPARED:
        assert len(one[table]) > 0, table
        pd.testing.assert_frame_equal(one[table], many[table], obj=table)
