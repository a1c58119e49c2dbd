"""Journeys: who enters which of the tool's workflows (or gets a single printed brochure), who is held
out, who is capped, who leaves, and the touches every channel adds up to.

A run of :func:`run_journeys` per journey:

1. **Candidates**: members of the entry segment, or contacts whose trigger fired (an event of the given
   type whose wait window closed without one of the cancelling events; the abandonment pattern).
2. **Entry**: a candidate without an enrollment, or one that exited and may re-enter (``reentry``).
   The **holdout** comes first: a stable hash of salt, journey and golden ID below the holdout share
   puts the contact in the holdout (recorded, never enrolled, measured all the same). Then the gate
   of the audience (address, e-mail consent, suppression, tool blocklist; print: postal consent), then
   the **frequency cap**: touches of the last 7 days on every channel (journey entries, print mailings,
   sales hand-offs) must be below ``touches_per_week``, else the contact waits as ``capped`` and is
   tried again on the next run.
3. **Enrollment**: e-mail: onto the journey's list (its workflow starts on list addition) and/or its
   event is sent; print: a single-recipient print job is queued. One touch is recorded.
4. **Exit**: converted (an order after entry), became SQL, unsubscribed (no e-mail consent any more or
   blocked), erased (the contact is gone), left the segment. Enrolled contacts leave the journey's list;
   holdout contacts are marked the same way, so conversion compares like with like.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import (ACTIVATION_MEMBERS, ALERT_LEDGER, CONTACT_TOUCHES, JOURNEY_ENROLLMENTS, PRINT_LISTS,
                               PRINT_QUEUE, PRINT_RECIPIENTS, SEGMENT_MEMBERS)
from ..platform.warehouse import Warehouse, chunks, select_in, tables_present
from ..privacy.consent import allows_frame
from ..privacy_screen.identity import IdentityHasher
from ..privacy_screen.suppression import Screen
from .audience import blocked_hashes, ensure_in_tool, gate, owned_list
from .membership import read_inputs
from .protocol import MarketingTool, ToolEvent
from .segments import SegmentInputs
from .settings import ActivationSettings, Journey

WEEK = timedelta(days=7)


def in_holdout(salt: str, journey: str, golden_id: str, share: float) -> bool:
    """Stable: the same contact is in the same journey's holdout on every run and every machine."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}|{journey}|{golden_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


# ---------------------------------------------------------------------------- touches

def record_touches(wh: Warehouse, rows: list[dict]) -> int:
    """Adds touches (touch_key, golden_id, channel, source, at); a key seen before is not counted twice."""
    if not rows:
        return 0
    wh.ensure_tables([CONTACT_TOUCHES])
    t = CONTACT_TOUCHES
    frame = pd.DataFrame(rows).drop_duplicates("touch_key")
    known = set(select_in(wh, sa.select(t.c.touch_key), t.c.touch_key, frame["touch_key"])["touch_key"])
    frame = frame[~frame["touch_key"].isin(known)]
    if len(frame):
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, t, frame[["touch_key", "golden_id", "channel", "source", "at"]])
    return len(frame)


def collect_outlet_touches(wh: Warehouse, since: datetime) -> int:
    """Touches of the other channels since ``since``: each recipient of a released print list (on its release),
    each single-recipient print job printed, each sales hand-off. Idempotent (keys name their origin)."""
    rows = []
    if tables_present(wh, [PRINT_LISTS, PRINT_RECIPIENTS]):
        pl, pr = PRINT_LISTS, PRINT_RECIPIENTS
        df = wh.read_select(sa.select(pr.c.list_id, pr.c.golden_id, pl.c.released_at, pl.c.campaign)
                            .join(pl, pl.c.list_id == pr.c.list_id)
                            .where(pl.c.status == "released", pl.c.released_at >= since))
        rows += [{"touch_key": f"print:{lid}:{gid}", "golden_id": gid, "channel": "print", "source": camp, "at": at}
                 for lid, gid, at, camp in zip(df["list_id"], df["golden_id"], df["released_at"], df["campaign"])]
    if tables_present(wh, [ALERT_LEDGER]):
        a = ALERT_LEDGER
        df = wh.read_select(sa.select(a.c.alert_key, a.c.golden_id, a.c.created_at)
                            .where(a.c.golden_id.is_not(None), a.c.created_at >= since, a.c.status != "suppressed"))
        rows += [{"touch_key": f"sales:{k}", "golden_id": g, "channel": "sales", "source": "hand-off", "at": at}
                 for k, g, at in zip(df["alert_key"], df["golden_id"], df["created_at"])]
    return record_touches(wh, rows)


def touches_last_week(wh: Warehouse, golden_ids, now: datetime) -> pd.Series:
    t = CONTACT_TOUCHES
    if not tables_present(wh, [t]):
        return pd.Series(dtype=np.int64)
    rows = select_in(wh, sa.select(t.c.golden_id, t.c.at).where(t.c.at > now - WEEK, t.c.at <= now), t.c.golden_id, golden_ids)
    return rows.groupby("golden_id").size()


# ---------------------------------------------------------------------------- triggers

def fired_triggers(journey: Journey, inputs: SegmentInputs, now: datetime) -> pd.Series:
    """Golden ID -> when the trigger fired (its window closed), for triggers whose window closed within the
    lookback and that no cancelling event followed. Web-form leads cancel as ``web_form_lead`` events."""
    t = journey.trigger
    ev = inputs.events
    if t is None or ev.empty:
        return pd.Series(dtype="datetime64[ns, UTC]")
    ts = pd.to_datetime(ev["occurred_at"], utc=True)
    wait = pd.Timedelta(minutes=t.wait_minutes)
    start = ev[(ev["event_type"] == t.event) & (ts + wait <= pd.Timestamp(now))
               & (ts + wait >= pd.Timestamp(now) - pd.Timedelta(minutes=t.lookback_minutes))]
    if start.empty:
        return pd.Series(dtype="datetime64[ns, UTC]")
    # The latest start per contact: a later visit restarts the wait.
    last = start.assign(ts=pd.to_datetime(start["occurred_at"], utc=True)).groupby("golden_id")["ts"].max()
    cancel = ev[ev["event_type"].isin(t.unless)].assign(ts=ts[ev["event_type"].isin(t.unless)])
    if len(cancel):
        joined = cancel.merge(last.rename("start").reset_index(), on="golden_id")
        hit = joined[(joined["ts"] >= joined["start"]) & (joined["ts"] <= joined["start"] + wait)]["golden_id"]
        last = last.drop(index=set(hit), errors="ignore")
    return last + wait


# ---------------------------------------------------------------------------- the run

@dataclass
class JourneyReport:
    journey: str
    candidates: int = 0
    enrolled: int = 0
    holdout: int = 0
    capped: int = 0
    stopped: dict[str, int] = field(default_factory=dict)
    exited: dict[str, int] = field(default_factory=dict)
    events_sent: int = 0
    print_jobs: int = 0
    seconds: float = 0.0


def _enrollments(wh: Warehouse, journey: str) -> pd.DataFrame:
    e = JOURNEY_ENROLLMENTS
    if not tables_present(wh, [e]):
        return pd.DataFrame(columns=[c.name for c in e.columns])
    return wh.read_select(sa.select(e).where(e.c.journey == journey))


def _candidates(wh: Warehouse, journey: Journey, inputs_all: SegmentInputs | None, now: datetime) -> pd.Series:
    """Golden ID -> entry moment of the journey's candidates."""
    if journey.segment:
        m = SEGMENT_MEMBERS
        if not tables_present(wh, [m]):
            return pd.Series(dtype=object)
        rows = wh.read_select(sa.select(m.c.golden_id, m.c.since).where(m.c.segment == journey.segment))
        return pd.Series(pd.to_datetime(rows["since"], utc=True).to_numpy(), index=rows["golden_id"].to_numpy())
    return fired_triggers(journey, inputs_all, now) if inputs_all is not None else pd.Series(dtype=object)


def _exit_reasons(journey: Journey, rows: pd.DataFrame, inputs: SegmentInputs, candidates: pd.Series,
                  stop: pd.Series) -> pd.Series:
    """Per active enrollment (enrolled or holdout) its exit reason, or None."""
    reason = pd.Series(None, index=rows["golden_id"].to_numpy(), dtype=object)
    profile = inputs.profile
    gids = rows["golden_id"].to_numpy()
    checks = []
    if "erased" in journey.exits:
        checks.append(("erased", ~pd.Index(gids).isin(profile.index)))
    if "converted" in journey.exits and len(inputs.orders):
        o = inputs.orders.assign(d=pd.to_datetime(inputs.orders["order_date"], utc=True))
        latest = o.groupby("golden_id")["d"].max()
        after = pd.Series(gids).map(latest)
        # Orders carry a date: one placed on the day of entry counts as after it.
        entry_day = pd.to_datetime(rows["entered_at"], utc=True).dt.normalize().reset_index(drop=True)
        checks.append(("converted", (after.notna() & (after >= entry_day)).to_numpy()))
    if "became_sql" in journey.exits and "lead.stage" in profile:
        stage = pd.Series(gids).map(profile["lead.stage"]).to_numpy()
        checks.append(("became_sql", stage == "sql"))
    if "unsubscribed" in journey.exits:
        r = pd.Series(gids).map(stop).to_numpy()
        checks.append(("unsubscribed", np.isin(r, ["no_consent", "tool_blocked", "suppressed"])))
    if "left_segment" in journey.exits and journey.segment:
        checks.append(("left_segment", ~pd.Index(gids).isin(candidates.index)))
    for name, mask in reversed(checks):  # the first listed wins
        reason[np.asarray(mask, dtype=bool)] = name
    return reason


def run_journeys(wh: Warehouse, tool: MarketingTool | None, journeys: dict[str, Journey], settings: ActivationSettings,
                 screen: Screen, hasher: IdentityHasher, run_id: str, now: datetime | None = None,
                 list_ids: dict[str, int] | None = None) -> list[JourneyReport]:
    """One pass of every journey. ``list_ids``: our list name -> the tool's ID (the audience sync owns the lists;
    journeys add and remove their members directly, and record them as ours)."""
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([JOURNEY_ENROLLMENTS, CONTACT_TOUCHES, ACTIVATION_MEMBERS])
    collect_outlet_touches(wh, now - WEEK)
    needs_events = any(j.trigger for j in journeys.values())
    reports = []
    blocked = blocked_hashes(wh, tool.name) if tool is not None else set()
    inputs_all = read_inputs(wh) if needs_events else None
    for journey in journeys.values():
        started = time.perf_counter()
        rep = JourneyReport(journey.name)
        candidates = _candidates(wh, journey, inputs_all, now)
        rep.candidates = len(candidates)
        current = _enrollments(wh, journey.name)
        ids = sorted(set(candidates.index.astype(str)) | set(current["golden_id"]))
        inputs = read_inputs(wh, ids)
        stop = gate(inputs.profile, screen, hasher, blocked) if journey.channel == "email" else \
            _print_gate(inputs.profile, screen)
        active = current[current["status"].isin(["enrolled", "holdout"])]
        exits = _exit_reasons(journey, active, inputs, candidates, stop)
        leaving = exits.dropna()
        updates: list[dict] = []
        list_id = None
        if journey.channel == "email" and journey.list_name and tool is not None:
            list_id = (list_ids or {}).get(journey.list_name) or owned_list(wh, tool, settings, journey.list_name)
        # Leaving first: an exit frees the cap.
        if len(leaving):
            status_of = dict(zip(active["golden_id"], active["status"]))
            emails = inputs.profile.get("contact.email", pd.Series(dtype=object))
            enrolled_leaving = [g for g in leaving.index if status_of.get(g) == "enrolled"]
            if list_id is not None and enrolled_leaving:
                addresses = [str(emails[g]).lower() for g in enrolled_leaving if isinstance(emails.get(g), str)]
                if addresses:
                    tool.remove_from_list(list_id, addresses)
                _forget_members(wh, tool.name, journey.list_name, enrolled_leaving)
            for g, why in leaving.items():
                updates.append({"golden_id": g, "status": "exited", "exited_at": now, "exit_reason": why})
                rep.exited[why] = rep.exited.get(why, 0) + 1
        # Entering.
        known = current.set_index("golden_id") if len(current) else pd.DataFrame(columns=["status", "entries", "exited_at"])
        touches = touches_last_week(wh, list(candidates.index.astype(str)), now)
        enroll, holdout, capped = [], [], []
        for gid in sorted(candidates.index.astype(str)):
            if gid in leaving.index:
                continue
            row = known.loc[gid] if gid in known.index else None
            if row is not None and row["status"] in ("enrolled", "holdout"):
                continue
            if row is not None and row["status"] == "exited":
                if journey.reentry_days is None:
                    continue
                exited_at = pd.to_datetime(row["exited_at"], utc=True)
                if pd.notna(exited_at) and exited_at + pd.Timedelta(days=journey.reentry_days) > pd.Timestamp(now):
                    continue
            if in_holdout(settings.holdout_salt, journey.name, gid, journey.holdout):
                holdout.append(gid)
                continue
            why = stop.get(gid) if gid in stop.index else "erased"
            if not pd.isna(why):
                rep.stopped[why] = rep.stopped.get(why, 0) + 1
                continue
            if int(touches.get(gid, 0)) >= settings.touches_per_week:
                capped.append(gid)
                continue
            enroll.append(gid)
            touches[gid] = int(touches.get(gid, 0)) + 1
        entries = {g: int(known.loc[g]["entries"]) + 1 if g in known.index and known.loc[g]["status"] != "capped"
                   else int(known.loc[g]["entries"]) if g in known.index else 1 for g in enroll + holdout + capped}
        if enroll:
            if journey.channel == "email":
                ensure_in_tool(wh, tool, settings, inputs, enroll, hasher, now)
                rep.events_sent = _enroll_email(wh, tool, journey, list_id, enroll, inputs, hasher, entries, now)
            else:
                rep.print_jobs = _enroll_print(wh, journey, enroll, entries, now)
            record_touches(wh, [{"touch_key": f"journey:{journey.name}:{g}:{entries[g]}", "golden_id": g,
                                 "channel": journey.channel, "source": journey.name, "at": now} for g in enroll])
        for group, status in ((enroll, "enrolled"), (holdout, "holdout"), (capped, "capped")):
            for g in group:
                updates.append({"golden_id": g, "status": status, "arm": "holdout" if status == "holdout" else "treatment",
                                "entries": entries[g], "entered_at": now, "exited_at": None, "exit_reason": None})
        rep.enrolled, rep.holdout, rep.capped = len(enroll), len(holdout), len(capped)
        _write(wh, journey.name, updates, known, now)
        rep.seconds = time.perf_counter() - started
        reports.append(rep)
    return reports


def _print_gate(profile: pd.DataFrame, screen: Screen) -> pd.Series:
    """Print journeys ask what a print list asks (so nobody is enrolled, and counted as touched, whose brochure the
    print job would drop): post allowed (consent, or a customer relationship; never objected or withdrawn) and a
    complete address; the first reason that applies wins."""
    reason = pd.Series(None, index=profile.index, dtype=object)

    def col(name: str) -> pd.Series:
        return profile[f"contact.{name}"] if f"contact.{name}" in profile else pd.Series(None, index=profile.index)

    people = pd.DataFrame({c: col(c) for c in ("email", "first_name", "last_name", "street", "house_number",
                                               "postal_code", "crm_contact_id")}, index=profile.index)
    complete = people[["last_name", "street", "postal_code"]].notna().all(axis=1) & col("city").notna()
    reason[~complete.to_numpy()] = "incomplete_address"
    post = allows_frame(pd.DataFrame({c: col(c) for c in ("post_consent", "post_consent_basis",
                                                           "erp_customer_number")}), "post")
    reason[~post] = "no_consent"
    if len(people) and not screen.empty:
        reason[screen.suppressed(people)] = "suppressed"
    return reason


def _forget_members(wh: Warehouse, destination: str, list_name: str, golden_ids: list[str]) -> None:
    m = ACTIVATION_MEMBERS
    with wh.engine.begin() as conn:
        for part in chunks(golden_ids):
            conn.execute(sa.delete(m).where(m.c.destination == destination, m.c.list_name == list_name,
                                            m.c.golden_id.in_(part)))


def _enroll_email(wh: Warehouse, tool: MarketingTool, journey: Journey, list_id: int | None, enroll: list[str],
                  inputs: SegmentInputs, hasher: IdentityHasher, entries: dict[str, int], now: datetime) -> int:
    m = ACTIVATION_MEMBERS
    emails = inputs.profile["contact.email"].map(lambda e: str(e).strip().lower())
    sent = 0
    if list_id is not None:
        ok, _failed = tool.add_to_list(list_id, [emails[g] for g in enroll])
        ok_set = {e.lower() for e in ok}
        added = [g for g in enroll if emails[g] in ok_set]
        _forget_members(wh, tool.name, journey.list_name, added)
        with wh.engine.begin() as conn:
            if added:
                wh.bulk_insert(conn, m, pd.DataFrame({"destination": tool.name, "list_name": journey.list_name,
                                                      "golden_id": added, "email_hash": [hasher.email(emails[g]) for g in added],
                                                      "added_at": now}))
    if journey.event:
        events = [ToolEvent(f"{journey.name}:{g}:{entries[g]}", journey.event, emails[g],
                            {"journey": journey.name, "entry": entries[g]}, now.isoformat()) for g in enroll]
        results = tool.send_events(events)
        sent = sum(1 for _, err in results if err is None)
    return sent


def _enroll_print(wh: Warehouse, journey: Journey, enroll: list[str], entries: dict[str, int], now: datetime) -> int:
    """A single-recipient print job per contact (the brochure printed for that one person)."""
    wh.ensure_tables([PRINT_QUEUE])
    q = PRINT_QUEUE
    keys = {g: f"journey:{journey.name}:{g}:{entries[g]}" for g in enroll}
    known = set(select_in(wh, sa.select(q.c.alert_key), q.c.alert_key, keys.values())["alert_key"])
    rows = [{"alert_key": k, "golden_id": g, "campaign": journey.print_campaign, "queued_at": now, "status": "queued"}
            for g, k in keys.items() if k not in known]
    if rows:
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, q, pd.DataFrame(rows))
    return len(rows)


def _write(wh: Warehouse, journey: str, updates: list[dict], known: pd.DataFrame, now: datetime) -> None:
    if not updates:
        return
    e = JOURNEY_ENROLLMENTS
    frame = pd.DataFrame(updates).drop_duplicates("golden_id", keep="last")
    # Exits keep their entry data.
    for col in ("entries", "entered_at", "arm"):
        if col not in frame:
            frame[col] = None
        fallback = frame["golden_id"].map(known[col]) if col in getattr(known, "columns", []) else None
        if fallback is not None:
            frame[col] = frame[col].where(frame[col].notna(), fallback)
    frame["entries"] = frame["entries"].fillna(1).astype(int)
    frame["arm"] = frame["arm"].fillna("treatment")
    frame["entered_at"] = pd.to_datetime(frame["entered_at"], utc=True).fillna(pd.Timestamp(now))
    frame = frame.assign(journey=journey, updated_at=now)
    with wh.engine.begin() as conn:
        for part in chunks(list(frame["golden_id"])):
            conn.execute(sa.delete(e).where(e.c.journey == journey, e.c.golden_id.in_(part)))
        wh.bulk_insert(conn, e, frame[["journey", "golden_id", "status", "arm", "entries", "entered_at", "exited_at",
                                       "exit_reason", "updated_at"]])


def journey_funnel(wh: Warehouse, journey: str, engagement: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per arm (treatment, holdout): entered, mailed, engaged, converted, exited, conversion rate, and the
    treatment's uplift over the holdout. ``engagement``: golden_id, event_type of the tool's reports."""
    rows = _enrollments(wh, journey)
    rows = rows[rows["status"] != "capped"]
    out = []
    for arm in ("treatment", "holdout"):
        g = rows[rows["arm"] == arm]
        ids = set(g["golden_id"])
        mailed = engaged = 0
        if engagement is not None and len(engagement) and arm == "treatment":
            mine = engagement[engagement["golden_id"].isin(ids)]
            mailed = mine[mine["event_type"] == "email_delivered"]["golden_id"].nunique()
            engaged = mine[mine["event_type"].isin(["email_open", "email_click"])]["golden_id"].nunique()
        converted = int((g["exit_reason"] == "converted").sum())
        out.append({"arm": arm, "entered": len(ids), "mailed": int(mailed), "engaged": int(engaged),
                    "converted": converted, "exited": int((g["status"] == "exited").sum()),
                    "conversion_rate": round(converted / len(ids), 4) if ids else 0.0})
    frame = pd.DataFrame(out)
    frame.attrs["uplift"] = round(float(frame.loc[0, "conversion_rate"] - frame.loc[1, "conversion_rate"]), 4)
    return frame
