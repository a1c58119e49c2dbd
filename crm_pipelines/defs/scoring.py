"""The scoring group in Dagster: scores, their history, the sales hand-off, the funnel, the weekly
reactivation segment; the near-real-time lead path and the SLA; the sync-frequency schedules.

    raw/behaviour_events + golden -> lead_scores -> lead_score_history
                                              \\-> lead_alerts (SQL crossings: owner, CRM task, Slack/Teams/e-mail)
                                               -> funnel_report
    landing/trade_fair_leads, service_requests --(new_leads sensor, 5 s)--> fast_lead_path (load, match, alert)
    ops.alert_ledger --(sla sensor)--> sla_escalation (first CRM activity, overdue -> team lead)
    landing/consent_changes --(consent_changes sensor)--> apply_consent_changes (privacy flow)

Thin: the work is in ``core/scoring.py``, ``core/leads.py``, ``core/handoff.py``, ``core/funnel.py``.
"""

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from ..core import golden as G
from ..core.chart import bar_chart_png
from ..core.crm.settings import load_sync_settings
from ..core.funnel import STAGE_COLUMNS, funnel
from ..core.handoff import SlaTiming, check_sla, hand_off, load_territories, sla_due
from ..core.ingest import ingest_partition, landed_partitions, landing_files
from ..core.leads import (ScoringPlan, landed_leads, plan_scoring, reactivation_segment, score_range, snapshot_history,
                          sql_crossings, write_lead_scores)
from ..core.operations import load_operations
from ..core.mapping import SourceMapping
from ..core.schema import ALERT_LEDGER
from ..core.scoring import ScoreResult, ScoringRules, load_scoring_rules
from ..core.warehouse import tables_present
from .auditing import audit_run
from .crm import PUSH_CONTACTS_KEY
from .golden import ACCOUNTS_KEY, CONSENT_KEY, CONTACTS_KEY
from .metadata import frame_markdown
from .resources import (AlertResource, CrmResource, LandingZoneResource, NotifyResource, PrivacyResource,
                        WarehouseResource)
from .sources import raw_asset_key

GROUP = "scoring"
OWNERS = ["team:marketing-ops", "team:sales-ops"]
SCORES_KEY = dg.AssetKey("lead_scores")
HISTORY_KEY = dg.AssetKey("lead_score_history")
ALERTS_KEY = dg.AssetKey("lead_alerts")
FUNNEL_KEY = dg.AssetKey("funnel_report")
REACTIVATION_KEY = dg.AssetKey("reactivation_segment")
FAST_SOURCES = ("trade_fair_leads", "service_requests")


class FastLeadConfig(dg.Config):
    source: str
    day: str
    files: list[str]


def build_scoring_defs(config_dir: Path, mappings: dict[str, SourceMapping], data_dir: Path) -> dict:
    rules = load_scoring_rules(config_dir / "scoring.yaml")
    territories = load_territories(config_dir / "territories.yaml")
    sync = load_sync_settings(config_dir / "sync.yaml")
    version = f"scoring-1-{rules.sha256[:12]}"

    operations = load_operations(config_dir / "operations.yaml")
    sla_timing = SlaTiming(before_due=timedelta(minutes=operations.sla_check_before_due_minutes),
                           recheck=timedelta(minutes=operations.sla_recheck_minutes))
    lead_scores = _lead_scores_asset(rules, version, operations.scoring_ranges)

    @dg.asset(key=HISTORY_KEY, group_name=GROUP, owners=OWNERS, kinds={"sql"}, deps=[SCORES_KEY],
              description="Daily snapshot of every contact's score and stage (Europe/Berlin day), so trends can be "
                          "plotted; re-running a day replaces its rows. Table `marts.lead_score_history`.")
    def lead_score_history(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        day, n = snapshot_history(warehouse.get())
        return dg.MaterializeResult(metadata={"dagster/row_count": n, "day": day})

    @dg.asset(key=ALERTS_KEY, group_name=GROUP, owners=OWNERS, kinds={"slack", "hubspot"}, deps=[SCORES_KEY, PUSH_CONTACTS_KEY],
              # Scored hourly: SQL crossings reach sales within the hour (new leads within seconds, by sensor).
              freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=90),
                                                              warn_window=timedelta(minutes=70)),
              check_specs=[dg.AssetCheckSpec("alerts_delivered", asset=ALERTS_KEY,
                                             description="Every hand-off reached every configured channel (a channel "
                                                         "that still fails after its retries shows here; the next run "
                                                         "retries it).")],
              description="Hands every SQL crossing to sales exactly once (ops.alert_ledger): owner by territory "
                          "(config/territories.yaml), a follow-up task in the CRM due in 2 hours, a Slack/Teams/e-mail "
                          "notification; suppressed or no-consent contacts get none; a hot lead with postal consent "
                          "also queues a printed brochure (ops.print_queue).")
    def lead_alerts(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource,
                    notify: NotifyResource, crm: CrmResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        leads = sql_crossings(wh, rules, privacy.suppression(wh).screen())
        report = hand_off(wh, leads, territories, notify.channels(), crm.connector(sync), context.run.run_id,
                          crm_url=notify.crm_web_url, log=context.log.warning)
        audit_run(wh, context, "handoff.sql_crossings", _handoff_details(report))
        return dg.MaterializeResult(metadata=_handoff_metadata(report), check_results=[_delivered(report)])

    @dg.asset(key=FUNNEL_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "csv"}, deps=[SCORES_KEY, ALERTS_KEY],
              description="Lead -> MQL -> SQL -> Opportunity -> Closed-won per week first seen and source, the "
                          "median time to qualification and the median lead-response time (landing -> first CRM "
                          "activity). A chart in the metadata; the table as CSV in <CRM_DATA_DIR>/reports/.")
    def funnel_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        table, stats = funnel(warehouse.get())
        out = data_dir.resolve() / "reports" / "funnel_report.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        totals = stats.get("totals", {})
        labels = {"lead": "Lead", "mql": "MQL", "sql": "SQL", "opportunity": "Opportunity", "closed_won": "Closed-won"}
        png = bar_chart_png("Funnel, all weeks", [(labels[s], totals.get(s, 0)) for s in STAGE_COLUMNS])
        chart = out.with_suffix(".png")
        chart.write_bytes(png)
        recent = table.sort_values("week").groupby("week")[list(STAGE_COLUMNS)].sum().tail(8).reset_index()
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(table), "csv": str(out), "chart_file": str(chart),
            "chart": dg.MetadataValue.md(f"![funnel](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "last_weeks": dg.MetadataValue.md(frame_markdown(recent)),
            "median_days_to_qualification": stats.get("median_days_to_qualification") or -1.0,
            "median_lead_response_minutes": stats.get("median_lead_response_minutes") or -1.0,
            **{f"total_{s}": int(totals.get(s, 0)) for s in STAGE_COLUMNS},
        })

    @dg.asset(key=REACTIVATION_KEY, group_name=GROUP, owners=OWNERS, kinds={"sql"},
              deps=[CONTACTS_KEY, raw_asset_key("erp_orders"), raw_asset_key("behaviour_events"), CONSENT_KEY],
              description="Weekly win-back list: customers whose company ordered nothing for 12 months and who did not "
                          "visit either, with postal contact allowed and a complete address (the print-list issue turns "
                          "it into a mailing). Table `marts.reactivation_segment`.")
    def reactivation(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        segment = reactivation_segment(warehouse.get())
        return dg.MaterializeResult(metadata={"dagster/row_count": len(segment)})

    # ---------------------------------------------------------------- near-real-time path

    @dg.op(description="Loads a newly landed trade-fair / service-request file, matches its records to golden contacts "
                       "and hands them to sales at once (exactly once per record).")
    def fast_lead(context: dg.OpExecutionContext, config: FastLeadConfig, warehouse: WarehouseResource,
                  landing: LandingZoneResource, privacy: PrivacyResource, notify: NotifyResource,
                  crm: CrmResource) -> dg.Output:
        wh = warehouse.get()
        with wh.raw_writes("load", log=context.log.info):  # never under an erasure (core.warehouse.raw_writes)
            suppression = privacy.suppression(wh)
            rep = ingest_partition(mappings[config.source], config.day, landing.path, wh, context.run.run_id,
                                   suppression=suppression)
        context.log_event(dg.AssetMaterialization(
            asset_key=raw_asset_key(config.source), partition=config.day,
            metadata={"dagster/row_count": rep.rows_loaded, "rows_read": rep.rows_read, "rows_loaded": rep.rows_loaded,
                      "rows_quarantined": rep.rows_quarantined, "rows_suppressed": rep.rows_suppressed,
                      "loaded_by": "fast_lead_path"}))
        leads = landed_leads(wh, config.source, config.day, [Path(f) for f in config.files], rules, suppression.screen())
        report = hand_off(wh, leads, territories, notify.channels(), crm.connector(sync), context.run.run_id,
                          crm_url=notify.crm_web_url, log=context.log.warning)
        audit_run(wh, context, f"handoff.{config.source}", _handoff_details(report))
        return dg.Output(None, metadata=_handoff_metadata(report))

    @dg.job(name="fast_lead_path", tags={"crm/path": "near-real-time"},
            description="Trade-fair leads and service requests: load, match, alert (launched by the new_leads sensor).")
    def fast_lead_path():
        fast_lead()

    @dg.op(description="Records the first CRM activity of open hand-offs (the response time) and escalates overdue "
                       "ones to the team lead.")
    def sla(context: dg.OpExecutionContext, warehouse: WarehouseResource, notify: NotifyResource,
            crm: CrmResource) -> dg.Output:
        report = check_sla(warehouse.get(), crm.connector(sync), territories, notify.escalate, log=context.log.warning,
                           timing=sla_timing)
        return dg.Output(None, metadata={"open": report.open, "checked": report.checked, "done": report.done,
                                         "escalated": report.escalated,
                                         "escalation_failed": report.escalation_failed,
                                         "median_response_minutes": float(pd.Series(report.response_minutes).median())
                                         if report.response_minutes else -1.0})

    @dg.job(name="sla_escalation", description="First CRM activity and escalation of overdue hand-offs.")
    def sla_escalation():
        sla()

    @dg.op(description="Loads newly arrived consent changes (opt-outs, objections) and applies them to the consent "
                       "ledger and the golden contacts at once, so no alert or push uses a withdrawn consent.")
    def consent_now(context: dg.OpExecutionContext, config: FastLeadConfig, warehouse: WarehouseResource,
                    landing: LandingZoneResource, privacy: PrivacyResource) -> dg.Output:
        wh = warehouse.get()
        with wh.raw_writes("load", log=context.log.info):
            rep = ingest_partition(mappings[config.source], config.day, landing.path, wh, context.run.run_id,
                                   suppression=privacy.suppression(wh))
        context.log_event(dg.AssetMaterialization(
            asset_key=raw_asset_key(config.source), partition=config.day,
            metadata={"dagster/row_count": rep.rows_loaded, "rows_read": rep.rows_read, "rows_loaded": rep.rows_loaded,
                      "rows_quarantined": rep.rows_quarantined, "rows_suppressed": rep.rows_suppressed}))
        events = G.build_consent_events(wh, privacy.hasher())
        changed = G.refresh_golden_consent(wh)
        audit_run(wh, context, "consent.applied", {"events": len(events), "contacts_changed": changed})
        return dg.Output(None, metadata={"events": len(events), "golden_contacts_changed": changed})

    @dg.job(name="apply_consent_changes", tags={"crm/privacy": "consent"},
            description="Consent webhooks: load them and apply them at once (launched by the consent_changes sensor).")
    def apply_consent_changes():
        consent_now()

    jobs = [fast_lead_path, sla_escalation, apply_consent_changes,
            dg.define_asset_job("score_leads", selection=[SCORES_KEY, HISTORY_KEY, ALERTS_KEY, FUNNEL_KEY],
                                description="Score every contact, snapshot the day, hand SQL crossings to sales, "
                                            "update the funnel."),
            dg.define_asset_job("reactivation", selection=[REACTIVATION_KEY],
                                description="The weekly win-back segment of inactive customers.")]

    max_age = timedelta(minutes=operations.near_real_time_max_age_minutes)
    sensors = [_landing_sensor("new_leads", FAST_SOURCES, fast_lead_path, "fast_lead", mappings, 5, max_age,
                               "New trade-fair leads and service requests in the landing zone: one small run per file "
                               "(run key = file content), so a lead reaches its rep within seconds."),
               _landing_sensor("consent_changes", ("consent_changes",), apply_consent_changes, "consent_now", mappings, 15,
                               max_age, "Consent webhooks (opt-outs, objections) in the landing zone: applied at once, "
                               "before the next alert or push could use the old consent."),
               _sla_sensor(sla_escalation, sla_timing)]
    return {"assets": [lead_scores, lead_score_history, lead_alerts, funnel_report, reactivation], "jobs": jobs,
            "sensors": sensors}


FIRST_START_GRACE_SECONDS = 60


def _landing_sensor(name: str, sources: tuple[str, ...], job, op_name: str, mappings, interval: int,
                    max_age: timedelta, description: str):
    description += (" Starts from now: on its first start, files that landed more than a minute before are left to "
                    "the nightly load; later, files older than "
                    f"{max_age.total_seconds() / 60:.0f} minutes when first seen (they landed while it was not "
                    "running; config/operations.yaml near_real_time_max_age_minutes). Both are counted in the tick.")

    @dg.sensor(name=name, job=job, minimum_interval_seconds=interval, default_status=dg.DefaultSensorStatus.RUNNING,
               description=description)
    def _sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        first_start = not context.cursor
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        now = datetime.now(timezone.utc).timestamp()
        # First start: what landed before it is the backlog; a file of the last minute (landing while the
        # daemon came up) is a new lead all the same. Later: files older than max_age (downtime).
        oldest = now - (FIRST_START_GRACE_SECONDS if first_start else max_age.total_seconds())
        new, left = [], []
        for source in sources:
            mapping = mappings[source]
            # Only the last few days: near-real-time files land today; older days are the nightly job's.
            for day in landed_partitions(landing.path, source)[-3:]:
                for path in landing_files(landing.path, mapping, day):
                    key = f"{source}/{day}/{path.name}:{_digest(path)}"
                    if key in seen:
                        continue
                    (left if path.stat().st_mtime < oldest else new).append((key, source, day, path))
        for key, source, day, path in new:
            yield dg.RunRequest(run_key=key, tags={"crm/landing_file": f"{source}/{day}/{path.name}"},
                                run_config={"ops": {op_name: {"config": {"source": source, "day": day,
                                                                         "files": [str(path)]}}}})
        if new or left or first_start:
            # Keys of the last week only (older days are not looked at): the cursor must not grow forever.
            keys = seen | {k for k, *_ in new} | {k for k, *_ in left}
            days = sorted({k.split("/")[1] for k in keys})[-7:]
            context.update_cursor(json.dumps(sorted(k for k in keys if k.split("/")[1] in days)))
        if left:
            why = "first start" if first_start else f"older than {max_age.total_seconds() / 60:.0f} minutes"
            context.log.info(f"{len(left)} landing file(s) left to the nightly load ({why}): "
                             + ", ".join(sorted({f"{s}/{d}" for _, s, d, _ in left})))
            if not new:
                yield dg.SkipReason(f"{len(left)} file(s) left to the nightly load ({why}); watching from now")

    return _sensor


def _sla_sensor(job, timing: SlaTiming):
    @dg.sensor(name="sla", job=job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Launches sla_escalation only when a hand-off is near or past its due time (from "
                           f"{timing.before_due.total_seconds() / 60:.0f} minutes before, again every "
                           f"{timing.recheck.total_seconds() / 60:.0f} minutes until its task is done; "
                           "config/operations.yaml): records the first CRM activity (the response time) and "
                           "escalates follow-ups past their due time to the team lead. One count in the warehouse "
                           "per minute otherwise; without a CRM it skips and says why.")
    def _sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource, crm: CrmResource):
        wh = warehouse.get()
        if not tables_present(wh, [ALERT_LEDGER]):
            return dg.SkipReason("no hand-offs yet")
        due = sla_due(wh, timing)
        if not due:
            return dg.SkipReason("no hand-off near or past its due time")
        missing = crm.unavailable()
        if missing:
            return dg.SkipReason(f"{due} hand-off(s) due for a check, but {missing}")
        minute = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M")
        return dg.RunRequest(run_key=f"sla:{minute}", tags={"crm/sla_due": str(due)})

    return _sensor


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _delivered(report) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name="alerts_delivered", passed=not report.failed,
                               metadata={"failed_by_channel": dg.MetadataValue.json(report.failed),
                                         "notified_by_channel": dg.MetadataValue.json(report.notified)})


def _handoff_details(report) -> dict:
    return {"leads": report.leads, "new": report.new, "already_done": report.already_done,
            "suppressed": report.suppressed, "no_consent": report.no_consent, "tasks": report.tasks_created,
            "tasks_pending": report.tasks_pending,
            "notified": report.notified, "failed": report.failed, "brochures": report.brochures_queued}


def _handoff_metadata(report) -> dict:
    md = {k: v for k, v in _handoff_details(report).items() if not isinstance(v, dict)}
    md["notified"] = dg.MetadataValue.json(report.notified)
    md["failed_channels"] = dg.MetadataValue.json(report.failed)
    md["channel_failures"] = sum(report.failed.values())
    return md


def build_schedules(jobs: dict, running: bool = False) -> list:
    """The sync-frequency matrix (docs/operations.md): hourly behaviour, nightly refresh, daily newsletter,
    weekly reactivation; near-real-time sources have their sensors instead. ``running``: they start with
    the code location (CRM_SCHEDULES=running), else each waits to be switched on in the UI."""
    berlin = "Europe/Berlin"
    status = dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED

    def today(context) -> str:  # partition keys are days in Europe/Berlin
        return context.scheduled_execution_time.astimezone(ZoneInfo(berlin)).date().isoformat()

    def yesterday(context) -> str:
        return (pd.Timestamp(today(context)) - pd.Timedelta(days=1)).date().isoformat()

    @dg.schedule(name="hourly_behaviour", job=jobs["hourly_behaviour_ingest"], cron_schedule="5 * * * *",
                 execution_timezone=berlin, default_status=status,
                 description="Hourly: today's behaviour events (whitepaper downloads included) into raw.")
    def hourly_behaviour(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(partition_key=today(context), run_key=f"behaviour:{context.scheduled_execution_time:%Y%m%d%H}")

    @dg.schedule(name="hourly_scoring", job=jobs["score_leads"], cron_schedule="15 * * * *", execution_timezone=berlin,
                 default_status=status,
                 description="Hourly, after the behaviour load: scores, SQL crossings to sales, the funnel.")
    def hourly_scoring(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(run_key=f"scoring:{context.scheduled_execution_time:%Y%m%d%H}")

    @dg.schedule(name="nightly_refresh", job=jobs["ingest_sources"], cron_schedule="0 1 * * *", execution_timezone=berlin,
                 default_status=status,
                 description="Nightly 01:00: yesterday's deliveries of every source; the nightly_chain sensor then runs "
                             "build_golden, score_leads and push_crm in that order.")
    def nightly_refresh(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(partition_key=yesterday(context), tags={"crm/nightly": yesterday(context)},
                             run_key=f"nightly:{yesterday(context)}")

    @dg.schedule(name="daily_newsletter", job=jobs["newsletter_batch"], cron_schedule="0 6 * * *",
                 execution_timezone=berlin, default_status=status,
                 description="Daily 06:00: yesterday's newsletter sign-ups and unsubscribes (the e-mail tool's batch).")
    def daily_newsletter(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(partition_key=yesterday(context), run_key=f"newsletter:{yesterday(context)}")

    @dg.schedule(name="weekly_reactivation", job=jobs["reactivation"], cron_schedule="0 5 * * 1",
                 execution_timezone=berlin, default_status=status,
                 description="Mondays 05:00: the reactivation segment of inactive customers.")
    def weekly_reactivation(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(run_key=f"reactivation:{context.scheduled_execution_time:%Y%m%d}")

    @dg.schedule(name="hourly_crm_changes", job=jobs["pull_crm_changes"], cron_schedule="40 * * * *",
                 execution_timezone=berlin, default_status=status,
                 description="Hourly: what sales edited, deleted or merged in the CRM since the last pull, into "
                             "ops.crm_remote and today's landing zone (the nightly push_crm pulls first as well).")
    def hourly_crm_changes(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(run_key=f"crm-changes:{context.scheduled_execution_time:%Y%m%d%H}")

    return [hourly_behaviour, hourly_scoring, nightly_refresh, daily_newsletter, weekly_reactivation, hourly_crm_changes]


def build_chain_sensors(jobs: dict) -> list:
    """The nightly refresh in order: sources -> golden -> scores and CRM push, each started by the success of
    the one before, and the data-engineering channel told about any failed run.

    A load leads on to build_golden when it is a night (tag ``crm/nightly``: the schedule, ``python -m
    crm_pipelines.nightly run``), the last of a group of loads (tag ``crm/rebuild``: the rebuild after a
    mapping change, one run per range of days), or a backfill launched in the UI (tag ``dagster/backfill``):
    for a group, once every one of its runs has succeeded, so golden is built once, over all of it."""

    @dg.run_status_sensor(name="nightly_chain_golden", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitored_jobs=[jobs["ingest_sources"]], request_job=jobs["build_golden"],
                          default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
                          description="After a nightly load, a rebuild or a backfill of ingest_sources succeeded: "
                                      "build_golden.")
    def after_ingest(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        tags = run.tags
        for group in ("crm/rebuild", "dagster/backfill"):
            if tags.get(group):
                return _after_group(context, group, tags[group], int(tags.get("crm/rebuild_runs") or 0))
        night = tags.get("crm/nightly")
        if night:
            return dg.RunRequest(run_key=f"golden-after:{run.run_id}", tags={"crm/nightly": night})
        return dg.SkipReason("not a nightly run, a rebuild or a backfill")

    @dg.run_status_sensor(name="nightly_chain_outlets", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitored_jobs=[jobs["build_golden"]], request_jobs=[jobs["score_leads"], jobs["push_crm"]],
                          default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
                          description="After a chained golden build succeeded: score_leads and push_crm.")
    def after_golden(context: dg.RunStatusSensorContext):
        run = context.dagster_run
        night = run.tags.get("crm/nightly")
        if not night:
            yield dg.SkipReason("not a nightly run")
            return
        yield dg.RunRequest(run_key=f"push-after:{run.run_id}", job_name="push_crm", tags={"crm/nightly": night})
        yield dg.RunRequest(run_key=f"score-after:{run.run_id}", job_name="score_leads", tags={"crm/nightly": night})

    @dg.run_failure_sensor(name="run_failures", default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Tells the data-engineering channel (CRM_ALERT_WEBHOOK_URL) about every failed "
                                       "run: job, run ID and the failing step; no personal data.")
    def run_failures(context: dg.RunFailureSensorContext, alerts: AlertResource):
        run = context.dagster_run
        steps = ", ".join(sorted({e.step_key for e in context.get_step_failure_events() if e.step_key})) or "-"
        alerts.send(f"Run failed: job {run.job_name}, run {run.run_id[:8]}, failed steps {steps}")

    return [after_ingest, after_golden, run_failures]


_IN_FLIGHT = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def _after_group(context: dg.RunStatusSensorContext, tag: str, value: str, expected: int):
    """build_golden once the whole group of loads has succeeded: every range of days it holds (a failed
    range counts once it was re-executed with success), none still running, and as many ranges as the
    launcher announced (``crm/rebuild_runs``; a UI backfill submits all of its runs at once)."""
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={tag: value}))

    def part(r) -> tuple:
        return (r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"),
                r.tags.get("dagster/partition"), tuple(sorted(k.to_user_string() for k in (r.asset_selection or ()))))

    parts, done = {part(r) for r in runs}, {part(r) for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
    if any(r.status in _IN_FLIGHT for r in runs) or done != parts or len(parts) < expected:
        return dg.SkipReason(f"{tag}={value}: {len(done)} of {max(len(parts), expected)} load(s) done")
    night = context.dagster_run.tags.get("crm/nightly") or f"{tag.split('/')[-1]}-{value}"
    return dg.RunRequest(run_key=f"golden-after:{tag}:{value}", tags={"crm/nightly": night})


# ---------------------------------------------------------------------------- lead scores, one step per contact range

SCORE_AS_OF_TAG = "crm/score_as_of"


def _score_as_of(tags: dict) -> datetime | None:
    """A run tagged ``crm/score_as_of=2026-11-20T06:00:00+01:00`` scores as of that moment (decay, stage
    times): to reproduce a past night's scores, or to compare two runs exactly."""
    value = tags.get(SCORE_AS_OF_TAG)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise dg.Failure(f"run tag {SCORE_AS_OF_TAG}={value!r} is not an ISO date-time with offset") from exc
    if moment.tzinfo is None:
        raise dg.Failure(f"run tag {SCORE_AS_OF_TAG}={value!r} needs a UTC offset, e.g. {value}+01:00")
    return moment.astimezone(timezone.utc)


def _lead_scores_asset(rules: ScoringRules, version: str, ranges: int) -> dg.AssetsDefinition:
    """``lead_scores`` as a graph: plan (ranges of golden IDs, events attributed once), one scoring step per
    range (run in parallel by the executor, on Celery workers too), one step that writes them together."""
    deps = {"golden_contacts": CONTACTS_KEY, "golden_accounts": ACCOUNTS_KEY,
            "behaviour_events": raw_asset_key("behaviour_events")}

    @dg.op(name="plan_lead_scoring", ins={name: dg.In(dg.Nothing) for name in deps}, out=dg.DynamicOut(),
           description=f"Splits the golden contacts into {ranges} ID ranges (config/operations.yaml scoring_ranges) and "
                       "attributes the behaviour events to contacts once, for all ranges.")
    def plan_lead_scoring(context: dg.OpExecutionContext, warehouse: WarehouseResource):
        plan = plan_scoring(warehouse.get(), ranges, _score_as_of(context.run.tags))
        context.log.info(f"{len(plan.ranges)} contact range(s), {plan.events_total:,} events, "
                         f"{sum(len(e) for e in plan.events):,} of them identified")
        for k in range(len(plan.ranges)):
            yield dg.DynamicOutput(plan.only(k), mapping_key=f"range_{k}")

    @dg.op(name="score_contact_range", description="Scores the golden contacts of one ID range.")
    def score_contact_range(context: dg.OpExecutionContext, part: ScoringPlan,
                            warehouse: WarehouseResource) -> tuple[ScoringPlan, ScoreResult]:
        result = score_range(warehouse.get(), rules, part, 0)
        lo, hi = part.ranges[0]
        context.log.info(f"{lo or 'first'} .. {hi or 'last'}: {len(result.scores):,} contacts scored")
        return part.without_events(), result  # the events are not needed downstream: not stored twice

    @dg.op(name="write_lead_scores", out=dg.Out(dg.Nothing),
           description="Writes the ranges' scores together (stage times carried over) into `marts.lead_scores`.")
    def write_scores(context: dg.OpExecutionContext, scored: list, warehouse: WarehouseResource) -> None:
        wh = warehouse.get()
        scored = sorted(scored, key=lambda pr: "" if pr[0].ranges[0][0] is None else pr[0].ranges[0][0])
        plan = ScoringPlan(scored[0][0].now, [p.ranges[0] for p, _ in scored], [p.events[0] for p, _ in scored],
                           scored[0][0].events_total)
        stats = write_lead_scores(wh, [r for _, r in scored], plan, context.run.run_id)
        audit_run(wh, context, "scoring.scored", {"contacts": stats["contacts"], "by_stage": stats["by_stage"]})
        top = stats["top"].assign(explanation=stats["top"]["explanation"].str.slice(0, 120))
        context.add_output_metadata({
            "dagster/row_count": stats["contacts"], "events_attributed": stats["events_attributed"],
            "events_total": stats["events_total"], "crossed_into_sql": stats["crossed_into_sql"],
            "crossed_into_mql": stats["crossed_into_mql"], "contact_ranges": stats["ranges"],
            "by_stage": dg.MetadataValue.json(stats["by_stage"]),
            "top_scores": dg.MetadataValue.md(frame_markdown(top)),
            **{f"stage_{s}": int(stats["by_stage"].get(s, 0)) for s in ("lead", "mql", "sql")},
        })

    def compose(golden_contacts, golden_accounts, behaviour_events):
        return write_scores(plan_lead_scoring(golden_contacts=golden_contacts, golden_accounts=golden_accounts,
                                              behaviour_events=behaviour_events).map(score_contact_range).collect())

    return dg.graph_asset(
        compose, key=SCORES_KEY, ins={name: dg.AssetIn(key=key, dagster_type=dg.Nothing) for name, key in deps.items()},
        group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
        description="Lead score per golden contact (config/scoring.yaml): behaviour points with caps and half-life "
                    "decay, fit (industry, size, region, job title), negative points (free-mail, competitor, "
                    "unsubscribed, bounced); stage Lead/MQL/SQL with the time each stage was first reached; the "
                    "strongest reasons stored with the score. One scoring step per contact range, run in parallel by "
                    f"the executor. Run tag `{SCORE_AS_OF_TAG}` (ISO date-time) scores as of that moment. Table "
                    "`marts.lead_scores`.")
