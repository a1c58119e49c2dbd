"""How the golden steps read and write at scale: the records read twice (matching columns, then golden
fields) and refused when they changed in between, the contacts' account links and the crosswalk made in the
database, bulk inserts in chunks inside one transaction. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.golden import build as G
from crm_pipelines.core.golden.build import (_lineage_rows, ensure_golden_tables, match_contacts, resolve_accounts,
                                             resolve_contacts, write_contacts)
from crm_pipelines.core.golden.crosswalk import build_crosswalk, link_contacts_to_accounts
from crm_pipelines.core.golden.matching.settings import load_matching_config
from crm_pipelines.core.golden.staging import (build_account_records, build_person_records, load_account_records,
                                               load_person_records)
from crm_pipelines.core.platform.schema import (ACCOUNT_CROSSWALK, ACCOUNT_RECORDS, CROSSWALK, PERSON_CROSSWALK,
                                                PERSON_RECORDS)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

CFG = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def records_wh(request, tmp_path, warehouse_templates, demo_landing, mappings) -> Warehouse:
    """The demo landing zone ingested and its person and account records built (once per test process
    and backend; each test gets its own copy)."""
    root, _ = demo_landing

    def build(wh: Warehouse) -> None:
        for mapping in mappings.values():
            for day in landed_partitions(root, mapping.source):
                ingest_partition(mapping, day, root, wh, "load")
        ensure_golden_tables(wh)
        build_person_records(wh)
        build_account_records(wh)

    if request.param == "sqlite":
        yield Warehouse.for_url(warehouse_templates.sqlite("records", build, tmp_path / "wh"))
        Warehouse.dispose_all()
    else:
        url = warehouse_templates.postgres("records", build, request.getfixturevalue("postgres_server"))
        yield Warehouse.for_url(url)
        warehouse_templates.drop(url)


def _delete_first_record(wh: Warehouse, table: sa.Table) -> None:
    first = wh.scalar(sa.select(sa.func.min(table.c.record_key)))
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.record_key == first))


@pytest.mark.parametrize("entity", ["accounts", "contacts"])
def test_records_changed_between_the_two_reads_stop_the_step(records_wh, monkeypatch, entity):
    """The second read lines the golden fields up with the matching's labels by position: if another run
    rebuilt the records meanwhile, the step must fail, not give people each other's fields."""
    wh = records_wh
    if entity == "contacts":
        resolve_accounts(wh, CFG, "r0")
    table = PERSON_RECORDS if entity == "contacts" else ACCOUNT_RECORDS
    real_resolve = G.resolve

    def resolve_then_rebuild(*args, **kwargs):
        result = real_resolve(*args, **kwargs)
        _delete_first_record(wh, table)  # what a concurrent rebuild of the records could do
        return result

    monkeypatch.setattr(G, "resolve", resolve_then_rebuild)
    step = resolve_contacts if entity == "contacts" else resolve_accounts
    with pytest.raises(RuntimeError, match=rf"staging\.{table.name} changed while the golden step was reading it"):
        step(wh, CFG, "r1")


def test_contacts_matched_in_one_step_and_written_in_the_next(records_wh):
    """golden/contact_matches hands its resolution to golden/contacts through the IO manager (a pickle): written
    from it, the golden contacts are those of one process; records rebuilt or settings changed in between stop the
    write instead of giving people each other's fields."""
    wh = records_wh
    resolve_accounts(wh, CFG, "r0")
    contacts = sa.select(G.GOLDEN_CONTACTS.c.golden_id, G.GOLDEN_CONTACTS.c.email, G.GOLDEN_CONTACTS.c.record_count,
                         G.GOLDEN_CONTACTS.c.account_id).order_by(G.GOLDEN_CONTACTS.c.golden_id)
    xw = sa.select(PERSON_CROSSWALK.c.record_key, PERSON_CROSSWALK.c.golden_id).where(
        PERSON_CROSSWALK.c.valid_to.is_(None)).order_by(PERSON_CROSSWALK.c.record_key)
    at_once = resolve_contacts(wh, CFG, "r1")
    one_process = wh.read_frame(contacts), wh.read_frame(xw)

    handed_on = pickle.dumps(match_contacts(wh, CFG))
    # What the IO manager stores holds positions, levels and hashes, no personal value (docs/privacy.md).
    people = load_person_records(wh, {"record_key", "email_norm", "last_name", "phone_e164"})
    for column in ("record_key", "email_norm", "last_name", "phone_e164"):
        values = people[column].dropna().astype(str)
        values = values[values.str.len() >= 6].head(200)
        assert len(values) > 20 and not [v for v in values if v.encode() in handed_on], column
    matches = pickle.loads(handed_on)
    assert matches.first.log is None and matches.seconds > 0
    apart = write_contacts(wh, CFG, matches, "r2")
    assert apart.n_golden == at_once.n_golden and apart.stats["crosswalk_changes"] == 0
    pd.testing.assert_frame_equal(wh.read_frame(contacts), one_process[0])
    pd.testing.assert_frame_equal(wh.read_frame(xw), one_process[1])

    other = dataclasses.replace(CFG, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="other matching settings.*golden/contact_matches and golden/contacts"):
        write_contacts(wh, other, pickle.loads(handed_on), "r3")

    stale = pickle.loads(handed_on)  # the records it was resolved from, before the rebuild below
    _delete_first_record(wh, PERSON_RECORDS)  # a rebuild of the records between the two steps
    with pytest.raises(RuntimeError, match=r"person_records changed.*golden/contact_matches and golden/contacts"):
        write_contacts(wh, CFG, stale, "r4")
    pd.testing.assert_frame_equal(wh.read_frame(contacts), one_process[0])  # nothing written


def _expected_links(wh: Warehouse) -> pd.Series:
    """Golden contact -> golden account computed in pandas from the tables: the account most of its records'
    company mentions went to; ties to the one the latest record mentions, then the smaller ID."""
    persons = wh.read_frame(sa.select(PERSON_CROSSWALK.c.record_key, PERSON_CROSSWALK.c.golden_id)
                            .where(PERSON_CROSSWALK.c.valid_to.is_(None)))
    mentions = wh.read_frame(sa.select(ACCOUNT_CROSSWALK.c.record_key, ACCOUNT_CROSSWALK.c.golden_id.label("account"))
                             .where(ACCOUNT_CROSSWALK.c.valid_to.is_(None)))
    ts = wh.read_frame(sa.select(PERSON_RECORDS.c.record_key, PERSON_RECORDS.c.record_ts))
    votes = (persons.merge(ts, on="record_key")
             .assign(mention="mention:" + persons["record_key"])
             .merge(mentions, left_on="mention", right_on="record_key", suffixes=("", "_m"))
             .groupby(["golden_id", "account"]).agg(n=("account", "size"), ts=("record_ts", "max")).reset_index())
    best = votes.sort_values(["golden_id", "n", "ts", "account"], ascending=[True, False, False, True])
    return best.drop_duplicates("golden_id").set_index("golden_id")["account"].sort_index()


def _links(wh: Warehouse) -> pd.Series:
    rows = wh.read_frame(sa.select(G.GOLDEN_CONTACTS.c.golden_id, G.GOLDEN_CONTACTS.c.account_id))
    return rows.set_index("golden_id")["account_id"].sort_index()


def test_contacts_are_linked_to_their_accounts_after_both_are_written(records_wh):
    """golden/contacts' write needs no golden accounts (it runs beside them): each contact keeps the account its
    golden ID had, and the link step after both links it anew, in the database, updating only what changed."""
    wh = records_wh
    resolve_accounts(wh, CFG, "r0")
    written = write_contacts(wh, CFG, match_contacts(wh, CFG), "r1")
    assert written.n_golden > 100 and _links(wh).isna().all()  # a first night: nothing to keep yet

    links = link_contacts_to_accounts(wh)

    expected = _expected_links(wh)
    stored = _links(wh)
    assert len(expected) > written.n_golden // 3  # most demo people name their company
    assert stored.dropna().to_dict() == expected.to_dict()
    assert links == {"contacts": written.n_golden, "linked_to_account": len(expected),
                     "account_links_changed": len(expected)}
    # Every link changed: PostgreSQL updated them without the secondary indexes and built those again.
    indexes = {i["name"] for i in sa.inspect(wh.engine).get_indexes("contacts", schema=G.GOLDEN_CONTACTS.schema)}
    assert indexes == {index.name for index in G.GOLDEN_CONTACTS.indexes}

    # The next write keeps the links (readers before the link step see last night's, not none); the link then
    # has nothing to change.
    write_contacts(wh, CFG, match_contacts(wh, CFG), "r2")
    assert _links(wh).equals(stored)
    assert link_contacts_to_accounts(wh)["account_links_changed"] == 0

    # Two accounts with a vote each: the one the latest record mentions. A contact whose mentions resolve no
    # more loses its link.
    xw = wh.read_frame(sa.select(PERSON_CROSSWALK.c.record_key, PERSON_CROSSWALK.c.golden_id)
                       .where(PERSON_CROSSWALK.c.valid_to.is_(None)))
    ts = wh.read_frame(sa.select(PERSON_RECORDS.c.record_key, PERSON_RECORDS.c.record_ts))
    xw = xw.merge(ts, on="record_key").sort_values("record_ts")
    xw = xw[("mention:" + xw["record_key"]).isin(set(wh.read_frame(sa.select(ACCOUNT_CROSSWALK.c.record_key))["record_key"]))]
    pairs = xw[xw["golden_id"].duplicated(keep=False) & xw["record_ts"].notna()].groupby("golden_id")
    tie = next(g for _, g in pairs if len(g) == 2 and g["record_ts"].iloc[0] < g["record_ts"].iloc[1])
    earlier, later = tie["record_key"].tolist()
    gone = expected.index.difference([tie["golden_id"].iloc[0]])[0]
    gone_records = xw.loc[xw["golden_id"] == gone, "record_key"].tolist()
    with wh.engine.begin() as conn:
        for key, account in ((earlier, "GA-99999998"), (later, "GA-99999999")):
            conn.execute(sa.update(ACCOUNT_CROSSWALK).where(ACCOUNT_CROSSWALK.c.record_key == f"mention:{key}",
                                                            ACCOUNT_CROSSWALK.c.valid_to.is_(None)).values(golden_id=account))
        conn.execute(sa.update(ACCOUNT_CROSSWALK).where(ACCOUNT_CROSSWALK.c.record_key.in_([f"mention:{k}" for k in gone_records]))
                     .values(valid_to=pd.Timestamp.now(tz="UTC")))
    changed = link_contacts_to_accounts(wh)["account_links_changed"]
    after = _links(wh)
    assert after[tie["golden_id"].iloc[0]] == "GA-99999999" and pd.isna(after[gone])
    assert after.dropna().to_dict() == _expected_links(wh).to_dict()
    assert changed == 2


def test_crosswalk_built_in_the_database_holds_every_record_once(records_wh):
    wh = records_wh
    resolve_accounts(wh, CFG, "r1")
    resolve_contacts(wh, CFG, "r1")

    counts = build_crosswalk(wh)

    table = wh.read_frame(sa.select(CROSSWALK))
    persons = wh.read_frame(sa.select(PERSON_CROSSWALK).where(PERSON_CROSSWALK.c.valid_to.is_(None)))
    accounts = wh.read_frame(sa.select(ACCOUNT_CROSSWALK).where(ACCOUNT_CROSSWALK.c.valid_to.is_(None)))
    mentions = accounts[accounts["record_key"].str.startswith("mention:")]
    companies = accounts[~accounts["record_key"].str.startswith("mention:")]
    assert counts == {"rows": len(persons) + len(companies), "person_records": len(persons),
                      "account_records": len(companies), "person_records_with_account": len(mentions)}
    assert len(table) == counts["rows"] and table["record_key"].is_unique
    by_key = table.set_index("record_key")
    assert (by_key.loc[persons["record_key"], "contact_id"].to_numpy() == persons["golden_id"].to_numpy()).all()
    mention_of = mentions.assign(record_key=mentions["record_key"].str.removeprefix("mention:")).set_index("record_key")
    assert (by_key.loc[mention_of.index, "account_id"].to_numpy() == mention_of["golden_id"].to_numpy()).all()
    assert by_key.loc[companies["record_key"], "contact_id"].isna().all()
    assert (by_key.loc[companies["record_key"], "account_id"].to_numpy() == companies["golden_id"].to_numpy()).all()
    # Built again, it replaces itself.
    assert build_crosswalk(wh) == counts and wh.scalar(sa.select(sa.func.count()).select_from(CROSSWALK)) == counts["rows"]


def test_bulk_insert_sends_chunks_in_the_callers_transaction(warehouse_url):
    wh = Warehouse.for_url(warehouse_url)
    wh.ensure_tables([CROSSWALK])
    frame = pd.DataFrame({"record_key": [f"k{i:02d}" for i in range(25)], "source": "s",
                          "source_record_id": [str(i) for i in range(25)], "contact_id": None, "account_id": "GA-1"})
    with wh.engine.begin() as conn:
        assert wh.bulk_insert(conn, CROSSWALK, frame, chunk_rows=7) == 25
    stored = wh.read_frame(sa.select(CROSSWALK).order_by(CROSSWALK.c.record_key))
    assert stored["record_key"].tolist() == frame["record_key"].tolist()
    assert stored["source_record_id"].tolist() == frame["source_record_id"].tolist()

    # A key that is already there, in the fourth chunk: the chunks before it are rolled back with it.
    more = frame.assign(record_key=[f"m{i:02d}" for i in range(25)])
    more.loc[22, "record_key"] = "k03"
    # The driver's own error: the bulk path writes through the driver's cursor.
    with pytest.raises(wh.engine.dialect.loaded_dbapi.IntegrityError):
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, CROSSWALK, more, chunk_rows=7)
    assert wh.scalar(sa.select(sa.func.count()).select_from(CROSSWALK)) == 25


def test_lineage_rows_name_every_field_a_record_supplied_once_per_golden_record():
    """The lineage of a few hundred random clusters against a plain reference: per (golden ID, record)
    the fields it supplied in field order and their rules, each pair once."""
    rng = np.random.default_rng(3)
    fields = [f"f{i}" for i in range(17)]
    rows = [(c, f, f"R{int(rng.integers(0, 4))}-{c % 7}", f"rule_{f}")
            for f in fields for c in rng.choice(300, size=int(rng.integers(0, 300)), replace=False).tolist()]
    lineage = pd.DataFrame(rows, columns=["cluster", "field", "record_key", "rule"])
    ids = pd.Series([f"GC-{x:08d}" for x in rng.permutation(300).tolist()])

    out = _lineage_rows(lineage, ids, fields)

    supplied: dict[tuple[str, str], list[str]] = {}
    for c, f, key, _ in rows:
        supplied.setdefault((ids[c], key), []).append(f)
    expected = sorted((gid, key, ",".join(sorted(fs, key=fields.index)),
                       ",".join(f"rule_{f}" for f in sorted(fs, key=fields.index))) for (gid, key), fs in supplied.items())
    assert sorted(out.itertuples(index=False, name=None)) == expected
    assert _lineage_rows(lineage.iloc[0:0], ids, fields).empty


def test_survivorship_ties_go_to_the_smaller_record_key_in_any_row_order():
    """Records come sorted by key from the golden steps, and survive() then ranks them by position; in any
    other order (a database collation that sorts otherwise) the ranks come from the keys themselves."""
    from crm_pipelines.core.golden.matching.settings import SurvivorshipSpec
    from crm_pipelines.core.golden.survivorship import survive

    # Same source, same time: only the record key breaks the ties, for every rule.
    records = pd.DataFrame({
        "record_key": ["k:03", "k:10", "k:02", "k:01", "k:11"], "source": "web_form_leads",
        "record_ts": pd.Timestamp("2026-11-01", tz="UTC"),
        "first_name": ["C", "X", "B", "A", "Y"], "phone": ["+3", "+10", "+2", "+1", "+11"],
        "email_norm": ["c@x.de", "x@x.de", "b@x.de", "a@x.de", "y@x.de"],
    })
    labels = np.array([0, 1, 0, 0, 1])
    spec = SurvivorshipSpec(("web_form_leads",), "source_priority", {"phone": "most_recent", "email_norm": "most_frequent"})
    fields = ["first_name", "phone", "email_norm"]

    shuffled, _ = survive(records, labels, fields, spec)
    order = np.argsort(records["record_key"].to_numpy())
    in_key_order, _ = survive(records.iloc[order].reset_index(drop=True), labels[order], fields, spec)

    assert shuffled.values.tolist() == in_key_order.values.tolist() == [["A", "+1", "a@x.de"], ["X", "+10", "x@x.de"]]


def test_golden_steps_in_many_small_parts_write_what_one_part_writes(records_wh, monkeypatch):
    """Slices of 13 records, parts of 7 and match edges 7 at a time: every table the golden steps write is
    what one slice and one part wrote (the IDs stay, so nothing in the crosswalk changes)."""
    wh = records_wh

    def tables() -> dict[str, pd.DataFrame]:
        out = {}
        for name, order in (("contacts", "golden_id"), ("accounts", "golden_id"),
                            ("contact_lineage", "golden_id, record_key"), ("account_lineage", "golden_id, record_key"),
                            ("match_edges", "entity, record_a, record_b"), ("staging.review_candidates", "entity, record_a, record_b"),
                            ("person_crosswalk", "record_key"), ("account_crosswalk", "record_key")):
            frame = wh.read_frame(f"SELECT * FROM {name if '.' in name else 'golden.' + name} ORDER BY {order}")
            if "crosswalk" in name:
                frame = frame[frame["valid_to"].isna()][["record_key", "source", "source_record_id", "golden_id"]]
            out[name] = frame.drop(columns=[c for c in ("run_id",) if c in frame.columns]).reset_index(drop=True)
        return out

    resolve_accounts(wh, CFG, "r1")
    resolve_contacts(wh, CFG, "r1")
    at_once = tables()
    assert len(at_once["match_edges"]) > 20 and len(at_once["staging.review_candidates"]) > 0
    assert (at_once["contacts"]["record_count"] > 1).sum() > 20

    monkeypatch.setattr(G, "SLICE_RECORDS", 13)
    monkeypatch.setattr(G, "PART_RECORDS", 7)
    monkeypatch.setattr(G, "_EDGE_ROWS", 7)
    from crm_pipelines.core.golden.matching import engine, mailboxes
    from crm_pipelines.core.golden.matching import resolve as R

    monkeypatch.setattr(engine, "PAIR_CHUNK", 7)  # blocking
    monkeypatch.setattr(R, "PAIR_CHUNK", 11)  # comparing, scoring, keeping
    monkeypatch.setattr(mailboxes, "CHUNK", 5)
    spilled = []
    real_parts = G.ClusterParts

    def counted(*args, **kwargs):
        spilled.append(real_parts(*args, **kwargs))
        return spilled[-1]

    monkeypatch.setattr(G, "ClusterParts", counted)
    accounts = resolve_accounts(wh, CFG, "r2")
    contacts = resolve_contacts(wh, CFG, "r2")

    assert [p.n_parts for p in spilled] and min(p.n_parts for p in spilled) > 20
    assert accounts.stats["crosswalk_changes"] == contacts.stats["crosswalk_changes"] == 0
    in_parts = tables()
    for name, frame in at_once.items():
        pd.testing.assert_frame_equal(in_parts[name], frame, obj=name)


def test_similarities_computed_in_chunks_are_those_computed_at_once(monkeypatch):
    from crm_pipelines.core.golden.matching import engine

    rng = np.random.default_rng(5)
    words = np.array(["müller", "mueller", "schmidt", "schmitt", "meier", "mayer", None, "lehmann"], dtype=object)
    a, b = words[rng.integers(0, len(words), 500)], words[rng.integers(0, len(words), 500)]
    at_once = {s: engine._similarity(a, b, s) for s in ("jaro_winkler", "ratio", "token_set")}
    monkeypatch.setattr(engine, "SIMILARITY_CHUNK", 7)
    for scorer, expected in at_once.items():
        assert np.array_equal(engine._similarity(a, b, scorer), expected)
    assert (at_once["jaro_winkler"] > 0).sum() > 100  # not a comparison of zeros


@pytest.mark.postgres
def test_a_read_through_copy_gives_the_drivers_values(postgres_url):
    """The golden steps read their records through COPY's CSV on PostgreSQL: every value must be what the
    driver gives (NULL as None, an empty string as itself, quotes, commas, line breaks, "NA" and umlauts
    as written; booleans and integers as Python values), timestamps as the same instants."""
    wh = Warehouse(postgres_url)
    table = sa.Table("copy_read", sa.MetaData(), sa.Column("k", sa.Text()), sa.Column("t", sa.Text()),
                     sa.Column("b", sa.Boolean()), sa.Column("n", sa.BigInteger()), sa.Column("f", sa.Float()),
                     sa.Column("ts", sa.DateTime(timezone=True)), sa.Column("d", sa.Date()))
    table.metadata.create_all(wh.engine)
    texts = [None, "", "NA", "null", 'Müller, "Jupp"', "zwei\nZeilen", " Leerzeichen ", "Straße 1;2", "n/a"]
    rows = [{"k": f"k{i:02d}", "t": t, "b": [True, False, None][i % 3], "n": [None, 0, -7, 2**62][i % 4],
             "f": [None, 1.5, -0.25][i % 3], "ts": None if i % 4 == 0 else pd.Timestamp("2026-03-29 01:30:00.123456", tz="UTC")
             + pd.Timedelta(hours=i), "d": None if i % 2 else pd.Timestamp("2026-02-28").date() + pd.Timedelta(days=i)}
            for i, t in enumerate(texts)]
    with wh.engine.begin() as conn:
        conn.execute(table.insert(), rows)
    sql = "SELECT k, t, b, n, f, ts, d FROM copy_read ORDER BY k"
    copied = wh.read_raw_sql(sql, chunk_rows=4, types={c.name: c.type for c in table.columns})
    driver = wh.read_raw_sql(sql)
    assert list(copied.columns) == list(driver.columns) and len(copied) == len(texts)
    for col in ("k", "t", "b", "n", "f", "d"):
        assert copied[col].tolist() == driver[col].tolist(), col
        assert [type(v) for v in copied[col]] == [type(v) for v in driver[col]], col
    assert copied["t"].tolist() == texts
    assert pd.to_datetime(copied["ts"], utc=True).equals(pd.to_datetime(driver["ts"], utc=True))
    with pytest.raises(ValueError, match="types name"):
        wh.read_raw_sql("SELECT k, t FROM copy_read", types={"k": sa.Text()})


def test_person_and_account_records_read_the_same_on_both_paths(records_wh, monkeypatch):
    """load_person_records and load_account_records give the same frame whether the records come
    through COPY (PostgreSQL) or the driver."""
    via_copy = (load_person_records(records_wh), load_account_records(records_wh))
    real = Warehouse.read_raw_sql
    monkeypatch.setattr(Warehouse, "read_raw_sql", lambda self, sql, chunk_rows=100_000, types=None: real(self, sql, chunk_rows))
    via_driver = (load_person_records(records_wh), load_account_records(records_wh))
    for a, b in zip(via_copy, via_driver):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.postgres
def test_a_select_read_through_copy_keeps_its_bound_values(postgres_url):
    """read_select writes the bound values into the statement for COPY: quotes and percent signs must
    select what the driver's bound parameters select."""
    wh = Warehouse(postgres_url)
    table = sa.Table("bound", sa.MetaData(), sa.Column("k", sa.Text()), sa.Column("n", sa.BigInteger()))
    table.metadata.create_all(wh.engine)
    keys = ["a", "b'%", "b'%x", "c%%", "d"]
    with wh.engine.begin() as conn:
        conn.execute(table.insert(), [{"k": k, "n": i} for i, k in enumerate(keys)])
    query = sa.select(table.c.k, table.c.n).where(table.c.k >= "b'%", table.c.k < "c%%z", table.c.k.like("%'%")) \
        .order_by(table.c.k)
    got = wh.read_select(query)
    assert got["k"].tolist() == ["b'%", "b'%x"] and got["n"].tolist() == [1, 2]
    assert got.equals(wh.read_frame(query))
