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
    pr = PERSON_RECORDS
    person_keys = sa.select(pr.c.record_key, pr.c.source, pr.c.crm_contact_id, pr.c.email_norm)
    persons = wh.read_select(person_keys) if tables_present(wh, [pr]) \
        else pd.DataFrame(columns=[c.name for c in person_keys.selected_columns])
    events = consent.build_events(raw, persons, hasher)
    replace_table(wh, CONSENT_EVENTS, events)
    return events
