"""The CRM outlet in Dagster: payload assets with blocking GX checks, and the two push assets.

    CRM -> crm_changes (edits, deletes, merges since the last pull: ops.crm_remote, the landing zone)
    golden/accounts + crm_changes -> crm_account_payload [gx] -> crm_push_accounts
    golden/contacts + crm_changes -> crm_contact_payload [gx] -> crm_push_contacts (after crm_push_accounts)
    crm_portal: the custom properties the push needs, created in the portal (job setup_crm_portal)

A failed blocking check stops the pushes in the same run (Dagster skips downstream steps), and the
push assets refuse to run in a later run until every gate passed on the current materialisation
of what they push (:func:`require_passed_checks`). Pushes share the concurrency pool ``crm_push``.
"""


from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ..core.crm.changes import pull_changes
from ..core.crm.payloads import build_payload
from ..core.crm.properties import PortalNotReady, setup_portal
from ..core.crm.settings import load_sync_settings
from ..core.crm.snapshot import pull_snapshot
from ..core.crm.sync import SyncBusy, SyncFailed, push
from ..core.model import ENTITIES
from ..core.platform import quality as Q
from ..core.platform.masking import masked_preview
from ..core.platform.schema import CRM_PAYLOADS, GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, LEAD_SCORES
from ..core.platform.warehouse import select_in
from ..core.privacy_screen.suppression import Screen
from ..core.sources.mapping import SourceMapping
from . import golden as golden_defs
from .auditing import audit_run
from .metadata import frame_markdown
from .quality import check_result
from .resources import AlertResource, CrmResource, LandingZoneResource, PrivacyResource, WarehouseResource

GROUP = "crm"
OWNERS = ["team:data-engineering", "team:sales-ops"]
POOL = "crm_push"
PAYLOAD_CHECK = "gx_payload"
ACCOUNT_PAYLOAD_KEY = dg.AssetKey("crm_account_payload")
CONTACT_PAYLOAD_KEY = dg.AssetKey("crm_contact_payload")
PUSH_ACCOUNTS_KEY = dg.AssetKey("crm_push_accounts")
PUSH_CONTACTS_KEY = dg.AssetKey("crm_push_contacts")
SNAPSHOT_KEY = dg.AssetKey("crm_snapshot")
CHANGES_KEY = dg.AssetKey("crm_changes")
PORTAL_KEY = dg.AssetKey("crm_portal")

_PREVIEW = {"companies": ["golden_id", "name", "zip", "city", "country"],
            "contacts": ["golden_id", "firstname", "lastname", "email", "zip", "lifecyclestage"]}
# Payload columns -> model fields, so the masked preview knows which ones are personal.
_AS_MODEL = {"firstname": "first_name", "lastname": "last_name", "mobilephone": "mobile"}


class PushConfig(dg.Config):
    dry_run: bool = False
    """Report would-create / would-update / unchanged / invalid counts; send nothing."""


def gate_checks(object_type: str) -> list[dg.AssetCheckKey]:
    """Every blocking check that must have passed on the current data before ``object_type`` is pushed."""
    if object_type == "companies":
        golden_key, names = golden_defs.ACCOUNTS_KEY, ["gx_golden_accounts", "every_record_one_golden_id",
                                                       "match_rate_stable"]
        payload_key = ACCOUNT_PAYLOAD_KEY
    else:
        golden_key, names = golden_defs.CONTACTS_KEY, ["gx_golden_contacts", "unique_email", "every_record_one_golden_id",
                                                       "match_rate_stable"]
        payload_key = CONTACT_PAYLOAD_KEY
    return [dg.AssetCheckKey(payload_key, PAYLOAD_CHECK), *[dg.AssetCheckKey(golden_key, n) for n in names]]


def require_passed_checks(instance: dg.DagsterInstance, checks: list[dg.AssetCheckKey]) -> None:
    """Raises a Failure unless each check's latest execution passed and is not older than its asset's
    latest materialisation (a re-materialised asset has to pass its gate again)."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
    problems = []
    for key in checks:
        name = f"{key.asset_key.to_user_string()}:{key.name}"
        record = latest.get(key)
        if record is None:
            problems.append(f"{name} has never run")
            continue
        if record.status != AssetCheckExecutionRecordStatus.SUCCEEDED:
            problems.append(f"{name} is {record.status.value.lower()} (run {record.run_id[:8]})")
            continue
        materialization = instance.get_latest_materialization_event(key.asset_key)
        if materialization and record.event and record.event.timestamp < materialization.timestamp:
            problems.append(f"{name} has not run since {key.asset_key.to_user_string()} was last materialised")
    if problems:
        raise dg.Failure(description="CRM push refused, quality gates not passed: " + "; ".join(problems),
                         metadata={"gates": dg.MetadataValue.json(problems)})


def read_contacts(wh, golden_ids: list[str] | None = None) -> pd.DataFrame:
    """Golden contacts (all, or ``golden_ids``) with ``score_stage``: the funnel stage (mql / sql) decides the
    lifecycle stage the payload proposes."""
    g = GOLDEN_CONTACTS
    golden = wh.read_frame(sa.select(g)) if golden_ids is None else select_in(wh, sa.select(g), g.c.golden_id, golden_ids)
    wh.ensure_tables([LEAD_SCORES])
    ls = LEAD_SCORES
    stages = wh.read_frame(sa.select(ls.c.golden_id, ls.c.stage)) if golden_ids is None else \
        select_in(wh, sa.select(ls.c.golden_id, ls.c.stage), ls.c.golden_id, golden_ids)
    golden["score_stage"] = golden["golden_id"].map(dict(zip(stages["golden_id"], stages["stage"])))
    return golden


def drop_suppressed(golden: pd.DataFrame, screen: Screen) -> pd.DataFrame:
    """Golden contacts without suppressed people: the CRM never hears of them again."""
    return golden[~screen.suppressed(golden)].reset_index(drop=True)


def payload_identities(payload: pd.DataFrame) -> pd.DataFrame:
    """The identity columns of an outgoing contact payload, under their canonical names."""
    return pd.DataFrame({"email": payload["email"], "crm_contact_id": payload["crm_id"],
                         "first_name": payload.get("firstname"), "last_name": payload["lastname"],
                         "company_name": payload.get("company"), "phone": payload.get("phone"),
                         "mobile": payload.get("mobilephone"), "street": payload["address"],
                         "postal_code": payload["zip"], "country": payload["country"]})


class SnapshotConfig(dg.Config):
    day: str = ""
    """Landing-zone day folder (YYYY-MM-DD) to write into; empty: today in the project's time zone."""


def sync_settings(config_dir):
    """config/sync.yaml, its mapped columns checked against the golden tables."""
    return load_sync_settings(config_dir / "sync.yaml", golden_columns={
        "companies": set(GOLDEN_ACCOUNTS.columns.keys()), "contacts": set(GOLDEN_CONTACTS.columns.keys())})


def build_consent_push_op(config_dir) -> dg.OpDefinition:
    """The CRM side of a consent change: the contacts whose consent verdict just changed, pushed at once (only they,
    only where the CRM has them; the same payload, quality suite and suppression as the full push), so a
    withdrawal reaches the CRM within the minute instead of with the next scheduled push."""
    settings = sync_settings(config_dir)
    spec = settings.objects["contacts"]

    @dg.op(name="push_consent_to_crm", pool=POOL,
           description="Pushes the contacts whose consent just changed to the CRM (partial push: updates only, "
                       "nothing archived); waits for a running full push.")
    def push_consent_to_crm(context: dg.OpExecutionContext, changed: list, warehouse: WarehouseResource,
                            crm: CrmResource, privacy: PrivacyResource, alerts: AlertResource) -> dg.Output:
        if not changed:
            return dg.Output(None, metadata={"contacts": 0, "sent": 0})
        why = crm.unavailable()
        if why:
            context.log.warning(f"{len(changed)} consent change(s) not pushed: {why}; the next push carries them")
            return dg.Output(None, metadata={"contacts": len(changed), "sent": 0, "crm": why})
        wh = warehouse.get()
        screen = privacy.suppression(wh).screen()
        golden = read_contacts(wh, changed)
        payload = build_payload(drop_suppressed(golden, screen), spec)
        checked = payload.assign(_suppressed=screen.suppressed(payload_identities(payload)))
        result = Q.validate(checked, Q.payload_suite("contacts", spec.required, settings.lifecycle_stages))
        if not result.success:
            # The scheduled push's gate would stop the same rows: it reports them; the consent is in the golden record.
            raise dg.Failure(description="consent push refused: the payload failed its quality suite",
                             metadata=check_result(result))

        def alert(text: str) -> None:
            context.log.error(text)
            alerts.send(text)

        try:
            report = push(wh, crm.connector(settings), payload, spec, settings, context.run.run_id, log=context.log.info,
                          alert=alert, partial=True)
        except SyncBusy as exc:
            # The scheduled push holds the lock for a while; the rows are small, so wait and try again.
            raise dg.RetryRequested(max_retries=30, seconds_to_wait=10) from exc
        except SyncFailed as exc:
            raise dg.Failure(description=str(exc), metadata=_metadata(exc.report)) from exc
        except PortalNotReady as exc:
            raise dg.Failure(description=str(exc)) from exc
        audit_run(wh, context, "crm.push.consent", {"contacts": len(changed), "updated": report.updated,
                                                      "skipped_not_in_crm": report.skipped_not_in_crm})
        return dg.Output(None, metadata={"contacts": len(changed), **_metadata(report)})

    return push_consent_to_crm


def build_crm_defs(config_dir, mappings: dict[str, SourceMapping], timezone: str = "Europe/Berlin") -> dg.Definitions:
    settings = sync_settings(config_dir)
    version = f"crm-1-{settings.sha256[:12]}"

    def payload_asset(object_type: str, key: dg.AssetKey, golden_key: dg.AssetKey, golden_table: sa.Table):
        spec = settings.objects[object_type]

        @dg.asset(key=key, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
                  deps=[golden_key, CHANGES_KEY],
                  check_specs=[dg.AssetCheckSpec(PAYLOAD_CHECK, asset=key, blocking=True,
                                                 description=f"GX suite `crm_{object_type}_payload` (docs/quality.md): "
                                                             "required keys, formats, uniqueness, allowed values, no "
                                                             "suppressed person. Blocks the push when it fails.")],
                  description=f"The {object_type} as the CRM would receive them: golden columns mapped to CRM "
                              f"properties by `config/sync.yaml` (mode {spec.mode}). Table "
                              f"`marts.crm_{object_type}_payload`.")
        def _payload(context: dg.AssetExecutionContext, warehouse: WarehouseResource, privacy: PrivacyResource):
            wh = warehouse.get()
            golden = read_contacts(wh) if object_type == "contacts" else wh.read_frame(sa.select(golden_table))
            screen = privacy.suppression(wh).screen()
            kept = drop_suppressed(golden, screen) if object_type == "contacts" else golden
            payload = build_payload(kept, spec)
            table = CRM_PAYLOADS[object_type]
            wh.ensure_tables([table])
            with wh.engine.begin() as conn:
                conn.execute(sa.delete(table))
                wh.bulk_insert(conn, table, payload)
            checked = payload.copy()
            if object_type == "contacts":
                # Judged on what leaves, independently of the filter above: a bug there cannot hide here.
                checked["_suppressed"] = screen.suppressed(payload_identities(payload))
            result = Q.validate(checked, Q.payload_suite(object_type, spec.required, settings.lifecycle_stages))
            preview = masked_preview(payload.rename(columns=_AS_MODEL), ENTITIES["contact" if object_type == "contacts"
                                                                                 else "account"],
                                     [_AS_MODEL.get(c, c) for c in _PREVIEW[object_type]])
            yield dg.MaterializeResult(metadata={
                "dagster/row_count": len(payload), "rows_in": len(golden),
                "suppressed_left_out": int(len(golden) - len(kept)),
                "with_crm_id": int(payload["crm_id"].notna().sum()),
                "properties": dg.MetadataValue.json(spec.properties),
                "preview_masked": dg.MetadataValue.md(frame_markdown(preview)),
            })
            yield dg.AssetCheckResult(check_name=PAYLOAD_CHECK, passed=result.success, metadata=check_result(result))

        return _payload

    def push_asset(object_type: str, key: dg.AssetKey, payload_key: dg.AssetKey, extra_deps: list):
        spec = settings.objects[object_type]

        @dg.asset(key=key, group_name=GROUP, owners=OWNERS, kinds={"hubspot", "python"}, code_version=version,
                  deps=[payload_key, *extra_deps], pool=POOL,
                  description=f"Pushes new and changed {object_type} to the CRM (HubSpot CRM v3 batch upsert keyed by "
                              f"our golden ID, {settings.max_requests} requests / {settings.window_seconds:g} s), in "
                              f"mode `{spec.mode}`; only when every quality gate passed. State in "
                              "`ops.crm_sync_state`, row log in `ops.crm_sync_log`. Config `dry_run: true` reports "
                              "without sending.")
        def _push(context: dg.AssetExecutionContext, config: PushConfig, warehouse: WarehouseResource, crm: CrmResource,
                  alerts: AlertResource) -> dg.MaterializeResult:
            require_passed_checks(context.instance, gate_checks(object_type))
            wh = warehouse.get()
            payload = wh.read_frame(sa.select(CRM_PAYLOADS[object_type]))
            connector = crm.connector(settings)

            def alert(text: str) -> None:
                context.log.error(text)
                alerts.send(text)

            try:
                report = push(wh, connector, payload, spec, settings, context.run.run_id, dry_run=config.dry_run,
                              log=context.log.info, alert=alert)
            except SyncFailed as exc:
                raise dg.Failure(description=str(exc), metadata=_metadata(exc.report)) from exc
            except (SyncBusy, PortalNotReady) as exc:
                raise dg.Failure(description=str(exc)) from exc
            if not config.dry_run:
                audit_run(wh, context, f"crm.push.{object_type}", {k: v for k, v in report.as_dict().items()
                                                                   if k in ("created", "updated", "archived", "rejected",
                                                                            "failed", "invalid", "unchanged")})
            return dg.MaterializeResult(metadata=_metadata(report))

        return _push

    @dg.asset(key=SNAPSHOT_KEY, group_name=GROUP, owners=OWNERS, kinds={"hubspot", "json"}, code_version=version,
              description="Reads every company and contact from the CRM (paged, `after` cursor, only the properties "
                          "the mappings know) and writes the pages into the landing zone for today (Europe/Berlin), "
                          "`<landing>/crm_accounts/<day>/pull_*.json` and `crm_contacts/...`, where the sources "
                          "`raw/crm_accounts` and `raw/crm_contacts` load them. A second pull on the same day replaces "
                          "the first; a pull that fails halfway leaves nothing behind.")
    def crm_snapshot(context: dg.AssetExecutionContext, config: SnapshotConfig, crm: CrmResource,
                     landing: LandingZoneResource) -> dg.MaterializeResult:
        day = config.day or datetime.now(ZoneInfo(timezone)).date().isoformat()
        connector = crm.connector(settings)
        report = pull_snapshot(connector, mappings, landing.path, day, progress=context.log.info)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": sum(report.objects.values()), "day": day,
            "companies": report.objects.get("companies", 0), "contacts": report.objects.get("contacts", 0),
            "pages": dg.MetadataValue.json(report.pages), "replaced_pages": report.replaced_pages,
            "requests": connector.stats.requests, "throttled": connector.stats.throttled,
            "folders": dg.MetadataValue.json(report.folders),
        })

    @dg.asset(key=PORTAL_KEY, group_name=GROUP, owners=OWNERS, kinds={"hubspot"}, code_version=version,
              description="The CRM portal's side of the contract: creates the property group and every custom property "
                          "`config/sync.yaml` declares (`portal.properties`, with type and options) through HubSpot's "
                          "properties API; idempotent. Existing properties of the wrong shape are reported, never "
                          "changed. Job `setup_crm_portal`; also `python -m crm_pipelines.crm setup`.")
    def crm_portal(context: dg.AssetExecutionContext, crm: CrmResource) -> dg.MaterializeResult:
        report = setup_portal(crm.connector(settings), settings, log=context.log.info)
        if report.problems:
            raise dg.Failure(description="CRM portal properties of the wrong shape: " + "; ".join(report.problems),
                             metadata={"problems": dg.MetadataValue.json(report.problems)})
        return dg.MaterializeResult(metadata={
            "created": dg.MetadataValue.json(report.created), "already_there": len(report.existing),
            "groups_created": dg.MetadataValue.json(report.groups_created),
        })

    @dg.asset(key=CHANGES_KEY, group_name=GROUP, owners=OWNERS, kinds={"hubspot", "json"}, code_version=version,
              description="What changed in the CRM since the last pull (search on the modification date, paged; the "
                          "first pull reads everything), deleted (archived) objects and merges: mirrored in "
                          "`ops.crm_remote` (what the push policies read), followed in `ops.crm_sync_state` (merged "
                          "IDs re-pointed to the survivor, deleted ones marked), and landed as "
                          "`<landing>/crm_contacts|crm_accounts/<day>/changes_*.json` for the day's load. Hourly "
                          "(schedule `hourly_crm_changes`) and first in every `push_crm` run.")
    def crm_changes(context: dg.AssetExecutionContext, config: SnapshotConfig, warehouse: WarehouseResource,
                    crm: CrmResource, landing: LandingZoneResource) -> dg.MaterializeResult:
        day = config.day or datetime.now(ZoneInfo(timezone)).date().isoformat()
        connector = crm.connector(settings)
        report = pull_changes(warehouse.get(), connector, settings, mappings, landing.path, day, context.run.run_id,
                              log=context.log.info)
        return dg.MaterializeResult(metadata={
            # Its rows are what it delivered to the landing zone (what it read is under "read").
            "dagster/row_count": sum(report.landed.values()), "day": day,
            "read": dg.MetadataValue.json(report.changed), "landed": dg.MetadataValue.json(report.landed),
            "own_writes_not_landed": dg.MetadataValue.json(report.echoes),
            "deleted_in_crm": dg.MetadataValue.json(report.archived), "merged_away": dg.MetadataValue.json(report.merged),
            "repointed_to_survivor": dg.MetadataValue.json(report.repointed),
            "marked_deleted": dg.MetadataValue.json(report.marked_deleted),
            "restored_in_crm": dg.MetadataValue.json(report.restored),
            "full_read": dg.MetadataValue.json(report.full), "files": len(report.files),
            "requests": connector.stats.requests, "throttled": connector.stats.throttled,
        })

    assets = [
        crm_portal,
        crm_changes,
        crm_snapshot,
        payload_asset("companies", ACCOUNT_PAYLOAD_KEY, golden_defs.ACCOUNTS_KEY, GOLDEN_ACCOUNTS),
        payload_asset("contacts", CONTACT_PAYLOAD_KEY, golden_defs.CONTACTS_KEY, GOLDEN_CONTACTS),
        push_asset("companies", PUSH_ACCOUNTS_KEY, ACCOUNT_PAYLOAD_KEY, []),
        push_asset("contacts", PUSH_CONTACTS_KEY, CONTACT_PAYLOAD_KEY, [PUSH_ACCOUNTS_KEY]),
    ]
    return dg.Definitions(assets=assets, jobs=_jobs())


def _jobs() -> list:
    return [
        dg.define_asset_job(
            "push_crm",
            selection=dg.AssetSelection.groups(GROUP) - dg.AssetSelection.assets(SNAPSHOT_KEY, PORTAL_KEY),
            tags={"crm/push": "crm"},  # the production run queue lets one push run at a time
            description="Read the CRM's changes (what sales edited, deleted, merged), build the CRM payloads, check "
                        "them (blocking GX suites), push what changed to the CRM.",
        ),
        dg.define_asset_job(
            "pull_crm_snapshot",
            selection=dg.AssetSelection.assets(SNAPSHOT_KEY),
            description="Read the CRM's companies and contacts into today's landing zone for raw/crm_accounts and "
                        "raw/crm_contacts (then run ingest_sources for that day).",
        ),
        dg.define_asset_job(
            "pull_crm_changes",
            selection=dg.AssetSelection.assets(CHANGES_KEY),
            description="What changed in the CRM since the last pull, into ops.crm_remote and today's landing zone.",
        ),
        dg.define_asset_job(
            "setup_crm_portal",
            selection=dg.AssetSelection.assets(PORTAL_KEY),
            description="Create the property group and every custom property the push needs in the CRM portal "
                        "(idempotent).",
        ),
    ]


def _metadata(report) -> dict:
    d = report.as_dict()
    keys = ("rows_in", "unchanged", "to_create", "to_update", "to_archive", "skipped_not_in_crm", "invalid", "sent",
            "created", "updated", "archived", "rejected", "failed", "retried", "associated", "association_failures",
            "adopted", "held", "deleted_in_crm", "recreated", "batches", "requests", "throttled", "retries",
            "failure_rate")
    out = {"dagster/row_count": d["rows_in"], **{k: d[k] for k in keys}}
    out.update(status=d["status"], dry_run=d["dry_run"], mode=d["mode"])
    if d["messages"]:
        out["top_messages_masked"] = dg.MetadataValue.json(d["messages"])
    return out

