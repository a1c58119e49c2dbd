"""HubSpot's rules as the local CRM applies them: batch and search limits, lifecycle order, property
types, the portal's default properties, and the shapes of HubSpot's answers and errors."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone

ID_PROPERTY = "crm_golden_id"

LIFECYCLE_ORDER = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
                   "evangelist")

LIFECYCLE_STAGES = set(LIFECYCLE_ORDER) | {"other"}

# A part of HubSpot's fixed company industry options (the portal's own list is longer).
INDUSTRIES = ("ACCOUNTING", "AUTOMOTIVE", "BUILDING_MATERIALS", "CHEMICALS", "COMPUTER_SOFTWARE", "CONSTRUCTION",
              "ELECTRICAL_ELECTRONIC_MANUFACTURING", "FOOD_PRODUCTION", "INDUSTRIAL_AUTOMATION",
              "LOGISTICS_AND_SUPPLY_CHAIN", "MACHINERY", "MECHANICAL_OR_INDUSTRIAL_ENGINEERING", "MEDICAL_DEVICES",
              "MINING_METALS", "PACKAGING_AND_CONTAINERS", "PAPER_FOREST_PRODUCTS", "PLASTICS", "RENEWABLES_ENVIRONMENT",
              "UTILITIES", "WHOLESALE")

TYPES = {"string": {"text", "textarea", "phonenumber", "html", "file"}, "number": {"number", "calculation"},
         "enumeration": {"select", "radio", "checkbox", "booleancheckbox", "calculation_equation"},
         "date": {"date"}, "datetime": {"date"}, "bool": {"booleancheckbox"}}

READ_ONLY = {"hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate", "hs_merged_object_ids"}

MAX_BATCH = 100

MAX_ASSOCIATION_BATCH = 1000

MAX_SEARCH_PAGE = 200

SEARCH_RESULT_CAP = 10_000        # HubSpot's search returns at most 10,000 results per query

SEARCHES_PER_SECOND = 5           # the search endpoints' own limit, besides the 10-second one

def _prop(name: str, ptype: str = "string", field: str = "text", group: str = "contactinformation",
          options: tuple[str, ...] = (), read_only: bool = False) -> dict:
    return {"name": name, "label": name, "type": ptype, "fieldType": field, "groupName": group,
            "options": [{"label": o, "value": o, "displayOrder": i, "hidden": False} for i, o in enumerate(options)],
            "hasUniqueValue": False, "hubspotDefined": True,
            "modificationMetadata": {"readOnlyValue": read_only, "archivable": False, "readOnlyDefinition": True}}

def default_properties() -> dict[str, dict[str, dict]]:
    """The HubSpot-defined properties a fresh portal has, for the object types served here."""
    common = [_prop("hs_object_id", "number", "number", read_only=True),
              _prop("createdate", "datetime", "date", read_only=True),
              _prop("hs_lastmodifieddate", "datetime", "date", read_only=True),
              {**_prop("hubspot_owner_id", "enumeration", "select"), "externalOptions": True},
              _prop("lifecyclestage", "enumeration", "radio", options=tuple(LIFECYCLE_ORDER) + ("other",))]
    contacts = common + [_prop(n) for n in ("email", "firstname", "lastname", "salutation", "jobtitle", "company",
                                            "address", "zip", "city", "country")]
    contacts += [_prop("phone", field="phonenumber"), _prop("mobilephone", field="phonenumber"),
                 _prop("lastmodifieddate", "datetime", "date", read_only=True),
                 _prop("hs_merged_object_ids", "enumeration", "checkbox", read_only=True),
                 _prop("associatedcompanyid", "number", "number")]
    contacts[[p["name"] for p in contacts].index("email")]["hasUniqueValue"] = True
    companies = common + [_prop(n, group="companyinformation") for n in ("name", "domain", "address", "zip", "city",
                                                                         "country")]
    companies += [_prop("phone", field="phonenumber", group="companyinformation"),
                  _prop("industry", "enumeration", "select", "companyinformation", INDUSTRIES),
                  _prop("numberofemployees", "number", "number", "companyinformation"),
                  _prop("annualrevenue", "number", "number", "companyinformation"),
                  _prop("hs_merged_object_ids", "enumeration", "checkbox", read_only=True)]
    tasks = [_prop(n, group="task") for n in ("hs_task_subject", "hs_task_body")]
    tasks += [_prop("hs_timestamp", "datetime", "date", "task"),
              _prop("hs_task_status", "enumeration", "select", "task", ("NOT_STARTED", "IN_PROGRESS", "WAITING",
                                                                         "COMPLETED", "DEFERRED")),
              _prop("hs_task_priority", "enumeration", "select", "task", ("NONE", "LOW", "MEDIUM", "HIGH")),
              {**_prop("hubspot_owner_id", "enumeration", "select", "task"), "externalOptions": True}]
    from .deals import STAGES

    deals = [_prop("hs_object_id", "number", "number", "dealinformation", read_only=True),
             _prop("createdate", "datetime", "date", "dealinformation", read_only=True),
             _prop("hs_lastmodifieddate", "datetime", "date", "dealinformation", read_only=True),
             {**_prop("hubspot_owner_id", "enumeration", "select", "dealinformation"), "externalOptions": True},
             _prop("dealname", group="dealinformation"), _prop("amount", "number", "number", "dealinformation"),
             _prop("closedate", "datetime", "date", "dealinformation"),
             _prop("pipeline", "enumeration", "select", "dealinformation", ("default",)),
             _prop("dealstage", "enumeration", "radio", "dealinformation", tuple(s[0] for s in STAGES)),
             _prop("deal_currency_code", "enumeration", "select", "dealinformation", ("EUR", "CHF", "USD")),
             # A custom property the company's sales operations created: the ERP order a won deal became.
             _prop("erp_order_number", group="dealinformation")]
    return {t: {p["name"]: p for p in props} for t, props in
            (("contacts", contacts), ("companies", companies), ("tasks", tasks), ("deals", deals))}

DEFAULT_GROUPS = {"contacts": ["contactinformation"], "companies": ["companyinformation"], "tasks": ["task"],
                  "deals": ["dealinformation"]}

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")

def as_int(value) -> int:
    text = str(value)
    return int(text) if text.isdigit() else -1

def property_error(name: str, code: str, message: str) -> dict:
    return {"isValid": False, "message": message, "error": code, "name": name, "localizedErrorMessage": message}

def correlation_id() -> str:
    return f"{random.getrandbits(64):016x}"

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

def email_of(props: dict) -> str | None:
    e = props.get("email")
    return e.strip().lower() if e else None

def object_body(oid: int, props: dict, now: str, new: bool) -> dict:
    return {"id": str(oid), "properties": props, "createdAt": now, "updatedAt": now, "archived": False, "new": new}

def not_found(message: str) -> dict:
    return {"status": "error", "category": "OBJECT_NOT_FOUND", "message": message}

def validation_error(message: str) -> dict:
    return {"status": "error", "category": "VALIDATION_ERROR", "message": message}

def rate_limit_body() -> dict:
    return {"status": "error", "message": "You have reached your ten_secondly_rolling limit.", "errorType": "RATE_LIMIT",
            "category": "RATE_LIMITS", "policyName": "TEN_SECONDLY_ROLLING"}
