"""The print group in Dagster: one asset per campaign file (list, manifest, proof), blocking checks,
approval and release, the outbox's retention, and the campaigns' schedules.

    golden + scores + orders + consent -> print/<campaign> [no_suppressed_recipient, rows_balance] (built)
    approve_print_list (run config) or <approvals>/<list id>.approved (print_approvals sensor)
        -> release_print_list -> outbox (where the print shop picks up)
"""

import hashlib
import json
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from ..core.platform.schema import GOLDEN_CONTACTS, PRINT_RECIPIENTS
from ..core.print.jobs import approve_template, pending_jobs, print_jobs, printed_recipients, template_approval
from ..core.print.lists import audience_frame, build_list, load_robinson
from ..core.print.release import ReleaseRefused, approve, expire_outbox, load_print_settings, record_list, release
from ..core.print.rules import load_campaigns
from .golden import CONSENT_KEY, CONTACTS_KEY
from .executors import NEAR_REAL_TIME_EXECUTOR
from .metadata import frame_markdown, markdown_table
from .resources import PrivacyResource, WarehouseResource
from .scoring import REACTIVATION_KEY, SCORES_KEY
from .sources import raw_asset_key

GROUP = "print"
OWNERS = ["team:marketing-ops"]


class ApprovalConfig(dg.Config):
    list_id: str
    approver: str = ""
    """Who approves (required for approve_print_list; release_print_list uses the recorded approval)."""
    csv_sha256: str = ""
    """The list's SHA-256 as the proof and the manifest show it (at least 12 hex digits): the approval names the
    exact list its approver saw."""


class TemplateApprovalConfig(dg.Config):
    campaign: str
    approver: str
    rules_sha256: str
    """The rules' SHA-256 as the template proof shows it (at least 12 hex digits)."""


def print_key(campaign: str) -> dg.AssetKey:
    return dg.AssetKey(["print", campaign])


def build_print_defs(config_dir: Path, data_dir: Path) -> dg.Definitions:
    campaigns = load_campaigns(config_dir / "campaigns")
    settings = load_print_settings(config_dir / "print.yaml", data_dir.resolve())
    lists_root = data_dir.resolve() / "print" / "lists"

    def campaign_asset(campaign):
        deps = [CONTACTS_KEY, SCORES_KEY, CONSENT_KEY, raw_asset_key("erp_orders")]
        if campaign.source == "reactivation_segment":
            deps.append(REACTIVATION_KEY)
        checks = [dg.AssetCheckSpec("no_suppressed_recipient", asset=print_key(campaign.name), blocking=True,
                                    description="No recipient of the list is on the suppression list (recomputed "
                                                "from the recipients' golden records, not from the build's filter)."),
                  dg.AssetCheckSpec("rows_balance", asset=print_key(campaign.name), blocking=True,
                                    description="Every recipient the audience named is listed or excluded with a "
                                                "reason; the CSV matches its manifest checksum.")]

        @dg.asset(key=print_key(campaign.name), group_name=GROUP, owners=OWNERS, kinds={"csv", "pdf"},
                  code_version=f"print-1-{campaign.sha256[:12]}", deps=deps, check_specs=checks,
                  description=f"{campaign.description or campaign.name}. Rules `config/campaigns/{campaign.path.name}`: "
                              f"audience, eligibility (postal consent, Robinson list for prospects, suppression, "
                              f"complete address, {campaign.dedupe} de-duplication), content variants "
                              f"{', '.join(b.variant for b in campaign.branches)}. Writes CSV, manifest and proof PDF; "
                              "the list waits for an approval before it is released to the outbox.")
        def _asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource):
            wh = warehouse.get()
            screen = privacy.suppression(wh).screen()
            pl = build_list(audience_frame(wh, campaign), campaign, screen, load_robinson(settings.robinson_list))
            doc = record_list(wh, pl, campaign, context.run.run_id, lists_root, f"dagster:{context.job_name}")
            folder = lists_root / campaign.name / doc["list_id"]
            listed = wh.read_frame(sa.select(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id.in_(
                sa.select(PRINT_RECIPIENTS.c.golden_id).where(PRINT_RECIPIENTS.c.list_id == doc["list_id"]))))
            leaked = int(screen.suppressed(listed).sum()) if len(listed) else 0
            csv_ok = hashlib.sha256((folder / "list.csv").read_bytes()).hexdigest() == doc["csv_sha256"]
            yield dg.MaterializeResult(metadata={
                "dagster/row_count": doc["recipients"], "list_id": doc["list_id"], "status": "built, awaiting approval",
                "audience": doc["audience"], "excluded": dg.MetadataValue.json(doc["excluded"]),
                "variants": dg.MetadataValue.json(doc["variants"]),
                "excluded_by_reason": dg.MetadataValue.md(markdown_table(["reason", "recipients"],
                                                                         sorted(doc["excluded"].items()))),
                "dialogpost_eligible": doc["dialogpost"]["eligible"],
                "dialogpost": dg.MetadataValue.json(doc["dialogpost"]),
                "csv": dg.MetadataValue.path(str(folder / "list.csv")), "csv_sha256": doc["csv_sha256"],
                "proof_pdf": dg.MetadataValue.path(str(folder / "proof.pdf")), "proof_pages": doc["proof_pages"],
                "rules_sha256": doc["rules_sha256"],
                "preview": dg.MetadataValue.md(frame_markdown(pl.rows[["recipient_id", "postal_code", "leitregion",
                                                                       "variant"]].head(5))),
            })
            yield dg.AssetCheckResult(check_name="no_suppressed_recipient", passed=leaked == 0,
                                      metadata={"recipients_checked": len(listed), "suppressed_found": leaked})
            yield dg.AssetCheckResult(check_name="rows_balance", passed=bool(doc["balance_ok"]) and csv_ok,
                                      metadata={"audience": doc["audience"], "listed": doc["recipients"],
                                                "excluded": sum(doc["excluded"].values()), "csv_checksum_ok": csv_ok})

        return _asset

    def jobs_asset(campaign):
        checks = [dg.AssetCheckSpec("no_suppressed_recipient", asset=print_key(campaign.name), blocking=True,
                                    description="No recipient of a job released in this run is on the suppression "
                                                "list (recomputed from the recipients' golden records)."),
                  dg.AssetCheckSpec("jobs_balance", asset=print_key(campaign.name), blocking=True,
                                    description="Every pending job ended printed, waiting, merged or dropped with a "
                                                "reason.")]

        @dg.asset(key=print_key(campaign.name), group_name=GROUP, owners=OWNERS, kinds={"csv", "pdf"},
                  code_version=f"print-jobs-1-{campaign.sha256[:12]}",
                  deps=[CONTACTS_KEY, SCORES_KEY, CONSENT_KEY, raw_asset_key("erp_orders")], check_specs=checks,
                  description=f"{campaign.description or campaign.name}. Single-recipient print jobs "
                              f"(`config/campaigns/{campaign.path.name}`, `delivery: single`): each job queued by "
                              "the hand-off or a print journey becomes its own one-recipient list (the same "
                              "eligibility as every list) and goes to the outbox at once under the standing "
                              "approval of the campaign's template (job `approve_print_template`). Materialised by "
                              "the sensor `print_jobs_queue` within a minute of a job being queued.")
        def _asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource):
            wh = warehouse.get()
            screen = privacy.suppression(wh).screen()
            rep = print_jobs(wh, campaign, screen, load_robinson(settings.robinson_list), settings, lists_root,
                             f"dagster:{context.job_name}", context.run.run_id)
            if not rep.template_approved and rep.waiting:
                context.log.warning(f"{rep.waiting} job(s) wait for the template approval of {campaign.name} "
                                    f"(rules {campaign.sha256[:16]}; proof {rep.template_proof})")
            released = printed_recipients(wh, rep.lists)
            listed = wh.read_frame(sa.select(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id.in_(released))) \
                if released else None
            leaked = int(screen.suppressed(listed).sum()) if listed is not None and len(listed) else 0
            yield dg.MaterializeResult(metadata={
                "dagster/row_count": rep.printed, "jobs": rep.jobs, "printed": rep.printed, "waiting_for_template_approval": rep.waiting
                if not rep.template_approved else 0, "waiting": rep.waiting, "merged": rep.merged,
                "dropped": dg.MetadataValue.json(rep.dropped), "template_approved": rep.template_approved,
                "rules_sha256": campaign.sha256,
                **({"template_proof": dg.MetadataValue.path(rep.template_proof)} if rep.template_proof else {}),
                "released_lists": dg.MetadataValue.json(rep.lists[:20]),
            })
            yield dg.AssetCheckResult(check_name="no_suppressed_recipient", passed=leaked == 0,
                                      metadata={"recipients_checked": len(released), "suppressed_found": leaked})
            yield dg.AssetCheckResult(check_name="jobs_balance", passed=rep.balanced,
                                      metadata={"jobs": rep.jobs, "printed": rep.printed, "waiting": rep.waiting,
                                                "merged": rep.merged, "dropped": sum(rep.dropped.values())})

        return _asset

    assets = [jobs_asset(c) if c.delivery == "single" else campaign_asset(c) for c in campaigns.values()]
    single = [c.name for c in campaigns.values() if c.delivery == "single"]

    @dg.op(description="Records who approved a built print list, and when (audited).")
    def approve_op(context: dg.OpExecutionContext, config: ApprovalConfig, warehouse: WarehouseResource) -> dg.Output:
        try:
            approve(warehouse.get(), config.list_id, config.approver, config.csv_sha256, context.run.run_id)
        except ReleaseRefused as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.Output(None, metadata={"list_id": config.list_id, "approved_by": config.approver})

    @dg.op(description="Copies an approved list and its manifest into the outbox for the print shop (audited); "
                       "refuses a list without approval or one changed since it was built.")
    def release_op(context: dg.OpExecutionContext, config: ApprovalConfig, warehouse: WarehouseResource) -> dg.Output:
        wh = warehouse.get()
        try:
            if config.approver:
                approve(wh, config.list_id, config.approver, config.csv_sha256, context.run.run_id)
            target = release(wh, config.list_id, settings, f"dagster:{context.job_name}", context.run.run_id)
        except ReleaseRefused as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.Output(None, metadata={"list_id": config.list_id, "released_file": dg.MetadataValue.path(str(target))})

    @dg.op(description="Deletes released lists older than the retention period from the outbox (audited).")
    def expire_op(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> dg.Output:
        removed = expire_outbox(warehouse.get(), settings, f"dagster:{context.job_name}", run_id=context.run.run_id)
        return dg.Output(None, metadata={"removed": len(removed), "files": dg.MetadataValue.json(removed)})

    @dg.job(name="approve_print_list",
            description="Approve a built print list (run config: list_id, approver, csv_sha256 from its proof).")
    def approve_print_list():
        approve_op()

    @dg.job(name="release_print_list", tags={"crm/print-release": "print"}, description="Release an approved print list to the outbox (run config: "
                                                   "list_id; with approver: approve and release in one).")
    def release_print_list():
        release_op()

    @dg.op(description="Records a standing approval of a single-recipient campaign's template (audited).")
    def approve_template_op(context: dg.OpExecutionContext, config: TemplateApprovalConfig,
                            warehouse: WarehouseResource) -> dg.Output:
        if config.campaign not in campaigns:
            raise dg.Failure(f"no campaign {config.campaign!r}; campaigns: {', '.join(sorted(campaigns))}")
        try:
            approve_template(warehouse.get(), campaigns[config.campaign], config.approver, config.rules_sha256,
                             lists_root, context.run.run_id)
        except ReleaseRefused as exc:
            raise dg.Failure(str(exc)) from exc
        return dg.Output(None, metadata={"campaign": config.campaign, "approved_by": config.approver})

    @dg.job(name="approve_print_template",
            description="Approve a single-recipient campaign's template (run config: campaign, approver, rules_sha256 "
                        "from the template proof); its waiting jobs are printed on the next pass.")
    def approve_print_template():
        approve_template_op()

    @dg.job(name="outbox_retention", description="Delete released print lists past the retention period.")
    def outbox_retention():
        expire_op()

    build = dg.define_asset_job("build_print_lists", selection=[print_key(n) for n in campaigns if n not in single],
                                description="Build every campaign's print list (each then waits for its approval).")
    print_single_jobs = dg.define_asset_job("print_single_jobs", selection=[print_key(n) for n in single],
                                            executor_def=NEAR_REAL_TIME_EXECUTOR,
                                            description="Print the queued single-recipient jobs.") if single else None
    jobs = [approve_print_list, release_print_list, approve_print_template, outbox_retention, build, print_single_jobs,
            dg.define_asset_job("build_brochure_list", selection=[print_key("broschuere")])
            if "broschuere" in campaigns and "broschuere" not in single else None,
            dg.define_asset_job("build_reactivation_list", selection=[print_key("reaktivierung")])
            if "reaktivierung" in campaigns else None]
    jobs = [j for j in jobs if j is not None]

    @dg.sensor(name="print_approvals", jobs=[release_print_list, approve_print_template], minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"An approval file `<list id>.approved` in {settings.approvals} (first line: who approved; "
                           "second line: the list's SHA-256 as the proof shows it) approves and releases exactly that "
                           "list, once per file content; `<campaign>.template.approved` (second line: the rules' SHA-256 "
                           "from the template proof) approves a single-recipient campaign's template.")
    def print_approvals(context: dg.SensorEvaluationContext):
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        if not settings.approvals.is_dir():
            return dg.SkipReason(f"no approvals folder yet ({settings.approvals})")
        new = []
        for f in sorted(settings.approvals.glob("*.approved")):
            lines = [line.strip() for line in f.read_text(encoding="utf-8").splitlines()] + ["", ""]
            approver, quoted = lines[0], lines[1].removeprefix("sha256:").strip()
            key = f"{f.name}:{approver}:{quoted}"
            if key in seen or not approver:
                continue
            new.append(key)
            name = f.name[: -len(".approved")]
            if name.endswith(".template"):
                yield dg.RunRequest(run_key=f"approval:{key}", job_name="approve_print_template", run_config={
                    "ops": {"approve_template_op": {"config": {"campaign": name[: -len(".template")],
                                                               "approver": approver, "rules_sha256": quoted}}}})
                continue
            yield dg.RunRequest(run_key=f"approval:{key}", job_name="release_print_list", run_config={
                "ops": {"release_op": {"config": {"list_id": name, "approver": approver, "csv_sha256": quoted}}}})
        if new:
            context.update_cursor(json.dumps(sorted(seen | set(new))))

    sensors = [print_approvals]
    if single:
        @dg.sensor(name="print_jobs_queue", job=print_single_jobs, minimum_interval_seconds=30,
                   default_status=dg.DefaultSensorStatus.RUNNING,
                   description="Queued single-recipient print jobs (a hot lead's brochure), and jobs waiting for a "
                               "template approval that has since been given: a run that prints them.")
        def print_jobs_queue(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
            wh = warehouse.get()
            state = []
            for name in single:
                pending = pending_jobs(wh, name)
                if pending.empty:
                    continue
                approved = template_approval(wh, campaigns[name]) is not None
                queued = pending[pending["status"] == "queued"]
                if len(queued) or approved:
                    state.append(f"{name}:{approved}:" + ",".join(sorted(pending["alert_key"])))
            if not state:
                return dg.SkipReason("no print job waiting")
            key = hashlib.sha256("|".join(state).encode()).hexdigest()[:20]
            if key == context.cursor:
                return dg.SkipReason("the same jobs as the last run request")
            context.update_cursor(key)
            return dg.RunRequest(run_key=f"print-jobs:{key}")
        sensors.append(print_jobs_queue)

    schedules = [
        *([dg.ScheduleDefinition(name="daily_brochures", job_name="build_brochure_list", cron_schedule="0 7 * * *",
                                 execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.STOPPED,
                                 description="Daily 07:00: the brochures queued by yesterday's hand-offs, one list.")]
          if "broschuere" in campaigns and "broschuere" not in single else []),
        dg.ScheduleDefinition(name="weekly_reactivation_print", job_name="build_reactivation_list",
                              cron_schedule="0 6 * * 1", execution_timezone="Europe/Berlin",
                              default_status=dg.DefaultScheduleStatus.STOPPED,
                              description="Mondays 06:00, after the reactivation segment: the win-back list."),
        dg.ScheduleDefinition(name="daily_outbox_retention", job=outbox_retention, cron_schedule="30 2 * * *",
                              execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.RUNNING,
                              description=f"Daily: released lists older than {settings.retention_days} days leave "
                                          "the outbox."),
    ]
    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, schedules=schedules)

