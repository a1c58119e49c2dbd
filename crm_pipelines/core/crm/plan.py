"""What a push would send: the payload diffed against what the CRM last accepted (``ops.crm_sync_state``),
shaped by who owns each field (``field_policy`` in sync.yaml), the lifecycle stage only moving forward,
and rows the CRM would refuse (a malformed e-mail) held back as invalid."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from .changes import DELETED
from .payloads import is_missing, property_columns
from .protocol import FAILED, REJECTED
from .settings import LIFECYCLE_ORDER, ObjectSync
from .state import INVALID, OK

EMAIL_FORMAT = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def plan(payload: pd.DataFrame, state: pd.DataFrame, spec: ObjectSync, required: tuple[str, ...],
         remote: pd.DataFrame | None = None, on_crm_delete: str = "keep_deleted") -> pd.DataFrame:
    """Per payload row: the operation (create / update / unchanged / skip / invalid / deleted_in_crm), why,
    and ``_send``: the properties that go out once the field policies have been applied.

    ``state`` is this object type's rows of ``ops.crm_sync_state``; ``remote`` its rows of ``ops.crm_remote``
    (what the CRM holds, as the last pull saw it).
    """
    df = payload.copy()
    st = state.set_index("golden_id") if len(state) else pd.DataFrame(
        columns=["crm_id", "payload_hash", "last_status", "associated_crm_id"])
    prev_hash = df["golden_id"].map(st["payload_hash"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_status = df["golden_id"].map(st["last_status"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    prev_crm = df["golden_id"].map(st["crm_id"]) if len(st) else pd.Series(None, index=df.index, dtype=object)
    df["prev_status"] = prev_status
    df["associated_crm_id"] = df["golden_id"].map(st["associated_crm_id"]) if len(st) else None
    # The CRM ID we learnt by pushing wins over the one the golden record brought from the CRM snapshot.
    df["crm_id"] = prev_crm.where(prev_crm.notna(), df["crm_id"])
    remote = remote if remote is not None else pd.DataFrame(columns=["crm_id", "golden_id", "properties", "archived",
                                                                      "merged_into"])
    merged = {str(a): str(s) for a, s in zip(remote["crm_id"], remote["merged_into"]) if isinstance(s, str) and s}
    archived = {str(c) for c, a in zip(remote["crm_id"], remote["archived"]) if bool(a)}
    live = {str(c): p for c, p, a in zip(remote["crm_id"], remote["properties"], remote["archived"]) if not bool(a)}
    # A merged-away ID is followed to its survivor (chains too), whoever brought it.
    df["crm_id"] = [_survivor(c, merged) if isinstance(c, str) else c for c in df["crm_id"]]
    deleted = df["crm_id"].isin(archived) | (prev_status == DELETED)
    recreate = deleted & (on_crm_delete == "recreate_and_flag")
    df.loc[recreate, "crm_id"] = None
    if spec.associate_with:
        # What the CRM already links counts as linked: no request for it.
        known = [(live.get(c) or {}).get("associatedcompanyid") if isinstance(c, str) else None for c in df["crm_id"]]
        df["associated_crm_id"] = df["associated_crm_id"].where(df["associated_crm_id"].notna(),
                                                                pd.Series(known, index=df.index, dtype=object))
    props = property_columns(payload)
    frame = df[props].astype(object)
    frame = frame.where(frame.notna(), None)
    values = frame.to_numpy(dtype=object)
    shaper = _Shaper(spec, props)
    sends = [shaper.shape(row, live.get(c) if isinstance(c, str) else None) if isinstance(c, str) else shaper.create(row)
             for row, c in zip(values, df["crm_id"])]
    df["_send"] = sends
    # The hash is of our values, not of what the policies let through against the CRM's current values:
    # a change sales made in the CRM does not make a row "changed" on our side. Fields the CRM owns once
    # the object exists are left out: a change of ours there has nothing to send.
    hashed = [p for p in props if spec.policy(p) != "crm"]
    df["payload_hash"] = _hashes(frame[hashed])
    ok_before = prev_status.isin(list(OK))
    unchanged = ok_before & (prev_hash == df["payload_hash"]) & ~recreate
    invalid = pd.Series(False, index=df.index)
    reason = pd.Series(None, index=df.index, dtype=object)
    for prop in required:
        miss = df[prop].isna()
        reason = reason.where(~(miss & reason.isna()), f"required property '{prop}' is empty")
        invalid |= miss
    if "email" in df.columns:
        bad = df["email"].notna() & ~df["email"].fillna("").str.match(EMAIL_FORMAT)
        reason = reason.where(~(bad & reason.isna()), "e-mail address is malformed")
        invalid |= bad
    # One CRM object, one golden record: when several golden records claim the same CRM ID (a
    # contact's stale company association, a split the steward has not confirmed, a merge in the CRM),
    # the one already synced to it, else the oldest golden ID, keeps it; the others wait for a steward.
    # (The mask applies to both sides: assigning a Series to an empty frame would adopt its index.)
    has_id = df["crm_id"].notna()
    claimed = df[has_id].assign(_synced=ok_before[has_id]).sort_values(["crm_id", "_synced", "golden_id"],
                                                                             ascending=[True, False, True])
    losers = claimed[claimed.duplicated("crm_id", keep="first")]
    if len(losers):
        owner = claimed.drop_duplicates("crm_id").set_index("crm_id")["golden_id"]
        conflict = df.index.isin(losers.index) & ~unchanged
        reason = reason.where(~(conflict & reason.isna()),
                              "CRM ID " + df["crm_id"].astype(str) + " also belongs to " + df["crm_id"].map(owner).astype(str)
                              + ": a steward decides whether they are one")
        invalid |= conflict
    has_crm = df["crm_id"].notna()
    op = np.where(unchanged, "unchanged", np.where(invalid, INVALID, np.where(has_crm, "update", "create")))
    op = np.where(deleted & ~recreate & (op != INVALID), DELETED, op)
    # Changed only in fields the CRM owns now: nothing to send; the new hash is kept (see hold_rows).
    nothing = np.array([op_ == "update" and not send for op_, send in zip(op, sends)], dtype=bool)
    op = np.where(nothing, "held", op)
    if spec.mode == "update_only":
        op = np.where(op == "create", "skip", op)
    df["operation"] = op
    df["reason"] = reason
    df["recreated"] = recreate & (op == "create")
    df["retry"] = prev_status.isin([REJECTED, FAILED, INVALID]) & np.isin(op, ["create", "update"])
    return df


def _survivor(crm_id: str, merged: dict[str, str]) -> str:
    seen = set()
    while crm_id in merged and crm_id not in seen:
        seen.add(crm_id)
        crm_id = merged[crm_id]
    return crm_id


class _Shaper:
    """The properties one row sends. A create sends every value it has. An update leaves out CRM-owned
    fields, fill-when-empty fields the CRM has filled (or whose CRM value we do not know), and a lifecycle
    stage that would not move the CRM's stage forward. An empty value is never sent: we do not clear
    what somebody typed into the CRM because we know nothing of it (erasure goes through the GDPR delete).
    Values come in with None for empty."""

    def __init__(self, spec: ObjectSync, props: list[str]):
        self.props = props
        self.always = [i for i, p in enumerate(props) if p != "lifecyclestage" and spec.policy(p) == "warehouse"]
        self.fill = [i for i, p in enumerate(props) if p != "lifecyclestage" and spec.policy(p) == "fill_empty"]
        self.stage = props.index("lifecyclestage") if "lifecyclestage" in props else None

    def create(self, row) -> dict:
        return {p: v for p, v in zip(self.props, row) if v is not None}

    def shape(self, row, remote: dict | None) -> dict:
        props = self.props
        out = {props[i]: row[i] for i in self.always if row[i] is not None}
        if remote is None:
            return out
        for i in self.fill:
            if row[i] is not None and remote.get(props[i]) in (None, ""):
                out[props[i]] = row[i]
        if self.stage is not None and row[self.stage] is not None and _forward(remote.get("lifecyclestage"),
                                                                                row[self.stage]):
            out["lifecyclestage"] = row[self.stage]
        return out


def shape_row(spec: ObjectSync, props: list[str], row, remote: dict | None, update: bool) -> dict:
    values = [None if is_missing(v) else v for v in row]
    shaper = _Shaper(spec, props)
    return shaper.shape(values, remote) if update else shaper.create(values)


def _hashes(frame: pd.DataFrame) -> list[str]:
    """A stable hash of each row's values (pandas' SipHash with its fixed key: the same values give the
    same hash in every run), with the column names, so a changed mapping changes every hash."""
    if not len(frame):
        return []
    text = frame.astype(str).where(frame.notna(), "\x00")  # None and "None" must differ
    rows = pd.util.hash_pandas_object(text, index=False).to_numpy()
    salt = int(hashlib.sha256(",".join(frame.columns).encode()).hexdigest()[:15], 16)
    return [f"{(int(h) ^ salt):016x}" for h in rows]


def _forward(current, new: str) -> bool:
    """Whether setting ``new`` moves the stage forward from ``current`` (HubSpot never moves it back;
    a stage outside the order, such as "other", was set by a person and stays)."""
    if new not in LIFECYCLE_ORDER:
        return False
    if current in (None, ""):
        return True
    if current not in LIFECYCLE_ORDER:
        return False
    return LIFECYCLE_ORDER.index(new) > LIFECYCLE_ORDER.index(current)

