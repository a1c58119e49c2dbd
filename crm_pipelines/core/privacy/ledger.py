"""The consent ledger in the warehouse: every opt-in, unsubscribe, opt-out and objection of the sign-up
and consent sources, tied to person records (``staging.consent_events``), and read back for the verdicts
(:func:`.consent.current`)."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from ..model import ENTITIES
from ..platform.schema import CONSENT_EVENTS, PERSON_RECORDS, raw_table
from ..platform.warehouse import Warehouse, replace_table, tables_present
from ..privacy_screen.identity import IdentityHasher
from ..sources.roles import CONSENT_SOURCES, ENGAGEMENT_SOURCES, OPT_IN_SOURCES
from . import consent


# What a verdict (consent.current) reads of an event.
VERDICT_COLUMNS = ("person_record_key", "channel", "status", "legal_basis", "occurred_at", "double_opt_in_at")


def load_consent_events(wh: Warehouse, for_verdicts: bool = False) -> pd.DataFrame:
    """The consent ledger. ``for_verdicts``: only what the verdicts read, of the events linked to a person record
    and of a status that moves a verdict (the golden contacts' step: event keys and e-mail hashes of millions of
    events are most of the ledger)."""
    if not tables_present(wh, [CONSENT_EVENTS]):
        return pd.DataFrame(columns=list(VERDICT_COLUMNS) if for_verdicts else consent.EVENT_COLUMNS)
    if for_verdicts:
        df = wh.read_select(sa.select(*[CONSENT_EVENTS.c[c] for c in VERDICT_COLUMNS]).where(
            CONSENT_EVENTS.c.person_record_key.is_not(None), CONSENT_EVENTS.c.status.in_(consent.VERDICT_STATUSES)))
    else:
        df = wh.read_select(sa.select(CONSENT_EVENTS))
    df["occurred_at"] = pd.to_datetime(df["occurred_at"], utc=True)
    df["double_opt_in_at"] = pd.to_datetime(df["double_opt_in_at"], utc=True)
    return df


def build_consent_events(wh: Warehouse, hasher: IdentityHasher) -> pd.DataFrame:
    wh.ensure_tables([CONSENT_EVENTS])
    raw = {s: wh.read_select(sa.select(raw_table(s, ENTITIES["consent_event"]))) for s in CONSENT_SOURCES
           if tables_present(wh, [raw_table(s, ENTITIES["consent_event"])])}
    for s in OPT_IN_SOURCES:
        t = raw_table(s, ENTITIES["contact"])
        if tables_present(wh, [t]):
            cols = [t.c[c] for c in ("source_record_id", "email", "marketing_opt_in", "created_at", "_partition", "_record_no")]
            raw[s] = consent.opt_in_events(s, wh.read_select(sa.select(*cols).where(t.c.marketing_opt_in.is_(True))))
    for s in ENGAGEMENT_SOURCES:
        t = raw_table(s, ENTITIES["behaviour_event"])
        if tables_present(wh, [t]):
            cols = [t.c[c] for c in ("source_record_id", "email", "event_type", "occurred_at", "_partition", "_record_no")]
            raw[s] = consent.engagement_events(wh.read_select(
                sa.select(*cols).where(t.c.event_type.in_(list(consent.ENGAGEMENT_CONSENT)))))
    events = consent.build_events(raw, lambda crm_ids, emails: person_keys(wh, crm_ids, emails), hasher)
    replace_table(wh, CONSENT_EVENTS, events)
    return events


# Person records read at a time for the events' lookups: 13 million records' keys and e-mails at once, with
# dictionaries of them, made the ledger step the largest process of a 10M night.
PERSON_SLICE = 500_000


def person_keys(wh: Warehouse, crm_ids: set[str], emails: set[str],
                slice_records: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """:data:`.consent.PersonKeys` from ``staging.person_records``, read a slice of record keys at a time and only
    what is asked for kept: the CRM's record of each of ``crm_ids`` and, of each of ``emails``, the first record
    (in record-key order) with that normalised e-mail."""
    by_crm: dict[str, str] = {}
    by_email: dict[str, str] = {}
    pr = PERSON_RECORDS
    if not (crm_ids or emails) or not tables_present(wh, [pr]):
        return by_crm, by_email
    columns = ("record_key", "source", "crm_contact_id", "email_norm")
    for key_range in wh.key_ranges(wh.qualified(pr), "record_key", slice_records or PERSON_SLICE):
        part = wh.read_columns(pr, columns, key_range)
        crm = part[(part["source"] == "crm_contacts") & part["crm_contact_id"].notna()]
        crm_id = crm["crm_contact_id"].astype(str)
        asked = crm_id.isin(crm_ids)
        by_crm.update(zip(crm_id[asked], crm["record_key"][asked]))
        found = part[part["email_norm"].isin(emails)].drop_duplicates("email_norm")
        for email, key in zip(found["email_norm"], found["record_key"]):
            by_email.setdefault(email, key)
    return by_crm, by_email
