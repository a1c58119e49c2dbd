"""What suppression under every identity costs: ingestion with an empty and with a full list, and an
erasure that also rewrites the landing zone.

1. Every landed day of a generated landing zone (mixed sources: web forms, trade-fair CSVs, ERP
   fixed-width files, newsletter CSVs, behaviour events, tickets, CRM pages, with the generator's
   share of malformed records) is ingested into an empty SQLite warehouse twice: once with an empty
   suppression list, once after BENCH_SCREEN_ERASED people (drawn from the web-form and trade-fair
   records) were put on the list with every identity kind. Rows/s of both and the records kept out.
2. One person is erased with the landing zone (a copy of it): the erasure's wall time, the files
   checked and rewritten.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from benchmarks.common import figure, landing_zone, log

CONTACTS = int(os.environ.get("BENCH_SCREEN_CONTACTS", "100000"))
ERASED = int(os.environ.get("BENCH_SCREEN_ERASED", "1000"))


def _ingest_all(landing: Path, url: str, hasher, suppressed: set[tuple[str, str]]) -> tuple[float, int, int]:
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.privacy_screen.suppression import SuppressionList
    from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    wh = Warehouse(url)
    suppression = SuppressionList(wh, hasher)
    if suppressed:
        suppression.add(suppressed, "P-bench", "benchmark", None)
    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    read = kept_out = 0
    started = time.monotonic()
    for m in mappings.values():
        days = landed_partitions(landing, m.source)
        for i, day in enumerate(days, 1):
            rep = ingest_partition(m, day, landing, wh, "bench", suppression=suppression)
            read += rep.rows_read
            kept_out += rep.rows_suppressed + rep.fields_anonymised
        log(f"{m.source}: {len(days)} day(s) ingested ({read:,} records so far)")
    seconds = time.monotonic() - started
    wh.engine.dispose()
    return seconds, read, kept_out


def _people(url: str, hasher, n: int) -> tuple[set[tuple[str, str]], list[str]]:
    """Every identity of n people with an e-mail from the web forms and trade fairs, and their e-mails."""
    from crm_pipelines.core.platform.warehouse import Warehouse

    wh = Warehouse(url)
    frames = []
    for source in ("web_form_leads", "trade_fair_leads"):
        rows = wh.read_frame(sa.text(f'SELECT * FROM raw."{source}" WHERE email IS NOT NULL ORDER BY source_record_id '
                                     f"LIMIT {n // 2}"))
        frames.append((source, rows))
    found: set[tuple[str, str]] = set()
    emails: list[str] = []
    for source, rows in frames:
        found |= hasher.hashes_of(rows, source)
        emails += rows["email"].tolist()
    wh.engine.dispose()
    return found, emails


def main() -> int:
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.print.release import ERASURE_COPIES
    from crm_pipelines.core.privacy.erasure import erase
    from crm_pipelines.core.privacy_screen.identity import IdentityHasher
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    landing = landing_zone(CONTACTS)
    hasher = IdentityHasher("benchmark-salt-0123456789abcdef")
    tmp = Path(tempfile.mkdtemp(prefix="bench-screen-"))
    try:
        empty_url = f"sqlite:///{tmp / 'empty.db'}"
        t_empty, read, _ = _ingest_all(landing, empty_url, hasher, set())
        people, emails = _people(empty_url, hasher, ERASED)
        full_url = f"sqlite:///{tmp / 'full.db'}"
        t_full, read_full, kept_out = _ingest_all(landing, full_url, hasher, people)
        figure(f"ingest_{CONTACTS // 1000}k_contacts_records_read", read)
        figure("ingest_empty_suppression_list_records_per_second", read / t_empty, "records/s")
        figure(f"ingest_{len(emails)}_people_suppressed_records_per_second", read_full / t_full, "records/s")
        figure("ingest_screen_slowdown_ratio", t_full / t_empty)
        figure("ingest_suppression_entries", len(people))
        figure("ingest_records_kept_out_or_stripped", kept_out)

        copy = tmp / "landing"
        shutil.copytree(landing, copy)
        wh = Warehouse(empty_url)
        mappings = load_mappings(DEFAULT_CONFIG_DIR)
        times, rewritten, checked = [], [], 0
        for email in emails[:3]:
            started = time.monotonic()
            report = erase(wh, hasher, mappings, copies=ERASURE_COPIES, emails=[email],
                           request_id=f"bench:{time.time_ns()}", source="bench",
                           actor="bench", landing_root=copy)
            times.append(time.monotonic() - started)
            rewritten.append(report.landing["files_rewritten"])
            checked = report.landing["files_checked"]
            log(f"erased one person with the landing zone in {times[-1]:.2f} s: {report.landing}")
        figure("erase_with_landing_scrub_median_seconds", float(pd.Series(times).median()), "s")
        figure("erase_with_landing_scrub_max_seconds", max(times), "s")
        figure("erase_landing_files_checked", checked)
        figure("erase_landing_files_rewritten_median", float(pd.Series(rewritten).median()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
