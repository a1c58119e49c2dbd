"""Every transform a mapping may use, on small Series, including the problems it reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crm_pipelines.core.platform.configfile import ConfigError, load_yaml
from crm_pipelines.core.sources.transforms import apply_steps, parse_step, split_full_name


def steps(tmp_path: Path, *specs):
    """Parses transform specs as they would appear in a mapping file."""
    import yaml

    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump({"t": list(specs)}, allow_unicode=True, sort_keys=False), encoding="utf-8")
    doc = load_yaml(f)
    return tuple(parse_step(doc, f"t[{i}]", s) for i, s in enumerate(doc.data["t"]))


def run(tmp_path, values, *specs):
    out, problems = apply_steps(pd.Series(values, dtype=object), steps(tmp_path, *specs))
    return out, problems


def as_list(s):
    return [None if (v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)) or v is pd.NaT) else v for v in s]


def test_trim_makes_blank_missing(tmp_path):
    out, problems = run(tmp_path, ["  Jörg ", "   ", None, "x"], "trim")
    assert as_list(out) == ["Jörg", None, None, "x"]
    assert problems == []


def test_collapse_whitespace_and_case(tmp_path):
    out, _ = run(tmp_path, ["Musterfirma   GmbH \t& Co.  KG"], "collapse_whitespace")
    assert as_list(out) == ["Musterfirma GmbH & Co. KG"]
    assert as_list(run(tmp_path, ["Max.Muster@Firma.DE"], "lower")[0]) == ["max.muster@firma.de"]
    assert as_list(run(tmp_path, ["de"], "upper")[0]) == ["DE"]
    assert as_list(run(tmp_path, ["HANS MÜLLER"], "title")[0]) == ["Hans Müller"]


def test_null_if_and_default(tmp_path):
    out, _ = run(tmp_path, ["00000000", "-", "20240101", None], {"null_if": ["00000000", "-"]}, {"default": "n/a"})
    assert as_list(out) == ["n/a", "n/a", "20240101", "n/a"]


def test_replace_regex(tmp_path):
    out, _ = run(tmp_path, ["Hauptstr. 5", "Hauptstrasse 5"], {"replace": {"pattern": r"str(\.|asse)", "with": "straße"}})
    assert as_list(out) == ["Hauptstraße 5", "Hauptstraße 5"]


def test_zfill_pads_only_digit_strings(tmp_path):
    out, _ = run(tmp_path, ["1067", "01067", "A-1010", None], {"zfill": 5})
    assert as_list(out) == ["01067", "01067", "A-1010", None]


def test_value_map_short_form_rejects_unknown_codes(tmp_path):
    out, problems = run(tmp_path, ["H", "f", "X", None], {"value_map": {"H": "Herr", "F": "Frau"}})
    assert as_list(out) == ["Herr", "Frau", None, None]
    assert len(problems) == 1
    assert as_list(problems[0][1]) == [None, None, "is not one of the mapped values (H, F)", None]


@pytest.mark.parametrize("otherwise, expected", [("keep", ["DE", "Italien"]), ("null", ["DE", None])])
def test_value_map_otherwise(tmp_path, otherwise, expected):
    out, problems = run(tmp_path, ["Deutschland", "Italien"], {"value_map": {"map": {"Deutschland": "DE"}, "otherwise": otherwise}})
    assert as_list(out) == expected
    assert problems == []


def test_value_map_can_map_to_missing(tmp_path):
    out, problems = run(tmp_path, ["keine Angabe", "Frau"], {"value_map": {"keine Angabe": None, "Frau": "Frau"}})
    assert as_list(out) == [None, "Frau"]
    assert problems == []


@pytest.mark.parametrize("name, expected", [
    ("Max Mustermann", (None, None, "Max", "Mustermann")),
    ("Mustermann, Max", (None, None, "Max", "Mustermann")),
    ("Herr Dr. Hans-Peter von Müller", ("Herr", "Dr.", "Hans-Peter", "von Müller")),
    ("Frau Prof. Dr. Anna Maria van der Berg", ("Frau", "Prof. Dr.", "Anna Maria", "van der Berg")),
    ("Dipl.-Ing. Jörg Weiß", (None, "Dipl.-Ing.", "Jörg", "Weiß")),
    ("Schmidt", (None, None, None, "Schmidt")),
    ("  Hans   Peter  Meier ", (None, None, "Hans Peter", "Meier")),
])
def test_split_full_name(name, expected):
    assert split_full_name(name) == expected


def test_split_full_name_transform_fills_last_targets(tmp_path):
    out, _ = run(tmp_path, ["Herr Dr. Max Müller", None], "split_full_name")
    salutation, title, first, last = (as_list(s) for s in out)
    assert (salutation, title, first, last) == (["Herr", None], ["Dr.", None], ["Max", None], ["Müller", None])


def test_parse_date_german_and_iso(tmp_path):
    out, problems = run(tmp_path, ["03.11.2026", "2026-11-03", "31.02.2026", "morgen", None], "parse_date")
    assert [d.date().isoformat() if d is not None else None for d in as_list(out)] == ["2026-11-03", "2026-11-03", None, None, None]
    msgs = as_list(problems[0][1])
    assert msgs[2] == msgs[3] == "is not a valid date (expected DD.MM.YYYY or YYYY-MM-DD)"
    assert msgs[0] is None and msgs[4] is None


def test_parse_date_custom_format(tmp_path):
    out, problems = run(tmp_path, ["20040315", "20261341"], {"parse_date": {"formats": ["%Y%m%d"]}})
    assert as_list(out)[0].date().isoformat() == "2004-03-15"
    assert as_list(problems[0][1])[1] == "is not a valid date (expected YYYYMMDD)"


def test_parse_datetime_local_time_becomes_utc(tmp_path):
    out, problems = run(tmp_path, [
        "03.11.2026 14:35",            # CET, winter: UTC+1
        "2026-07-01 12:00:00",         # CEST, summer: UTC+2
        "2026-11-03T09:14:00+01:00",   # explicit offset
        "2026-11-03T08:14:00Z",
        "1762160040000",               # epoch ms is only read when listed
    ], "parse_datetime")
    got = as_list(out)
    assert got[0] == pd.Timestamp("2026-11-03 13:35", tz="UTC")
    assert got[1] == pd.Timestamp("2026-07-01 10:00", tz="UTC")
    assert got[2] == got[3] == pd.Timestamp("2026-11-03 08:14", tz="UTC")
    assert got[4] is None and as_list(problems[0][1])[4].startswith("is not a valid date/time")


def test_parse_datetime_epoch_ms_and_ambiguous_autumn_hour(tmp_path):
    out, _ = run(tmp_path, ["1762160040000"], {"parse_datetime": {"formats": ["epoch_ms"]}})
    assert as_list(out)[0] == pd.Timestamp(1762160040000, unit="ms", tz="UTC")
    # 25 Oct 2026, 02:30 happens twice in Berlin; the first (summer-time) one is taken.
    out, _ = run(tmp_path, ["25.10.2026 02:30"], {"parse_datetime": {"formats": ["%d.%m.%Y %H:%M"]}})
    assert as_list(out)[0] == pd.Timestamp("2026-10-25 00:30", tz="UTC")


def test_parse_decimal_german_and_english(tmp_path):
    out, problems = run(tmp_path, ["1.234,56", "12,5", "123,45-", "12.34.56,7", "1.5", None], "parse_decimal")
    assert as_list(out)[:3] == [1234.56, 12.5, -123.45]
    msgs = as_list(problems[0][1])
    assert msgs[3] == msgs[4] == "is not a decimal number (expected e.g. 1.234,56)"
    out, problems = run(tmp_path, ["1,234.56", "48000000"], {"parse_decimal": {"style": "en"}})
    assert as_list(out) == [1234.56, 48000000.0] and problems == []


def test_parse_int(tmp_path):
    out, problems = run(tmp_path, ["  479", "1.250", "12,5", "viele"], "parse_int")
    assert as_list(out)[:2] == [479, 1250]
    assert as_list(problems[0][1])[2:] == ["is not a whole number", "is not a whole number"]


def test_parse_bool_defaults_and_custom(tmp_path):
    out, problems = run(tmp_path, ["ja", "Nein", "x", "1", "vielleicht"], "parse_bool")
    assert as_list(out)[:4] == [True, False, True, True]
    assert as_list(problems[0][1])[4].startswith("is not a yes/no value")
    out, problems = run(tmp_path, ["X", "-"], {"parse_bool": {"true": ["X"], "false": ["-"]}})
    assert as_list(out) == [True, False] and problems == []


def test_a_failed_step_leaves_the_value_missing_for_later_steps(tmp_path):
    out, problems = run(tmp_path, ["Q", "O"], {"value_map": {"O": "open"}}, {"default": "open"})
    # The bad code must not be papered over by the default that follows.
    assert as_list(out) == [None, "open"]
    assert len(problems) == 1


@pytest.mark.parametrize("spec, message", [
    ("trimm", "unknown transform 'trimm' (did you mean 'trim'?)"),
    ({"zfill": "5"}, "zfill takes the target width"),
    ({"zfill": 5, "trim": None}, "a transform is a name (trim) or a one-key mapping"),
    ({"value_map": {"J": True}}, "YAML read 'J: True' as a boolean"),
    ({"value_map": {"map": {"a": "b"}, "otherwise": "drop"}}, "must be one of: error, keep, null"),
    ({"replace": {"pattern": "("}}, "invalid regular expression"),
    ({"parse_date": {"formats": "DD.MM.YYYY"}}, "must be a non-empty list of strftime patterns"),
    ({"parse_datetime": {"timezone": "Mars/Olympus"}}, "unknown time zone 'Mars/Olympus'"),
    ({"parse_decimal": {"style": "fr"}}, "parse_decimal takes {style: de}"),
    ({"parse_bool": {"true": [True]}}, "must be a list of quoted strings"),
    ({"null_if": "n/a"}, "null_if takes a list"),
    ({"default": None}, "default takes one constant value"),
    ({"trim": 1}, "takes no parameters"),
])
def test_transform_parameter_errors_name_file_and_key(tmp_path, spec, message):
    with pytest.raises(ConfigError) as err:
        steps(tmp_path, "trim", spec)
    text = str(err.value)
    assert message in text
    assert "m.yaml" in text and "t[1]" in text
