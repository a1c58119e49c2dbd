"""A print list for 1,000,000 generated contacts: the `herbst-bayern` campaign over the cached
warehouse with its golden layer (SQLite; built once by bench_privacy, or here): audience with order
history and activity, eligibility, households, variants, CSV, manifest, proof PDF. In its own
process, so wall time and peak RSS are the list build's own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import figure, log, run_measured


def worker(url: str) -> None:
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.print.lists import audience_frame, build_list
    from crm_pipelines.core.print.release import record_list
    from crm_pipelines.core.print.rules import load_campaign
    from crm_pipelines.core.privacy_screen.identity import IdentityHasher
    from crm_pipelines.core.privacy_screen.suppression import SuppressionList
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    wh = Warehouse(url)
    campaign = load_campaign(DEFAULT_CONFIG_DIR / "campaigns" / "herbst-bayern.yaml")
    t0 = time.monotonic()
    frame = audience_frame(wh, campaign)
    t1 = time.monotonic()
    screen = SuppressionList(wh, IdentityHasher("benchmark-salt-0123456789abcdef")).screen()
    pl = build_list(frame, campaign, screen, set())
    t2 = time.monotonic()
    root = Path(url.replace("sqlite:///", "")).parent / "print-bench"
    doc = record_list(wh, pl, campaign, f"bench-{time.time_ns()}", root, "bench")
    t3 = time.monotonic()
    print(json.dumps({"contacts": len(frame), "audience": pl.audience, "recipients": len(pl.rows),
                      "excluded": pl.excluded, "variants": pl.variants, "dialogpost": doc["dialogpost"]["eligible"],
                      "seconds_audience": t1 - t0, "seconds_rules": t2 - t1, "seconds_files": t3 - t2,
                      "seconds": t3 - t0}))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker(argv[1])
        return 0
    from benchmarks.bench_privacy import _golden_1m

    url = _golden_1m()
    log("building the herbst-bayern list over 1,000,000 contacts")
    seconds, mem, proc = run_measured([sys.executable, "-m", "benchmarks.bench_print", "--worker", url], dict(os.environ))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        return 1
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    figure("print_1000k_golden_contacts", out["contacts"])
    figure("print_1000k_audience", out["audience"])
    figure("print_1000k_recipients", out["recipients"])
    figure("print_1000k_excluded", sum(out["excluded"].values()), json.dumps(out["excluded"], sort_keys=True))
    figure("print_1000k_variants", json.dumps(out["variants"], sort_keys=True))
    figure("print_1000k_seconds_audience", out["seconds_audience"], "s (contacts, accounts, orders, scores, activity)")
    figure("print_1000k_seconds_rules", out["seconds_rules"], "s (eligibility, households, variants, rows)")
    figure("print_1000k_seconds_files", out["seconds_files"], "s (CSV, proof PDF, manifest, recipients table)")
    figure("print_1000k_wall_seconds", seconds, "s (process, imports included)")
    figure("print_1000k_peak_rss_mb", mem.peak_total / 2**20, "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
