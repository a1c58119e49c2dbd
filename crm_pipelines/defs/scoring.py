"""The scoring group in Dagster: scores, their history, the sales hand-off, the weekly
reactivation segment; the near-real-time lead path and the SLA (schedules: ``defs/automation.py``).

    raw/behaviour_events + golden -> lead_scores -> lead_score_history
                                              \\-> lead_alerts (SQL crossings: owner, CRM task, Slack/Teams/e-mail)
    landing/trade_fair_leads, service_requests --(new_leads sensor, 5 s)--> fast_lead_path (load, match, alert)
    ops.alert_ledger --(sla sensor)--> sla_escalation (first CRM activity, overdue -> team lead)

Thin: the work is in ``core/scoring/`` (rules, leads, handoff); the funnel is the reporting group's.
"""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from ..core.crm.settings import load_sync_settings
from ..core.golden.matching.settings import load_matching_config
from ..core.platform.operations import load_operations
from ..core.platform.schema import ALERT_LEDGER
from ..core.platform.warehouse import tables_present
from ..core.scoring.handoff import SlaTiming, check_sla, hand_off, load_territories, sla_due
from ..core.scoring.leads import (ScoringPlan, landed_leads, plan_scoring, reactivation_segment, score_range,
                                  snapshot_history, sql_crossings, write_lead_scores)
from ..core.scoring.rules import ScoreResult, ScoringRules, load_scoring_rules
from ..core.sources.mapping import SourceMapping
from .auditing import audit_run
from .executors import NEAR_REAL_TIME_EXECUTOR
from .crm import PUSH_CONTACTS_KEY
from .golden import ACCOUNTS_KEY, CONSENT_KEY, CONTACTS_KEY
from .metadata import frame_markdown
from .resources import CrmResource, LandingZoneResource, NotifyResource, PrivacyResource, WarehouseResource
from .sources import LandingFileConfig, landing_sensor, load_landed, raw_asset_key

GROUP = "scoring"
OWNERS = ["team:marketing-ops", "team:sales-ops"]
SCORES_KEY = dg.AssetKey("lead_scores")
HISTORY_KEY = dg.AssetKey("lead_score_history")
ALERTS_KEY = dg.AssetKey("lead_alerts")
REACTIVATION_KEY = dg.AssetKey("reactivation_segment")
FAST_SOURCES = ("trade_fair_leads", "service_requests")


def build_scoring_defs(config_dir: Path, mappings: dict[str, SourceMapping], data_dir: Path) -> dg.Definitions:
    rules = load_scoring_rules(config_dir / "scoring.yaml")
    territories = load_territories(config_dir / "territories.yaml")
    sync = load_sync_settings(config_dir / "sync.yaml")
    version = f"scoring-1-{rules.sha256[:12]}"

    operations = load_operations(config_dir / "operations.yaml")
    matching = load_matching_config(config_dir / "matching.yaml")
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
    def fast_lead(context: dg.OpExecutionContext, config: LandingFileConfig, warehouse: WarehouseResource,
                  landing: LandingZoneResource, privacy: PrivacyResource, notify: NotifyResource,
                  crm: CrmResource) -> dg.Output:
        wh = warehouse.get()
        suppression = privacy.suppression(wh)
        load_landed(context, config, mappings[config.source], wh, landing.path, suppression, "fast_lead_path")
        leads = landed_leads(wh, config.source, config.day, [Path(f) for f in config.files], rules, suppression.screen(),
                             matching.persons)
        report = hand_off(wh, leads, territories, notify.channels(), crm.connector(sync), context.run.run_id,
                          crm_url=notify.crm_web_url, log=context.log.warning)
        audit_run(wh, context, f"handoff.{config.source}", _handoff_details(report))
        return dg.Output(None, metadata=_handoff_metadata(report))

    @dg.job(name="fast_lead_path", tags={"crm/path": "near-real-time"}, executor_def=NEAR_REAL_TIME_EXECUTOR,
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

    jobs = [fast_lead_path, sla_escalation,
            dg.define_asset_job("score_leads", selection=[SCORES_KEY, HISTORY_KEY, ALERTS_KEY],
                                description="Score every contact, snapshot the day, hand SQL crossings to sales."),
            dg.define_asset_job("reactivation", selection=[REACTIVATION_KEY],
                                description="The weekly win-back segment of inactive customers.")]

    max_age = timedelta(minutes=operations.near_real_time_max_age_minutes)
    sensors = [landing_sensor("new_leads", FAST_SOURCES, fast_lead_path, "fast_lead", mappings, 5, max_age,
                              "New trade-fair leads and service requests in the landing zone: one small run per file "
                              "(run key = file content), so a lead reaches its rep within seconds."),
               _sla_sensor(sla_escalation, sla_timing)]
    return dg.Definitions(assets=[lead_scores, lead_score_history, lead_alerts, reactivation], jobs=jobs,
                          sensors=sensors)


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
