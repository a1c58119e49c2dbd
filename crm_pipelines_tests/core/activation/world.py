"""A small warehouse for the activation tests: golden contacts with one person record each, scores,
behaviour events, orders; every value chosen by the test that needs it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from crm_pipelines.core.model import ENTITIES, RAW_LINEAGE_COLUMNS
from crm_pipelines.core.platform.schema import (GOLDEN_CONTACTS, LEAD_SCORES, PERSON_CROSSWALK, PERSON_RECORDS,
                                                raw_table)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.privacy_screen.identity import IdentityHasher

HASHER = IdentityHasher("activation-test-salt-0123456789")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def gid(i: int) -> str:
    return f"K-{i:08d}"


def email(i: int) -> str:
    return f"person{i}@firma{i % 7}.de"


def add_contacts(wh: Warehouse, ids: list[int], *, consent: str | None = "granted", stage: str = "lead",
                 first_seen_days: int = 200, erp: dict[int, str] | None = None) -> None:
    wh.ensure_tables([GOLDEN_CONTACTS, PERSON_RECORDS, PERSON_CROSSWALK, LEAD_SCORES])
    erp = erp or {}
    contacts = pd.DataFrame({
        "golden_id": [gid(i) for i in ids], "first_name": [f"Vorname{i}" for i in ids],
        "last_name": [f"Nachname{i}" for i in ids], "email": [email(i) for i in ids],
        "company_name": [f"Firma {i % 7} GmbH" for i in ids], "postal_code": ["80331"] * len(ids),
        "street": ["Hauptstr."] * len(ids), "house_number": ["1"] * len(ids), "city": ["München"] * len(ids),
        "erp_customer_number": [erp.get(i) for i in ids],
        "email_consent": [consent] * len(ids), "email_consent_basis": ["consent" if consent else None] * len(ids),
        "post_consent": [None] * len(ids), "record_count": [1] * len(ids), "sources": ["web_form_leads"] * len(ids),
        "first_seen_at": [NOW - timedelta(days=first_seen_days)] * len(ids), "last_seen_at": [NOW] * len(ids),
        "run_id": ["test"] * len(ids)})
    records = pd.DataFrame({"record_key": [f"web_form_leads:{i}" for i in ids], "source": "web_form_leads",
                            "source_record_id": [str(i) for i in ids], "email": [email(i) for i in ids],
                            "email_norm": [email(i) for i in ids], "erp_customer_number": [erp.get(i) for i in ids]})
    xwalk = pd.DataFrame({"record_key": records["record_key"], "source": "web_form_leads",
                          "source_record_id": records["source_record_id"], "golden_id": contacts["golden_id"],
                          "valid_from": NOW - timedelta(days=1), "run_id": "test"})
    scores = pd.DataFrame({"golden_id": contacts["golden_id"], "score": 10.0, "stage": stage, "explanation": "[]",
                           "scored_at": NOW, "run_id": "test"})
    with wh.engine.begin() as conn:
        for t, frame in ((GOLDEN_CONTACTS, contacts), (PERSON_RECORDS, records), (PERSON_CROSSWALK, xwalk),
                         (LEAD_SCORES, scores)):
            wh.bulk_insert(conn, t, frame)


def set_contact(wh: Warehouse, i: int, **values) -> None:
    with wh.engine.begin() as conn:
        if "stage" in values:
            conn.execute(sa.update(LEAD_SCORES).where(LEAD_SCORES.c.golden_id == gid(i)).values(stage=values.pop("stage")))
        if values:
            conn.execute(sa.update(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id == gid(i)).values(**values))


def remove_contact(wh: Warehouse, i: int) -> None:
    with wh.engine.begin() as conn:
        for t in (GOLDEN_CONTACTS, LEAD_SCORES):
            conn.execute(sa.delete(t).where(t.c.golden_id == gid(i)))
        conn.execute(sa.delete(PERSON_CROSSWALK).where(PERSON_CROSSWALK.c.golden_id == gid(i)))


def _raw(wh: Warehouse, source: str, entity: str, rows: list[dict], loaded_at: datetime) -> None:
    t = raw_table(source, ENTITIES[entity])
    wh.ensure_tables([t])
    frame = pd.DataFrame(rows)
    frame["_partition"] = loaded_at.strftime("%Y-%m-%d")
    frame["_file"] = "test.jsonl"
    frame["_record_no"] = range(1, len(frame) + 1)
    frame["_run_id"] = "test"
    frame["_loaded_at"] = loaded_at
    cols = [f.name for f in RAW_LINEAGE_COLUMNS if f.name in frame] + [c for c in frame if not c.startswith("_")]
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, t, frame[cols])


_seq = iter(range(10**9))


def add_events(wh: Warehouse, events: list[tuple[int, str, datetime]], loaded_at: datetime = NOW,
               source: str = "behaviour_events") -> None:
    """(contact number, event type, occurred at) per event."""
    _raw(wh, source, "behaviour_event", [{"source_record_id": f"ev{next(_seq)}", "event_type": t, "occurred_at": at,
                                          "email": email(i)} for i, t, at in events], loaded_at)


def add_orders(wh: Warehouse, orders: list[tuple[str, datetime]], loaded_at: datetime = NOW) -> None:
    _raw(wh, "erp_orders", "order", [{"source_record_id": f"o{next(_seq)}", "erp_customer_number": n,
                                      "order_date": d.date(), "status": "open"} for n, d in orders], loaded_at)
