"""The code location: every asset, check, job, schedule, sensor and resource of crm_pipelines.

Loaded by ``dagster dev`` / ``dagster-webserver`` through ``workspace.yaml``. Read it as the table of
contents of the asset graph: one ``dg.Definitions`` per group, in the order the data flows
(docs/architecture.md), then what runs when across them, then the resources. The configuration folder
(mappings, layouts, rules) is read and validated here, so an invalid mapping stops the code location
from loading with an error that names the file and key.
"""

from __future__ import annotations

import dagster as dg

from .core.crm.settings import load_sync_settings
from .core.platform.operations import load_operations
from .core.sources.mapping import load_mappings
from .defs.activation import build_activation_defs
from .defs.automation import build_automation_defs
from .defs.crm import build_crm_defs
from .defs.executors import build_executor
from .defs.golden import build_golden_defs
from .defs.partitions import daily_partitions
from .defs.print import build_print_defs
from .defs.privacy import build_privacy_defs
from .defs.quality import build_quality_defs
from .defs.reporting import build_reporting_defs
from .defs.resources import build_resources
from .defs.scoring import build_scoring_defs
from .defs.sources import build_sources_defs
from .settings import Settings


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    config = settings.config_dir
    mappings = load_mappings(config)
    groups = dg.Definitions.merge(
        build_sources_defs(mappings, daily_partitions(settings),                   # landing files -> raw
                           load_operations(config / "operations.yaml", sources=mappings).ingest_first),
        build_golden_defs(config, settings.slice_records),                         # raw -> golden contacts, accounts
        build_privacy_defs(config, mappings, settings.data_dir,                    # consent, erasure, access, retention
                           load_sync_settings(config / "sync.yaml")),
        build_scoring_defs(config, mappings, settings.data_dir),                   # scores, hand-off, funnel
        build_crm_defs(config, mappings, settings.timezone),                       # payloads, checks, push, pull
        build_print_defs(config, settings.data_dir),                               # print lists, approval, release
        build_activation_defs(config, mappings),                                   # segments, lists, journeys
        build_reporting_defs(config),                                              # deals, revenue, funnel, attribution
        build_quality_defs(),                                                      # GX suites on the golden tables
    )
    return dg.Definitions.merge(
        groups,
        build_automation_defs(config, {job.name: job for job in groups.jobs}, settings.schedules_running),
        dg.Definitions(resources=build_resources(settings), executor=build_executor(settings)),
    )


defs = build_defs()
