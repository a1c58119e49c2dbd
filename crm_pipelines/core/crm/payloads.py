"""Golden records -> outgoing CRM payloads: one row per object, CRM property names as columns.

Besides the properties, a payload carries ``golden_id`` (sent as the ID property), ``crm_id``
(the CRM's own ID when the record came from the CRM: it is updated, never created again) and,
for contacts, ``account_id`` (the golden account whose company the contact is associated with).
Values are strings or None, as the CRM stores them.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from .settings import ObjectSync

CRM_ID_COLUMN = {"companies": "crm_company_id", "contacts": "crm_contact_id"}
META_COLUMNS = ("golden_id", "crm_id", "account_id")


def derive_columns(golden: pd.DataFrame, object_type: str) -> pd.DataFrame:
    """Adds the derived columns sync.yaml may map: ``address`` and, for contacts, ``lifecycle_stage``."""
    out = golden.copy()
    street, number = _column(out, "street"), _column(out, "house_number")
    out["address"] = pd.Series([(f"{s} {n}" if n else s) if s else None for s, n in zip(street, number)],
                               index=out.index, dtype=object)
    if object_type == "contacts":
        sources = _column(out, "sources").fillna("")
        customer = _column(out, "erp_customer_number").notna()
        newsletter_only = sources == "newsletter_signups"
        scored = _column(out, "score_stage").fillna("")
        # Our funnel: known customers are customers; a lead handed to sales (score stage sql) is a sales-
        # qualified lead, one past the MQL threshold marketing-qualified; people we only know from the
        # newsletter are subscribers. The push never sends a stage below the CRM's (sync.py).
        out["lifecycle_stage"] = np.select(
            [customer, scored == "sql", scored == "mql", newsletter_only],
            ["customer", "salesqualifiedlead", "marketingqualifiedlead", "subscriber"], default="lead")
    return out


def build_payload(golden: pd.DataFrame, spec: ObjectSync) -> pd.DataFrame:
    df = derive_columns(golden, spec.object_type)
    out = pd.DataFrame({"golden_id": df["golden_id"].astype(str)})
    crm_col = CRM_ID_COLUMN[spec.object_type]
    out["crm_id"] = _column(df, crm_col)
    if spec.object_type == "contacts":
        out["account_id"] = _column(df, "account_id")
    for prop, column in spec.properties.items():
        values = _column(df, column)
        table = spec.value_maps.get(prop)
        if table:
            # Our values in the CRM's vocabulary; a value the map does not know goes as it is, and the
            # preflight refuses it if the portal's options do not have it either.
            values = values.map(lambda v: table.get(v, v) if v is not None else None)
        out[prop] = values
    return out.reset_index(drop=True)


def property_columns(payload: pd.DataFrame) -> list[str]:
    return [c for c in payload.columns if c not in META_COLUMNS and not c.startswith("_")]


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return _strings(df[name])
    return pd.Series([None] * len(df), index=df.index, dtype=object)


def _strings(s: pd.Series) -> pd.Series:
    def conv(v):
        if is_missing(v) or (isinstance(v, str) and not v.strip()):
            return None
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)
    return pd.Series([conv(v) for v in s.astype(object)], index=s.index, dtype=object)
