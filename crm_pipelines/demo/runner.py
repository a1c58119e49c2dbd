"""`make demo`: a landing zone, the whole asset graph materialised on the embedded default, a summary.

Runs go into the Dagster instance under ``DAGSTER_HOME`` (the Makefile sets
``./.dagster_home``), so ``make dev`` afterwards shows them in the UI.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import dagster as dg

from ..core.platform.warehouse import describe_url
from ..core.sources.ingest import landed_partitions
from ..settings import Settings
from .generator import GeneratorConfig, generate

# Jobs the demo runs, in order, and whether they take the landing zone's day range;
# each later capability adds its job here.
DEMO_JOBS: tuple[tuple[str, bool], ...] = (("ingest_sources", True), ("handle_erasure_requests", False),
                                            ("build_golden", False), ("setup_crm_portal", False), ("push_crm", False), ("score_leads", False),
                                            ("reactivation", False), ("build_print_lists", False),
                                            ("activation_nightly", False))


def _needs_generation(landing: Path, cfg: GeneratorConfig) -> bool:
    manifest = landing / "_ground_truth" / "manifest.json"
    if not manifest.is_file():
        return True
    m = json.loads(manifest.read_text(encoding="utf-8"))
    return (m.get("contacts"), m.get("seed"), m.get("start"), m.get("days")) != (
        cfg.contacts, cfg.seed, cfg.start.isoformat(), cfg.days)


def run_demo(cfg: GeneratorConfig, regenerate: bool = False, progress: Callable[[str], None] = print,
             settings: Settings | None = None, instance: dg.DagsterInstance | None = None) -> int:
    from ..definitions import build_defs

    settings = settings or Settings.from_env()
    landing = settings.landing_dir
    cfg.out = landing
    if regenerate or _needs_generation(landing, cfg):
        progress(f"generating a landing zone with {cfg.contacts:,} contacts in {landing}")
        generate(cfg, progress)
    else:
        progress(f"using the existing landing zone in {landing} (--regenerate to rewrite it)")

    register = None
    register_file = landing / "_register" / "companies.jsonl"
    if settings.register_url is None and register_file.is_file():
        from ..devtools.register_server import RegisterServer

        # The demo's register is local and answers as fast as it can: lift the real 60/hour limit.
        register = RegisterServer.from_file(register_file).start()
        settings = replace(settings, register_url=register.url, register_calls_per_hour=100_000)
        progress(f"local company register on {register.url}")
    crm = None
    if settings.crm_url is None:
        from ..devtools.crm_server import CrmServer

        # The demo's CRM: the local development server, holding the generated CRM snapshot, so that
        # records that came from the CRM are updated there instead of created a second time.
        crm = CrmServer(settings.data_dir / "crm_server.db").start()
        seeded = crm.seed_from_landing(landing)
        settings = replace(settings, crm_url=crm.url)
        progress(f"local CRM on {crm.url} with {seeded['companies']:,} companies, {seeded['contacts']:,} contacts "
                 f"from the CRM snapshot and {seeded.get('deals', 0):,} deals")
    brevo = receiver = None
    if settings.marketing_url is None:
        brevo, receiver = _local_marketing_tool(settings, landing)
        settings = replace(settings, marketing_url=brevo.url)
        progress(f"local marketing tool (Brevo v3) on {brevo.url}, its webhooks into {receiver.url().split('?')[0]}")
    sinks = []
    if not settings.sales_slack_set and not settings.smtp_host:
        from ..devtools.smtp_sink import SmtpSink
        from ..devtools.webhook_sink import WebhookSink

        # The demo's sales channels: a local Slack-style webhook and a local mail server, so the
        # hand-off's notifications can be counted and read.
        slack, smtp = WebhookSink().start(), SmtpSink().start()
        sinks = [slack, smtp]
        os.environ["CRM_SALES_SLACK_WEBHOOK_URL"] = slack.url
        settings = replace(settings, sales_slack_set=True, smtp_host="127.0.0.1", smtp_port=smtp.port)
        progress(f"local sales channels: Slack-style webhook {slack.url}, SMTP 127.0.0.1:{smtp.port}")
    try:
        defs = build_defs(settings)
        partitions = sorted({p for m in _sources(defs) for p in landed_partitions(landing, m)})
        generated = landing / "_ground_truth" / "manifest.json"
        if generated.is_file():
            # Webhooks of an earlier demo run landed under the day they arrived; they were applied then.
            last = json.loads(generated.read_text(encoding="utf-8"))["partitions"][-1]
            partitions = [p for p in partitions if p <= last]
        if not partitions:
            progress("the landing zone has no partitions")
            return 1
        if partitions[0] < settings.partition_start:
            progress(f"landing data starts {partitions[0]}, before CRM_PARTITION_START={settings.partition_start}")
            return 1
        tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]}
        instance = instance or dg.DagsterInstance.get()
        url = settings.warehouse_url or settings.default_warehouse_url
        progress(f"materialising {len(DEMO_JOBS)} job(s) over {partitions[0]} .. {partitions[-1]} into {describe_url(url)}")
        results = []
        for name, partitioned in DEMO_JOBS:
            job = defs.resolve_job_def(name)
            progress(f"running {name}")
            # Dagster's console logger writes every event at DEBUG; the summary below says what matters,
            # and the full event log is in the UI.
            run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            if name == "push_crm":
                # The CRM's changes belong to the demo's last day, not to the day the demo runs.
                run_config["ops"] = {"crm_changes": {"config": {"day": partitions[-1]}}}
            if name == "handle_erasure_requests":
                # What the erasure_requests sensor does when the daemon runs: every request file, once.
                files = sorted(str(p) for p in (landing / "erasure_requests").glob("*/*.jsonl"))
                run_config["ops"] = {"erase_requested": {"config": {"files": files}}}
            result = job.execute_in_process(instance=instance, tags={**(tags if partitioned else {}), "crm/launched_by": "make-demo"},
                                            raise_on_error=False, run_config=run_config)
            results.append(result)
            if name == "handle_erasure_requests":
                progress(_erasure_line(result))
            if not result.success:
                break
        else:
            # What the new_leads sensor does when a trade-fair file lands: the last day's scans go
            # to their reps at once (one small run per file).
            results += _fast_leads(defs, instance, landing, progress)
            if brevo is not None:
                results += _engagement_back(defs, instance, brevo, receiver, progress)
            results += _single_print_jobs(defs, instance, settings, progress)
            results += _release_lists(defs, instance, settings, progress)
            progress("running report_closed_loop")
            results.append(defs.resolve_job_def("report_closed_loop").execute_in_process(
                instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}))
    finally:
        if brevo is not None:
            st = brevo.stats()
            progress(f"local marketing tool: {st['contacts']:,} contacts on {st['lists']} lists, {st['sent']:,} journey "
                     f"e-mails sent, {st.get('webhooks_sent', 0):,} webhooks, {st['blocklisted']} blocklisted; "
                     f"re-subscribed {st.get('resubscribed', 0)}, foreign removals {st.get('foreign_removals', 0)}")
            receiver.stop()
            brevo.stop()
        if register is not None:
            register.stop()
        if sinks:
            slack, smtp = sinks
            progress(f"sales notifications: {len(slack.received)} Slack message(s), {len(smtp.messages)} e-mail(s)")
            for sink in sinks:
                sink.stop()
            os.environ.pop("CRM_SALES_SLACK_WEBHOOK_URL", None)
        if crm is not None:
            stats = crm.stats()["counts"]
            progress("local CRM: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.items())))
            crm.stop()
    summary, failed_checks = summarise(results)
    print(summary)
    ok = all(r.success for r in results) and not failed_checks
    print("\nAll runs succeeded; open the UI with `make dev` (http://127.0.0.1:3000)." if ok else
          "\nThe demo did not finish cleanly: see the lines above, or the run in `make dev`.")
    return 0 if ok else 1


def _fast_leads(defs: dg.Definitions, instance, landing: Path, progress: Callable[[str], None]) -> list:
    days = sorted(p.name for p in (landing / "trade_fair_leads").glob("*") if any(p.glob("*.csv")))
    if not days:
        return []
    job = defs.resolve_job_def("fast_lead_path")
    results = []
    for f in sorted((landing / "trade_fair_leads" / days[-1]).glob("*.csv")):
        progress(f"running fast_lead_path for trade_fair_leads/{days[-1]}/{f.name}")
        results.append(job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        "ops": {"fast_lead": {"config": {"source": "trade_fair_leads", "day": days[-1],
                                                         "files": [str(f)]}}}}))
    return results


def _single_print_jobs(defs: dg.Definitions, instance, settings: Settings, progress: Callable[[str], None]) -> list:
    """What marketing does once (approve the brochure's template after its proof) and the print_jobs_queue sensor
    then does within a minute of each hot lead: a brochure printed for that one person."""
    from ..core.print.rules import load_campaigns

    single = [c for c in load_campaigns(settings.config_dir / "campaigns").values() if c.delivery == "single"]
    if not single:
        return []
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    results = []
    for campaign in single:
        progress(f"approving the template of {campaign.name} (rules {campaign.sha256[:12]}) as the demo's marketing lead")
        results.append(defs.resolve_job_def("approve_print_template").execute_in_process(
            instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
            run_config={**quiet, "ops": {"approve_template_op": {"config": {
                "campaign": campaign.name, "approver": "Demo Marketing-Leitung", "rules_sha256": campaign.sha256}}}}))
    progress("running print_single_jobs")
    results.append(defs.resolve_job_def("print_single_jobs").execute_in_process(
        instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"}, run_config=quiet))
    return results


def _release_lists(defs: dg.Definitions, instance, settings: Settings, progress: Callable[[str], None]) -> list:
    """What the marketing lead does after reading a campaign list's proof: approve it (quoting its checksum) and
    release it to the print shop; the drop starts the Rücklaufquote's window."""
    import sqlalchemy as sa

    from ..core.platform.schema import PRINT_LISTS
    from ..core.platform.warehouse import Warehouse

    wh = Warehouse.for_url(settings.warehouse_url or settings.default_warehouse_url)
    built = wh.read_select(sa.select(PRINT_LISTS.c.list_id, PRINT_LISTS.c.campaign, PRINT_LISTS.c.csv_sha256)
                           .where(PRINT_LISTS.c.status == "built", PRINT_LISTS.c.recipients > 0))
    results = []
    for _, row in built.iterrows():
        progress(f"approving and releasing the print list {row['list_id']} ({row['campaign']})")
        results.append(defs.resolve_job_def("release_print_list").execute_in_process(
            instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        "ops": {"release_op": {"config": {"list_id": row["list_id"], "approver": "Demo Marketing-Leitung",
                                                          "csv_sha256": row["csv_sha256"]}}}}))
    return results


# What the demo tool's workflows send when a contact enters a journey (list or event) and how recipients react.
DEMO_AUTOMATIONS = {"Journey: Willkommensserie": 4, "journey_welcome": 0, "Journey: Lead-Nurturing": 1,
                    "journey_mql_nurture": 2, "Journey: Reaktivierung": 2, "journey_quote_abandoned": 1,
                    "journey_retention_offer": 1}


def _local_marketing_tool(settings: Settings, landing: Path):
    from ..activation.receiver import WebhookReceiver
    from ..devtools.brevo_server import Behaviour, BrevoServer

    brevo = BrevoServer(seed=7, automations=DEMO_AUTOMATIONS, state_file=settings.data_dir / "brevo_server.json",
                        behaviour=Behaviour(open_rate=0.35, click_rate=0.25, unsubscribe_rate=0.02, hard_bounce_rate=0.01,
                                            spam_rate=0.002)).start()
    receiver = WebhookReceiver(landing, token="demo-webhook-token").start()
    brevo.register_webhook({"url": receiver.url(), "type": "marketing", "batched": True,
                            "events": ["delivered", "opened", "click", "unsubscribed", "hardBounce", "spam", "listAddition"]})
    return brevo, receiver


def _engagement_back(defs: dg.Definitions, instance, brevo, receiver, progress: Callable[[str], None]) -> list:
    """What the engagement_changes and segment_updates sensors do when the daemon runs: the journeys' e-mails came
    back as engagement webhooks; each landed file is loaded and applied to the consent ledger, then one
    incremental activation run takes whoever unsubscribed off every list."""
    import time
    deadline = time.monotonic() + 30
    while brevo.webhooks_pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    files = list(receiver.files)
    progress(f"engagement: {len(files)} webhook request(s) landed; applying them")
    results = []
    job = defs.resolve_job_def("apply_consent_changes")
    by_day: dict[str, list[str]] = {}
    for path in files:
        by_day.setdefault(path.parent.name, []).append(str(path))
    # One run per day: the load takes the day's partition whole, so the day's files go in together.
    for day, paths in sorted(by_day.items()):
        config = {"source": "email_engagement", "day": day, "files": paths}
        results.append(job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        "ops": {"consent_now": {"config": config}}}))
    if files:
        progress("running activation_realtime")
        results.append(defs.resolve_job_def("activation_realtime").execute_in_process(
            instance=instance, raise_on_error=False, tags={"crm/launched_by": "make-demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}},
                        "ops": {"activation__segment_membership": {"config": {"incremental": True}}}}))
    return results


def _erasure_line(result) -> str:
    md = {}
    for event in result.all_events:
        if event.is_successful_output:
            md = {k: v.value for k, v in event.step_output_data.metadata.items()}
    rows = sum((md.get("rows_erased_by_table") or {}).values())
    return (f"erasure requests: {md.get('requests', 0)} handled ({md.get('completed', 0)} completed, "
            f"{md.get('pending', 0)} waiting for the CRM), {rows:,} rows erased, identities suppressed")


def _sources(defs: dg.Definitions) -> list[str]:
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    return sorted(k.path[1] for k in keys if len(k.path) == 2 and k.path[0] == "raw")


def summarise(results) -> tuple[str, list[str]]:
    rows: dict[str, dict] = defaultdict(lambda: {"materialised": 0, "rows": 0, "quarantined": 0, "checks_ok": 0,
                                                 "checks": 0, "warn": []})
    failed: list[str] = []
    # A partition loaded twice (the nightly batch, then the near-real-time path) counts once, as last loaded.
    latest: dict[tuple[str, str | None], tuple[int, int]] = {}
    for result in results:
        for ev in result.get_asset_materialization_events():
            mat = ev.materialization
            md = {k: v.value for k, v in mat.metadata.items()}
            latest[(mat.asset_key.to_user_string(), mat.partition)] = (int(md.get("dagster/row_count", 0) or 0),
                                                                       int(md.get("rows_quarantined", 0) or 0))
        for ev in result.get_asset_check_evaluations():
            r = rows[ev.asset_key.to_user_string()]
            r["checks"] += 1
            if ev.passed:
                r["checks_ok"] += 1
            elif ev.severity == dg.AssetCheckSeverity.WARN:
                r["warn"].append(ev.check_name)
            else:
                failed.append(f"{ev.asset_key.to_user_string()}:{ev.check_name}")
        if not result.success:
            for ev in result.all_events:
                if ev.event_type_value == "STEP_FAILURE":
                    failed.append(f"step {ev.step_key} failed")
    for (key, _), (n, quarantined) in latest.items():
        r = rows[key]
        r["materialised"] += 1
        r["rows"] += n
        r["quarantined"] += quarantined
    width = max([len(k) for k in rows] + [5])
    lines = [f"{'asset':<{width}}  {'materialised':>12}  {'rows':>10}  {'quarantined':>11}  checks", "-" * (width + 52)]
    for key in sorted(rows):
        r = rows[key]
        note = f"  (warn: {', '.join(r['warn'])})" if r["warn"] else ""
        lines.append(f"{key:<{width}}  {r['materialised']:>12}  {r['rows']:>10,}  {r['quarantined']:>11,}  "
                     f"{r['checks_ok']}/{r['checks']} passed{note}")
    total_rows = sum(r["rows"] for r in rows.values())
    total_q = sum(r["quarantined"] for r in rows.values())
    lines.append("-" * (width + 52))
    lines.append(f"{'total':<{width}}  {'':>12}  {total_rows:>10,}  {total_q:>11,}")
    if failed:
        lines.append("failed: " + "; ".join(failed))
    return "\n".join(lines), failed
