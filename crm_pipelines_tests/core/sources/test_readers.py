"""Readers of every landing format, and the file-level errors that name file, line and column."""

from __future__ import annotations

import json

import pytest

from crm_pipelines.core.sources.readers import RawChunk, SourceFileError, read_file
from crm_pipelines_tests.conftest import put

TRADE_FAIR_HEADER = ("Scan-ID;Messe;Scan-Zeitpunkt;Anrede;Titel;Vorname;Nachname;Firma;Position;Straße;PLZ;Ort;Land;"
                     "Telefon;Mobil;E-Mail;Interesse;Notiz;Opt-In")
TRADE_FAIR_ROW = ("TF-1;Hannover Messe;03.11.2026 14:35;Frau;Dr.;Jörg;Müller;Musterfirma GmbH & Co. KG;Einkauf;"
                  "Hauptstraße 1;01067;Dresden;Deutschland;0351 123;;j.mueller@musterfirma.de;Pressen;;ja")


def read_all(path, mapping, chunk_rows=50_000) -> RawChunk:
    chunks = list(read_file(path, mapping, chunk_rows=chunk_rows))
    return RawChunk.concat(chunks) if chunks else RawChunk({}, [], [], [], [])


# ------------------------------------------------------------------------------------------ CSV

def test_csv_with_bom_semicolons_quotes_and_multiline_field(landing, mappings):
    text = TRADE_FAIR_HEADER + "\r\n" + TRADE_FAIR_ROW + "\r\n" + TRADE_FAIR_ROW.replace("TF-1", "TF-2").replace(
        ";;ja", ';"Rückruf\nbitte; vormittags";ja') + "\r\n"
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    chunk = read_all(path, mappings["trade_fair_leads"])
    assert chunk.columns["Scan-ID"] == ["TF-1", "TF-2"]  # the BOM is not part of the first column name
    assert chunk.columns["Notiz"] == [None, "Rückruf\nbitte; vormittags"]
    assert chunk.columns["PLZ"] == ["01067", "01067"]  # leading zero survives
    assert chunk.line_no == [2, 3] and chunk.record_no == [1, 2]
    assert chunk.payload[1].count("\n") == 1  # the raw record spans both lines


def test_csv_without_bom_reads_the_same(landing, mappings):
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", TRADE_FAIR_HEADER + "\n" + TRADE_FAIR_ROW + "\n")
    assert read_all(path, mappings["trade_fair_leads"]).columns["Scan-ID"] == ["TF-1"]


def test_csv_rows_with_extra_or_missing_values_are_flagged_not_dropped(landing, mappings):
    extra = TRADE_FAIR_ROW.replace("TF-1", "TF-2") + ";Stand B12"
    short = ";".join(TRADE_FAIR_ROW.replace("TF-1", "TF-3").split(";")[:-2])
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", "\n".join([TRADE_FAIR_HEADER, TRADE_FAIR_ROW, extra, short]))
    chunk = read_all(path, mappings["trade_fair_leads"])
    assert len(chunk) == 3
    assert chunk.problems == [None, "line 3: 20 values, but the header has 19 columns",
                              "line 4: 17 values, but the header has 19 columns"]


def test_csv_missing_header_row(landing, mappings):
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", TRADE_FAIR_ROW + "\n")
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["trade_fair_leads"])
    assert (err.value.file, err.value.line, err.value.column) == ("a.csv", 1, 1)
    assert "no header row: line 1 does not name any mapped column (expected e.g. 'Scan-ID'" in str(err.value)


def test_csv_missing_required_column(landing, mappings):
    header = TRADE_FAIR_HEADER.replace(";E-Mail", "")
    row = ";".join(v for i, v in enumerate(TRADE_FAIR_ROW.split(";")) if i != 15)
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", header + "\n" + row + "\n")
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["trade_fair_leads"])
    assert str(err.value) == "a.csv, line 1: missing required column(s) 'E-Mail' in the header"


def test_csv_unexpected_column_in_header(landing, mappings):
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", TRADE_FAIR_HEADER + ";Fax\n" + TRADE_FAIR_ROW + ";0351 9\n")
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["trade_fair_leads"])
    assert (err.value.line, err.value.column) == (1, 20)
    assert "unexpected column 'Fax' in the header; map it in trade_fair_leads.yaml" in str(err.value)


def test_csv_duplicate_column_in_header(landing, mappings):
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", TRADE_FAIR_HEADER + ";PLZ\n")
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["trade_fair_leads"])
    assert "column 'PLZ' appears twice in the header (columns 11 and 20)" in str(err.value)


# ------------------------------------------------------------------------------------------ encodings

def test_wrong_encoding_names_line_and_column(landing, mappings):
    text = (TRADE_FAIR_HEADER + "\n" + TRADE_FAIR_ROW + "\n" + TRADE_FAIR_ROW.replace("TF-1", "TF-2") + "\n")
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", text.encode("latin-1"))
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["trade_fair_leads"])
    # 'ß' in the header ("Straße") is the first byte that is not UTF-8.
    assert (err.value.line, err.value.column) == (1, TRADE_FAIR_HEADER.index("ß") + 1)
    assert "byte 0xDF is not valid UTF-8 ('ß' in Windows-1252)" in str(err.value)
    assert "it seems to be Latin-1 / Windows-1252 / cp850, but utf-8-sig is declared" in str(err.value)


def test_utf16_file_is_rejected(landing, mappings):
    path = put(landing, "trade_fair_leads", "2026-11-03", "a.csv", (TRADE_FAIR_HEADER + "\n").encode("utf-16"))
    with pytest.raises(SourceFileError, match="file is UTF-16 encoded"):
        read_all(path, mappings["trade_fair_leads"])


def test_utf8_file_where_cp850_is_declared(landing, mappings):
    line = "0000100000" + "MÜLLER GMBH".ljust(40) + " " * (339 - 50)
    path = put(landing, "erp_customers", "2026-11-03", "KUNDEN_1.txt", (line + "\r\n").encode("utf-8"))
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["erp_customers"])
    assert (err.value.line, err.value.column) == (1, 12)
    assert "looks UTF-8 encoded (multibyte characters), but the layout declares cp850" in str(err.value)


def test_empty_file_and_whitespace_only_file(landing, mappings):
    path = put(landing, "web_form_leads", "2026-11-03", "a.jsonl", b"")
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["web_form_leads"])
    assert err.value.line == 1 and "file is empty (0 bytes)" in str(err.value)
    path = put(landing, "web_form_leads", "2026-11-03", "b.jsonl", b"\xef\xbb\xbf \n\n")
    with pytest.raises(SourceFileError, match="no records"):
        read_all(path, mappings["web_form_leads"])


# ------------------------------------------------------------------------------------------ JSON

def test_jsonl_bad_lines_and_unexpected_fields_become_problems(landing, mappings):
    good = {"lead_id": "WF-1", "submitted_at": "2026-11-03T09:14:00+01:00", "email": "a@b.de", "newsletter_opt_in": True}
    lines = [json.dumps(good), '{"lead_id": "WF-2", "email": ', json.dumps([1, 2]), "",
             json.dumps({**good, "lead_id": "WF-3", "fax": "0351"})]
    path = put(landing, "web_form_leads", "2026-11-03", "a.jsonl", "\n".join(lines) + "\n")
    chunk = read_all(path, mappings["web_form_leads"])
    assert chunk.record_no == [1, 2, 3, 4] and chunk.line_no == [1, 2, 3, 5]  # the blank line is not a record
    assert chunk.columns["newsletter_opt_in"][0] == "true"
    assert chunk.problems[0] is None
    assert chunk.problems[1].startswith("line 2: invalid JSON at column")
    assert chunk.problems[2] == "line 3: record 3: expected a JSON object, found list"
    assert chunk.problems[3] == "line 5: unexpected field(s) 'fax' not in mapping web_form_leads.yaml"


def test_json_pages_with_nested_properties(landing, mappings):
    doc = {"results": [
        {"id": "100", "properties": {"firstname": "Jörg", "lastname": "Müller", "email": "J@X.DE", "zip": "01067"},
         "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-02T00:00:00Z", "archived": False},
        {"id": 101, "properties": None, "createdAt": "2026-01-01T00:00:00Z", "archived": False},
        {"id": "102", "properties": {"favourite_colour": "blau"}, "createdAt": "2026-01-01T00:00:00Z"},
    ], "paging": {"next": {"after": "103"}}}
    path = put(landing, "crm_contacts", "2026-11-03", "page_00001.json", json.dumps(doc, ensure_ascii=False))
    chunk = read_all(path, mappings["crm_contacts"])
    assert chunk.columns["id"] == ["100", "101", None]
    assert chunk.columns["properties.zip"] == ["01067", None, None]
    assert chunk.line_no == [None, None, None] and chunk.record_no == [1, 2, 3]
    assert chunk.problems[2] == "record 3: unexpected field(s) 'properties.favourite_colour' not in mapping crm_contacts.yaml"
    assert json.loads(chunk.payload_text(2))["id"] == "102"


def test_json_document_errors_name_line_and_column(landing, mappings):
    path = put(landing, "crm_contacts", "2026-11-03", "page_00001.json", '{"results": [\n  {"id": "1",}\n]}')
    with pytest.raises(SourceFileError) as err:
        read_all(path, mappings["crm_contacts"])
    assert (err.value.line, err.value.column) == (2, 14)
    path = put(landing, "crm_contacts", "2026-11-03", "page_00002.json", '{"items": []}')
    with pytest.raises(SourceFileError, match="the document has no 'results'"):
        read_all(path, mappings["crm_contacts"])


# ------------------------------------------------------------------------------------------ fixed width

def erp_order(number: str = "4000000001", date: str = "20261103", amount: str = "1.234,56") -> str:
    return (number.ljust(10) + "0000100000" + date + "HP-200-S".ljust(15) + "3".rjust(7) + amount.rjust(15)
            + "EUR" + "F".ljust(5))


def test_fixed_width_cp850_crlf_and_eof_marker(landing, mappings):
    customer = ("0000100000" + "Müller & Söhne GmbH".ljust(40) + "".ljust(40) + "Hauptstraße 1".ljust(35) + "01067".ljust(10)
                + "Dresden".ljust(35) + "D".ljust(3) + "0351 4711-0".ljust(20) + "info@mueller.de".ljust(50)
                + "DE123456789".ljust(14) + "Maschinenbau".ljust(20) + "Herr Weiß".ljust(30) + "20040315" + "X"
                + "250".rjust(7) + "48.000.000,00".rjust(16))
    assert len(customer) == 339
    path = put(landing, "erp_customers", "2026-11-03", "KUNDEN_1.txt", (customer + "\r\n\x1a").encode("cp850"))
    chunk = read_all(path, mappings["erp_customers"])
    assert chunk.columns["NAME1"] == ["Müller & Söhne GmbH"]
    assert chunk.columns["PLZ"] == ["01067"]
    assert chunk.columns["NAME2"] == [None]
    assert chunk.columns["ANSPRECHP"] == ["Herr Weiß"]
    assert chunk.columns["UMSATZ"] == ["48.000.000,00"]
    assert len(chunk) == 1


def test_a_truncated_fixed_width_record_is_quarantined_not_the_file(landing, mappings):
    lines = [erp_order("4000000001"), erp_order("4000000002")[:50], erp_order("4000000003")]
    path = put(landing, "erp_orders", "2026-11-03", "AUFTRAG_1.txt", "\r\n".join(lines).encode("cp850"))
    chunk = read_all(path, mappings["erp_orders"])
    assert chunk.problems == [None, "line 2: truncated record: 50 characters, layout erp_orders.yaml needs 73; column "
                                    "'BETRAG' (positions 51-65) is cut off", None]
    assert chunk.columns["AUFNR"] == ["4000000001", None, "4000000003"]
    assert chunk.record_ids == [None, "4000000002", None]  # the ID is readable and kept for the quarantine


def test_overlong_fixed_width_record_is_a_record_problem(landing, mappings):
    path = put(landing, "erp_orders", "2026-11-03", "AUFTRAG_1.txt", (erp_order() + "XYZ\r\n").encode("cp850"))
    chunk = read_all(path, mappings["erp_orders"])
    assert chunk.problems == ["line 1: record has 76 characters, layout erp_orders.yaml defines 73"]
    assert chunk.payload == [erp_order() + "XYZ"]


def test_chunks_split_large_files(landing, mappings):
    path = put(landing, "erp_orders", "2026-11-03", "AUFTRAG_1.txt",
               "\r\n".join(erp_order(f"{i:010d}") for i in range(25)).encode("cp850"))
    chunks = list(read_file(path, mappings["erp_orders"], chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert chunks[2].record_no[0] == 21 and chunks[2].line_no[0] == 21
