"""bench_scale at 10,000,000 contacts, multiprocess executor: the steps that run at that size today.

The night up to the staging records: every landed day ingested (`ingest_sources`), then the person
and account records, which are read, cleaned and written a slice of record IDs at a time. The golden
steps are left out: at the slope bench_scale_2m measured they need more memory than this machine
has (docs/operations.md, Sizing). About 45 minutes and 15 GB of landing files.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("BENCH_SCALE_SIZES", "10000000")
os.environ.setdefault("BENCH_SCALE_MODES", "multiprocess")
os.environ.setdefault("BENCH_SCALE_RUNS", "ingest_sources,staging_records")

from benchmarks import bench_scale  # noqa: E402  (reads the settings above at import)

if __name__ == "__main__":
    sys.exit(bench_scale.main())
