"""The Dagster instance on PostgreSQL (dagster.postgres.yaml), and the `make demo` runner (its runs keep every e-mail
address masked in logs and metadata)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from crm_pipelines.definitions import build_defs
from crm_pipelines.demo.generator import GeneratorConfig
from crm_pipelines.demo.runner import run_demo
from crm_pipelines.settings import Settings
from crm_pipelines_tests.conftest import put
from crm_pipelines_tests.core.sources.test_ingest import lead
from crm_pipelines_tests.defs.test_privacy import clear_emails_in_history

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
def test_materialise_with_a_postgres_backed_instance(postgres_server, postgres_url, tmp_path, landing, monkeypatch):
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_server.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    for var, value in {"DAGSTER_PG_HOST": postgres_server.host, "DAGSTER_PG_PORT": str(postgres_server.port),
                       "DAGSTER_PG_USERNAME": postgres_server.username,
                       "DAGSTER_PG_PASSWORD": postgres_server.password or "", "DAGSTER_PG_DB": name}.items():
        monkeypatch.setenv(var, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.postgres.yaml", home / "dagster.yaml")
    put(landing, "web_form_leads", "2026-11-03", "leads.jsonl", lead(1) + "\n" + lead(2) + "\n")
    settings = Settings(config_dir=Settings.from_env({}).config_dir, landing_dir=landing, data_dir=tmp_path / "data",
                        warehouse_url=postgres_url, partition_start="2026-01-01")
    monkeypatch.setenv("CRM_WAREHOUSE_URL", postgres_url)
    defs = build_defs(settings)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = defs.resolve_job_def("ingest_sources").execute_in_process(
            instance=instance, partition_key="2026-11-03", asset_selection=[dg.AssetKey(["raw", "web_form_leads"])])
        assert result.success
        engine = sa.create_engine(postgres_server.set(drivername="postgresql+psycopg2", database=name))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM runs WHERE run_id = :r"), {"r": result.run_id}).scalar() == 1
            events = conn.execute(sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r AND dagster_event_type = "
                                          "'ASSET_MATERIALIZATION'"), {"r": result.run_id}).scalar()
            assert events == 1
        engine.dispose()
        latest = instance.get_latest_materialization_event(dg.AssetKey(["raw", "web_form_leads"]))
        assert latest.asset_materialization.metadata["rows_loaded"].value == 2
    finally:
        instance.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_demo_runner_generates_materialises_and_summarises(tmp_path, capsys):
    settings = Settings(config_dir=Settings.from_env({}).config_dir, landing_dir=tmp_path / "landing",
                        data_dir=tmp_path / "data", warehouse_url=None, partition_start="2026-01-01")
    cfg = GeneratorConfig(contacts=300, seed=3, days=2)
    with dg.instance_for_test() as instance:
        assert run_demo(cfg, settings=settings, instance=instance, progress=lambda m: None) == 0
        out = capsys.readouterr().out
        for source in ("web_form_leads", "trade_fair_leads", "erp_customers", "crm_contacts", "erasure_requests"):
            assert f"raw/{source}" in out
        for asset in ("golden/contacts", "golden/accounts", "golden/crosswalk", "golden/review_queue",
                      "crm_push_accounts", "crm_push_contacts"):
            assert asset in out
        assert "All runs succeeded" in out
        # No clear e-mail address in any run's logs or metadata.
        clear = clear_emails_in_history(instance)
        assert clear == [], clear[:5]
        jobs = {r.dagster_run.job_name for r in instance.get_run_records()}
        assert jobs == {"ingest_sources", "handle_erasure_requests", "build_golden", "setup_crm_portal", "push_crm", "score_leads",
                        "reactivation", "build_print_lists", "fast_lead_path", "activation_nightly",
                        "apply_consent_changes", "activation_realtime", "approve_print_template", "print_single_jobs",
                        "release_print_list", "report_closed_loop"}
        for asset in ("reporting/deals", "reporting/revenue", "reporting/touchpoints", "reporting/funnel",
                      "reporting/attribution", "reporting/campaign_economics"):
            assert asset in out
        assert "print/herbst-bayern" in out and "print/broschuere" in out
        # The hot leads' brochures went to the outbox one person per file under the approved template.
        brochures = sorted((settings.data_dir / "print" / "outbox").glob("broschuere_*.csv"))
        assert brochures and all(len(f.read_text(encoding="utf-8").splitlines()) == 2 for f in brochures)
        # The journeys ran against the local marketing tool and its webhooks came back.
        for asset in ("activation/segment_membership", "activation/brevo_lists", "activation/journeys"):
            assert asset in out
        # A second run reuses the landing zone and replaces the partitions: nothing doubles, and the
        # people the first run erased stay out (the same files now load fewer rows).
        def totals(text: str) -> tuple[int, int]:
            line = next(line for line in text.splitlines() if line.startswith("total"))
            rows, quarantined = line.split()[1:3]
            return int(rows.replace(",", "")), int(quarantined.replace(",", ""))

        first = totals(out)
        assert run_demo(cfg, settings=settings, instance=instance, progress=lambda m: None) == 0
        again = totals(capsys.readouterr().out)
        assert again[1] == first[1] and 0 < first[0] - again[0] < 0.02 * first[0]
