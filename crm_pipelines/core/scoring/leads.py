"""The warehouse side of scoring and hand-off: read what scoring needs, write scores and their
daily history, and turn SQL crossings and newly landed leads into :class:`~.handoff.Lead` items.

Plain Python; ``defs/scoring.py`` wires it into assets, sensors and jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..golden.crosswalk import golden_ids_by
from ..golden.incremental import match_new_persons
from ..golden.matching.settings import EntityMatchSpec
from ..golden.records import person_records
from ..model import ENTITIES
from ..platform.schema import (ALERT_LEDGER, CRM_SYNC_STATE, GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, LEAD_SCORE_HISTORY,
                               LEAD_SCORES, PERSON_CROSSWALK, PERSON_RECORDS, raw_table)
from ..platform.warehouse import Warehouse, tables_present
from ..privacy_screen.suppression import Screen
from ..sources.roles import ENGAGEMENT_SOURCES
from .handoff import Lead, may_alert, wants_brochure
from .rules import ScoreResult, ScoringRules, attribute_events, score_contacts, update_stage_times

CONTACT_COLUMNS = ("golden_id", "first_name", "last_name", "email", "job_title", "company_name", "street", "house_number",
                   "postal_code", "city", "country", "crm_contact_id", "erp_customer_number", "account_id",
                   "email_consent", "email_consent_basis", "phone_consent", "phone_consent_basis", "post_consent",
                   "post_consent_basis", "first_seen_at", "last_seen_at")


def identity_maps(wh: Warehouse) -> tuple[pd.Series, pd.Series]:
    """E-mail -> golden contact and CRM contact ID -> golden contact, over every record of each contact."""
    by_email, by_crm = golden_ids_by(wh, PERSON_RECORDS, PERSON_CROSSWALK, ("email_norm", "crm_contact_id"))
    return by_email, by_crm


def load_events(wh: Warehouse) -> pd.DataFrame:
    """Behaviour events and the marketing tool's engagement reports (opens, clicks, bounces, unsubscribes:
    the same event types, so the same rules score them)."""
    cols = ["source_record_id", "event_type", "occurred_at", "url", "email", "crm_contact_id", "anonymous_id", "_partition"]
    frames = []
    for source in ("behaviour_events", *ENGAGEMENT_SOURCES):
        t = raw_table(source, ENTITIES["behaviour_event"])
        if tables_present(wh, [t]):
            frames.append(wh.read_raw_sql(f"SELECT {', '.join(cols)} FROM {wh.qualified(t)}",
                                          types={c: t.c[c].type for c in cols}).assign(_source=source))
    if not frames:
        return pd.DataFrame(columns=["event_type", "occurred_at", "url", "email", "crm_contact_id", "anonymous_id"])
    events = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # The same event delivered on two days counts once.
    events = events.sort_values("_partition").drop_duplicates(["_source", "source_record_id"], keep="last")
    events["occurred_at"] = pd.to_datetime(events["occurred_at"], utc=True, format="mixed")
    return events.drop(columns=["_partition", "_source"])


@dataclass
class ScoringPlan:
    """What every contact range of one scoring pass shares: the moment scored against, the range
    bounds (golden IDs, ``None`` open-ended) and the identified events split by range."""
    now: datetime
    ranges: list[tuple[str | None, str | None]]
    events: list[pd.DataFrame]  # per range: golden_id, event_type, occurred_at, url
    events_total: int

    def only(self, k: int) -> "ScoringPlan":
        """The plan of range ``k`` alone: what one parallel step needs (and is sent)."""
        return ScoringPlan(self.now, [self.ranges[k]], [self.events[k]], self.events_total)

    def without_events(self) -> "ScoringPlan":
        """The plan with its events emptied: what a scoring step hands on once they are scored."""
        return ScoringPlan(self.now, self.ranges, [e.iloc[0:0] for e in self.events], self.events_total)


def plan_scoring(wh: Warehouse, ranges: int, now: datetime | None = None) -> ScoringPlan:
    """Splits the golden contacts into ``ranges`` contiguous ID ranges of about equal size and attributes
    the behaviour events once, here (anonymous visitors are stitched across all events)."""
    now = now or datetime.now(timezone.utc)
    ids = wh.read_select(sa.select(GOLDEN_CONTACTS.c.golden_id).order_by(GOLDEN_CONTACTS.c.golden_id))["golden_id"] \
        if tables_present(wh, [GOLDEN_CONTACTS]) else pd.Series([], dtype=object)
    n = max(1, min(int(ranges), max(1, len(ids))))
    cuts = [str(ids.iloc[len(ids) * k // n]) for k in range(1, n)]
    bounds = list(zip([None, *cuts], [*cuts, None]))
    events = load_events(wh)
    by_email, by_crm = identity_maps(wh)
    events["golden_id"] = attribute_events(events, by_email, by_crm) if len(events) else None
    known = events[events["golden_id"].notna()][["golden_id", "event_type", "occurred_at", "url"]]
    slot = np.searchsorted(np.array(cuts, dtype=object), known["golden_id"].to_numpy(dtype=object), side="right") \
        if cuts else np.zeros(len(known), dtype=np.int64)
    parts = [known[slot == k].reset_index(drop=True) for k in range(n)]
    return ScoringPlan(now, bounds, parts, int(len(events)))


def score_range(wh: Warehouse, rules: ScoringRules, plan: ScoringPlan, k: int) -> ScoreResult:
    """Scores the golden contacts of range ``k`` of the plan: contacts are scored one by one, so
    the ranges can run in parallel and together give exactly what one pass over all gives."""
    lo, hi = plan.ranges[k]
    c = GOLDEN_CONTACTS
    in_range = [*([c.c.golden_id >= lo] if lo is not None else []), *([c.c.golden_id < hi] if hi is not None else [])]
    contacts = pd.DataFrame(columns=CONTACT_COLUMNS)
    if tables_present(wh, [c]):
        contacts = wh.read_select(sa.select(*[c.c[col] for col in CONTACT_COLUMNS]).where(*in_range)
                                  .order_by(c.c.golden_id))
        # Golden IDs are fixed-width (K-00000001), so the database's collation orders them as Python does.
        ids = contacts["golden_id"].astype(str)
        if (lo is not None and (ids < lo).any()) or (hi is not None and (ids >= hi).any()):
            raise RuntimeError(f"the warehouse orders golden IDs differently from Python: range {lo}..{hi}")
    accounts = pd.DataFrame(columns=["golden_id", "industry", "employee_count"])
    if contacts["account_id"].notna().any() and tables_present(wh, [GOLDEN_ACCOUNTS]):
        a = GOLDEN_ACCOUNTS
        # Only the accounts of this range's contacts, selected in the database: each range reads its own.
        linked = sa.select(c.c.account_id).where(*in_range)
        accounts = wh.read_frame(sa.select(a.c.golden_id, a.c.industry, a.c.employee_count)
                                 .where(a.c.golden_id.in_(linked)).order_by(a.c.golden_id))
    result = score_contacts(plan.events[k], contacts, accounts, rules, plan.now)
    result.contributions = result.contributions.iloc[0:0]  # explained in the scores; not sent between steps
    return result


def write_lead_scores(wh: Warehouse, parts: list[ScoreResult], plan: ScoringPlan, run_id: str) -> dict:
    """The ranges' scores (in range order) with the stage times carried over, in place of the old ones."""
    wh.ensure_tables([LEAD_SCORES, LEAD_SCORE_HISTORY])
    frames = [p.scores for p in parts if len(p.scores)]
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["golden_id", "score", "stage", "explanation"])
    previous = wh.read_frame(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.stage, LEAD_SCORES.c.mql_at,
                                       LEAD_SCORES.c.sql_at, LEAD_SCORES.c.sql_since))
    scores = update_stage_times(result, previous, plan.now)
    scores["scored_at"] = pd.Timestamp(plan.now).tz_convert("UTC")
    scores["run_id"] = run_id
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(LEAD_SCORES))
        wh.bulk_insert(conn, LEAD_SCORES, scores)
    prev_stage = previous.set_index("golden_id")["stage"] if len(previous) else pd.Series(dtype=object)
    was = scores["golden_id"].map(prev_stage)
    return {
        "events_attributed": sum(int(p.stats.get("events_attributed", 0)) for p in parts),
        "events_total": plan.events_total, "contacts": len(scores), "ranges": len(parts),
        "by_stage": scores["stage"].value_counts().to_dict(),
        "crossed_into_sql": int(((scores["stage"] == "sql") & (was != "sql")).sum()),
        "crossed_into_mql": int(((scores["stage"] == "mql") & ~was.isin(["mql", "sql"])).sum()),
        # An empty night has no scores, and an empty frame's score column is of dtype object.
        "top": scores.astype({"score": float}).nlargest(5, "score")[["golden_id", "score", "stage", "explanation"]],
    }


def build_lead_scores(wh: Warehouse, rules: ScoringRules, run_id: str, now: datetime | None = None,
                      ranges: int = 1) -> dict:
    """Scores every golden contact, keeps the stage times; returns stats. One process; the asset runs
    the same three functions with one step per contact range."""
    plan = plan_scoring(wh, ranges, now)
    return write_lead_scores(wh, [score_range(wh, rules, plan, k) for k in range(len(plan.ranges))], plan, run_id)


def snapshot_history(wh: Warehouse, now: datetime | None = None) -> tuple[str, int]:
    """Today's (Europe/Berlin) row per contact in the history: re-running the same day replaces it."""
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([LEAD_SCORES, LEAD_SCORE_HISTORY])
    day = pd.Timestamp(now).tz_convert("Europe/Berlin").strftime("%Y-%m-%d")
    scores = wh.read_frame(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.score, LEAD_SCORES.c.stage))
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(LEAD_SCORE_HISTORY).where(LEAD_SCORE_HISTORY.c.day == day))
        wh.bulk_insert(conn, LEAD_SCORE_HISTORY, scores.assign(day=day))
    return day, len(scores)


def reasons_text(explanation: str | None) -> str:
    """'pricing_page +28 (3×), fit:job_title +10' from the stored explanation."""
    if not explanation:
        return ""
    parts = []
    for rule, points, events in json.loads(explanation):
        parts.append(f"{rule} {points:+g}" + (f" ({events}×)" if events else ""))
    return ", ".join(parts)


def _customer(row) -> bool:
    return isinstance(row.get("erp_customer_number"), str) and bool(row.get("erp_customer_number"))


def _crm_ids(wh: Warehouse, golden_ids: list[str]) -> dict[str, str]:
    if not golden_ids or not tables_present(wh, [CRM_SYNC_STATE]):
        return {}
    t = CRM_SYNC_STATE
    rows = wh.read_frame(sa.select(t.c.golden_id, t.c.crm_id).where(t.c.object_type == "contacts", t.c.crm_id.is_not(None),
                                                                   t.c.golden_id.in_(golden_ids)))
    return dict(zip(rows["golden_id"], rows["crm_id"]))


def sql_crossings(wh: Warehouse, rules: ScoringRules, screen: Screen) -> list[Lead]:
    """Contacts in SQL whose crossing has no hand-off yet."""
    if not tables_present(wh, [LEAD_SCORES, GOLDEN_CONTACTS]):
        return []
    ls = LEAD_SCORES
    hot = wh.read_frame(sa.select(ls.c.golden_id, ls.c.score, ls.c.stage, ls.c.explanation, ls.c.sql_since)
                        .where(ls.c.stage == "sql", ls.c.sql_since.is_not(None)))
    if hot.empty:
        return []
    hot["alert_key"] = ["sql:%s:%s" % (g, pd.Timestamp(s).strftime("%Y%m%dT%H%M%S"))
                        for g, s in zip(hot["golden_id"], hot["sql_since"])]
    if tables_present(wh, [ALERT_LEDGER]):
        done = set(wh.read_frame(sa.select(ALERT_LEDGER.c.alert_key).where(
            ALERT_LEDGER.c.alert_key.in_(hot["alert_key"].tolist())))["alert_key"])
        hot = hot[~hot["alert_key"].isin(done)]
    if hot.empty:
        return []
    g = GOLDEN_CONTACTS
    contacts = wh.read_frame(sa.select(*[g.c[c] for c in CONTACT_COLUMNS]).where(g.c.golden_id.in_(hot["golden_id"].tolist())))
    return _leads_for(wh, hot.merge(contacts, on="golden_id"), "sql_crossing", rules, screen)


def _leads_for(wh: Warehouse, rows: pd.DataFrame, kind: str, rules: ScoringRules, screen: Screen) -> list[Lead]:
    industries = {}
    if tables_present(wh, [GOLDEN_ACCOUNTS]) and "account_id" in rows.columns:
        acc = wh.read_frame(sa.select(GOLDEN_ACCOUNTS.c.golden_id, GOLDEN_ACCOUNTS.c.industry)
                            .where(GOLDEN_ACCOUNTS.c.golden_id.in_(rows["account_id"].dropna().tolist())))
        industries = dict(zip(acc["golden_id"], acc["industry"]))
    suppressed = screen.suppressed(rows)
    crm_ids = _crm_ids(wh, rows["golden_id"].dropna().tolist()) if "golden_id" in rows.columns else {}
    leads = []
    for (_, row), sup in zip(rows.iterrows(), suppressed):
        r = {k: (None if (isinstance(v, float) and np.isnan(v)) or v is pd.NaT else v) for k, v in row.items()}
        customer = _customer(r)
        gid = r.get("golden_id")
        has_address = all(isinstance(r.get(c), str) and r.get(c) for c in ("street", "postal_code", "city"))
        leads.append(Lead(
            alert_key=r["alert_key"], kind=r.get("kind") or kind, golden_id=gid, record_key=r.get("record_key"),
            name=" ".join(p for p in (r.get("first_name"), r.get("last_name")) if isinstance(p, str)) or "(ohne Namen)",
            company=r.get("company_name"), postal_code=r.get("postal_code"), city=r.get("city"),
            industry=industries.get(r.get("account_id")), score=r.get("score"),
            reasons=reasons_text(r.get("explanation")) or r.get("reasons") or "",
            landed_at=r.get("landed_at"), contact_crm_id=crm_ids.get(gid) or r.get("crm_contact_id"),
            may_contact=may_alert(r.get("kind") or kind, r.get("email_consent"), r.get("email_consent_basis"),
                                  r.get("phone_consent"), r.get("phone_consent_basis"), customer),
            suppressed=bool(sup),
            brochure=wants_brochure(r.get("score"), r.get("stage"), r.get("post_consent"), r.get("post_consent_basis"),
                                    customer, has_address, rules.brochure_min_score, rules.brochure_stages),
            brochure_campaign=rules.brochure_campaign))
    return leads


def landed_leads(wh: Warehouse, source: str, day: str, files: list[Path], rules: ScoringRules,
                 screen: Screen, persons: EntityMatchSpec | None = None) -> list[Lead]:
    """The records of newly landed trade-fair / service-request files, matched to golden contacts by the
    nightly build's rules (``persons``: e-mail, phone and name, name and company, with typos; see
    ``golden.incremental``), else by e-mail alone. A lead that is not yet a contact arrives as itself;
    the nightly build gives it a golden ID."""
    kind = {"trade_fair_leads": "trade_fair_lead", "service_requests": "service_request"}[source]
    t = raw_table(source, ENTITIES["contact" if source == "trade_fair_leads" else "service_request"])
    names = [f.name for f in files]
    raw = wh.read_frame(sa.select(t).where(t.c._partition == day, t.c._file.in_(names)))
    if raw.empty:
        return []
    landed = {f.name: datetime.fromtimestamp(f.stat().st_mtime, timezone.utc) for f in files}
    records = person_records({source: raw})
    if persons is not None:
        found = match_new_persons(wh, records, persons)
        records["golden_id"] = records["record_key"].map(dict(zip(found["record_key"], found["golden_id"])))
        records["matched_by"] = records["record_key"].map(dict(zip(found["record_key"], found["rule"])))
    else:
        by_email, _ = identity_maps(wh)
        records["golden_id"] = records["email_norm"].map(by_email)
    rows = records.rename(columns={"source_record_id": "record_id"})
    g = GOLDEN_CONTACTS
    known = rows["golden_id"].dropna().tolist()
    golden = wh.read_frame(sa.select(g.c.golden_id, g.c.email_consent, g.c.email_consent_basis, g.c.phone_consent,
                                     g.c.phone_consent_basis, g.c.post_consent, g.c.post_consent_basis,
                                     g.c.erp_customer_number, g.c.account_id).where(g.c.golden_id.in_(known))) \
        if known and tables_present(wh, [g]) else pd.DataFrame(columns=["golden_id"])
    scores = wh.read_frame(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.score, LEAD_SCORES.c.stage,
                                     LEAD_SCORES.c.explanation).where(LEAD_SCORES.c.golden_id.in_(known))) \
        if known and tables_present(wh, [LEAD_SCORES]) else pd.DataFrame(columns=["golden_id"])
    merged = rows.drop(columns=[c for c in ("erp_customer_number",) if c in rows.columns]) \
        .merge(golden, on="golden_id", how="left").merge(scores, on="golden_id", how="left")
    file_of = dict(zip(source + ":" + raw["source_record_id"].astype(str), raw["_file"]))
    merged["alert_key"] = "lead:" + merged["record_key"]
    merged["landed_at"] = merged["record_key"].map(file_of).map(landed)
    merged["kind"] = kind
    merged["reasons"] = "Messe-Lead" if kind == "trade_fair_lead" else "Serviceanfrage"
    return _leads_for(wh, merged, kind, rules, screen)


def reactivation_segment(wh: Warehouse, now: datetime | None = None, months: int = 12) -> pd.DataFrame:
    """Customers whose company ordered nothing for ``months`` and who did not visit either: the weekly
    win-back list (the print-list issue turns it into a mailing). Postal contact must be allowed."""
    from ..platform.schema import REACTIVATION_SEGMENT
    from ..privacy.consent import allows_frame

    now = now or datetime.now(timezone.utc)
    cutoff = pd.Timestamp(now).tz_convert("UTC") - pd.DateOffset(months=months)
    wh.ensure_tables([REACTIVATION_SEGMENT])
    empty = pd.DataFrame(columns=[c.name for c in REACTIVATION_SEGMENT.columns])
    orders_t = raw_table("erp_orders", ENTITIES["order"])
    if not tables_present(wh, [GOLDEN_CONTACTS, GOLDEN_ACCOUNTS, orders_t]):
        return empty
    g = GOLDEN_CONTACTS
    contacts = wh.read_frame(sa.select(*[g.c[c] for c in CONTACT_COLUMNS]).where(g.c.erp_customer_number.is_not(None)))
    orders = wh.read_raw_sql("SELECT erp_customer_number, max(order_date) AS last_order FROM raw.erp_orders "
                             "GROUP BY erp_customer_number")
    last_order = pd.to_datetime(contacts["erp_customer_number"].map(
        dict(zip(orders["erp_customer_number"], orders["last_order"]))), utc=True)
    events = load_events(wh)
    by_email, by_crm = identity_maps(wh)
    events["golden_id"] = attribute_events(events, by_email, by_crm) if len(events) else None
    last_visit = events.dropna(subset=["golden_id"]).groupby("golden_id")["occurred_at"].max() if len(events) else \
        pd.Series(dtype="datetime64[ns, UTC]")
    contacts["last_activity_at"] = contacts["golden_id"].map(last_visit)
    quiet = (last_order.isna() | (last_order < cutoff)) & (
        contacts["last_activity_at"].isna() | (pd.to_datetime(contacts["last_activity_at"], utc=True) < cutoff))
    complete = contacts[["street", "postal_code", "city"]].notna().all(axis=1)
    chosen = contacts[quiet & complete & allows_frame(contacts, "post")]
    segment = pd.DataFrame({"golden_id": chosen["golden_id"], "account_id": chosen["account_id"],
                            "last_order_date": last_order[chosen.index].dt.date,
                            "last_activity_at": pd.to_datetime(chosen["last_activity_at"], utc=True),
                            "segment_date": pd.Timestamp(now).tz_convert("Europe/Berlin").strftime("%Y-%m-%d")})
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(REACTIVATION_SEGMENT))
        wh.bulk_insert(conn, REACTIVATION_SEGMENT, segment)
    return segment
