"""A portal as HubSpot keeps it: properties set up and checked, fields owned by sales, changes made in the CRM
(edits, deletes, merges) followed, contacts the CRM already has adopted. Against the local CRM server."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.crm.changes import pull_changes
from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.crm.payloads import build_payload
from crm_pipelines.core.crm.properties import PortalNotReady, setup_portal
from crm_pipelines.core.crm.sync import load_state, push
from crm_pipelines.core.platform.schema import CRM_REMOTE, CRM_SYNC_LOG
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.mapping import load_mappings
from crm_pipelines.devtools.crm_server import CrmServer, Faults
from crm_pipelines.settings import DEFAULT_CONFIG_DIR
from crm_pipelines_tests.conftest import READY_PORTAL
from crm_pipelines_tests.core.crm.test_sync import (COMPANIES, CONTACTS, SETTINGS, TOKEN, golden_accounts,
                                                    golden_contacts, hub)

MAPPINGS = load_mappings(DEFAULT_CONFIG_DIR)
# Small test sets: one refused row is a large share; the threshold is tested in test_sync.py.
LENIENT = replace(SETTINGS, failure_rate_threshold=1.0)


def writes(crm: CrmServer) -> int:
    return sum(v for k, v in crm.stats()["counts"].items()
               if k.endswith(("_created", "_updated", "_archived")) and k != "properties_created")


def pull(wh, crm, tmp_path: Path, day: str = "2026-12-01", settings=SETTINGS):
    return pull_changes(wh, hub(crm), settings, MAPPINGS, tmp_path / "landing", day, "pull")


@pytest.fixture
def crm():
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as server:
        yield server


# ---------------------------------------------------------------------------------------------- the portal


def test_setup_creates_exactly_the_missing_properties_and_is_idempotent():
    with CrmServer(token=TOKEN) as fresh:
        connector = hub(fresh)
        # Somebody created one of them by hand already, and one with the wrong type.
        connector.create_property_group("companies", "crm_pipelines", "crm_pipelines")
        assert connector.create_property("companies", {"name": "vat_id", "label": "USt-IdNr.", "type": "string",
                                                        "fieldType": "text", "groupName": "crm_pipelines"}) == "created"
        assert connector.create_property("contacts", {"name": "academic_title", "label": "Titel", "type": "number",
                                                       "fieldType": "number", "groupName": "contactinformation"}) == \
            "created"
        report = setup_portal(connector, SETTINGS)
        wanted = {f"{p.object_type}.{p.name}" for p in SETTINGS.custom_properties}
        assert set(report.created) == wanted - {"companies.vat_id", "contacts.academic_title"}
        assert set(report.existing) == {"companies.vat_id", "contacts.academic_title"}
        assert report.groups_created == ["contacts.crm_pipelines"]
        assert report.problems == ["contacts.academic_title exists with type 'number', the push needs 'string'"]
        defs = connector.properties("contacts")
        assert defs["crm_golden_id"]["hasUniqueValue"] is True
        assert [o["value"] for o in defs["crm_email_consent"]["options"]] == ["granted", "withdrawn", "objected",
                                                                              "unconfirmed"]
        created = fresh.stats()["counts"]["properties_created"]
        again = setup_portal(connector, SETTINGS)
        assert again.created == [] and again.groups_created == [] and set(again.existing) == wanted
        assert fresh.stats()["counts"]["properties_created"] == created


def test_preflight_refuses_a_portal_without_the_properties_before_any_write(sqlite_url):
    with CrmServer(token=TOKEN) as fresh:
        wh = Warehouse(sqlite_url)
        with pytest.raises(PortalNotReady, match=r"contacts\.crm_golden_id does not exist.*crm setup"):
            push(wh, hub(fresh), build_payload(golden_contacts(5), CONTACTS), CONTACTS, SETTINGS, "run-1")
        counts = fresh.stats()["counts"]
        assert writes(fresh) == 0 and counts["requests"] == 1  # the one read of the definitions
        assert fresh.emails_received == {}


def test_a_value_outside_the_portals_options_is_refused_per_row_before_sending(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    accounts = golden_accounts(4)
    accounts["industry"] = ["Maschinenbau", "Raumfahrt", "MACHINERY", None]  # German label, unknown, HubSpot value
    accounts["employee_count"] = [12, None, 40, 7]
    report = push(wh, hub(crm), build_payload(accounts, COMPANIES), COMPANIES, LENIENT, "run-1")
    assert (report.created, report.invalid) == (3, 1)
    assert crm.stats()["counts"].get("400_properties", 0) == 0  # no batch was thrown back
    state = load_state(wh, "companies").set_index("golden_id")
    assert state.at["GA-00000002", "last_status"] == "invalid"
    log = wh.read_frame(sa.select(CRM_SYNC_LOG).where(CRM_SYNC_LOG.c.golden_id == "GA-00000002"))
    assert log["message"].iloc[0] == "companies.industry: 'Raumfahrt' is not one of the portal's options"
    stored = {o["ext_id"]: o["properties"].get("industry") for o in crm.objects("companies")}
    assert stored == {"GA-00000001": "MACHINERY", "GA-00000003": "MACHINERY", "GA-00000004": None}


# ---------------------------------------------------------------------------------------------- field owners


def seeded_contacts(crm: CrmServer, stages: list[str]) -> pd.DataFrame:
    """CRM contacts sales worked on, and golden contacts that came from them (they carry the CRM ID)."""
    crm.seed("contacts", [{"id": str(500 + i), "properties": {"email": f"person{i + 1}@musterfirma{(i + 1) % 7}.de",
                                                                "lastname": "Alt", "lifecyclestage": s,
                                                                "jobtitle": "Leiter Einkauf" if i == 0 else None}}
                          for i, s in enumerate(stages)])
    golden = golden_contacts(len(stages))
    golden["crm_contact_id"] = [str(500 + i) for i in range(len(stages))]
    return golden


def test_no_push_lowers_a_lifecycle_stage_and_ours_moves_it_forward(sqlite_url, crm, tmp_path):
    wh = Warehouse(sqlite_url)
    crm_stages = ["customer", "opportunity", "salesqualifiedlead", "marketingqualifiedlead", "lead", "subscriber",
                  "other", "evangelist"]
    golden = seeded_contacts(crm, crm_stages)
    # Our funnel: mostly leads, one MQL for the contact the CRM holds as a lead, one SQL for the subscriber.
    golden["score_stage"] = [None, None, None, None, "mql", "sql", "sql", None]
    payload = build_payload(golden, CONTACTS)
    # Without a pull we do not know the CRM's stage: the stage is not sent at all.
    first = push(wh, hub(crm), payload, CONTACTS, SETTINGS, "blind")
    assert first.updated == 8 and crm.lifecycle_lowered == []
    assert [o["properties"]["lifecyclestage"] for o in crm.objects("contacts")] == crm_stages
    pull(wh, crm, tmp_path)
    golden["last_name"] = "Neu"  # a change of ours, so every contact goes out again
    second = push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "informed")
    assert second.updated == 8 and crm.lifecycle_lowered == []
    after = [o["properties"]["lifecyclestage"] for o in crm.objects("contacts")]
    assert after == ["customer", "opportunity", "salesqualifiedlead", "marketingqualifiedlead",
                     "marketingqualifiedlead", "salesqualifiedlead", "other", "evangelist"]


def test_a_crm_side_edit_of_a_crm_owned_field_survives_the_next_push(sqlite_url, crm, tmp_path):
    wh = Warehouse(sqlite_url)
    assert pull(wh, crm, tmp_path).full["contacts"]  # the first pull: the baseline, nothing landed
    contacts = golden_contacts(3)
    contacts["job_title"] = "Einkauf"
    contacts["phone"] = "+49 351 4700"
    push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-1")
    ids = {o["ext_id"]: o["id"] for o in crm.objects("contacts")}
    # A minute later, sales corrects the job title of one and clears the phone of another, in the CRM.
    later = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    crm.edit("contacts", ids["GC-00000001"], at=later, jobtitle="Leiter Strategischer Einkauf")
    crm.edit("contacts", ids["GC-00000002"], at=later, phone=None)
    pull(wh, crm, tmp_path)
    contacts["job_title"] = "Einkäufer"       # ours changes too, and so does a field the warehouse owns
    contacts["phone"] = "+49 351 4711"
    contacts["last_name"] = "Schulze"
    report = push(wh, hub(crm), build_payload(contacts, CONTACTS), CONTACTS, SETTINGS, "run-2")
    assert report.updated == 3
    stored = {o["ext_id"]: o["properties"] for o in crm.objects("contacts")}
    assert stored["GC-00000001"]["jobtitle"] == "Leiter Strategischer Einkauf"   # CRM-owned: set at creation only
    assert stored["GC-00000003"]["jobtitle"] == "Einkauf"
    assert stored["GC-00000002"]["phone"] == "+49 351 4711"                      # fill when empty: it was emptied
    assert stored["GC-00000001"]["phone"] == "+49 351 4700"                      # ... and kept where filled
    assert {p["lastname"] for p in stored.values()} == {"Schulze"}               # the warehouse's own field
    # The edit landed for the day's load of crm_contacts, only with the fields that mapping reads.
    files = sorted((tmp_path / "landing" / "crm_contacts" / "2026-12-01").glob("changes_*.json"))
    records = [r for f in files for r in json.loads(f.read_text())["results"]]
    # Only the two edits: our own writes coming back are not landed as the CRM's data.
    assert sorted(r["id"] for r in records) == sorted([ids["GC-00000001"], ids["GC-00000002"]])
    edited = [r for r in records if r["id"] == ids["GC-00000001"]][-1]
    assert edited["properties"]["jobtitle"] == "Leiter Strategischer Einkauf"
    assert "crm_golden_id" not in edited["properties"] and "hs_merged_object_ids" not in edited["properties"]
    # The mirror knows which fields the CRM has filled, never their values (only stage and company link).
    mirror = wh.read_frame(sa.select(CRM_REMOTE.c.properties).where(CRM_REMOTE.c.crm_id == ids["GC-00000001"]))
    assert "Leiter" not in mirror["properties"].iloc[0] and json.loads(mirror["properties"].iloc[0])["jobtitle"] is True


# ---------------------------------------------------------------------------------------------- merges, deletes


def test_a_crm_merge_is_followed_with_no_duplicate_and_no_request_to_the_dead_id(sqlite_url, crm, tmp_path):
    wh = Warehouse(sqlite_url)
    golden = seeded_contacts(crm, ["lead", "lead", "lead"])
    push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "run-1")
    pull(wh, crm, tmp_path)
    # Sales found a second record of person 2 (created by hand) and merged ours into it.
    crm.seed("contacts", [{"id": "900", "properties": {"email": "p2.privat@example.de", "lastname": "Müller2"}}])
    status, _ = crm.merge("contacts", "900", "501")
    assert status == 200
    report = pull(wh, crm, tmp_path, day="2026-12-02")
    assert (report.merged["contacts"], report.repointed["contacts"]) == (1, 1)
    assert load_state(wh, "contacts").set_index("golden_id").at["GC-00000002", "crm_id"] == "900"
    golden["last_name"] = "Neu"
    before = len(crm.objects("contacts"))
    again = push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "run-2")
    assert (again.updated, again.created, again.rejected) == (3, 0, 0)
    assert crm.writes_to_dead_ids == [] and len(crm.objects("contacts")) == before
    assert {o["id"]: o["ext_id"] for o in crm.objects("contacts")}["900"] == "GC-00000002"


def test_an_update_to_a_merged_away_id_without_a_pull_follows_the_survivor_in_the_same_run(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    golden = seeded_contacts(crm, ["lead", "lead"])
    crm.seed("contacts", [{"id": "900", "properties": {"email": "zweit@example.de", "lastname": "Müller2"}}])
    crm.merge("contacts", "900", "501")
    report = push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, LENIENT, "run-1")
    assert (report.updated, report.adopted, report.rejected) == (2, 1, 0)
    assert crm.writes_to_dead_ids == ["501"]  # the one refused attempt; the next run goes to 900 directly
    again = push(wh, hub(crm), build_payload(golden.assign(last_name="Neu"), CONTACTS), CONTACTS, SETTINGS, "run-2")
    assert again.updated == 2 and crm.writes_to_dead_ids == ["501"]


@pytest.mark.parametrize("policy", ["keep_deleted", "recreate_and_flag"])
def test_a_contact_sales_deleted_is_not_brought_back_unless_configured(sqlite_url, crm, tmp_path, policy):
    wh = Warehouse(sqlite_url)
    settings = replace(SETTINGS, on_crm_delete=policy)
    golden = golden_contacts(3)
    push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, settings, "run-1")
    victim = {o["ext_id"]: o["id"] for o in crm.objects("contacts")}["GC-00000002"]
    crm.delete("contacts", victim)
    report = pull(wh, crm, tmp_path, settings=settings)
    assert (report.archived["contacts"], report.marked_deleted["contacts"]) == (1, 1)
    again = push(wh, hub(crm), build_payload(golden.assign(last_name="Neu"), CONTACTS), CONTACTS, settings, "run-2")
    live = {o["ext_id"] for o in crm.objects("contacts")}
    assert crm.writes_to_dead_ids == []
    if policy == "keep_deleted":
        assert (again.updated, again.created, again.deleted_in_crm) == (2, 0, 1) and "GC-00000002" not in live
        third = push(wh, hub(crm), build_payload(golden.assign(last_name="Neuer"), CONTACTS), CONTACTS, settings, "r3")
        assert third.created == 0 and third.deleted_in_crm == 1
        # Sales restores it from the recycle bin: the next pull notices, the next push updates it again.
        crm.restore("contacts", victim)
        assert pull(wh, crm, tmp_path, settings=settings).restored["contacts"] == 1
        fourth = push(wh, hub(crm), build_payload(golden.assign(last_name="Neuer"), CONTACTS), CONTACTS, settings, "r4")
        assert (fourth.updated, fourth.created, fourth.deleted_in_crm) == (1, 0, 0)
        assert {o["id"]: o["properties"]["lastname"] for o in crm.objects("contacts")}[victim] == "Neuer"
    else:
        assert (again.updated, again.created, again.recreated) == (2, 1, 1) and "GC-00000002" in live
        log = wh.read_frame(sa.select(CRM_SYNC_LOG).where(CRM_SYNC_LOG.c.run_id == "run-2",
                                                          CRM_SYNC_LOG.c.golden_id == "GC-00000002"))
        assert "re-created after a user deleted it" in log["message"].iloc[0]


# ---------------------------------------------------------------------------------------------- adoption


@pytest.mark.parametrize("whole_batch", [False, True], ids=["207-row", "409-batch"])
def test_a_contact_the_crm_has_but_the_golden_layer_does_not_know_is_adopted_not_retried(sqlite_url, whole_batch):
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, faults=Faults(conflict_as_409=whole_batch)) as crm:
        wh = Warehouse(sqlite_url)
        # The CRM record of person 4 was quarantined at ingest: the golden contact has no CRM ID.
        crm.seed("contacts", [{"id": "4711", "properties": {"email": "person4@musterfirma4.de", "lastname": "Alt",
                                                             "jobtitle": "Einkauf"}}])
        golden = golden_contacts(30)
        report = push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "run-1")
        assert (report.created, report.adopted, report.rejected) == (29, 1, 0)
        assert crm.count("contacts") == {"objects": 30, "distinct_ext_ids": 30}
        adopted = {o["id"]: o for o in crm.objects("contacts")}["4711"]
        assert adopted["ext_id"] == "GC-00000004" and adopted["properties"]["lastname"] == "Müller4"
        assert adopted["properties"]["jobtitle"] == "Einkauf"  # sales' field stays
        assert load_state(wh, "contacts").set_index("golden_id").at["GC-00000004", "crm_id"] == "4711"
        before = writes(crm)
        again = push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "run-2")
        assert (again.unchanged, again.sent) == (30, 0) and writes(crm) == before


def test_a_crm_record_that_carries_another_golden_id_is_left_to_a_steward(sqlite_url, crm):
    wh = Warehouse(sqlite_url)
    golden = golden_contacts(2)
    push(wh, hub(crm), build_payload(golden, CONTACTS), CONTACTS, SETTINGS, "run-1")
    twin = golden_contacts(2).assign(golden_id=["GC-00000091", "GC-00000092"])  # the same people, split in golden
    report = push(wh, hub(crm), build_payload(pd.concat([golden, twin]), CONTACTS), CONTACTS, LENIENT, "run-2")
    assert (report.adopted, report.rejected, report.created) == (0, 2, 0)
    state = load_state(wh, "contacts").set_index("golden_id")
    assert state.at["GC-00000091", "last_status"] == "rejected"
    assert crm.count("contacts") == {"objects": 2, "distinct_ext_ids": 2}


# ---------------------------------------------------------------------------------------------- the pull


def test_the_incremental_pull_reads_past_the_search_cap_and_only_what_changed(sqlite_url, tmp_path):
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, search_cap=1000) as crm:
        wh = Warehouse(sqlite_url)
        crm.seed("contacts", [{"id": str(1 + i), "properties": {"email": f"k{i}@firma.de", "lastname": "Weiß"},
                               "updatedAt": f"2026-11-{10 + i // 400:02d}T08:00:00.000Z"} for i in range(2500)])
        first = pull_changes(wh, hub(crm), SETTINGS, MAPPINGS, tmp_path / "landing", "2026-12-01", "p1",
                             object_types=("contacts",))
        assert first.full["contacts"] and first.changed["contacts"] == 2500 and first.landed["contacts"] == 0
        # Everything changes again (same stamp for 400 at a time: ties across the cap's boundary).
        for i in range(2500):
            crm.db.execute("UPDATE objects SET updated_at = ? WHERE id = ?",
                           (f"2026-12-{1 + i // 400:02d}T09:00:00.000Z", i + 1))
        connector = HubSpotConnector.create(crm.url, TOKEN, timeout=5, backoff_base=0.001)
        connector.search_cap = 1000
        second = pull_changes(wh, connector, SETTINGS, MAPPINGS, tmp_path / "landing", "2026-12-07", "p2",
                              object_types=("contacts",))
        assert not second.full["contacts"] and second.changed["contacts"] == 2500 and second.landed["contacts"] == 2500
        assert crm.stats()["counts"].get("429_search", 0) == 0  # the search's own 5/s limit was kept
        third = pull_changes(wh, connector, SETTINGS, MAPPINGS, tmp_path / "landing", "2026-12-07", "p3",
                             object_types=("contacts",))
        assert third.landed["contacts"] == 0  # the overlap re-reads the newest, nothing is landed twice
