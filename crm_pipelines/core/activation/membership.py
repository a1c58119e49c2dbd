"""Segment membership in the warehouse: the inputs the conditions read, for all contacts or a few; which
contacts new data touched; the members and their history.

The incremental path is what lets a segment react within a minute: a new behaviour event, engagement
report, consent change, order or service request names a handful of contacts (by e-mail, CRM ID or
ERP customer number); only those are evaluated again, against their whole history, and only their
memberships change. The nightly full pass evaluates everyone and also lets contacts that no longer
exist (erased, merged away) leave.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from ..model import ENTITIES
from ..platform.schema import (ACTIVATION_STATE, GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, LEAD_SCORES, PERSON_CROSSWALK,
                               PERSON_RECORDS, SEGMENT_HISTORY, SEGMENT_MEMBERS, raw_table)
from ..platform.warehouse import Warehouse, chunks, select_in, tables_present
from ..scoring.rules import attribute_events
from ..sources.roles import CONSENT_SOURCES, ENGAGEMENT_SOURCES, OPT_IN_SOURCES
from .segments import Segment, SegmentInputs, diff_members, evaluate

EVENT_SOURCES = ("behaviour_events", *ENGAGEMENT_SOURCES)
WATERMARK_KEY = "segments.loaded_at"
# Rows are stamped when their load starts and committed when it ends: a load running while the last
# update read may commit rows older than what it saw. Looking back this far catches them (evaluating a
# contact twice changes nothing).
LOOKBACK = timedelta(minutes=10)
CONTACT_COLUMNS = [c.name for c in GOLDEN_CONTACTS.columns if c.name not in ("run_id",)]
ACCOUNT_COLUMNS = ["golden_id", "company_name", "legal_form", "postal_code", "city", "country", "industry",
                   "employee_count", "erp_customer_number"]


def _identities(wh: Warehouse, only: list[str] | None) -> pd.DataFrame:
    """email_norm, crm_contact_id, erp_customer_number -> golden_id of every current person record."""
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    if not tables_present(wh, [pr, xw]):
        return pd.DataFrame(columns=["email_norm", "crm_contact_id", "erp_customer_number", "golden_id"])
    q = sa.select(pr.c.email_norm, pr.c.crm_contact_id, pr.c.erp_customer_number, xw.c.golden_id) \
        .join(xw, xw.c.record_key == pr.c.record_key).where(xw.c.valid_to.is_(None))
    return wh.read_select(q) if only is None else select_in(wh, q, xw.c.golden_id, only)


def _maps(ids: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    em = ids.dropna(subset=["email_norm"]).drop_duplicates("email_norm")
    crm = ids.dropna(subset=["crm_contact_id"]).drop_duplicates("crm_contact_id")
    return (pd.Series(em["golden_id"].to_numpy(), index=em["email_norm"].astype(str).to_numpy(), dtype=object),
            pd.Series(crm["golden_id"].to_numpy(), index=crm["crm_contact_id"].astype(str).to_numpy(), dtype=object))


def _events(wh: Warehouse, ids: pd.DataFrame, only: list[str] | None) -> pd.DataFrame:
    cols = ["source_record_id", "event_type", "occurred_at", "email", "crm_contact_id", "anonymous_id"]
    frames = []
    for source in EVENT_SOURCES:
        t = raw_table(source, ENTITIES["behaviour_event"])
        if not tables_present(wh, [t]):
            continue
        q = sa.select(*[t.c[c] for c in cols])
        if only is None:
            frames.append(wh.read_select(q))
            continue
        found = [select_in(wh, q, t.c.email, ids["email_norm"].dropna()),
                 select_in(wh, q, t.c.crm_contact_id, ids["crm_contact_id"].dropna())]
        # The same visitors' anonymous events (before they identified themselves) belong to them too.
        anon = pd.concat(found)["anonymous_id"].dropna()
        found.append(select_in(wh, q, t.c.anonymous_id, anon))
        frames.append(pd.concat(found, ignore_index=True))
    # A web-form lead is an event too (a trigger's cancelling "web_form_lead": the prospect asked after all).
    wf = raw_table("web_form_leads", ENTITIES["contact"])
    if tables_present(wh, [wf]):
        q = sa.select(wf.c.source_record_id, wf.c.email, wf.c.created_at.label("occurred_at"))
        leads = wh.read_select(q) if only is None else select_in(wh, q, wf.c.email, ids["email_norm"].dropna())
        frames.append(leads.assign(source_record_id="web_form_leads:" + leads["source_record_id"].astype(str),
                                   event_type="web_form_lead", crm_contact_id=None, anonymous_id=None))
    if not frames:
        return pd.DataFrame(columns=["golden_id", "event_type", "occurred_at"])
    events = pd.concat(frames, ignore_index=True).drop_duplicates("source_record_id")
    by_email, by_crm = _maps(ids)
    events["golden_id"] = attribute_events(events, by_email, by_crm) if len(events) else None
    events = events[events["golden_id"].notna()]
    events["occurred_at"] = pd.to_datetime(events["occurred_at"], utc=True, format="mixed")
    return events[["golden_id", "event_type", "occurred_at"]].reset_index(drop=True)


def _by_erp(frame: pd.DataFrame, erp_to_golden: pd.DataFrame, ts: str) -> pd.DataFrame:
    if frame.empty or erp_to_golden.empty:
        return pd.DataFrame(columns=["golden_id", ts])
    out = frame.merge(erp_to_golden, on="erp_customer_number")
    return out[["golden_id", ts]]


def read_profile(wh: Warehouse, only: list[str] | None = None) -> pd.DataFrame:
    """Golden contacts in ``only`` (all when None) with their account and lead score: the profile the
    conditions and the activation gate read, indexed by golden_id (``contact.*``, ``account.*``, ``lead.*``)."""
    c = GOLDEN_CONTACTS
    if not tables_present(wh, [c]):
        return pd.DataFrame(columns=["golden_id"]).set_index("golden_id")
    q = sa.select(*[c.c[n] for n in CONTACT_COLUMNS])
    contacts = wh.read_select(q) if only is None else select_in(wh, q, c.c.golden_id, only)
    profile = contacts.set_index("golden_id").add_prefix("contact.")
    if tables_present(wh, [GOLDEN_ACCOUNTS]) and contacts["account_id"].notna().any():
        a = GOLDEN_ACCOUNTS
        accounts = select_in(wh, sa.select(*[a.c[n] for n in ACCOUNT_COLUMNS]), a.c.golden_id, contacts["account_id"].dropna())
        acc = accounts.set_index("golden_id").add_prefix("account.")
        profile = profile.join(acc, on="contact.account_id")
    if tables_present(wh, [LEAD_SCORES]):
        s = LEAD_SCORES
        scores = select_in(wh, sa.select(s.c.golden_id, s.c.score, s.c.stage), s.c.golden_id, contacts["golden_id"])
        profile = profile.join(scores.set_index("golden_id").rename(columns={"score": "lead.score", "stage": "lead.stage"}))
    return profile


def read_inputs(wh: Warehouse, only: list[str] | None = None) -> SegmentInputs:
    """The conditions' inputs for the golden contacts in ``only`` (all when None)."""
    profile = read_profile(wh, only)
    if profile.empty and not tables_present(wh, [GOLDEN_CONTACTS]):
        return SegmentInputs(profile, pd.DataFrame(columns=["golden_id", "event_type", "occurred_at"]),
                             pd.DataFrame(columns=["golden_id", "order_date"]),
                             pd.DataFrame(columns=["golden_id", "created_at"]))
    contacts = profile.reset_index()[["golden_id", "contact.erp_customer_number"]].rename(
        columns={"contact.erp_customer_number": "erp_customer_number"})
    ids = _identities(wh, None if only is None else list(contacts["golden_id"]))
    events = _events(wh, ids, only)
    # An order or a service request belongs to the contacts of the customer number: the contact's own or its account's.
    erp = pd.concat([contacts[["golden_id", "erp_customer_number"]],
                     profile.reset_index()[["golden_id", "account.erp_customer_number"]]
                     .rename(columns={"account.erp_customer_number": "erp_customer_number"})
                     if "account.erp_customer_number" in profile.columns else None]).dropna().drop_duplicates()
    orders = pd.DataFrame(columns=["erp_customer_number", "order_date"])
    ot = raw_table("erp_orders", ENTITIES["order"])
    if tables_present(wh, [ot]):
        q = sa.select(ot.c.erp_customer_number, ot.c.order_date).where(sa.or_(ot.c.status.is_(None), ot.c.status != "cancelled"))
        orders = wh.read_select(q) if only is None else select_in(wh, q, ot.c.erp_customer_number, erp["erp_customer_number"])
    service = pd.DataFrame(columns=["golden_id", "created_at"])
    st = raw_table("service_requests", ENTITIES["service_request"])
    if tables_present(wh, [st]):
        q = sa.select(st.c.source_record_id, st.c.email, st.c.erp_customer_number, st.c.created_at)
        rows = wh.read_select(q) if only is None else pd.concat(
            [select_in(wh, q, st.c.email, ids["email_norm"].dropna()),
             select_in(wh, q, st.c.erp_customer_number, erp["erp_customer_number"])], ignore_index=True)
        rows = rows.drop_duplicates("source_record_id")
        by_email, _ = _maps(ids)
        via_email = pd.DataFrame({"golden_id": rows["email"].map(by_email), "created_at": rows["created_at"]}).dropna()
        service = pd.concat([via_email, _by_erp(rows, erp, "created_at")], ignore_index=True).drop_duplicates()
    return SegmentInputs(profile, events, _by_erp(orders, erp, "order_date"), service)


# ---------------------------------------------------------------------------- what changed

CHANGE_SOURCES = {  # source -> entity of its raw table; whose rows name the contacts they touch
    **{s: "behaviour_event" for s in EVENT_SOURCES},
    **{s: "consent_event" for s in CONSENT_SOURCES},
    **{s: "contact" for s in OPT_IN_SOURCES},
    "erp_orders": "order",
    "service_requests": "service_request",
}


def read_state(wh: Warehouse, key: str) -> str | None:
    if not tables_present(wh, [ACTIVATION_STATE]):
        return None
    return wh.scalar(sa.select(ACTIVATION_STATE.c.value).where(ACTIVATION_STATE.c.key == key))


def read_watermark(wh: Warehouse) -> datetime | None:
    value = read_state(wh, WATERMARK_KEY)
    return datetime.fromisoformat(value) if value else None


def write_state(wh: Warehouse, key: str, value: str) -> None:
    wh.ensure_tables([ACTIVATION_STATE])
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(ACTIVATION_STATE).where(ACTIVATION_STATE.c.key == key))
        conn.execute(sa.insert(ACTIVATION_STATE).values(key=key, value=value))


def affected_since(wh: Warehouse, watermark: datetime) -> tuple[set[str], datetime, int]:
    """(golden IDs the rows loaded after ``watermark`` name, the newest load time seen, rows read)."""
    since = watermark - LOOKBACK
    emails, crm_ids, erp_numbers = set(), set(), set()
    newest, rows_read = watermark, 0
    day = (since - timedelta(days=1)).strftime("%Y-%m-%d")
    for source, entity in CHANGE_SOURCES.items():
        t = raw_table(source, ENTITIES[entity])
        if not tables_present(wh, [t]):
            continue
        cols = [t.c._loaded_at] + [t.c[n] for n in ("email", "crm_contact_id", "erp_customer_number") if n in t.c]
        # The partition (landing day) bounds the scan through its index; the load time decides.
        rows = wh.read_select(sa.select(*cols).where(t.c._partition >= day, t.c._loaded_at > since))
        if rows.empty:
            continue
        rows_read += len(rows)
        newest = max(newest, pd.to_datetime(rows["_loaded_at"], utc=True).max().to_pydatetime())
        for col, bucket in (("email", emails), ("crm_contact_id", crm_ids), ("erp_customer_number", erp_numbers)):
            if col in rows:
                bucket.update(str(v).strip().lower() if col == "email" else str(v) for v in rows[col].dropna())
    affected: set[str] = set()
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    if tables_present(wh, [pr, xw]):
        q = sa.select(xw.c.golden_id).join(pr, pr.c.record_key == xw.c.record_key).where(xw.c.valid_to.is_(None))
        for col, values in ((pr.c.email_norm, emails), (pr.c.crm_contact_id, crm_ids), (pr.c.erp_customer_number, erp_numbers)):
            if values:
                affected |= set(select_in(wh, q, col, values)["golden_id"])
    c = GOLDEN_CONTACTS
    if erp_numbers and tables_present(wh, [c]):  # the contacts of an ordering account
        accounts = select_in(wh, sa.select(GOLDEN_ACCOUNTS.c.golden_id), GOLDEN_ACCOUNTS.c.erp_customer_number, erp_numbers) \
            if tables_present(wh, [GOLDEN_ACCOUNTS]) else pd.DataFrame(columns=["golden_id"])
        affected |= set(select_in(wh, sa.select(c.c.golden_id), c.c.account_id, accounts["golden_id"])["golden_id"])
    return affected, newest, rows_read


# ---------------------------------------------------------------------------- members and history

def current_members(wh: Warehouse, segment: str, only: list[str] | None = None) -> pd.DataFrame:
    m = SEGMENT_MEMBERS
    if not tables_present(wh, [m]):
        return pd.DataFrame(columns=["golden_id", "since", "reason"])
    q = sa.select(m.c.golden_id, m.c.since, m.c.reason).where(m.c.segment == segment)
    return wh.read_select(q) if only is None else select_in(wh, q, m.c.golden_id, only)


@dataclass
class SegmentUpdate:
    mode: str                                   # full | incremental
    evaluated: int
    seconds: float
    entered: dict[str, int] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    changes: pd.DataFrame | None = None         # segment, golden_id, change, reason


def update_segments(wh: Warehouse, segments: dict[str, Segment], run_id: str, only: list[str] | None = None,
                    now: datetime | None = None) -> SegmentUpdate:
    """Evaluates the segments for ``only`` (all contacts when None), writes the membership changes and
    their history in one transaction. Returns counts and the changes (for the destinations)."""
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([SEGMENT_MEMBERS, SEGMENT_HISTORY])
    inputs = read_inputs(wh, only)
    ids = list(inputs.profile.index.astype(str))
    result = SegmentUpdate("full" if only is None else "incremental", len(ids), 0.0)
    changes = []
    diffs = []
    for seg in segments.values():
        current = current_members(wh, seg.name, None if only is None else list(only))
        diffs.append((seg, diff_members(seg, evaluate(seg, inputs, now), current, now, evaluated_all=only is None)))
    with wh.engine.begin() as conn:
        for seg, diff in diffs:
            for part in chunks(list(diff.left["golden_id"])):
                conn.execute(sa.delete(SEGMENT_MEMBERS).where(SEGMENT_MEMBERS.c.segment == seg.name,
                                                               SEGMENT_MEMBERS.c.golden_id.in_(part)))
            if len(diff.entered):
                new = diff.members[diff.members["golden_id"].isin(diff.entered["golden_id"])].copy()
                new["since"] = pd.to_datetime(new["since"], utc=True, format="mixed")
                wh.bulk_insert(conn, SEGMENT_MEMBERS, new[["segment", "golden_id", "since", "reason"]])
            hist = pd.concat([diff.entered.assign(change="entered"), diff.left.assign(change="left")], ignore_index=True)
            if len(hist):
                wh.bulk_insert(conn, SEGMENT_HISTORY, hist.assign(at=now, run_id=run_id)[
                    ["segment", "golden_id", "change", "at", "reason", "run_id"]])
                changes.append(hist)
            result.entered[seg.name], result.left[seg.name] = len(diff.entered), len(diff.left)
    m = SEGMENT_MEMBERS
    sizes = wh.read_select(sa.select(m.c.segment, sa.func.count().label("n")).group_by(m.c.segment))
    result.sizes = {s: int(dict(zip(sizes["segment"], sizes["n"])).get(s, 0)) for s in segments}
    result.changes = pd.concat(changes, ignore_index=True) if changes else \
        pd.DataFrame(columns=["segment", "golden_id", "reason", "change"])
    result.seconds = time.perf_counter() - started
    return result


def segment_history(wh: Warehouse, days: int = 60) -> pd.DataFrame:
    """Entries and exits per segment and day (for the charts)."""
    h = SEGMENT_HISTORY
    if not tables_present(wh, [h]):
        return pd.DataFrame(columns=["segment", "day", "entered", "left"])
    since = datetime.now(timezone.utc) - timedelta(days=days)
    rows = wh.read_select(sa.select(h.c.segment, h.c.change, h.c.at).where(h.c.at >= since))
    if rows.empty:
        return pd.DataFrame(columns=["segment", "day", "entered", "left"])
    rows["day"] = pd.to_datetime(rows["at"], utc=True).dt.strftime("%Y-%m-%d")
    out = rows.pivot_table(index=["segment", "day"], columns="change", values="at", aggfunc="count", fill_value=0)
    return out.reindex(columns=["entered", "left"], fill_value=0).reset_index()
