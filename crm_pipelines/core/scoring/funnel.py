"""The funnel: Lead -> MQL -> SQL -> Opportunity -> Closed-won per week and source, the median
time to qualification and the median lead-response time.

Lead, MQL and SQL come from our scores (the first time each stage was reached); Opportunity and
Closed-won from the CRM's lifecycle stage (sales moves them there), and an ERP customer number
counts as won. The week is the ISO week in which the contact was first seen; the source is the
source of their earliest record.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from ..platform.schema import ALERT_LEDGER, GOLDEN_CONTACTS, LEAD_SCORES, PERSON_CROSSWALK, PERSON_RECORDS
from ..platform.warehouse import Warehouse, tables_present

STAGE_COLUMNS = ("lead", "mql", "sql", "opportunity", "closed_won")


def funnel(wh: Warehouse) -> tuple[pd.DataFrame, dict]:
    if not tables_present(wh, [GOLDEN_CONTACTS]):
        return pd.DataFrame(columns=["week", "source", *STAGE_COLUMNS]), {}
    g = GOLDEN_CONTACTS
    contacts = wh.read_frame(sa.select(g.c.golden_id, g.c.first_seen_at, g.c.erp_customer_number))
    contacts["first_seen_at"] = pd.to_datetime(contacts["first_seen_at"], utc=True)
    scores = wh.read_frame(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.mql_at, LEAD_SCORES.c.sql_at)) \
        if tables_present(wh, [LEAD_SCORES]) else pd.DataFrame(columns=["golden_id", "mql_at", "sql_at"])
    df = contacts.merge(scores, on="golden_id", how="left")
    for c in ("mql_at", "sql_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    first_source, crm_stage = _records(wh)
    df["source"] = df["golden_id"].map(first_source).fillna("unknown")
    stage = df["golden_id"].map(crm_stage)
    df["lead"] = True
    df["closed_won"] = stage.eq("customer") | df["erp_customer_number"].notna()
    df["opportunity"] = stage.isin(["opportunity", "customer"]) | df["closed_won"]
    df["sql"] = df["sql_at"].notna() | stage.isin(["salesqualifiedlead"]) | df["opportunity"]
    df["mql"] = df["mql_at"].notna() | stage.isin(["marketingqualifiedlead"]) | df["sql"]
    iso = df["first_seen_at"].dt.isocalendar()
    df["week"] = (iso["year"].astype("Int64").astype(str) + "-W" + iso["week"].astype("Int64").astype(str).str.zfill(2)) \
        .where(df["first_seen_at"].notna(), "unknown")
    table = df.groupby(["week", "source"])[list(STAGE_COLUMNS)].sum().astype(int).reset_index()
    qualify_days = (df["mql_at"] - df["first_seen_at"]).dt.total_seconds() / 86400
    stats = {
        "contacts": len(df), "totals": {s: int(df[s].sum()) for s in STAGE_COLUMNS},
        "median_days_to_qualification": _median(qualify_days[qualify_days >= 0]),
        "median_lead_response_minutes": _median(_response_minutes(wh)),
    }
    return table, stats


def _records(wh: Warehouse) -> tuple[pd.Series, pd.Series]:
    if not tables_present(wh, [PERSON_RECORDS, PERSON_CROSSWALK]):
        return pd.Series(dtype=object), pd.Series(dtype=object)
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    rows = wh.read_frame(sa.select(xw.c.golden_id, pr.c.source, pr.c.record_ts, pr.c.record_key)
                         .join(xw, xw.c.record_key == pr.c.record_key).where(xw.c.valid_to.is_(None)))
    rows["record_ts"] = pd.to_datetime(rows["record_ts"], utc=True)
    first = rows.sort_values(["golden_id", "record_ts"]).drop_duplicates("golden_id").set_index("golden_id")["source"]
    stage = pd.Series(dtype=object)
    if sa.inspect(wh.engine).has_table("crm_contacts", schema="raw"):
        crm = wh.read_raw_sql("SELECT source_record_id, lifecycle_stage, _partition FROM raw.crm_contacts")
        crm = crm.sort_values("_partition").drop_duplicates("source_record_id", keep="last")
        keys = "crm_contacts:" + crm["source_record_id"].astype(str)
        to_golden = rows.set_index("record_key")["golden_id"]
        crm["golden_id"] = keys.map(to_golden)
        stage = crm.dropna(subset=["golden_id"]).drop_duplicates("golden_id", keep="last").set_index("golden_id")[
            "lifecycle_stage"]
    return first, stage


def _response_minutes(wh: Warehouse) -> pd.Series:
    if not tables_present(wh, [ALERT_LEDGER]):
        return pd.Series(dtype=float)
    t = ALERT_LEDGER
    rows = wh.read_frame(sa.select(t.c.landed_at, t.c.created_at, t.c.first_activity_at)
                         .where(t.c.first_activity_at.is_not(None)))
    start = pd.to_datetime(rows["landed_at"], utc=True).fillna(pd.to_datetime(rows["created_at"], utc=True))
    return (pd.to_datetime(rows["first_activity_at"], utc=True) - start).dt.total_seconds() / 60


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return round(float(values.median()), 2) if len(values) else None
