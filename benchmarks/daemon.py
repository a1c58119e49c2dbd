"""Shared by the latency benchmarks: a small resolved warehouse, a real dagster-daemon, waiting for it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import ROOT
from crm_pipelines.devtools import processes
from crm_pipelines.devtools.processes import BIN, start_group, stop_groups


def small_warehouse(tmp: Path, n_emails: int = 4, contacts: int = 2000) -> tuple[Path, str, list[str]]:
    """A demo-sized landing zone loaded and resolved (no Dagster), and addresses to erase."""
    from crm_pipelines.core.golden.build import ensure_golden_tables, resolve_accounts, resolve_contacts
    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.core.golden.staging import build_account_records, build_person_records
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.demo.generator import GeneratorConfig, generate
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    landing = tmp / "landing"
    generate(GeneratorConfig(contacts=contacts, seed=9, out=landing, days=3))
    shutil.rmtree(landing / "erasure_requests", ignore_errors=True)  # only the benchmark's own requests
    url = f"sqlite:///{tmp / 'data' / 'warehouse.db'}"
    wh = Warehouse(url)
    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    for m in mappings.values():
        for day in landed_partitions(landing, m.source):
            ingest_partition(m, day, landing, wh, "bench")
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    ensure_golden_tables(wh)
    build_person_records(wh)
    build_account_records(wh)
    resolve_accounts(wh, cfg, "bench")
    resolve_contacts(wh, cfg, "bench")
    emails = wh.read_raw_sql("SELECT email FROM golden.contacts WHERE email IS NOT NULL ORDER BY golden_id LIMIT 50")
    wh.engine.dispose()
    return landing, url, emails["email"].tolist()[::7][:n_emails]


def sensor_ticked(home: Path) -> bool:
    import dagster as dg
    from dagster._core.scheduler.instigation import InstigatorType

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        return any(instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1) for s in states)
    finally:
        instance.dispose()


def start_daemon(home: Path, env: dict) -> subprocess.Popen:
    """dagster-daemon on the project's workspace, in its own process group (stopped with stop_daemon)."""
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    # Create the instance's storage here, before the daemon and this process race to migrate it.
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home)
    dg.DagsterInstance.from_config(str(home)).dispose()
    return start_group([str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")], env)


def stop_daemon(daemon: subprocess.Popen) -> None:
    stop_groups([daemon])


def wait_until(condition, timeout: float, what: str) -> None:
    processes.wait_until(condition, timeout, what, interval=0.05)
