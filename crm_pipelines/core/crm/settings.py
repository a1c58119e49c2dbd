"""sync.yaml: which golden columns go to which CRM properties, how, and when to give up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..configfile import YamlDoc, check_keys, load_yaml, require_mapping

MODES = ("upsert", "update_only", "mirror")
OBJECT_TYPES = ("companies", "contacts")
# Golden columns a payload may use: the golden tables' columns plus what payloads.py derives.
DERIVED = {"address", "lifecycle_stage"}


@dataclass(frozen=True)
class ObjectSync:
    object_type: str
    mode: str
    properties: dict[str, str]          # CRM property -> golden column
    required: tuple[str, ...]
    associate_with: str | None = None


@dataclass(frozen=True)
class SyncSettings:
    path: Path
    sha256: str
    connector: str
    id_property: str
    max_requests: int
    window_seconds: float
    failure_rate_threshold: float
    objects: dict[str, ObjectSync]
    lifecycle_stages: tuple[str, ...]
    max_in_flight: int = 2


def load_sync_settings(path: str | Path, golden_columns: dict[str, set[str]] | None = None) -> SyncSettings:
    """Loads and validates; ``golden_columns`` (object type -> available columns) checks the mappings."""
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("connector", "id_property", "rate_limit", "max_in_flight", "failure_rate_threshold",
                               "objects", "lifecycle_stages"), required=("objects",))
    connector = data.get("connector", "hubspot")
    if connector != "hubspot":
        raise doc.error("connector", f"unknown connector '{connector}'; available: hubspot")
    id_property = _text(doc, data.get("id_property", "crm_golden_id"), "id_property")
    rate = require_mapping(doc, data.get("rate_limit") or {}, "rate_limit")
    check_keys(doc, rate, "rate_limit", ("max_requests", "window_seconds"))
    max_requests = _number(doc, rate.get("max_requests", 190), "rate_limit.max_requests", 1, 10_000, integer=True)
    window = _number(doc, rate.get("window_seconds", 10), "rate_limit.window_seconds", 0.1, 3600)
    in_flight = _number(doc, data.get("max_in_flight", 2), "max_in_flight", 1, 16, integer=True)
    threshold = _number(doc, data.get("failure_rate_threshold", 0.05), "failure_rate_threshold", 0.0, 1.0)
    stages = data.get("lifecycle_stages") or ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead",
                                              "opportunity", "customer", "evangelist", "other"]
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise doc.error("lifecycle_stages", "must be a list of stage names")
    objects = {}
    raw_objects = require_mapping(doc, data["objects"], "objects")
    for name, spec in raw_objects.items():
        key = f"objects.{name}"
        if name not in OBJECT_TYPES:
            raise doc.error(key, f"unknown object type '{name}'; available: {', '.join(OBJECT_TYPES)}")
        spec = require_mapping(doc, spec, key)
        check_keys(doc, spec, key, ("mode", "properties", "required", "associate_with"), required=("properties",))
        mode = spec.get("mode", "upsert")
        if mode not in MODES:
            raise doc.error(f"{key}.mode", f"unknown mode '{mode}'; available: {', '.join(MODES)}")
        props = require_mapping(doc, spec["properties"], f"{key}.properties")
        for prop, column in props.items():
            if not isinstance(column, str) or not column:
                raise doc.error(f"{key}.properties.{prop}", "must name a golden column")
            if prop == id_property:
                raise doc.error(f"{key}.properties.{prop}", f"'{id_property}' is the ID property; it is set automatically")
            if golden_columns is not None and column not in golden_columns[name] | DERIVED:
                raise doc.error(f"{key}.properties.{prop}",
                                f"unknown golden column '{column}'; available: {', '.join(sorted(golden_columns[name] | DERIVED))}")
        required = spec.get("required") or []
        if not isinstance(required, list) or any(r not in props for r in required):
            raise doc.error(f"{key}.required", "must list CRM properties mapped above")
        associate = spec.get("associate_with")
        if associate is not None and (associate not in OBJECT_TYPES or associate == name):
            raise doc.error(f"{key}.associate_with", f"must be another object type ({', '.join(OBJECT_TYPES)})")
        objects[name] = ObjectSync(name, mode, dict(props), tuple(required), associate)
    return SyncSettings(Path(path), doc.sha256, connector, id_property, int(max_requests), float(window), float(threshold),
                        objects, tuple(stages), int(in_flight))


def _text(doc: YamlDoc, value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise doc.error(key, "must be a non-empty string")
    return value


def _number(doc: YamlDoc, value, key: str, lo: float, hi: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise doc.error(key, f"must be {'an integer' if integer else 'a number'}")
    if not lo <= value <= hi:
        raise doc.error(key, f"must be between {lo:g} and {hi:g}, got {value}")
    return value
