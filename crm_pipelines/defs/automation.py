"""What runs when, across the groups: the schedules of the sync-frequency matrix, the nightly chain
(sources -> golden -> scores and CRM push, each started by the success of the one before), the run-status
sensors (failure alerts, recovery notices) and run hygiene (a weekly maintenance job that prunes run
history, vacuums the warehouse and reports sizes). The near-real-time sensors of a group (new leads,
consent changes, erasure requests, print approvals) stay with their group.
"""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd

from ..core.platform.maintenance import vacuum, warehouse_sizes
from ..core.platform.operations import load_operations
from .resources import AlertResource, WarehouseResource

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


class MaintenanceConfig(dg.Config):
    run_retention_days: int = 0
    """Override of config/operations.yaml for this run (0: use the file)."""


def prune_runs(instance: dg.DagsterInstance, older_than_days: int, now: datetime | None = None) -> int:
    """Deletes finished runs created before the cutoff, with their event logs; returns how many."""
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)
    deleted = 0
    while True:
        records = instance.get_run_records(filters=dg.RunsFilter(created_before=cutoff, statuses=FINISHED), limit=500)
        if not records:
            return deleted
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
            deleted += 1


def _maintenance(config_dir: Path) -> tuple[dg.JobDefinition, dg.ScheduleDefinition, dg.SensorDefinition]:
    retention_days = load_operations(config_dir / "operations.yaml").run_retention_days

    @dg.op(description=f"Deletes finished runs older than {retention_days} days (config/operations.yaml) with their "
                       "events, vacuums the warehouse and reports its size per layer before and after.")
    def maintain(context: dg.OpExecutionContext, config: MaintenanceConfig, warehouse: WarehouseResource) -> dg.Output:
        days = config.run_retention_days or retention_days
        deleted = prune_runs(context.instance, days)
        wh = warehouse.get()
        before = warehouse_sizes(wh)
        vacuum(wh)
        after = warehouse_sizes(wh)
        mb = 2 ** 20
        context.log.info(f"{deleted} run(s) older than {days} days deleted; warehouse {sum(before.values()) / mb:.1f} MB "
                         f"-> {sum(after.values()) / mb:.1f} MB")
        return dg.Output(None, metadata={
            "runs_deleted": deleted, "run_retention_days": days,
            "runs_kept": context.instance.get_runs_count(),
            "warehouse_mb_before": round(sum(before.values()) / mb, 2),
            "warehouse_mb_after": round(sum(after.values()) / mb, 2),
            "warehouse_mb_by_layer": dg.MetadataValue.json({k: round(v / mb, 2) for k, v in after.items()}),
        })

    @dg.job(name="maintenance", description="Run hygiene: prune run history, vacuum the warehouse, report sizes.")
    def maintenance():
        maintain()

    schedule = dg.ScheduleDefinition(name="weekly_maintenance", job=maintenance, cron_schedule="30 4 * * 0",
                                     execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description="Sundays 04:30: prune run history, vacuum, sizes.")

    @dg.run_status_sensor(name="run_recoveries", run_status=dg.DagsterRunStatus.SUCCESS,
                          monitor_all_code_locations=True, default_status=dg.DefaultSensorStatus.RUNNING,
                          description="After a failure, the next successful run of the same job tells the "
                                      "data-engineering channel that it recovered.")
    def run_recoveries(context: dg.RunStatusSensorContext, alerts: AlertResource):
        run = context.dagster_run
        before = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=run.job_name, statuses=FINISHED), limit=2)
        previous = [r for r in before if r.dagster_run.run_id != run.run_id][:1]
        if previous and previous[0].dagster_run.status == dg.DagsterRunStatus.FAILURE:
            alerts.send(f"Recovered: job {run.job_name} succeeded again (run {run.run_id[:8]}) after the failed "
                        f"run {previous[0].dagster_run.run_id[:8]}")
            return dg.SkipReason("recovery notice sent")
        return dg.SkipReason("no failure before")

    return maintenance, schedule, run_recoveries


def build_automation_defs(config_dir: Path, jobs: dict, schedules_running: bool = False) -> dg.Definitions:
    """``jobs``: every job of the groups by name (the schedules and chain sensors target them)."""
    maintenance, weekly, recoveries = _maintenance(config_dir)
    return dg.Definitions(jobs=[maintenance], schedules=[*_schedules(jobs, schedules_running), weekly],
                          sensors=[*_chain_sensors(jobs), recoveries])


def _schedules(jobs: dict, running: bool = False) -> list:
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
                 description="Hourly, after the behaviour load: scores, SQL crossings to sales.")
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

    @dg.schedule(name="daily_reporting", job=jobs["report_closed_loop"], cron_schedule="30 6 * * *",
                 execution_timezone=berlin, default_status=status,
                 description="Daily 06:30, after the night: deals pulled from the CRM, revenue, touchpoints, the funnel, "
                             "attribution and the campaigns' economics.")
    def daily_reporting(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(run_key=f"reporting:{context.scheduled_execution_time:%Y%m%d}")

    return [hourly_behaviour, hourly_scoring, nightly_refresh, daily_newsletter, weekly_reactivation, hourly_crm_changes,
            daily_reporting]


def _chain_sensors(jobs: dict) -> list:
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
