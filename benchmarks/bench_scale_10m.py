"""bench_scale at 10,000,000 contacts, multiprocess executor (BENCH_SCALE_MODES=celery: on two
Celery workers): the whole night.

Every landed day ingested (`ingest_sources`); `build_golden` as the nightly chain runs it, one run (the
person and account records, read, cleaned and written a slice of record IDs at a time; register
enrichment, consent ledger, the contacts' matching beside the account records and golden accounts,
golden contacts with their checks, crosswalk, review queue); then the lead scores. About 15 GB of
landing files and 2 hours.

With BENCH_SCALE_KEEP=1 the PostgreSQL data stays; BENCH_SCALE_RESUME=<that folder> with
BENCH_SCALE_RUNS=<the runs still to do> goes on from it (docs/benchmarks.md says when a figure
comes from such a continued run).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("BENCH_SCALE_SIZES", "10000000")
os.environ.setdefault("BENCH_SCALE_MODES", "multiprocess")
os.environ.setdefault("BENCH_SCALE_RUNS", "ingest_sources,build_golden,lead_scores")

from benchmarks import bench_scale  # noqa: E402  (reads the settings above at import)

if __name__ == "__main__":
    sys.exit(bench_scale.main())
