"""The code location: every asset, check, job, schedule, sensor and resource of crm_pipelines.

Loaded by ``dagster dev`` / ``dagster-webserver`` through ``workspace.yaml``. The
configuration folder (mappings, layouts, rules) is read and validated here, so an
invalid mapping stops the code location from loading with an error that names
the file and key.
"""

from __future__ import annotations

import dagster as dg

from .core.crm.settings import load_sync_settings
from .core.mapping import load_mappings
from .defs.crm import build_crm_assets
from .defs.executors import build_executor
from .defs.golden import build_golden_assets
from .defs.jobs import build_jobs
from .defs.maintenance import build_maintenance_defs
from .defs.partitions import daily_partitions
from .defs.printing import build_printing_defs
from .defs.privacy import build_privacy_defs
from .defs.quality import build_quality_checks
from .defs.resources import build_resources
from .defs.scoring import build_chain_sensors, build_schedules, build_scoring_defs
from .defs.sources import build_mapping_defs, build_source_assets
from .settings import Settings


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    mappings = load_mappings(settings.config_dir)
    partitions = daily_partitions(settings)
    privacy = build_privacy_defs(settings.config_dir, mappings, settings.data_dir,
                                 load_sync_settings(settings.config_dir / "sync.yaml"))
    scoring = build_scoring_defs(settings.config_dir, mappings, settings.data_dir)
    printing = build_printing_defs(settings.config_dir, settings.data_dir)
    maintenance = build_maintenance_defs(settings.config_dir)
    mapping = build_mapping_defs(mappings)
    jobs = [*build_jobs(), *privacy["jobs"], *scoring["jobs"], *printing["jobs"], *maintenance["jobs"], *mapping["jobs"]]
    by_name = {j.name: j for j in jobs}
    return dg.Definitions(
        assets=[*build_source_assets(mappings, partitions), *build_golden_assets(settings.config_dir, settings.slice_records),
                *privacy["assets"], *build_crm_assets(settings.config_dir, mappings, settings.timezone),
                *scoring["assets"], *printing["assets"]],
        asset_checks=[*build_quality_checks(), *mapping["checks"]],
        jobs=jobs,
        sensors=[*privacy["sensors"], *scoring["sensors"], *printing["sensors"], *maintenance["sensors"], *mapping["sensors"],
                 *build_chain_sensors(by_name)],
        schedules=[*privacy["schedules"], *build_schedules(by_name, settings.schedules_running), *printing["schedules"], *maintenance["schedules"]],
        resources=build_resources(settings),
        executor=build_executor(settings),
    )


defs = build_defs()
