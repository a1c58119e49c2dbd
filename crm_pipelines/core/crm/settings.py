"""sync.yaml: which golden columns go to which CRM properties, how, and when to give up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..platform.configfile import YamlDoc, check_keys, load_yaml, require_mapping

MODES = ("upsert", "update_only", "mirror")
OBJECT_TYPES = ("companies", "contacts")
# Golden columns a payload may use: the golden tables' columns plus what payloads.py derives.
DERIVED = {"address", "lifecycle_stage"}
# Who owns a field once the object exists in the CRM.
POLICIES = ("warehouse", "crm", "fill_empty")
ON_CRM_DELETE = ("keep_deleted", "recreate_and_flag")
PROPERTY_TYPES = {"string": "text", "number": "number", "enumeration": "select", "date": "date", "bool": "booleancheckbox"}
# Properties every HubSpot portal defines (the ones sync.yaml may map without declaring them).
STANDARD_PROPERTIES = {
    "contacts": {"email", "firstname", "lastname", "salutation", "phone", "mobilephone", "jobtitle", "company",
                 "address", "zip", "city", "country", "lifecyclestage", "hubspot_owner_id", "associatedcompanyid"},
    "companies": {"name", "domain", "phone", "address", "zip", "city", "country", "industry", "numberofemployees",
                  "annualrevenue", "lifecyclestage", "hubspot_owner_id"},
}
# HubSpot's lifecycle stages in their order; a stage never moves backwards ("other" stands apart).
LIFECYCLE_ORDER = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                   "evangelist")


@dataclass(frozen=True)
class CustomProperty:
    """A property the push needs that a portal does not have until ``crm setup`` creates it."""
    object_type: str
    name: str
    label: str
    type: str
    options: tuple[str, ...] = ()
    unique: bool = False
    description: str = ""

    def definition(self, group: str) -> dict:
        """The body of ``POST /crm/v3/properties/{objectType}``."""
        body = {"name": self.name, "label": self.label, "type": self.type, "fieldType": PROPERTY_TYPES[self.type],
                "groupName": group, "description": self.description}
        if self.options:
            body["options"] = [{"label": o, "value": o, "displayOrder": i, "hidden": False}
                               for i, o in enumerate(self.options)]
        if self.unique:
            body["hasUniqueValue"] = True
        return body


@dataclass(frozen=True)
class ObjectSync:
    object_type: str
    mode: str
    properties: dict[str, str]          # CRM property -> golden column
    required: tuple[str, ...]
    associate_with: str | None = None
    policies: dict[str, str] = field(default_factory=dict)      # CRM property -> warehouse / crm / fill_empty
    value_maps: dict[str, dict[str, str]] = field(default_factory=dict)  # CRM property -> our value -> the CRM's

    def policy(self, prop: str) -> str:
        return self.policies.get(prop, "warehouse")


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
    max_in_flight: int = 8
    property_group: tuple[str, str] = ("crm_pipelines", "crm_pipelines")   # name, label
    custom_properties: tuple[CustomProperty, ...] = ()
    on_crm_delete: str = "keep_deleted"

    def custom(self, object_type: str) -> list[CustomProperty]:
        return [p for p in self.custom_properties if p.object_type == object_type]


def load_sync_settings(path: str | Path, golden_columns: dict[str, set[str]] | None = None) -> SyncSettings:
    """Loads and validates; ``golden_columns`` (object type -> available columns) checks the mappings."""
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("connector", "id_property", "rate_limit", "max_in_flight", "failure_rate_threshold",
                               "objects", "lifecycle_stages", "portal", "on_crm_delete"), required=("objects",))
    connector = data.get("connector", "hubspot")
    if connector != "hubspot":
        raise doc.error("connector", f"unknown connector '{connector}'; available: hubspot")
    id_property = _text(doc, data.get("id_property", "crm_golden_id"), "id_property")
    rate = require_mapping(doc, data.get("rate_limit") or {}, "rate_limit")
    check_keys(doc, rate, "rate_limit", ("max_requests", "window_seconds"))
    max_requests = _number(doc, rate.get("max_requests", 190), "rate_limit.max_requests", 1, 10_000, integer=True)
    window = _number(doc, rate.get("window_seconds", 10), "rate_limit.window_seconds", 0.1, 3600)
    in_flight = _number(doc, data.get("max_in_flight", 8), "max_in_flight", 1, 16, integer=True)
    on_delete = data.get("on_crm_delete", "keep_deleted")
    if on_delete not in ON_CRM_DELETE:
        raise doc.error("on_crm_delete", f"unknown policy '{on_delete}'; available: {', '.join(ON_CRM_DELETE)}")
    group, custom = _portal(doc, data.get("portal") or {}, id_property)
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
        check_keys(doc, spec, key, ("mode", "properties", "required", "associate_with", "field_policy", "value_maps"),
                   required=("properties",))
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
            declared = {p.name for p in custom if p.object_type == name}
            if prop not in STANDARD_PROPERTIES[name] and prop not in declared:
                raise doc.error(f"{key}.properties.{prop}",
                                f"'{prop}' is not a property every HubSpot portal has; declare it under "
                                f"portal.properties.{name} so that `crm setup` creates it")
        required = spec.get("required") or []
        if not isinstance(required, list) or any(r not in props for r in required):
            raise doc.error(f"{key}.required", "must list CRM properties mapped above")
        associate = spec.get("associate_with")
        if associate is not None and (associate not in OBJECT_TYPES or associate == name):
            raise doc.error(f"{key}.associate_with", f"must be another object type ({', '.join(OBJECT_TYPES)})")
        policies = {}
        raw_policy = require_mapping(doc, spec.get("field_policy") or {}, f"{key}.field_policy")
        for policy, names in raw_policy.items():
            if policy not in POLICIES:
                raise doc.error(f"{key}.field_policy.{policy}", f"unknown policy; available: {', '.join(POLICIES)}")
            if not isinstance(names, list) or any(n not in props for n in names):
                raise doc.error(f"{key}.field_policy.{policy}", "must list CRM properties mapped above")
            for n in names:
                if n == "lifecyclestage":
                    raise doc.error(f"{key}.field_policy.{policy}", "lifecyclestage has its own rule (forward only)")
                policies[n] = policy
        value_maps = {}
        raw_maps = require_mapping(doc, spec.get("value_maps") or {}, f"{key}.value_maps")
        for prop, table in raw_maps.items():
            table = require_mapping(doc, table, f"{key}.value_maps.{prop}")
            if prop not in props:
                raise doc.error(f"{key}.value_maps.{prop}", "must be a CRM property mapped above")
            if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in table.items()):
                raise doc.error(f"{key}.value_maps.{prop}", "must map our values (text) to the CRM's values (text)")
            value_maps[prop] = dict(table)
        objects[name] = ObjectSync(name, mode, dict(props), tuple(required), associate, policies, value_maps)
    return SyncSettings(Path(path), doc.sha256, connector, id_property, int(max_requests), float(window), float(threshold),
                        objects, tuple(stages), int(in_flight), group, tuple(custom), on_delete)


def _portal(doc: YamlDoc, portal, id_property: str) -> tuple[tuple[str, str], list[CustomProperty]]:
    portal = require_mapping(doc, portal, "portal")
    check_keys(doc, portal, "portal", ("property_group", "properties"))
    group = require_mapping(doc, portal.get("property_group") or {"name": "crm_pipelines", "label": "crm_pipelines"},
                            "portal.property_group")
    check_keys(doc, group, "portal.property_group", ("name", "label"), required=("name", "label"))
    out = []
    props = require_mapping(doc, portal.get("properties") or {}, "portal.properties")
    for object_type, defs in props.items():
        if object_type not in OBJECT_TYPES:
            raise doc.error(f"portal.properties.{object_type}", f"unknown object type; available: {', '.join(OBJECT_TYPES)}")
        defs = require_mapping(doc, defs, f"portal.properties.{object_type}")
        for name, d in defs.items():
            key = f"portal.properties.{object_type}.{name}"
            d = require_mapping(doc, d, key)
            check_keys(doc, d, key, ("label", "type", "options", "unique", "description"), required=("label", "type"))
            if name in STANDARD_PROPERTIES[object_type]:
                raise doc.error(key, "is a property HubSpot defines itself; it cannot be created")
            if not isinstance(name, str) or not name.replace("_", "").isalnum() or name != name.lower():
                raise doc.error(key, "a property name is lower case letters, digits and underscores")
            if d["type"] not in PROPERTY_TYPES:
                raise doc.error(f"{key}.type", f"unknown type '{d['type']}'; available: {', '.join(PROPERTY_TYPES)}")
            options = d.get("options") or []
            if d["type"] == "enumeration" and (not isinstance(options, list) or not options
                                               or not all(isinstance(o, str) and o for o in options)):
                raise doc.error(f"{key}.options", "an enumeration needs a list of option values")
            if d["type"] != "enumeration" and options:
                raise doc.error(f"{key}.options", "only an enumeration has options")
            out.append(CustomProperty(object_type, name, str(d["label"]), d["type"], tuple(options),
                                      bool(d.get("unique", False)), str(d.get("description") or "")))
    for object_type in OBJECT_TYPES:
        if not any(p.name == id_property and p.object_type == object_type and p.unique for p in out):
            raise doc.error(f"portal.properties.{object_type}.{id_property}",
                            f"the ID property '{id_property}' must be declared here with unique: true")
    return (str(group["name"]), str(group["label"])), out


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
