"""Shared benchmark plumbing: cached landing zones, process-tree memory sampling, result lines."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRM_BENCH_CACHE", ROOT / ".bench_cache"))


def log(msg: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def figure(name: str, value, unit: str = "") -> None:
    """One line per figure on stdout: `name value unit`; run.py collects them."""
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name} {value} {unit}".rstrip(), flush=True)


def landing_zone(contacts: int, seed: int = 7) -> Path:
    """A generated landing zone, reused across benchmark runs with the same size and seed."""
    out = CACHE / f"landing-{contacts}-{seed}"
    manifest = out / "_ground_truth" / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["contacts"] == contacts:
        log(f"reusing landing zone {out}")
        return out
    log(f"generating a landing zone with {contacts:,} contacts in {out}")
    subprocess.run([sys.executable, "-m", "crm_pipelines.demo", "generate", "--contacts", str(contacts),
                    "--seed", str(seed), "--out", str(out)], check=True, cwd=ROOT, stdout=sys.stderr)
    return out


class TreeMemory:
    """Samples the RSS of processes and their descendants: the peak of the sum, of the largest process,
    and per pid. Roots may be added while it runs (``roots.append``)."""

    def __init__(self, *roots: int, interval: float = 0.1):
        self.roots, self.interval = list(roots), interval
        self.peak_total = 0
        self.peak_single = 0
        self.peak: dict[int, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for root in list(self.roots):
                try:
                    procs = [psutil.Process(root)]
                    procs += procs[0].children(recursive=True)
                except psutil.Error:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    self.peak[p.pid] = max(self.peak[p.pid], rss)
                    self.peak_single = max(self.peak_single, rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, TreeMemory, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    elapsed = time.monotonic() - started
    return elapsed, mem, subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def ready_portal() -> dict:
    """The custom properties `crm setup` creates, for a local CRM that plays a portal already set up."""
    from crm_pipelines.core.crm.properties import portal_definitions
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR
    return portal_definitions(load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml"))
