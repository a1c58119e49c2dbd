"""Why a golden record looks the way it does: its source records (masked by default), the match
evidence between them and the field each survived from."""

from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa

from ..model import ENTITIES
from ..platform.masking import mask_value
from ..platform.schema import ACCOUNT_CROSSWALK, ACCOUNT_RECORDS, MATCH_EDGES, PERSON_CROSSWALK, PERSON_RECORDS
from ..platform.warehouse import Warehouse


def explain(wh: Warehouse, entity: str, golden_id: str, masked: bool = True) -> dict:
    """Which pairs, with which field evidence, merged the records of a golden ID (personal values masked)."""
    table = {"persons": PERSON_CROSSWALK, "accounts": ACCOUNT_CROSSWALK}[entity]
    members = wh.read_frame(sa.select(table.c.record_key, table.c.source).where(table.c.golden_id == golden_id,
                                                                                 table.c.valid_to.is_(None)))
    edges = wh.read_frame(sa.select(MATCH_EDGES).where(MATCH_EDGES.c.entity == entity, MATCH_EDGES.c.golden_id == golden_id)
                          .order_by(MATCH_EDGES.c.probability.desc()))
    records = _records_for(wh, entity, members["record_key"].tolist(), masked)
    return {
        "golden_id": golden_id, "entity": entity, "records": records,
        "merges": [{"record_a": r.record_a, "record_b": r.record_b, "probability": round(float(r.probability), 6),
                    "reason": r.reason, "evidence": json.loads(r.evidence)} for r in edges.itertuples()],
    }


def _records_for(wh: Warehouse, entity: str, keys: list[str], masked: bool) -> list[dict]:
    if not keys:
        return []
    table = PERSON_RECORDS if entity == "persons" else ACCOUNT_RECORDS
    cols = (["record_key", "source", "first_name", "last_name", "email_norm", "company_name", "postal_code", "city"]
            if entity == "persons" else ["record_key", "source", "company_name", "legal_form", "postal_code", "city", "domain"])
    df = wh.read_frame(sa.select(*(table.c[c] for c in cols)).where(table.c.record_key.in_(keys[:200])))
    contact = ENTITIES["contact"]
    out = []
    for row in df.to_dict("records"):
        if masked:
            for c in ("first_name", "last_name"):
                if c in row:
                    row[c] = mask_value(row[c], "name")
            if "email_norm" in row:
                row["email_norm"] = mask_value(row["email_norm"], contact.field("email").pii)
        out.append({k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in row.items()})
    return out

