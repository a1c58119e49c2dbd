"""The raw-source assets in Dagster: materialisation, metadata, checks, failures, staleness after a mapping edit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from crm_pipelines.core.platform.schema import QUARANTINE, raw_table
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.settings import Settings
from crm_pipelines_tests.conftest import copy_config, put
from crm_pipelines_tests.core.sources.test_ingest import lead
from crm_pipelines_tests.core.sources.test_readers import erp_order

ROOT = Path(__file__).resolve().parents[2]
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{2,}@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def settings_for(tmp_path: Path, landing: Path, config: Path | None = None, url: str | None = None) -> Settings:
    return Settings(config_dir=config or Settings.from_env({}).config_dir, landing_dir=landing, data_dir=tmp_path / "data",
                    warehouse_url=url, partition_start="2026-01-01")


def run_range(defs: dg.Definitions, instance, start: str, end: str, selection=None, raise_on_error=True):
    job = defs.resolve_job_def("ingest_sources")
    return job.execute_in_process(
        instance=instance, raise_on_error=raise_on_error, asset_selection=selection,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end})


def materialised(result) -> dict[str, dict]:
    """Each materialised asset's metadata values, by asset key."""
    return {e.materialization.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_definitions_describe_every_source_for_the_ui():
    defs = build_defs()
    graph = defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys() if k.path[0] == "raw")
    assert len(keys) == 12
    for key in (k for k in graph.get_all_asset_keys() if k.path[0] == "raw"):
        node = graph.get(key)
        assert node.group_name == "sources"
        assert node.code_version and len(node.code_version) == 16
        assert node.owners and "team:data-engineering" in node.owners
        spec = next(s for s in defs.resolve_all_asset_specs() if s.key == key)
        assert spec.description and "Mapping:" in spec.description
        assert {"pandas", "sql"} <= set(spec.kinds)
        assert node.partitions_def is not None
        checks = {c.name for c in graph.get_check_keys_for_assets({key})} if hasattr(graph, "get_check_keys_for_assets") else None
        if checks is not None:
            assert {"rows_balance", "quarantine_rate", "landing_files_present"} <= checks


def test_the_longest_loads_start_first():
    """ingest_first (config/operations.yaml): those sources' steps carry a higher dagster/priority, in that order,
    so that with two executor slots the longest loads start first; the others have none."""
    from crm_pipelines.core.platform.operations import load_operations
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    first = load_operations(DEFAULT_CONFIG_DIR / "operations.yaml").ingest_first
    assert first[0] == "behaviour_events"
    job = build_defs().resolve_job_def("ingest_sources")
    priority = {node.name.removeprefix("raw__"): int(node.definition.tags.get("dagster/priority", 0))
                for node in job.graph.nodes}
    assert set(first) < set(priority)
    assert [priority[s] for s in first] == sorted((priority[s] for s in first), reverse=True)
    assert min(priority[s] for s in first) > 0 and {priority[s] for s in set(priority) - set(first)} == {0}


def test_dagster_definitions_validate_passes(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), CRM_DATA_DIR=str(tmp_path / "data"), CRM_LANDING_DIR=str(tmp_path / "landing"))
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_invalid_mapping_stops_the_code_location_with_file_and_key(tmp_path):
    config = copy_config(tmp_path)
    path = config / "mappings" / "web_form_leads.yaml"
    path.write_text(path.read_text().replace("target: company_name", "target: firma"))
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), CRM_CONFIG_DIR=str(config), CRM_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "crm_pipelines.definitions"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "web_form_leads.yaml" in proc.stdout + proc.stderr
    assert "fields.company_name.target: unknown canonical field 'firma'" in proc.stdout + proc.stderr


def test_materialising_a_day_range_loads_every_source(tmp_path, demo_landing, warehouse_url, monkeypatch):
    """The whole `sources` group over a day range, on the embedded default and on PostgreSQL."""
    root, manifest = demo_landing
    postgres = warehouse_url.startswith("postgresql")
    if postgres:
        monkeypatch.setenv("CRM_WAREHOUSE_URL", warehouse_url)  # the resource reads it through EnvVar
    defs = build_defs(settings_for(tmp_path, root, url=warehouse_url if postgres else None))
    with dg.instance_for_test() as instance:
        result = run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        assert result.success
        mats = result.get_asset_materialization_events()
        assert len(mats) == 12 * len(manifest["partitions"])
        per_source: dict[str, list[int]] = {}
        for ev in mats:
            md = {k: v.value for k, v in ev.materialization.metadata.items()}
            assert md["rows_read"] == md["rows_loaded"] + md["rows_quarantined"]
            assert md["dagster/row_count"] == md["rows_loaded"]
            per_source.setdefault(ev.materialization.asset_key.path[1], []).append(md["rows_read"])
        for source, counts in per_source.items():
            assert sum(counts) == manifest["sources"][source]["records"], source  # per-day figures, not run totals
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 72  # six checks on each of the twelve sources (with the mapping version)
        failed = [(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed]
        assert failed == []
    url = warehouse_url if postgres else settings_for(tmp_path, root).default_warehouse_url
    wh = Warehouse.for_url(url)
    assert wh.dialect == ("postgresql" if postgres else "sqlite")
    loaded = wh.scalar("SELECT count(*) FROM raw.web_form_leads")
    expected = manifest["sources"]["web_form_leads"]
    assert loaded == expected["records"] - expected["expected_quarantined"]


def test_no_unmasked_email_in_metadata_or_logs(tmp_path, demo_landing):
    root, manifest = demo_landing
    defs = build_defs(settings_for(tmp_path, root))
    with dg.instance_for_test() as instance:
        result = run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        texts = []
        for record in instance.all_logs(result.run_id):
            texts.append(record.user_message or "")
            if record.dagster_event is not None:
                texts.append(json.dumps(dg.serialize_value(record.dagster_event.event_specific_data)) if record.dagster_event.event_specific_data else "")
        blob = "\n".join(texts)
        assert "preview_masked" in blob  # the previews are there, and masked
        found = [m for m in EMAIL.findall(blob) if not m.split("@")[0].endswith("***")]
        assert found == []


def test_quarantine_counts_and_reasons_in_metadata(tmp_path, landing):
    put(landing, "web_form_leads", "2026-11-03", "leads.jsonl",
        "\n".join([lead(1), lead(2, submitted_at="nie"), "{oops", lead(1)]) + "\n")
    defs = build_defs(settings_for(tmp_path, landing))
    with dg.instance_for_test() as instance:
        result = run_range(defs, instance, "2026-11-03", "2026-11-03", selection=[dg.AssetKey(["raw", "web_form_leads"])])
        (mat,) = result.get_asset_materialization_events()
        md = {k: v.value for k, v in mat.materialization.metadata.items()}
        assert (md["rows_read"], md["rows_loaded"], md["rows_quarantined"]) == (4, 1, 3)
        assert "submitted_at: parse_datetime" in md["quarantine_reasons"]
        assert "duplicate record id" in md["quarantine_reasons"]
        by_name = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert by_name["rows_balance"].passed
        assert not by_name["quarantine_rate"].passed  # 75 % is far above the 5 % allowed
        assert by_name["quarantine_rate"].severity == dg.AssetCheckSeverity.WARN


def test_an_unreadable_file_is_named_by_a_check_and_the_rest_of_the_day_loads(tmp_path, landing):
    put(landing, "erp_orders", "2026-11-03", "AUFTRAG_1.txt", (erp_order("1") + "\r\n").encode("cp850"))
    put(landing, "erp_orders", "2026-11-04", "AUFTRAG_2.txt", (erp_order("2") + "\r\n" + erp_order("3")[:30]).encode("cp850"))
    put(landing, "erp_orders", "2026-11-04", "AUFTRAG_3.txt", "Auftrag 4 \u2013 M\u00fcller".encode("utf-8"))
    put(landing, "erp_orders", "2026-11-04", "auftraege.xlsx", b"PK\x03\x04 not read")
    settings = settings_for(tmp_path, landing)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        result = run_range(defs, instance, "2026-11-03", "2026-11-04", selection=[dg.AssetKey(["raw", "erp_orders"])],
                           raise_on_error=False)
        assert result.success
        by_name = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert by_name["rows_balance"].passed
        readable = by_name["files_readable"]
        assert not readable.passed and readable.severity == dg.AssetCheckSeverity.ERROR
        text = readable.metadata["rejected"].value
        assert "`2026-11-04`: AUFTRAG_3.txt, line 1, column 11: file looks UTF-8 encoded" in text
        unexpected = by_name["unexpected_files"]
        assert not unexpected.passed and unexpected.metadata["ignored"].value == ["2026-11-04/auftraege.xlsx"]
    wh = Warehouse.for_url(settings.default_warehouse_url)
    t = raw_table("erp_orders", build_defs_mappings()["erp_orders"].entity)
    # Orders 1 and 2 load; the truncated order 3 is quarantined with its ID; the UTF-8 file is rejected.
    assert sorted(wh.read_frame(sa.select(t.c.source_record_id))["source_record_id"]) == ["1", "2"]
    q = wh.read_frame(sa.select(QUARANTINE.c.file, QUARANTINE.c.source_record_id, QUARANTINE.c.reason)
                      .order_by(QUARANTINE.c.file))
    assert q["file"].tolist() == ["AUFTRAG_2.txt", "AUFTRAG_3.txt"]
    assert q["source_record_id"].iloc[0] == "3" and "truncated record" in q["reason"].iloc[0]


def build_defs_mappings():
    from crm_pipelines.core.sources.mapping import load_mappings

    return load_mappings(Settings.from_env({}).config_dir)


def test_mapping_edit_marks_only_that_source_stale_and_a_backfill_rederives_it(tmp_path, landing):
    days = ["2026-11-03", "2026-11-04"]
    for i, day in enumerate(days):
        put(landing, "web_form_leads", day, "leads.jsonl", lead(10 + i, company_name="Musterfirma GmbH") + "\n")
        put(landing, "erp_orders", day, f"AUFTRAG_{i}.txt", (erp_order(str(i)) + "\r\n").encode("cp850"))
    config = copy_config(tmp_path)
    settings = settings_for(tmp_path, landing, config=config)
    wh_url = settings.default_warehouse_url
    web, orders = dg.AssetKey(["raw", "web_form_leads"]), dg.AssetKey(["raw", "erp_orders"])
    with dg.instance_for_test() as instance:
        before = build_defs(settings)
        assert run_range(before, instance, days[0], days[-1], selection=[web, orders]).success

        mapping = config / "mappings" / "web_form_leads.yaml"
        mapping.write_text(mapping.read_text().replace(
            "company_name: {target: company_name, transforms: [trim, collapse_whitespace]}",
            "company_name: {target: company_name, transforms: [trim, collapse_whitespace, upper]}"))
        after = build_defs(settings)
        graph_before, graph_after = before.resolve_asset_graph(), after.resolve_asset_graph()
        changed = {k for k in graph_after.get_all_asset_keys()
                   if graph_after.get(k).code_version != graph_before.get(k).code_version}
        assert changed == {web}

        resolver = get_stale_status_resolver(instance, list(after.assets))
        for day in days:
            assert resolver.get_status(web, day) == StaleStatus.STALE
            causes = resolver.get_stale_causes(web, day)
            assert any("code version" in c.reason for c in causes)
            assert resolver.get_status(orders, day) == StaleStatus.FRESH

        stale = [k for k in (web, orders) if any(resolver.get_status(k, d) == StaleStatus.STALE for d in days)]
        backfill = run_range(after, instance, days[0], days[-1], selection=stale)
        assert backfill.success
        assert {e.materialization.asset_key for e in backfill.get_asset_materialization_events()} == {web}

        t = raw_table("web_form_leads", build_defs_mappings()["web_form_leads"].entity)
        names = Warehouse.for_url(wh_url).read_frame(sa.select(t.c._partition, t.c.company_name))
        assert sorted(names["company_name"]) == ["MUSTERFIRMA GMBH"] * 2
        orders_runs = {e.run_id for e in instance.fetch_materializations(orders, limit=10).records}
        assert len(orders_runs) == 1 and backfill.run_id not in orders_runs  # untouched sources were not re-run
        fresh = get_stale_status_resolver(instance, list(after.assets))
        assert all(fresh.get_status(web, d) == StaleStatus.FRESH for d in days)
