"""The funnel from facts: Lead -> MQL -> SQL -> Opportunity -> Closed-won (or Closed-lost), per golden contact.

| stage | reached when (the earliest moment) |
|---|---|
| Lead | the contact exists: first seen in any source (``golden.contacts.first_seen_at``) |
| MQL | the lead score first crossed the MQL threshold (``marts.lead_scores.mql_at``) |
| SQL | the score first crossed the SQL threshold, or the contact was first handed to sales (``ops.alert_ledger``) |
| Opportunity | the first CRM deal the contact is associated with was created |
| Closed-won | the first of its deals was won (close date) |
| Closed-lost | every deal of the contact was lost (the last close date); none open, none won |

A stage counts everyone who reached it or a later one (a deal sales opened for a contact our score never saw
makes them SQL and MQL too): the funnel narrows by definition. Conversion rates are stage over stage before; the
win rate is won over closed (won + lost). Time to a stage is the median of days from the stage before, over those
who reached both with dates in that order. **Lead response time**: minutes from a hand-off's landing (the lead's
arrival, or the alert's creation) to the first CRM activity on its task, per hand-off; its median per dimension
value counts each hand-off under its contact's values.

Dimensions of every count: ``month`` the lead was first seen, ``source`` of the contact's earliest record,
``campaign`` of the contact's first touch that names one, ``segment`` (``marts.segment_members``; a contact in two
segments counts in both, one in none counts under ``(none)``), and ``territory``: the sales team of the contact's
PLZ and industry (``config/territories.yaml``). ``all`` holds the totals. Time in deal stage comes from the deal
stage history: days from entering a stage to entering the next, for each stage a deal left.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from ..platform.schema import (ALERT_LEDGER, CRM_DEAL_STAGES, GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, LEAD_SCORES,
                               PERSON_CROSSWALK, PERSON_RECORDS, SEGMENT_MEMBERS)
from ..platform.warehouse import Warehouse, tables_present
from ..scoring.handoff import Territories
from .revenue import Deals

STAGES = ("lead", "mql", "sql", "opportunity", "closed_won")
DIMENSIONS = ("all", "month", "source", "campaign", "segment", "territory")
FACT_COLUMNS = ["golden_id", "lead_at", "mql_at", "sql_at", "opportunity_at", "won_at", "lost_at", "month", "source",
                "campaign", "territory"]
RATES = (("mql_rate", "mql", "lead"), ("sql_rate", "sql", "mql"), ("opportunity_rate", "opportunity", "sql"),
         ("won_rate", "closed_won", "opportunity"))
DAYS = (("days_to_mql", "lead_at", "mql_at"), ("days_to_sql", "mql_at", "sql_at"),
        ("days_to_opportunity", "sql_at", "opportunity_at"), ("days_to_close", "opportunity_at", "won_at"))


def funnel_facts(wh: Warehouse, deals: Deals, touches: pd.DataFrame, territories: Territories) -> pd.DataFrame:
    """One row per golden contact: when it reached each stage and its dimensions (see the module's description)."""
    if not tables_present(wh, [GOLDEN_CONTACTS]):
        return pd.DataFrame(columns=FACT_COLUMNS)
    g = GOLDEN_CONTACTS
    facts = wh.read_select(sa.select(g.c.golden_id, g.c.first_seen_at, g.c.postal_code, g.c.account_id))
    facts = facts.rename(columns={"first_seen_at": "lead_at"})
    facts["lead_at"] = pd.to_datetime(facts["lead_at"], utc=True)
    if tables_present(wh, [LEAD_SCORES]):
        s = wh.read_select(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.mql_at, LEAD_SCORES.c.sql_at))
        facts = facts.merge(s, on="golden_id", how="left")
    else:
        facts["mql_at"], facts["sql_at"] = pd.NaT, pd.NaT
    for c in ("mql_at", "sql_at"):
        facts[c] = pd.to_datetime(facts[c], utc=True)
    if tables_present(wh, [ALERT_LEDGER]):
        a = wh.read_select(sa.select(ALERT_LEDGER.c.golden_id, ALERT_LEDGER.c.created_at)
                           .where(ALERT_LEDGER.c.golden_id.is_not(None)))
        first_handoff = pd.to_datetime(a["created_at"], utc=True).groupby(a["golden_id"]).min()
        facts["sql_at"] = pd.concat([facts["sql_at"], facts["golden_id"].map(first_handoff)], axis=1).min(axis=1)
    d = deals.deals.set_index("deal_id")
    per = deals.contacts.merge(d[["created_at", "close_date", "is_won", "is_closed"]], left_on="deal_id",
                               right_index=True)
    if len(per):
        per["won"] = per["is_won"].fillna(False).astype(bool)
        per["lost"] = per["is_closed"].fillna(False).astype(bool) & ~per["won"]
        grouped = per.groupby("golden_id")
        facts["opportunity_at"] = facts["golden_id"].map(grouped["created_at"].min())
        facts["won_at"] = facts["golden_id"].map(per[per["won"]].groupby("golden_id")["close_date"].min())
        all_lost = grouped["lost"].all()
        facts["lost_at"] = facts["golden_id"].map(per[per["golden_id"].map(all_lost)].groupby("golden_id")["close_date"]
                                                  .max())
    else:
        facts["opportunity_at"] = facts["won_at"] = facts["lost_at"] = pd.NaT
    for c in ("opportunity_at", "won_at", "lost_at"):
        facts[c] = pd.to_datetime(facts[c], utc=True)
    facts["month"] = facts["lead_at"].dt.strftime("%Y-%m").fillna("unknown")
    facts["source"] = facts["golden_id"].map(_first_source(wh)).fillna("unknown")
    named = touches.dropna(subset=["campaign"]) if len(touches) else touches
    first_campaign = named.drop_duplicates("golden_id").set_index("golden_id")["campaign"] if len(named) else {}
    facts["campaign"] = facts["golden_id"].map(first_campaign).fillna("(none)")
    facts["territory"] = _territories(wh, facts, territories)
    return facts[FACT_COLUMNS].reset_index(drop=True)


def _first_source(wh: Warehouse) -> pd.Series:
    if not tables_present(wh, [PERSON_RECORDS, PERSON_CROSSWALK]):
        return pd.Series(dtype=object)
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    rows = wh.read_select(sa.select(xw.c.golden_id, pr.c.source, pr.c.record_ts)
                          .join(xw, xw.c.record_key == pr.c.record_key).where(xw.c.valid_to.is_(None)))
    rows["record_ts"] = pd.to_datetime(rows["record_ts"], utc=True)
    return rows.sort_values(["golden_id", "record_ts", "source"]).drop_duplicates("golden_id").set_index("golden_id")[
        "source"]


def _territories(wh: Warehouse, facts: pd.DataFrame, territories: Territories) -> pd.Series:
    industry = pd.Series(dtype=object)
    if tables_present(wh, [GOLDEN_ACCOUNTS]):
        acc = wh.read_select(sa.select(GOLDEN_ACCOUNTS.c.golden_id, GOLDEN_ACCOUNTS.c.industry))
        industry = acc.set_index("golden_id")["industry"]
    ind = facts["account_id"].map(industry)
    cache: dict[tuple, str] = {}
    out = []
    for plz, i in zip(facts["postal_code"], ind):
        key = (None if pd.isna(plz) else str(plz), None if pd.isna(i) else str(i))
        if key not in cache:
            cache[key] = territories.team_for(*key).name
        out.append(cache[key])
    return pd.Series(out, index=facts.index, dtype=object)


def reached(facts: pd.DataFrame) -> pd.DataFrame:
    """Per contact and stage: reached it or a later one (booleans), plus ``closed_lost``."""
    out = pd.DataFrame(index=facts.index)
    out["closed_won"] = facts["won_at"].notna()
    out["closed_lost"] = facts["lost_at"].notna() & ~out["closed_won"]
    out["opportunity"] = facts["opportunity_at"].notna() | out["closed_won"] | out["closed_lost"]
    out["sql"] = facts["sql_at"].notna() | out["opportunity"]
    out["mql"] = facts["mql_at"].notna() | out["sql"]
    out["lead"] = True
    return out[["lead", "mql", "sql", "opportunity", "closed_won", "closed_lost"]]


def funnel_table(facts: pd.DataFrame, wh: Warehouse | None = None,
                 responses: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counts, conversion rates and median days per stage, for every value of every dimension; with ``responses``
    (golden_id, minutes: one row per hand-off) also the median lead response time of the value's hand-offs."""
    flags = reached(facts)
    base = pd.concat([facts, flags], axis=1)
    for name, start, end in DAYS:
        days = (base[end] - base[start]).dt.total_seconds() / 86400
        base[name] = days.where(days >= 0)
    frames = []
    segments = _segments(wh, facts) if wh is not None else pd.DataFrame(columns=["golden_id", "segment"])
    for dim in DIMENSIONS:
        if dim == "all":
            rows = base.assign(value="all")
        elif dim == "segment":
            rows = base.merge(segments, on="golden_id", how="left")
            rows["value"] = rows["segment"].fillna("(none)")
        else:
            rows = base.assign(value=base[dim])
        agg = rows.groupby("value").agg(**{s: (s, "sum") for s in (*STAGES, "closed_lost")},
                                        **{n: (n, "median") for n, _, _ in DAYS})
        if responses is not None and len(responses):
            # A hand-off counts under its contact's values (a contact's several hand-offs each count).
            per = rows[["golden_id", "value"]].merge(responses[["golden_id", "minutes"]], on="golden_id")
            agg["median_response_minutes"] = per.groupby("value")["minutes"].median()
        agg.insert(0, "dimension", dim)
        frames.append(agg.reset_index())
    table = pd.concat(frames, ignore_index=True)
    for s in (*STAGES, "closed_lost"):
        table[s] = table[s].astype(int)
    for name, num, den in RATES:
        table[name] = (table[num] / table[den].where(table[den] > 0)).round(4)
    closed = table["closed_won"] + table["closed_lost"]
    table["win_rate"] = (table["closed_won"] / closed.where(closed > 0)).round(4)
    if "median_response_minutes" not in table.columns:
        table["median_response_minutes"] = float("nan")
    for name in (*[d[0] for d in DAYS], "median_response_minutes"):
        table[name] = table[name].astype(float).round(2)
    return table[["dimension", "value", *STAGES, "closed_lost", *[r[0] for r in RATES], "win_rate",
                  *[d[0] for d in DAYS], "median_response_minutes"]]


def _segments(wh: Warehouse, facts: pd.DataFrame) -> pd.DataFrame:
    if not tables_present(wh, [SEGMENT_MEMBERS]):
        return pd.DataFrame(columns=["golden_id", "segment"])
    return wh.read_select(sa.select(SEGMENT_MEMBERS.c.golden_id, SEGMENT_MEMBERS.c.segment))


def response_times(wh: Warehouse, facts: pd.DataFrame) -> pd.DataFrame:
    """Lead response time per hand-off with a first CRM activity: minutes, with the contact's dimensions and the
    month of the hand-off."""
    cols = ["alert_key", "kind", "minutes", "handoff_month", "golden_id", "source", "campaign", "territory"]
    if not tables_present(wh, [ALERT_LEDGER]):
        return pd.DataFrame(columns=cols)
    t = ALERT_LEDGER
    rows = wh.read_select(sa.select(t.c.alert_key, t.c.kind, t.c.golden_id, t.c.landed_at, t.c.created_at,
                                    t.c.first_activity_at).where(t.c.first_activity_at.is_not(None)))
    start = pd.to_datetime(rows["landed_at"], utc=True).fillna(pd.to_datetime(rows["created_at"], utc=True))
    rows["minutes"] = ((pd.to_datetime(rows["first_activity_at"], utc=True) - start).dt.total_seconds() / 60).round(1)
    rows["handoff_month"] = start.dt.strftime("%Y-%m")
    rows = rows.merge(facts[["golden_id", "source", "campaign", "territory"]], on="golden_id", how="left")
    return rows[cols]


def stage_times(wh: Warehouse) -> pd.DataFrame:
    """Per deal stage: deals that entered it, deals that left it, median and 90th percentile of days in it."""
    cols = ["stage", "entered", "left", "median_days", "p90_days"]
    if not tables_present(wh, [CRM_DEAL_STAGES]):
        return pd.DataFrame(columns=cols)
    h = wh.read_select(sa.select(CRM_DEAL_STAGES.c.deal_id, CRM_DEAL_STAGES.c.stage, CRM_DEAL_STAGES.c.entered_at))
    if h.empty:
        return pd.DataFrame(columns=cols)
    h["entered_at"] = pd.to_datetime(h["entered_at"], utc=True)
    h = h.sort_values(["deal_id", "entered_at"])
    h["left_at"] = h.groupby("deal_id")["entered_at"].shift(-1)
    h["days"] = (h["left_at"] - h["entered_at"]).dt.total_seconds() / 86400
    out = h.groupby("stage", sort=False).agg(entered=("deal_id", "count"), left=("days", "count"),
                                            median_days=("days", "median"),
                                            p90_days=("days", lambda x: x.quantile(0.9) if x.notna().any() else None))
    return out.reset_index().round(2)[cols]
