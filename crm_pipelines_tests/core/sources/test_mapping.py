"""Mapping files: every validation error names file and key; applying a mapping types and checks values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from crm_pipelines.core.platform.configfile import ConfigError
from crm_pipelines.core.sources.mapping import apply_mapping, coerce, load_layout, load_mapping, load_mappings
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

BASE = """\
source: {name}
entity: erasure_request
format:
  type: jsonl
fields:
  id: {{target: source_record_id}}
  at: {{target: requested_at, transforms: [parse_datetime]}}
  mail: {{target: email, transforms: [trim, lower]}}
"""


def write(tmp_path: Path, text: str, name: str = "test_source") -> Path:
    mdir = tmp_path / "config" / "mappings"
    mdir.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "layouts").mkdir(exist_ok=True)
    path = mdir / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_mapping(write(tmp_path, text))
    return err.value


def test_shipped_mappings_load_and_cover_every_source():
    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    assert set(mappings) == {"web_form_leads", "trade_fair_leads", "erp_customers", "erp_orders", "newsletter_signups",
                             "behaviour_events", "service_requests", "crm_accounts", "crm_contacts",
                             "erasure_requests", "consent_changes", "email_engagement"}
    for m in mappings.values():
        assert len(m.code_version) == 16


def test_a_valid_mapping_loads(tmp_path):
    m = load_mapping(write(tmp_path, BASE.format(name="test_source")))
    assert m.source == "test_source" and m.entity.name == "erasure_request"
    assert [f.targets for f in m.fields] == [("source_record_id",), ("requested_at",), ("email",)]


def test_unknown_canonical_field(tmp_path):
    err = error_of(tmp_path, BASE.format(name="test_source").replace("target: email", "target: e_mail"))
    assert err.key == "fields.mail.target"
    assert "unknown canonical field 'e_mail' for entity 'erasure_request' (did you mean 'email'?)" in str(err)
    assert "test_source.yaml:8" in str(err)


def test_two_source_fields_onto_one_target(tmp_path):
    err = error_of(tmp_path, BASE.format(name="test_source") + "  mail2: {target: email}\n")
    assert err.key == "fields.mail2.target"
    assert "canonical field 'email' is already mapped from 'mail' (fields.mail)" in str(err)


def test_missing_required_target(tmp_path):
    err = error_of(tmp_path, BASE.format(name="test_source").replace("  at: {target: requested_at, transforms: [parse_datetime]}\n", ""))
    assert err.key == "fields"
    assert "required canonical field 'requested_at' of entity 'erasure_request' is not mapped" in str(err)


def test_unknown_transform(tmp_path):
    err = error_of(tmp_path, BASE.format(name="test_source").replace("[trim, lower]", "[trim, lowercase]"))
    assert err.key == "fields.mail.transforms[1]"
    assert "unknown transform 'lowercase'" in str(err) and "known: trim" in str(err)


@pytest.mark.parametrize("change, key, message", [
    (("entity: erasure_request", "entity: human"), "entity", "unknown entity 'human'"),
    (("source: test_source", "source: other"), "source", "must match the file name 'test_source'"),
    (("type: jsonl", "type: xml"), "format.type", "unknown format 'xml'"),
    (("type: jsonl", "type: jsonl\n  delimiter: ';'"), "format.delimiter", "unknown key 'delimiter'"),
    (("format:", "formatt: {}\nformat:"), "formatt", "unknown key 'formatt' (did you mean 'format'?)"),
    (("  id: {target: source_record_id}", "  id: {target: source_record_id, optinal: true}"), "fields.id.optinal",
     "unknown key 'optinal'"),
    (("  id: {target: source_record_id}", "  id: {ignore: true}"), "fields.id", "needs a 'note'"),
    (("[parse_datetime]", "[parse_date]"), "fields.at.transforms[0]", "'parse_date' yields a date, but 'requested_at' is a datetime"),
    (("[trim, lower]", "[parse_int, trim]"), "fields.mail.transforms[1]", "'trim' cannot follow 'parse_int'"),
    (("[trim, lower]", "[split_full_name]"), "fields.mail.transforms[0]", "produces several values"),
    (("fields:", "constants: {reason: 5, colour: red}\nfields:"), "constants.colour", "unknown canonical field 'colour'"),
    (("fields:", "checks: {max_quarantine_rate: 2}\nfields:"), "checks.max_quarantine_rate", "must be a share between 0 and 1"),
    (("fields:", "on_unknown_field: drop\nfields:"), "on_unknown_field", "must be one of: error, quarantine, ignore"),
])
def test_other_validation_errors(tmp_path, change, key, message):
    err = error_of(tmp_path, BASE.format(name="test_source").replace(*change))
    assert err.key == key, str(err)
    assert message in str(err)
    assert str(err).startswith(str(tmp_path / "config" / "mappings" / "test_source.yaml"))


def test_yaml_syntax_error_names_line(tmp_path):
    err = error_of(tmp_path, BASE.format(name="test_source") + "  broken: [unclosed\n")
    assert err.line is not None and "invalid YAML" in str(err)


def test_one_source_field_may_fill_several_targets_without_a_splitter(tmp_path):
    text = BASE.format(name="test_source").replace("entity: erasure_request", "entity: account").replace(
        "  id: {target: source_record_id}", "  id: {target: [source_record_id, erp_customer_number]}").replace(
        "  at: {target: requested_at, transforms: [parse_datetime]}", "  name: {target: company_name}")
    m = load_mapping(write(tmp_path, text))
    out = apply_mapping(m, pd.DataFrame({"id": ["0000104711"], "name": ["Muster GmbH"], "mail": [None]}, dtype=object))
    assert out.good.loc[0, "source_record_id"] == out.good.loc[0, "erp_customer_number"] == "0000104711"


LAYOUT = """\
record_length: 20
encoding: cp850
fields:
  - {name: A, start: 1, length: 10}
  - {name: B, start: 11, length: 10}
"""


@pytest.mark.parametrize("change, key, message", [
    (("length: 10}\n  - {name: B", "length: 12}\n  - {name: B"), "fields[1].start", "overlaps column 'A'"),
    (("{name: B, start: 11, length: 10}", "{name: B, start: 11, length: 11}"), "fields[1].length", "beyond record_length 20"),
    (("{name: B,", "{name: A,"), "fields[1].name", "already defined"),
    (("encoding: cp850", "encoding: ebcdic-klingon"), "encoding", "unknown encoding"),
    (("record_length: 20", "record_length: zwanzig"), "record_length", "positive whole number"),
])
def test_layout_errors(tmp_path, change, key, message):
    path = tmp_path / "layout.yaml"
    path.write_text(LAYOUT.replace(*change), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_layout(path)
    assert err.value.key == key and message in str(err.value)


def test_fixed_width_mapping_must_cover_every_layout_column(tmp_path):
    (tmp_path / "config" / "layouts").mkdir(parents=True)
    (tmp_path / "config" / "layouts" / "l.yaml").write_text(LAYOUT, encoding="utf-8")
    text = """\
    source: test_source
    entity: order
    format: {type: fixed_width, layout: l.yaml}
    fields:
      A: {target: [source_record_id, erp_customer_number]}
    constants: {order_date: "2026-01-01"}
    """
    err = error_of(tmp_path, text)
    assert "layout column(s) B are neither mapped nor ignored" in str(err)
    err = error_of(tmp_path, text.replace("A: {", "C: {"))
    assert "column 'C' is not in layout l.yaml" in str(err)


def test_code_version_changes_with_the_mapping_and_its_layout(tmp_path):
    (tmp_path / "config" / "layouts").mkdir(parents=True)
    layout = tmp_path / "config" / "layouts" / "l.yaml"
    layout.write_text(LAYOUT, encoding="utf-8")
    text = """\
    source: test_source
    entity: order
    format: {type: fixed_width, layout: l.yaml}
    fields:
      A: {target: [source_record_id, erp_customer_number]}
      B: {target: order_date, transforms: [parse_date]}
    """
    v1 = load_mapping(write(tmp_path, text)).code_version
    assert load_mapping(write(tmp_path, text)).code_version == v1
    layout.write_text(LAYOUT.replace("length: 10}\n  - {name: B, start: 11", "length: 9}\n  - {name: B, start: 11"), encoding="utf-8")
    assert load_mapping(write(tmp_path, text)).code_version != v1


# ---------------------------------------------------------------------------- applying

def test_apply_mapping_quarantines_with_every_reason_and_masks_personal_values(mappings):
    m = mappings["web_form_leads"]
    raw = pd.DataFrame({
        "lead_id": ["WF-1", "WF-2", None],
        "submitted_at": ["2026-11-03T09:14:00+01:00", "gestern", "2026-11-03T09:14:00+01:00"],
        "salutation": ["Frau", "Herrr", None],
        "first_name": ["Jörg", "Anna", None],
        "last_name": ["Müller", "Schmidt", None],
        "email": [" J.Mueller@Musterfirma.DE ", "a.schmidt@example.de", None],
        "newsletter_opt_in": ["true", "vielleicht", None],
        "company_name": ["Musterfirma  GmbH", None, None],
    }, dtype=object)
    out = apply_mapping(m, raw)
    assert list(out.bad_positions) == [1, 2]
    good = out.good.iloc[0]
    assert good["email"] == "j.mueller@musterfirma.de"
    assert good["company_name"] == "Musterfirma GmbH"
    assert good["country"] == "DE" and good["lifecycle_stage"] == "lead"
    assert good["created_at"] == pd.Timestamp("2026-11-03 08:14", tz="UTC")
    assert bool(good["marketing_opt_in"]) is True
    reason = out.bad_reasons[0]
    assert "submitted_at -> created_at: 'gestern' is not a valid date/time" in reason
    assert "salutation -> salutation: 'Herrr' is not one of the mapped values" in reason
    assert "newsletter_opt_in -> marketing_opt_in: 'vielleicht' is not a yes/no value" in reason
    assert out.bad_fields[0] == "submitted_at,salutation,newsletter_opt_in"
    assert "required field source_record_id (from lead_id) is missing" in out.bad_reasons[1]


def test_problem_values_of_personal_fields_are_masked(mappings):
    m = mappings["behaviour_events"]
    raw = pd.DataFrame({"event_id": ["e1"], "type": ["pageview"], "ts": ["1762160040000"],
                        "email": ["jane.doe@example.com"], "anonymous_id": [None]}, dtype=object)
    ok = apply_mapping(m, raw)
    assert len(ok.good) == 1
    m2 = mappings["service_requests"]
    raw = pd.DataFrame({"ticket_id": ["SR-1"], "opened_at": ["2026-11-03T10:00:00Z"], "requester.email": ["jane.doe@example.com"],
                        "priority": ["jetzt"]}, dtype=object)
    out = apply_mapping(m2, raw)
    assert "jane.doe" not in out.bad_reasons[0]
    raw = pd.DataFrame({"eventId": ["1"], "occurredAt": ["nicht"], "email": ["jane.doe@example.com"]}, dtype=object)
    out = apply_mapping(mappings["erasure_requests"], raw)
    assert out.bad_reasons == ["occurredAt -> requested_at: 'nicht' is not a valid date/time (expected epoch_ms)"]


def test_require_any_group(mappings):
    raw = pd.DataFrame({"eventId": ["1"], "occurredAt": ["1762160040000"], "objectId": [None], "email": [None]}, dtype=object)
    out = apply_mapping(mappings["erasure_requests"], raw)
    assert out.bad_reasons == ["at least one of email, crm_contact_id is needed"]


def test_unreadable_records_report_only_why(mappings):
    raw = pd.DataFrame({"eventId": [None]}, dtype=object)
    out = apply_mapping(mappings["erasure_requests"], raw, ["line 3: invalid JSON at column 5: Expecting value"])
    assert out.bad_reasons == ["line 3: invalid JSON at column 5: Expecting value"]


@pytest.mark.parametrize("type_, values, expected, bad", [
    ("string", ["a", "", None], ["a", None, None], [False, False, False]),
    ("integer", ["12", "1.5", "x", None], [12, None, None, None], [False, True, True, False]),
    ("decimal", ["12.5", "1,5", None], [12.5, None, None], [False, True, False]),
    ("date", ["2026-11-03", "03.11.2026"], [pd.Timestamp("2026-11-03"), None], [False, True]),
    ("datetime", ["2026-11-03T10:00:00Z", "later"], [pd.Timestamp("2026-11-03 10:00", tz="UTC"), None], [False, True]),
    ("boolean", ["true", "Nein", "maybe"], [True, False, None], [False, False, True]),
])
def test_coerce_reads_plain_notation_and_flags_the_rest(type_, values, expected, bad):
    typed, flags = coerce(pd.Series(values, dtype=object), type_)
    got = [None if pd.isna(v) else v for v in typed.tolist()]
    assert got == expected
    assert flags.tolist() == bad
