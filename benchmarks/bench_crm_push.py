"""CRM push throughput against the local HubSpot-compatible server, at HubSpot's real rate limit.

100,000 contacts (BENCH_PUSH_CONTACTS) are pushed by the sync engine (plan, batches of 100,
state and row log committed per batch into a SQLite warehouse) through the HubSpot connector
with its client-side limiter at 190 requests / 10 s, into the local CRM server running in its own
process with the same limit. The ceiling is 100 records x 19 requests/s = 1,900 records/s.

Twice: on a healthy server, and on one that answers 5 % of writes with 500 and 1 % of requests
with 429. Afterwards the server's own state is counted: every contact must be there exactly once
(zero lost, zero duplicated), and the server reports the most requests it ever saw in one window.
The contacts carry no company association here: associations are separate requests and would
halve the records per request; the figure is the upsert path the ceiling describes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import requests

from benchmarks.common import ROOT, TreeMemory, figure, log

CEILING = 100 * 190 / 10  # records per second


def contacts(n: int) -> pd.DataFrame:
    from crm_pipelines.core.crm.payloads import build_payload
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    first = ["Jürgen", "Anna", "Özlem", "Hans-Peter", "Marie", "Łukasz", "Sabine", "Thomas"]
    last = ["Müller", "Schmidt", "Weiß", "Bäcker", "von der Heide", "Kowalczyk", "Groß", "Nguyen"]
    golden = pd.DataFrame({
        "golden_id": [f"GC-{i:08d}" for i in range(1, n + 1)],
        "email": [f"kontakt{i}@firma{i % 9973}.de" for i in range(1, n + 1)],
        "salutation": ["Frau" if i % 2 else "Herr" for i in range(n)],
        "first_name": [first[i % len(first)] for i in range(n)],
        "last_name": [last[(i // 8) % len(last)] for i in range(n)],
        "phone": [f"+49351{4700000 + i}" for i in range(n)],
        "company_name": [f"Firma {i % 9973} GmbH & Co. KG" for i in range(n)],
        "street": ["Hauptstraße"] * n, "house_number": [str(1 + i % 200) for i in range(n)],
        "postal_code": [f"{1067 + i % 90000:05d}" for i in range(n)], "city": ["Dresden"] * n, "country": ["DE"] * n,
        "sources": ["web_form_leads"] * n,
    })
    settings = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
    return build_payload(golden, settings.objects["contacts"]), settings


def start_server(db: Path, *fault_args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "crm_pipelines.devtools.crm_server", "--db", str(db), "--port", "0",
                             "--max-requests", "190", *fault_args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket is bound: the server is ready
    url = line.split(" on ", 1)[1].split(" ", 1)[0]
    return proc, url


def run(label: str, payload: pd.DataFrame, settings, fault_args: list[str]) -> None:
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.crm.sync import load_state, push
    from crm_pipelines.core.warehouse import Warehouse

    work = Path(tempfile.mkdtemp(prefix=f"bench-push-{label}-"))
    server, url = start_server(work / "crm.db", *fault_args)
    try:
        wh = Warehouse(f"sqlite:///{work / 'warehouse.db'}")
        connector = HubSpotConnector.create(url, None, max_requests=settings.max_requests,
                                            window_seconds=settings.window_seconds, timeout=30)
        spec = settings.objects["contacts"]
        log(f"{label}: pushing {len(payload):,} contacts to {url}")
        with TreeMemory(os.getpid()) as mem:
            started = time.monotonic()
            report = push(wh, connector, payload, spec, settings, f"bench-{label}", log=lambda m: log(f"{label}: {m}"))
            seconds = time.monotonic() - started
        stats = requests.get(f"{url}/_stats", timeout=10).json()
        objects = requests.get(f"{url}/_count?type=contacts", timeout=30).json()
        state = load_state(wh, "contacts")
        rate = report.created / seconds
        tag = f"push_{len(payload) // 1000}k_{label}"
        figure(f"{tag}_wall_seconds", seconds, "s")
        figure(f"{tag}_records_per_second", rate, "records/s")
        figure(f"{tag}_ratio_to_ceiling", round(rate / CEILING, 3), f"(ceiling {CEILING:.0f} records/s)")
        figure(f"{tag}_requests", report.requests)
        figure(f"{tag}_http_500_answered", stats["counts"].get("500_injected", 0))
        figure(f"{tag}_http_429_answered", stats["counts"].get("429_injected", 0) + stats["counts"].get("429_limit", 0))
        figure(f"{tag}_server_peak_requests_in_window", stats["peak_window"], f"(limit {stats['max_requests']} / "
               f"{stats['window_seconds']:g} s)")
        figure(f"{tag}_rows_not_created", int(len(payload) - report.created))
        figure(f"{tag}_lost", int(len(payload) - objects["distinct_ext_ids"]))
        figure(f"{tag}_duplicated", int(objects["objects"] - objects["distinct_ext_ids"]))
        figure(f"{tag}_state_rows_ok", int(state["last_status"].isin(["created", "updated"]).sum()))
        figure(f"{tag}_client_peak_rss_mb", mem.peak_total / 2**20, "MB")
        wh.engine.dispose()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    n = int(os.environ.get("BENCH_PUSH_CONTACTS", "100000"))
    payload, settings = contacts(n)
    run("clean", payload, settings, [])
    run("faults", payload, settings, ["--error-rate", "0.05", "--throttle-rate", "0.01"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
