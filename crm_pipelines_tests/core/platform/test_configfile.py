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
