"""Entity resolution quality, comparisons, time and memory at 100,000 and 1,000,000 generated contacts.

For each size: the landing zone is generated (cached) and loaded into a SQLite warehouse
(cached, not measured). Then, each in its own process so peak memory is its own:

* ours: cleaning + blocking + scoring + clustering of persons and accounts, from the raw
  tables to cluster labels (what Splink does too), scored against the generator's ground
  truth (pairwise precision, recall, F1);
* splink: Splink 5 (DuckDB) on the same prepared records, at both sizes (BENCH_SPLINK_SIZES), with
  the ratios of time and peak memory to ours;
* golden: the full asset path with every warehouse write (staging, golden tables,
  crosswalk with history, lineage, match edges, review queue).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from benchmarks.common import CACHE, figure, landing_zone, log, run_measured


def warehouse(landing: Path, contacts: int) -> str:
    """A SQLite warehouse with the landing zone loaded, cached next to it."""
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    stamp = json.dumps(sorted((m.source, m.code_version) for m in mappings.values()))
    folder = CACHE / f"warehouse-{contacts}"
    marker = folder / "loaded.json"
    if marker.is_file() and marker.read_text() == stamp:
        log(f"reusing loaded warehouse {folder}")
        return f"sqlite:///{folder / 'warehouse.db'}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    wh = Warehouse(f"sqlite:///{folder / 'warehouse.db'}")
    for source, mapping in mappings.items():
        log(f"loading {source} into {folder}")
        for p in landed_partitions(landing, source):
            ingest_partition(mapping, p, landing, wh, "bench")
    wh.engine.dispose()
    marker.write_text(stamp)
    return f"sqlite:///{folder / 'warehouse.db'}"


def measure(mode: str, url: str, landing: Path, label: str) -> dict:
    """The worker's figures with wall time and peak memory; on failure ``{"failed": why, "peak_rss_mb"}``."""
    scratch = None
    if mode == "golden":  # writes: work on a copy of the cached warehouse
        src = Path(url.replace("sqlite:///", "")).parent
        scratch = src.parent / f"{src.name}-scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(src, scratch)
        url = f"sqlite:///{scratch / 'warehouse.db'}"
    log(f"{label}: running {mode}")
    seconds, mem, proc = run_measured([sys.executable, "-m", "benchmarks.matching_worker", mode, url, str(landing)],
                                      dict(os.environ))
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
        log(f"{label}: {mode} failed")
        errors = [line for line in proc.stdout.splitlines() if "Error" in line]
        return {"failed": f"exit code {proc.returncode} after {seconds:.0f} s"
                          + (f": {errors[-1].strip()[:160]}" if errors
                             else f", killed by signal {-proc.returncode}" if proc.returncode < 0 else ""),
                "peak_rss_mb": mem.peak_total / 2**20}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = seconds
    result["peak_rss_mb"] = mem.peak_total / 2**20
    return result


def report(prefix: str, r: dict) -> None:
    for entity in ("persons", "accounts"):
        s = r[entity]
        figure(f"{prefix}_{entity}_precision", round(s["precision"], 4))
        figure(f"{prefix}_{entity}_recall", round(s["recall"], 4))
        figure(f"{prefix}_{entity}_f1", round(s["f1"], 4))
    figure(f"{prefix}_wall_seconds", r["wall_seconds"], "s")
    figure(f"{prefix}_peak_rss_mb", r["peak_rss_mb"], "MB")


def main() -> int:
    sizes = [int(x) for x in os.environ.get("BENCH_MATCHING_SIZES", "100000,1000000").split(",")]
    splink_sizes = {int(x) for x in os.environ.get("BENCH_SPLINK_SIZES", "100000,1000000").split(",") if x}
    ok = True
    for n in sizes:
        landing = landing_zone(n)
        url = warehouse(landing, n)
        tag = f"match_{n // 1000}k"
        ours = measure("ours", url, landing, tag)
        if "failed" in ours:
            ok = False
            continue
        figure(f"{tag}_person_records", ours["person_records"])
        figure(f"{tag}_account_records", ours["account_records"])
        figure(f"{tag}_person_comparisons", ours["person_comparisons"])
        figure(f"{tag}_person_comparisons_share_of_all_pairs", f"{ours['person_comparisons'] / ours['person_possible']:.2e}")
        figure(f"{tag}_account_comparisons", ours["account_comparisons"], f"(over {ours['account_signatures']} distinct signatures)")
        figure(f"{tag}_account_comparisons_share_of_all_pairs", f"{ours['account_comparisons'] / ours['account_possible']:.2e}")
        figure(f"{tag}_ours_seconds_read_and_clean", ours["seconds_clean"], "s")
        figure(f"{tag}_ours_seconds_resolve", ours["seconds_resolve"], "s")
        report(f"{tag}_ours", ours)
        if n in splink_sizes:
            spl = measure("splink", url, landing, tag)
            if "failed" in spl:
                # Splink not finishing is a figure about Splink on this machine, not a failure of ours.
                figure(f"{tag}_splink_finished", 0, f"({spl['failed']}; peak RSS {spl['peak_rss_mb']:.0f} MB)")
            else:
                figure(f"{tag}_splink_finished", 1)
                figure(f"{tag}_splink_seconds_resolve", spl["seconds_resolve"], "s")
                report(f"{tag}_splink", spl)
                figure(f"{tag}_f1_ours_minus_splink_persons", round(ours["persons"]["f1"] - spl["persons"]["f1"], 4))
                figure(f"{tag}_f1_ours_minus_splink_accounts", round(ours["accounts"]["f1"] - spl["accounts"]["f1"], 4))
                figure(f"{tag}_resolve_time_ratio_splink_to_ours", round(spl["seconds_resolve"] / ours["seconds_resolve"], 2))
                figure(f"{tag}_wall_time_ratio_splink_to_ours", round(spl["wall_seconds"] / ours["wall_seconds"], 2))
                figure(f"{tag}_peak_memory_ratio_splink_to_ours", round(spl["peak_rss_mb"] / ours["peak_rss_mb"], 2))
        gold = measure("golden", url, landing, tag)
        if "failed" in gold:
            ok = False
        else:
            figure(f"{tag}_golden_asset_path_wall_seconds", gold["wall_seconds"], "s")
            figure(f"{tag}_golden_asset_path_peak_rss_mb", gold["peak_rss_mb"], "MB")
            figure(f"{tag}_golden_asset_path_persons_f1", round(gold["persons"]["f1"], 4))
            figure(f"{tag}_golden_asset_path_accounts_f1", round(gold["accounts"]["f1"], 4))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
