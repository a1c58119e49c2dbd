"""YAML loading: errors name the file, the key path and the line."""

from __future__ import annotations

import pytest

from crm_pipelines.core.platform.configfile import ConfigError, load_yaml


def test_line_of_nested_keys_and_dotted_names(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("a: 1\nfields:\n  properties.email:\n    transforms:\n      - trim\n      - lower\n", encoding="utf-8")
    doc = load_yaml(f)
    assert doc.line_of("fields.properties.email.transforms[1]") == 6
    assert doc.line_of("fields.properties.email") == 4
    assert doc.line_of("a") == 1
    err = doc.error("fields.properties.email.transforms[1]", "bad")
    assert str(err) == f"{f}:6: fields.properties.email.transforms[1]: bad"


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_yaml(tmp_path / "missing.yaml")
    f = tmp_path / "latin.yaml"
    f.write_bytes("a: 1\nb: Müller\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_yaml(f)
    assert err.value.line == 2 and "not UTF-8" in str(err.value)



def test_operations_ingest_first_names_known_sources(tmp_path):
    """config/operations.yaml's ingest_first: a name that is no source's is an error naming file, key and line."""
    from crm_pipelines.core.platform.operations import load_operations

    sources = ("behaviour_events", "crm_contacts", "web_form_leads")
    f = tmp_path / "operations.yaml"
    f.write_text("scoring_ranges: 4\ningest_first:\n  - behaviour_events\n  - crm_contcts\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_operations(f, sources=sources)
    assert (err.value.key, err.value.line) == ("ingest_first[1]", 4) and "unknown source 'crm_contcts'" in str(err.value)
    f.write_text("ingest_first: behaviour_events\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ingest_first: must be a list of distinct source names"):
        load_operations(f)
    f.write_text("ingest_first: [crm_contacts, behaviour_events]\n", encoding="utf-8")
    assert load_operations(f, sources=sources).ingest_first == ("crm_contacts", "behaviour_events")
