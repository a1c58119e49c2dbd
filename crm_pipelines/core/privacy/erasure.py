"""Erasure (DSGVO Art. 17) without zombies.

For one person (an e-mail address and/or a CRM contact ID):

1. **find** them: the person records with that e-mail or CRM ID, the golden contacts those
   belong to, and every record of those golden contacts (the same person under another
   address or spelling); their identities (e-mails, CRM IDs, family name + address) as hashes;
2. **suppress** every identity *before* anything is deleted, so a load running at the same
   moment cannot bring them back;
3. **scrub** every table of the inventory (:mod:`.inventory`): delete the person's rows, blank the
   Ansprechpartner of company records, forget the CRM ID in the sync state;
4. **propagate** to every connected system the project writes to (the CRM: permanent GDPR
   delete, which also blocklists the address there);
5. **audit** each step under the person's pseudonym, with counts and never a value.

The request itself is kept only as its suppression entries and a row in ``ops.privacy_requests``
(pseudonym, source, times, outcome). When a connected system is down, the identifiers it still
has to erase wait in ``ops.erasure_outbox`` (the only place they survive the erasure) and the
request stays ``pending`` until :func:`retry_pending` gets a confirmation; the warehouse part is
already done, and running the erasure again is harmless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import sqlalchemy as sa

from ..cleaning.emails import normalize_email
from ..cleaning.names import name_key
from ..cleaning.phones import to_e164
from ..platform.audit import AuditEntry, append
from ..platform.schema import ACCOUNT_RECORDS, LANDING_FILES, PERSON_CROSSWALK, PERSON_RECORDS, QUARANTINE, raw_table
from ..platform.warehouse import Warehouse, tables_present
from ..privacy_screen.identity import IdentityHasher, any_suppressed, company_value, entries, split_name
from ..privacy_screen.suppression import SuppressionList, subject_of
from ..sources.mapping import SourceMapping
from ..sources.roles import PERSON_SOURCES
from .inventory import Locator, Person, build_inventory, digits_tail, family_plz_of, locate, stripped_phone
from .requests import ErasureTarget, propagate, record_request

Log = Callable[[str], None]


# An outlet that keeps copies of golden contacts outside the warehouse tables (the print lists on disk
# and in the print shop's outbox): called with the person's golden IDs, it removes them and returns
# how many rows left each copy. Passed in by the caller (defs/privacy.py, the privacy command line),
# because the outlets stand above privacy: erasure names what it needs, the outlets provide it.
RemoveCopies = Callable[[Warehouse, set[str], str, str | None], dict[str, int]]


@dataclass
class ErasureReport:
    request_id: str
    subject: str
    status: str = "received"
    record_keys: int = 0
    golden_ids: int = 0
    identities: dict[str, int] = field(default_factory=dict)
    suppression_added: int = 0
    tables: dict[str, int] = field(default_factory=dict)     # table -> rows deleted or blanked
    targets: dict[str, dict] = field(default_factory=dict)   # system -> outcome counts (deleted / absent / failed)
    seconds: float = 0.0
    target_seconds: dict[str, float] = field(default_factory=dict)
    copies: dict[str, dict[str, int]] = field(default_factory=dict)  # outlet -> copy -> rows removed
    landing: dict[str, int] = field(default_factory=dict)      # landing files checked / rewritten, records changed


def find_person(wh: Warehouse, hasher: IdentityHasher, emails: Sequence[str] = (), crm_contact_ids: Sequence[str] = (),
                subject: str | None = None, golden_ids: Sequence[str] = (),
                mappings: dict[str, SourceMapping] | None = None, search_by_name: bool = True) -> Person:
    """Everything erasure needs to know about one person (or, for retention, a group of golden contacts).

    The person's records are found in the raw tables (so an erasure before the first golden
    build, or of a record newer than it, finds them too) and among the person records with
    their golden contact's members; their identities are every kind :mod:`.identity` knows,
    plus family name + the address of each company they work for. Records elsewhere that carry
    one of those identities (a web form without e-mail under the same name, company and phone)
    are added in a second pass. ``search_by_name=False`` (retention, which works on whole groups
    of golden contacts) skips the search of other records by family name and phone.
    """
    emails_n = {e for e in (normalize_email(x) for x in emails if x) if e}
    crm_ids = {str(c).strip() for c in crm_contact_ids if c is not None and str(c).strip()}
    if not emails_n and not crm_ids and not golden_ids:
        raise ValueError("a privacy request needs a valid e-mail address or a CRM contact ID")
    if subject is None:
        subject = subject_of(hasher, next(iter(sorted(emails_n)), None), next(iter(sorted(crm_ids)), None))
    person = Person(subject, set(emails_n), set(crm_ids))
    raw_members = _raw_members(wh, mappings or {}, emails_n, crm_ids)
    keys = {f"{src}:{rid}" for src, frame in raw_members for rid in frame["source_record_id"].astype(str)}
    if tables_present(wh, [PERSON_RECORDS]):
        pr = PERSON_RECORDS
        seeds = wh.read_frame(sa.select(pr.c.record_key).where(sa.or_(
            pr.c.email_norm.in_(sorted(emails_n)) if emails_n else sa.false(),
            pr.c.crm_contact_id.in_(sorted(crm_ids)) if crm_ids else sa.false())))
        keys |= set(seeds["record_key"])
    keys, members = _expand(wh, person, keys, set(golden_ids))
    # The identities: what was asked for, and what the person's linked records say.
    asked = pd.DataFrame({"email": sorted(emails_n) + [None] * len(crm_ids),
                          "crm_contact_id": [None] * len(emails_n) + sorted(crm_ids)})
    frames = [(None, asked), (None, members)] + raw_members
    shared = shared_phones(wh, hasher)
    _add_identities(person, hasher, wh, frames, mappings or {}, shared)
    # Before a golden build the staging tables cannot tell a switchboard: ask the raw records too.
    raw_shared = _raw_shared_phones(wh, mappings or {}, hasher, person.phones)
    person.identities["phone"] -= raw_shared
    shared |= raw_shared
    if not search_by_name:
        person.families, person.phones = set(), set()
        person.record_keys = keys
        return person
    # Second pass: records with none of the given identifiers but one of the derived identities.
    more = _person_records_with(wh, hasher, person) - keys
    if more:
        keys, members = _expand(wh, person, keys | more, person.golden_ids)
        _add_identities(person, hasher, wh, [(None, members)], mappings or {}, shared)
    person.record_keys = keys
    return person


def _raw_members(wh: Warehouse, mappings: dict[str, SourceMapping], emails: set[str],
                 crm_ids: set[str]) -> list[tuple[str, pd.DataFrame]]:
    """Rows of the raw person tables that carry one of the given e-mail addresses or CRM IDs."""
    out = []
    for m in mappings.values():
        if m.source not in PERSON_SOURCES:
            continue
        t = raw_table(m.source, m.entity)
        if not tables_present(wh, [t]):
            continue
        cond = []
        if "email" in t.c and emails:
            cond.append(sa.func.lower(sa.func.trim(t.c.email)).in_(sorted(emails | {f"mailto:{e}" for e in emails})))
        if "crm_contact_id" in t.c and crm_ids:
            cond.append(t.c.crm_contact_id.in_(sorted(crm_ids)))
        if cond:
            rows = wh.read_frame(sa.select(t).where(sa.or_(*cond)))
            if len(rows):
                out.append((m.source, rows))
    return out


def _expand(wh: Warehouse, person: Person, keys: set[str], golden_ids: set[str]) -> tuple[set[str], pd.DataFrame]:
    """The golden contacts of the records, every record of those contacts, and the records' rows."""
    if not tables_present(wh, [PERSON_RECORDS]):
        return keys, pd.DataFrame()
    if (keys or golden_ids) and tables_present(wh, [PERSON_CROSSWALK]):
        xw = PERSON_CROSSWALK
        gids = set(golden_ids) | set(wh.read_frame(sa.select(xw.c.golden_id).where(
            xw.c.record_key.in_(sorted(keys)), xw.c.valid_to.is_(None)))["golden_id"])
        person.golden_ids |= gids
        if gids:
            keys = keys | set(wh.read_frame(sa.select(xw.c.record_key).where(xw.c.golden_id.in_(sorted(gids)),
                                                                             xw.c.valid_to.is_(None)))["record_key"])
    pr = PERSON_RECORDS
    members = wh.read_frame(sa.select(pr).where(pr.c.record_key.in_(sorted(keys)))) if keys else pd.DataFrame()
    return keys, members


def _add_identities(person: Person, hasher: IdentityHasher, wh: Warehouse, frames: list[tuple[str | None, pd.DataFrame]],
                    mappings: dict[str, SourceMapping], shared: set[str]) -> None:
    """``shared``: phone hashes that identify nobody on their own (:func:`shared_phones`)."""
    for source, frame in frames:
        if frame.empty:
            continue
        for kind, h in entries(hasher.frame_identities(frame, source)):
            if not (kind == "phone" and h in shared):
                person.identities.setdefault(kind, set()).add(h)
        if "email" in frame.columns:
            person.emails |= {e for e in (normalize_email(v) for v in frame["email"] if isinstance(v, str)) if e}
        if "crm_contact_id" in frame.columns:
            person.crm_contact_ids |= {str(c).strip() for c in frame["crm_contact_id"] if isinstance(c, str) and c.strip()}
        person.family_plz |= family_plz_of(frame)
        for column in ("last_name", "contact_name"):
            if column in frame.columns:
                person.families |= {f for f in (split_name(v)[1] if column == "contact_name" else v
                                                for v in frame[column]) if isinstance(f, str) and f.strip()}
        person.phones |= {p for c in ("phone", "mobile") if c in frame.columns
                          for p in frame[c] if isinstance(p, str) and p.strip()}
        if "company_name" in frame.columns:
            person.companies |= {k for k in (company_value(v) for v in frame["company_name"]) if k}
    # Family name + the address of each company the person works for: the Ansprechpartner of an
    # ERP line, a print list's addressee, a record that carries the company's address.
    addresses = _company_addresses(wh, person.companies, mappings) if person.families else set()
    for family in person.families:
        for street, number, plz, country in addresses:
            h = hasher.postal(family, street, number, plz, country)
            if h:
                person.identities["postal"].add(h)
                person.family_plz.add((family, plz))


def _company_addresses(wh: Warehouse, company_keys: set[str], mappings: dict[str, SourceMapping]) -> set[tuple]:
    """(street, house number, PLZ, country) of the companies with these matching keys: from the
    cleaned account records, and from the raw company records (there may be no golden build yet)."""
    if not company_keys:
        return set()
    frames = []
    if tables_present(wh, [ACCOUNT_RECORDS]):
        ar = ACCOUNT_RECORDS
        frames.append(wh.read_frame(sa.select(ar.c.street, ar.c.house_number, ar.c.postal_code, ar.c.country)
                                    .where(ar.c.company_key.in_(sorted(company_keys)), ar.c.is_mention.is_(False))))
    tokens = sorted({max(k.split(), key=len) for k in company_keys if k.split()})
    for m in mappings.values():
        t = raw_table(m.source, m.entity)
        if m.entity.name != "account" or not tokens or not tables_present(wh, [t]):
            continue
        rows = wh.read_frame(sa.select(t.c.company_name, t.c.street, t.c.house_number, t.c.postal_code, t.c.country)
                             .where(sa.or_(*[t.c.company_name.ilike(f"%{tok}%") for tok in tokens])))
        rows = rows[rows["company_name"].map(company_value).isin(company_keys)]
        frames.append(rows.drop(columns="company_name"))
    out = set()
    for rows in frames:
        out |= {tuple(None if pd.isna(v) else v for v in r) for r in rows.itertuples(index=False)
                if isinstance(r.street, str) and isinstance(r.postal_code, str)}
    return out


def shared_phones(wh: Warehouse, hasher: IdentityHasher) -> set[str]:
    """Phone hashes that identify nobody on their own: a company's switchboard, or a number used by
    people of more than one family name."""
    out: set[str] = set()
    if tables_present(wh, [ACCOUNT_RECORDS]):
        ar = ACCOUNT_RECORDS
        out |= {hasher.hash("phone", p) for p in wh.read_frame(sa.select(ar.c.phone_e164).distinct().where(
            ar.c.phone_e164.is_not(None)))["phone_e164"]}
    if tables_present(wh, [PERSON_RECORDS]):
        pr = PERSON_RECORDS
        for col in (pr.c.phone_e164, pr.c.mobile_e164):
            rows = wh.read_frame(sa.select(col.label("p")).where(col.is_not(None)).group_by(col)
                                 .having(sa.func.count(sa.distinct(pr.c.last_key)) > 1))
            out |= {hasher.hash("phone", p) for p in rows["p"]}
    return out


def _raw_shared_phones(wh: Warehouse, mappings: dict[str, SourceMapping], hasher: IdentityHasher,
                       phones: set[str]) -> set[str]:
    """Phone hashes that raw person records of more than one family name carry (a switchboard, a
    shared desk): such a number identifies nobody on its own."""
    tails = sorted({d for d in (digits_tail(p) for p in phones) if d})
    families: dict[str, set[str]] = {}
    for m in mappings.values():
        t = raw_table(m.source, m.entity)
        cols = [c for c in ("phone", "mobile") if c in t.c]
        if m.source not in PERSON_SOURCES or not cols or not tails or not tables_present(wh, [t]):
            continue
        rows = wh.read_frame(sa.select(t).where(sa.or_(*[stripped_phone(t.c[c]).like(f"%{d}") for c in cols
                                                         for d in tails])))
        if rows.empty:
            continue
        ids = hasher.frame_identities(rows, m.source)
        family = (rows["last_name"] if "last_name" in rows.columns
                  else rows["contact_name"].map(lambda v: split_name(v)[1]))
        keys = family.map(lambda v: name_key(v) if isinstance(v, str) else None)
        for column in ("phone", "phone:2"):
            for h, k in zip(ids[column], keys):
                if h and k:
                    families.setdefault(h, set()).add(k)
    return {h for h, ks in families.items() if len(ks) > 1}


def _person_records_with(wh: Warehouse, hasher: IdentityHasher, person: Person) -> set[str]:
    """Person records that carry one of the person's identities (found by family name, phone or address)."""
    if not tables_present(wh, [PERSON_RECORDS]):
        return set()
    pr = PERSON_RECORDS
    family_keys = {k for k in (name_key(f) for f in person.families) if k}
    phones = {p for p in (to_e164(x) for x in person.phones) if p}
    cond = [pr.c.last_key.in_(sorted(family_keys)) if family_keys else sa.false(),
            pr.c.phone_e164.in_(sorted(phones)) if phones else sa.false(),
            pr.c.mobile_e164.in_(sorted(phones)) if phones else sa.false()]
    rows = wh.read_frame(sa.select(pr).where(sa.or_(*cond)))
    if rows.empty:
        return set()
    hit = any_suppressed(hasher.frame_identities(rows), person.identities)
    return set(rows.loc[hit.to_numpy(), "record_key"])


def erase(wh: Warehouse, hasher: IdentityHasher, mappings: dict[str, SourceMapping], *, emails: Sequence[str] = (),
          crm_contact_ids: Sequence[str] = (), request_id: str, source: str, actor: str, run_id: str | None = None,
          copies: Mapping[str, RemoveCopies], targets: Sequence[ErasureTarget] = (), log: Log | None = None,
          locators: list[Locator] | None = None, landing_root: Path | None = None) -> ErasureReport:
    """Erases one person everywhere; idempotent (a second call finds nothing left and re-checks the targets).
    ``copies``: the outlets' copies outside the warehouse (``print.release.ERASURE_COPIES``);
    required, so no caller forgets one. ``landing_root``: also rewrite the kept landing files that name the
    person (:mod:`.landing`).

    Holds the raw layer against loads (:meth:`Warehouse.raw_writes`): a load in flight is finished first,
    so its rows are found and erased, and its balance check never sees rows vanish under it."""
    log = log or (lambda _m: None)
    with wh.raw_writes("privacy", log=log):
        return _erase(wh, hasher, mappings, emails=emails, crm_contact_ids=crm_contact_ids, request_id=request_id,
                      source=source, actor=actor, run_id=run_id, copies=copies, targets=targets, log=log,
                      locators=locators,
                      landing_root=landing_root)


def _erase(wh: Warehouse, hasher: IdentityHasher, mappings: dict[str, SourceMapping], *, emails, crm_contact_ids,
           request_id: str, source: str, actor: str, run_id, copies, targets, log: Log, locators,
           landing_root) -> ErasureReport:
    started = time.monotonic()
    person = find_person(wh, hasher, emails, crm_contact_ids, mappings=mappings)
    report = ErasureReport(request_id, person.subject)
    record_request(wh, request_id, "erasure", person.subject, source, "received")
    append(wh, [AuditEntry("erasure.received", actor, person.subject, {"request_id": request_id, "source": source},
                           run_id)])

    # Suppress first: from here on no load, replay or backfill can bring the person back.
    suppression = SuppressionList(wh, hasher)
    report.suppression_added = suppression.add(
        {(k, h) for k, hs in person.identities.items() for h in hs}, person.subject, "erasure (Art. 17 DSGVO)", request_id)
    report.identities = {k: len(v) for k, v in person.identities.items()}
    report.record_keys, report.golden_ids = len(person.record_keys), len(person.golden_ids)
    append(wh, [AuditEntry("erasure.suppressed", actor, person.subject,
                           {"identities": report.identities, "new_entries": report.suppression_added}, run_id)])

    # Copies on disk (print lists, the print outbox) first: the scrub removes the tables that find them.
    report.copies = {name: remove(wh, set(person.golden_ids), actor, run_id) for name, remove in copies.items()}
    report.tables = scrub(wh, hasher, person, locators if locators is not None else build_inventory(mappings))
    log(f"erasure {request_id}: {sum(report.tables.values())} row(s) in {len(report.tables)} table(s)")
    append(wh, [AuditEntry("erasure.warehouse", actor, person.subject,
                           {"tables": report.tables, **report.copies}, run_id)])

    identifiers = [("email", e) for e in sorted(person.emails)] + [("crm_contact_id", c)
                                                                      for c in sorted(person.crm_contact_ids)]
    for target in targets:
        t0 = time.monotonic()
        report.targets[target.name] = propagate(wh, target, request_id, person.subject, identifiers, actor, run_id)
        report.target_seconds[target.name] = round(time.monotonic() - t0, 3)
    if landing_root is not None:
        from .landing import scrub_landing

        scrubbed = scrub_landing(landing_root, mappings, person, hasher, wh, log)
        report.landing = {"files_checked": scrubbed.files_checked, "files_rewritten": scrubbed.files_rewritten,
                          "records_removed": scrubbed.records_removed, "values_blanked": scrubbed.values_blanked}
        append(wh, [AuditEntry("erasure.landing", actor, person.subject, report.landing, run_id)])
    failed = any(o.get("failed") for o in report.targets.values())
    report.status = "pending" if failed else "completed"
    record_request(wh, request_id, "erasure", person.subject, source, report.status,
             {"tables": report.tables, "targets": report.targets})
    append(wh, [AuditEntry(f"erasure.{report.status}", actor, person.subject, {"request_id": request_id}, run_id)])
    report.seconds = time.monotonic() - started
    return report


def scrub(wh: Warehouse, hasher: IdentityHasher, person: Person, locators: list[Locator]) -> dict[str, int]:
    """Removes the person from every table of the inventory in one transaction; rows per table."""
    found = locate(wh, locators, person, hasher)
    counts: dict[str, int] = {}
    with wh.engine.begin() as conn:
        for loc in locators:
            rows = found.get(loc.name)
            if rows is None or rows.empty:
                continue
            n = _apply(conn, loc, rows, person)
            if n:
                counts[loc.name] = n
                _rebalance_ledger(conn, loc, rows)
    return counts


def _rebalance_ledger(conn, loc: Locator, rows: pd.DataFrame) -> None:
    """Rows deleted from a raw table or the quarantine now count as suppressed in ``ops.landing_files``,
    so ``rows read = loaded + quarantined + suppressed`` still holds for a day whose files are gone."""
    t = LANDING_FILES
    if loc.table is QUARANTINE:
        gone = rows.groupby(["source", "partition", "file"]).size()
        column = t.c.rows_quarantined
    elif loc.table.schema == "raw" and not loc.action.startswith("blank:") and "_file" in rows.columns:
        if "_mention_only" in rows.columns:
            rows = rows[~rows["_mention_only"].astype(bool)]
        gone = rows.assign(source=loc.table.name).groupby(["source", "_partition", "_file"]).size()
        column = t.c.rows_loaded
    else:
        return
    for (source, partition, file), n in gone.items():
        conn.execute(sa.update(t).where(t.c.source == source, t.c.partition == partition, t.c.file == file)
                     .values({column: column - int(n),
                              t.c.rows_suppressed: sa.func.coalesce(t.c.rows_suppressed, 0) + int(n)}))


def _apply(conn, loc: Locator, rows: pd.DataFrame, person: Person) -> int:
    t = loc.table
    if loc.action == "keep":
        return 0
    if loc.action == "delete":
        return _delete_rows(conn, t, rows)
    if loc.action.startswith("blank:"):
        cols = loc.action.split(":", 1)[1].split(",")
        return _update_rows(conn, t, rows, {c: None for c in cols if c in t.c})
    if loc.action.startswith("delete_or_blank:"):
        cols = loc.action.split(":", 1)[1].split(",")
        mention = rows["_mention_only"].astype(bool) if "_mention_only" in rows.columns else pd.Series(False, index=rows.index)
        return _delete_rows(conn, t, rows[~mention]) + _update_rows(conn, t, rows[mention], {c: None for c in cols})
    if loc.action == "delete_mentions_blank:email":
        mentions = rows[rows["is_mention"].astype(bool)]
        n = _delete_rows(conn, t, mentions)
        return n + _update_rows(conn, t, rows[~rows["is_mention"].astype(bool)], {"email": None})
    if loc.action == "mark_erased":
        values = {"status": "erased"} if "status" in t.c else {"last_status": "erased", "crm_id": None,
                                                               "payload_hash": None, "associated_crm_id": None}
        return _update_rows(conn, t, rows, values)
    raise ValueError(f"unknown erasure action {loc.action}")


def _row_filter(t: sa.Table, row: pd.Series) -> sa.ColumnElement:
    """Identifies one row: the primary key, else (raw tables) partition + file + record number, else all columns."""
    if t.primary_key.columns:
        cols = list(t.primary_key.columns)
    elif "_record_no" in t.c:
        cols = [t.c._partition, t.c._file, t.c._record_no]
    else:
        cols = [c for c in t.c if c.name in row.index]
    parts = []
    for c in cols:
        v = row[c.name]
        parts.append(c.is_(None) if v is None or (isinstance(v, float) and pd.isna(v)) else c == _plain(v))
    return sa.and_(*parts)


def _plain(v):
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if hasattr(v, "item"):
        return v.item()
    return v


def _delete_rows(conn, t: sa.Table, rows: pd.DataFrame) -> int:
    n = 0
    for _, row in rows.iterrows():
        n += conn.execute(sa.delete(t).where(_row_filter(t, row))).rowcount or 0
    return n


def _update_rows(conn, t: sa.Table, rows: pd.DataFrame, values: dict) -> int:
    n = 0
    for _, row in rows.iterrows():
        n += conn.execute(sa.update(t).where(_row_filter(t, row)).values(**values)).rowcount or 0
    return n

