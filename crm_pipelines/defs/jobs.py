"""Jobs: named selections a data engineer launches, schedules and sensors target."""

from __future__ import annotations

import dagster as dg

from .crm import CHANGES_KEY, GROUP as CRM_GROUP, PORTAL_KEY, SNAPSHOT_KEY
from .golden import CONSENT_KEY, GROUP as GOLDEN_GROUP
from .sources import GROUP as SOURCES_GROUP, raw_asset_key


def build_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "ingest_sources",
            selection=dg.AssetSelection.groups(SOURCES_GROUP),
            description="Load every raw source for the selected day(s) from the landing zone.",
        ),
        dg.define_asset_job(
            "build_golden",
            selection=dg.AssetSelection.groups(GOLDEN_GROUP) | dg.AssetSelection.assets(CONSENT_KEY),
            description="Clean, enrich and resolve everything loaded into golden contacts and accounts (with the "
                        "consent ledger, whose verdict per channel is a field of the golden contact).",
        ),
        dg.define_asset_job(
            "push_crm",
            selection=dg.AssetSelection.groups(CRM_GROUP) - dg.AssetSelection.assets(SNAPSHOT_KEY, PORTAL_KEY),
            tags={"crm/push": "crm"},  # the production run queue lets one push run at a time
            description="Read the CRM's changes (what sales edited, deleted, merged), build the CRM payloads, check "
                        "them (blocking GX suites), push what changed to the CRM.",
        ),
        dg.define_asset_job(
            "hourly_behaviour_ingest",
            selection=dg.AssetSelection.assets(raw_asset_key("behaviour_events")),
            description="Today's behaviour events (page views, whitepaper downloads ...), hourly.",
        ),
        dg.define_asset_job(
            "newsletter_batch",
            selection=dg.AssetSelection.assets(raw_asset_key("newsletter_signups")),
            description="The e-mail tool's daily batch of sign-ups and unsubscribes.",
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
