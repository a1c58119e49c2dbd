"""Run hygiene: a weekly maintenance job (prune run history, vacuum the warehouse, report sizes) and
recovery notices after failures. The failure alerts themselves are the run_failures sensor."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from ..core.maintenance import vacuum, warehouse_sizes
from ..core.operations import load_operations
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


def build_maintenance_defs(config_dir: Path) -> dict:
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

    return {"jobs": [maintenance], "schedules": [schedule], "sensors": [run_recoveries]}
