"""python -m crm_pipelines.nightly: the nightly chain by hand, through the running Dagster instance.

    run --from YYYY-MM-DD [--to YYYY-MM-DD] [--wait]
        load every source for the days (one run of ingest_sources); build_golden, then score_leads and
        push_crm follow by the chain sensors, exactly as after the 01:00 schedule
    rebuild-outdated [--source NAME ...] [--dry-run] [--wait]
        after a mapping change: reload exactly the days loaded with an older mapping version that still
        have a delivery (one run per source and range of consecutive days; days without a delivery stay
        empty), then golden, scores and the push follow once, after the last of them
    status [--label LABEL]
        the runs of the last chain (or of LABEL) and how they ended

Runs are submitted to the Dagster webserver (--ui, default $CRM_DAGSTER_URL or http://127.0.0.1:3000),
queued, and started by the daemon: `make prod-local` or a deployment, not `make dev` without a daemon.
rebuild-outdated reads the warehouse (the code location's settings: CRM_WAREHOUSE_URL ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from datetime import date

import requests

from ..core.sources.ingest import outdated_partitions, partition_ranges
from ..core.sources.mapping import load_mappings
from ..settings import Settings, cli_warehouse

LOCATION = "crm_pipelines"
CHAIN_JOBS = ("ingest_sources", "build_golden", "score_leads", "push_crm")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class Dagster:
    """The webserver's GraphQL API: what the UI's launch buttons call."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def query(self, query: str, variables: dict | None = None) -> dict:
        try:
            resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        except requests.ConnectionError as exc:
            raise SystemExit(f"error: no Dagster webserver at {self.url} ({exc.__class__.__name__}); start it with "
                             "`make prod-local`, or pass --ui") from exc
        resp.raise_for_status()
        body = resp.json()
        if body.get("errors"):
            raise SystemExit(f"error: {self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def launch(self, job: str, tags: dict[str, str], assets: list[list[str]] | None = None) -> str:
        selector: dict = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "pipelineName": job}
        if assets:
            selector["assetSelection"] = [{"path": p} for p in assets]
        out = self.query("""
            mutation Launch($params: ExecutionParams!) {
              launchPipelineExecution(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message }
                ... on InvalidSubsetError { message }
                ... on RunConfigValidationInvalid { errors { message } }
              }
            }""", {"params": {"selector": selector, "mode": "default", "executionMetadata": {
            "tags": [{"key": k, "value": v} for k, v in tags.items()]}}})["launchPipelineExecution"]
        if out["__typename"] != "LaunchRunSuccess":
            raise SystemExit(f"error: {job} was not launched: {out.get('message') or out}")
        return out["run"]["runId"]

    def runs(self, tag: str, value: str) -> list[dict]:
        out = self.query("""
            query Runs($filter: RunsFilter!) {
              runsOrError(filter: $filter, limit: 100) {
                ... on Runs { results { runId jobName status startTime endTime tags { key value } } }
              }
            }""", {"filter": {"tags": [{"key": tag, "value": value}]}})["runsOrError"]
        return out.get("results", [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_pipelines.nightly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui", default=os.environ.get("CRM_DAGSTER_URL") or "http://127.0.0.1:3000",
                        help="the Dagster webserver (default: $CRM_DAGSTER_URL or http://127.0.0.1:3000)")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the nightly chain for a day or a range of days")
    r.add_argument("--from", dest="first", required=True, type=_day)
    r.add_argument("--to", dest="last", type=_day, help="last day (default: the first)")
    r.add_argument("--wait", action="store_true", help="follow the chain until it ends; exit 1 if a run failed")
    b = sub.add_parser("rebuild-outdated", help="reload the days loaded with an older mapping version")
    b.add_argument("--source", action="append", help="only this source (repeatable; default: every source)")
    b.add_argument("--dry-run", action="store_true", help="list the days, launch nothing")
    b.add_argument("--wait", action="store_true")
    s = sub.add_parser("status", help="the runs of a chain")
    s.add_argument("--label", help="the chain's crm/nightly tag (default: the latest)")
    args = parser.parse_args(argv)
    dagster = Dagster(args.ui)

    if args.command == "run":
        last = args.last or args.first
        if last < args.first:
            parser.error("--to is before --from")
        label = args.first.isoformat() if last == args.first else f"{args.first}..{last}"
        run_id = dagster.launch("ingest_sources", {
            "dagster/asset_partition_range_start": args.first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(), "crm/nightly": label, "crm/launched_by": "cli"})
        print(f"launched ingest_sources for {label}: {args.ui.rstrip('/')}/runs/{run_id}")
        print("build_golden, then score_leads and push_crm follow when it succeeds (tag crm/nightly=" + label + ")")
        return _follow(dagster, label) if args.wait else 0

    if args.command == "rebuild-outdated":
        return _rebuild(dagster, args)
    return _status(dagster, args.label)


def _rebuild(dagster: Dagster, args) -> int:
    settings = Settings.from_env()
    mappings = load_mappings(settings.config_dir)
    unknown = sorted(set(args.source or ()) - set(mappings))
    if unknown:
        raise SystemExit(f"error: unknown source(s) {', '.join(unknown)}; known: {', '.join(sorted(mappings))}")
    wh = cli_warehouse(settings)
    plan = rebuild_plan(wh, mappings, settings.landing_dir, args.source or sorted(mappings), log=print)
    if not plan:
        print("every loaded day was loaded with the current mapping: nothing to rebuild")
        return 0
    if args.dry_run:
        for source, a, b in plan:
            print(f"  {source}: {a} .. {b}")
        return 0
    group = f"{date.today().isoformat()}-{uuid.uuid4().hex[:6]}"
    label = f"rebuild-{group}"
    for source, a, b in plan:
        run_id = dagster.launch("ingest_sources", {
            "dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b, "crm/rebuild": group,
            "crm/rebuild_runs": str(len(plan)), "crm/nightly": label, "crm/launched_by": "cli"},
            assets=[["raw", source]])
        print(f"launched {source} {a} .. {b}: {dagster.url}/runs/{run_id}")
    print(f"build_golden, score_leads and push_crm follow once all {len(plan)} run(s) succeeded (tag crm/nightly={label})")
    return _follow(dagster, label, loads=len(plan)) if args.wait else 0


def rebuild_plan(wh, mappings: dict, landing_dir, sources: list[str], log=lambda _m: None) -> list[tuple[str, str, str]]:
    """(source, first day, last day) per run: the days each source loaded with an older mapping version that
    still have their delivery, as ranges of consecutive days."""
    plan: list[tuple[str, str, str]] = []
    for source in sorted(sources):
        outdated = outdated_partitions(wh, mappings[source], landing_dir)
        ranges = partition_ranges(outdated["rebuild"])
        if outdated["rebuild"] or outdated["pruned"]:
            log(f"{source}: {len(outdated['rebuild'])} day(s) to reload in {len(ranges)} run(s)"
                + (f"; {len(outdated['pruned'])} day(s) whose landing folder was pruned keep the old derivation"
                   if outdated["pruned"] else ""))
        plan += [(source, a, b) for a, b in ranges]
    return plan


def _follow(dagster: Dagster, label: str, loads: int = 1, timeout: float = 6 * 3600) -> int:
    """Until every run of the chain has ended (a command-line wait, polling the webserver every 5 s)."""
    deadline, pause, reported = time.monotonic() + timeout, threading.Event(), {}
    while time.monotonic() < deadline:
        runs = dagster.runs("crm/nightly", label)
        for run in runs:
            if reported.get(run["runId"]) != run["status"]:
                reported[run["runId"]] = run["status"]
                print(f"  {run['jobName']:<15} {run['status']:<9} {dagster.url}/runs/{run['runId']}", flush=True)
        by_job: dict[str, list[str]] = {}
        for run in runs:
            by_job.setdefault(run["jobName"], []).append(run["status"])
        if any(s == "FAILURE" or s == "CANCELED" for ss in by_job.values() for s in ss) and \
                all(s in FINISHED for ss in by_job.values() for s in ss):
            print(f"chain {label}: a run failed (see above)")
            return 1
        if all(j in by_job for j in CHAIN_JOBS) and all(s == "SUCCESS" for ss in by_job.values() for s in ss) \
                and len(by_job["ingest_sources"]) >= loads:
            print(f"chain {label}: every run succeeded")
            return 0
        pause.wait(5)
    print(f"chain {label}: not finished within {timeout / 3600:.0f} h")
    return 1


def _status(dagster: Dagster, label: str | None) -> int:
    if label is None:
        latest = dagster.query("""{ runsOrError(filter: {pipelineName: "ingest_sources"}, limit: 20) {
            ... on Runs { results { tags { key value } } } } }""")["runsOrError"].get("results", [])
        labels = [t["value"] for r in latest for t in r["tags"] if t["key"] == "crm/nightly"]
        if not labels:
            print("no chained run yet")
            return 0
        label = labels[0]
    runs = sorted(dagster.runs("crm/nightly", label), key=lambda r: r.get("startTime") or 0)
    print(f"chain {label}:")
    for run in runs:
        print(f"  {run['jobName']:<15} {run['status']:<9} {dagster.url}/runs/{run['runId']}")
    return 0 if all(r["status"] == "SUCCESS" for r in runs) else 1


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from exc


if __name__ == "__main__":
    sys.exit(main())
