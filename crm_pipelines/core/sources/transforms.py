"""Column transforms that field mappings may apply, vectorised over a pandas Series.

A transform gets a Series of raw values (``str`` or missing) and returns the new
values plus, per row, a problem description or ``None``. Problems never contain
the value itself: the mapper adds it, masked when the target field is personal.

Transforms are named in the mapping YAML either bare (``trim``) or with
parameters (``{parse_date: {formats: ["%d.%m.%Y"]}}``); :func:`parse_step`
validates the parameters with errors that name file and key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from ..platform.configfile import YamlDoc

Result = tuple[Any, "pd.Series | None"]  # (Series or tuple of Series for multi-output, problems)

NAME_PARTICLES = frozenset(
    {"von", "van", "de", "der", "den", "zu", "vom", "zum", "zur", "ten", "ter", "di", "da", "del", "la", "le", "dos"}
)
SALUTATION_WORDS = {"herr": "Herr", "frau": "Frau", "hr.": "Herr", "fr.": "Frau", "divers": "divers"}
TITLE_RE = re.compile(r"^(prof\.?|dr\.?|dipl\.?-?\w*\.?|ing\.?|mag\.?|med\.?|rer\.?|nat\.?|h\.?c\.?|mba|msc|bsc)$", re.I)


@dataclass(frozen=True)
class Step:
    name: str
    params: Any
    key: str  # where in the mapping file the step was written, for messages


@dataclass(frozen=True)
class TransformDef:
    name: str
    doc: str
    validate: Callable[[YamlDoc, str, Any], Any]
    apply: Callable[[pd.Series, Any], Result]
    outputs: tuple[int, ...] = (1,)  # how many targets the transform may fill


def _missing(s: pd.Series) -> pd.Series:
    return s.isna()


def _no_params(doc: YamlDoc, key: str, params: Any) -> None:
    if params is not None:
        raise doc.error(key, "takes no parameters")
    return None


def _as_object(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), None)


# --- string cleanup ------------------------------------------------------------------------

def _trim(s: pd.Series, _p) -> Result:
    out = s.str.strip()
    return out.mask(out == ""), None


def _collapse_whitespace(s: pd.Series, _p) -> Result:
    out = s.str.replace(r"\s+", " ", regex=True).str.strip()
    return out.mask(out == ""), None


def _case(fn: str):
    def apply(s: pd.Series, _p) -> Result:
        return getattr(s.str, fn)(), None
    return apply


def _validate_null_if(doc: YamlDoc, key: str, params: Any):
    if not isinstance(params, list) or not all(isinstance(v, (str, int)) for v in params):
        raise doc.error(key, "null_if takes a list of values that mean 'missing', e.g. ['-', 'n/a', '00000000']")
    return frozenset(str(v) for v in params)


def _null_if(s: pd.Series, values) -> Result:
    return s.mask(s.isin(values)), None


def _validate_replace(doc: YamlDoc, key: str, params: Any):
    if not isinstance(params, dict) or set(params) - {"pattern", "with"} or "pattern" not in params:
        raise doc.error(key, "replace takes {pattern: <regex>, with: <text>}")
    try:
        re.compile(params["pattern"])
    except re.error as exc:
        raise doc.error(f"{key}.pattern", f"invalid regular expression: {exc}") from exc
    return (params["pattern"], str(params.get("with", "")))


def _replace(s: pd.Series, params) -> Result:
    pattern, repl = params
    return s.str.replace(pattern, repl, regex=True), None


def _validate_zfill(doc: YamlDoc, key: str, params: Any):
    if not isinstance(params, int) or isinstance(params, bool) or not 1 <= params <= 64:
        raise doc.error(key, "zfill takes the target width, e.g. {zfill: 5} for German PLZ")
    return params


def _zfill(s: pd.Series, width: int) -> Result:
    digits = s.str.fullmatch(r"\d+").fillna(False).astype(bool)
    return s.where(~digits, s.str.zfill(width)), None


def _validate_default(doc: YamlDoc, key: str, params: Any):
    if params is None or isinstance(params, (dict, list)):
        raise doc.error(key, "default takes one constant value, e.g. {default: DE}")
    return _scalar_to_text(params)


def _default(s: pd.Series, value: str) -> Result:
    return s.where(s.notna(), value), None


def _scalar_to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- value maps ----------------------------------------------------------------------------

def _validate_value_map(doc: YamlDoc, key: str, params: Any):
    if not isinstance(params, dict) or not params:
        raise doc.error(key, "value_map takes a mapping of source value to canonical value")
    if "map" in params:
        extra = set(params) - {"map", "otherwise", "ignore_case"}
        if extra:
            raise doc.error(f"{key}.{sorted(extra)[0]}", "unknown option; allowed: map, otherwise, ignore_case")
        mapping = params["map"]
        otherwise = params.get("otherwise", "error")
        otherwise = "null" if otherwise is None else otherwise
        ignore_case = params.get("ignore_case", True)
        if otherwise not in ("error", "keep", "null"):
            raise doc.error(f"{key}.otherwise", "must be one of: error, keep, null")
        if not isinstance(mapping, dict) or not mapping:
            raise doc.error(f"{key}.map", "must be a non-empty mapping")
        map_key = f"{key}.map"
    else:
        mapping, otherwise, ignore_case, map_key = params, "error", True, key
    out = {}
    for k, v in mapping.items():
        if isinstance(k, bool) or isinstance(v, bool):
            raise doc.error(f"{map_key}", f"YAML read '{k}: {v}' as a boolean; quote codes such as 'J', 'N', 'yes', 'no', 'on', 'off'")
        if k is None:
            raise doc.error(f"{map_key}", "a key is empty (null); quote it or use null_if for missing values")
        src = str(k).strip()
        out[src.casefold() if ignore_case else src] = None if v is None else str(v)
    shown = ", ".join(str(k).strip() for k in mapping)
    return (out, otherwise, ignore_case, shown)


def _value_map(s: pd.Series, params) -> Result:
    mapping, otherwise, ignore_case, shown = params
    keys = s.str.strip()
    if ignore_case:
        keys = keys.str.casefold()
    known = keys.isin(mapping.keys())
    mapped = keys.map(mapping)
    present = s.notna()
    if otherwise == "keep":
        out = mapped.where(known, s)
    else:
        out = mapped.where(known, None)
    problems = None
    if otherwise == "error":
        bad = present & ~known
        if bad.any():
            problems = pd.Series(np.where(bad, f"is not one of the mapped values ({shown})", None), index=s.index, dtype=object)
    return out, problems


# --- names ---------------------------------------------------------------------------------

def split_full_name(name: str) -> tuple[str | None, str | None, str | None, str | None]:
    """'Herr Dr. Hans-Peter von Müller' -> ('Herr', 'Dr.', 'Hans-Peter', 'von Müller').

    Also reads 'Müller, Hans'. The family name starts at the first name particle
    (von, van, de, zu, ...) after the first given name, else it is the last word.
    """
    text = " ".join(name.split())
    salutation = None
    titles: list[str] = []
    if "," in text:
        last, _, first = (p.strip() for p in text.partition(","))
        tokens = first.split()
        rest = tokens
    else:
        tokens = text.split()
        rest = tokens
        last = None
    while rest and rest[0].casefold() in SALUTATION_WORDS:
        salutation = SALUTATION_WORDS[rest[0].casefold()]
        rest = rest[1:]
    while rest and TITLE_RE.match(rest[0]):
        titles.append(rest[0])
        rest = rest[1:]
    title = " ".join(titles) or None
    if last is not None:
        return salutation, title, " ".join(rest) or None, last or None
    if not rest:
        return salutation, title, None, None
    if len(rest) == 1:
        return salutation, title, None, rest[0]
    split_at = len(rest) - 1
    for i in range(1, len(rest) - 1):
        if rest[i].casefold() in NAME_PARTICLES:
            split_at = i
            break
    return salutation, title, " ".join(rest[:split_at]), " ".join(rest[split_at:])


def _split_full_name(s: pd.Series, _p) -> Result:
    parts = [split_full_name(v) if isinstance(v, str) else (None, None, None, None) for v in s.tolist()]
    cols = list(zip(*parts)) if parts else [(), (), (), ()]
    return tuple(pd.Series(list(c), index=s.index, dtype=object) for c in cols), None


# --- typed parsing -------------------------------------------------------------------------

def _validate_formats(doc: YamlDoc, key: str, params: Any, default: list[str], what: str):
    if params is None:
        return {"formats": default}
    if not isinstance(params, dict):
        raise doc.error(key, f"{what} takes {{formats: [...]}} (strftime patterns)")
    formats = params.get("formats", default)
    if not isinstance(formats, list) or not formats or not all(isinstance(f, str) for f in formats):
        raise doc.error(f"{key}.formats", "must be a non-empty list of strftime patterns such as '%d.%m.%Y'")
    return {**params, "formats": formats}


DATE_FORMATS = ["%d.%m.%Y", "%Y-%m-%d"]
_FORMAT_LABELS = {"%d": "DD", "%m": "MM", "%Y": "YYYY", "%y": "YY", "%H": "hh", "%M": "mm", "%S": "ss"}


def _label(fmt: str) -> str:
    if fmt in ("ISO8601", "epoch_ms", "epoch_s"):
        return fmt
    for k, v in _FORMAT_LABELS.items():
        fmt = fmt.replace(k, v)
    return fmt.replace("%z", "±hh:mm").replace("%f", "ffffff")


def _validate_parse_date(doc: YamlDoc, key: str, params: Any):
    p = _validate_formats(doc, key, params, DATE_FORMATS, "parse_date")
    extra = set(p) - {"formats"}
    if extra:
        raise doc.error(f"{key}.{sorted(extra)[0]}", "unknown option; allowed: formats")
    return p


def in_range(parsed: pd.Series) -> pd.Series:
    """Dates a nanosecond timestamp can hold (1678-2261); beyond that a date is a typo ("14920611")."""
    if parsed.empty:
        return parsed
    years = parsed.dt.year
    return parsed.where((years >= 1678) & (years <= 2261))


def _parse_with_formats(s: pd.Series, formats: list[str]) -> pd.Series:
    result = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    todo = s.notna()
    for fmt in formats:
        if not todo.any():
            break
        parsed = in_range(pd.to_datetime(s[todo], format=fmt, errors="coerce"))
        ok = parsed.notna()
        result.loc[ok[ok].index] = parsed[ok]
        todo.loc[ok[ok].index] = False
    return result


def _parse_date(s: pd.Series, params) -> Result:
    formats = params["formats"]
    parsed = _parse_with_formats(s, formats).dt.normalize()
    bad = s.notna() & parsed.isna()
    problems = None
    if bad.any():
        msg = f"is not a valid date (expected {' or '.join(_label(f) for f in formats)})"
        problems = pd.Series(np.where(bad, msg, None), index=s.index, dtype=object)
    return parsed, problems


DATETIME_FORMATS = ["ISO8601", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y"]
_OFFSET_RE = r"(?:Z|[+-]\d{2}:?\d{2})$"


def _validate_parse_datetime(doc: YamlDoc, key: str, params: Any):
    p = _validate_formats(doc, key, params, DATETIME_FORMATS, "parse_datetime")
    extra = set(p) - {"formats", "timezone"}
    if extra:
        raise doc.error(f"{key}.{sorted(extra)[0]}", "unknown option; allowed: formats, timezone")
    tz = p.get("timezone", "Europe/Berlin")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise doc.error(f"{key}.timezone", f"unknown time zone '{tz}' (use an IANA name such as Europe/Berlin)") from exc
    return {"formats": p["formats"], "timezone": tz}


def _parse_datetime(s: pd.Series, params) -> Result:
    """Parses to UTC. Values without an offset are local time in ``timezone`` (default Europe/Berlin)."""
    tz = params["timezone"]
    result = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    todo = s.notna()
    for fmt in params["formats"]:
        if not todo.any():
            break
        sub = s[todo]
        if fmt in ("epoch_ms", "epoch_s"):
            numeric = pd.to_numeric(sub.where(sub.str.fullmatch(r"-?\d+(\.\d+)?").fillna(False).astype(bool)), errors="coerce")
            parsed = pd.to_datetime(numeric, unit="ms" if fmt == "epoch_ms" else "s", utc=True, errors="coerce")
        elif fmt == "ISO8601":
            has_offset = sub.str.contains(_OFFSET_RE, regex=True).fillna(False).astype(bool)
            parsed = pd.Series(pd.NaT, index=sub.index, dtype="datetime64[ns, UTC]")
            if has_offset.any():
                parsed.loc[has_offset] = in_range(pd.to_datetime(sub[has_offset], format="ISO8601", utc=True, errors="coerce"))
            naive = ~has_offset
            if naive.any():
                # Only strings that start like an ISO date; '03.11.2026' must fall through to the next format.
                iso_like = sub[naive].where(sub[naive].str.match(r"^\d{4}-\d{2}-\d{2}").fillna(False).astype(bool))
                local = in_range(pd.to_datetime(iso_like, format="ISO8601", errors="coerce"))
                parsed.loc[naive] = _localize(local, tz)
        else:
            local = in_range(pd.to_datetime(sub, format=fmt, errors="coerce"))
            if getattr(local.dt, "tz", None) is not None:
                parsed = local.dt.tz_convert("UTC")
            else:
                parsed = _localize(local, tz)
        ok = parsed.notna()
        idx = ok[ok].index
        result.loc[idx] = parsed[ok]
        todo.loc[idx] = False
    bad = s.notna() & result.isna()
    problems = None
    if bad.any():
        msg = f"is not a valid date/time (expected {' or '.join(_label(f) for f in params['formats'])})"
        problems = pd.Series(np.where(bad, msg, None), index=s.index, dtype=object)
    return result, problems


def _localize(local: pd.Series, tz: str) -> pd.Series:
    local = pd.to_datetime(local)
    if local.dt.tz is not None:
        return local.dt.tz_convert("UTC")
    # In the autumn hour that occurs twice, take the first (summer-time) one: that is how a
    # person reading the wall clock in the morning of the change would have meant it.
    ambiguous = np.ones(len(local), dtype=bool)
    return local.dt.tz_localize(tz, ambiguous=ambiguous, nonexistent="shift_forward").dt.tz_convert("UTC")


_DE_DECIMAL = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?[+-]?"
_EN_DECIMAL = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[+-]?"


def _validate_style(doc: YamlDoc, key: str, params: Any, name: str):
    if params is None:
        return "de"
    if isinstance(params, dict) and set(params) <= {"style"} and params.get("style") in ("de", "en"):
        return params["style"]
    raise doc.error(key, f"{name} takes {{style: de}} (1.234,56) or {{style: en}} (1,234.56)")


def _to_number(s: pd.Series, style: str) -> tuple[pd.Series, pd.Series]:
    text = s.str.replace(r"\s", "", regex=True)
    pattern = _DE_DECIMAL if style == "de" else _EN_DECIMAL
    wellformed = text.str.fullmatch(pattern).fillna(False).astype(bool)
    thousands, decimal = (".", ",") if style == "de" else (",", ".")
    norm = text.str.replace(thousands, "", regex=False).str.replace(decimal, ".", regex=False)
    # ERP exports write negative amounts with a trailing sign ("123,45-").
    trailing_minus = norm.str.endswith("-").fillna(False).astype(bool)
    norm = norm.str.rstrip("+-").where(~trailing_minus, "-" + norm.str.rstrip("+-"))
    values = pd.to_numeric(norm.where(wellformed), errors="coerce")
    bad = s.notna() & ~wellformed
    return values, bad


def _parse_decimal(s: pd.Series, style: str) -> Result:
    values, bad = _to_number(s, style)
    problems = None
    if bad.any():
        example = "1.234,56" if style == "de" else "1,234.56"
        problems = pd.Series(np.where(bad, f"is not a decimal number (expected e.g. {example})", None), index=s.index, dtype=object)
    return values.astype("float64"), problems


def _parse_int(s: pd.Series, style: str) -> Result:
    values, bad = _to_number(s, style)
    fractional = values.notna() & (values != np.floor(values.fillna(0)))
    bad = bad | fractional
    problems = None
    if bad.any():
        problems = pd.Series(np.where(bad, "is not a whole number", None), index=s.index, dtype=object)
    return values.where(~bad).round().astype("Int64"), problems


BOOL_TRUE = ["1", "true", "ja", "j", "yes", "y", "x", "wahr"]
BOOL_FALSE = ["0", "false", "nein", "n", "no", "falsch"]


def _validate_parse_bool(doc: YamlDoc, key: str, params: Any):
    if params is None:
        return (frozenset(BOOL_TRUE), frozenset(BOOL_FALSE))
    if isinstance(params, dict):
        # YAML reads the keys `true:` and `false:` as booleans; both spellings mean the same here.
        params = {({True: "true", False: "false"}.get(k, k) if isinstance(k, bool) else k): v for k, v in params.items()}
    if not isinstance(params, dict) or set(params) - {"true", "false"}:
        raise doc.error(key, "parse_bool takes {true: [...], false: [...]} (values compared case-insensitively)")
    true = params.get("true", BOOL_TRUE)
    false = params.get("false", BOOL_FALSE)
    for name, vals in (("true", true), ("false", false)):
        if not isinstance(vals, list) or any(isinstance(v, bool) for v in vals):
            raise doc.error(f"{key}.{name}", "must be a list of quoted strings (YAML reads yes/no/true as booleans)")
    return (frozenset(str(v).casefold() for v in true), frozenset(str(v).casefold() for v in false))


def _parse_bool(s: pd.Series, params) -> Result:
    true, false = params
    key = s.str.strip().str.casefold()
    is_true = key.isin(true)
    is_false = key.isin(false)
    out = pd.Series(pd.NA, index=s.index, dtype="boolean")
    out[is_true] = True
    out[is_false] = False
    bad = s.notna() & ~is_true & ~is_false
    problems = None
    if bad.any():
        msg = f"is not a yes/no value (true: {', '.join(sorted(true))}; false: {', '.join(sorted(false))})"
        problems = pd.Series(np.where(bad, msg, None), index=s.index, dtype=object)
    return out, problems


TRANSFORMS: dict[str, TransformDef] = {
    t.name: t
    for t in (
        TransformDef("trim", "strip surrounding white space; empty becomes missing", _no_params, _trim),
        TransformDef("collapse_whitespace", "runs of white space become one blank", _no_params, _collapse_whitespace),
        TransformDef("lower", "lower case", _no_params, _case("lower")),
        TransformDef("upper", "upper case", _no_params, _case("upper")),
        TransformDef("title", "title case (HANS MÜLLER -> Hans Müller)", _no_params, _case("title")),
        TransformDef("null_if", "values that mean missing, e.g. ['-', 'n/a', '00000000']", _validate_null_if, _null_if),
        TransformDef("replace", "regular-expression replace {pattern, with}", _validate_replace, _replace),
        TransformDef("zfill", "left-pad digit strings with zeros to a width (PLZ 1067 -> 01067)", _validate_zfill, _zfill),
        TransformDef("default", "constant used when the value is missing", _validate_default, _default),
        TransformDef("value_map", "code table, e.g. Anrede {H: Herr, F: Frau}; unmapped values are errors unless otherwise: keep|null",
                     _validate_value_map, _value_map),
        TransformDef("split_full_name", "full name -> [first, last] or [title, first, last] or [salutation, title, first, last]",
                     _no_params, _split_full_name, outputs=(2, 3, 4)),
        TransformDef("parse_date", "date from German or ISO text (formats: strftime list)", _validate_parse_date, _parse_date),
        TransformDef("parse_datetime", "date/time to UTC; naive values are local to timezone (default Europe/Berlin); formats may include ISO8601, epoch_ms, epoch_s",
                     _validate_parse_datetime, _parse_datetime),
        TransformDef("parse_decimal", "number with decimal comma (style de, default) or point (style en)",
                     lambda d, k, p: _validate_style(d, k, p, "parse_decimal"), _parse_decimal),
        TransformDef("parse_int", "whole number, German thousands separators allowed",
                     lambda d, k, p: _validate_style(d, k, p, "parse_int"), _parse_int),
        TransformDef("parse_bool", "yes/no values (ja/nein, x, 1/0, true/false)", _validate_parse_bool, _parse_bool),
    )
}

# Transforms after which the values are no longer text.
TYPED_OUTPUT = {"parse_date": "date", "parse_datetime": "datetime", "parse_decimal": "decimal",
                "parse_int": "integer", "parse_bool": "boolean"}


def parse_step(doc: YamlDoc, key: str, spec: Any) -> Step:
    from ..platform.configfile import did_you_mean

    if isinstance(spec, str):
        name, params = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        name, params = next(iter(spec.items()))
    else:
        raise doc.error(key, "a transform is a name (trim) or a one-key mapping ({zfill: 5})")
    if name not in TRANSFORMS:
        raise doc.error(key, f"unknown transform '{name}'{did_you_mean(str(name), TRANSFORMS)}; known: {', '.join(TRANSFORMS)}")
    params = TRANSFORMS[name].validate(doc, key, params)
    return Step(name=name, params=params, key=key)


def apply_steps(s: pd.Series, steps: tuple[Step, ...]) -> tuple[Any, list[tuple[Step, pd.Series]]]:
    """Runs a chain; returns the final value(s) and the problems each step raised.

    A row with a problem keeps flowing (as missing) so that every problem of a record
    is reported at once rather than one per re-delivery.
    """
    problems: list[tuple[Step, pd.Series]] = []
    value: Any = s
    failed: pd.Series | None = None
    for step in steps:
        value, prob = TRANSFORMS[step.name].apply(value, step.params)
        if prob is not None:
            problems.append((step, prob))
            failed = prob.notna() if failed is None else failed | prob.notna()
        if failed is not None and not isinstance(value, tuple):
            # A value that failed once stays missing: a later default must not paper over it.
            value = value.mask(failed)
    return value, problems
