"""Segment membership becomes list membership in the marketing tool, under three rules users of audience
tools ask for and rarely get:

1. **Only consented, unsuppressed, unblocked contacts are activated.** The gate (:func:`gate`) passes a
   contact only with an address, the ledger's e-mail verdict ``granted``, no entry on the suppression
   list (erasure, objection) and no report from the tool that the address unsubscribed, complained,
   bounced hard or was blocklisted (``ops.activation_blocked``, fed by the tool's contact changes and by
   the engagement webhooks). A contact the gate stops leaves every list we put it on.
2. **We remove only what we added.** Lists live in our folder (``activation_lists``); memberships we
   added are recorded (``activation_members``); a removal names only those. A list built by hand in the
   tool, or a contact someone else put on our list, is never touched.
3. **We never re-subscribe.** Nothing we send lifts a blocklisting: the import carries no blocklist flag,
   and a blocked address is neither imported nor added to a list again.

Attributes (score, stage, interests, preferred channel, consent, ...) go with the bulk import, only when
their hash changed since the last sync (``activation_contacts``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..cleaning.emails import normalize_email
from ..model import ENTITIES
from ..platform.schema import (ACTIVATION_AUDIENCE, ACTIVATION_BLOCKED, ACTIVATION_CONTACTS, ACTIVATION_LISTS,
                               ACTIVATION_MEMBERS, SEGMENT_MEMBERS, raw_table)
from ..platform.warehouse import Warehouse, chunks, replace_table, tables_present
from ..privacy_screen.identity import IdentityHasher
from ..privacy_screen.suppression import Screen
from ..sources.roles import ENGAGEMENT_SOURCES
from .membership import read_inputs, read_profile, read_state, write_state
from .protocol import MarketingTool, ToolContact
from .segments import Segment, SegmentInputs
from .settings import ActivationSettings

BLOCKING_ENGAGEMENT = {"unsubscribe": "unsubscribed", "email_spam": "spam", "email_bounce": "hard_bounce"}
INTEREST_EVENTS = {"whitepaper_download": "whitepaper", "webinar_attended": "webinar", "demo_video": "demo",
                   "pricing_page": "preise"}
CHANNEL_ORDER = ("email", "phone", "post")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------- what the tool reports

def pull_blocked(wh: Warehouse, tool: MarketingTool, hasher: IdentityHasher) -> dict[str, int]:
    """Brings the tool's blocklist decisions home: contacts it changed since the last pull (blocked ones
    recorded, unblocked ones, which only the person can do in the tool, released), and the engagement
    reports of unsubscribes, complaints and hard bounces. Returns counts."""
    wh.ensure_tables([ACTIVATION_BLOCKED])
    key = f"{tool.name}.modified_since"
    since = read_state(wh, key)
    started = _now()
    blocked, released, newest = {}, set(), since
    for c in tool.changed_since(since):
        h = hasher.email(c.email)
        if not h:
            continue
        if c.blocked:
            blocked[h] = "blocklisted"
        else:
            released.add(h)
        newest = max(newest or "", c.modified_at)
    for source in ENGAGEMENT_SOURCES:
        t = raw_table(source, ENTITIES["behaviour_event"])
        if tables_present(wh, [t]):
            rows = wh.read_select(sa.select(t.c.email, t.c.event_type).where(t.c.event_type.in_(list(BLOCKING_ENGAGEMENT))))
            for email, kind in zip(rows["email"], rows["event_type"]):
                h = hasher.email(normalize_email(email) if isinstance(email, str) else None)
                if h:
                    blocked[h] = BLOCKING_ENGAGEMENT[kind]
                    released.discard(h)
    b = ACTIVATION_BLOCKED
    with wh.engine.begin() as conn:
        for part in chunks(sorted(set(blocked) | released)):
            conn.execute(sa.delete(b).where(b.c.destination == tool.name, b.c.email_hash.in_(part)))
        if blocked:
            wh.bulk_insert(conn, b, pd.DataFrame({"destination": tool.name, "email_hash": list(blocked),
                                                  "reason": list(blocked.values()), "reported_at": started}))
    # The tool's clock: the next pull asks from the newest change it reported (the boundary is read twice).
    write_state(wh, key, newest or started.isoformat())
    return {"blocked": len(blocked), "released": len(released - set(blocked))}


def blocked_hashes(wh: Warehouse, destination: str) -> set[str]:
    b = ACTIVATION_BLOCKED
    if not tables_present(wh, [b]):
        return set()
    return set(wh.read_select(sa.select(b.c.email_hash).where(b.c.destination == destination))["email_hash"])


# ---------------------------------------------------------------------------- the gate

GATE_REASONS = ("no_email", "no_consent", "suppressed", "tool_blocked")


def gate(profile: pd.DataFrame, screen: Screen, hasher: IdentityHasher, blocked: set[str]) -> pd.Series:
    """Per contact (profile index) the reason it must not be activated, or None. Order: no address, no
    e-mail marketing consent, suppressed (erasure, objection), blocked by the tool."""
    reason = pd.Series(None, index=profile.index, dtype=object)
    email = profile.get("contact.email", pd.Series(None, index=profile.index)).map(
        lambda e: normalize_email(e) if isinstance(e, str) else None)
    consent = profile.get("contact.email_consent", pd.Series(None, index=profile.index))
    people = pd.DataFrame({"email": email, "first_name": profile.get("contact.first_name"),
                           "last_name": profile.get("contact.last_name"),
                           "crm_contact_id": profile.get("contact.crm_contact_id")}, index=profile.index)
    suppressed = screen.suppressed(people) if len(people) and not screen.empty else np.zeros(len(people), dtype=bool)
    hashes = email.map(lambda e: hasher.email(e) if e else None)
    tool_blocked = hashes.isin(blocked).to_numpy()
    for name, mask in (("tool_blocked", tool_blocked), ("suppressed", suppressed),
                       ("no_consent", (consent != "granted").to_numpy()), ("no_email", email.isna().to_numpy())):
        reason[mask] = name
    return reason


# ---------------------------------------------------------------------------- attributes

def derived(inputs: SegmentInputs, now: datetime) -> pd.DataFrame:
    """interests (what the contact read or watched in 180 days) and preferred channel (the first consented of
    e-mail, phone, post), per contact."""
    p = inputs.profile
    ev = inputs.events
    interests = pd.Series("", index=p.index, dtype=object)
    if len(ev):
        recent = ev[(ev["event_type"].isin(list(INTEREST_EVENTS)))
                    & (pd.to_datetime(ev["occurred_at"], utc=True) >= pd.Timestamp(now) - pd.Timedelta(days=180))]
        if len(recent):
            grouped = recent.assign(i=recent["event_type"].map(INTEREST_EVENTS)).groupby("golden_id")["i"] \
                .agg(lambda s: ",".join(sorted(set(s))))
            interests = grouped.reindex(p.index).fillna("")
    preferred = pd.Series(None, index=p.index, dtype=object)
    for ch in reversed(CHANNEL_ORDER):
        col = f"contact.{ch}_consent"
        if col in p:
            preferred[(p[col] == "granted").to_numpy()] = ch
    return pd.DataFrame({"interests": interests, "preferred_channel": preferred}, index=p.index)


def attributes_frame(inputs: SegmentInputs, settings: ActivationSettings, now: datetime) -> pd.DataFrame:
    p = inputs.profile
    d = derived(inputs, now)
    out = {}
    for name, src in settings.attributes.items():
        if src == "golden_id":
            col = pd.Series(p.index.astype(str), index=p.index)
        elif src in d:
            col = d[src]
        else:
            col = p[src] if src in p else pd.Series(None, index=p.index)
        if src == "lead.score":
            col = pd.to_numeric(col, errors="coerce").round(1)
        out[name] = col.astype(object).where(col.notna(), None)
    return pd.DataFrame(out, index=p.index)


def _sha(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- lists

def owned_list(wh: Warehouse, tool: MarketingTool, settings: ActivationSettings, name: str) -> int:
    """The tool's ID of our list ``name`` (in our folder), created and recorded on first use."""
    t = ACTIVATION_LISTS
    wh.ensure_tables([t])
    known = wh.scalar(sa.select(t.c.remote_id).where(t.c.destination == tool.name, t.c.list_name == name))
    if known is not None:
        return int(known)
    remote = tool.ensure_list(name, settings.folder)
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(t).values(destination=tool.name, list_name=name, remote_id=str(remote), created_at=_now()))
    return remote


def members_added(wh: Warehouse, destination: str, list_name: str) -> pd.DataFrame:
    m = ACTIVATION_MEMBERS
    if not tables_present(wh, [m]):
        return pd.DataFrame(columns=["golden_id", "email_hash"])
    return wh.read_select(sa.select(m.c.golden_id, m.c.email_hash)
                          .where(m.c.destination == destination, m.c.list_name == list_name))


@dataclass
class ListResult:
    list_name: str
    desired: int = 0
    added: int = 0
    removed: int = 0
    failed: int = 0
    stale: int = 0        # memberships whose address changed or whose contact is gone: forgotten (see docstring)


def sync_list(wh: Warehouse, tool: MarketingTool, settings: ActivationSettings, list_name: str,
              desired: pd.DataFrame, emails: pd.Series, hasher: IdentityHasher, already: set[str] = frozenset()) -> ListResult:
    """Makes our memberships of ``list_name`` equal ``desired`` (golden_id, email of eligible contacts):
    adds the missing, removes the ones we added that are no longer wanted. ``emails``: the current
    address of every contact we may have to remove (golden_id -> e-mail; missing when the contact is gone,
    whose erasure deleted it in the tool). ``already``: golden IDs the import just put on the list."""
    wh.ensure_tables([ACTIVATION_MEMBERS])
    list_id = owned_list(wh, tool, settings, list_name)
    res = ListResult(list_name, desired=len(desired))
    have = members_added(wh, tool.name, list_name)
    have_ids = set(have["golden_id"])
    want = desired.drop_duplicates("golden_id").set_index("golden_id")["email"]
    to_add = want[~want.index.isin(have_ids)]
    to_remove = have[~have["golden_id"].isin(set(want.index))]
    now = _now()
    added_rows = []
    need_call = to_add[~to_add.index.isin(already)]
    if len(need_call):
        ok, failed = tool.add_to_list(list_id, list(need_call))
        ok_set = {e.lower() for e in ok}
        res.failed += len(failed)
        need_call = need_call[need_call.str.lower().isin(ok_set)]
    for gid, email in list(to_add[to_add.index.isin(already)].items()) + list(need_call.items()):
        added_rows.append({"destination": tool.name, "list_name": list_name, "golden_id": gid,
                           "email_hash": hasher.email(email), "added_at": now})
    res.added = len(added_rows)
    removable, stale = [], []
    for gid, h in zip(to_remove["golden_id"], to_remove["email_hash"]):
        email = emails.get(gid)
        if isinstance(email, str) and hasher.email(normalize_email(email)) == h:
            removable.append((gid, normalize_email(email)))
        else:
            stale.append(gid)
    if removable:
        done, _not_members = tool.remove_from_list(list_id, [e for _, e in removable])
        res.removed = len(removable)  # a membership the person ended in the tool is gone as well
    res.stale = len(stale)
    m = ACTIVATION_MEMBERS
    with wh.engine.begin() as conn:
        gone = [g for g, _ in removable] + stale
        for part in chunks(gone):
            conn.execute(sa.delete(m).where(m.c.destination == tool.name, m.c.list_name == list_name, m.c.golden_id.in_(part)))
        if added_rows:
            wh.bulk_insert(conn, m, pd.DataFrame(added_rows))
    return res


# ---------------------------------------------------------------------------- the audience sync

@dataclass
class AudienceReport:
    seconds: float = 0.0
    evaluated: int = 0
    eligible: int = 0
    stopped: dict[str, int] = field(default_factory=dict)       # gate reason -> contacts
    upserted: int = 0
    attributes_created: list[str] = field(default_factory=list)
    lists: list[ListResult] = field(default_factory=list)
    tool_state: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)


def desired_lists(wh: Warehouse, segments: dict[str, Segment], extra: dict[str, list[str]] | None = None) -> dict[str, set[str]]:
    """Our list name -> golden IDs wanted on it: every segment with a ``brevo`` destination, plus ``extra``
    (journey lists, fed by the journeys)."""
    out: dict[str, set[str]] = {}
    m = SEGMENT_MEMBERS
    if tables_present(wh, [m]):
        for seg in segments.values():
            name = seg.destinations.get("brevo")
            if name:
                out[name] = set(wh.read_select(sa.select(m.c.golden_id).where(m.c.segment == seg.name))["golden_id"])
    for name, ids in (extra or {}).items():
        out.setdefault(name, set()).update(ids)
    return out


def plan_audience(wh: Warehouse, destination: str, wanted: dict[str, set[str]], screen: Screen,
                  hasher: IdentityHasher) -> tuple[pd.DataFrame, dict[str, int]]:
    """The activation as planned: (destination, list_name, golden_id) of the wanted contacts the gate passes,
    written to ``marts.activation_audience`` for the blocking checks; and how many the gate stopped, by reason."""
    everyone = set().union(*wanted.values()) if wanted else set()
    profile = read_profile(wh, sorted(everyone))
    reasons = gate(profile, screen, hasher, blocked_hashes(wh, destination))
    ok = set(profile.index[reasons.isna()])
    plan = pd.DataFrame([(destination, name, g) for name, ids in sorted(wanted.items()) for g in sorted(ids & ok)],
                        columns=["destination", "list_name", "golden_id"])
    replace_table(wh, ACTIVATION_AUDIENCE, plan, where={"destination": destination})
    stopped = {r: int((reasons == r).sum()) for r in GATE_REASONS if (reasons == r).any()}
    return plan, stopped


def planned_lists(wh: Warehouse, destination: str) -> dict[str, set[str]]:
    t = ACTIVATION_AUDIENCE
    if not tables_present(wh, [t]):
        return {}
    rows = wh.read_select(sa.select(t.c.list_name, t.c.golden_id).where(t.c.destination == destination))
    return {name: set(g["golden_id"]) for name, g in rows.groupby("list_name")}


def sync_audiences(wh: Warehouse, tool: MarketingTool, settings: ActivationSettings, wanted: dict[str, set[str]],
                   screen: Screen, hasher: IdentityHasher, now: datetime | None = None) -> AudienceReport:
    """Brings the tool's lists (ours) to ``wanted`` (list name -> golden IDs) for the contacts that pass the gate."""
    started = time.perf_counter()
    now = now or _now()
    report = AudienceReport()
    report.attributes_created = tool.ensure_attributes(settings.attribute_types())
    report.tool_state = pull_blocked(wh, tool, hasher)
    wh.ensure_tables([ACTIVATION_CONTACTS, ACTIVATION_MEMBERS])
    everyone = set().union(*wanted.values()) if wanted else set()
    # Whoever we put on a list before is looked at too: they may have to leave it.
    m = ACTIVATION_MEMBERS
    previously = set(wh.read_select(sa.select(m.c.golden_id).where(m.c.destination == tool.name))["golden_id"]) \
        if tables_present(wh, [m]) else set()
    inputs = read_inputs(wh, sorted(everyone | previously))
    profile = inputs.profile
    report.evaluated = len(profile)
    reasons = gate(profile, screen, hasher, blocked_hashes(wh, tool.name))
    report.stopped = {r: int((reasons == r).sum()) for r in GATE_REASONS if (reasons == r).any()}
    eligible = profile.index[reasons.isna()]
    emails = profile.get("contact.email", pd.Series(dtype=object)).map(
        lambda e: normalize_email(e) if isinstance(e, str) else None)
    eligible_in_lists = [g for g in eligible if g in everyone]
    report.eligible = len(eligible_in_lists)
    # Attributes of the eligible: only the changed are imported again.
    attrs = attributes_frame(SegmentInputs(profile.loc[eligible_in_lists], inputs.events, inputs.orders,
                                           inputs.service_requests), settings, now)
    c = ACTIVATION_CONTACTS
    last = wh.read_select(sa.select(c.c.golden_id, c.c.attributes_sha).where(c.c.destination == tool.name))
    last_sha = dict(zip(last["golden_id"], last["attributes_sha"]))
    rows, upsert_ids, shas = [], [], {}
    for gid, rec in zip(attrs.index, attrs.to_dict("records")):
        sha = _sha({"email": emails[gid], **rec})
        if last_sha.get(gid) != sha:
            rows.append(ToolContact(emails[gid], {k: v for k, v in rec.items()}))
            upsert_ids.append(gid)
            shas[gid] = sha
    master_id = owned_list(wh, tool, settings, settings.all_contacts_list)
    if rows:
        report.upserted = tool.upsert(rows, master_id)
        with wh.engine.begin() as conn:
            for part in chunks(upsert_ids):
                conn.execute(sa.delete(c).where(c.c.destination == tool.name, c.c.golden_id.in_(part)))
            wh.bulk_insert(conn, c, pd.DataFrame({"destination": tool.name, "golden_id": upsert_ids,
                                                  "email_hash": [hasher.email(emails[g]) for g in upsert_ids],
                                                  "attributes_sha": [shas[g] for g in upsert_ids], "synced_at": now}))
    ok = pd.Index(eligible_in_lists)
    lists = {settings.all_contacts_list: set(ok), **{name: ids & set(ok) for name, ids in wanted.items()}}
    for name, ids in lists.items():
        desired = pd.DataFrame({"golden_id": sorted(ids), "email": [emails[g] for g in sorted(ids)]})
        already = set(upsert_ids) if name == settings.all_contacts_list else set()
        report.lists.append(sync_list(wh, tool, settings, name, desired, emails, hasher, already))
    # Contacts that can no longer be activated drop out of the attribute state, so a return re-sends them.
    gone = sorted(set(last_sha) - set(eligible_in_lists))
    if gone:
        with wh.engine.begin() as conn:
            for part in chunks(gone):
                conn.execute(sa.delete(c).where(c.c.destination == tool.name, c.c.golden_id.in_(part)))
    report.calls = tool.stats.as_dict()
    report.seconds = time.perf_counter() - started
    return report


def ensure_in_tool(wh: Warehouse, tool: MarketingTool, settings: ActivationSettings, inputs: SegmentInputs,
                   golden_ids: list[str], hasher: IdentityHasher, now: datetime) -> int:
    """Imports the contacts among ``golden_ids`` the tool does not have from us yet (with their attributes, onto
    the all-contacts list), so a journey can put them on its list. The gate has passed them. Returns how many."""
    c = ACTIVATION_CONTACTS
    wh.ensure_tables([c, ACTIVATION_MEMBERS])
    have = set(wh.read_select(sa.select(c.c.golden_id).where(c.c.destination == tool.name))["golden_id"])
    missing = [g for g in golden_ids if g not in have]
    if not missing:
        return 0
    sub = SegmentInputs(inputs.profile.loc[missing], inputs.events, inputs.orders, inputs.service_requests)
    attrs = attributes_frame(sub, settings, now)
    emails = sub.profile["contact.email"].map(normalize_email)
    master_id = owned_list(wh, tool, settings, settings.all_contacts_list)
    records = attrs.to_dict("records")
    tool.upsert([ToolContact(emails[g], rec) for g, rec in zip(attrs.index, records)], master_id)
    hashes = [hasher.email(emails[g]) for g in attrs.index]
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, c, pd.DataFrame({"destination": tool.name, "golden_id": list(attrs.index), "email_hash": hashes,
                                              "attributes_sha": [_sha({"email": emails[g], **r}) for g, r in
                                                                 zip(attrs.index, records)], "synced_at": now}))
        m = ACTIVATION_MEMBERS
        for part in chunks(list(attrs.index)):
            conn.execute(sa.delete(m).where(m.c.destination == tool.name, m.c.list_name == settings.all_contacts_list,
                                            m.c.golden_id.in_(part)))
        wh.bulk_insert(conn, m, pd.DataFrame({"destination": tool.name, "list_name": settings.all_contacts_list,
                                              "golden_id": list(attrs.index), "email_hash": hashes, "added_at": now}))
    return len(missing)


def request_double_opt_ins(wh: Warehouse, tool: MarketingTool, settings: ActivationSettings, screen: Screen,
                           hasher: IdentityHasher, limit: int = 500) -> dict[str, int]:
    """Asks the tool to send its confirmation mail to people whose opt-in box is the only e-mail consent they gave
    (ledger status ``pending``, no verdict yet), once per person, not suppressed, not blocked. The confirmation
    comes back as a webhook (``listAddition``) and grants the consent. At most ``limit`` per run: the endpoint
    takes one address per call."""
    from ..platform.schema import CONSENT_EVENTS, PERSON_CROSSWALK
    if not tables_present(wh, [CONSENT_EVENTS, PERSON_CROSSWALK]):
        return {"requested": 0, "waiting": 0}
    ce, xw = CONSENT_EVENTS, PERSON_CROSSWALK
    pending = wh.read_select(sa.select(xw.c.golden_id).join(ce, ce.c.person_record_key == xw.c.record_key)
                             .where(ce.c.status == "pending", ce.c.channel == "email", xw.c.valid_to.is_(None))
                             .distinct())["golden_id"]
    m = ACTIVATION_MEMBERS
    wh.ensure_tables([m])
    asked = set(wh.read_select(sa.select(m.c.golden_id).where(m.c.destination == tool.name,
                                                              m.c.list_name == settings.doi_list))["golden_id"])
    todo = sorted(set(pending) - asked)
    profile = read_profile(wh, todo)
    if profile.empty:
        return {"requested": 0, "waiting": 0}
    undecided = profile[profile.get("contact.email_consent", pd.Series(None, index=profile.index)).isna()]
    reasons = gate(undecided.assign(**{"contact.email_consent": "granted"}), screen, hasher, blocked_hashes(wh, tool.name))
    ready = list(undecided.index[reasons.isna()])
    doi_list = owned_list(wh, tool, settings, settings.doi_list)
    now = _now()
    done = []
    for gid in ready[:limit]:
        email = normalize_email(undecided.loc[gid, "contact.email"])
        tool.request_double_opt_in(email, doi_list, {"FIRSTNAME": undecided.loc[gid].get("contact.first_name"),
                                                     "LASTNAME": undecided.loc[gid].get("contact.last_name")},
                                   template_id=settings.doi_template_id, redirection_url=settings.doi_redirect_url)
        done.append({"destination": tool.name, "list_name": settings.doi_list, "golden_id": gid,
                     "email_hash": hasher.email(email), "added_at": now})
    if done:
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, m, pd.DataFrame(done))
    return {"requested": len(done), "waiting": max(0, len(ready) - limit)}


def forget_contact(wh: Warehouse, destination: str, golden_ids: list[str]) -> None:
    """After the tool deleted a contact (erasure): nothing of ours points at it any more."""
    for t in (ACTIVATION_MEMBERS, ACTIVATION_CONTACTS):
        if tables_present(wh, [t]):
            with wh.engine.begin() as conn:
                for part in chunks(golden_ids):
                    conn.execute(sa.delete(t).where(t.c.destination == destination, t.c.golden_id.in_(part)))

