"""The golden group in Dagster: materialisation after the sources, blocking checks, enrichment, metadata masked."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from dataclasses import replace

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import MATCH_RUNS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.devtools.register_server import Faults, RegisterServer
from crm_pipelines_tests.defs.test_sources import EMAIL, materialised, run_range, settings_for


def run_golden(defs, instance, raise_on_error=True):
    return defs.resolve_job_def("build_golden").execute_in_process(instance=instance, raise_on_error=raise_on_error)


def load_and_match(defs, instance, manifest) -> None:
    """Every landed day ingested, then the golden layer built: where most tests of later layers start."""
    run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
    assert run_golden(defs, instance).success


def restore_golden(tmp_path, demo_landing) -> str:
    """The state after :func:`load_and_match` with the default configuration, copied into ``tmp_path``: the data
    folder (warehouse, salt) into ``data/`` and the Dagster instance's history (runs, materialisations, passed
    checks) into ``home/``; returns the instance folder for ``instance_for_test(temp_dir=...)``. Built once per
    pytest worker and landing zone, then copied: the tests share the set-up, never the data. The warehouse names
    landing files relative to the landing zone, so a test may use a copy of the landing zone with it."""
    root, manifest = demo_landing
    template = root.parent / f"golden-world-{root.name}"
    if not (template / "built").exists():
        shutil.rmtree(template, ignore_errors=True)
        (template / "home").mkdir(parents=True)
        settings = settings_for(template, root)
        with dg.instance_for_test(temp_dir=str(template / "home")) as instance:
            load_and_match(build_defs(settings), instance, manifest)
        Warehouse.dispose_all()   # closes the SQLite files, so the copies are complete
        (template / "built").touch()
    shutil.copytree(template / "data", tmp_path / "data")
    shutil.copytree(template / "home", tmp_path / "home")
    return str(tmp_path / "home")


@contextmanager
def golden_world(tmp_path, demo_landing):
    """Settings, definitions and a test instance with every demo day ingested and the golden layer built, on a copy
    of the landing zone: the tests write into it (webhooks land files, erasures rewrite them), and the demo landing
    zone is shared by every test of the worker."""
    root, _ = demo_landing
    home = restore_golden(tmp_path, demo_landing)
    shutil.copytree(root, tmp_path / "landing")
    settings = settings_for(tmp_path, tmp_path / "landing")
    defs = build_defs(settings)
    with dg.instance_for_test(temp_dir=home) as instance:
        yield settings, defs, instance


def checks_of(result) -> dict[tuple[str, str], bool]:
    return {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}


def test_golden_group_after_the_sources(tmp_path, demo_landing):
    root, manifest = demo_landing
    settings = settings_for(tmp_path, root)
    with RegisterServer.from_file(root / "_register" / "companies.jsonl") as register:
        defs = build_defs(replace(settings, register_url=register.url, register_calls_per_hour=10_000))
        with dg.instance_for_test() as instance:
            assert run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1]).success
            result = run_golden(defs, instance)
            assert result.success
            mats = materialised(result)
            assert set(mats) == {"staging/person_records", "staging/account_records", "staging/register_enrichment",
                                 "staging/consent_events",
                                 "golden/accounts", "golden/contact_matches", "golden/contacts", "golden/crosswalk",
                                 "golden/review_queue"}
            assert all(checks_of(result).values()), checks_of(result)
            # The matching is a step of its own (beside the accounts); golden/contacts writes what it resolved.
            matched = mats["golden/contact_matches"]
            assert matched["dagster/row_count"] == mats["staging/person_records"]["dagster/row_count"]
            assert matched["clusters"] == mats["golden/contacts"]["dagster/row_count"]
            assert matched["match_rate"] == mats["golden/contacts"]["match_rate"] > 0
            assert mats["staging/register_enrichment"]["found"] > 0
            contacts = mats["golden/contacts"]
            assert contacts["dagster/row_count"] < mats["staging/person_records"]["dagster/row_count"]
            assert contacts["candidate_pairs"] < contacts["possible_pairs"] / 100
            assert "first_name" in contacts["model_weights"] and contacts["explanations_masked"]
            assert 0 < contacts["linked_to_account"] <= contacts["dagster/row_count"]
            assert contacts["account_links_changed"] == contacts["linked_to_account"]  # a first night
            # No e-mail address in clear anywhere in the run's metadata or logs.
            blob = "\n".join(str(v) for m in mats.values() for v in m.values())
            blob += "\n".join(r.user_message or "" for r in instance.all_logs(result.run_id))
            assert [m for m in EMAIL.findall(blob) if not m.split("@")[0].endswith("***")] == []

            # A second run keeps every ID: the match rate does not move, nothing in the crosswalk changes.
            again = run_golden(defs, instance)
            mats2 = materialised(again)
            assert mats2["golden/contacts"]["crosswalk_changes"] == 0
            assert mats2["golden/contacts"]["account_links_changed"] == 0
            assert mats2["golden/contacts"]["match_rate"] == contacts["match_rate"]


def test_golden_contacts_are_written_beside_the_golden_accounts(tmp_path, demo_landing):
    """golden/contacts is two steps: its write waits for the matching and the consent ledger, not for the golden
    accounts (so that at 10 million contacts the two long chains run side by side); only the account link waits."""
    from dagster._core.execution.api import create_execution_plan  # the steps the executors schedule

    defs = build_defs(settings_for(tmp_path, demo_landing[0]))
    plan = create_execution_plan(defs.resolve_job_def("build_golden"))
    upstream = plan.get_all_step_deps()
    assert upstream["golden__contacts.write_golden_contacts"] == {
        "golden__contact_matches", "staging__person_records.person_records_report", "staging__consent_events"}
    assert {"golden__contacts.write_golden_contacts", "golden__accounts",
            "golden__accounts_gx_golden_accounts"} <= upstream["golden__contacts.link_contacts_to_accounts"]
    # What reads golden/contacts waits for the link (the asset's materialisation).
    for reader in ("golden__crosswalk", "golden__review_queue", "golden__contacts_gx_golden_contacts"):
        assert "golden__contacts.link_contacts_to_accounts" in upstream[reader]


def test_record_steps_work_in_slices_of_crm_slice_records(tmp_path, demo_landing):
    root, manifest = demo_landing
    settings = replace(settings_for(tmp_path, root), slice_records=40)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        assert run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1]).success
        mats = materialised(defs.resolve_job_def("build_golden").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["staging", "person_records"]),
                                                dg.AssetKey(["staging", "account_records"])]))
    wh = Warehouse.for_url(settings.default_warehouse_url)
    persons, accounts = mats["staging/person_records"], mats["staging/account_records"]
    stored = {t: int(wh.scalar(f"SELECT count(*) FROM staging.{t}")) for t in ("person_records", "account_records")}
    # 600 contacts' sources in slices of 40 record IDs: many slices, every record written once.
    assert persons["slices"] > 10 and accounts["slices"] > 10
    assert (persons["dagster/row_count"], accounts["dagster/row_count"]) == (stored["person_records"],
                                                                           stored["account_records"])


def test_settings_read_crm_slice_records():
    from crm_pipelines.settings import Settings

    assert Settings.from_env({}).slice_records == 500_000
    assert Settings.from_env({"CRM_SLICE_RECORDS": "250_000"}).slice_records == 250_000
    for bad in ("0", "-5", "many"):
        with pytest.raises(ValueError, match="CRM_SLICE_RECORDS"):
            Settings.from_env({"CRM_SLICE_RECORDS": bad})


def test_match_rate_jump_fails_the_blocking_check(tmp_path, demo_landing):
    with golden_world(tmp_path, demo_landing) as (settings, defs, instance):
        # The last run, as if a broken mapping had made everyone look unique.
        wh = Warehouse.for_url(settings.default_warehouse_url)
        with wh.engine.begin() as conn:
            conn.execute(sa.update(MATCH_RUNS).values(match_rate=0.0))
        result = run_golden(defs, instance, raise_on_error=False)
        checks = checks_of(result)
        assert checks[("golden/accounts", "match_rate_stable")] is False
        # Blocking: what depends on the golden accounts does not run in the same run.
        materialised = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "golden/accounts" in materialised
        assert not {"golden/contacts", "golden/crosswalk", "golden/review_queue"} & materialised
        # The contacts' own check fails too when only they run.
        result = defs.resolve_job_def("build_golden").execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(["golden", "contacts"])])
        assert checks_of(result)[("golden/contacts", "match_rate_stable")] is False
        # It stays flagged on the next run (compared with the last accepted run) until accepted.
        assert checks_of(run_golden(defs, instance, raise_on_error=False))[("golden/accounts", "match_rate_stable")] is False
        from crm_pipelines.core.golden.build import accept_match_rate

        accept_match_rate(wh, "accounts")
        accept_match_rate(wh, "persons")
        assert all(checks_of(run_golden(defs, instance)).values())


def test_register_outage_does_not_fail_the_run(tmp_path, demo_landing):
    root, manifest = demo_landing
    with RegisterServer.from_file(root / "_register" / "companies.jsonl", faults=Faults(fail_next=10_000)) as register:
        defs = build_defs(replace(settings_for(tmp_path, root), register_url=register.url))
        with dg.instance_for_test() as instance:
            run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
            result = defs.resolve_job_def("build_golden").execute_in_process(instance=instance)
            assert result.success
            (mat,) = [e for e in result.get_asset_materialization_events()
                      if e.materialization.asset_key.to_user_string() == "staging/register_enrichment"]
            md = {k: v.value for k, v in mat.materialization.metadata.items()}
            assert md["queried"] == 0 and md["not_enriched_register_down"] > 0
            assert re.search("unavailable", md["outage"])


def test_unique_email_check_catches_a_shared_address(tmp_path, demo_landing):
    from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS

    root, manifest = demo_landing
    settings = settings_for(tmp_path, root)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        run_golden(defs, instance)
        wh = Warehouse.for_url(settings.default_warehouse_url)
        golden = wh.read_frame(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.email)
                               .where(GOLDEN_CONTACTS.c.email.is_not(None)).limit(2))
        # What the check reads is the table the asset wrote; corrupt it as a broken uniqueness step would.
        from crm_pipelines.core.golden import build as golden_build

        def broken(conn):
            conn.execute(sa.update(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id == golden["golden_id"].iloc[1])
                         .values(email=golden["email"].iloc[0]))

        original = golden_build._one_contact_per_email
        golden_build._one_contact_per_email = broken
        try:
            result = defs.resolve_job_def("build_golden").execute_in_process(
                instance=instance, raise_on_error=False, asset_selection=[dg.AssetKey(["golden", "contacts"])])
        finally:
            golden_build._one_contact_per_email = original
        assert checks_of(result)[("golden/contacts", "unique_email")] is False
        assert pd.notna(golden["email"].iloc[0])
