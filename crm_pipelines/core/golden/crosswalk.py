"""The crosswalk: which golden ID each source record belongs to, historised (valid_from / valid_to),
the ID registry behind stable IDs, and the contact-to-account links through company mentions."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import (ACCOUNT_CROSSWALK, CROSSWALK, GOLDEN_CONTACTS, ID_EVENTS, ID_REGISTRY, PERSON_CROSSWALK,
                               PERSON_RECORDS)
from ..platform.warehouse import KeyRange, Warehouse, tables_present
from .matching.ids import IdAssignment, format_ids, id_seq
from .records import MENTION_PREFIX

# Golden IDs: GC-... for contacts (persons), GA-... for accounts.
PREFIX = {"persons": "GC", "accounts": "GA"}


def register_ids(wh: Warehouse, entity: str, ids: IdAssignment, run_id: str, at: datetime) -> None:
    """The created IDs into the registry (a slice at a time: a first night creates one per golden record), the
    merged ones marked, every event logged."""
    wh.ensure_tables([ID_REGISTRY, ID_EVENTS])
    events, created = ids.events, ids.created_seqs
    with wh.engine.begin() as conn:
        for start in range(0, len(created), _REGISTER_ROWS):
            new = format_ids(ids.prefix, created[start:start + _REGISTER_ROWS])
            wh.bulk_insert(conn, ID_REGISTRY, pd.DataFrame({
                "golden_id": new, "entity": entity, "status": "active", "merged_into": None,
                "created_at": pd.Timestamp(at), "updated_at": pd.Timestamp(at), "created_run": run_id}))
            wh.bulk_insert(conn, ID_EVENTS, pd.DataFrame({"at": pd.Timestamp(at), "run_id": run_id, "entity": entity,
                                                          "event": "created", "golden_id": new, "into": None}))
        for e in events:
            if e["event"] == "merged":
                conn.execute(sa.update(ID_REGISTRY).where(ID_REGISTRY.c.golden_id == e["golden_id"])
                             .values(status="merged", merged_into=e["into"], updated_at=at))
        if events:
            wh.bulk_insert(conn, ID_EVENTS, pd.DataFrame({
                "at": pd.Timestamp(at), "run_id": run_id, "entity": entity, "event": [e["event"] for e in events],
                "golden_id": [e["golden_id"] for e in events], "into": [e["into"] for e in events]}))


_REGISTER_ROWS = 500_000


def next_seq(wh: Warehouse, entity: str) -> int:
    wh.ensure_tables([ID_REGISTRY])
    ids = wh.read_select(sa.select(ID_REGISTRY.c.golden_id).where(ID_REGISTRY.c.entity == entity))
    return max((id_seq(i) for i in ids["golden_id"]), default=0) + 1


def current_map(wh: Warehouse, table: sa.Table, named_in: sa.Table | None = None, key_range: KeyRange | None = None,
                key_prefix: str = "") -> pd.Series:
    """The current golden ID of each record, indexed by record key (a Series: about half the memory of a
    dict over a million records, and ``Series.map`` takes it as it is). ``named_in``: only the records
    a pair of that table (``record_a``, ``record_b``) names, selected in the database. ``key_range``: only
    the records whose key, ``key_prefix`` taken off, is in that range."""
    wh.ensure_tables([table])
    named = "" if named_in is None else wh.qualified(named_in)
    only = f" AND record_key IN (SELECT record_a FROM {named} UNION SELECT record_b FROM {named})" if named else ""
    if key_range is not None:
        condition = KeyRange(key_range.column, *(None if v is None else key_prefix + v
                                                 for v in (key_range.low, key_range.high))).where_literal(wh.quote)
        if key_prefix:
            condition = f"substr(record_key, 1, {len(key_prefix)}) = '{key_prefix}' AND {condition}"
        only += f" AND {condition}"
    df = wh.read_raw_sql(f"SELECT record_key, golden_id FROM {wh.qualified(table)} WHERE valid_to IS NULL{only}",
                         types={"record_key": table.c.record_key.type, "golden_id": table.c.golden_id.type})
    current = pd.Series(df["golden_id"].to_numpy(), index=pd.Index(df["record_key"].to_numpy(), dtype=object),
                        dtype=object)
    return current[~current.index.duplicated(keep="last")]


# SQL: the current account-crosswalk row ``a`` of the company mention of person record ``p``.
_MENTION_OF_P = f"a.record_key = '{MENTION_PREFIX}' || p.record_key AND a.valid_to IS NULL"


def golden_ids_by(wh: Warehouse, records: sa.Table, crosswalk: sa.Table, columns: tuple[str, ...]) -> list[pd.Series]:
    """Per identifier column of ``records``: identifier -> current golden ID, over every record of each golden
    record (the first record with a value wins). Series indexed by the identifiers as text, not dicts: ``map``
    takes them as they are, and a dict over millions of records costs a gigabyte more."""
    if not tables_present(wh, [records, crosswalk]):
        return [pd.Series(dtype=object) for _ in columns]
    rows = wh.read_select(sa.select(*[records.c[c] for c in columns], crosswalk.c.golden_id)
                          .join(crosswalk, crosswalk.c.record_key == records.c.record_key)
                          .where(crosswalk.c.valid_to.is_(None)))
    out = []
    for c in columns:
        known = rows.dropna(subset=[c]).drop_duplicates(c)
        out.append(pd.Series(known["golden_id"].to_numpy(), index=pd.Index(known[c].astype(str).to_numpy(), dtype=object),
                             dtype=object))
    return out


# The golden account of each golden contact: of its person records' company mentions, the account most of them went
# to; among equals the one the latest record mentions, then the smaller ID (a deterministic order in SQL).
_VOTES = """
SELECT contact, account FROM (
  SELECT contact, account, row_number() OVER (PARTITION BY contact ORDER BY n DESC, ts DESC, account) AS r FROM (
    SELECT p.golden_id AS contact, a.golden_id AS account, count(*) AS n, max(r.record_ts) AS ts
    FROM {persons} p JOIN {records} r ON r.record_key = p.record_key
    JOIN {accounts} a ON {mention}
    WHERE p.valid_to IS NULL GROUP BY p.golden_id, a.golden_id) v) w
WHERE r = 1"""


def link_contacts_to_accounts(wh: Warehouse) -> dict[str, int]:
    """Links each golden contact to its golden account (``golden.contacts.account_id``): the account most of its
    person records' company mentions went to (:data:`_VOTES`), None for a contact whose records name no company that
    resolved. In the database, the votes counted in one transaction and the links updated in the next, only those
    of contacts whose account changed: the golden contacts are written before the golden accounts may be done (they
    carry the account they had), so the link is the step after both. Returns the counts the asset reports."""
    wh.ensure_tables([GOLDEN_CONTACTS, PERSON_CROSSWALK, ACCOUNT_CROSSWALK, PERSON_RECORDS])
    contacts = wh.qualified(GOLDEN_CONTACTS)
    votes = _VOTES.format(persons=wh.qualified(PERSON_CROSSWALK), records=wh.qualified(PERSON_RECORDS),
                          accounts=wh.qualified(ACCOUNT_CROSSWALK), mention=_MENTION_OF_P)
    name = "contact_account_votes"
    temp = f"{'pg_temp' if wh.is_postgres else 'temp'}.{name}"  # the session's own schema of temporary tables
    with wh.engine.connect() as conn:
        with conn.begin():
            # A keyed temporary table: both updates join it (SQLite looks the contact up by the key). Left over by
            # a failed link on this pooled connection, it is dropped first.
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}")
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} (contact TEXT PRIMARY KEY, account TEXT NOT NULL)")
            conn.exec_driver_sql(f"INSERT INTO {temp} (contact, account) {votes}")
            rebuilt = []
            if wh.is_postgres:
                conn.exec_driver_sql(f"ANALYZE {temp}")
                rebuilt = _indexes_to_rebuild(conn, contacts, temp)
        # The updates in a transaction of their own, whose first lock on the table is the one dropping an index
        # takes: taken after reading the table in the same transaction, it would deadlock with a reader that
        # then wants to write (an erasure).
        with conn.begin():
            if rebuilt:
                conn.exec_driver_sql(f"LOCK TABLE {contacts} IN ACCESS EXCLUSIVE MODE")
            for index in rebuilt:
                index.drop(conn, checkfirst=True)
            changed = conn.exec_driver_sql(
                f"UPDATE {contacts} AS c SET account_id = v.account FROM {temp} AS v "
                "WHERE c.golden_id = v.contact AND (c.account_id IS NULL OR c.account_id <> v.account)").rowcount or 0
            changed += conn.exec_driver_sql(
                f"UPDATE {contacts} AS c SET account_id = NULL WHERE c.account_id IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {temp} AS v WHERE v.contact = c.golden_id)").rowcount or 0
            for index in rebuilt:
                index.create(conn, checkfirst=True)
            conn.exec_driver_sql(f"DROP TABLE {temp}")
            total, linked = conn.exec_driver_sql(f"SELECT count(*), count(account_id) FROM {contacts}").one()
    return {"contacts": int(total or 0), "linked_to_account": int(linked or 0), "account_links_changed": int(changed)}


# From this share of golden contacts whose link changes (a first night: all of them), PostgreSQL updates them faster
# without the secondary indexes and builds those again after: each updated row is a new row version that every index
# takes at a random place, and at ten million contacts the indexes do not fit the buffers.
REBUILD_INDEXES_FROM_SHARE = 0.2


def _indexes_to_rebuild(conn: sa.Connection, contacts: str, temp: str) -> list[sa.Index]:
    total, changing = conn.exec_driver_sql(
        f"SELECT count(*), count(*) FILTER (WHERE c.account_id IS DISTINCT FROM v.account) "
        f"FROM {contacts} AS c LEFT JOIN {temp} AS v ON v.contact = c.golden_id").one()
    if not total or changing < REBUILD_INDEXES_FROM_SHARE * total:
        return []
    return sorted(GOLDEN_CONTACTS.indexes, key=lambda index: index.name)


def account_links(wh: Warehouse) -> tuple[np.ndarray, np.ndarray]:
    """The golden contacts' current links to golden accounts as sequence numbers: contacts (sorted) and their
    accounts, two integer arrays (strings of ten million links would take a gigabyte)."""
    wh.ensure_tables([GOLDEN_CONTACTS])
    rows = wh.read_raw_sql(
        f"SELECT CAST(substr(golden_id, {len(PREFIX['persons']) + 2}) AS BIGINT) AS contact, "
        f"CAST(substr(account_id, {len(PREFIX['accounts']) + 2}) AS BIGINT) AS account FROM {wh.qualified(GOLDEN_CONTACTS)} "
        "WHERE account_id IS NOT NULL", types={"contact": sa.BigInteger(), "account": sa.BigInteger()})
    contact, account = rows["contact"].to_numpy(np.int64), rows["account"].to_numpy(np.int64)
    order = np.argsort(contact, kind="stable")
    return contact[order], account[order]


def build_crosswalk(wh: Warehouse) -> dict[str, int]:
    """``golden.crosswalk`` from the current rows of the two crosswalks: every person record with its
    golden contact and the golden account of its company mention, then every account record that is
    not a mention. Joined in the database, in one transaction: two crosswalks of 13 million rows each
    are not brought into memory for it. Returns the counts the asset reports."""
    wh.ensure_tables([CROSSWALK, PERSON_CROSSWALK, ACCOUNT_CROSSWALK])
    out, persons, accounts = wh.qualified(CROSSWALK), wh.qualified(PERSON_CROSSWALK), wh.qualified(ACCOUNT_CROSSWALK)
    cols = "record_key, source, source_record_id, contact_id, account_id"
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(CROSSWALK))
        n_persons = conn.exec_driver_sql(
            f"INSERT INTO {out} ({cols}) SELECT p.record_key, p.source, p.source_record_id, p.golden_id, a.golden_id "
            f"FROM {persons} p LEFT JOIN {accounts} a ON {_MENTION_OF_P} WHERE p.valid_to IS NULL").rowcount
        n_accounts = conn.exec_driver_sql(
            f"INSERT INTO {out} ({cols}) SELECT record_key, source, source_record_id, NULL, golden_id FROM {accounts} "
            f"WHERE valid_to IS NULL AND substr(record_key, 1, {len(MENTION_PREFIX)}) <> '{MENTION_PREFIX}'").rowcount
        with_account = conn.execute(sa.select(sa.func.count()).select_from(CROSSWALK).where(
            CROSSWALK.c.contact_id.is_not(None), CROSSWALK.c.account_id.is_not(None))).scalar()
    return {"rows": n_persons + n_accounts, "person_records": n_persons, "account_records": n_accounts,
            "person_records_with_account": int(with_account or 0)}

