"""The crm group in Dagster: snapshot pull, payloads behind blocking GX gates, pushes into the local CRM."""

from __future__ import annotations

import shutil
from dataclasses import replace

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import CONTACT_LINEAGE, CRM_SYNC_LOG, GOLDEN_CONTACTS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines_tests.conftest import READY_PORTAL
from crm_pipelines_tests.defs.test_golden import checks_of, restore_golden, run_golden
from crm_pipelines_tests.defs.test_sources import EMAIL, materialised, run_range, settings_for

TOKEN = "dagster-test-token-91b2"
PUSHES = ("crm_push_accounts", "crm_push_contacts")


def push_crm(defs, instance, dry_run: bool = False, raise_on_error: bool = True, selection=None):
    config = {"ops": {p: {"config": {"dry_run": dry_run}} for p in PUSHES if selection is None or p in selection}}
    keys = [dg.AssetKey(p) for p in selection] if selection else None
    return defs.resolve_job_def("push_crm").execute_in_process(instance=instance, run_config=config,
                                                                raise_on_error=raise_on_error, asset_selection=keys)


def writes_by_kind(crm) -> dict[str, int]:
    """Object writes the local CRM applied (creates, updates, archivals, links), by kind."""
    return {k: v for k, v in crm.stats()["counts"].items()
            if k.endswith(("_created", "_updated", "_archived")) and k != "properties_created" or k == "associations"}


def writes(crm) -> int:
    return sum(writes_by_kind(crm).values())


def built(tmp_path, root, manifest, crm, monkeypatch):
    # push_crm pulls the CRM's changes into the landing zone first: not into the shared fixture's.
    landing = tmp_path / "landing"
    if not landing.exists():
        shutil.copytree(root, landing)
    monkeypatch.setenv("CRM_API_TOKEN", TOKEN)
    settings = replace(settings_for(tmp_path, landing), crm_url=crm.url)
    return settings, build_defs(settings)


def test_dry_run_then_push_then_nothing_left_to_send_then_a_sales_edit_comes_back(tmp_path, demo_landing,
                                                                                   monkeypatch):
    root, manifest = demo_landing
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        seeded = crm.seed_from_landing(root)
        settings, defs = built(tmp_path, root, manifest, crm, monkeypatch)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:

            dry = push_crm(defs, instance, dry_run=True)
            md = materialised(dry)
            # A dry run reads (the CRM's changes, the property definitions) and writes nothing.
            assert writes(crm) == 0
            assert md["crm_push_contacts"]["status"] == "dry_run" and md["crm_push_contacts"]["sent"] == 0
            assert md["crm_push_contacts"]["to_create"] > 0 and md["crm_push_contacts"]["to_update"] > 0

            # Two runs never push at once: both push assets share one Dagster concurrency pool.
            assert {defs.get_assets_def(dg.AssetKey(p)).op.pool for p in PUSHES} == {"crm_push"}
            result = push_crm(defs, instance)
            assert result.success and all(checks_of(result).values())
            md = materialised(result)
            contacts, companies = md["crm_push_contacts"], md["crm_push_accounts"]
            assert contacts["created"] + contacts["updated"] + contacts["invalid"] + contacts["rejected"] == \
                contacts["rows_in"]
            assert contacts["failure_rate"] <= 0.05 and companies["failure_rate"] <= 0.05
            stored = crm.objects("contacts")
            # CRM contacts are updated where they are, new people are created once: no duplicates.
            assert len(stored) == seeded["contacts"] + contacts["created"]
            ext = [o["ext_id"] for o in stored if o["ext_id"]]
            assert len(ext) == len(set(ext)) == contacts["created"] + contacts["updated"]
            assert contacts["associated"] > 0 and any(a[0] == "contacts" for a in crm.associations())
            # Neither the token nor an e-mail in clear text in the run's metadata or logs.
            blob = "\n".join(str(v) for m in md.values() for v in m.values())
            blob += "\n".join(r.user_message or "" for r in instance.all_logs(result.run_id))
            assert TOKEN not in blob
            assert [m for m in EMAIL.findall(blob) if not m.split("@")[0].endswith("***")] == []

            before = writes_by_kind(crm)
            again = materialised(push_crm(defs, instance))
            assert again["crm_push_contacts"]["sent"] == 0 and again["crm_push_accounts"]["sent"] == 0
            # Nothing changed: only reads (the CRM's changes, the property definitions), no write at all.
            assert writes_by_kind(crm) == before, (before, crm.stats()["counts"])
            assert again["crm_push_contacts"]["requests"] == 0
            # The pull before it saw our first push's writes come back: not landed as the CRM's data.
            assert again["crm_changes"]["landed"] == {"companies": 0, "contacts": 0}
            assert again["crm_changes"]["own_writes_not_landed"]["contacts"] > 100

            # Sales edits a field it owns (jobtitle) in the CRM: the edit reaches the golden record and its
            # lineage with the CRM as source, and the next push leaves it alone.
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            gid, crm_id = wh.execute_first(sa.select(g.c.golden_id, g.c.crm_contact_id).where(
                g.c.crm_contact_id.is_not(None), g.c.record_count >= 2).order_by(g.c.golden_id))
            # A minute after our push (a change within seconds of our own write would count as its echo).
            later = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            crm.edit("contacts", crm_id, at=later, jobtitle="Leiterin Qualitätssicherung")
            last_day = manifest["partitions"][-1]
            pulled = defs.resolve_job_def("pull_crm_changes").execute_in_process(
                instance=instance, run_config={"ops": {"crm_changes": {"config": {"day": last_day}}}})
            md = materialised(pulled)["crm_changes"]
            assert md["landed"]["contacts"] == 1  # the edit; our own writes came back in the push's pull above
            assert md["full_read"] == {"companies": False, "contacts": False}
            assert run_range(defs, instance, last_day, last_day, selection=[dg.AssetKey(["raw", "crm_contacts"])]).success
            assert run_golden(defs, instance).success
            assert wh.scalar(sa.select(g.c.job_title).where(g.c.golden_id == gid)) == "Leiterin Qualitätssicherung"
            lineage = wh.read_frame(sa.select(CONTACT_LINEAGE).where(CONTACT_LINEAGE.c.golden_id == gid))
            from_crm = lineage[lineage["record_key"].str.contains("crm_contacts")]
            assert any("job_title" in f.split(",") for f in from_crm["fields"])
            # The next push sends the golden record again (it changed) but leaves sales' field alone.
            assert push_crm(defs, instance).success
            assert {o["id"]: o["properties"] for o in crm.objects("contacts")}[crm_id]["jobtitle"] == \
                "Leiterin Qualitätssicherung"


def test_a_failing_gx_gate_blocks_the_push_in_that_run_and_in_later_runs(tmp_path, demo_landing, monkeypatch):
    root, manifest = demo_landing
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed_from_landing(root)
        untouched = crm.objects("contacts")
        settings, defs = built(tmp_path, root, manifest, crm, monkeypatch)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            victim = wh.scalar(sa.select(g.c.golden_id).where(g.c.country == "DE", g.c.postal_code.is_not(None)).limit(1))
            right = wh.scalar(sa.select(g.c.postal_code).where(g.c.golden_id == victim))
            # A PLZ that lost its leading zero on the way: the payload gate must stop the push.
            with wh.engine.begin() as conn:
                conn.execute(sa.update(g).where(g.c.golden_id == victim).values(postal_code="1067"))
            result = push_crm(defs, instance, raise_on_error=False)
            checks = checks_of(result)
            assert checks[("crm_contact_payload", "gx_payload")] is False
            assert checks[("crm_account_payload", "gx_payload")] is True
            assert "crm_push_contacts" not in materialised(result)
            assert "crm_push_accounts" in materialised(result)
            (evaluation,) = [c for c in result.get_asset_check_evaluations()
                             if c.asset_key.to_user_string() == "crm_contact_payload"]
            md = {k: v.value for k, v in evaluation.metadata.items()}
            assert md["unexpected_zip_column_values_to_match_regex"] == 1
            assert "expect_column_values_to_match_regex" in md["results"] and "1067" in md["results"]
            assert crm.objects("contacts") == untouched

            # A later run of the push alone is refused: the gate has not passed on the current payload.
            alone = push_crm(defs, instance, raise_on_error=False, selection=["crm_push_contacts"])
            assert not alone.success
            failure = [e for e in alone.all_events if e.event_type_value == "STEP_FAILURE"][0]
            assert "quality gates not passed" in failure.step_failure_data.error.message
            assert "crm_contact_payload:gx_payload is failed" in failure.step_failure_data.error.message
            assert crm.objects("contacts") == untouched
            log = wh.read_frame(sa.select(CRM_SYNC_LOG).where(CRM_SYNC_LOG.c.object_type == "contacts"))
            assert log.empty

            with wh.engine.begin() as conn:
                conn.execute(sa.update(g).where(g.c.golden_id == victim).values(postal_code=right))
            assert push_crm(defs, instance).success
            assert len(crm.objects("contacts")) > len(untouched)


def test_a_suppressed_person_is_left_out_and_the_gate_catches_one_that_slips_through(tmp_path, demo_landing,
                                                                                   monkeypatch):
    from crm_pipelines.core.privacy_screen.identity import IdentityHasher, load_or_create_salt
    from crm_pipelines.core.privacy_screen.suppression import SuppressionList
    from crm_pipelines.defs import crm as crm_defs

    root, manifest = demo_landing
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed_from_landing(root)
        settings, defs = built(tmp_path, root, manifest, crm, monkeypatch)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            gid, email = wh.execute_first(sa.select(g.c.golden_id, g.c.email)
                                          .where(g.c.email.is_not(None), g.c.crm_contact_id.is_(None)))
            hasher = IdentityHasher(load_or_create_salt(settings.salt_file))
            SuppressionList(wh, hasher).add({("email", hasher.email(email))}, "P-test", "erasure", "test")

            # A bug in the filter: the person reaches the payload, and the gate stops the push.
            monkeypatch.setattr(crm_defs, "drop_suppressed", lambda golden, screen: golden)
            leaked = push_crm(defs, instance, raise_on_error=False)
            assert checks_of(leaked)[("crm_contact_payload", "gx_payload")] is False
            assert "crm_push_contacts" not in materialised(leaked)
            monkeypatch.undo()
            monkeypatch.setenv("CRM_API_TOKEN", TOKEN)

            result = push_crm(defs, instance)
            assert result.success
            assert materialised(result)["crm_contact_payload"]["suppressed_left_out"] == 1
            pushed = {o["ext_id"]: o["properties"].get("email") for o in crm.objects("contacts") if o["ext_id"]}
            assert gid not in pushed and email not in pushed.values() and len(pushed) > 100


def test_pull_writes_the_crm_into_the_landing_zone_and_the_sources_load_it(tmp_path, landing, monkeypatch):
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed("companies", [{"id": str(9000 + i), "properties": {"name": f"Firma {i} GmbH", "zip": "01067",
                                                                      "city": "Dresden", "country": "Germany"}}
                               for i in range(250)])
        crm.seed("contacts", [{"id": str(100 + i), "properties": {"email": f"p{i}@firma.de", "lastname": "Weiß",
                                                                    "zip": "01067", "country": "Deutschland",
                                                                    "associatedcompanyid": "9001"}}
                              for i in range(120)])
        settings, defs = built(tmp_path, landing, None, crm, monkeypatch)
        with dg.instance_for_test() as instance:
            config = {"ops": {"crm_snapshot": {"config": {"day": "2026-11-20"}}}}
            pulled = defs.resolve_job_def("pull_crm_snapshot").execute_in_process(instance=instance, run_config=config)
            md = materialised(pulled)["crm_snapshot"]
            assert (md["companies"], md["contacts"]) == (250, 120)
            assert sorted(p.name for p in (landing / "crm_accounts" / "2026-11-20").iterdir()) == [
                "pull_00001.json", "pull_00002.json", "pull_00003.json"]
            # Pulled again the same day: replaced, not doubled.
            again = defs.resolve_job_def("pull_crm_snapshot").execute_in_process(instance=instance, run_config=config)
            assert materialised(again)["crm_snapshot"]["replaced_pages"] == 5
            assert len(list((landing / "crm_accounts" / "2026-11-20").iterdir())) == 3

            loaded = run_range(defs, instance, "2026-11-20", "2026-11-20",
                               selection=[dg.AssetKey(["raw", "crm_accounts"]), dg.AssetKey(["raw", "crm_contacts"])])
            raw = materialised(loaded)
            assert raw["raw/crm_accounts"]["rows_loaded"] == 250 and raw["raw/crm_accounts"]["rows_quarantined"] == 0
            assert raw["raw/crm_contacts"]["rows_loaded"] == 120 and raw["raw/crm_contacts"]["rows_quarantined"] == 0

