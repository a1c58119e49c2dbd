"""An erased person stays erased under every identity.

Frau Anna Römer of Beispiel GmbH is erased by e-mail before any golden build. Afterwards every
way she could come back is delivered: a web form without e-mail (name, company, phone), an
e-mail with an invisible character in front, a trade-fair scan with a decomposed umlaut, another
phone notation and the long legal form, an old ERP line naming her as Ansprechpartner, a
quarantined line with her name and phone, a colleague's ticket whose text names her, a CRM
contact record with her old ID. None of it is stored; her namesake at another company is.
"""

from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_pipelines.core.golden.build import resolve_contacts
from crm_pipelines.core.golden.staging import build_person_records
from crm_pipelines.core.platform.schema import (GOLDEN_CONTACTS, PERSON_RECORDS, QUARANTINE, SUPPRESSION, metadata,
                                                raw_table)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.release import ERASURE_COPIES
from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy_screen.identity import IdentityHasher
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.core.sources.ingest import ingest_partition
from crm_pipelines_tests.conftest import put
from crm_pipelines_tests.core.sources.test_malformed_deliveries import erp_customer
from crm_pipelines_tests.core.sources.test_readers import TRADE_FAIR_HEADER, TRADE_FAIR_ROW


HASHER = IdentityHasher("zombie-test-salt-0123456789")
DAY1, DAY2 = "2026-11-02", "2026-11-10"
EMAIL = "anna.roemer@beispiel-gmbh.de"


def web(n: int, email: str | None = EMAIL, first="Anna", last="Römer", company="Beispiel GmbH",
        phone="0351 4711-23", **over) -> str:
    rec = {"lead_id": f"WF-{n}", "submitted_at": "2026-11-02T09:00:00Z", "form": "kontakt", "first_name": first,
           "last_name": last, "email": email, "phone": phone, "company_name": company, "zip": "01067",
           "city": "Dresden", "country": "DE", "newsletter_opt_in": False}
    rec.update(over)
    return json.dumps({k: v for k, v in rec.items() if v is not None}, ensure_ascii=False)


def fair(n: int, **over) -> str:
    values = TRADE_FAIR_ROW.split(";")
    names = TRADE_FAIR_HEADER.split(";")
    values[0] = f"TF-{n}"
    for k, v in over.items():
        values[names.index(k)] = v
    return ";".join(values)


def ticket(n: int, name: str, email: str, subject: str, company: str = "Beispiel GmbH") -> dict:
    return {"ticket_id": f"SR-{n}", "opened_at": "2026-11-02T08:00:00Z", "company": company,
            "requester": {"name": name, "email": email, "phone": "0351 4711-99"}, "category": "repair",
            "priority": "normal", "subject": subject}


def deliver_day1(landing):
    put(landing, "web_form_leads", DAY1, "leads_0900.jsonl", web(1) + "\n")
    put(landing, "erp_customers", DAY1, "KUNDEN_1.txt",
        (erp_customer("0000100100", "Beispiel GmbH", contact="Frau Römer") + "\r\n").encode("cp850"))


def deliver_replays(landing):
    """Every way back, plus a namesake at another company who must load."""
    put(landing, "web_form_leads", DAY2, "leads_0900.jsonl", "\n".join([
        web(11, email=None),                                               # phone + name + company, no e-mail
        web(12, email="\u200b" + EMAIL.upper()),                           # invisible character, other case
        web(13, email=None, phone=None, last="Roemer", company="Beispiel G.m.b.H."),  # name + company only
        web(14, email="a.roemer@andere-ag.de", company="Andere AG", phone="089 555-1"),  # the namesake
        web(1),                                                            # the old record itself, re-delivered
        web(15, email="kollege@beispiel-gmbh.de", first="Karl", last="Berg", phone="0351 4711-99",
            message="Bitte auch Frau Römer einladen, Tel. +49 351 471123"),  # a colleague whose note names her
        web(16, email=None, phone=None, submitted_at="kaputt"),             # quarantined: name, company, no e-mail
    ]) + "\n")
    put(landing, "trade_fair_leads", DAY2, "messe.csv", TRADE_FAIR_HEADER + "\n" + "\n".join([
        fair(21, Vorname="Anna", Nachname="Ro\u0308mer", Firma="Beispiel GmbH", Telefon="+49 (0)351 4711 23",
             **{"E-Mail": ""}),                                             # NFD, another phone notation
        fair(22, Vorname="Anna", Nachname="Römer", Firma="Beispiel GmbH", Telefon="0351/471123",
             **{"E-Mail": "", "Scan-Zeitpunkt": "kein Datum"}),             # quarantined line with name + phone
    ]) + "\n")
    put(landing, "erp_customers", DAY2, "KUNDEN_1.txt",                     # the old ERP line, in a new file
        (erp_customer("0000100100", "Beispiel GmbH", contact="Frau Römer") + "\r\n"
         + erp_customer("0000100200", "Andere AG", contact="Frau Römer").replace("Hauptstraße 1", "Ringstraße 99")
         + "\r\n").encode("cp850"))
    put(landing, "service_requests", DAY2, "tickets.json", json.dumps({"tickets": [
        ticket(31, "Karl Berg", "kollege@beispiel-gmbh.de", "Rückruf an Anna Römer wegen Presse"),
        ticket(32, "Anna Römer", "a.roemer@andere-ag.de", "Presse verliert Öl", "Andere AG"),  # the namesake's
    ]}, ensure_ascii=False))


SOURCES = ("web_form_leads", "trade_fair_leads", "erp_customers", "service_requests")


def load(landing, mappings, wh, day):
    sup = SuppressionList(wh, HASHER)
    return {s: ingest_partition(mappings[s], day, landing, wh, f"run-{day}", suppression=sup) for s in SOURCES}


def all_text(wh: Warehouse) -> str:
    """Every text value of every warehouse table except the suppression list, lower case."""
    out = []
    with wh.engine.connect() as conn:
        for table in metadata.tables.values():
            if table is SUPPRESSION or not sa.inspect(conn).has_table(table.name, schema=table.schema):
                continue
            for row in conn.execute(sa.select(table)):
                out += [str(v).lower() for v in row if isinstance(v, str)]
    return "\n".join(out)


def test_an_erased_person_stays_out_under_every_identity(landing, mappings, sqlite_url):
    wh = Warehouse(sqlite_url)
    deliver_day1(landing)
    load(landing, mappings, wh, DAY1)
    # Erased before the first golden build (the demo's order): identities come from the raw tables.
    report = erase(wh, HASHER, mappings,
                   copies=ERASURE_COPIES, emails=[EMAIL], request_id="r-1", source="test", actor="test")
    assert report.identities["phone"] >= 1 and report.identities["name_company"] >= 1
    assert report.identities["postal"] >= 1 and report.identities["record"] >= 1
    assert "römer" not in all_text(wh) and "roemer" not in all_text(wh)
    t = raw_table("erp_customers", mappings["erp_customers"].entity)
    company = wh.read_frame(sa.select(t)).iloc[0]
    assert company["company_name"] == "Beispiel GmbH" and company["contact_person"] is None

    deliver_replays(landing)
    reports = load(landing, mappings, wh, DAY2)
    assert reports["web_form_leads"].rows_suppressed == 5  # WF-11, 12, 13, 1 and the quarantined 16
    assert reports["trade_fair_leads"].rows_suppressed == 2
    assert reports["erp_customers"].fields_anonymised == 1  # Frau Römer of Andere AG is somebody else
    assert reports["service_requests"].fields_anonymised == 1  # the colleague's ticket loses its subject
    web_rows = wh.read_frame(sa.select(raw_table("web_form_leads", mappings["web_form_leads"].entity)))
    assert sorted(web_rows["source_record_id"]) == ["WF-14", "WF-15"]
    assert web_rows.set_index("source_record_id").loc["WF-15", "notes"] is None
    tickets = wh.read_frame(sa.select(raw_table("service_requests", mappings["service_requests"].entity))
                            ).set_index("source_record_id")
    assert tickets.loc["SR-31", "subject"] is None and tickets.loc["SR-32", "subject"] == "Presse verliert Öl"
    assert wh.read_frame(sa.select(QUARANTINE)).empty, wh.read_frame(sa.select(QUARANTINE.c.reason))["reason"].tolist()

    # The golden layer and what leaves it: only the namesake and the colleague.
    build_person_records(wh, SuppressionList(wh, HASHER).screen())
    persons = wh.read_frame(sa.select(PERSON_RECORDS.c.record_key, PERSON_RECORDS.c.company_name,
                                      PERSON_RECORDS.c.last_name))
    roemers = persons[persons["last_name"] == "Römer"]
    assert set(roemers["company_name"]) == {"Andere AG"}
    text = all_text(wh)
    assert "anna.roemer@beispiel" not in text and "471123" not in text


def test_erasure_finds_a_record_without_e_mail_under_the_same_name_company_and_phone(landing, mappings, sqlite_url):
    wh = Warehouse(sqlite_url)
    put(landing, "web_form_leads", DAY1, "leads_0900.jsonl", "\n".join([
        web(1), web(2, email=None), web(3, email=None, phone=None), web(4, email="a.roemer@andere-ag.de",
                                                                        company="Andere AG", phone="089 555-1"),
        web(5, email=None, submitted_at="kaputt")]) + "\n")
    put(landing, "service_requests", DAY1, "tickets.json", json.dumps({"tickets": [
        ticket(31, "Karl Berg", "kollege@beispiel-gmbh.de", "Rückruf an Anna Römer, 0351 4711-23")]}, ensure_ascii=False))
    load(landing, mappings, wh, DAY1)
    build_person_records(wh, None)
    erase(wh, HASHER, mappings, copies=ERASURE_COPIES, emails=[EMAIL], request_id="r-1", source="test", actor="test")
    web_rows = wh.read_frame(sa.select(raw_table("web_form_leads", mappings["web_form_leads"].entity)))
    assert web_rows["source_record_id"].tolist() == ["WF-4"]  # the namesake at Andere AG stays
    assert wh.read_frame(sa.select(QUARANTINE)).empty  # WF-5 named her by name + company
    tickets = wh.read_frame(sa.select(raw_table("service_requests", mappings["service_requests"].entity)))
    assert tickets["subject"].tolist() == [None] and tickets["source_record_id"].tolist() == ["SR-31"]
    persons = wh.read_frame(sa.select(PERSON_RECORDS.c.record_key))
    assert "web_form_leads:WF-4" in set(persons["record_key"]) and "web_form_leads:WF-2" not in set(persons["record_key"])


def test_a_retention_anonymised_contact_does_not_come_back_in_a_backfill(landing, mappings, sqlite_url):
    from datetime import datetime, timezone

    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.core.privacy.retention import retire_inactive
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    wh = Warehouse(sqlite_url)
    put(landing, "web_form_leads", "2023-01-10", "leads_0900.jsonl", web(1, submitted_at="2023-01-10T09:00:00Z") + "\n")
    load(landing, mappings, wh, "2023-01-10")
    build_person_records(wh, None)
    resolve_contacts(wh, load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml"), "run-1")
    report = retire_inactive(wh, HASHER, mappings, months=24, actor="test", now=datetime(2026, 11, 1, tzinfo=timezone.utc))
    assert report.retired == 1
    assert wh.scalar(sa.select(sa.func.count()).select_from(GOLDEN_CONTACTS)) == 0
    reasons = wh.read_frame(sa.select(SUPPRESSION.c.reason).distinct())["reason"].tolist()
    assert reasons and all(r.startswith("retention") for r in reasons)
    # A backfill of the old partition: the old record stays out.
    again = load(landing, mappings, wh, "2023-01-10")["web_form_leads"]
    assert (again.rows_loaded, again.rows_suppressed) == (0, 1)
    # A fresh sign-up with double opt-in (re-permission) lifts it: her new records are welcome.
    put(landing, "newsletter_signups", "2026-11-20", "nl.csv",
        "subscriber_id,email,first_name,last_name,event_at,double_opt_in_at,source,list,status\n"
        f"NL-9,{EMAIL},Anna,Römer,2026-11-20 08:00:00,2026-11-20 08:05:00,footer,news,subscribed\n")
    sup = SuppressionList(wh, HASHER)
    fresh = ingest_partition(mappings["newsletter_signups"], "2026-11-20", landing, wh, "run-nl", suppression=sup)
    assert fresh.rows_loaded == 1 and not sup.contains_email(EMAIL)
    put(landing, "web_form_leads", "2026-11-21", "leads_0900.jsonl", web(40) + "\n")
    assert load(landing, mappings, wh, "2026-11-21")["web_form_leads"].rows_loaded == 1


# ------------------------------------------------------------------ the screen, by property

ZW = st.sampled_from(["", "\u200b", "\ufeff", "\u00ad", "\u200e"])


def _case(s: str, how: int) -> str:
    return (s, s.upper(), s.lower(), s.title())[how]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=st.integers(0, 3), zw=ZW, pad=st.sampled_from(["", " ", "  \t"]), nfd=st.booleans(),
       translit=st.booleans(), phone=st.sampled_from(["0351 4711-23", "+49 351 471123", "0049 (0)351/47 11 23",
                                                      "+49 (0)351 4711 23", "03514711-23"]),
       with_email=st.booleans(), form=st.sampled_from(["Beispiel GmbH", "Beispiel G.m.b.H.", "BEISPIEL GMBH",
                                                         "Beispiel Gesellschaft mit beschränkter Haftung"]))
def test_the_screen_recognises_every_spelling_of_an_erased_person(how, zw, pad, nfd, translit, phone, with_email, form):
    sup_hashes = HASHER.hashes_of(pd.DataFrame([{
        "email": EMAIL, "first_name": "Anna", "last_name": "Römer", "company_name": "Beispiel GmbH",
        "phone": "0351 4711-23", "source": "web_form_leads", "source_record_id": "WF-1"}]))
    active = {}
    for kind, h in sup_hashes:
        active.setdefault(kind, set()).add(h)
    from crm_pipelines.core.privacy_screen.suppression import Screen

    screen = Screen(HASHER, active)
    last = "Roemer" if translit else ("Ro\u0308mer" if nfd else "Römer")
    email = pad + zw + _case(EMAIL, how) + pad if with_email else None
    row = {"email": email, "first_name": zw + _case("Anna", how), "last_name": _case(last, how) + zw,
           "company_name": form if with_email else form, "phone": phone if not with_email else None}
    assert screen.suppressed(pd.DataFrame([row]), "trade_fair_leads").all()
    # A namesake at another company, with other contact data, is not the erased person.
    other = dict(row, email="anna@andere-ag.de", company_name="Andere AG", phone="089 555-1")
    assert not screen.suppressed(pd.DataFrame([other]), "trade_fair_leads").any()


# ------------------------------------------------------------------ the landing zone

def test_erasure_rewrites_the_kept_landing_files_and_a_redelivery_stays_a_duplicate(landing, mappings, sqlite_url):
    from crm_pipelines.core.platform.schema import LANDING_ALIASES
    from crm_pipelines.core.sources.ingest import partition_balance, sha256_file

    wh = Warehouse(sqlite_url)
    deliver_day1(landing)
    put(landing, "web_form_leads", DAY1, "leads_1000.jsonl", "\n".join([
        web(2, email=None), web(4, email="a.roemer@andere-ag.de", company="Andere AG", phone="089 555-1")]) + "\n")
    put(landing, "trade_fair_leads", DAY1, "messe.csv", TRADE_FAIR_HEADER + "\r\n" + "\r\n".join([
        fair(21, Vorname="Anna", Nachname="Römer", Firma="Beispiel GmbH", Telefon="0351/471123", **{"E-Mail": ""}),
        fair(22)]) + "\r\n")
    put(landing, "service_requests", DAY1, "tickets.json", json.dumps({"tickets": [
        ticket(31, "Anna Römer", EMAIL, "Presse verliert Öl"), ticket(32, "Karl Berg", "kollege@beispiel-gmbh.de",
                                                                     "Wartung"),
        ticket(33, "Karl Berg", "kollege@beispiel-gmbh.de", "Rückruf an Anna Römer")]}, ensure_ascii=False))
    original = (landing / "web_form_leads" / DAY1 / "leads_1000.jsonl").read_bytes()
    original_hash = sha256_file(landing / "web_form_leads" / DAY1 / "leads_1000.jsonl")
    load(landing, mappings, wh, DAY1)
    report = erase(wh, HASHER, mappings,
                   copies=ERASURE_COPIES, emails=[EMAIL], request_id="r-1", source="test", actor="test",
                   landing_root=landing)
    assert report.landing["files_rewritten"] == 5 and report.landing["records_removed"] == 4, report.landing
    assert report.landing["values_blanked"] == 2  # the ERP line's Ansprechpartner, the colleague's ticket

    files = {p.relative_to(landing).as_posix(): p.read_bytes() for p in landing.rglob("*") if p.is_file()}
    namesake = web(4, email="a.roemer@andere-ag.de", company="Andere AG", phone="089 555-1")
    assert files.pop(f"web_form_leads/{DAY1}/leads_1000.jsonl").decode() == namesake + "\n"  # only she stays
    for name, content in files.items():
        text = content.decode("cp850" if "KUNDEN" in name else "utf-8-sig")
        assert "Römer" not in text and "Roemer" not in text and "471123" not in text, name
    assert "Beispiel GmbH" in files[f"erp_customers/{DAY1}/KUNDEN_1.txt"].decode("cp850")  # the company stays
    assert len(files[f"erp_customers/{DAY1}/KUNDEN_1.txt"].rstrip(b"\r\n")) == 339
    kept = json.loads(files[f"service_requests/{DAY1}/tickets.json"])["tickets"]
    assert [t["ticket_id"] for t in kept] == ["SR-32", "SR-33"]
    # The colleague's ticket that named her keeps everything but that text.
    assert kept[1]["subject"] is None and kept[1]["requester"]["email"] == "kollege@beispiel-gmbh.de"
    aliases = wh.read_frame(sa.select(LANDING_ALIASES))
    assert original_hash in set(aliases["original_sha256"])
    # The balance of the day still holds: the erased rows count as suppressed.
    for source in SOURCES:
        b = partition_balance(wh, mappings[source], [DAY1])[DAY1]
        assert b["read"] == b["loaded"] + b["quarantined"] + b["suppressed"], source

    # The original file delivered again on another day: a duplicate, not new data.
    put(landing, "web_form_leads", DAY2, "leads_again.jsonl", original)
    again = load(landing, mappings, wh, DAY2)["web_form_leads"]
    assert [f.status for f in again.files] == ["duplicate"]


def test_old_landing_days_are_pruned_and_a_backfill_keeps_what_they_loaded(landing, mappings, sqlite_url):
    from datetime import date

    from crm_pipelines.core.privacy.landing import prune_landing
    from crm_pipelines.core.sources.ingest import partition_balance

    wh = Warehouse(sqlite_url)
    other = web(2, email="b@x.de", first="Bernd", last="Kurz", phone="0351 1")
    put(landing, "web_form_leads", "2026-01-05", "leads_0900.jsonl", web(1) + "\n" + other + "\n")
    put(landing, "web_form_leads", "2026-11-30", "leads_0900.jsonl", web(3, email="c@x.de") + "\n")
    load(landing, mappings, wh, "2026-01-05")
    dry = prune_landing(landing, mappings, 90, date(2026, 12, 5), dry_run=True)
    assert dry.folders_removed == 1 and (landing / "web_form_leads" / "2026-01-05").is_dir()
    report = prune_landing(landing, mappings, 90, date(2026, 12, 5))
    assert (report.folders_removed, report.files_removed) == (1, 1)
    assert not (landing / "web_form_leads" / "2026-01-05").exists()
    assert (landing / "web_form_leads" / "2026-11-30").is_dir()
    # An erasure in the pruned day, then a backfill of it: the other row stays, the balance holds.
    erase(wh, HASHER, mappings,
          copies=ERASURE_COPIES, emails=[EMAIL], request_id="r-1", source="test", actor="test", landing_root=landing)
    backfill = load(landing, mappings, wh, "2026-01-05")["web_form_leads"]
    assert backfill.pruned and backfill.rows_loaded == 1 and backfill.rows_suppressed == 1
    t = raw_table("web_form_leads", mappings["web_form_leads"].entity)
    assert wh.read_frame(sa.select(t.c.source_record_id))["source_record_id"].tolist() == ["WF-2"]
    b = partition_balance(wh, mappings["web_form_leads"], ["2026-01-05"])["2026-01-05"]
    assert b == {"read": 2, "loaded": 1, "quarantined": 0, "suppressed": 1}
