"""A corpus of malformed deliveries, one case per class a real landing zone gets.

Each case delivers one good file and one malformed file on the same day. For every case: the
load ends (no raw Python error), the malformed part has a message that names file, line or
record and field, ``rows read = loaded + quarantined`` holds per file in the ledger, and the good
records of the day are loaded.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import LANDING_FILES, QUARANTINE, raw_table
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.ingest import ingest_partition
from crm_pipelines_tests.conftest import put
from crm_pipelines_tests.core.sources.test_ingest import lead
from crm_pipelines_tests.core.sources.test_readers import TRADE_FAIR_HEADER, TRADE_FAIR_ROW

DAY = "2026-11-03"


def fair(n: int, **over) -> str:
    values = TRADE_FAIR_ROW.split(";")
    values[0] = f"TF-{n}"
    names = TRADE_FAIR_HEADER.split(";")
    for k, v in over.items():
        values[names.index(k)] = v
    return ";".join(values)


def erp_customer(number: str, name: str, contact: str = "Herr Weiß") -> str:
    line = (number.ljust(10) + name.ljust(40) + "".ljust(40) + "Hauptstraße 1".ljust(35) + "01067".ljust(10)
            + "Dresden".ljust(35) + "D".ljust(3) + "0351 4711-0".ljust(20) + "info@example.de".ljust(50)
            + "DE123456789".ljust(14) + "Maschinenbau".ljust(20) + contact.ljust(30) + "20040315" + " "
            + "250".rjust(7) + "48.000.000,00".rjust(16))
    assert len(line) == 339
    return line


def tickets(*records) -> str:
    return json.dumps({"tickets": list(records)}, ensure_ascii=False)


def ticket(n: int, **over) -> dict:
    rec = {"ticket_id": f"SR-{n}", "opened_at": "2026-11-03T08:00:00Z", "company": "Musterfirma GmbH",
           "requester": {"name": "Jörg Müller", "email": f"j{n}@musterfirma.de", "phone": "0351 4711-23"},
           "category": "repair", "priority": "hoch", "subject": "Presse verliert Öl"}
    rec.update(over)
    return rec


GOOD = {
    "web_form_leads": ("leads_0600.jsonl", (lead(100) + "\n").encode()),
    "trade_fair_leads": ("messe_a.csv", (TRADE_FAIR_HEADER + "\r\n" + fair(100) + "\r\n").encode("utf-8-sig")),
    "erp_customers": ("KUNDEN_1.txt", (erp_customer("0000100100", "Gute GmbH") + "\r\n").encode("cp850")),
    "service_requests": ("tickets_1.json", tickets(ticket(100)).encode()),
}

# case -> (source, file name, content, expected: "loaded" | quarantine reason fragment | rejection fragment,
#          records of the malformed file that still load)
LONG_NOTE = "x" * 200_000
CASES = {
    "csv_field_over_128_kib": ("trade_fair_leads", "messe_b.csv",
                               (TRADE_FAIR_HEADER + "\n" + fair(1, Notiz=LONG_NOTE) + "\n" + fair(2) + "\n").encode(),
                               None, 2),
    "csv_cr_only_line_endings": ("trade_fair_leads", "messe_b.csv",
                                 (TRADE_FAIR_HEADER + "\r" + fair(1) + "\r" + fair(2) + "\r").encode(), None, 2),
    "csv_unbalanced_quote_swallows_rows": (
        "trade_fair_leads", "messe_b.csv",
        (TRADE_FAIR_HEADER + "\n" + fair(1, Firma='"Musterfirma GmbH') + "\n" + fair(2) + "\n" + fair(3) + "\n"
         + fair(4, Firma='"Beispiel AG"') + "\n").encode(),
        "line 2: unbalanced quote", 3),
    "csv_wrong_delimiter": ("trade_fair_leads", "messe_b.csv",
                            (TRADE_FAIR_HEADER.replace(";", ",") + "\n" + fair(1).replace(";", ",") + "\n").encode(),
                            "seems to use ',' (comma) as its delimiter", 0),
    "csv_control_character_in_name": ("trade_fair_leads", "messe_b.csv",
                                      (TRADE_FAIR_HEADER + "\n" + fair(1, Nachname="M\x1bller") + "\n" + fair(2)
                                       + "\n").encode(), "field 'Nachname' holds the control character U+001B (ESC)", 1),
    "csv_nul_in_first_name": ("trade_fair_leads", "messe_b.csv",
                              (TRADE_FAIR_HEADER + "\n" + fair(1, Vorname="J\x00rg") + "\n" + fair(2) + "\n").encode(),
                              "U+0000 (NUL)", 1),
    "csv_latin1_file": ("trade_fair_leads", "messe_b.csv",
                        (TRADE_FAIR_HEADER + "\n" + fair(1) + "\n").encode("cp1252"),
                        "it seems to be Latin-1 / Windows-1252 / cp850", 0),
    "csv_one_broken_byte_in_a_utf8_file": (
        "trade_fair_leads", "messe_b.csv",
        (TRADE_FAIR_HEADER + "\n" + fair(1) + "\n").encode() + fair(2).encode().replace(b"M\xc3\xbcller", b"M\xfcller")
        + b"\n" + (fair(3) + "\n").encode(), "byte 0xFC at column", 2),
    "csv_header_only": ("trade_fair_leads", "messe_b.csv", (TRADE_FAIR_HEADER + "\n").encode(), None, 0),
    "csv_excel_workbook": ("trade_fair_leads", "messe_b.csv", b"PK\x03\x04\x14\x00\x06\x00" + bytes(300),
                           "seems to be a ZIP archive (an .xlsx workbook", 0),
    "csv_utf16": ("trade_fair_leads", "messe_b.csv", (TRADE_FAIR_HEADER + "\n" + fair(1)).encode("utf-16"),
                  "UTF-16", 0),
    "jsonl_nested_thousands_deep": ("web_form_leads", "leads_0700.jsonl",
                                    ("[" * 5000 + "]" * 5000 + "\n" + lead(2) + "\n").encode(), "nested too deeply", 1),
    "jsonl_lone_surrogate": ("web_form_leads", "leads_0700.jsonl",
                             (lead(1).replace('"Müller"', '"M\\ud800ller"') + "\n" + lead(2) + "\n").encode(),
                             "field 'last_name' holds U+D800, an unpaired surrogate", 1),
    "jsonl_nan_and_infinity": ("web_form_leads", "leads_0700.jsonl",
                               (lead(1).replace('"Müller"', "NaN") + "\n" + lead(2).replace('"01067"', "-Infinity")
                                + "\n" + lead(3) + "\n").encode(), "field 'last_name' holds NaN", 1),
    "jsonl_nfd_umlauts_and_invisible_characters": (
        "web_form_leads", "leads_0700.jsonl",
        (lead(1).replace("Müller", "Mu\u0308ller").replace('"j1@', '"\u200bj1@') + "\n").encode(), None, 1),
    "jsonl_truncated_last_line": ("web_form_leads", "leads_0700.jsonl", (lead(1) + "\n" + lead(2)[:40]).encode(),
                                  "line 2: invalid JSON", 1),
    "jsonl_pattern_mismatch": ("web_form_leads", "leads_1800.json", (lead(1) + "\n").encode(), "ignored", 0),
    "csv_excel_sep_hint_line": ("trade_fair_leads", "messe_b.csv",
                                ("sep=;\r\n" + TRADE_FAIR_HEADER + "\r\n" + fair(1) + "\r\n").encode("utf-8-sig"),
                                None, 1),
    "csv_mixed_line_endings": ("trade_fair_leads", "messe_b.csv",
                               (TRADE_FAIR_HEADER + "\r\n" + fair(1) + "\n" + fair(2) + "\r\n" + fair(3)).encode(),
                               None, 3),
    "csv_quoted_header_and_blank_lines": (
        "trade_fair_leads", "messe_b.csv",
        (";".join(f'"{h}"' for h in TRADE_FAIR_HEADER.split(";")) + "\n\n" + fair(1) + "\n\n\n" + fair(2) + "\n").encode(),
        None, 2),
    "csv_nbsp_and_zero_width_joiner_in_names": (
        "trade_fair_leads", "messe_b.csv",
        (TRADE_FAIR_HEADER + "\n" + fair(1, Vorname="Jörg\u00a0Peter", Nachname="Mül\u200dler") + "\n").encode(),
        None, 1),
    "jsonl_gzip_named_like_jsonl": ("web_form_leads", "leads_0700.jsonl", b"\x1f\x8b\x08\x00" + bytes(200),
                                    "seems to be a gzip archive", 0),
    "jsonl_windows_1252_smart_quotes": ("web_form_leads", "leads_0700.jsonl",
                                        (lead(1).replace("Müller", "\u201eM\u00fcller\u201c") + "\n").encode("cp1252"),
                                        "it seems to be Latin-1 / Windows-1252 / cp850", 0),
    "jsonl_record_is_a_string": ("web_form_leads", "leads_0700.jsonl", ('"just text"\n' + lead(2) + "\n").encode(),
                                 "expected a JSON object, found str", 1),
    "json_document_nan_in_one_ticket": (
        "service_requests", "tickets_2.json",
        tickets(ticket(1), ticket(2), ticket(3)).replace('"SR-2", "opened_at": "2026-11-03T08:00:00Z"',
                                                         '"SR-2", "opened_at": NaN').encode(),
        "record 2: field 'opened_at' holds NaN", 2),
    "json_document_cut_off": ("service_requests", "tickets_2.json", tickets(ticket(1), ticket(2))[:-30].encode(),
                              "invalid JSON", 0),
    "fixed_width_utf8_with_late_first_umlaut": (
        "erp_customers", "KUNDEN_2.txt",
        ("\r\n".join(erp_customer(f"{i:010d}", "Plain GmbH") for i in range(1, 4001)) + "\r\n"
         + erp_customer("0000004001", "Müller GmbH") + "\r\n").encode("utf-8"),
        "file looks UTF-8 encoded", 0),
    "fixed_width_truncated_and_overlong": (
        "erp_customers", "KUNDEN_2.txt",
        (erp_customer("0000000001", "Kurz GmbH")[:120] + "\r\n" + erp_customer("0000000002", "Lang GmbH") + "XX\r\n"
         + erp_customer("0000000003", "Richtig GmbH") + "\r\n").encode("cp850"), "truncated record", 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_delivery_never_stops_the_good_records_of_its_day(case, landing, mappings, sqlite_url):
    source, name, content, expected, still_loaded = CASES[case]
    good_name, good_content = GOOD[source]
    put(landing, source, DAY, good_name, good_content)
    put(landing, source, DAY, name, content)
    wh = Warehouse(sqlite_url)
    mapping = mappings[source]
    rep = ingest_partition(mapping, DAY, landing, wh, "run-1")

    by_file = {f.file: f for f in rep.files}
    assert by_file[good_name].status == "loaded" and by_file[good_name].rows_loaded == 1
    bad = by_file[name]
    ledger = wh.read_frame(sa.select(LANDING_FILES))
    for row in ledger.itertuples():
        assert row.rows_read == row.rows_loaded + row.rows_quarantined + (row.rows_suppressed or 0), row.file
    assert bad.rows_loaded == still_loaded
    q = wh.read_frame(sa.select(QUARANTINE).where(QUARANTINE.c.file == name))
    if expected is None:
        assert bad.status == "loaded" and q.empty
    elif expected == "ignored":
        assert bad.status == "ignored" and bad.rows_read == 0 and "matches no pattern" in bad.error
    elif bad.status == "rejected":
        assert expected in bad.error and bad.error.startswith(f"{name}, line")
        assert q["reason"].str.contains(expected, regex=False).all()
    else:
        assert q["reason"].str.contains(expected, regex=False).any(), q["reason"].tolist()
        assert q["line_no"].notna().all() or source == "service_requests"
    raw = wh.read_frame(sa.select(raw_table(source, mapping.entity)))
    assert len(raw) == 1 + still_loaded


def test_text_is_stored_composed_and_without_invisible_characters(landing, mappings, sqlite_url):
    source, name, content, *_ = CASES["jsonl_nfd_umlauts_and_invisible_characters"]
    put(landing, source, DAY, name, content)
    wh = Warehouse(sqlite_url)
    rep = ingest_partition(mappings[source], DAY, landing, wh, "run-1")
    row = wh.read_frame(sa.select(raw_table(source, mappings[source].entity))).iloc[0]
    assert row["last_name"] == "Müller" and len(row["last_name"]) == 6
    assert row["email"] == "j1@musterfirma.de"
    assert rep.text_values_cleaned == 2


def test_swallowed_rows_are_read_again_and_counted_as_physical_records(landing, mappings, sqlite_url):
    source, name, content, *_ = CASES["csv_unbalanced_quote_swallows_rows"]
    put(landing, source, DAY, name, content)
    wh = Warehouse(sqlite_url)
    rep = ingest_partition(mappings[source], DAY, landing, wh, "run-1")
    assert (rep.rows_read, rep.rows_loaded, rep.rows_quarantined) == (4, 3, 1)
    raw = wh.read_frame(sa.select(raw_table(source, mappings[source].entity)))
    assert sorted(raw["source_record_id"]) == ["TF-2", "TF-3", "TF-4"]
    assert raw.set_index("source_record_id").loc["TF-4", "company_name"] == "Beispiel AG"
    q = wh.read_frame(sa.select(QUARANTINE)).iloc[0]
    assert (q["line_no"], q["source_record_id"]) == (2, "TF-1")
