"""Declarative field mappings: one YAML file per source, validated against the canonical model.

Every source field is mapped explicitly onto one canonical field (or listed under
``ignore`` with the reason it is not needed); a mapping that names an unknown
canonical field, maps two source fields onto one target, leaves a required field
unmapped or uses an unknown transform does not load, and the error names the file
and key. The content hash of the mapping (and of its fixed-width layout) is the
Dagster ``code_version`` of the asset, so an edited mapping shows the asset stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..model import ENTITIES, Entity
from ..platform.configfile import ConfigError, YamlDoc, check_keys, did_you_mean, load_yaml, require_mapping
from ..platform.masking import mask_value
from .transforms import TRANSFORMS, TYPED_OUTPUT, Step, apply_steps, in_range, parse_step

FORMAT_TYPES = ("csv", "jsonl", "json", "fixed_width")
UNKNOWN_FIELD_POLICIES = ("error", "quarantine", "ignore")


@dataclass(frozen=True)
class LayoutField:
    name: str
    start: int  # 1-based, as in the ERP's record description
    length: int

    @property
    def end(self) -> int:  # exclusive, 0-based slice end
        return self.start - 1 + self.length


@dataclass(frozen=True)
class FixedWidthLayout:
    file: Path
    record_length: int
    encoding: str
    fields: tuple[LayoutField, ...]
    sha256: str


@dataclass(frozen=True)
class FormatSpec:
    type: str
    encoding: str = "utf-8"
    delimiter: str = ","
    quotechar: str = '"'
    records_path: str | None = None  # json: where the record list is in the document
    layout: FixedWidthLayout | None = None


@dataclass(frozen=True)
class FieldMapping:
    source_field: str
    targets: tuple[str, ...]
    steps: tuple[Step, ...]
    optional: bool
    key: str


@dataclass(frozen=True)
class SourceMapping:
    source: str
    entity: Entity
    description: str
    file: Path
    pattern: str
    format: FormatSpec
    fields: tuple[FieldMapping, ...]
    ignored: frozenset[str]
    constants: dict[str, str]
    on_unknown_field: str
    code_version: str
    owner: str | None = None
    max_quarantine_rate: float = 0.05
    expect_files: str = "daily"  # daily: every day must deliver; sporadic: only some days do

    @property
    def source_fields(self) -> tuple[str, ...]:
        return tuple(f.source_field for f in self.fields)

    @property
    def known_source_fields(self) -> frozenset[str]:
        return frozenset(self.source_fields) | self.ignored

    def target_of(self, source_field: str) -> tuple[str, ...]:
        for f in self.fields:
            if f.source_field == source_field:
                return f.targets
        raise KeyError(source_field)


# --------------------------------------------------------------------------- loading

def load_layout(path: Path) -> FixedWidthLayout:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("description", "record_length", "encoding", "fields"), ("record_length", "fields"))
    length = data["record_length"]
    if not isinstance(length, int) or length <= 0:
        raise doc.error("record_length", "must be a positive whole number of characters")
    encoding = data.get("encoding", "cp850")
    try:
        "x".encode(encoding)
    except LookupError as exc:
        raise doc.error("encoding", f"unknown encoding '{encoding}'") from exc
    if not isinstance(data["fields"], list) or not data["fields"]:
        raise doc.error("fields", "must be a list of {name, start, length}")
    fields: list[LayoutField] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(data["fields"]):
        key = f"fields[{i}]"
        raw = require_mapping(doc, raw, key)
        check_keys(doc, raw, key, ("name", "start", "length", "description"), ("name", "start", "length"))
        name, start, flen = raw["name"], raw["start"], raw["length"]
        if not isinstance(name, str) or not name:
            raise doc.error(f"{key}.name", "must be a non-empty string")
        if name in seen:
            raise doc.error(f"{key}.name", f"column '{name}' is already defined at fields[{seen[name]}]")
        if not isinstance(start, int) or start < 1:
            raise doc.error(f"{key}.start", "must be the 1-based first character position")
        if not isinstance(flen, int) or flen < 1:
            raise doc.error(f"{key}.length", "must be a positive whole number")
        lf = LayoutField(name, start, flen)
        if lf.end > length:
            raise doc.error(f"{key}.length", f"column '{name}' ends at position {lf.end}, beyond record_length {length}")
        for other in fields:
            if lf.start - 1 < other.end and other.start - 1 < lf.end:
                raise doc.error(f"{key}.start", f"column '{name}' overlaps column '{other.name}'")
        seen[name] = i
        fields.append(lf)
    return FixedWidthLayout(file=path, record_length=length, encoding=encoding, fields=tuple(fields), sha256=doc.sha256)


def _load_format(doc: YamlDoc, data: Any, layouts_dir: Path) -> FormatSpec:
    data = require_mapping(doc, data, "format")
    kind = data.get("type")
    if kind not in FORMAT_TYPES:
        raise doc.error("format.type", f"unknown format '{kind}'{did_you_mean(str(kind), FORMAT_TYPES)}; known: {', '.join(FORMAT_TYPES)}")
    allowed = {
        "csv": ("type", "encoding", "delimiter", "quotechar"),
        "jsonl": ("type", "encoding"),
        "json": ("type", "encoding", "records_path"),
        "fixed_width": ("type", "layout"),
    }[kind]
    check_keys(doc, data, "format", allowed)
    encoding = data.get("encoding", "utf-8")
    try:
        "x".encode(encoding)
    except LookupError as exc:
        raise doc.error("format.encoding", f"unknown encoding '{encoding}'") from exc
    if kind == "csv":
        delim, quote = data.get("delimiter", ","), data.get("quotechar", '"')
        if not isinstance(delim, str) or len(delim) != 1:
            raise doc.error("format.delimiter", "must be one character, e.g. ';'")
        if not isinstance(quote, str) or len(quote) != 1:
            raise doc.error("format.quotechar", "must be one character")
        return FormatSpec("csv", encoding=encoding, delimiter=delim, quotechar=quote)
    if kind == "json":
        rp = data.get("records_path")
        if rp is not None and (not isinstance(rp, str) or not rp):
            raise doc.error("format.records_path", "must be a dotted key path such as 'results'")
        return FormatSpec("json", encoding=encoding, records_path=rp)
    if kind == "fixed_width":
        if "layout" not in data:
            raise doc.error("format", "fixed_width needs 'layout: <file in layouts/>'")
        layout_path = layouts_dir / str(data["layout"])
        if not layout_path.is_file():
            raise doc.error("format.layout", f"layout file not found: {layout_path}")
        layout = load_layout(layout_path)
        return FormatSpec("fixed_width", encoding=layout.encoding, layout=layout)
    return FormatSpec(kind, encoding=encoding)


def _load_field(doc: YamlDoc, entity: Entity, source_field: str, spec: Any) -> FieldMapping | None:
    key = f"fields.{source_field}"
    if isinstance(spec, str):
        spec = {"target": spec}
    spec = require_mapping(doc, spec, key)
    check_keys(doc, spec, key, ("target", "transforms", "optional", "ignore", "note"))
    if spec.get("ignore"):
        if "target" in spec:
            raise doc.error(key, "a field is either mapped (target) or ignored, not both")
        if not spec.get("note"):
            raise doc.error(key, "an ignored field needs a 'note' saying why it is not needed")
        return None
    if "target" not in spec:
        raise doc.error(key, "missing 'target' (the canonical field), or 'ignore: true' with a note")
    raw_targets = spec["target"]
    targets = tuple(raw_targets) if isinstance(raw_targets, list) else (raw_targets,)
    for i, t in enumerate(targets):
        tkey = f"{key}.target" + (f"[{i}]" if isinstance(raw_targets, list) else "")
        if not isinstance(t, str) or not entity.has(t):
            raise doc.error(tkey, f"unknown canonical field '{t}' for entity '{entity.name}'{did_you_mean(str(t), entity.field_names)}")
    raw_steps = spec.get("transforms", []) or []
    if not isinstance(raw_steps, list):
        raise doc.error(f"{key}.transforms", "must be a list")
    steps = tuple(parse_step(doc, f"{key}.transforms[{i}]", s) for i, s in enumerate(raw_steps))
    _check_chain(doc, key, entity, targets, steps)
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise doc.error(f"{key}.optional", "must be true or false")
    return FieldMapping(source_field=source_field, targets=targets, steps=steps, optional=optional, key=key)


def _check_chain(doc: YamlDoc, key: str, entity: Entity, targets: tuple[str, ...], steps: tuple[Step, ...]) -> None:
    typed_at: Step | None = None
    multi = [s for s in steps if TRANSFORMS[s.name].outputs != (1,)]
    for i, s in enumerate(steps):
        if typed_at is not None:
            raise doc.error(s.key, f"'{s.name}' cannot follow '{typed_at.name}': after parsing, the value is no longer text")
        if s.name in TYPED_OUTPUT:
            typed_at = s
        if s in multi and i != len(steps) - 1:
            raise doc.error(steps[i + 1].key, f"'{steps[i + 1].name}' cannot follow '{s.name}', which already split the value")
    if len(targets) > 1 and multi:
        # A splitting transform fills the targets in order; without one, every target gets the
        # same value (an ERP Kundennummer is both the record ID and erp_customer_number).
        if len(targets) not in TRANSFORMS[multi[0].name].outputs:
            counts = " or ".join(str(n) for n in TRANSFORMS[multi[0].name].outputs)
            raise doc.error(f"{key}.target", f"'{multi[0].name}' fills {counts} targets, not {len(targets)}")
    elif multi:
        raise doc.error(multi[0].key, f"'{multi[0].name}' produces several values; give a list of targets")
    if typed_at is not None and not multi:
        produced = TYPED_OUTPUT[typed_at.name]
        compatible = {("integer", "decimal")}  # a bare date is not a point in time: use parse_datetime
        for target in targets:
            wanted = entity.field(target).type
            if produced != wanted and (produced, wanted) not in compatible:
                raise doc.error(typed_at.key, f"'{typed_at.name}' yields a {produced}, but '{target}' is a {wanted}")


def load_mapping(path: str | Path, layouts_dir: str | Path | None = None, name_must_match: bool = True) -> SourceMapping:
    path = Path(path)
    layouts_dir = Path(layouts_dir) if layouts_dir else path.parent.parent / "layouts"
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("source", "entity", "description", "owner", "landing", "format", "fields",
                               "ignore", "constants", "on_unknown_field", "checks"),
               ("source", "entity", "format", "fields"))
    source = data["source"]
    if name_must_match and source != path.stem:
        raise doc.error("source", f"source '{source}' must match the file name '{path.stem}'")
    if not isinstance(source, str) or not source.isidentifier() or source != source.lower():
        raise doc.error("source", "must be a lower-case identifier such as 'web_form_leads'")
    entity_name = data["entity"]
    if entity_name not in ENTITIES:
        raise doc.error("entity", f"unknown entity '{entity_name}'{did_you_mean(str(entity_name), ENTITIES)}; known: {', '.join(ENTITIES)}")
    entity = ENTITIES[entity_name]
    fmt = _load_format(doc, data["format"], layouts_dir)

    landing = require_mapping(doc, data.get("landing", {}) or {}, "landing")
    check_keys(doc, landing, "landing", ("pattern",))
    default_pattern = {"csv": "*.csv", "jsonl": "*.jsonl", "json": "*.json", "fixed_width": "*.txt"}[fmt.type]
    pattern = landing.get("pattern", default_pattern)

    raw_fields = require_mapping(doc, data["fields"], "fields")
    fields: list[FieldMapping] = []
    ignored: set[str] = set()
    by_target: dict[str, str] = {}
    for source_field, spec in raw_fields.items():
        source_field = str(source_field)
        fm = _load_field(doc, entity, source_field, spec)
        if fm is None:
            ignored.add(source_field)
            continue
        for t in fm.targets:
            if t in by_target:
                raise doc.error(f"fields.{source_field}.target",
                                f"canonical field '{t}' is already mapped from '{by_target[t]}' (fields.{by_target[t]}); "
                                "map one source field onto one target")
            by_target[t] = source_field
        fields.append(fm)

    constants: dict[str, str] = {}
    raw_constants = require_mapping(doc, data.get("constants", {}) or {}, "constants")
    for name, value in raw_constants.items():
        key = f"constants.{name}"
        if not entity.has(str(name)):
            raise doc.error(key, f"unknown canonical field '{name}' for entity '{entity.name}'{did_you_mean(str(name), entity.field_names)}")
        if name in by_target:
            raise doc.error(key, f"canonical field '{name}' is already mapped from '{by_target[name]}'")
        f = entity.field(name)
        text = "true" if value is True else "false" if value is False else str(value)
        if f.allowed and text not in f.allowed:
            raise doc.error(key, f"'{text}' is not an allowed value of '{name}' ({', '.join(f.allowed)})")
        constants[str(name)] = text

    for req in entity.required_fields:
        if req not in by_target and req not in constants:
            raise doc.error("fields", f"required canonical field '{req}' of entity '{entity.name}' is not mapped")

    if fmt.layout is not None:
        layout_names = {lf.name for lf in fmt.layout.fields}
        for fm in fields:
            if fm.source_field not in layout_names:
                raise doc.error(f"fields.{fm.source_field}", f"column '{fm.source_field}' is not in layout {fmt.layout.file.name}"
                                f"{did_you_mean(fm.source_field, layout_names)}")
        unmapped = sorted(layout_names - {f.source_field for f in fields} - ignored)
        if unmapped:
            raise doc.error("fields", f"layout column(s) {', '.join(unmapped)} are neither mapped nor ignored")

    policy = data.get("on_unknown_field", "error" if fmt.type in ("csv",) else "quarantine")
    if policy not in UNKNOWN_FIELD_POLICIES:
        raise doc.error("on_unknown_field", f"must be one of: {', '.join(UNKNOWN_FIELD_POLICIES)}")

    checks = require_mapping(doc, data.get("checks", {}) or {}, "checks")
    check_keys(doc, checks, "checks", ("max_quarantine_rate", "expect_files"))
    max_rate = checks.get("max_quarantine_rate", 0.05)
    if isinstance(max_rate, bool) or not isinstance(max_rate, (int, float)) or not 0 <= max_rate <= 1:
        raise doc.error("checks.max_quarantine_rate", "must be a share between 0 and 1, e.g. 0.02")
    expect_files = checks.get("expect_files", "daily")
    if expect_files not in ("daily", "sporadic"):
        raise doc.error("checks.expect_files", "must be 'daily' (every day delivers) or 'sporadic'")

    digest = hashlib.sha256(doc.raw)
    if fmt.layout is not None:
        digest.update(fmt.layout.sha256.encode())
    description = str(data.get("description") or f"{source} ({entity.name})").strip()
    return SourceMapping(
        source=source, entity=entity, description=description, file=path, pattern=pattern, format=fmt,
        fields=tuple(fields), ignored=frozenset(ignored), constants=constants, on_unknown_field=policy,
        code_version=digest.hexdigest()[:16], owner=data.get("owner"),
        max_quarantine_rate=float(max_rate), expect_files=expect_files,
    )


def load_mappings(config_dir: str | Path) -> dict[str, SourceMapping]:
    config_dir = Path(config_dir)
    mdir = config_dir / "mappings"
    if not mdir.is_dir():
        raise ConfigError(mdir, "", "mappings folder not found (set CRM_CONFIG_DIR to your config folder)")
    out: dict[str, SourceMapping] = {}
    for path in sorted(mdir.glob("*.yaml")):
        m = load_mapping(path, config_dir / "layouts")
        out[m.source] = m
    if not out:
        raise ConfigError(mdir, "", "no mapping files (*.yaml) found")
    return out


# --------------------------------------------------------------------------- applying

@dataclass
class MappedChunk:
    """Result of mapping one chunk: canonical rows that passed and a reason for each that did not."""

    good: pd.DataFrame
    bad_positions: np.ndarray  # positions in the input chunk
    bad_reasons: list[str]
    bad_fields: list[str]
    reason_codes: list[str] = field(default_factory=list)  # value-free, for counting in metadata


def _empty_problems(n: int) -> list[list[tuple[str, str, str]]]:
    return [[] for _ in range(n)]


def apply_mapping(mapping: SourceMapping, raw: pd.DataFrame, reader_problems: list[str | None] | None = None) -> MappedChunk:
    """Maps raw source columns (text or missing) onto canonical columns with their final types.

    ``reader_problems`` carries per-row problems found while reading (bad JSON, wrong
    column count). A row with any problem is not loaded; its reason lists every
    problem, with personal values masked.
    """
    n = len(raw)
    entity = mapping.entity
    # per row: list of (field, code, message)
    problems = _empty_problems(n)
    if reader_problems is not None:
        for i, p in enumerate(reader_problems):
            if p:
                problems[i].append(("", "unreadable record", p))
    out: dict[str, pd.Series] = {}
    index = pd.RangeIndex(n)
    for fm in mapping.fields:
        if fm.source_field in raw.columns:
            series = raw[fm.source_field].reset_index(drop=True).astype(object)
        else:
            series = pd.Series([None] * n, index=index, dtype=object)
        values, step_problems = apply_steps(series, fm.steps)
        for step, prob in step_problems:
            kind = next((entity.field(t).pii for t in fm.targets if entity.field(t).pii), None)
            for pos in np.flatnonzero(prob.notna().to_numpy()):
                shown = mask_value(series.iat[pos], kind)
                problems[pos].append((fm.source_field, f"{fm.source_field}: {step.name}",
                                      f"{fm.source_field} -> {', '.join(fm.targets)}: {shown!r} {prob.iat[pos]}"))
        if isinstance(values, tuple):
            # split_full_name yields (salutation, title, first, last); fill the last n targets.
            for target, part in zip(fm.targets, values[-len(fm.targets):]):
                out[target] = part
        else:
            for target in fm.targets:
                out[target] = values
    for name, value in mapping.constants.items():
        out[name] = pd.Series([value] * n, index=index, dtype=object)

    frame = pd.DataFrame(index=index)
    for f in entity.fields:
        col = out.get(f.name)
        if col is None:
            col = pd.Series([None] * n, index=index, dtype=object)
        typed, bad = coerce(col, f.type)
        source_name = _source_of(mapping, f.name)
        for pos in np.flatnonzero(bad):
            shown = mask_value(col.iat[pos], f.pii)
            problems[pos].append((source_name, f"{source_name}: not a {f.type}",
                                  f"{source_name} -> {f.name}: {shown!r} is not a valid {f.type}"))
        missing = typed.isna().to_numpy() & ~bad
        if f.allowed:
            present = ~typed.isna().to_numpy()
            not_allowed = present & ~typed.isin(f.allowed).to_numpy()
            for pos in np.flatnonzero(not_allowed):
                problems[pos].append((source_name, f"{source_name}: value not allowed",
                                      f"{source_name} -> {f.name}: {typed.iat[pos]!r} is not one of {', '.join(f.allowed)}"))
        if f.required:
            for pos in np.flatnonzero(missing):
                problems[pos].append((source_name, f"{f.name}: missing",
                                      f"required field {f.name} (from {source_name}) is missing"))
        frame[f.name] = typed
    for group in entity.require_any:
        none_present = np.logical_and.reduce([frame[g].isna().to_numpy() for g in group])
        for pos in np.flatnonzero(none_present):
            problems[pos].append(("", f"none of {'/'.join(group)}",
                                  f"at least one of {', '.join(group)} is needed"))

    for row in problems:
        if not row:
            continue
        if row[0][1] == "unreadable record":
            # Nothing could be read, so every field is "missing": say only why.
            del row[1:]
            continue
        # "required field X is missing" after "X: 'abc' is not a date" says nothing new.
        failed = {f for f, code, _ in row if not code.endswith(": missing")}
        row[:] = [p for p in row if not (p[1].endswith(": missing") and p[0] in failed)]
    bad_positions = np.array([i for i, p in enumerate(problems) if p], dtype=np.int64)
    good_mask = np.ones(n, dtype=bool)
    good_mask[bad_positions] = False
    reasons, fields_, codes = [], [], []
    for pos in bad_positions:
        seen_msgs: list[str] = []
        for _, _, msg in problems[pos]:
            if msg not in seen_msgs:
                seen_msgs.append(msg)
        reasons.append("; ".join(seen_msgs))
        fields_.append(",".join(dict.fromkeys(f for f, _, _ in problems[pos] if f)))
        codes.append(problems[pos][0][1])
    return MappedChunk(good=frame[good_mask].reset_index(drop=True), bad_positions=bad_positions,
                       bad_reasons=reasons, bad_fields=fields_, reason_codes=codes)


def _source_of(mapping: SourceMapping, target: str) -> str:
    for fm in mapping.fields:
        if target in fm.targets:
            return fm.source_field
    return f"constants.{target}" if target in mapping.constants else target


_TRUE = {"true", "1", "yes", "ja"}
_FALSE = {"false", "0", "no", "nein"}


def _object_strings(values: np.ndarray, index) -> pd.Series:
    out = [None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else (v if isinstance(v, str) else str(v))
           for v in values]
    return pd.Series(out, index=index, dtype=object)


def coerce(col: pd.Series, type_: str) -> tuple[pd.Series, np.ndarray]:
    """Brings a column to the canonical type; text left over is parsed in ISO/plain notation.

    Returns the typed column and a boolean array of rows that could not be converted.
    """
    n = len(col)
    if type_ == "string":
        if col.dtype == object:
            # Built as an object column, not by astype(str) or map: with pyarrow installed pandas 3 infers
            # an Arrow string column, which refuses text Python holds (a lone surrogate the quarantine
            # must still see).
            text = _object_strings(col.to_numpy(dtype=object), col.index)
            text = text.mask(text == "")
        else:
            text = _object_strings(col.astype(object).where(col.notna(), None).to_numpy(dtype=object), col.index)
        return text.astype(object).where(text.notna(), None), np.zeros(n, dtype=bool)
    present = col.notna().to_numpy()
    if type_ == "datetime":
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            typed = col.dt.tz_convert("UTC")
        elif pd.api.types.is_datetime64_dtype(col.dtype):
            typed = col.dt.tz_localize("UTC")
        else:
            text = col.where(col != "")
            typed = in_range(pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce"))
        return typed, present & typed.isna().to_numpy()
    if type_ == "date":
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            typed = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) is not None else col
            typed = typed.dt.normalize()
        else:
            text = col.where(col != "")
            typed = in_range(pd.to_datetime(text, format="%Y-%m-%d", errors="coerce"))
        return typed.astype("datetime64[ns]"), present & typed.isna().to_numpy()
    if type_ in ("integer", "decimal"):
        if col.dtype == object:
            numeric = pd.to_numeric(col.where(col != ""), errors="coerce")
        else:
            numeric = pd.to_numeric(col, errors="coerce")
        bad = present & numeric.isna().to_numpy()
        if type_ == "integer":
            frac = numeric.notna().to_numpy() & (numeric.fillna(0).to_numpy() % 1 != 0)
            bad |= frac
            numeric = numeric.where(~frac)
            return numeric.round().astype("Int64"), bad
        return numeric.astype("float64"), bad
    if type_ == "boolean":
        if str(col.dtype) == "boolean" or col.dtype == bool:
            return col.astype("boolean"), np.zeros(n, dtype=bool)
        key = col.astype(object).map(lambda v: None if v is None or v is pd.NA else str(v).strip().casefold())
        typed = pd.Series(pd.NA, index=col.index, dtype="boolean")
        typed[key.isin(_TRUE)] = True
        typed[key.isin(_FALSE)] = False
        return typed, present & typed.isna().to_numpy()
    raise ValueError(type_)
