"""Erasure latency and cost.

1. From an erasure request landing to the CRM delete call, through the real machinery: a
   `dagster-daemon` process on a SQLite instance runs the `erasure_requests` sensor (every 15 s,
   privacy.yaml); each request file written into the landing zone is timed until the local CRM
   server receives the GDPR delete for that address. Several requests, one at a time.
2. Erasing one person from a warehouse of 1,000,000 generated contacts (SQLite, golden layer
   built once and cached): wall time of the whole erasure (find, suppress, scrub every table of
   the inventory, audit), and the rows it removed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CACHE, figure, landing_zone, log, ready_portal
from benchmarks.daemon import sensor_ticked, small_warehouse, start_daemon, stop_daemon, wait_until

LATENCY_REQUESTS = int(os.environ.get("BENCH_ERASURE_REQUESTS", "4"))


def erasure_latency() -> None:
    from crm_pipelines.devtools.crm_server import CrmServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-erasure-"))
    try:
        landing, url, emails = small_warehouse(tmp, LATENCY_REQUESTS)
        home = tmp / "home"
        home.mkdir()
        os.environ["DAGSTER_HOME"] = str(home)  # dagster.yaml names its storage folder by it
        with CrmServer(tmp / "crm.db", custom_properties=ready_portal()) as crm:
            env = dict(os.environ, DAGSTER_HOME=str(home), CRM_LANDING_DIR=str(landing), CRM_DATA_DIR=str(tmp / "data"),
                       CRM_API_URL=crm.url, GX_ANALYTICS_ENABLED="false", CRM_PARTITION_START="2026-01-01")
            daemon = start_daemon(home, env)
            try:
                # The daemon's first sensor tick, with no request yet: then the clock is not also
                # timing the daemon's own start-up.
                wait_until(lambda: sensor_ticked(home), 180, "the daemon's first sensor tick")
                latencies = []
                for i, email in enumerate(emails):
                    folder = landing / "erasure_requests" / "2026-11-20"
                    folder.mkdir(parents=True, exist_ok=True)
                    seen = len(crm.gdpr_calls)
                    landed = time.time()
                    (folder / f"webhook_{i:03d}.jsonl").write_text(json.dumps({
                        "eventId": 880000 + i, "subscriptionType": "contact.privacyDeletion",
                        "occurredAt": int(landed * 1000), "objectId": None, "email": email,
                        "changeSource": "CRM_UI", "portalId": 4711, "attemptNumber": 0}) + "\n", encoding="utf-8")
                    wait_until(lambda: any(k == email for _, k in crm.gdpr_calls[seen:]), 300,
                          f"the CRM delete of request {i + 1}")
                    called = next(t for t, k in crm.gdpr_calls[seen:] if k == email)
                    latencies.append(called - landed)
                    log(f"request {i + 1}: {called - landed:.1f} s from landing to the CRM delete call")
            finally:
                stop_daemon(daemon)
        figure("erasure_requests_timed", len(latencies))
        figure("erasure_landing_to_crm_delete_median_seconds", statistics.median(latencies), "s")
        figure("erasure_landing_to_crm_delete_max_seconds", max(latencies), "s")
        figure("erasure_sensor_interval_seconds", 15, "s (privacy.yaml)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def erase_in_1m() -> None:
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.print.release import ERASURE_COPIES
    from crm_pipelines.core.privacy.erasure import erase
    from crm_pipelines.core.privacy_screen.identity import IdentityHasher
    from crm_pipelines.core.privacy_screen.suppression import SuppressionList
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    url = _golden_1m()
    wh = Warehouse(url)
    hasher = IdentityHasher("benchmark-salt-0123456789abcdef")
    suppression = SuppressionList(wh, hasher)
    candidates = wh.read_raw_sql("SELECT email FROM golden.contacts WHERE email IS NOT NULL AND record_count >= 3 "
                                 "ORDER BY golden_id LIMIT 200")["email"].tolist()
    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    times, rows = [], []
    for email in candidates:
        if len(times) == 3:
            break
        if suppression.contains_email(email):
            continue  # erased by an earlier benchmark run on the cached warehouse
        t = time.monotonic()
        report = erase(wh, hasher, mappings, copies=ERASURE_COPIES, emails=[email],
                       request_id=f"bench:{time.time_ns()}", source="bench",
                       actor="bench")
        times.append(time.monotonic() - t)
        rows.append(sum(report.tables.values()))
        log(f"erased one person in {times[-1]:.2f} s: {rows[-1]} rows in {len(report.tables)} tables")
    figure("erase_one_person_1000k_contacts_median_seconds", statistics.median(times), "s")
    figure("erase_one_person_1000k_contacts_max_seconds", max(times), "s")
    figure("erase_one_person_1000k_rows_removed_median", statistics.median(rows))


def _golden_1m() -> str:
    """The 1M-contact warehouse with its golden layer, built once and cached (about 10 minutes)."""
    folder = CACHE / "golden-1000000"
    marker = folder / "built.json"
    url = f"sqlite:///{folder / 'warehouse.db'}"
    if marker.is_file():
        log(f"reusing {folder}")
        return url
    from benchmarks.bench_matching import warehouse
    from crm_pipelines.core.golden.build import ensure_golden_tables, resolve_accounts, resolve_contacts
    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.core.golden.staging import build_account_records, build_person_records
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    src = Path(warehouse(landing_zone(1_000_000), 1_000_000).replace("sqlite:///", "")).parent
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(src, folder)
    log(f"building the golden layer of 1,000,000 contacts in {folder}")
    wh = Warehouse(url)
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    ensure_golden_tables(wh)
    build_person_records(wh)
    build_account_records(wh)
    resolve_accounts(wh, cfg, "bench", log=log)
    resolve_contacts(wh, cfg, "bench", log=log)
    wh.engine.dispose()
    marker.write_text(json.dumps({"built": time.time()}))
    return url


def main() -> int:
    erasure_latency()
    erase_in_1m()
    return 0


if __name__ == "__main__":
    sys.exit(main())
