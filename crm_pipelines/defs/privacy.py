"""The privacy group in Dagster: the consent ledger and consent changes, erasure (sensor and jobs), access
export, retention, audit verification. Thin: the work is in ``core/privacy``.

    landing/consent_changes --(consent_changes sensor, 15 s)--> apply_consent_changes (ledger + golden at once)
    landing/erasure_requests/<day>/*.jsonl --(erasure_requests sensor, every 15 s)--> handle_erasure_requests
    launchpad / CLI --> erase_person, export_person
    weekly schedule --> retention
"""


import json
from datetime import timedelta
from pathlib import Path

import dagster as dg

from ..core.activation.erasure import MarketingToolErasureTarget
from ..core.golden.consent import refresh_golden_consent
from ..core.platform import audit
from ..core.platform.masking import mask_text
from ..core.platform.operations import load_operations
from ..core.print.release import ERASURE_COPIES
from ..core.privacy.access import export_person, write_export
from ..core.privacy.erasure import erase
from ..core.privacy.landing import prune_landing, remove_request_file
from ..core.privacy.ledger import build_consent_events
from ..core.privacy.requests import CrmErasureTarget, request_done, requests_in_file, retry_pending
from ..core.privacy.retention import retire_inactive
from ..core.privacy.settings import load_privacy_settings
from ..core.sources.ingest import landed_partitions, landing_files
from ..core.sources.mapping import SourceMapping
from ..core.sources.roles import CONSENT_SOURCES, ENGAGEMENT_SOURCES, OPT_IN_SOURCES
from .auditing import audit_run
from .executors import NEAR_REAL_TIME_EXECUTOR
from .crm import build_consent_push_op
from .golden import CONSENT_KEY, PERSON_KEY
from .metadata import markdown_table
from .resources import CrmResource, LandingZoneResource, MarketingToolResource, PrivacyResource, WarehouseResource
from .sources import LandingFileConfig, file_digest, landing_sensor, load_landed, raw_asset_key


GROUP = "privacy"
OWNERS = ["team:data-protection", "team:data-engineering"]
ERASURE_SOURCE = "erasure_requests"


class ErasureConfig(dg.Config):
    email: str = ""
    """The person's e-mail address (or give the CRM contact ID)."""
    crm_contact_id: str = ""
    reason: str = "Art. 17 DSGVO"


class ErasureFilesConfig(dg.Config):
    files: list[str] = []
    """Landing files of erasure requests (the sensor fills this in)."""


class ExportConfig(dg.Config):
    email: str = ""
    crm_contact_id: str = ""
    out: str = ""
    """Where to write the JSON; empty: <CRM_DATA_DIR>/exports/<request id>.json."""


class PruneLandingConfig(dg.Config):
    dry_run: bool = False
    """Count the day folders that would be removed without removing them."""


class RetentionConfig(dg.Config):
    dry_run: bool = False
    """Count what would be anonymised without changing anything."""


def build_privacy_defs(config_dir: Path, mappings: dict[str, SourceMapping], data_dir: Path,
                       crm_settings) -> dg.Definitions:
    settings = load_privacy_settings(config_dir / "privacy.yaml")
    operations = load_operations(config_dir / "operations.yaml")

    @dg.asset(key=CONSENT_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"},
              deps=[*(raw_asset_key(s) for s in (*CONSENT_SOURCES, *OPT_IN_SOURCES, *ENGAGEMENT_SOURCES)), PERSON_KEY],
              description="The consent ledger: every opt-in, unsubscribe, opt-out and objection per person and channel "
                          "(e-mail, phone, post) with legal basis, time, source and double-opt-in time, from the sign-ups, "
                          "the CRM's preference centre, the lead forms' opt-in boxes (pending until the double opt-in) and "
                          "the marketing tool's unsubscribes, complaints and confirmations, linked to a person "
                          "record by CRM ID or e-mail. No e-mail address is stored: the link is the record key and a "
                          "salted hash. `golden/contacts` turns it into the current consent per channel. Table "
                          "`staging.consent_events`.")
    def consent_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                       privacy: PrivacyResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        events = build_consent_events(wh, privacy.hasher())
        audit_run(wh, context, "consent.ledger.built", {"events": len(events)})
        by = events.groupby(["channel", "status"]).size().reset_index(name="n") if len(events) else None
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(events),
            "linked_to_a_person": int(events["person_record_key"].notna().sum()) if len(events) else 0,
            "by_channel_and_status": dg.MetadataValue.md(markdown_table(
                ["channel", "status", "events"], by.itertuples(index=False) if by is not None else [])),
        })

    def targets(crm: CrmResource, marketing: MarketingToolResource):
        """Every system we write personal data to: the CRM, and the marketing tool when one is configured
        (or the local one runs); a configured tool that is down gets its erasures from the outbox later."""
        out = [CrmErasureTarget(crm.connector(crm_settings))]
        if marketing.unavailable() is None:
            out.append(MarketingToolErasureTarget(marketing.connector()))
        return out

    @dg.op(description="Erases one person everywhere (warehouse, CRM), suppresses their identities, audits each step.")
    def erase_one(context: dg.OpExecutionContext, config: ErasureConfig, warehouse: WarehouseResource,
                  privacy: PrivacyResource, crm: CrmResource, marketing: MarketingToolResource,
                  landing: LandingZoneResource) -> dg.Output:
        if not (config.email or config.crm_contact_id):
            raise dg.Failure("give the person's e-mail address or CRM contact ID")
        report = erase(warehouse.get(), privacy.hasher(), mappings,
                       copies=ERASURE_COPIES, emails=[config.email] if config.email else [],
                       crm_contact_ids=[config.crm_contact_id] if config.crm_contact_id else [],
                       request_id=f"launchpad:{context.run.run_id}", source="launchpad",
                       actor=f"dagster:{context.run.tags.get('user', 'launchpad')}", run_id=context.run.run_id,
                       targets=targets(crm, marketing), log=lambda m: context.log.info(mask_text(m)), landing_root=landing.path)
        return dg.Output(None, metadata=_erasure_metadata([report]))

    @dg.op(description="Handles the erasure requests of new landing files (the CRM's privacy webhook), and retries "
                       "erasures a connected system has not confirmed yet.")
    def erase_requested(context: dg.OpExecutionContext, config: ErasureFilesConfig, warehouse: WarehouseResource,
                        privacy: PrivacyResource, crm: CrmResource, marketing: MarketingToolResource,
                  landing: LandingZoneResource) -> dg.Output:
        wh, hasher, mapping = warehouse.get(), privacy.hasher(), mappings[ERASURE_SOURCE]
        reports, unusable, skipped, removed = [], 0, 0, 0
        for f in config.files:
            requests, bad = requests_in_file(Path(f), mapping)
            unusable += bad
            for req in requests:
                if request_done(wh, req["request_id"]):
                    skipped += 1
                    continue
                reports.append(erase(wh, hasher, mappings,
                                     copies=ERASURE_COPIES, emails=[req["email"]] if req["email"] else [],
                                     crm_contact_ids=[req["crm_contact_id"]] if req["crm_contact_id"] else [],
                                     request_id=req["request_id"], source=req["requested_by"] or "crm-webhook",
                                     actor="sensor:erasure_requests", run_id=context.run.run_id,
                                     targets=targets(crm, marketing), log=lambda m: context.log.info(mask_text(m)),
                                     landing_root=landing.path))
            # Handled: the request lives on as hashes and request rows, not as a clear-text file. A
            # file with unusable lines stays for the data protection officer to look at.
            if bad:
                context.log.error(f"{Path(f).name}: {bad} line(s) are not usable requests; the file is kept in the "
                                  "landing zone (see the quarantine of raw/erasure_requests)")
            elif remove_request_file(Path(f)):
                removed += 1
        retried = retry_pending(wh, targets(crm, marketing), actor="sensor:erasure_requests", run_id=context.run.run_id)
        md = _erasure_metadata(reports)
        md.update(files=len(config.files), unusable_lines=unusable, already_done=skipped, retried=len(retried),
                  request_files_removed=removed)
        return dg.Output(None, metadata=md)

    @dg.op(description="Writes everything held about one person (all tables, consent history, what was sent to the "
                       "CRM, processing history) to one JSON file (Art. 15/20 DSGVO).")
    def export_one(context: dg.OpExecutionContext, config: ExportConfig, warehouse: WarehouseResource,
                   privacy: PrivacyResource) -> dg.Output:
        if not (config.email or config.crm_contact_id):
            raise dg.Failure("give the person's e-mail address or CRM contact ID")
        request_id = f"export:{context.run.run_id}"
        doc = export_person(warehouse.get(), privacy.hasher(), mappings, emails=[config.email] if config.email else [],
                            crm_contact_ids=[config.crm_contact_id] if config.crm_contact_id else [],
                            request_id=request_id, source="launchpad", actor="dagster:launchpad",
                            run_id=context.run.run_id)
        out = write_export(doc, config.out or data_dir / "exports" / f"{context.run.run_id}.json")
        return dg.Output(None, metadata={"file": str(out), "subject": doc["subject"],
                                         "tables": dg.MetadataValue.json({k: len(v) for k, v in doc["data"].items()})})

    @dg.op(description=f"Anonymises contacts with no activity or relationship for {settings.prospect_months} months "
                       "(privacy.yaml), keeping pseudonymised rows in golden.retired_contacts.")
    def retire(context: dg.OpExecutionContext, config: RetentionConfig, warehouse: WarehouseResource,
               privacy: PrivacyResource) -> dg.Output:
        report = retire_inactive(warehouse.get(), privacy.hasher(), mappings, months=settings.prospect_months,
                                 actor="schedule:retention", run_id=context.run.run_id, dry_run=config.dry_run)
        return dg.Output(None, metadata={"candidates": report.candidates, "retired": report.retired,
                                         "kept_active": report.kept_active, "kept_relationship": report.kept_relationship,
                                         "dry_run": config.dry_run, "cutoff": report.cutoff.isoformat(),
                                         "tables": dg.MetadataValue.json(report.tables)})

    @dg.op(description=f"Removes landing-zone day folders older than {settings.landing_retention_days} days "
                       "(privacy.yaml landing.retention_days); what was loaded from them stays in the warehouse.")
    def prune(context: dg.OpExecutionContext, config: PruneLandingConfig, warehouse: WarehouseResource,
              landing: LandingZoneResource) -> dg.Output:
        from datetime import date

        report = prune_landing(landing.path, mappings, settings.landing_retention_days, date.today(),
                               dry_run=config.dry_run)
        if not config.dry_run:
            audit_run(warehouse.get(), context, "landing.pruned",
                      {"cutoff": report.cutoff.isoformat(), "folders": report.folders_removed,
                       "files": report.files_removed, "bytes": report.bytes_removed})
        return dg.Output(None, metadata={"cutoff": report.cutoff.isoformat(), "dry_run": config.dry_run,
                                         "folders_removed": report.folders_removed,
                                         "files_removed": report.files_removed, "bytes_removed": report.bytes_removed,
                                         "by_source": dg.MetadataValue.json(report.by_source)})

    @dg.op(description="Recomputes the audit trail's hash chain and fails if a row was altered, inserted or removed.")
    def verify_chain(context: dg.OpExecutionContext, warehouse: WarehouseResource) -> dg.Output:
        result = audit.verify(warehouse.get())
        if not result.ok:
            raise dg.Failure(f"audit trail broken at row {result.first_bad_seq}: {result.problem}",
                             metadata={"rows_checked": result.rows, "first_bad_seq": result.first_bad_seq})
        return dg.Output(None, metadata={"rows_checked": result.rows})

    @dg.job(name="erase_person", description="Erase one person (run config: email or crm_contact_id).",
            tags={"crm/privacy": "erasure"})
    def erase_person():
        erase_one()

    @dg.job(name="handle_erasure_requests", tags={"crm/privacy": "erasure"},
            description="Erasure requests from the landing zone (launched by the erasure_requests sensor).")
    def handle_erasure_requests():
        erase_requested()

    @dg.job(name="export_person", description="Access / portability export of one person as JSON.",
            tags={"crm/privacy": "export"})
    def export_person_job():
        export_one()

    @dg.job(name="retention", description="Anonymise contacts past the retention period.", tags={"crm/privacy": "retention"})
    def retention():
        retire()

    @dg.job(name="prune_landing", description="Remove landing-zone day folders past landing.retention_days.",
            tags={"crm/privacy": "landing-retention"})
    def prune_landing_job():
        prune()

    @dg.job(name="verify_audit_trail", description="Verify the audit trail's hash chain.")
    def verify_audit_trail():
        verify_chain()

    @dg.op(description="Loads newly arrived consent changes (opt-outs, objections) and applies them to the consent "
                       "ledger and the golden contacts at once, so no alert or push uses a withdrawn consent.")
    def consent_now(context: dg.OpExecutionContext, config: LandingFileConfig, warehouse: WarehouseResource,
                    landing: LandingZoneResource, privacy: PrivacyResource) -> dg.Output:
        wh = warehouse.get()
        load_landed(context, config, mappings[config.source], wh, landing.path, privacy.suppression(wh),
                    "apply_consent_changes")
        events = build_consent_events(wh, privacy.hasher())
        changed = refresh_golden_consent(wh)
        audit_run(wh, context, "consent.applied", {"events": len(events), "contacts_changed": len(changed)})
        return dg.Output(changed, metadata={"events": len(events), "golden_contacts_changed": len(changed)})

    push_consent_to_crm = build_consent_push_op(config_dir)

    @dg.job(name="apply_consent_changes", tags={"crm/privacy": "consent"}, executor_def=NEAR_REAL_TIME_EXECUTOR,
            description="Consent webhooks: load them, apply them to the ledger and the golden contacts at once, and "
                        "push the contacts whose consent changed to the CRM (launched by the consent_changes and "
                        "engagement_changes sensors).")
    def apply_consent_changes():
        push_consent_to_crm(consent_now())

    jobs = [erase_person, handle_erasure_requests, export_person_job, retention, prune_landing_job, verify_audit_trail,
            apply_consent_changes]
    by_name = {j.name: j for j in jobs}

    @dg.sensor(job=by_name["handle_erasure_requests"], minimum_interval_seconds=settings.sensor_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Launches the erasure of requests that arrived in the landing zone "
                           f"(`{ERASURE_SOURCE}/<day>/*.jsonl`), one run per new file, keyed by its content hash so "
                           "a re-evaluation or a re-delivered file never erases twice.")
    def erasure_requests(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        mapping = mappings[ERASURE_SOURCE]
        new = []
        for day in landed_partitions(landing.path, ERASURE_SOURCE):
            for path in landing_files(landing.path, mapping, day):
                key = f"{day}/{path.name}:{file_digest(path)}"
                if key not in seen:
                    new.append((key, path))
        for key, path in new:
            yield dg.RunRequest(run_key=f"erasure:{key}",
                                run_config={"ops": {"erase_requested": {"config": {"files": [str(path)]}}}},
                                tags={"crm/erasure_file": path.name})
        if new:
            context.update_cursor(json.dumps(sorted(seen | {k for k, _ in new})))

    schedule = dg.ScheduleDefinition(name="weekly_retention", job=by_name["retention"], cron_schedule="30 3 * * 0",
                                     execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.STOPPED,
                                     description="Sundays 03:30: anonymise contacts past the retention period.")
    landing_schedule = dg.ScheduleDefinition(
        name="daily_landing_retention", job=by_name["prune_landing"], cron_schedule="15 4 * * *",
        execution_timezone="Europe/Berlin", default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Daily 04:15: remove landing day folders older than {settings.landing_retention_days} days.")
    consent_changes = landing_sensor(
        "consent_changes", ("consent_changes",), apply_consent_changes, "consent_now", mappings, 15,
        timedelta(minutes=operations.near_real_time_max_age_minutes),
        "Consent webhooks (opt-outs, objections) in the landing zone: applied at once, before the next alert or "
        "push could use the old consent.")
    engagement_changes = landing_sensor(
        "engagement_changes", ("email_engagement",), apply_consent_changes, "consent_now", mappings, 15,
        timedelta(minutes=operations.near_real_time_max_age_minutes),
        "The marketing tool's engagement webhooks (unsubscribes, spam complaints, double-opt-in confirmations, "
        "opens, clicks) as the receiver lands them under the day they arrive: applied to the consent ledger at once, "
        "before the next activation could use the old consent.", recent_days=1)
    return dg.Definitions(assets=[consent_events], jobs=jobs, sensors=[erasure_requests, consent_changes, engagement_changes],
                          schedules=[schedule, landing_schedule])


def _erasure_metadata(reports) -> dict:
    tables: dict[str, int] = {}
    for r in reports:
        for k, v in r.tables.items():
            tables[k] = tables.get(k, 0) + v
    return {
        "requests": len(reports), "completed": sum(r.status == "completed" for r in reports),
        "pending": sum(r.status == "pending" for r in reports),
        "subjects": dg.MetadataValue.json([r.subject for r in reports][:50]),
        "rows_erased_by_table": dg.MetadataValue.json(tables),
        "crm": dg.MetadataValue.json([r.targets.get("crm", {}) for r in reports][:50]),
        "landing_files_rewritten": sum(r.landing.get("files_rewritten", 0) for r in reports),
        "landing_records_removed": sum(r.landing.get("records_removed", 0) for r in reports),
    }

