"""bench_scale at 2,000,000 contacts, multiprocess executor only: the memory growth of a further doubling.

Kept apart from bench_scale (which compares the executors at 250k to 1M) because it takes about
20 minutes and 9 GB on its own; its memory growth against 1M is read off the two sections.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("BENCH_SCALE_SIZES", "2000000")
os.environ.setdefault("BENCH_SCALE_MODES", "multiprocess")

from benchmarks import bench_scale  # noqa: E402  (reads the sizes above at import)

if __name__ == "__main__":
    sys.exit(bench_scale.main())
