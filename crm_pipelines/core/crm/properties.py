"""The portal's side of the contract: create the properties the push needs, and check before sending.

HubSpot refuses a whole batch that names a property the portal does not define, sets a read-only
one, or carries a value outside an enumeration's options (``PROPERTY_DOESNT_EXIST``,
``READ_ONLY_VALUE``, ``INVALID_OPTION``, HTTP 400). So:

- :func:`setup_portal` creates the property group and every custom property ``sync.yaml``
  declares (``portal.properties``), with its type and options, through the properties API; it
  is idempotent (what exists is left alone and checked for a compatible type);
- :func:`preflight` reads the portal's definitions once per push and refuses, before any write,
  a payload naming a property the portal lacks (the whole push: every batch would fail), and marks
  rows whose value the portal would refuse (an unknown option, a number that is not one) invalid
  with a message naming object type, property and value; the other rows go out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .protocol import CrmConnector
from .settings import SyncSettings

Log = Callable[[str], None]


class PortalNotReady(Exception):
    """The portal lacks a property the push would send (or has it in an unusable shape)."""


@dataclass
class SetupReport:
    groups_created: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)       # "contacts.crm_golden_id", ...
    existing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)      # existing properties whose shape does not fit


def portal_definitions(settings: SyncSettings) -> dict[str, list[dict]]:
    """What ``setup`` would create, per object type, as the properties API takes it (a set-up portal for
    the local CRM server)."""
    group = settings.property_group[0]
    return {t: [p.definition(group) for p in settings.custom(t)] for t in settings.objects}


def setup_portal(connector: CrmConnector, settings: SyncSettings, log: Log | None = None) -> SetupReport:
    """Creates what is missing; reports existing properties whose type, uniqueness or options do not fit
    (those are never changed: a portal admin decides)."""
    log = log or (lambda _m: None)
    report = SetupReport()
    group, label = settings.property_group
    for object_type in settings.objects:
        wanted = settings.custom(object_type)
        if not wanted:
            continue
        if group not in connector.property_groups(object_type):
            if connector.create_property_group(object_type, group, label) == "created":
                report.groups_created.append(f"{object_type}.{group}")
                log(f"{object_type}: property group '{group}' created")
        have = connector.properties(object_type)
        for prop in wanted:
            name = f"{object_type}.{prop.name}"
            existing = have.get(prop.name)
            if existing is None:
                status = connector.create_property(object_type, prop.definition(group))
                (report.created if status == "created" else report.existing).append(name)
                log(f"{name}: {status}")
                continue
            report.existing.append(name)
            if existing.get("type") != prop.type:
                report.problems.append(f"{name} exists with type '{existing.get('type')}', the push needs '{prop.type}'")
            if prop.unique and not existing.get("hasUniqueValue"):
                report.problems.append(f"{name} exists without unique values; the upsert key needs them")
            options = {o.get("value") for o in existing.get("options") or []}
            lacking = [o for o in prop.options if o not in options]
            if lacking:
                report.problems.append(f"{name} lacks the options {', '.join(lacking)}")
    return report


def preflight(definitions: dict[str, dict], object_type: str, id_property: str,
              properties: list[str]) -> None:
    """Refuses the push (:class:`PortalNotReady`) when the portal lacks a property it would send."""
    problems = []
    for name in [id_property, *properties]:
        d = definitions.get(name)
        if d is None:
            problems.append(f"{object_type}.{name} does not exist in the portal")
        elif (d.get("modificationMetadata") or {}).get("readOnlyValue"):
            problems.append(f"{object_type}.{name} is read-only in the portal")
    d = definitions.get(id_property)
    if d is not None and not d.get("hasUniqueValue"):
        problems.append(f"{object_type}.{id_property} has no unique values; upserts cannot be keyed by it")
    if problems:
        raise PortalNotReady("CRM push refused before any write: " + "; ".join(problems)
                             + ". Run `python -m crm_pipelines.crm setup` (or the job setup_crm_portal).")


def value_problem(definition: dict, object_type: str, name: str, value) -> str | None:
    """Why the portal would refuse this value of this property, or None."""
    if value is None or value == "":
        return None
    text = str(value)
    ptype = definition.get("type")
    if ptype == "enumeration" and definition.get("options") and not definition.get("externalOptions"):
        allowed = {o.get("value") for o in definition["options"]}
        chosen = text.split(";") if definition.get("fieldType") == "checkbox" else [text]
        bad = [c for c in chosen if c not in allowed]
        if bad:
            return f"{object_type}.{name}: '{bad[0]}' is not one of the portal's options"
    elif ptype == "number":
        try:
            ok = text == text.strip() and math.isfinite(float(text))
        except ValueError:
            ok = False
        if not ok:
            return f"{object_type}.{name}: '{text}' is not a number"
    return None
