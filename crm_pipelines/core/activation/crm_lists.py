"""Segments back into the CRM: a segment with ``destinations.crm`` becomes a static (manual) contact list in
HubSpot, so sales sees it where it works. The membership is a diff against what we added before
(``ops.activation_members`` with destination ``crm``): contacts that entered are added, contacts that left
are removed, and nothing a sales rep put on the list by hand is ever taken off.

A contact is on the CRM list only when the CRM knows it (its CRM ID from the push, ``ops.crm_sync_state``)
and it is not suppressed. E-mail consent is not asked: the list tells sales whom to call, it sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from ..crm.protocol import CrmConnector
from ..platform.schema import ACTIVATION_LISTS, ACTIVATION_MEMBERS, CRM_SYNC_STATE, SEGMENT_MEMBERS
from ..platform.warehouse import Warehouse, chunks, select_in, tables_present
from ..privacy_screen.identity import IdentityHasher
from ..privacy_screen.suppression import Screen
from .membership import read_profile
from .segments import Segment

DESTINATION = "crm"


@dataclass
class CrmListResult:
    segment: str
    list_name: str
    wanted: int = 0
    not_in_crm: int = 0
    suppressed: int = 0
    added: int = 0
    removed: int = 0
    missing: int = 0
    calls: dict = field(default_factory=dict)


def _crm_ids(wh: Warehouse, golden_ids) -> pd.Series:
    t = CRM_SYNC_STATE
    if not tables_present(wh, [t]):
        return pd.Series(dtype=object)
    rows = select_in(wh, sa.select(t.c.golden_id, t.c.crm_id).where(t.c.object_type == "contacts", t.c.crm_id.is_not(None)),
                      t.c.golden_id, golden_ids)
    return pd.Series(rows["crm_id"].astype(str).to_numpy(), index=rows["golden_id"].to_numpy(), dtype=object)


def _list_id(wh: Warehouse, crm: CrmConnector, name: str) -> str:
    t = ACTIVATION_LISTS
    wh.ensure_tables([t])
    known = wh.scalar(sa.select(t.c.remote_id).where(t.c.destination == DESTINATION, t.c.list_name == name))
    if known is not None:
        return str(known)
    remote = crm.ensure_list(name)
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(t).values(destination=DESTINATION, list_name=name, remote_id=remote,
                                         created_at=datetime.now(timezone.utc)))
    return remote


def sync_crm_lists(wh: Warehouse, crm: CrmConnector, segments: dict[str, Segment], screen: Screen,
                   hasher: IdentityHasher) -> list[CrmListResult]:
    wh.ensure_tables([ACTIVATION_MEMBERS])
    out = []
    m = ACTIVATION_MEMBERS
    for seg in segments.values():
        name = seg.destinations.get("crm")
        if not name:
            continue
        res = CrmListResult(seg.name, name)
        members = set(wh.read_select(sa.select(SEGMENT_MEMBERS.c.golden_id).where(SEGMENT_MEMBERS.c.segment == seg.name))
                      ["golden_id"]) if tables_present(wh, [SEGMENT_MEMBERS]) else set()
        res.wanted = len(members)
        profile = read_profile(wh, sorted(members))
        people = pd.DataFrame({c: profile.get(f"contact.{c}") for c in ("email", "first_name", "last_name", "crm_contact_id")},
                              index=profile.index)
        suppressed = set(profile.index[screen.suppressed(people)]) if len(people) and not screen.empty else set()
        res.suppressed = len(suppressed)
        have = wh.read_select(sa.select(m.c.golden_id, m.c.email_hash).where(m.c.destination == DESTINATION,
                                                                            m.c.list_name == name))
        ids = _crm_ids(wh, members | set(have["golden_id"]))
        want = {g for g in members - suppressed if g in ids.index}
        res.not_in_crm = len(members - suppressed) - len(want)
        list_id = _list_id(wh, crm, name)
        to_add = sorted(want - set(have["golden_id"]))
        to_remove = have[~have["golden_id"].isin(want)]
        now = datetime.now(timezone.utc)
        added_rows = []
        if to_add:
            done, missing = crm.change_list(list_id, [ids[g] for g in to_add], add=True)
            # A contact a sales rep had put on the list already is reported missing: not ours, never removed by us.
            ok = set(done)
            added_rows = [{"destination": DESTINATION, "list_name": name, "golden_id": g,
                           "email_hash": hasher.crm_contact(ids[g]), "added_at": now} for g in to_add if ids[g] in ok]
            res.added, res.missing = len(added_rows), len(missing)
        removable = []
        for g, h in zip(to_remove["golden_id"], to_remove["email_hash"]):
            crm_id = ids.get(g)
            if crm_id is not None and hasher.crm_contact(crm_id) == h:
                removable.append((g, crm_id))
        if removable:
            crm.change_list(list_id, [c for _, c in removable], add=False)
        res.removed = len(removable)
        with wh.engine.begin() as conn:
            for part in chunks(list(to_remove["golden_id"])):
                conn.execute(sa.delete(m).where(m.c.destination == DESTINATION, m.c.list_name == name,
                                                m.c.golden_id.in_(part)))
            if added_rows:
                wh.bulk_insert(conn, m, pd.DataFrame(added_rows))
        res.calls = crm.stats.as_dict()
        out.append(res)
    return out
