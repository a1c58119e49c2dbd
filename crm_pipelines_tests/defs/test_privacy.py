"""The privacy group in Dagster: the zombie scenario end to end, the sensor, the jobs; the check for clear e-mails in
logs, applied to a full demo run in test_instance_and_demo."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.model import ENTITIES
from crm_pipelines.core.platform import audit
from crm_pipelines.core.platform.schema import (CONSENT_EVENTS, GOLDEN_CONTACTS, PERSON_RECORDS, QUARANTINE, metadata,
                                                raw_table)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs.resources import LandingZoneResource
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines_tests.conftest import READY_PORTAL
from crm_pipelines_tests.defs.test_crm import TOKEN, push_crm
from crm_pipelines_tests.defs.test_golden import restore_golden, run_golden
from crm_pipelines_tests.defs.test_sources import EMAIL, run_range, settings_for

NEW_DAY = "2026-11-20"


def _sensor_runs(defs, instance, landing, cursor=None):
    sensor = defs.resolve_sensor_def("erasure_requests")
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"landing": LandingZoneResource(root=str(landing))})
    result = sensor.evaluate_tick(context)
    return result.run_requests, result.cursor


def _holds(wh: Warehouse, email: str) -> list[str]:
    """Every warehouse table whose text mentions the address."""
    out = []
    with wh.engine.connect() as conn:
        for table in metadata.tables.values():
            if not sa.inspect(conn).has_table(table.name, schema=table.schema):
                continue
            cols = [c for c in table.c if isinstance(c.type, sa.Text)]
            if cols and conn.execute(sa.select(sa.func.count()).select_from(table).where(
                    sa.or_(*[sa.func.lower(c).contains(email) for c in cols]))).scalar():
                out.append(table.fullname)
    return out


def test_a_person_deleted_in_the_crm_never_comes_back(tmp_path, demo_landing, monkeypatch):
    src, manifest = demo_landing
    landing = tmp_path / "landing"
    shutil.copytree(src, landing)
    days = manifest["partitions"]
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed_from_landing(landing)
        monkeypatch.setenv("CRM_API_TOKEN", TOKEN)
        settings = replace(settings_for(tmp_path, landing), crm_url=crm.url)
        defs = build_defs(settings)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            assert push_crm(defs, instance).success
            wh = Warehouse.for_url(settings.default_warehouse_url)
            # Someone the CRM knows who also filled in a web form: their records are in several sources.
            pr = PERSON_RECORDS
            web = wh.read_frame(sa.select(pr.c.email_norm).where(pr.c.source == "web_form_leads",
                                                                 pr.c.email_norm.is_not(None)))
            crm_people = wh.read_frame(sa.select(pr.c.email_norm, pr.c.crm_contact_id)
                                       .where(pr.c.source == "crm_contacts", pr.c.email_norm.in_(web["email_norm"])))
            email, crm_id = crm_people.iloc[0]["email_norm"], crm_people.iloc[0]["crm_contact_id"]
            # Who they are besides the address: name, company and phone of their web form.
            me = wh.read_frame(sa.select(pr.c.first_name, pr.c.last_name, pr.c.company_name, pr.c.phone)
                               .where(pr.c.source == "web_form_leads", pr.c.email_norm == email)).iloc[0]
            web_file = next(p for p in sorted((landing / "web_form_leads").rglob("*.jsonl")) if email in p.read_text())
            assert crm.count("contacts")["objects"] > 0

            # 1. Deleted in the CRM; its privacy webhook drops the request into the landing zone.
            requests_ = __import__("requests")
            assert requests_.post(f"{crm.url}/crm/v3/objects/contacts/gdpr-delete", json={"objectId": crm_id},
                                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 204
            folder = landing / "erasure_requests" / NEW_DAY
            folder.mkdir(parents=True)
            (folder / "webhook_20261120.jsonl").write_text(json.dumps({
                "eventId": 990001, "subscriptionType": "contact.privacyDeletion", "occurredAt": 1795600000000,
                "objectId": int(crm_id), "email": email, "changeSource": "CRM_UI", "portalId": 4711,
                "attemptNumber": 0}) + "\n", encoding="utf-8")

            # 2. The sensor sees it (and only what it has not seen), the erasure runs.
            requests_for, cursor = _sensor_runs(defs, instance, landing)
            mine = [r for r in requests_for if NEW_DAY in r.run_key]
            assert len(mine) == 1
            for req in requests_for:
                job = defs.resolve_job_def("handle_erasure_requests")
                result = job.execute_in_process(instance=instance, run_config=req.run_config, tags=req.tags)
                assert result.success
            again, _ = _sensor_runs(defs, instance, landing, cursor)
            assert again == []
            assert _holds(wh, email) == []
            # The handled request file is gone, and so is every landing line that named the person.
            assert not (folder / "webhook_20261120.jsonl").exists()
            assert not [p for p in landing.rglob("*") if p.is_file() and email.encode() in p.read_bytes().lower()]
            assert crm.stats()["counts"]["gdpr_deleted"] >= 1

            # 3. Later: a backfill of every old day (old ERP export, the CRM snapshot from before the
            #    deletion, the old web forms), a replayed web-form file, the nightly golden build, a push.
            before = crm.emails_received[email]
            replay = landing / "web_form_leads" / NEW_DAY
            replay.mkdir(parents=True)
            shutil.copy(web_file, replay / "leads_replayed.jsonl")
            # ... and the same person under other identities: no e-mail (name, company, phone), an
            # invisible character in front of the address; beside them a namesake at another company.
            (replay / "leads_other_identities.jsonl").write_text("\n".join(json.dumps(
                {"lead_id": f"WF-Z{i}", "submitted_at": f"{NEW_DAY}T09:00:00Z", "form": "kontakt",
                 "first_name": me["first_name"], "last_name": me["last_name"], "country": "DE",
                 "newsletter_opt_in": False, **extra}, ensure_ascii=False) for i, extra in enumerate([
                    {"company_name": me["company_name"], "phone": me["phone"]},
                    {"company_name": me["company_name"], "email": "\u200b" + email.upper()},
                    {"company_name": "Ganz Andere Namensvetter AG", "email": "namensvetter@andere-ag.de",
                     "phone": "+49 89 5550123"}])) + "\n", encoding="utf-8")
            assert run_range(defs, instance, days[0], NEW_DAY).success
            assert run_golden(defs, instance).success
            assert push_crm(defs, instance).success

            assert _holds(wh, email) == []
            g = GOLDEN_CONTACTS
            assert wh.scalar(sa.select(sa.func.count()).select_from(g).where(g.c.crm_contact_id == crm_id)) == 0
            assert crm.emails_received[email] == before, "the person reached the CRM's door again"
            assert all(o["properties"].get("email") != email for o in crm.objects("contacts"))
            # Not under the other identities either; the namesake is a contact of their own, in the CRM too.
            golden = wh.read_frame(sa.select(g.c.first_name, g.c.last_name, g.c.company_name, g.c.email))
            same_name = golden[(golden["first_name"] == me["first_name"]) & (golden["last_name"] == me["last_name"])]
            assert same_name["company_name"].tolist() == ["Ganz Andere Namensvetter AG"]
            pushed = [o["properties"] for o in crm.objects("contacts")
                      if o["properties"].get("lastname") == me["last_name"]
                      and o["properties"].get("firstname") == me["first_name"]]
            assert [p.get("email") for p in pushed] == ["namensvetter@andere-ag.de"]
            loaded = instance.get_latest_materialization_event(dg.AssetKey(["raw", "web_form_leads"]))
            assert loaded is not None
            assert audit.verify(wh).ok
            actions = wh.read_frame(sa.select(audit.AUDIT_LOG.c.action))["action"].tolist()
            assert "erasure.completed" in actions and "ingest.loaded" in actions and "crm.push.contacts" in actions


def test_erase_and_export_jobs_from_the_launchpad(tmp_path, demo_landing, monkeypatch):
    src, manifest = demo_landing
    root = tmp_path / "landing"  # an erasure rewrites landing files: not the shared fixture's
    shutil.copytree(src, root)
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm:
        crm.seed_from_landing(root)
        monkeypatch.setenv("CRM_API_TOKEN", TOKEN)
        settings = replace(settings_for(tmp_path, root), crm_url=crm.url)
        defs = build_defs(settings)
        with dg.instance_for_test(temp_dir=restore_golden(tmp_path, demo_landing)) as instance:
            wh = Warehouse.for_url(settings.default_warehouse_url)
            g = GOLDEN_CONTACTS
            email = wh.scalar(sa.select(g.c.email).where(g.c.email.is_not(None), g.c.record_count >= 2).limit(1))
            out = tmp_path / "export.json"
            exported = defs.resolve_job_def("export_person").execute_in_process(
                instance=instance, run_config={"ops": {"export_one": {"config": {"email": email, "out": str(out)}}}})
            assert exported.success
            doc = json.loads(out.read_text(encoding="utf-8"))
            assert doc["identifiers"]["emails"][0] == email and "golden.contacts" in doc["data"]
            assert oct(out.stat().st_mode)[-3:] == "600"
            erased = defs.resolve_job_def("erase_person").execute_in_process(
                instance=instance, run_config={"ops": {"erase_one": {"config": {"email": email}}}})
            assert erased.success
            assert _holds(wh, email) == []
            verified = defs.resolve_job_def("verify_audit_trail").execute_in_process(instance=instance)
            assert verified.success
            # The run's own metadata and logs never show the address.
            blob = "\n".join(r.user_message or "" for r in instance.all_logs(erased.run_id))
            blob += json.dumps([{k: str(v.value) for k, v in e.step_output_data.metadata.items()}
                                for e in erased.all_events if e.is_successful_output])
            assert email not in blob


def test_the_consent_ledger_feeds_the_golden_contacts(tmp_path, demo_landing):
    root, manifest = demo_landing
    defs = build_defs(settings_for(tmp_path, root))
    with dg.instance_for_test() as instance:
        run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        result = run_golden(defs, instance)
        assert result.success
        mats = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "staging/consent_events" in mats
        wh = Warehouse.for_url(settings_for(tmp_path, root).default_warehouse_url)
        events = wh.read_frame(sa.select(CONSENT_EVENTS))
        assert len(events) > 0 and events["person_record_key"].notna().mean() > 0.5
        assert "email" not in events.columns
        g = GOLDEN_CONTACTS
        verdicts = wh.read_frame(sa.select(g.c.email_consent, g.c.post_consent, g.c.phone_consent))
        assert set(verdicts["email_consent"].dropna()) <= {"granted", "withdrawn", "objected", "unconfirmed"}
        assert verdicts["email_consent"].notna().sum() > 0 and verdicts["post_consent"].notna().sum() > 0


def clear_emails_in_history(instance) -> list[str]:
    """Clear e-mail addresses in any run's log messages or metadata (masked ones end in ``***`` before the @).
    The demo test (test_instance_and_demo) applies it to a full demo run, so that run is made once."""
    runs = instance.get_run_records()
    texts = []
    for record in runs:
        for entry in instance.all_logs(record.dagster_run.run_id):
            texts.append(entry.user_message or "")
            event = entry.dagster_event
            if event is None:
                continue
            data = event.event_specific_data
            for attr in ("materialization", "asset_materialization"):
                mat = getattr(data, attr, None)
                if mat is not None:
                    texts += [str(v.value) for v in mat.metadata.values()]
            if hasattr(data, "metadata") and isinstance(getattr(data, "metadata"), dict):
                texts += [str(v.value) if hasattr(v, "value") else str(v) for v in data.metadata.values()]
    blob = "\n".join(texts)
    assert len(blob) > 10_000
    return [m for m in EMAIL.findall(blob) if not m.split("@")[0].endswith("***")]


def test_quarantine_never_keeps_an_erased_persons_record(tmp_path, demo_landing, monkeypatch):
    """A malformed record of the person in a later delivery: counted, not quarantined with its text."""
    root, manifest = demo_landing
    landing = tmp_path / "landing"
    shutil.copytree(root, landing)
    defs = build_defs(settings_for(tmp_path, landing))
    with dg.instance_for_test() as instance:
        run_range(defs, instance, manifest["partitions"][0], manifest["partitions"][-1])
        wh = Warehouse.for_url(settings_for(tmp_path, landing).default_warehouse_url)
        t = raw_table("web_form_leads", ENTITIES["contact"])
        email = wh.scalar(sa.select(t.c.email).where(t.c.email.is_not(None)).limit(1))
        assert defs.resolve_job_def("erase_person").execute_in_process(
            instance=instance, run_config={"ops": {"erase_one": {"config": {"email": email}}}}).success
        folder = landing / "web_form_leads" / NEW_DAY
        folder.mkdir(parents=True)
        (folder / "late.jsonl").write_text(json.dumps({"lead_id": "WF-LATE", "submitted_at": "kaputt",
                                                       "email": email}) + "\n", encoding="utf-8")
        result = run_range(defs, instance, NEW_DAY, NEW_DAY, selection=[dg.AssetKey(["raw", "web_form_leads"])])
        md = {k: v.value for e in result.get_asset_materialization_events() for k, v in e.materialization.metadata.items()}
        assert (md["rows_read"], md["rows_loaded"], md["rows_quarantined"], md["rows_suppressed"]) == (1, 0, 0, 1)
        q = wh.read_frame(sa.select(QUARANTINE.c.raw_payload).where(QUARANTINE.c.partition == NEW_DAY))
        assert q.empty
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["rows_balance"] is True
