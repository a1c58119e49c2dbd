"""Jobs: named selections a data engineer launches, schedules and sensors target."""

from __future__ import annotations

import dagster as dg

from .crm import GROUP as CRM_GROUP
from .golden import GROUP as GOLDEN_GROUP
from .sources import GROUP as SOURCES_GROUP


def build_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "ingest_sources",
            selection=dg.AssetSelection.groups(SOURCES_GROUP),
            description="Load every raw source for the selected day(s) from the landing zone.",
        ),
        dg.define_asset_job(
            "build_golden",
            selection=dg.AssetSelection.groups(GOLDEN_GROUP),
            description="Clean, enrich and resolve everything loaded into golden contacts and accounts.",
        ),
        dg.define_asset_job(
            "push_crm",
            selection=dg.AssetSelection.groups(CRM_GROUP),
            description="Build the CRM payloads, check them (blocking GX suites), push what changed to the CRM.",
        ),
    ]
