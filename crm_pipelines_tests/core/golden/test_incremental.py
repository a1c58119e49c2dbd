"""The fast path's match of newly landed leads: the nightly rules (e-mail; phone and family name; names and
company, with typos), a shared mailbox no link, an unknown person none."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from crm_pipelines.core.golden.incremental import match_new_persons
from crm_pipelines.core.golden.matching.settings import load_matching_config
from crm_pipelines.core.golden.records import person_records
from crm_pipelines.core.platform.schema import PERSON_CROSSWALK, PERSON_RECORDS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

SPEC = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml").persons


def raw(rows: list[dict]) -> pd.DataFrame:
    base = {"salutation": None, "academic_title": None, "phone": None, "mobile": None, "job_title": None,
            "street": None, "house_number": None, "postal_code": None, "city": None, "country": "DE",
            "crm_contact_id": None, "crm_company_id": None, "erp_customer_number": None, "company_name": None,
            "created_at": datetime(2026, 11, 1, tzinfo=timezone.utc), "_partition": "2026-11-01",
            "_file": "f.jsonl", "_line": None}
    return pd.DataFrame([{**base, "_record_no": i + 1, **r} for i, r in enumerate(rows)])


def test_new_leads_are_recognised_by_phone_names_and_company_not_by_a_shared_mailbox(sqlite_url):
    wh = Warehouse(sqlite_url)
    known = person_records({"web_form_leads": raw([
        {"source_record_id": "1", "first_name": "Jörg", "last_name": "Müller", "email": "j.mueller@musterfirma.de",
         "phone": "0351 4711-23", "company_name": "Musterfirma GmbH"},
        {"source_record_id": "2", "first_name": "Sabine", "last_name": "Meyer", "email": "s.meyer@hydraulik-sachsen.de",
         "company_name": "Hydraulik Sachsen GmbH & Co. KG", "postal_code": "01067"},
        {"source_record_id": "3", "first_name": "Anna", "last_name": "Schulz", "email": "info@kleinbetrieb.de",
         "company_name": "Kleinbetrieb e.K."},
    ])})
    wh.ensure_tables([PERSON_RECORDS, PERSON_CROSSWALK])
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, PERSON_RECORDS, known)
        wh.bulk_insert(conn, PERSON_CROSSWALK, pd.DataFrame({
            "record_key": known["record_key"], "source": "web_form_leads", "source_record_id": known["source_record_id"],
            "golden_id": "GC-" + known["source_record_id"], "valid_from": datetime(2026, 11, 2, tzinfo=timezone.utc), "run_id": "r"}))
    landed = person_records({"trade_fair_leads": raw([
        # A returning prospect with a new address: the same phone, the same family name.
        {"source_record_id": "T1", "first_name": "Jörg", "last_name": "Mueller", "email": "joerg.mueller@gmx.de",
         "phone": "+49 351 471123"},
        # A typo in the family name, a new address, the same company.
        {"source_record_id": "T2", "first_name": "Sabine", "last_name": "Meier", "email": "sabine@meier-privat.de",
         "company_name": "Hydraulik Sachsen GmbH"},
        # Someone else at the shared info@ mailbox.
        {"source_record_id": "T3", "first_name": "Peter", "last_name": "Klein", "email": "info@kleinbetrieb.de",
         "company_name": "Kleinbetrieb e.K."},
        # Nobody we know.
        {"source_record_id": "T4", "first_name": "Lena", "last_name": "Vogt", "email": "l.vogt@neu.de"},
        # The same address.
        {"source_record_id": "T5", "first_name": "J.", "last_name": "Müller", "email": "J.Mueller@Musterfirma.de"},
    ])})
    found = match_new_persons(wh, landed, SPEC).set_index("record_key")
    assert found.loc["trade_fair_leads:T1", "golden_id"] == "GC-1"
    assert found.loc["trade_fair_leads:T2", "golden_id"] == "GC-2"
    assert found.loc["trade_fair_leads:T5", "golden_id"] == "GC-1" and found.loc["trade_fair_leads:T5", "rule"] == "email"
    assert "trade_fair_leads:T3" not in found.index and "trade_fair_leads:T4" not in found.index
