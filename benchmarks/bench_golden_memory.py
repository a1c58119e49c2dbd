"""Where the golden steps' memory goes, phase by phase, at 1,000,000 contacts (SQLite warehouse).

bench_scale shows golden/contacts and golden/accounts as the steps that set a night's memory; this
splits them. A first process builds the staging records on a copy of bench_matching's cached raw
warehouse; a second, fresh process runs `resolve_accounts`, a third `resolve_contacts`, each with its
phases wrapped (the functions it calls, looked up in its module at call time) while a thread samples
the process's RSS every 0.05 s. Per phase: seconds, RSS when it starts, its peak, and the growth it
leaves behind.

    python -m benchmarks.bench_golden_memory                 # BENCH_GOLDEN_MEMORY_CONTACTS=1000000
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import CACHE, ROOT, figure, landing_zone, log

CONTACTS = int(os.environ.get("BENCH_GOLDEN_MEMORY_CONTACTS", "1000000"))

# Each step's phases, in the order it calls them. A phase called again and again (a slice or a part at a
# time) is reported once: its calls, their seconds summed and the highest peak; the loaders' first call
# (the matching columns) is a phase of its own.
PHASES = {
    "contacts": ("load_person_records", "resolve", "_write_golden", "assign_id_seqs", "register_ids", "survive",
                 "_lineage_rows", "_crosswalk_part", "_write_review_candidates"),
    "accounts": ("load_account_records", "account_signatures", "resolve", "_write_golden", "assign_id_seqs",
                 "register_ids", "survive", "_lineage_rows", "_crosswalk_part", "_write_review_candidates"),
}
LOADERS = ("load_person_records", "load_account_records")


class PhaseMemory:
    """Peak RSS per running phase; nested phases (a survive inside _write_golden) each keep their own."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.active: dict[int, list] = {}
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._next = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            for entry in list(self.active.values()):
                entry[0] = max(entry[0], rss)
            self._stop.wait(0.05)

    def wrap(self, module, name: str) -> None:
        fn = getattr(module, name)

        def wrapped(*args, **kwargs):
            label = name.lstrip("_")
            if name in LOADERS:
                label += "_slices" if any(r["phase"] == label + "_matching" for r in self.rows) else "_matching"
            token, self._next = self._next, self._next + 1
            before = self.proc.memory_info().rss
            self.active[token] = [before]
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                peak = max(self.active.pop(token)[0], self.proc.memory_info().rss)
                self.rows.append({"phase": label, "started": started, "seconds": time.monotonic() - started, "before_mb": before / 2**20,
                                  "peak_mb": peak / 2**20, "after_mb": self.proc.memory_info().rss / 2**20})

        setattr(module, name, wrapped)

    def stop(self) -> None:
        self._stop.set()


def _worker(mode: str, url: str) -> None:
    from crm_pipelines.core.golden import build as G
    from crm_pipelines.core.golden.build import resolve_accounts, resolve_contacts
    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.core.golden.staging import build_account_records, build_person_records
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    wh = Warehouse(url)
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    if mode == "prepare":
        build_person_records(wh)
        build_account_records(wh)
        return
    phases = PhaseMemory()
    for name in PHASES[mode]:
        phases.wrap(G, name)
    started = time.monotonic()
    (resolve_accounts if mode == "accounts" else resolve_contacts)(wh, cfg, "bench-golden-memory")
    total = time.monotonic() - started
    phases.stop()
    print(json.dumps({"seconds": total, "rows": phases.rows}))


def main() -> int:
    from benchmarks.bench_matching import warehouse

    url = warehouse(landing_zone(CONTACTS), CONTACTS)
    src = Path(url.replace("sqlite:///", "")).parent
    scratch = CACHE / f"{src.name}-golden-memory"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(src, scratch)
    url = f"sqlite:///{scratch / 'warehouse.db'}"
    env = dict(os.environ, GX_ANALYTICS_ENABLED="false")
    results = {}
    try:
        log(f"{CONTACTS:,} contacts: person and account records (first process)")
        subprocess.run([sys.executable, "-m", "benchmarks.bench_golden_memory", "--worker", "prepare", url], env=env,
                       cwd=ROOT, check=True)
        for step in ("accounts", "contacts"):  # golden/contacts links to the golden accounts: accounts first
            log(f"{CONTACTS:,} contacts: resolve_{step} with its phases measured (a fresh process)")
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_golden_memory", "--worker", step, url],
                                 env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
            results[step] = json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for step, result in results.items():
        label = f"golden_memory_{CONTACTS // 1000}k_{step}"
        figure(f"{label}_resolve_{step}_seconds", result["seconds"], "s")
        figure(f"{label}_process_peak_rss_mb", max(r["peak_mb"] for r in result["rows"]), "MB")
        calls: dict[str, list[dict]] = {}
        for row in result["rows"]:
            calls.setdefault(row["phase"], []).append(row)
        for name, rows in sorted(calls.items(), key=lambda item: min(r["started"] for r in item[1])):
            first, peak = rows[0], max(rows, key=lambda r: r["peak_mb"])
            figure(f"{label}_{name}_seconds", sum(r["seconds"] for r in rows), "s" if len(rows) == 1 else
                   f"s ({len(rows)} calls)")
            figure(f"{label}_{name}_peak_mb", peak["peak_mb"], f"MB (RSS {first['before_mb']:.0f} MB before the first "
                                                                f"call, {rows[-1]['after_mb']:.0f} MB after the last)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
