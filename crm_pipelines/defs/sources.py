"""The sources group in Dagster: one daily-partitioned raw asset per mapping file, its checks, the load
jobs, the mapping-version sensor, and the landing-file sensor the near-real-time paths use.

Each asset loads its landing-zone partitions through ``core/sources/ingest.py``; the mapping's
content hash is the asset's ``code_version``, so editing a mapping marks exactly
that asset stale. A backfill over many days runs as one run (single-run backfill
policy) and loads partition after partition, each in its own transaction.
"""


import hashlib
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from ..core.platform.masking import mask_text
from ..core.sources.ingest import (PartitionReport, ingest_partition, landed_partitions, landing_files,
                                   outdated_partitions, partition_balance, partition_ranges)
from ..core.sources.mapping import SourceMapping
from .auditing import audit_run
from .metadata import frame_markdown, markdown_table
from .resources import LandingZoneResource, PrivacyResource, WarehouseResource

GROUP = "sources"
MAPPING_CHECK = "mapping_version_current"
REBUILD_COMMAND = "python -m crm_pipelines.nightly rebuild-outdated"
DEFAULT_OWNER = "team:data-engineering"
FORMAT_KIND = {"csv": "csv", "jsonl": "json", "json": "json", "fixed_width": "file"}


def raw_asset_key(source: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", source])


def build_source_asset(mapping: SourceMapping, partitions_def: dg.PartitionsDefinition,
                       priority: int = 0) -> dg.AssetsDefinition:
    """``priority``: the executor starts ready steps of a higher one first (``dagster/priority``)."""
    key = raw_asset_key(mapping.source)
    checks = [
        dg.AssetCheckSpec("rows_balance", asset=key, blocking=True,
                          description="Every record read is loaded, quarantined or (a suppressed person's) counted as suppressed "
                                      "(per partition, counted in the warehouse)."),
        dg.AssetCheckSpec("quarantine_rate", asset=key,
                          description=f"At most {mapping.max_quarantine_rate:.1%} of the records read are quarantined."),
        dg.AssetCheckSpec("landing_files_present", asset=key,
                          description="Each loaded day had at least one landing file." if mapping.expect_files == "daily"
                          else "Informational: this source delivers only on some days."),
        dg.AssetCheckSpec("files_readable", asset=key,
                          description="Every landing file could be read as a whole. A rejected file (empty, binary, wrong "
                                      "encoding or delimiter, no header) is named with its line and error; the day's "
                                      "other files are loaded, so this check does not block what depends on the asset."),
        dg.AssetCheckSpec("unexpected_files", asset=key,
                          description=f"No file in a day's folder outside the pattern `{mapping.pattern}`: such a file "
                                      "is not read, and is listed in `ops.landing_files` as ignored."),
    ]
    owners = sorted({mapping.owner or DEFAULT_OWNER, DEFAULT_OWNER})

    @dg.asset(
        key=key,
        group_name=GROUP,
        description=f"{mapping.description}\n\nMapping: `{mapping.file.name}` -> canonical entity `{mapping.entity.name}`; "
                    f"rows land in `raw.{mapping.source}`, rejects in `ops.quarantine`.",
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=mapping.code_version,
        kinds={"pandas", "sql", FORMAT_KIND[mapping.format.type]},
        owners=owners,
        tags={"entity": mapping.entity.name, "format": mapping.format.type},
        metadata={
            "mapping_file": str(mapping.file),
            "entity": mapping.entity.name,
            "landing_pattern": f"{mapping.source}/<YYYY-MM-DD>/{mapping.pattern}",
            "dagster/table_name": f"raw.{mapping.source}",
        },
        check_specs=checks,
        op_tags={"dagster/priority": str(priority)} if priority else None,
    )
    def _raw_source(context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource,
                    privacy: PrivacyResource):
        wh = warehouse.get()
        # Loads and erasures of the raw layer take turns (Warehouse.raw_writes): the balance check
        # below counts what this run loaded, and nothing is deleted under it.
        with wh.raw_writes("load", log=context.log.info):
            return _load(context, mapping, wh, privacy.suppression(wh), landing)

    return _raw_source


def _load(context: dg.AssetExecutionContext, mapping: SourceMapping, wh, suppression, landing) -> dg.MaterializeResult:
    partitions = context.partition_keys
    reports: list[PartitionReport] = []
    for i, partition in enumerate(partitions, 1):
        rep = ingest_partition(mapping, partition, landing.path, wh, context.run.run_id,
                               log=lambda m: context.log.info(mask_text(m)), suppression=suppression)
        for f in rep.rejected_files:
            context.log.error(f"{mapping.source} {partition}: file rejected, the day's other files are loaded: "
                              f"{mask_text(f.error or '')}")
        reports.append(rep)
        if len(partitions) > 1:
            context.log.info(f"[{i}/{len(partitions)}] {partition}: {rep.rows_loaded} loaded, "
                             f"{rep.rows_quarantined} quarantined in {rep.seconds:.1f}s")
    for rep in reports:
        context.add_asset_metadata(_partition_metadata(rep), partition_key=rep.partition)
    audit_run(wh, context, "ingest.loaded", {"source": mapping.source, "partitions": {
        r.partition: {"loaded": r.rows_loaded, "quarantined": r.rows_quarantined, "suppressed": r.rows_suppressed}
        for r in reports}})
    return _result(mapping, wh, reports)


def _result(mapping: SourceMapping, wh, reports: list[PartitionReport]) -> dg.MaterializeResult:
    read = sum(r.rows_read for r in reports)
    loaded = sum(r.rows_loaded for r in reports)
    quarantined = sum(r.rows_quarantined for r in reports)
    duplicates = [f"{r.partition}/{f.file} = {f.duplicate_of}" for r in reports for f in r.duplicate_files]
    reasons: Counter = Counter()
    for r in reports:
        reasons.update(r.reason_counts)
    rate = quarantined / read if read else 0.0
    preview = next((r.preview for r in reports if r.preview is not None), None)

    partitions = [r.partition for r in reports]
    balance = partition_balance(wh, mapping, partitions)
    unbalanced = {p: b for p, b in balance.items() if b["read"] != b["loaded"] + b["quarantined"] + b["suppressed"]}
    mismatched = [r.partition for r in reports
                  if (balance[r.partition]["loaded"], balance[r.partition]["quarantined"],
                      balance[r.partition]["suppressed"]) != (r.rows_loaded, r.rows_quarantined, r.rows_suppressed)]
    empty_days = [r.partition for r in reports if not [f for f in r.files if f.status == "loaded"]]
    rejected = [(r.partition, f) for r in reports for f in r.rejected_files]
    ignored = [f"{r.partition}/{f.file}" for r in reports for f in r.ignored_files]

    # Per-partition figures go onto each partition's materialization (see _partition_metadata);
    # these describe the whole run, which may span many days in a backfill.
    metadata = {
        "partitions_in_run": len(reports),
        "run_rows_read": read,
        "run_rows_loaded": loaded,
        "run_rows_quarantined": quarantined,
        "run_rows_suppressed": sum(r.rows_suppressed for r in reports),
        "run_seconds": round(sum(r.seconds for r in reports), 3),
        "run_text_values_cleaned": sum(r.text_values_cleaned for r in reports),
        "run_rows_per_second": round(read / max(sum(r.seconds for r in reports), 1e-9), 1),
    }
    if duplicates:
        metadata["duplicate_deliveries"] = dg.MetadataValue.md("\n".join(f"- `{d}`" for d in duplicates[:20]))
    if reasons:
        metadata["quarantine_reasons"] = dg.MetadataValue.md(markdown_table(["reason", "records"], reasons.most_common(15)))
    if preview is not None:
        metadata["preview_masked"] = dg.MetadataValue.md(frame_markdown(preview))

    checks = [
        dg.AssetCheckResult(
            check_name="rows_balance", passed=not unbalanced and not mismatched,
            metadata={"partitions_checked": len(balance), "unbalanced_partitions": sorted(unbalanced)[:20],
                      "count_mismatch_partitions": mismatched[:20], "rows_read": read,
                      "rows_loaded": loaded, "rows_quarantined": quarantined,
                      "rows_suppressed": sum(r.rows_suppressed for r in reports)},
        ),
        dg.AssetCheckResult(
            check_name="quarantine_rate", passed=rate <= mapping.max_quarantine_rate,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantine_rate": round(rate, 6), "max_quarantine_rate": mapping.max_quarantine_rate},
        ),
        dg.AssetCheckResult(
            check_name="landing_files_present",
            passed=not empty_days or mapping.expect_files == "sporadic",
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"days_without_files": empty_days[:31], "expect_files": mapping.expect_files},
        ),
        dg.AssetCheckResult(
            check_name="files_readable", passed=not rejected, severity=dg.AssetCheckSeverity.ERROR,
            metadata={"files_rejected": len(rejected),
                      "rejected": dg.MetadataValue.md("\n".join(f"- `{p}`: {mask_text(f.error or '')}"
                                                                 for p, f in rejected[:20]) or "none")},
        ),
        dg.AssetCheckResult(
            check_name="unexpected_files", passed=not ignored, severity=dg.AssetCheckSeverity.WARN,
            metadata={"files_ignored": len(ignored), "ignored": ignored[:50], "pattern": mapping.pattern},
        ),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _partition_metadata(rep: PartitionReport) -> dict:
    read = rep.rows_read
    return {
        "dagster/row_count": rep.rows_loaded,
        "rows_read": read,
        "rows_loaded": rep.rows_loaded,
        "rows_quarantined": rep.rows_quarantined,
        "rows_suppressed": rep.rows_suppressed,
        "fields_anonymised": rep.fields_anonymised,
        "quarantine_rate": round(rep.rows_quarantined / read, 6) if read else 0.0,
        "files_read": sum(1 for f in rep.files if f.status == "loaded"),
        "files_duplicate": len(rep.duplicate_files),
        "files_rejected": len(rep.rejected_files),
        "files_ignored": len(rep.ignored_files),
        "text_values_cleaned": rep.text_values_cleaned,
        "seconds": round(rep.seconds, 3),
    }


# ---------------------------------------------------------------------------- mapping changes

def _mapping_check(mapping: SourceMapping) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=raw_asset_key(mapping.source), name=MAPPING_CHECK, blocking=False,
                    description="Every loaded day was loaded with the current version of the mapping "
                                f"`{mapping.file.name}`. Warns after a mapping edit, listing the days built with an "
                                f"older version; `{REBUILD_COMMAND}` reloads exactly the days that have a delivery "
                                "(then golden, scores and the CRM push follow).")
    def _check(warehouse: WarehouseResource, landing: LandingZoneResource) -> dg.AssetCheckResult:
        outdated = outdated_partitions(warehouse.get(), mapping, landing.path)
        rebuild, pruned = outdated["rebuild"], outdated["pruned"]
        ranges = partition_ranges(rebuild)
        md = {"mapping_version": mapping.code_version, "outdated_partitions": len(rebuild) + len(pruned),
              "to_rebuild": len(rebuild), "landing_pruned": len(pruned),
              "outdated_ranges": dg.MetadataValue.md("\n".join(f"- {a} .. {b}" if a != b else f"- {a}"
                                                               for a, b in ranges[:30]) or "none")}
        if rebuild:
            md["rebuild"] = dg.MetadataValue.md(f"`{REBUILD_COMMAND} --source {mapping.source}` (docs/operations.md, "
                                                "After a mapping change)")
        if pruned:
            md["cannot_rebuild"] = dg.MetadataValue.md(
                f"{len(pruned)} day(s) whose landing folder was pruned keep the old derivation: "
                + ", ".join(pruned[:20]))
        return dg.AssetCheckResult(passed=not rebuild and not pruned, severity=dg.AssetCheckSeverity.WARN, metadata=md)

    return _check


def build_sources_defs(mappings: dict[str, SourceMapping], partitions_def: dg.PartitionsDefinition,
                       ingest_first: tuple[str, ...] = ()) -> dg.Definitions:
    """One raw asset per mapping; the load jobs of the sync-frequency matrix; the mapping-version checks, a
    job that runs only them, and a sensor that runs that job whenever the code location comes up with a
    mapping whose version changed: after an edit and a reload, the warning is on the asset, in the catalog
    and on the lineage graph without anyone loading anything. ``ingest_first`` (config/operations.yaml): the
    sources whose loads start first, in that order."""
    checks = [_mapping_check(m) for m in mappings.values()]
    jobs = [
        dg.define_asset_job("ingest_sources", selection=dg.AssetSelection.groups(GROUP),
                            description="Load every raw source for the selected day(s) from the landing zone."),
        dg.define_asset_job("hourly_behaviour_ingest", selection=dg.AssetSelection.assets(raw_asset_key("behaviour_events")),
                            description="Today's behaviour events (page views, whitepaper downloads ...), hourly."),
        dg.define_asset_job("newsletter_batch", selection=dg.AssetSelection.assets(raw_asset_key("newsletter_signups")),
                            description="The e-mail tool's daily batch of sign-ups and unsubscribes."),
    ]
    check_job = dg.define_asset_job(
        "check_mapping_versions",
        selection=dg.AssetSelection.checks(*[dg.AssetCheckKey(raw_asset_key(m.source), MAPPING_CHECK)
                                             for m in mappings.values()]),
        # Eleven queries of a few milliseconds: one process, whatever executor the heavy jobs use.
        executor_def=dg.in_process_executor,
        description="Which loaded days were built with an older version of their mapping (a check per source).")
    versions = {m.source: m.code_version for m in mappings.values()}

    @dg.sensor(name="mapping_versions", job=check_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="When a mapping's version differs from the one this sensor last saw (a mapping edit, then "
                           "a code location reload), runs check_mapping_versions once, so the outdated days show on "
                           "the asset at once.")
    def mapping_versions(context: dg.SensorEvaluationContext):
        seen = json.loads(context.cursor) if context.cursor else {}
        changed = sorted(s for s, v in versions.items() if seen.get(s) != v)
        if not changed:
            return dg.SkipReason("no mapping changed")
        context.update_cursor(json.dumps(versions, sort_keys=True))
        digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=f"mapping-versions:{digest}",
                             tags={"crm/mappings_changed": str(len(changed))})

    priority = {source: len(ingest_first) - i for i, source in enumerate(ingest_first)}
    return dg.Definitions(assets=[build_source_asset(m, partitions_def, priority.get(m.source, 0))
                                  for m in mappings.values()],
                          asset_checks=checks, jobs=[*jobs, check_job], sensors=[mapping_versions])


# ---------------------------------------------------------------------------- near-real-time landing files

class LandingFileConfig(dg.Config):
    """Run config of the near-real-time paths: the landed file(s) of one source and day."""
    source: str
    day: str
    files: list[str]


FIRST_START_GRACE_SECONDS = 60


def landing_sensor(name: str, sources: tuple[str, ...], job, op_name: str, mappings, interval: int,
                   max_age: timedelta, description: str, recent_days: int | None = None) -> dg.SensorDefinition:
    """A sensor that launches ``job`` once per new file of ``sources`` in the landing zone (run key = file
    content), with the file in the config of ``op_name``: the near-real-time paths of scoring (new leads)
    and privacy (consent changes). ``recent_days``: only day folders of the last so many days by the
    calendar (sources whose files are written under the day they arrive: webhooks, tracking), so a landing
    zone restored from a backup does not start a run per old file."""
    description += (" Starts from now: on its first start, files that landed more than a minute before are left to "
                    "the nightly load; later, files older than "
                    f"{max_age.total_seconds() / 60:.0f} minutes when first seen (they landed while it was not "
                    "running; config/operations.yaml near_real_time_max_age_minutes). Both are counted in the tick.")

    @dg.sensor(name=name, job=job, minimum_interval_seconds=interval, default_status=dg.DefaultSensorStatus.RUNNING,
               description=description)
    def _sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
        first_start = not context.cursor
        seen = set(json.loads(context.cursor)) if context.cursor else set()
        now = datetime.now(timezone.utc).timestamp()
        # First start: what landed before it is the backlog; a file of the last minute (landing while the
        # daemon came up) is a new lead all the same. Later: files older than max_age (downtime).
        oldest = now - (FIRST_START_GRACE_SECONDS if first_start else max_age.total_seconds())
        new, left = [], []
        for source in sources:
            mapping = mappings[source]
            # Only the last few days: near-real-time files land today; older days are the nightly job's.
            days = landed_partitions(landing.path, source)[-3:]
            if recent_days is not None:
                since = (datetime.now(timezone.utc) - timedelta(days=recent_days)).strftime("%Y-%m-%d")
                days = [d for d in days if d >= since]
            for day in days:
                for path in landing_files(landing.path, mapping, day):
                    key = f"{source}/{day}/{path.name}:{file_digest(path)}"
                    if key in seen:
                        continue
                    (left if path.stat().st_mtime < oldest else new).append((key, source, day, path))
        for key, source, day, path in new:
            yield dg.RunRequest(run_key=key, tags={"crm/landing_file": f"{source}/{day}/{path.name}"},
                                run_config={"ops": {op_name: {"config": {"source": source, "day": day,
                                                                         "files": [str(path)]}}}})
        if new or left or first_start:
            # Keys of the last week only (older days are not looked at): the cursor must not grow forever.
            keys = seen | {k for k, *_ in new} | {k for k, *_ in left}
            days = sorted({k.split("/")[1] for k in keys})[-7:]
            context.update_cursor(json.dumps(sorted(k for k in keys if k.split("/")[1] in days)))
        if left:
            why = "first start" if first_start else f"older than {max_age.total_seconds() / 60:.0f} minutes"
            context.log.info(f"{len(left)} landing file(s) left to the nightly load ({why}): "
                             + ", ".join(sorted({f"{s}/{d}" for _, s, d, _ in left})))
            if not new:
                yield dg.SkipReason(f"{len(left)} file(s) left to the nightly load ({why}); watching from now")

    return _sensor


def load_landed(context, config: LandingFileConfig, mapping, wh, landing_root, suppression, loaded_by: str):
    """The near-real-time paths' load: the landed file's day partition into raw (never under an erasure), recorded
    as a materialization of its raw asset. Returns the partition report."""
    with wh.raw_writes("load", log=context.log.info):
        rep = ingest_partition(mapping, config.day, landing_root, wh, context.run.run_id, suppression=suppression)
    context.log_event(dg.AssetMaterialization(
        asset_key=raw_asset_key(config.source), partition=config.day,
        metadata={"dagster/row_count": rep.rows_loaded, "rows_read": rep.rows_read, "rows_loaded": rep.rows_loaded,
                  "rows_quarantined": rep.rows_quarantined, "rows_suppressed": rep.rows_suppressed,
                  "loaded_by": loaded_by}))
    return rep


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256: a landing file's identity in run keys and cursors
    (a re-delivered file with the same content is the same file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
