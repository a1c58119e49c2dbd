"""The dedupe command against Splink 5 on German person files the demo world never made (benchmarks/german_people.py).

For each size (130,000 and 1,300,000 records by default, BENCH_DEDUPE_SIZES): the file is generated (cached), then,
each in its own process so that peak memory is its own:

* ours: `python -m crm_pipelines.matching dedupe FILE --mapping MAPPING --out CLUSTERS`, the whole command (reading,
  cleaning, matching, writing), scored pairwise against the file's truth;
* splink: the same file read and prepared by the same code, then Splink 5 (DuckDB) with its published person
  settings (BENCH_DEDUPE_SPLINK_SIZES, default both), with the ratios of time and memory to ours.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from benchmarks.common import CACHE, figure, log, run_measured


def data_file(records: int, seed: int = 11) -> Path:
    from benchmarks.german_people import main as generate

    out = CACHE / "dedupe" / f"people-{records}-{seed}.csv"
    if not (out.is_file() and out.with_suffix(".truth.csv").is_file()):
        out.parent.mkdir(parents=True, exist_ok=True)
        log(f"generating {records:,} German person records in {out}")
        generate([str(out), "--records", str(records), "--seed", str(seed)])
    else:
        log(f"reusing {out}")
    return out


def scores(clusters_csv: Path, truth_csv: Path) -> dict:
    """Pairwise scores over every record of the truth: a record the output lacks (rejected on reading) counts as a
    cluster of its own, so that its true pairs are missed, not left out of the count."""
    from crm_pipelines.core.golden.matching.evaluate import pairwise_scores

    clusters = pd.read_csv(clusters_csv, dtype=str).set_index("record_id")["cluster_id"]
    truth = pd.read_csv(truth_csv, dtype=str).set_index("record_id")["person_id"]
    clusters = clusters.reindex(truth.index)
    missing = clusters.isna()
    clusters[missing] = "unclustered:" + clusters.index[missing]
    return {**pairwise_scores(clusters, truth).__dict__, "unclustered": int(missing.sum())}


def run(kind: str, path: Path, tag: str, splink_kind: str = "generic") -> dict:
    out = path.with_name(f"{path.stem}.{kind}-clusters.csv")
    out.unlink(missing_ok=True)
    if kind == "ours":
        cmd = [sys.executable, "-m", "crm_pipelines.matching", "dedupe", str(path), "--mapping",
               str(path.with_suffix(".mapping.yaml")), "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.splink_runner", splink_kind, str(path), str(out)]
    log(f"{tag}: {kind}")
    seconds, mem, proc = run_measured(cmd, dict(os.environ))
    if proc.returncode != 0 or not out.is_file():
        print(proc.stdout[-3000:], file=sys.stderr)
        return {"failed": f"exit code {proc.returncode} after {seconds:.0f} s", "peak_rss_mb": mem.peak_total / 2**20}
    return {**scores(out, path.with_suffix(".truth.csv")), "seconds": seconds, "peak_rss_mb": mem.peak_total / 2**20}


def report(prefix: str, r: dict) -> None:
    figure(f"{prefix}_records_unclustered", r["unclustered"])
    figure(f"{prefix}_precision", round(r["precision"], 4))
    figure(f"{prefix}_recall", round(r["recall"], 4))
    figure(f"{prefix}_f1", round(r["f1"], 4))
    figure(f"{prefix}_seconds", r["seconds"], "s")
    figure(f"{prefix}_peak_rss_mb", r["peak_rss_mb"], "MB")


def main() -> int:
    sizes = [int(x) for x in os.environ.get("BENCH_DEDUPE_SIZES", "130000,1300000").split(",")]
    splink_sizes = {int(x) for x in os.environ.get("BENCH_DEDUPE_SPLINK_SIZES", "130000,1300000").split(",") if x}
    ok = True
    for n in sizes:
        path = data_file(n)
        tag = f"dedupe_{n // 1000}k"
        truth = pd.read_csv(path.with_suffix(".truth.csv"), dtype=str)
        figure(f"{tag}_records", len(truth), f"({truth['person_id'].nunique():,} people)")
        ours = run("ours", path, tag)
        if "failed" in ours:
            figure(f"{tag}_ours_finished", 0, f"({ours['failed']})")
            ok = False
            continue
        report(f"{tag}_ours", ours)
        if n not in splink_sizes:
            continue
        spl = run("splink", path, tag)
        if "failed" in spl:
            figure(f"{tag}_splink_finished", 0, f"({spl['failed']}; peak RSS {spl['peak_rss_mb']:.0f} MB)")
            continue
        report(f"{tag}_splink", spl)
        figure(f"{tag}_f1_ours_minus_splink", round(ours["f1"] - spl["f1"], 4))
        figure(f"{tag}_precision_ours_minus_splink", round(ours["precision"] - spl["precision"], 4))
        figure(f"{tag}_time_ratio_splink_to_ours", round(spl["seconds"] / ours["seconds"], 2))
        figure(f"{tag}_peak_memory_ratio_splink_to_ours", round(spl["peak_rss_mb"] / ours["peak_rss_mb"], 2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
