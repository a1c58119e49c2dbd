"""Record builders that read, clean and write a source a slice of record IDs at a time: the slices
cover every row exactly once in the database's own order, and the tables come out the same as from
one pass over everything."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.golden.staging import build_account_records, build_person_records
from crm_pipelines.core.platform.schema import ACCOUNT_RECORDS, PERSON_RECORDS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions

# Case, umlauts, digits and blanks: the orders of a C and a linguistic collation differ on them.
# Bounds written into the SQL (where_literal): a quote, and keys that hold the bind parameters' names.
IDS = ["a", "B", "ä", "Z-1", "z-1", "10", "9", None, "a", "Ö", "o", "ß", " space", "Ärger", "zz", None, "9",
       "crm:o'brien", "crm:high", "x:low:high", "crm:highland"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 12, 100])
def test_key_ranges_put_every_row_in_exactly_one_slice(warehouse_url, size):
    wh = Warehouse.for_url(warehouse_url)
    wh.ensure_tables([PERSON_RECORDS])  # creates the layers (schemas, attached files)
    probe = sa.Table("slice_probe", sa.MetaData(), sa.Column("row_no", sa.Integer), sa.Column("id", sa.Text),
                     schema="staging")
    probe.create(wh.engine)
    with wh.engine.begin() as conn:
        conn.execute(probe.insert(), [{"row_no": i, "id": v} for i, v in enumerate(IDS)])

    ranges = wh.key_ranges(wh.qualified(probe), "id", size)

    distinct = len({v for v in IDS if v is not None})
    assert len(ranges) == max(1, math.ceil(distinct / size))
    seen: list[int] = []
    for key_range in ranges:
        condition, params = key_range.where(wh.quote)
        rows = wh.read_frame(f"SELECT row_no, id FROM {wh.qualified(probe)} WHERE {condition}", params)
        literal = wh.read_frame(f"SELECT row_no FROM {wh.qualified(probe)} WHERE {key_range.where_literal(wh.quote)}")
        assert sorted(literal["row_no"]) == sorted(rows["row_no"])
        seen.extend(rows["row_no"])
        if size < distinct:  # each slice holds whole values: a duplicated ID never straddles two
            assert rows["id"].dropna().nunique() <= size
    assert sorted(seen) == list(range(len(IDS)))


def test_key_ranges_refuse_an_empty_slice(sqlite_url):
    with pytest.raises(ValueError, match="at least one value"):
        Warehouse(sqlite_url).key_ranges("raw.x", "id", 0)


def _loaded(url: str, demo_landing, mappings) -> Warehouse:
    root, _ = demo_landing
    wh = Warehouse.for_url(url)
    for source, mapping in mappings.items():
        for p in landed_partitions(root, source):
            ingest_partition(mapping, p, root, wh, "load")
    return wh


def _table(wh: Warehouse, table: sa.Table) -> pd.DataFrame:
    df = wh.read_frame(sa.select(table)).sort_values("record_key").reset_index(drop=True)
    return df.astype(object).where(df.notna(), None)


def test_sliced_record_builders_write_what_one_pass_writes(warehouse_url, demo_landing, mappings):
    wh = _loaded(warehouse_url, demo_landing, mappings)
    versions = wh.scalar('SELECT count(*) FROM (SELECT source_record_id FROM raw."crm_contacts" '
                         'GROUP BY source_record_id HAVING count(*) > 1) AS updated')
    assert versions > 0  # records delivered again later: a slice must pick the latest of them

    whole = build_person_records(wh, slice_records=10**9)
    accounts_whole = build_account_records(wh, slice_records=10**9)
    persons_once, accounts_once = _table(wh, PERSON_RECORDS), _table(wh, ACCOUNT_RECORDS)

    sliced = build_person_records(wh, slice_records=37)
    accounts_sliced = build_account_records(wh, slice_records=37)

    assert all(w.slices <= 1 for w in whole.values())
    assert sliced["crm_contacts"].slices > 3 and accounts_sliced.slices > 3
    pd.testing.assert_frame_equal(_table(wh, PERSON_RECORDS), persons_once)
    pd.testing.assert_frame_equal(_table(wh, ACCOUNT_RECORDS), accounts_once)
    # The counts a step reports add up across slices.
    for source, w in whole.items():
        assert (sliced[source].records, sliced[source].counts) == (w.records, w.counts)
    assert sum(w.records for w in sliced.values()) == len(persons_once)
    assert (accounts_sliced.records, accounts_sliced.counts, accounts_sliced.values) == \
           (accounts_whole.records, accounts_whole.counts, accounts_whole.values)
    assert accounts_sliced.records == len(accounts_once)
    assert accounts_sliced.counts["mentions"] == int(accounts_once["is_mention"].astype(bool).sum()) > 0
    pd.testing.assert_frame_equal(accounts_sliced.preview.reset_index(drop=True),
                                  accounts_whole.preview.reset_index(drop=True))
