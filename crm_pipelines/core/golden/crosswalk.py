"""The crosswalk: which golden ID each source record belongs to, historised (valid_from / valid_to),
the ID registry behind stable IDs, and the contact-to-account links through company mentions."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import ACCOUNT_CROSSWALK, CROSSWALK, ID_EVENTS, ID_REGISTRY, PERSON_CROSSWALK, PERSON_RECORDS
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


def mention_accounts(wh: Warehouse, persons: pd.DataFrame, key_range: KeyRange | None = None) -> np.ndarray:
    """Per person record (``persons`` in record-key order): the current golden account of its company
    mention, None where it has none. Joined in the database: a map of every account record key plus a
    "mention:" key per person record came to gigabytes at 10 million contacts. ``key_range``: ``persons``
    are the records of that range of record keys. A crosswalk holding two current rows for one record
    (never written so, but not enforced) falls back to the map."""
    wh.ensure_tables([ACCOUNT_CROSSWALK, PERSON_RECORDS])
    condition = key_range.where_literal(lambda c: f"p.{wh.quote(c)}") if key_range is not None else "1 = 1"
    found = wh.read_raw_sql(
        f"SELECT a.golden_id FROM {wh.qualified(PERSON_RECORDS)} p LEFT JOIN {wh.qualified(ACCOUNT_CROSSWALK)} a "
        f"ON {_MENTION_OF_P} WHERE {condition} ORDER BY p.record_key",
        types={"golden_id": ACCOUNT_CROSSWALK.c.golden_id.type})["golden_id"]
    if len(found) != len(persons):
        found = (MENTION_PREFIX + persons["record_key"]).map(current_map(wh, ACCOUNT_CROSSWALK, key_range=key_range,
                                                                         key_prefix=MENTION_PREFIX))
    return found.to_numpy(dtype=object, na_value=None)


def account_votes(mention: np.ndarray, labels: np.ndarray, ts: np.ndarray, n: int) -> np.ndarray:
    """Per cluster the golden account most of its records' company mentions went to (ties: the latest record)."""
    frame = pd.DataFrame({"l": labels, "a": mention, "ts": ts}).dropna(subset=["a"])
    if frame.empty:
        return np.array([None] * n, dtype=object)
    frame["votes"] = frame.groupby(["l", "a"])["a"].transform("size")
    best = frame.sort_values(["l", "votes", "ts"], ascending=[True, False, False]).drop_duplicates("l").set_index("l")["a"]
    return best.reindex(range(n)).astype(object).where(best.reindex(range(n)).notna(), None).to_numpy()


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

