"""The properties API: a portal's property definitions and groups, and the validation of every
property a write names (unknown, read-only, outside an enumeration, not a number)."""

from __future__ import annotations

import json
import re

from .protocol import TYPES, not_found, now_iso, property_error, validation_error


class PortalMixin:
    """Methods of :class:`CrmServer` for ``/crm/v3/properties``."""

    def list_properties(self, object_type: str) -> tuple[int, dict]:
        if object_type not in self.definitions:
            return 404, not_found(f"unknown object type {object_type}")
        with self._lock:
            return 200, {"results": [dict(d) for d in self.definitions[object_type].values()]}

    def get_property(self, object_type: str, name: str) -> tuple[int, dict]:
        d = self.definitions.get(object_type, {}).get(name)
        return (200, dict(d)) if d else (404, not_found(f"Unable to find property {name} for object type {object_type}"))

    def create_property(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in self.definitions:
            return 404, not_found(f"unknown object type {object_type}")
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return 400, validation_error(f"Missing required fields: {', '.join(missing)}")
        name, ptype, field = str(body["name"]), body["type"], body["fieldType"]
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            return 400, validation_error(f"Property name '{name}' must be lower case letters, digits and underscores")
        if ptype not in TYPES:
            return 400, validation_error(f"Unknown property type '{ptype}'; allowed: {', '.join(TYPES)}")
        if field not in TYPES[ptype]:
            return 400, validation_error(f"fieldType '{field}' is not valid for type '{ptype}'")
        options = body.get("options") or []
        if ptype == "enumeration" and field != "booleancheckbox" and not options:
            return 400, validation_error("An enumeration property needs options")
        if any(not isinstance(o, dict) or not o.get("label") or o.get("value") in (None, "") for o in options):
            return 400, validation_error("Every option needs a label and a value")
        if body.get("hasUniqueValue") and ptype not in ("string", "number"):
            return 400, validation_error("Only string and number properties can have unique values")
        with self._lock:
            if body["groupName"] not in self.groups[object_type]:
                return 400, validation_error(f"Property group '{body['groupName']}' does not exist")
            if name in self.definitions[object_type]:
                return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS",
                             "message": f"A property named '{name}' already exists."}
            d = {"name": name, "label": body["label"], "type": ptype, "fieldType": field, "groupName": body["groupName"],
                 "description": body.get("description", ""), "hasUniqueValue": bool(body.get("hasUniqueValue")),
                 "options": [{"label": o["label"], "value": str(o["value"]), "displayOrder": o.get("displayOrder", i),
                              "hidden": bool(o.get("hidden", False))} for i, o in enumerate(options)],
                 "hubspotDefined": False, "createdAt": now_iso(),
                 "modificationMetadata": {"readOnlyValue": False, "archivable": True, "readOnlyDefinition": False}}
            self.definitions[object_type][name] = d
            self.db.execute("INSERT OR REPLACE INTO property_defs VALUES (?, ?, ?)", (object_type, name, json.dumps(d)))
            self.counts["properties_created"] += 1
        return 201, dict(d)

    def create_group(self, object_type: str, body: dict) -> tuple[int, dict]:
        if object_type not in self.groups:
            return 404, not_found(f"unknown object type {object_type}")
        if not body.get("name") or not body.get("label"):
            return 400, validation_error("A property group needs a name and a label")
        with self._lock:
            if body["name"] in self.groups[object_type]:
                return 409, {"status": "error", "category": "OBJECT_ALREADY_EXISTS",
                             "message": f"A group named '{body['name']}' already exists."}
            g = {"name": body["name"], "label": body["label"], "displayOrder": body.get("displayOrder", -1), "archived": False}
            self.groups[object_type][body["name"]] = g
            self.db.execute("INSERT OR REPLACE INTO property_groups VALUES (?, ?, ?)",
                            (object_type, body["name"], json.dumps(g)))
        return 201, dict(g)

    def list_groups(self, object_type: str) -> tuple[int, dict]:
        if object_type not in self.groups:
            return 404, not_found(f"unknown object type {object_type}")
        return 200, {"results": list(self.groups[object_type].values())}

    def _property_errors(self, object_type: str, props: dict) -> list[dict]:
        """What HubSpot refuses a whole batch for: unknown properties, read-only ones, values outside an
        enumeration's options, numbers that are not numbers (no surrounding spaces either)."""
        out = []
        defs = self.definitions[object_type]
        for name, value in props.items():
            d = defs.get(name)
            if d is None:
                out.append(property_error(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'))
                continue
            if d["modificationMetadata"].get("readOnlyValue"):
                out.append(property_error(name, "READ_ONLY_VALUE", f'"{name}" is a read only property; its value cannot be set.'))
                continue
            if value is None or value == "":
                continue  # clearing a value is always allowed
            text = str(value)
            if d["type"] == "enumeration" and d["options"] and not d.get("externalOptions"):
                allowed = {o["value"] for o in d["options"]}
                chosen = text.split(";") if d["fieldType"] == "checkbox" else [text]
                bad = [c for c in chosen if c not in allowed]
                if bad:
                    out.append(property_error(name, "INVALID_OPTION", f"{bad[0]} was not one of the allowed options: "
                                                                   f"{', '.join(sorted(allowed))}"))
            elif d["type"] == "number":
                try:
                    float(text)
                    ok = text == text.strip() and text.lower() not in ("nan", "inf", "-inf", "infinity")
                except ValueError:
                    ok = False
                if not ok:
                    out.append(property_error(name, "INVALID_DECIMAL", f"{text} is not a valid number"))
        return out
