"""The activation group in Dagster: segments, the planned audience behind blocking checks, the lists in the
marketing tool, the journeys, and the sensors that make a segment react within a minute.

    golden + scores + behaviour + engagement + orders + consent
        -> activation/segment_membership (full at night, incremental from the segment_updates sensor)
        -> activation/audience [no_suppressed_identity, no_contact_without_consent, segment_size_within_bound]
        -> activation/brevo_lists -> activation/journeys (holdout, frequency cap, print step)

An unsubscribe coming back by webhook lands as ``email_engagement``; the consent_changes sensor applies it
to the ledger at once (defs/privacy.py), and the next incremental update takes the contact off every list.
"""


import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from ..core.activation.audience import (desired_lists, plan_audience, planned_lists, request_double_opt_ins,
                                        sync_audiences)
from ..core.activation.crm_lists import sync_crm_lists
from ..core.activation.journeys import journey_funnel, run_journeys
from ..core.activation.membership import (CHANGE_SOURCES, WATERMARK_KEY, affected_since, read_state, read_watermark,
                                          segment_history, update_segments, write_state)
from ..core.activation.segments import load_segments
from ..core.activation.settings import load_activation_settings, load_journeys
from ..core.crm.settings import load_sync_settings
from ..core.model import ENTITIES
from ..core.platform.chart import grouped_bar_png, line_chart_png, markdown_image
from ..core.platform.schema import ACTIVATION_AUDIENCE, GOLDEN_CONTACTS, SEGMENT_MEMBERS, raw_table
from ..core.platform.operations import load_operations
from ..core.platform.warehouse import tables_present
from ..core.sources.mapping import SourceMapping
from .auditing import audit_run
from .executors import NEAR_REAL_TIME_EXECUTOR
from .crm import PUSH_CONTACTS_KEY
from .golden import CONSENT_KEY, CONTACTS_KEY
from .metadata import markdown_table
from .resources import CrmResource, LandingZoneResource, MarketingToolResource, PrivacyResource, WarehouseResource
from .scoring import SCORES_KEY
from .sources import LandingFileConfig, landing_sensor, load_landed, raw_asset_key

GROUP = "activation"
OWNERS = ["team:marketing-ops"]
SEGMENTS_KEY = dg.AssetKey(["activation", "segment_membership"])
AUDIENCE_KEY = dg.AssetKey(["activation", "audience"])
LISTS_KEY = dg.AssetKey(["activation", "brevo_lists"])
JOURNEYS_KEY = dg.AssetKey(["activation", "journeys"])
CRM_LISTS_KEY = dg.AssetKey(["activation", "crm_lists"])
SENSOR_SECONDS = 10
# One activation step at a time across runs: a realtime run the sensor starts while the night's pass (or an
# earlier realtime run) is still writing memberships waits for it instead of writing the same rows.
POOL = "activation"


class SegmentRunConfig(dg.Config):
    incremental: bool = False
    """Only the contacts new data names (the segment_updates sensor sets it); else everyone."""


class AudienceConfig(dg.Config):
    acknowledged_segments: list[str] = []
    """Segments whose size jump beyond their bound is acknowledged for this run (audited)."""


def build_activation_defs(config_dir: Path, mappings: dict[str, SourceMapping]) -> dg.Definitions:
    segments = load_segments(config_dir / "segments")
    settings = load_activation_settings(config_dir / "activation.yaml")
    journeys = load_journeys(config_dir / "journeys", set(segments))
    segment_lists = {s.destinations["brevo"] for s in segments.values() if "brevo" in s.destinations}
    version = "-".join(s.sha256[:6] for s in segments.values())

    @dg.asset(key=SEGMENTS_KEY, group_name=GROUP, pool=POOL, owners=OWNERS, kinds={"sql", "pandas"}, code_version=f"seg-{version}"[:60],
              deps=[CONTACTS_KEY, SCORES_KEY, CONSENT_KEY, raw_asset_key("behaviour_events"),
                    raw_asset_key("email_engagement"), raw_asset_key("erp_orders"), raw_asset_key("service_requests")],
              description="Who is in each segment of `config/segments/` (profile, behaviour, orders, consent) and the "
                          "history of entries and exits (`marts.segment_members`, `ops.segment_history`). A full pass "
                          "by default; the segment_updates sensor runs it incrementally for the contacts new data names.")
    def segment_membership(context: dg.AssetExecutionContext, config: SegmentRunConfig,
                           warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        now = datetime.now(timezone.utc)
        only, newest, rows = None, None, 0
        watermark = read_watermark(wh)
        if config.incremental and watermark is not None:
            affected, newest, rows = affected_since(wh, watermark)
            only = sorted(affected)
        else:
            newest = _newest_load(wh) or now
        result = update_segments(wh, segments, context.run.run_id, only=only, now=now)
        write_state(wh, WATERMARK_KEY, (newest or now).isoformat())
        audit_run(wh, context, "activation.segments.updated",
                  {"mode": result.mode, "evaluated": result.evaluated, "entered": result.entered, "left": result.left})
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(result.sizes.values()), "mode": result.mode, "contacts_evaluated": result.evaluated,
            "new_rows_read": rows, "seconds": round(result.seconds, 3),
            "segments": dg.MetadataValue.md(markdown_table(
                ["segment", "size", "entered", "left"],
                [(s, result.sizes.get(s, 0), result.entered.get(s, 0), result.left.get(s, 0)) for s in segments])),
            "changes_preview": dg.MetadataValue.md(markdown_table(
                ["segment", "golden ID", "change", "why"],
                result.changes.head(10)[["segment", "golden_id", "change", "reason"]].itertuples(index=False))),
            **_history_charts(wh),
        })

    audience_checks = [
        dg.AssetCheckSpec("no_suppressed_identity", asset=AUDIENCE_KEY, blocking=True,
                          description="No planned contact matches the suppression list (erasure, objection), recomputed "
                                      "from the golden records of the plan."),
        dg.AssetCheckSpec("no_contact_without_consent", asset=AUDIENCE_KEY, blocking=True,
                          description="Every planned contact has the ledger's e-mail verdict `granted`."),
        dg.AssetCheckSpec("segment_size_within_bound", asset=AUDIENCE_KEY, blocking=True,
                          description="No segment's planned size changed since the last activation by more than its "
                                      "`size_change_bound` (and `min_size_change` contacts), unless acknowledged in the "
                                      "run config (`acknowledged_segments`)."),
    ]

    @dg.asset(key=AUDIENCE_KEY, group_name=GROUP, pool=POOL, owners=OWNERS, kinds={"sql"}, deps=[SEGMENTS_KEY],
              check_specs=audience_checks,
              description="The planned activation in the marketing tool: per list of ours, the segment members that "
                          "pass the gate (address, e-mail consent, suppression, the tool's blocklist). "
                          "`marts.activation_audience`; the blocking checks read it before anything is sent.")
    def audience(context: dg.AssetExecutionContext, config: AudienceConfig, warehouse: WarehouseResource,
                 privacy: PrivacyResource, marketing: MarketingToolResource):
        wh = warehouse.get()
        screen = privacy.suppression(wh).screen()
        hasher = privacy.hasher()
        wanted = {name: ids for name, ids in desired_lists(wh, segments).items() if name in segment_lists}
        plan, stopped = plan_audience(wh, "brevo", wanted, screen, hasher)
        yield dg.MaterializeResult(metadata={
            "dagster/row_count": len(plan), "lists": dg.MetadataValue.json(plan.groupby("list_name").size().to_dict()
                                                                          if len(plan) else {}),
            "stopped_by_gate": dg.MetadataValue.json(stopped)})
        planned = wh.read_select(sa.select(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id.in_(
            sa.select(ACTIVATION_AUDIENCE.c.golden_id)))) if len(plan) else pd.DataFrame()
        leaked = int(screen.suppressed(planned).sum()) if len(planned) else 0
        yield dg.AssetCheckResult(check_name="no_suppressed_identity", passed=leaked == 0,
                                  metadata={"suppressed_planned": leaked, "planned_contacts": len(planned)})
        no_consent = int((planned["email_consent"] != "granted").sum()) if len(planned) else 0
        yield dg.AssetCheckResult(check_name="no_contact_without_consent", passed=no_consent == 0,
                                  metadata={"without_consent": no_consent})
        jumps = _size_jumps(wh, plan, segments)
        unacknowledged = {s: j for s, j in jumps.items() if s not in config.acknowledged_segments}
        if jumps and not unacknowledged:
            audit_run(wh, context, "activation.size_jump.acknowledged", {"segments": sorted(jumps)})
        yield dg.AssetCheckResult(check_name="segment_size_within_bound", passed=not unacknowledged,
                                  metadata={"jumps": dg.MetadataValue.json(jumps),
                                            "acknowledged": dg.MetadataValue.json(sorted(config.acknowledged_segments))})

    @dg.asset(key=LISTS_KEY, group_name=GROUP, pool=POOL, owners=OWNERS, kinds={"brevo"}, deps=[AUDIENCE_KEY],
              description="The planned audience pushed to the marketing tool (Brevo v3): attributes through the bulk "
                          "import, memberships of our lists (folder in config/activation.yaml) added and removed. Only "
                          "our memberships are ever removed; nobody the tool reports blocked is added again.")
    def brevo_lists(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource,
                    marketing: MarketingToolResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        missing = marketing.unavailable()
        if missing:
            raise dg.Failure(description=missing)
        planned = planned_lists(wh, "brevo")
        wanted = {name: planned.get(name, set()) for name in segment_lists}
        tool = marketing.connector()
        screen, hasher = privacy.suppression(wh).screen(), privacy.hasher()
        report = sync_audiences(wh, tool, settings, wanted, screen, hasher)
        doi = request_double_opt_ins(wh, tool, settings, screen, hasher)
        save_sizes(wh, planned)
        audit_run(wh, context, "activation.lists.synced",
                  {"upserted": report.upserted, "lists": {r.list_name: [r.added, r.removed] for r in report.lists}})
        return dg.MaterializeResult(metadata={
            "dagster/row_count": report.eligible, "upserted": report.upserted, "seconds": round(report.seconds, 2),
            "stopped_by_gate": dg.MetadataValue.json(report.stopped),
            "tool_reported": dg.MetadataValue.json(report.tool_state),
            "lists": dg.MetadataValue.md(markdown_table(["list", "wanted", "added", "removed", "failed"],
                                                        [(r.list_name, r.desired, r.added, r.removed, r.failed)
                                                         for r in report.lists])),
            "double_opt_in": dg.MetadataValue.json(doi),
            "api_calls": dg.MetadataValue.json(report.calls),
        })

    @dg.asset(key=JOURNEYS_KEY, group_name=GROUP, pool=POOL, owners=OWNERS, kinds={"brevo"}, deps=[LISTS_KEY, SEGMENTS_KEY],
              description="One pass of every journey in `config/journeys/`: entries (holdout first, then the gate and "
                          "the weekly frequency cap across e-mail, print and sales), the tool's lists and events, "
                          "single-recipient print jobs, exits. Funnels against the holdout as charts.")
    def journeys_asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource,
                       marketing: MarketingToolResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        missing = marketing.unavailable()
        tool = None if missing else marketing.connector()
        runnable = journeys if tool is not None else {k: j for k, j in journeys.items() if j.channel == "print"}
        reports = run_journeys(wh, tool, runnable, settings, privacy.suppression(wh).screen(), privacy.hasher(),
                               context.run.run_id)
        audit_run(wh, context, "activation.journeys.run",
                  {r.journey: {"enrolled": r.enrolled, "holdout": r.holdout, "capped": r.capped, "exited": r.exited}
                   for r in reports})
        engagement = _engagement(wh)
        charts = {}
        for name in runnable:
            f = journey_funnel(wh, name, engagement)
            steps = ["entered", "mailed", "engaged", "converted", "exited"]
            charts[f"funnel_{name}"] = dg.MetadataValue.md(markdown_image(grouped_bar_png(
                f"{journeys[name].label}: uplift {f.attrs['uplift']:+.1%}", steps,
                {row["arm"]: [row[s] for s in steps] for _, row in f.iterrows()}), f"funnel {name}"))
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(r.enrolled for r in reports),
            **({"skipped": missing} if missing else {}),
            "journeys": dg.MetadataValue.md(markdown_table(
                ["journey", "candidates", "enrolled", "holdout", "capped", "stopped", "exited", "print jobs"],
                [(r.journey, r.candidates, r.enrolled, r.holdout, r.capped, json.dumps(r.stopped), json.dumps(r.exited),
                  r.print_jobs) for r in reports])),
            **charts,
        })

    crm_settings = load_sync_settings(config_dir / "sync.yaml")

    @dg.asset(key=CRM_LISTS_KEY, group_name=GROUP, pool=POOL, owners=["team:sales"], kinds={"hubspot"},
              deps=[SEGMENTS_KEY, PUSH_CONTACTS_KEY],
              description="Segments with `destinations.crm` as static contact lists in the CRM (HubSpot Lists v3), so "
                          "sales sees the hot segment where it works: entries added, exits removed, and nothing a "
                          "rep put on the list by hand ever taken off. Contacts the CRM does not know yet (not "
                          "pushed) and suppressed contacts stay off.")
    def crm_lists(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource,
                  crm: CrmResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        missing = crm.unavailable()
        if missing:
            raise dg.Failure(description=missing)
        results = sync_crm_lists(wh, crm.connector(crm_settings), segments, privacy.suppression(wh).screen(),
                                 privacy.hasher())
        audit_run(wh, context, "activation.crm_lists.synced",
                  {r.list_name: {"added": r.added, "removed": r.removed} for r in results})
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(r.wanted - r.suppressed - r.not_in_crm for r in results),
            "lists": dg.MetadataValue.md(markdown_table(
                ["segment", "CRM list", "in segment", "suppressed", "not in the CRM yet", "added", "removed"],
                [(r.segment, r.list_name, r.wanted, r.suppressed, r.not_in_crm, r.added, r.removed) for r in results])),
        })

    nightly = dg.define_asset_job("activation_nightly", selection=dg.AssetSelection.groups(GROUP),
                                  description="Every segment recomputed, the audience checked and pushed, the journeys run.")
    realtime = dg.define_asset_job(
        "activation_realtime", selection=dg.AssetSelection.groups(GROUP) - dg.AssetSelection.assets(CRM_LISTS_KEY),
        executor_def=NEAR_REAL_TIME_EXECUTOR,
        config={"ops": {"activation__segment_membership": {"config": {"incremental": True}}}},
        description="The contacts new data names: segments, audience, lists, journeys (launched by segment_updates); "
                    "the CRM lists follow with the nightly pass.")

    @dg.sensor(name="segment_updates", job=realtime, minimum_interval_seconds=SENSOR_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="New behaviour, engagement, consent, order or service rows loaded since the segments last "
                           "looked, or an abandonment trigger whose wait window closed: an incremental activation run "
                           "(one at a time; the run key is the newest load it covers).")
    def segment_updates(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
        wh = warehouse.get()
        watermark = read_watermark(wh)
        if watermark is None:
            return dg.SkipReason("no full segment pass yet (materialise activation/segment_membership once)")
        newest = _newest_load(wh)
        closing = _trigger_closed(wh, journeys, context.cursor)
        now = datetime.now(timezone.utc)
        if (newest is None or newest <= watermark) and not closing:
            return dg.SkipReason("nothing new since the last segment update")
        context.update_cursor(now.isoformat())
        key = f"{(newest or watermark).isoformat()}|{closing or ''}"
        return dg.RunRequest(run_key=key, tags={"crm/activation": "realtime"})

    @dg.op(description="Loads a newly landed behaviour-event file (its day's partition) at once, so the segments "
                       "and the journeys' triggers see it within the minute instead of with the hourly load.")
    def behaviour_now(context: dg.OpExecutionContext, config: LandingFileConfig, warehouse: WarehouseResource,
                      landing: LandingZoneResource, privacy: PrivacyResource) -> dg.Output:
        wh = warehouse.get()
        rep = load_landed(context, config, mappings[config.source], wh, landing.path, privacy.suppression(wh),
                          "load_behaviour_now")
        return dg.Output(None, metadata={"rows_loaded": rep.rows_loaded, "rows_quarantined": rep.rows_quarantined})

    @dg.job(name="load_behaviour_now", tags={"crm/path": "near-real-time"}, executor_def=NEAR_REAL_TIME_EXECUTOR,
            description="A behaviour-event file loaded as it lands (launched by the behaviour_events_now sensor).")
    def load_behaviour_now():
        behaviour_now()

    operations = load_operations(config_dir / "operations.yaml")
    behaviour_sensor = landing_sensor(
        "behaviour_events_now", ("behaviour_events",), load_behaviour_now, "behaviour_now", mappings, SENSOR_SECONDS,
        timedelta(minutes=operations.near_real_time_max_age_minutes),
        "Behaviour events in the landing zone, loaded as they land: the segment_updates sensor then moves the "
        "contacts they name within seconds. Today's and yesterday's day folders only (tracking files land under "
        "the day they arrive).", recent_days=1)

    schedule = dg.ScheduleDefinition(name="nightly_activation", job=nightly, cron_schedule="30 6 * * *",
                                     execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.STOPPED,
                                     description="Daily 06:30, after the nightly scoring: every segment in full, the "
                                                 "audience, the lists, the journeys.")
    return dg.Definitions(assets=[segment_membership, audience, brevo_lists, journeys_asset, crm_lists],
                          jobs=[nightly, realtime, load_behaviour_now],
                          sensors=[segment_updates, behaviour_sensor], schedules=[schedule])


def _newest_load(wh) -> datetime | None:
    newest = None
    day = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%d")
    for source, entity in CHANGE_SOURCES.items():
        t = raw_table(source, ENTITIES[entity])
        if tables_present(wh, [t]):
            v = wh.scalar(sa.select(sa.func.max(t.c._loaded_at)).where(t.c._partition >= day))
            if v is not None:
                v = pd.Timestamp(v).tz_localize("UTC") if pd.Timestamp(v).tzinfo is None else pd.Timestamp(v)
                newest = max(newest, v.to_pydatetime()) if newest else v.to_pydatetime()
    return newest


def _trigger_closed(wh, journeys, cursor: str | None) -> str | None:
    """The latest wait window of a trigger journey that closed since the sensor last launched a run."""
    since = datetime.fromisoformat(cursor) if cursor else datetime.now(timezone.utc) - timedelta(minutes=5)
    now = datetime.now(timezone.utc)
    t = raw_table("behaviour_events", ENTITIES["behaviour_event"])
    if not tables_present(wh, [t]):
        return None
    for j in journeys.values():
        if j.trigger is None:
            continue
        wait = timedelta(minutes=j.trigger.wait_minutes)
        hit = wh.scalar(sa.select(sa.func.max(t.c.occurred_at)).where(
            t.c.event_type == j.trigger.event, t.c.occurred_at > since - wait, t.c.occurred_at <= now - wait,
            t.c._partition >= (since - wait - timedelta(days=1)).strftime("%Y-%m-%d")))
        if hit is not None:
            return f"{j.name}@{pd.Timestamp(hit).isoformat()}"
    return None


def save_sizes(wh, planned: dict[str, set[str]]) -> None:
    write_state(wh, "activation.sizes", json.dumps({k: len(v) for k, v in planned.items()}))


def _size_jumps(wh, plan: pd.DataFrame, segments) -> dict[str, dict]:
    before = json.loads(read_state(wh, "activation.sizes") or "{}")
    now = plan.groupby("list_name").size().to_dict() if len(plan) else {}
    out = {}
    for seg in segments.values():
        name = seg.destinations.get("brevo")
        if not name or seg.size_change_bound is None or name not in before:
            continue
        old, new = int(before[name]), int(now.get(name, 0))
        change = abs(new - old)
        if change >= seg.min_size_change and change > seg.size_change_bound * max(old, 1):
            out[seg.name] = {"before": old, "now": new, "bound": seg.size_change_bound}
    return out


def _engagement(wh) -> pd.DataFrame:
    """The tool's reports per golden contact (for the journey funnels)."""
    from ..core.activation.membership import _identities, _maps
    t = raw_table("email_engagement", ENTITIES["behaviour_event"])
    if not tables_present(wh, [t]):
        return pd.DataFrame(columns=["golden_id", "event_type"])
    rows = wh.read_select(sa.select(t.c.email, t.c.event_type))
    by_email, _ = _maps(_identities(wh, None))
    rows["golden_id"] = rows["email"].map(by_email)
    return rows.dropna(subset=["golden_id"])[["golden_id", "event_type"]]


def _history_charts(wh) -> dict:
    hist = segment_history(wh)
    m = SEGMENT_MEMBERS
    if hist.empty or not tables_present(wh, [m]):
        return {}
    days = sorted(hist["day"].unique())
    sizes, flows = {}, {}
    for seg, g in hist.groupby("segment"):
        g = g.set_index("day")[["entered", "left"]].reindex(days, fill_value=0)
        sizes[seg] = (g["entered"] - g["left"]).cumsum().tolist()
        flows[f"{seg} +"] = g["entered"].tolist()
        flows[f"{seg} -"] = (-g["left"]).tolist()
    return {
        "chart_sizes": dg.MetadataValue.md(markdown_image(line_chart_png("Segment size (net entries since the history "
                                                                         "starts)", days, sizes, "contacts"), "sizes")),
        "chart_entries_exits": dg.MetadataValue.md(markdown_image(line_chart_png("Entries (+) and exits (-) per day",
                                                                                 days, flows, "contacts"), "flows")),
    }
