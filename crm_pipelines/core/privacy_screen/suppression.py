"""The suppression list and the screen every path in and out of the warehouse passes.

An erased person is remembered only here, as salted hashes of their identities
(:mod:`.identity`). The :class:`Screen` is a snapshot of the active list that

* ingestion applies at the door: a record of a suppressed person is counted and not stored
  (neither in ``raw`` nor in the quarantine, where a record that did not parse is judged by the
  identities its readable fields and its text name); an account record keeps its company data but
  loses the Ansprechpartner and e-mail that identify the person; a free-text field (a ticket's
  subject, a note) that names the person is blanked, the record about someone else is kept;
* the golden layer applies again (defence in depth: a table restored from a backup);
* every outgoing dataset applies before it leaves (CRM payload, print lists, alerts, exports),
  and a blocking check fails if one slipped through anyway.

Only a **re-permission** lifts an entry: a fresh, double-opt-in sign-up for that e-mail dated
after the suppression (it passes the screen, lifts the e-mail entry and is audited), or a data
protection officer's documented decision (``python -m crm_pipelines.privacy repermit``). A
re-permission lifts the e-mail it names, nothing else: the old postal identity and CRM ID stay
suppressed, so a stale ERP export or an old CRM snapshot still cannot bring the old records back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..cleaning import map_unique
from ..cleaning.emails import normalize_email
from ..platform.audit import AuditEntry, append
from ..platform.schema import SUPPRESSION
from ..platform.warehouse import Warehouse
from .identity import (KINDS, MENTION_KINDS, PERSON_KINDS, IdentityHasher, any_suppressed, company_value, names_any,
                       parse_hash_list)

# Columns that identify a person inside an account record (the ERP's Ansprechpartner, a sole
# trader's own address): blanked when the person is suppressed, the company record stays.
ACCOUNT_PERSON_COLUMNS = ("contact_person", "email")


# What a re-permission lifts besides the e-mail: the identities the person's fresh records carry.
LIFTED_WITH_EMAIL = ("phone", "name_company", "family_company", "postal", "name_birth")


@dataclass(frozen=True)
class Lift:
    email_hash: str
    by: str            # the event that re-permitted: "<source>:<record id>"
    at: datetime       # its double-opt-in time


@dataclass
class Screen:
    hasher: IdentityHasher
    active: dict[str, set[str]]
    email_added: dict[str, datetime] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(self.active.values())

    def identities(self, frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        return self.hasher.frame_identities(frame, source)

    def suppressed(self, frame: pd.DataFrame, source: str | None = None) -> np.ndarray:
        """Rows about a suppressed person: any identity that names a person on its own."""
        if self.empty or frame.empty:
            return np.zeros(len(frame), dtype=bool)
        return any_suppressed(self.identities(frame, source), self.active, PERSON_KINDS).to_numpy()

    def mentioned(self, frame: pd.DataFrame) -> np.ndarray:
        """Company records whose Ansprechpartner or e-mail names a suppressed person."""
        if self.empty or frame.empty:
            return np.zeros(len(frame), dtype=bool)
        return any_suppressed(self.identities(frame), self.active, MENTION_KINDS).to_numpy()

    def _text_hit(self, text, company_key: str | None = None) -> bool:
        return names_any(self.hasher.text_identities(text, company_key), self.active)

    def hashes_suppressed(self, hash_lists: Iterable[str | None]) -> np.ndarray:
        """Records whose stored identities (the quarantine's ``identity_hashes``: the fields that could
        be read and the e-mails and phones in the text) name a suppressed person."""
        hash_lists = list(hash_lists)
        if self.empty:
            return np.zeros(len(hash_lists), dtype=bool)
        return np.array([names_any(parse_hash_list(text), self.active) for text in hash_lists], dtype=bool)

    def free_text_mentions(self, frame: pd.DataFrame, columns: Iterable[str]) -> dict[str, np.ndarray]:
        """Per free-text column, the rows whose text names a suppressed person (e-mail, phone, or
        name together with the record's company)."""
        columns = [c for c in columns if c in frame.columns]
        if self.empty or frame.empty or not columns:
            return {}
        companies = (map_unique(frame["company_name"], company_value) if "company_name" in frame.columns
                     else pd.Series(None, index=frame.index, dtype=object))
        out = {}
        for c in columns:
            texts = frame[c]
            out[c] = np.array([isinstance(t, str) and bool(t) and self._text_hit(t, k)
                               for t, k in zip(texts, companies)], dtype=bool)
        return out

    def repermissions(self, frame: pd.DataFrame, source: str) -> tuple[np.ndarray, list[Lift]]:
        """Consent events that re-permit a suppressed e-mail: a granted, double-opt-in sign-up whose
        confirmation is later than the suppression. Returns the rows' mask and the lifts."""
        mask = np.zeros(len(frame), dtype=bool)
        if self.empty or frame.empty or not {"status", "double_opt_in_at", "email"} <= set(frame.columns):
            return mask, []
        lifts = []
        hashes = frame["email"].map(lambda e: self.hasher.email(e) if isinstance(e, str) else None)
        doi = pd.to_datetime(frame["double_opt_in_at"], utc=True, errors="coerce")
        ids = frame["source_record_id"] if "source_record_id" in frame.columns else pd.Series(range(len(frame)))
        for i, (h, status, when, rid) in enumerate(zip(hashes, frame["status"], doi, ids)):
            added = self.email_added.get(h) if h else None
            if added is not None and status == "granted" and pd.notna(when) and when.to_pydatetime() > added:
                mask[i] = True
                lifts.append(Lift(h, f"{source}:{rid}", when.to_pydatetime()))
        return mask, lifts


class SuppressionList:
    def __init__(self, wh: Warehouse, hasher: IdentityHasher):
        self.wh, self.hasher = wh, hasher
        wh.ensure_tables([SUPPRESSION])

    def screen(self) -> Screen:
        t = SUPPRESSION
        rows = self.wh.read_frame(sa.select(t.c.kind, t.c.identity_hash, t.c.added_at).where(t.c.lifted_at.is_(None)))
        active = {k: set(rows.loc[rows["kind"] == k, "identity_hash"]) for k in KINDS}
        emails = rows[rows["kind"] == "email"]
        added = {h: _aware(a) for h, a in zip(emails["identity_hash"], emails["added_at"])}
        return Screen(self.hasher, active, added)

    def add(self, identities: Iterable[tuple[str, str]], subject: str, reason: str, request_id: str | None,
            at: datetime | None = None) -> int:
        """Adds (or re-activates) entries; returns how many were not active before."""
        at = at or datetime.now(timezone.utc)
        identities = sorted(set(identities))
        if not identities:
            return 0
        t = SUPPRESSION
        new = 0
        with self.wh.engine.begin() as conn:
            for kind, h in identities:
                row = conn.execute(sa.select(t.c.lifted_at).where(t.c.kind == kind, t.c.identity_hash == h)).first()
                if row is None:
                    conn.execute(sa.insert(t).values(kind=kind, identity_hash=h, subject=subject, reason=reason,
                                                     request_id=request_id, added_at=at))
                    new += 1
                elif row.lifted_at is not None:
                    conn.execute(sa.update(t).where(t.c.kind == kind, t.c.identity_hash == h)
                                 .values(subject=subject, reason=reason, request_id=request_id, added_at=at,
                                         lifted_at=None, lifted_by=None))
                    new += 1
        return new

    def lift(self, kind: str, identity_hash: str, by: str, actor: str, run_id: str | None = None,
             at: datetime | None = None) -> bool:
        """Lifts one active entry (a re-permission) and audits it; False if it was not active."""
        at = at or datetime.now(timezone.utc)
        t = SUPPRESSION
        with self.wh.engine.begin() as conn:
            subject = conn.execute(sa.select(t.c.subject).where(t.c.kind == kind, t.c.identity_hash == identity_hash,
                                                                t.c.lifted_at.is_(None))).scalar()
            if subject is None:
                return False
            conn.execute(sa.update(t).where(t.c.kind == kind, t.c.identity_hash == identity_hash)
                         .values(lifted_at=at, lifted_by=by))
        append(self.wh, [AuditEntry("suppression.lifted", actor, subject, {"kind": kind, "by": by}, run_id)])
        return True

    def apply_lifts(self, lifts: list[Lift], actor: str, run_id: str | None) -> int:
        """Lifts each re-permitted e-mail and, with it, the same person's identities by name, phone
        and address (their new records carry those); the old CRM ID and record IDs stay suppressed."""
        n = 0
        for lf in lifts:
            t = SUPPRESSION
            subject = self.wh.scalar(sa.select(t.c.subject).where(t.c.kind == "email", t.c.identity_hash == lf.email_hash,
                                                                  t.c.lifted_at.is_(None)))
            if not self.lift("email", lf.email_hash, lf.by, actor, run_id, lf.at):
                continue
            n += 1
            others = self.wh.read_frame(sa.select(t.c.kind, t.c.identity_hash).where(
                t.c.subject == subject, t.c.lifted_at.is_(None), t.c.kind.in_(LIFTED_WITH_EMAIL)))
            for kind, h in zip(others["kind"], others["identity_hash"]):
                self.lift(kind, h, lf.by, actor, run_id, lf.at)
        return n

    def contains_email(self, email: str) -> bool:
        h = self.hasher.email(email)
        t = SUPPRESSION
        return h is not None and bool(self.wh.scalar(sa.select(sa.func.count()).select_from(t).where(
            t.c.kind == "email", t.c.identity_hash == h, t.c.lifted_at.is_(None))))


def subject_of(hasher: IdentityHasher, email: str | None = None, crm_contact_id: str | None = None) -> str:
    """The pseudonym a person is audited under: derived from the e-mail (else the CRM ID), short."""
    h = hasher.email(email) if email and normalize_email(email) else hasher.crm_contact(crm_contact_id)
    if h is None:
        raise ValueError("a privacy request needs an e-mail address or a CRM contact ID")
    return "P-" + h[:20]


def _aware(value) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
