"""Retention: contacts with no activity and no relationship for too long are anonymised.

A golden contact is *retired* when, for ``prospect_months`` (config ``privacy.yaml``, default 24):

* none of its records was created or changed (``last_seen_at``),
* no behaviour event of theirs arrived (page views, downloads, e-mail clicks), and
* it has no relationship: no ERP customer number, and its account has placed no order.

Its identities go onto the suppression list (reason ``retention``, one pseudonym per contact), so
no backfill of an old partition or stale export revives it; a fresh sign-up with double opt-in
(re-permission) lifts that, as for an erasure. Its personal data is then removed from every table
of the inventory, exactly as an erasure does, but without touching the CRM (the sales team's system has its own rules; mirror mode
archives the contact there). What remains is one pseudonymised row per retired contact in
``golden.retired_contacts``: region, country, account, sources, dates, for statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from ..cleaning.emails import normalize_email
from ..model import ENTITIES
from ..platform.audit import AuditEntry, append
from ..platform.schema import GOLDEN_CONTACTS, PERSON_CROSSWALK, PERSON_RECORDS, RETIRED_CONTACTS, raw_table
from ..platform.warehouse import Warehouse, tables_present
from ..privacy_screen.identity import IdentityHasher, entries
from ..privacy_screen.suppression import SuppressionList
from ..sources.mapping import SourceMapping
from .erasure import find_person, scrub, shared_phones
from .inventory import build_inventory


@dataclass
class RetentionReport:
    cutoff: datetime
    candidates: int = 0
    retired: int = 0
    kept_active: int = 0           # old golden record, but a recent behaviour event
    kept_relationship: int = 0     # customers, and contacts of accounts with orders
    tables: dict[str, int] = field(default_factory=dict)
    suppressed: int = 0            # suppression entries added (reason retention)


def retire_inactive(wh: Warehouse, hasher: IdentityHasher, mappings: dict[str, SourceMapping], *, months: int,
                    actor: str, run_id: str | None = None, now: datetime | None = None,
                    dry_run: bool = False) -> RetentionReport:
    if dry_run:
        return _retire_inactive(wh, hasher, mappings, months=months, actor=actor, run_id=run_id, now=now, dry_run=True)
    with wh.raw_writes("privacy"):  # as erasure: never under a load's balance check
        return _retire_inactive(wh, hasher, mappings, months=months, actor=actor, run_id=run_id, now=now, dry_run=False)


def _retire_inactive(wh: Warehouse, hasher: IdentityHasher, mappings: dict[str, SourceMapping], *, months: int,
                     actor: str, run_id: str | None, now: datetime | None, dry_run: bool) -> RetentionReport:
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=round(months * 30.4375))
    report = RetentionReport(cutoff)
    if not tables_present(wh, [GOLDEN_CONTACTS]):
        return report
    g = GOLDEN_CONTACTS
    golden = wh.read_frame(sa.select(g.c.golden_id, g.c.email, g.c.crm_contact_id, g.c.erp_customer_number,
                                     g.c.account_id, g.c.postal_code, g.c.country, g.c.sources, g.c.record_count,
                                     g.c.first_seen_at, g.c.last_seen_at))
    golden["last_seen_at"] = pd.to_datetime(golden["last_seen_at"], utc=True)
    old = golden[golden["last_seen_at"].notna() & (golden["last_seen_at"] < cutoff)]
    report.candidates = len(old)
    if old.empty:
        return report
    related = old["erp_customer_number"].notna() | old["account_id"].isin(_accounts_with_orders(wh))
    report.kept_relationship = int(related.sum())
    old = old[~related]
    active = _recently_active(wh, old, cutoff)
    report.kept_active = int(active.sum())
    retire = old[~active]
    report.retired = len(retire)
    if retire.empty or dry_run:
        return report
    stats = pd.DataFrame({
        "golden_id": retire["golden_id"], "leitregion": retire["postal_code"].where(retire["country"] == "DE").str[:2],
        "country": retire["country"], "account_id": retire["account_id"], "sources": retire["sources"],
        "record_count": retire["record_count"], "first_seen_at": pd.to_datetime(retire["first_seen_at"], utc=True),
        "last_seen_at": retire["last_seen_at"], "anonymised_at": now,
        "reason": f"no activity or relationship for {months} months",
    })
    wh.ensure_tables([RETIRED_CONTACTS])
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(RETIRED_CONTACTS).where(RETIRED_CONTACTS.c.golden_id.in_(stats["golden_id"].tolist())))
        wh.bulk_insert(conn, RETIRED_CONTACTS, stats)
    # Suppressed first, each contact under its own pseudonym (so that one person's re-permission
    # lifts only theirs): no backfill or stale export brings them back after the scrub.
    report.suppressed = _suppress(wh, hasher, retire["golden_id"].tolist(), months, now)
    # One scrub for the whole group: the inventory works on sets of records and identities.
    group = find_person(wh, hasher, golden_ids=retire["golden_id"].tolist(), subject="retention", search_by_name=False)
    locators = [loc for loc in build_inventory(mappings) if loc.table is not RETIRED_CONTACTS]
    report.tables = scrub(wh, hasher, group, locators)
    append(wh, [AuditEntry("retention.anonymised", actor, None,
                           {"golden_ids": sorted(group.golden_ids), "months": months, "tables": report.tables},
                           run_id)])
    return report


def _suppress(wh: Warehouse, hasher: IdentityHasher, golden_ids: list[str], months: int, now: datetime) -> int:
    """Every identity of each retired contact's records on the suppression list, reason retention."""
    if not tables_present(wh, [PERSON_CROSSWALK, PERSON_RECORDS]):
        return 0
    xw, pr = PERSON_CROSSWALK, PERSON_RECORDS
    members = pd.concat([wh.read_frame(sa.select(pr, xw.c.golden_id).join(xw, xw.c.record_key == pr.c.record_key)
                                       .where(xw.c.valid_to.is_(None), xw.c.golden_id.in_(golden_ids[i:i + 500])))
                         for i in range(0, len(golden_ids), 500)], ignore_index=True)
    if members.empty:
        return 0
    ids = hasher.frame_identities(members)
    shared = shared_phones(wh, hasher)
    suppression = SuppressionList(wh, hasher)
    added = 0
    for gid, rows in ids.groupby(members["golden_id"].to_numpy()):
        found = {(kind, h) for kind, h in entries(rows) if not (kind == "phone" and h in shared)}
        added += suppression.add(found, f"R-{gid}", f"retention: no activity or relationship for {months} months",
                                 None, at=now)
    return added


def _accounts_with_orders(wh: Warehouse) -> set[str]:
    """Golden accounts whose ERP customer number placed an order (a customer relationship)."""
    orders = raw_table("erp_orders", ENTITIES["order"])
    from ..platform.schema import GOLDEN_ACCOUNTS

    if not tables_present(wh, [orders, GOLDEN_ACCOUNTS]):
        return set()
    ga = GOLDEN_ACCOUNTS
    frame = wh.read_frame(sa.select(ga.c.golden_id).where(ga.c.erp_customer_number.in_(
        sa.select(orders.c.erp_customer_number).distinct())))
    return set(frame["golden_id"])


def _recently_active(wh: Warehouse, contacts: pd.DataFrame, cutoff: datetime) -> pd.Series:
    events = raw_table("behaviour_events", ENTITIES["behaviour_event"])
    if contacts.empty or not tables_present(wh, [events]):
        return pd.Series(False, index=contacts.index)
    recent = wh.read_frame(sa.select(events.c.email, events.c.crm_contact_id).where(events.c.occurred_at >= cutoff))
    emails = {normalize_email(e) for e in recent["email"].dropna()}
    crm_ids = set(recent["crm_contact_id"].dropna().astype(str))
    # Any record of the contact may carry the identity the event used.
    members = pd.DataFrame()
    if tables_present(wh, [PERSON_CROSSWALK, PERSON_RECORDS]):
        xw, pr = PERSON_CROSSWALK, PERSON_RECORDS
        members = wh.read_frame(sa.select(xw.c.golden_id, pr.c.email_norm, pr.c.crm_contact_id)
                                .join(pr, pr.c.record_key == xw.c.record_key)
                                .where(xw.c.valid_to.is_(None), xw.c.golden_id.in_(contacts["golden_id"].tolist())))
    hit = set(members.loc[members["email_norm"].isin(emails) | members["crm_contact_id"].astype(str).isin(crm_ids),
                          "golden_id"]) if len(members) else set()
    return contacts["golden_id"].isin(hit)
