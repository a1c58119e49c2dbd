"""Entity resolution: engine pieces, the hard cases (Müller/Mueller, swapped names, moved addresses,
namesakes, same name different company), chaining protection, stable IDs, steward decisions, lineage."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.golden.build import resolve_accounts, resolve_contacts
from crm_pipelines.core.golden.explain import explain
from crm_pipelines.core.golden.matching.cluster import cluster
from crm_pipelines.core.golden.matching.engine import Columns, block, comparison_levels
from crm_pipelines.core.golden.matching.evaluate import load_truth, pairwise_scores
from crm_pipelines.core.golden.matching.ids import assign_ids
from crm_pipelines.core.golden.matching.settings import load_matching_config
from crm_pipelines.core.golden.review import build_review_queue, record_decision
from crm_pipelines.core.golden.staging import build_account_records, build_person_records
from crm_pipelines.core.golden.survivorship import survive
from crm_pipelines.core.platform.schema import ID_EVENTS, ID_REGISTRY, PERSON_CROSSWALK, raw_table
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions
from crm_pipelines.core.sources.mapping import load_mappings
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

CFG = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def loaded_warehouse(demo_landing, tmp_path_factory):
    """The demo landing zone loaded into a SQLite warehouse once; tests copy it."""
    root, _ = demo_landing
    folder = tmp_path_factory.mktemp("loaded")
    wh = Warehouse(f"sqlite:///{folder / 'warehouse.db'}")
    for source, mapping in load_mappings(DEFAULT_CONFIG_DIR).items():
        for p in landed_partitions(root, source):
            ingest_partition(mapping, p, root, wh, "load")
    wh.engine.dispose()
    return folder


@pytest.fixture
def wh(loaded_warehouse, tmp_path):
    dst = tmp_path / "wh"
    shutil.copytree(loaded_warehouse, dst)
    w = Warehouse(f"sqlite:///{dst / 'warehouse.db'}")
    yield w
    w.engine.dispose()


def add_raw(wh: Warehouse, source: str, rows: list[dict]) -> None:
    mapping = load_mappings(DEFAULT_CONFIG_DIR)[source]
    table = raw_table(source, mapping.entity)
    frame = pd.DataFrame(rows)
    frame["_partition"] = "2026-11-30"
    frame["_file"] = "test.json"
    frame["_record_no"] = range(1, len(rows) + 1)
    frame["_run_id"] = "test"
    frame["_loaded_at"] = pd.Timestamp(datetime.now(timezone.utc))
    for c in ("created_at", "updated_at", "occurred_at"):
        if c in frame:
            frame[c] = pd.to_datetime(frame[c], utc=True)
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, table, frame)


NOW = "2026-11-30T10:00:00Z"


def crm(rid, first, last, email, company, plz, city="Dresden", phone=None, **kw):
    return {"source_record_id": rid, "crm_contact_id": rid, "first_name": first, "last_name": last, "email": email,
            "company_name": company, "postal_code": plz, "city": city, "country": "DE", "phone": phone,
            "created_at": NOW, "updated_at": NOW, **kw}


def lead(rid, first, last, email, company, plz, city="Dresden", phone=None, **kw):
    return {"source_record_id": rid, "first_name": first, "last_name": last, "email": email, "company_name": company,
            "postal_code": plz, "city": city, "country": "DE", "phone": phone, "created_at": NOW, **kw}


def contacts_of(wh: Warehouse, *keys: str) -> list[str]:
    cw = wh.read_frame(sa.select(PERSON_CROSSWALK.c.record_key, PERSON_CROSSWALK.c.golden_id)
                       .where(PERSON_CROSSWALK.c.valid_to.is_(None)))
    m = dict(zip(cw["record_key"], cw["golden_id"]))
    return [m[k] for k in keys]


def accounts_of(wh: Warehouse, *keys: str) -> list[str]:
    from crm_pipelines.core.platform.schema import ACCOUNT_CROSSWALK

    cw = wh.read_frame(sa.select(ACCOUNT_CROSSWALK.c.record_key, ACCOUNT_CROSSWALK.c.golden_id)
                       .where(ACCOUNT_CROSSWALK.c.valid_to.is_(None)))
    m = dict(zip(cw["record_key"], cw["golden_id"]))
    return [m[k] for k in keys]


def run_golden(wh: Warehouse, run_id: str = "r1"):
    build_person_records(wh)
    build_account_records(wh)
    accounts = resolve_accounts(wh, CFG, run_id)
    contacts = resolve_contacts(wh, CFG, run_id)
    return accounts, contacts


# ----------------------------------------------------------------------------- engine pieces

def test_blocking_unions_rules_and_skips_oversized_blocks():
    from dataclasses import replace

    df = pd.DataFrame({"a": ["x", "x", "x", "y", "y", None], "b": ["1", "2", "1", "3", "3", "3"]})
    spec = replace(CFG.persons, blocking=(("a",), ("b",)), max_block_size=2)
    pairs = block(df, spec)
    got = sorted(zip(pairs.left.tolist(), pairs.right.tolist()))
    # block a=x has 3 records > 2: skipped; a=y -> (3,4); b=1 -> (0,2); b=3 has 3 records: skipped
    assert got == [(0, 2), (3, 4)]
    assert pairs.stats[0]["skipped_blocks"] == 1 and pairs.stats[1]["records_in_skipped_blocks"] == 3


@pytest.mark.parametrize("dtype", ["str", "object"])
def test_blocking_no_records_or_no_values_makes_no_pairs(dtype):
    from dataclasses import replace

    spec = replace(CFG.persons, blocking=(("a",), ("a", "b"), ("a|b",)))
    for df in (pd.DataFrame({"a": [], "b": []}, dtype=dtype), pd.DataFrame({"a": [None] * 3, "b": [None] * 3}, dtype=dtype)):
        pairs = block(df, spec)
        assert len(pairs) == 0 and pairs.left.dtype == np.int32 and [s["pairs"] for s in pairs.stats] == [0, 0, 0]


@pytest.mark.parametrize("pair_chunk,key_span", [(1, 2**62), (7, 30), (4_000_000, 2**62)])
def test_blocking_a_chunk_at_a_time_gives_every_pair_once_with_the_first_rule_that_made_it(monkeypatch, pair_chunk,
                                                                                           key_span):
    from dataclasses import replace
    from itertools import combinations

    from crm_pipelines.core.golden.matching import engine

    monkeypatch.setattr(engine, "PAIR_CHUNK", pair_chunk)
    monkeypatch.setattr(engine, "KEY_SPAN", key_span)  # 30: every combined key is made dense first
    rng = np.random.default_rng(3)
    n = 300

    def column(k, missing):
        values = rng.integers(0, k, n).astype(str).astype(object)
        values[rng.random(n) < missing] = None
        return values

    df = pd.DataFrame({"x": column(40, 0.1), "y": column(5, 0.2), "p1": column(60, 0.3), "p2": column(60, 0.5),
                       "z": column(25, 0.0)})
    rules = (("x",), ("p1|p2",), ("x", "y"), ("y", "z"), ("z",))
    spec = replace(CFG.persons, blocking=rules, max_block_size=12)
    pairs = block(df, spec)

    def values(i, col):
        return {v for alt in col.split("|") if isinstance(v := df.at[i, alt], str)}

    expected: dict[tuple[int, int], int] = {}
    for r, rule in enumerate(rules):
        blocks: dict[tuple, set[int]] = {}
        for i in range(n):
            keys = [()]
            for col in rule:
                keys = [k + (v,) for k in keys for v in sorted(values(i, col))]
            for k in keys:
                blocks.setdefault(k, set()).add(i)
        for members in blocks.values():
            if len(members) <= 12:
                for a, b in combinations(sorted(members), 2):
                    expected.setdefault((a, b), r)
    got = list(zip(pairs.left.tolist(), pairs.right.tolist()))
    assert got == sorted(expected) and len(got) > 100
    assert pairs.rule.tolist() == [expected[p] for p in got]
    # (x, y) pairs only records that (x) paired already, unless x's block was too large: here it adds none.
    assert set(pairs.rule.tolist()) == {0, 1, 3, 4}
    # A column no later rule reads is handed back after its last rule; taken out of the frame at once, the same
    # pairs result (a rule reading a column taken out would fail).
    handed: list[set[str]] = []

    def take_out(columns):
        handed.append(columns)
        for col in columns:
            del consumed[col]

    consumed = df.copy()
    again = block(consumed, spec, take_out)
    assert handed == [{"p1", "p2"}, {"x"}, {"y"}, {"z"}] and consumed.columns.empty
    assert np.array_equal(again.left, pairs.left) and np.array_equal(again.right, pairs.right)
    assert np.array_equal(again.rule, pairs.rule)

@pytest.mark.parametrize("entity", ["persons", "accounts"])
def test_levels_packed_one_code_a_pair_fit_the_same_model_as_the_levels_of_every_pair(entity):
    import dataclasses

    from crm_pipelines.core.golden.matching.engine import LevelCodes, estimate_u, fit

    spec = dataclasses.replace(getattr(CFG, entity), em_iterations=25)
    packing = LevelCodes(spec)
    assert packing.dtype == (np.uint16 if entity == "persons" else np.int32)
    rng = np.random.default_rng(3)
    n = 50_000
    # Matches agree at the top of most comparisons, the rest mostly disagree; "no information" (-1) everywhere.
    match = rng.random(n) < 0.2
    levels = {}
    for comp in spec.comparisons:
        lv = np.where(match, np.where(rng.random(n) < 0.8, comp.top_level, rng.integers(0, comp.top_level + 1, n)),
                      np.where(rng.random(n) < 0.9, 0, rng.integers(0, comp.top_level + 1, n)))
        levels[comp.name] = np.where(rng.random(n) < 0.15, -1, lv).astype(np.int8)
    codes = packing.pack(levels)
    assert codes.dtype == packing.dtype
    assert all(np.array_equal(v, levels[k]) for k, v in packing.unpack(codes).items())
    patterns, counts = packing.histogram(codes)
    assert counts.sum() == n and len(counts) == len(np.unique(codes))
    rows = np.stack([patterns[c.name] for c in spec.comparisons], axis=1).tolist()
    assert rows == sorted(rows)  # the order of rows of levels, as the EM over every pair sees its patterns
    df = pd.DataFrame({c: ["x"] * 10 for comp in spec.comparisons for c in comp.columns})
    u = estimate_u(df, spec, 100)
    every, packed = fit(levels, spec, u, {}, 10_000), fit(patterns, spec, u, {}, 10_000, counts=counts)
    assert every.iterations == packed.iterations > 1 and every.prior == packed.prior
    assert all(np.array_equal(a, b) for a, b in zip(every.m, packed.m))
    zero = dataclasses.replace(spec, em_iterations=0)
    assert all(np.array_equal(a, b) for a, b in zip(fit(levels, zero, u, {}, 10_000).m,
                                                     fit(patterns, zero, u, {}, 10_000, counts=counts).m))


def test_a_rule_with_a_block_limit_of_its_own_skips_frequent_names_only(tmp_path):
    from dataclasses import replace

    df = pd.DataFrame({"names": ["mueller-hans"] * 3 + ["kambs-giesela"] * 2, "plz": ["1", "1", "2", "3", "4"]})
    spec = replace(CFG.persons, blocking=(("names",), ("plz",)), max_block_size=400, block_limits=((("names",), 2),))
    pairs = block(df, spec)
    # Three Hans Müllers exceed the name rule's own limit of 2; the two Kambs do not; the PLZ rule keeps 400.
    assert sorted(zip(pairs.left.tolist(), pairs.right.tolist())) == [(0, 1), (3, 4)]
    assert pairs.stats[0]["skipped_blocks"] == 1 and pairs.stats[1]["skipped_blocks"] == 0

    text = (DEFAULT_CONFIG_DIR / "matching.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "matching.yaml"
    bad.write_text(text.replace("{columns: [name_kp_pair], max_block_size: 20}", "{columns: [name_kp_pair], max_blocks: 20}"),
                   encoding="utf-8")
    with pytest.raises(Exception, match=r"generic_persons\.blocking\[5\].*max_blocks"):
        load_matching_config(bad)
    assert dict(CFG.generic_persons.block_limits) == {("name_kp_pair",): 20}


def test_comparison_levels_detect_swapped_names_and_mailboxes():
    df = pd.DataFrame({
        "first_key": ["annegret", "kowalczyk", "hans"], "last_key": ["kowalczyk", "annegret", "mueller"],
        "email_norm": ["a.k@x.de", None, "hans.mueller@y.de"], "phone_e164": [None] * 3, "mobile_e164": [None] * 3,
        "org_key": ["beta", "beta", None], "postal_code": ["01067", "01069", None], "crm_contact_id": [None] * 3,
        "mailbox_is_name": [False, False, True],
    })
    levels = comparison_levels(df, np.array([0]), np.array([1]), CFG.persons, Columns(df, ("first_key", "last_key")))
    assert levels["first_name"][0] == 3 and levels["last_name"][0] == 3  # exact once swapped back
    assert levels["postal_code"][0] == 1 and levels["company"][0] == 3 and levels["email"][0] == -1


def _in_arrow(df: pd.DataFrame) -> pd.DataFrame:
    """The frame as the golden steps hold it: near-unique text as Arrow strings, the rest categoricals of them."""
    from crm_pipelines.core.golden.matching.engine import arrow_near_unique, in_arrow

    out = df.copy()
    return in_arrow(out, arrow_near_unique(out))


@pytest.mark.parametrize("entity", ["persons", "accounts"])
def test_columns_in_arrow_compare_as_python_strings_do(entity):
    """Every comparison kind (names swapped, e-mail with role and numbered mailboxes, phones across columns,
    legal forms, addresses, exact IDs) gives the same levels on Arrow columns as on Python strings."""
    rng = np.random.default_rng(11)
    n = 300
    pick = lambda values: [values[i] for i in rng.integers(0, len(values), n)]  # noqa: E731
    df = pd.DataFrame({
        "first_key": pick(["anna", "anne", "hans", "mueller", None]), "last_key": pick(["mueller", "muller", "anna", None]),
        "email_norm": pick(["a.m@x.de", "a.m2@x.de", "info@x.de", "anna.mueller@y.de", "anna.mueller@y-group.com", None]),
        "phone_e164": pick(["+4930123", "+4330123", None]), "mobile_e164": pick(["+4930123", "+49171", None]),
        "org_key": pick(["beta", "beta bau", None]), "postal_code": pick(["01067", "1067", "80331", None]),
        "crm_contact_id": [f"C{i}" if i % 3 else None for i in range(n)], "mailbox_is_name": pick([True, False]),
        "company_key": pick(["beta", "beta bau", "gamma"]), "legal_form": pick(["GmbH", "GmbH & Co. KG", "AG", None]),
        "city_key": pick(["dresden", "dresdn", None]), "street_full_key": pick(["hauptstr 1", "hauptstrasse 1", None]),
        "register_id": pick(["HRB 1|Dresden", None]), "vat_id": [f"DE{i}" if i % 2 else None for i in range(n)],
        "erp_customer_number": pick(["K1", None]), "domain": pick(["x.de", None]), "crm_company_id": pick(["CO1", None]),
    }, dtype=object).astype({"mailbox_is_name": bool})  # Python strings, as the warehouse reads give them
    spec = getattr(CFG, entity)
    left, right = np.triu_indices(n, 1)
    swap = ("first_key", "last_key") if entity == "persons" else ()
    plain = comparison_levels(df, left, right, spec, Columns(df, swap))
    arrow_df = _in_arrow(df)
    assert any(isinstance(arrow_df[c].dtype, pd.StringDtype) for c in arrow_df.columns)
    assert any(isinstance(arrow_df[c].dtype, pd.CategoricalDtype) for c in arrow_df.columns)
    arrow = comparison_levels(arrow_df, left, right, spec, Columns(arrow_df, swap))
    # Text pandas already holds as ``str`` (as derived columns come): the same near-unique and categorical columns.
    str_df = _in_arrow(df.astype({c: "str" for c in df.columns if c != "mailbox_is_name"}))
    assert {c: str(t) for c, t in str_df.dtypes.items()} == {c: str(t) for c, t in arrow_df.dtypes.items()}
    str_levels = comparison_levels(str_df, left, right, spec, Columns(str_df, swap))
    # Every text column as Arrow strings (a small first slice finds every column near-unique).
    all_arrow_df = df.astype({c: "string[pyarrow]" for c in df.columns if c != "mailbox_is_name"})
    all_arrow = comparison_levels(all_arrow_df, left, right, spec, Columns(all_arrow_df, swap))
    for name, levels in plain.items():
        assert np.array_equal(arrow[name], levels), name
        assert np.array_equal(all_arrow[name], levels), name
        assert np.array_equal(str_levels[name], levels), name
        assert len(np.unique(levels)) > 1, name  # a comparison that says something


def test_derived_values_in_arrow_are_those_of_the_python_functions():
    """The mail organisation and the national phone number computed over Arrow strings (no Python string per
    record) equal the Python functions' results, odd values included."""
    from crm_pipelines.core.golden.matching import engine as E

    emails = ["a@x.de", "b@x-group.com", "c@y.at", "d@holding", "e@.de", None, "f@a@b.ch", "noat", "", "g@x_gruppe.de",
              "h@sub.dom.de", "i@gruppe.de", "j@Group.de", "k@müller-gruppe.de"]
    arrow = E._mail_org_arrow(pd.Series(emails, dtype="str").array.__arrow_array__()).to_pylist()
    assert arrow == [E._mail_org(e) if e is not None else None for e in emails]
    phones = ["+4930123456", "+43662123", "+41123", "+1555123456", None, "+49", "+4912345", "+441234567", ""]
    arrow = E._national_number_arrow(pd.Series(phones, dtype="str").array.__arrow_array__()).to_pylist()
    assert arrow == [E._national_number(p) if p is not None else None for p in phones]
    # The same partition of records by code, whichever way the codes were made.
    frame = pd.DataFrame({"email_norm": emails}, dtype=object)
    python, in_arrow = Columns(frame), Columns(frame.astype({"email_norm": "str"}))
    a, b = python.derived("mail_org", "email_norm", E._mail_org, arrow=E._mail_org_arrow), \
        in_arrow.derived("mail_org", "email_norm", E._mail_org, arrow=E._mail_org_arrow)
    assert ((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all() and ((a < 0) == (b < 0)).all()
    assert python.values("mail_org(email_norm)")[np.arange(len(emails))].tolist() == \
        in_arrow.values("mail_org(email_norm)")[np.arange(len(emails))].tolist()


def test_an_address_counts_once_a_move_once_and_a_plz_with_its_town_once():
    from dataclasses import replace

    from crm_pipelines.core.golden.matching.settings import ComparisonSpec

    spec = replace(CFG.generic_persons, comparisons=(
        ComparisonSpec("address", "address", ("street_key", "house_number", "postal_code", "city_key")),), name_swap=None)
    df = pd.DataFrame({
        "street_key": ["hauptstrasse", "hauptstrasse", "ringweg", "hauptstrase", None, "hauptstrasse", "am markt", None],
        "house_number": ["5", "5", "2", "7", None, "5", "1", None],
        "postal_code": ["01067", "1067", "80331", "01067", "01067", None, "04109", None],
        "city_key": ["dresden", "dresden", "muenchen", "dresden", "dresden", None, "dresden", "leipzig"],
    })
    pairs = {(0, 1): 4,   # the same house, the PLZ's leading zero lost
             (0, 2): 0,   # moved: street, number, PLZ and town differ, and that is one disagreement
             (0, 3): 3,   # the same street (a typo) at the same PLZ, another house number
             (0, 4): 2,   # the same PLZ, no street on one side
             (0, 5): 4,   # no place on one side: the street and number alone
             (0, 6): 1,   # the same town under another PLZ
             (5, 7): -1}  # nothing to compare
    left, right = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    levels = comparison_levels(df, left, right, spec, Columns(df))["address"]
    assert dict(zip(pairs, levels.tolist())) == pairs


def test_a_surname_in_the_first_name_field_weighs_by_its_frequency_as_a_surname():
    from crm_pipelines.core.golden.matching.engine import term_frequencies

    df = pd.DataFrame({"first_key": ["lindenmeier", "eugenia", "eugenia", "eugenia", "hans"],
                       "last_key": ["eugenia", "lindenmeier", "lindenmeier", "lindenmeier", "meier"]})
    tf = term_frequencies(df, CFG.generic_persons)
    # "lindenmeier" is once a first name but three times in five a surname: the swapped pair's agreement is that
    # common (looked up as a first name only, it was "never seen" and worth 17 bits too many).
    assert tf["first_name"][0] == pytest.approx(0.6) and tf["last_name"][0] == pytest.approx(0.6)
    assert tf["first_name"][4] == pytest.approx(0.2) and tf["last_name"][4] == pytest.approx(0.2)


def test_the_same_company_says_less_at_a_large_employer_than_at_a_small_one():
    from dataclasses import replace

    from crm_pipelines.core.golden.matching.engine import FSModel, score, term_frequencies

    company = next(c for c in CFG.persons.comparisons if c.name == "company")
    assert company.term_frequency  # two "Thomas Müller" at a group with thousands of staff are often two people
    spec = replace(CFG.persons, comparisons=(company,), name_swap=None)
    df = pd.DataFrame({"org_key": ["grossfirma"] * 50 + ["kleinfirma"] * 2})
    levels = {"company": np.array([company.top_level, company.top_level], dtype=np.int8)}
    model = FSModel(["company"], [company.top_level + 1], [np.array([0.01, 0.02, 0.07, 0.9])],
                    [np.array([0.97, 0.02, 0.005, 0.005])], 0.001, term_frequencies(df, spec))
    weight, _prob = score(df, np.array([0, 50]), np.array([1, 51]), levels, model, spec)
    assert weight[1] - weight[0] == pytest.approx(np.log2(25), abs=1e-6)


def test_clustering_refuses_chains_that_a_compared_pair_contradicts():
    # A~B and B~C are strong, but A and C were compared and differ: C must not join A and B.
    left, right = np.array([0, 1, 0]), np.array([1, 2, 2])
    prob = np.array([0.999, 0.99, 0.0001])
    contradiction = np.array([False, False, True])
    res = cluster(3, left, right, prob, 0.95, contradiction, 50)
    assert res.labels[0] == res.labels[1] != res.labels[2]
    assert res.stats["vetoed"] == 1 and res.refused[0][3].startswith("contradicted")
    # A pair that merely lacks evidence is no contradiction: the chain closes.
    res = cluster(3, left, right, prob, 0.95, np.array([False, False, False]), 50)
    assert len(set(res.labels.tolist())) == 1


def test_steward_cannot_link_beats_a_shared_email_but_not_a_steward_same():
    res = cluster(3, np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([]), 0.95, np.array([], bool), 50,
                  must_link=[(1, 2, "steward: same")], cannot_link=[(0, 1)], auto_link=[(0, 1, "same email_norm")])
    assert res.labels[1] == res.labels[2] != res.labels[0]


def test_cluster_size_limit():
    left, right = np.array([0, 1, 2]), np.array([1, 2, 3])
    res = cluster(4, left, right, np.array([0.99, 0.99, 0.99]), 0.95, np.zeros(3, bool), 3)
    assert max(np.bincount(res.labels)) == 3 and res.stats["size_limited"] == 1



def test_merge_edges_keep_order_reason_and_probability_and_rings_hold_every_member():
    # Two chains that meet: the rings of members (used by the veto check) must hold all five records.
    left, right = np.array([0, 2, 1, 3]), np.array([1, 3, 2, 4])
    prob = np.array([0.99, 0.98, 0.97, 0.96])
    contradiction = np.array([False, False, False, False])
    res = cluster(6, left, right, prob, 0.95, contradiction, 50, must_link=[(4, 5, "steward: same")])
    assert list(res.merge_edges) == [(4, 5, 1.0, "steward: same"), (0, 1, 0.99, "match"), (2, 3, 0.98, "match"),
                                     (1, 2, 0.97, "match"), (3, 4, 0.96, "match")]
    assert res.merge_edges.reason.tolist() == ["steward: same"] + ["match"] * 4
    assert len(set(res.labels.tolist())) == 1
    # A record contradicting the far end of a merged cluster is found through the ring.
    left, right = np.array([0, 1, 2, 0]), np.array([1, 2, 3, 3])
    res = cluster(4, left, right, np.array([0.99, 0.98, 0.97, 0.0]), 0.95, np.array([False, False, False, True]), 50)
    assert res.labels[3] != res.labels[0] == res.labels[1] == res.labels[2] and res.stats["vetoed"] == 1


def test_must_links_join_each_record_to_the_first_with_its_address_in_record_order():
    from crm_pipelines.core.golden.matching.resolve import must_link_pairs

    df = pd.DataFrame({"email_norm": pd.array(["b@x.de", "a@x.de", None, "b@x.de", "a@x.de", "info@x.de",
                                               "info@x.de", "b@x.de"], dtype="string[pyarrow]")})
    shared = np.array([False, False, False, False, False, True, True, False])
    assert list(must_link_pairs(df, ("email_norm",), shared)) == [
        (0, 3, "same email_norm"), (1, 4, "same email_norm"), (0, 7, "same email_norm")]


def test_mailbox_checks_a_block_at_a_time_find_what_they_find_at_once(monkeypatch):
    from crm_pipelines.core.golden.matching import mailboxes

    email = pd.Series(["info@acme.de", "ellen.mueller@acme.de", "ellen.mueller2@acme.de", "k.mueller@web.de",
                       "k.mueller@web.de", None, "ellen.mueller3@acme.de", "vertrieb-2@beta.de", "x@y.de", "x@y.de"],
                      dtype=object)
    first = pd.Series(["anna", "ellen", "ellen", "karl", "kordula", None, "ellen", "bob", "max", "max"])
    last = pd.Series(["a", "mueller", "mueller", "mueller", "mueller", None, "mueller", "b", "y", "y"])
    left, right = np.array([1, 1, 2, 3, 8, 0, 2]), np.array([2, 6, 6, 4, 9, 1, 5])
    whole = (mailboxes.shared_mailboxes(email, first, last, ("info", "vertrieb"), 2),
             mailboxes.numbered_apart(email, left, right))
    assert whole[0].tolist() == [True, False, False, True, True, False, False, True, False, False]
    assert whole[1].tolist() == [True, True, True, False, False, False, False]
    monkeypatch.setattr(mailboxes, "CHUNK", 3)
    assert mailboxes.shared_mailboxes(email, first, last, ("info", "vertrieb"), 2).tolist() == whole[0].tolist()
    assert mailboxes.numbered_apart(email, left, right).tolist() == whole[1].tolist()


@pytest.mark.parametrize("names_as", ["object", "category"])
def test_an_address_is_shared_when_used_by_as_many_different_people_as_configured(names_as):
    from crm_pipelines.core.golden.matching.mailboxes import shared_mailboxes

    # team@: Karl, Kordula and (swapped) Müller Jana: three people; k.m@: Karl and Karl-Heinz (one person, and
    # Kordula: two); post@: Jana Müller and Jana Schmidt (a new surname: one person); solo@: one record.
    email = pd.Series(["team@a.de", "team@a.de", "team@a.de", "k.m@a.de", "k.m@a.de", "k.m@a.de", "post@b.de",
                       "post@b.de", "solo@c.de", "team@a.de"], dtype="str")
    first = pd.Series(["karl", "kordula", "mueller", "karl", "karlheinz", "kordula", "jana", "jana", "otto", None],
                      dtype=names_as)
    last = pd.Series(["mueller", "mueller", "jana", "mueller", "mueller", None, "mueller", "schmidt", "x", "y"],
                     dtype=names_as)
    # (Shared is a property of the address: its record without a first name too.)
    assert shared_mailboxes(email, first, last, (), 3).tolist() == [True] * 3 + [False] * 6 + [True]
    assert shared_mailboxes(email, first, last, (), 2).tolist() == [True] * 6 + [False] * 3 + [True]


def test_the_golden_steps_release_the_columns_nothing_more_reads_and_resolve_the_same(tmp_path, monkeypatch):
    from crm_pipelines.core.golden.matching import resolve as R
    from crm_pipelines.core.golden.matching.resolve import blocking_only_columns, columns_after_fit, resolve

    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    assert blocking_only_columns(cfg.persons) == {"name_kp_pair", "leitregion", "company_first_token", "last_kp",
                                                  "first_initial", "street", "company_domain", "first_kp"}
    df = pd.DataFrame({"email_norm": ["a@x.de", "a@x.de", "b@y.de", None], "first_key": ["anna", "anna", "bert", "bert"],
                       "last_key": ["roth", "roth", "berg", "berg"], "first_kp": ["06", "06", "17", "17"],
                       "last_kp": ["72", "72", "17", "17"], "leitregion": ["10", "10", "20", "20"],
                       "name_kp_pair": ["06|72", "06|72", "17|17", "17|17"]})
    from crm_pipelines.core.golden.build import _spec_columns

    for col in _spec_columns(cfg.persons) - set(df.columns):
        df[col] = pd.Series([None] * 4, dtype=object)
    df["mailbox_is_name"] = False
    kept = resolve(df.copy(), cfg.persons)
    consumed = df.copy()
    # What the comparisons see: every column but the blocking-only ones (the shared-mailbox flag added).
    seen = []
    real = R._level_codes_in_chunks
    monkeypatch.setattr(R, "_level_codes_in_chunks", lambda frame, *a: seen.append(set(frame.columns)) or real(frame, *a))
    dropped = resolve(consumed, cfg.persons, release_columns=True)
    assert seen == [set(df.columns) - blocking_only_columns(cfg.persons) | {"email_shared"}]
    assert {"email_norm", "first_key", "last_key", "email_local", "mailbox_is_name"} <= seen[0]
    # Once the model is fitted only the e-mail is read (must-link, numbered mailboxes).
    assert set(consumed.columns) == columns_after_fit(cfg.persons) == {"email_norm"} and len(consumed) == 4
    assert columns_after_fit(cfg.accounts) == set()
    assert kept.labels.tolist() == dropped.labels.tolist() and len(kept.pairs) == len(dropped.pairs) > 0
    # What the write keeps of the pairs: those of merges and review pairs, with the same evidence.
    from crm_pipelines.core.golden.build import _evidence, _evidence_only, _pair_index

    slim = _evidence_only(kept)
    a, b = kept.clusters.merge_edges.a, kept.clusters.merge_edges.b
    assert len(a) and len(slim.pairs) <= len(kept.pairs) <= kept.stats["candidate_pairs"]
    assert _evidence(slim, cfg.persons, _pair_index(slim, a, b)) == _evidence(kept, cfg.persons, _pair_index(kept, a, b))
    assert (_pair_index(slim, a, b) >= 0).tolist() == (_pair_index(kept, a, b) >= 0).tolist()


def test_keeping_only_the_pairs_clustering_needs_clusters_as_keeping_every_pair(monkeypatch):
    from crm_pipelines.core.golden.build import _spec_columns
    from crm_pipelines.core.golden.matching import resolve as R

    rng = np.random.default_rng(5)
    n = 600
    firsts, lasts = ["anna", "bert", "carla", "dieter", "emma"], ["mueller", "schmidt", "meier", "roth"]
    person = rng.integers(0, 250, n)  # about 2.4 records a person, some namesakes across people
    first = np.array(firsts)[person % 5].astype(object)
    last = np.array(lasts)[(person // 5) % 4].astype(object)
    typo = rng.random(n) < 0.2
    first[typo] = [f[:-1] + "x" for f in first[typo]]
    email = np.array([f"p{p}@firma{p % 7}.de" for p in person], dtype=object)
    email[rng.random(n) < 0.3] = None
    email[rng.random(n) < 0.05] = "info@firma1.de"
    df = pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in _spec_columns(CFG.persons)})
    df["first_key"], df["last_key"], df["email_norm"] = first, last, email
    df["email_local"] = [e.split("@")[0] if e else None for e in email]
    df["first_kp"], df["last_kp"] = [f[:2] for f in first], [x[:2] for x in last]
    df["name_kp_pair"] = [f"{f[:2]}|{x[:2]}" for f, x in zip(first, last)]
    df["leitregion"] = (person % 3).astype(str)
    # Two people share a phone (a switchboard): different names on one number contradict.
    df["phone_e164"] = np.where(rng.random(n) < 0.7, [f"+4930{p // 2:06d}" for p in person], None)
    df["mailbox_is_name"] = False
    # A steward joined Zoe Wagner and Max Koch; Max Koch's second record matches him, and it contradicts her:
    # the veto that keeps it out is a kept pair.
    extra = pd.DataFrame([{"first_key": "zoe", "last_key": "wagner", "email_norm": "zoe.wagner@alpha.de",
                           "phone_e164": "+4989123456"},
                          {"first_key": "maximilian", "last_key": "koch", "email_norm": "max.koch@beta.de",
                           "phone_e164": "+4989123456"},
                          {"first_key": "maximilian", "last_key": "koch", "email_norm": "m.koch@gamma.de",
                           "phone_e164": "+4989123456"}])
    df = pd.concat([df, extra], ignore_index=True)
    df["mailbox_is_name"] = df["mailbox_is_name"].fillna(False).astype(bool)
    steward = [(n, n + 1, "steward: same")]
    from dataclasses import replace

    spec = replace(CFG.persons, contradiction_threshold=0.3)  # more contradictions, more vetoes to get right
    default = R.resolve(df.copy(), spec, must_link=steward)
    monkeypatch.setattr(R, "_pairs_to_keep", lambda n, pairs, *a, **k: np.arange(len(pairs)))
    every = R.resolve(df.copy(), spec, must_link=steward)
    assert default.labels.tolist() == every.labels.tolist()
    assert list(default.clusters.merge_edges) == list(every.clusters.merge_edges)
    assert default.review[["a", "b"]].values.tolist() == every.review[["a", "b"]].values.tolist()
    assert default.stats["vetoed"] == every.stats["vetoed"]
    assert len(default.pairs) < len(every.pairs) == default.stats["candidate_pairs"]


def test_the_contradictions_kept_are_those_within_what_may_merge():
    from crm_pipelines.core.golden.matching.engine import CandidatePairs
    from crm_pipelines.core.golden.matching.resolve import _pairs_to_keep

    #            0      1      2      3      4      5      6
    left = np.array([0, 0, 0, 1, 3, 5, 7])
    right = np.array([1, 2, 3, 2, 4, 6, 8])
    reviewable = np.array([1, 0, 0, 1, 0, 0, 0], bool)     # 0~1, 1~2 may merge
    contradiction = np.array([0, 1, 1, 0, 1, 1, 1], bool)  # 0/2 within, 0/3 across, 3/4 and 7/8 outside
    links = [(np.array([5]), np.array([6]), "same email_norm")]  # 5 and 6 linked: their pair (a contradiction too)
    keep = _pairs_to_keep(9, CandidatePairs(left, right, np.zeros(7, np.int16)), reviewable, contradiction, links,
                          [(3, 4, "steward: same")])
    # 0/2 is within the component of 0~1~2; 3/4 within the steward's; 5/6 is a link; 0/3 and 7/8 change nothing.
    assert keep.tolist() == [0, 1, 3, 4, 5]

# ----------------------------------------------------------------------------- stable IDs

def test_ids_survive_merge_older_wins_and_split_larger_part_keeps():
    keys = np.array(["a", "b", "c", "d", "e"])
    first = assign_ids(keys, np.array([0, 0, 1, 2, 2]), {}, "GC", 1)
    prev = dict(zip(keys, [first.cluster_ids[l] for l in [0, 0, 1, 2, 2]]))
    assert first.cluster_ids == ["GC-00000001", "GC-00000002", "GC-00000003"]
    same = assign_ids(keys, np.array([2, 2, 0, 1, 1]), prev, "GC", first.next_seq)  # labels renumbered, same groups
    assert same.cluster_ids == ["GC-00000002", "GC-00000003", "GC-00000001"] and same.events == []
    merged = assign_ids(keys, np.array([0, 0, 0, 1, 1]), prev, "GC", first.next_seq)  # {a,b} + {c}
    assert merged.cluster_ids[0] == "GC-00000001"
    assert {"event": "merged", "golden_id": "GC-00000002", "into": "GC-00000001"} in merged.events
    split = assign_ids(keys, np.array([0, 0, 1, 2, 3]), prev, "GC", first.next_seq)  # {d,e} -> {d} + {e}
    assert split.cluster_ids[:3] == ["GC-00000001", "GC-00000002", "GC-00000003"]
    assert split.cluster_ids[3] == "GC-00000004" or split.cluster_ids[2] == "GC-00000004"
    assert any(e["event"] == "split" and e["golden_id"] == "GC-00000003" for e in split.events)


def test_survivorship_rules_and_lineage():
    records = pd.DataFrame({
        "record_key": ["crm:1", "web:1", "web:2"], "source": ["crm_contacts", "web_form_leads", "web_form_leads"],
        "record_ts": pd.to_datetime(["2026-01-01", "2026-11-01", "2026-11-02"], utc=True),
        "first_name": ["Jörg", "Joerg", "Jörg"], "phone": ["+491", "+492", None], "email_norm": ["a@x.de", "b@x.de", "b@x.de"],
    })
    from crm_pipelines.core.golden.matching.settings import SurvivorshipSpec

    spec = SurvivorshipSpec(("crm_contacts", "web_form_leads"), "source_priority", {"phone": "most_recent", "email_norm": "most_frequent"})
    golden, lineage = survive(records, np.array([0, 0, 0]), ["first_name", "phone", "email_norm"], spec)
    assert golden.loc[0].tolist() == ["Jörg", "+492", "b@x.de"]
    got = {(r.field, r.record_key, r.rule) for r in lineage.itertuples()}
    assert got == {("first_name", "crm:1", "source_priority"), ("phone", "web:1", "most_recent"),
                   ("email_norm", "web:2", "most_frequent")}


def test_an_address_group_comes_from_one_record_never_stitched():
    # The CRM knows a Swiss postcode but no country; a newsletter sign-up says DE and no postcode.
    # Field by field that would make "9000 St. Gallen, DE", an address that exists nowhere.
    records = pd.DataFrame({
        "record_key": ["crm:1", "nl:1"], "source": ["crm_contacts", "newsletter_signups"],
        "record_ts": pd.to_datetime(["2026-11-02", "2026-11-01"], utc=True),
        "postal_code": ["9000", None], "city": ["St. Gallen", None], "country": [None, "DE"],
    })
    from crm_pipelines.core.golden.matching.settings import SurvivorshipSpec

    fields = ["postal_code", "city", "country"]
    loose = SurvivorshipSpec(("crm_contacts", "newsletter_signups"), "source_priority", {"postal_code": "most_recent"})
    assert survive(records, np.array([0, 0]), fields, loose)[0].loc[0].tolist() == ["9000", "St. Gallen", "DE"]
    grouped = SurvivorshipSpec(("crm_contacts", "newsletter_signups"), "source_priority", {"postal_code": "most_recent"},
                               {"address": ("postal_code", "city", "country")})
    golden, lineage = survive(records, np.array([0, 0]), fields, grouped)
    assert golden.loc[0].tolist() == ["9000", "St. Gallen", None]
    assert {(r.field, r.record_key, r.rule) for r in lineage.itertuples()} == {
        ("postal_code", "crm:1", "most_recent"), ("city", "crm:1", "with postal_code")}


# ----------------------------------------------------------------------------- the hard cases, end to end

def test_hard_person_cases(wh):
    add_raw(wh, "crm_contacts", [
        crm("T-1", "Jörg", "Müller", "j.mueller@testfirma-alpha.de", "Testfirma Alpha GmbH", "01067", phone="0351 4711-23"),
        crm("T-2", "Annegret", "Kowalczyk", "a.kowalczyk@testfirma-beta.de", "Testfirma Beta GmbH", "04109", "Leipzig",
            phone="0341 998877"),
        crm("T-3", "Hubertus", "Brandt", "h.brandt@testfirma-gamma.de", "Testfirma Gamma AG", "80331", "München",
            phone="089 123456-7"),
        crm("T-4", "Thomas", "Müller", "thomas.mueller@alpha-werke.de", "Alpha Werke GmbH", "80331", "München"),
    ])
    add_raw(wh, "web_form_leads", [
        lead("WT-1", "Joerg", "Mueller", "J.Mueller@Testfirma-Alpha.de", "Testfirma Alpha GmbH", "01067"),
        lead("WT-3", "Hubertus", "Brandt", "h.brandt@testfirma-gamma.de", "Testfirma Gamma AG", "10115", "Berlin"),
        lead("WT-4", "Thomas", "Müller", "thomas.mueller@omega-bau.de", "Omega Bau AG", "20095", "Hamburg"),
    ])
    add_raw(wh, "trade_fair_leads", [
        lead("FT-1", "Jörg", "Mueller", "joerg.mueller@gmx.de", "Testfirma Alpha GmbH", "01067", phone="+49 351 471123"),
        lead("FT-2", "Kowalczyk", "Annegret", None, "Testfirma Beta", "04109", "Leipzig", phone="0341/998877"),
        lead("FT-3", "Hubertus", "Brandt", None, "Testfirma Gamma AG", "10115", "Berlin", phone="+49 89 1234567"),
    ])
    run_golden(wh)
    a, b, c = contacts_of(wh, "crm_contacts:T-1", "web_form_leads:WT-1", "trade_fair_leads:FT-1")
    assert a == b == c, "Müller / Mueller with a private address and the same phone is one person"
    a, b = contacts_of(wh, "crm_contacts:T-2", "trade_fair_leads:FT-2")
    assert a == b, "swapped first and last name"
    a, b, c = contacts_of(wh, "crm_contacts:T-3", "web_form_leads:WT-3", "trade_fair_leads:FT-3")
    assert a == b == c, "moved from München to Berlin"
    a, b = contacts_of(wh, "crm_contacts:T-4", "web_form_leads:WT-4")
    assert a != b, "two Thomas Müller at two companies are two people"


def test_colleagues_sharing_a_role_or_shared_mailbox_stay_two_contacts(wh):
    from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS

    add_raw(wh, "crm_contacts", [
        # Two buyers at one company, both writing from its info@ address (a role mailbox by name) ...
        crm("S-1", "Birgit", "Lehmann", "info@stanzwerk-delta.de", "Stanzwerk Delta GmbH", "09111", "Chemnitz"),
        crm("S-2", "Oliver", "Krause", "info@stanzwerk-delta.de", "Stanzwerk Delta GmbH", "09111", "Chemnitz"),
        # ... two more sharing a personal-looking address the data shows to be shared ...
        crm("S-3", "Petra", "Voigt", "technik@drehteile-epsilon.de", "Drehteile Epsilon KG", "08056", "Zwickau"),
        crm("S-4", "Marcel", "Hofmann", "technik@drehteile-epsilon.de", "Drehteile Epsilon KG", "08056", "Zwickau"),
    ])
    add_raw(wh, "web_form_leads", [
        # ... and the same person as S-1 again, from info@ too: still one person by name and company.
        lead("WS-1", "Birgit", "Lehmann", "info@stanzwerk-delta.de", "Stanzwerk Delta GmbH", "09111", "Chemnitz"),
        # One person whose surname changed (a marriage) at the same address: still one person.
        lead("WS-5", "Sandra", "Richter", "s.richter@guss-zeta.de", "Gießerei Zeta GmbH", "02625", "Bautzen"),
        lead("WS-6", "Sandra", "Wolf", "s.richter@guss-zeta.de", "Gießerei Zeta GmbH", "02625", "Bautzen"),
    ])
    run_golden(wh)
    a, b, c = contacts_of(wh, "crm_contacts:S-1", "crm_contacts:S-2", "web_form_leads:WS-1")
    assert a != b, "two colleagues with the same info@ address are two contacts"
    assert a == c, "the same person at the role mailbox, by name and company, is still one"
    a, b = contacts_of(wh, "crm_contacts:S-3", "crm_contacts:S-4")
    assert a != b, "an address used by two clearly different people is shared"
    a, b = contacts_of(wh, "web_form_leads:WS-5", "web_form_leads:WS-6")
    assert a == b, "a new surname alone does not make a second person"
    # The address stays with the older golden contact only (golden e-mails are unique, as the CRM's are).
    g = GOLDEN_CONTACTS
    holders = wh.read_frame(sa.select(g.c.golden_id).where(g.c.email == "info@stanzwerk-delta.de"))["golden_id"]
    assert holders.tolist() == [min(a for a in contacts_of(wh, "crm_contacts:S-1", "crm_contacts:S-2"))]


def test_namesakes_whose_company_numbered_their_mailboxes_stay_two_contacts(wh):
    add_raw(wh, "crm_contacts", [
        # Two Ellen Müllers at one company: its IT gave the second the mailbox ellen.mueller2@.
        crm("N-1", "Ellen", "Müller", "ellen.mueller@ultraplan-foerdertechnik.de", "Ultraplan Fördertechnik GmbH",
            "47051", "Duisburg"),
        crm("N-2", "Ellen", "Müller", "ellen.mueller2@ultraplan-foerdertechnik.de", "Ultraplan Fördertechnik GmbH",
            "47051", "Duisburg"),
    ])
    add_raw(wh, "web_form_leads", [
        # Each of them again, with her own mailbox: one contact each.
        lead("WN-1", "Ellen", "Mueller", "ellen.mueller@ultraplan-foerdertechnik.de", "Ultraplan Fördertechnik GmbH",
             "47051", "Duisburg"),
        lead("WN-2", "Ellen", "Müller", "ellen.mueller2@ultraplan-foerdertechnik.de", "Ultraplan Fördertechnik",
             "47051", "Duisburg"),
        # The same person writing from a private address as well is still one person.
        lead("WN-3", "Ellen", "Müller", "ellen.mueller@web.de", "Ultraplan Fördertechnik GmbH", "47051", "Duisburg"),
    ])
    run_golden(wh)
    one, two, one_again, two_again = contacts_of(wh, "crm_contacts:N-1", "crm_contacts:N-2", "web_form_leads:WN-1",
                                                 "web_form_leads:WN-2")
    assert one != two, "mailboxes numbered apart at one company are two people"
    assert (one, two) == (one_again, two_again)


def test_the_same_mailbox_at_the_companys_renamed_or_foreign_domain_is_the_same_person(wh):
    add_raw(wh, "crm_contacts", [
        crm("G-1", "Miroslav", "Mielcarek", "miroslav.mielcarek@thies-trapp.de", "Thies Trapp GmbH", "34117", "Kassel"),
        crm("G-2", "Arne", "Kowalczyk", "arne.kowalczyk@vogt-stahlbau.at", "Vogt Stahlbau GmbH", "5020", "Salzburg"),
    ])
    add_raw(wh, "web_form_leads", [
        # The company moved its mail to a group domain; the form has no address.
        lead("WG-1", "Miroslav", "Mielcarek", "miroslav.mielcarek@thies-trapp-group.com", "Thies Trapp Group", None,
             None),
        lead("WG-2", "Arne", "Kowalczyk", "arne.kowalczyk@vogt-stahlbau-group.com", "Vogt Stahlbau", None, None),
    ])
    run_golden(wh)
    a, b = contacts_of(wh, "crm_contacts:G-1", "web_form_leads:WG-1")
    assert a == b, "the same mailbox at the company's group domain is the same person"
    a, b = contacts_of(wh, "crm_contacts:G-2", "web_form_leads:WG-2")
    assert a == b, "x.at and x-group.com are one organisation's domains"


def test_account_cases_same_name_different_company_and_gmbh_vs_gmbh_co_kg(wh):
    add_raw(wh, "crm_accounts", [
        {"source_record_id": "CA-1", "crm_company_id": "CA-1", "company_name": "Zettelmann Hydraulik GmbH & Co. KG",
         "website": "zettelmann-hydraulik.de", "street": "Gerberstraße 5", "postal_code": "04109", "city": "Leipzig",
         "country": "DE", "created_at": NOW, "updated_at": NOW},
        {"source_record_id": "CA-2", "crm_company_id": "CA-2", "company_name": "Testmann Antriebstechnik GmbH",
         "website": "testmann-antriebe.de", "postal_code": "80331", "city": "München", "country": "DE",
         "created_at": NOW, "updated_at": NOW},
    ])
    add_raw(wh, "erp_customers", [
        {"source_record_id": "0009990001", "erp_customer_number": "0009990001", "company_name": "Testmann Antriebstechnik GmbH",
         "street": "Am Markt 1", "postal_code": "01067", "city": "Dresden", "country": "DE", "email": "info@testmann-dresden.de"},
    ])
    add_raw(wh, "web_form_leads", [
        lead("WZ-1", "Erika", "Zettel", "e.zettel@zettelmann-hydraulik.de", "Zettelmann Hydraulik GmbH", "04109", "Leipzig"),
    ])
    run_golden(wh)
    crm_z, lead_z = accounts_of(wh, "crm_accounts:CA-1", "mention:web_form_leads:WZ-1")
    assert crm_z == lead_z, "the web form's 'GmbH' joins the CRM's 'GmbH & Co. KG'"
    munich, dresden = accounts_of(wh, "crm_accounts:CA-2", "erp_customers:0009990001")
    assert munich != dresden, "same name, other town, other domain: two companies"
    contact = wh.read_frame("SELECT account_id FROM golden.contacts WHERE email = 'e.zettel@zettelmann-hydraulik.de'")
    assert contact["account_id"].tolist() == [crm_z], "the lead's contact belongs to the existing CRM account"


def test_demo_quality_against_ground_truth(wh, demo_landing):
    run_golden(wh)
    truth = load_truth(demo_landing[0] / "_ground_truth" / "records.csv").set_index("record_key")
    cw = wh.read_frame("SELECT record_key, golden_id FROM golden.person_crosswalk WHERE valid_to IS NULL").set_index("record_key")
    persons = pairwise_scores(cw["golden_id"], truth["person_id"])
    aw = wh.read_frame("SELECT record_key, golden_id FROM golden.account_crosswalk WHERE valid_to IS NULL")
    aw["record_key"] = aw["record_key"].str.replace("^mention:", "", regex=True)
    accounts = pairwise_scores(aw.set_index("record_key")["golden_id"], truth["account_id"])
    assert persons.f1 >= 0.97 and accounts.f1 >= 0.97, (persons, accounts)


# ----------------------------------------------------------------------------- IDs, decisions, lineage end to end

def test_ids_are_stable_and_steward_decisions_split_and_merge(wh):
    add_raw(wh, "crm_contacts", [crm("S-1", "Renate", "Quast", "r.quast@stabil-gmbh.de", "Stabil GmbH", "01067", phone="0351 5550-1")])
    add_raw(wh, "web_form_leads", [lead("SW-1", "Renate", "Quast", "r.quast@stabil-gmbh.de", "Stabil GmbH", "01067")])
    add_raw(wh, "trade_fair_leads", [lead("SF-1", "Renate", "Quast", None, "Stabil GmbH", "01067", phone="0351 5550-1")])
    add_raw(wh, "newsletter_signups", [{"source_record_id": "SN-1", "email": "quast.privat@posteo.de", "last_name": "Quast",
                                        "channel": "email", "status": "granted", "occurred_at": NOW}])
    run_golden(wh, "r1")
    first = contacts_of(wh, "crm_contacts:S-1", "web_form_leads:SW-1", "trade_fair_leads:SF-1", "newsletter_signups:SN-1")
    assert first[0] == first[1] == first[2] != first[3]
    before = wh.read_frame("SELECT record_key, golden_id FROM golden.person_crosswalk WHERE valid_to IS NULL")

    _, contacts = run_golden(wh, "r2")
    after = wh.read_frame("SELECT record_key, golden_id FROM golden.person_crosswalk WHERE valid_to IS NULL")
    assert before.sort_values("record_key").reset_index(drop=True).equals(after.sort_values("record_key").reset_index(drop=True))
    assert contacts.stats["crosswalk_changes"] == 0

    # Split: the steward says the trade-fair scan is someone else. The larger part keeps the ID.
    record_decision(wh, "persons", "crm_contacts:S-1", "trade_fair_leads:SF-1", "different", "steward@test")
    record_decision(wh, "persons", "web_form_leads:SW-1", "trade_fair_leads:SF-1", "different", "steward@test")
    run_golden(wh, "r3")
    split = contacts_of(wh, "crm_contacts:S-1", "web_form_leads:SW-1", "trade_fair_leads:SF-1")
    assert split[0] == split[1] == first[0] and split[2] != first[0]
    closed = wh.read_frame("SELECT record_key FROM golden.person_crosswalk WHERE valid_to IS NOT NULL")
    assert "trade_fair_leads:SF-1" in set(closed["record_key"])  # history kept

    # Merge: the private newsletter sign-up is the same person. The older ID wins.
    record_decision(wh, "persons", "crm_contacts:S-1", "newsletter_signups:SN-1", "same", "steward@test")
    run_golden(wh, "r4")
    merged = contacts_of(wh, "crm_contacts:S-1", "newsletter_signups:SN-1")
    older = min(first[0], first[3])
    assert merged == [older, older]
    registry = wh.read_frame(sa.select(ID_REGISTRY).where(ID_REGISTRY.c.golden_id == max(first[0], first[3])))
    assert registry["status"].tolist() == ["merged"] and registry["merged_into"].tolist() == [older]
    events = wh.read_frame(sa.select(ID_EVENTS.c.event, ID_EVENTS.c.run_id))
    assert {("split", "r3"), ("merged", "r4")} <= set(zip(events["event"], events["run_id"]))
    # Decided pairs leave the review queue and survive re-runs.
    queue = build_review_queue(wh)
    pairs = {tuple(sorted(p)) for p in zip(queue["record_a"], queue["record_b"])}
    assert tuple(sorted(("crm_contacts:S-1", "newsletter_signups:SN-1"))) not in pairs
    run_golden(wh, "r5")
    assert contacts_of(wh, "newsletter_signups:SN-1") == [older]


def test_steward_decisions_on_accounts_reach_the_signatures_of_their_records(wh):
    # Accounts are resolved over distinct signatures; a decision names records, so it must reach them.
    add_raw(wh, "crm_accounts", [
        {"source_record_id": "CD-1", "crm_company_id": "CD-1", "company_name": "Dachsberg Fördertechnik GmbH",
         "website": "dachsberg-foerdertechnik.de", "postal_code": "04109", "city": "Leipzig", "country": "DE",
         "created_at": NOW, "updated_at": NOW},
        {"source_record_id": "CD-2", "crm_company_id": "CD-2", "company_name": "Zwirnhuber Logistik AG",
         "website": "zwirnhuber.de", "postal_code": "80331", "city": "München", "country": "DE",
         "created_at": NOW, "updated_at": NOW},
    ])
    add_raw(wh, "web_form_leads", [
        lead("WD-1", "Olaf", "Dachs", "o.dachs@dachsberg-foerdertechnik.de", "Dachsberg Fördertechnik GmbH", "04109",
             "Leipzig"),
    ])
    run_golden(wh, "a1")
    crm_d, lead_d, other = accounts_of(wh, "crm_accounts:CD-1", "mention:web_form_leads:WD-1", "crm_accounts:CD-2")
    assert crm_d == lead_d != other

    record_decision(wh, "accounts", "crm_accounts:CD-1", "mention:web_form_leads:WD-1", "different", "steward@test")
    record_decision(wh, "accounts", "crm_accounts:CD-1", "crm_accounts:CD-2", "same", "steward@test")
    record_decision(wh, "accounts", "crm_accounts:CD-1", "crm_accounts:GONE", "same", "steward@test")
    accounts, _ = run_golden(wh, "a2")
    crm_d, lead_d, other = accounts_of(wh, "crm_accounts:CD-1", "mention:web_form_leads:WD-1", "crm_accounts:CD-2")
    assert crm_d == other != lead_d
    assert accounts.stats["decisions_applied"] == 2 and accounts.stats["decisions_unknown_records"] == 1


def test_explanation_and_lineage(wh):
    _, contacts = run_golden(wh)
    multi = contacts.examples.iloc[0]
    ex = explain(wh, "persons", multi["golden_id"])
    assert len(ex["records"]) == multi["record_count"] and ex["merges"]
    assert all("@" not in (r["email_norm"] or "") or "***" in r["email_norm"] for r in ex["records"])
    evidence = ex["merges"][0]["evidence"]
    assert evidence and all(isinstance(v[1], float) for v in evidence.values())
    lineage = wh.read_frame(f"SELECT * FROM golden.contact_lineage WHERE golden_id = '{multi['golden_id']}'")
    fields = {f for row in lineage["fields"] for f in row.split(",")}
    assert {"first_name", "last_name"} <= fields
    assert set(lineage["record_key"]) <= {r["record_key"] for r in ex["records"]}
    assert json.dumps(ex)  # serialisable for the CLI


def test_an_austrian_number_read_as_german_and_a_padded_plz_are_still_the_same_contact(wh):
    add_raw(wh, "crm_contacts", [
        # Entered without a country: the phone was read as German (+49 662 ...), the PLZ is Salzburg's 5020.
        crm("A-1", "Miodrag", "Gute", "miodrag.gute80@gmx.at", "Euroline Handels GmbH", "5020", "Salzburg",
            phone="0662 2890699943", country=None),
        crm("A-2", "Miodrag", "Gute", None, "Brauerei Gute KG", "96047", "Bamberg", phone="0951 778899"),
    ])
    add_raw(wh, "trade_fair_leads", [
        # The fair's scanner: the number with its country, the PLZ padded to five digits for a German form.
        lead("AF-1", "Miodrag", "Gute", None, "Euroline Handels GmbH", "05020", "Salzburg", phone="+43 662 2890699943"),
    ])
    run_golden(wh)
    a, b, c = contacts_of(wh, "crm_contacts:A-1", "trade_fair_leads:AF-1", "crm_contacts:A-2")
    assert a == b, "the same national number and PLZ, once with and once without the country"
    assert a != c, "a namesake elsewhere stays apart"


def _company_records(rng: np.random.Generator, n: int) -> list[dict]:
    """Every company as its ERP customer, its CRM company and a contact's mention of it (name, town, website)."""
    rows = []
    for i in range(n):
        plz = f"{10000 + int(rng.integers(0, 80)) * 1000:05d}"
        base = {"company_key": f"firma {i}", "legal_form": "GmbH", "postal_code": plz, "city_key": f"stadt{plz}"}
        street, domain = f"weg{i}", f"firma{i}.de"
        rows.append({**base, "street_full_key": street, "phone_e164": f"+49{i:08d}", "vat_id": f"DE{i:09d}",
                     "erp_customer_number": f"K{i}"})
        rows.append({**base, "street_full_key": street, "domain": domain, "crm_company_id": f"C{i}",
                     "erp_customer_number": f"K{i}" if i % 3 else None})
        rows.append({**base, "domain": domain})
    return rows


@pytest.mark.parametrize("conflicts", [True, False])
def test_two_companies_of_one_name_in_one_town_stay_apart_when_website_and_street_differ(conflicts):
    """A conflicts group ([domain, street]) makes a pair that differs in both a contradiction: a mention naming only
    the name and town no longer chains the two namesakes together (without it, it does); an identifier both
    records share (an exact comparison agreeing) outweighs it."""
    from dataclasses import replace

    from crm_pipelines.core.golden.matching.resolve import resolve

    rng = np.random.default_rng(7)
    rows = _company_records(rng, 400)
    twin = {"company_key": "binner", "legal_form": "GmbH", "postal_code": "93047", "city_key": "regensburg"}
    first = len(rows)
    rows += [{**twin, "street_full_key": "sagerplatz87", "phone_e164": "+4994146121810", "erp_customer_number": "K9001"},
             {**twin, "street_full_key": "sagerplatz87", "domain": "binner53.de", "crm_company_id": "C9001"},
             {**twin, "street_full_key": "kitzmannplatz55", "domain": "binner62.de", "crm_company_id": "C9002"},
             {**twin, "domain": "binner62.de"},  # a contact's mention of the second
             {**twin},                             # a mention with the name and the town only
             # One CRM company that moved in town and took its group's domain: its ID outweighs site and website.
             {"company_key": "klapp", "legal_form": "GmbH", "postal_code": "13353", "city_key": "berlin",
              "street_full_key": "gasse148", "domain": "klapp9.de", "crm_company_id": "C9003"},
             {"company_key": "klapp", "legal_form": "GmbH", "postal_code": "13353", "city_key": "berlin",
              "street_full_key": "platz148", "domain": "klapp9-group.com", "crm_company_id": "C9003"}]
    df = pd.DataFrame(rows)
    for col in ("register_id", "vat_id", "erp_customer_number", "crm_company_id", "domain", "phone_e164", "street_full_key"):
        df[col] = df[col].astype(object).where(df[col].notna(), None) if col in df.columns else None
    df["company_first_token"] = df["company_key"].str.split(" ").str[0]
    df["company_kp"] = df["company_key"]
    df["leitregion"] = df["postal_code"].str[:2]
    spec = CFG.accounts if conflicts else replace(CFG.accounts, conflicts=())
    assert CFG.accounts.conflicts == (("domain", "street"),)
    labels = resolve(df, spec).labels
    # The ordinary companies: each one cluster of its three records.
    companies = labels[:first].reshape(-1, 3)
    assert (companies == companies[:, :1]).all() and len(np.unique(companies[:, 0])) == 400
    first_twin, second_twin = labels[first:first + 2], labels[first + 2:first + 4]
    assert first_twin[0] == first_twin[1] and second_twin[0] == second_twin[1]
    assert (first_twin[0] != second_twin[0]) == conflicts
    assert labels[-2] == labels[-1]


def test_a_conflicts_group_names_comparisons(tmp_path):
    text = (DEFAULT_CONFIG_DIR / "matching.yaml").read_text(encoding="utf-8")
    assert "    - [domain, street]\n" in text
    bad = tmp_path / "matching.yaml"
    bad.write_text(text.replace("    - [domain, street]\n", "    - [domain, strasse]\n"), encoding="utf-8")
    with pytest.raises(Exception, match=r"matching\.yaml.*accounts\.conflicts\[0\].*unknown comparison 'strasse'"):
        load_matching_config(bad)
    # The dedupe command drops a group whose comparisons its data set lacks, as it drops their training rules.
    assert CFG.accounts.without_columns({"street_full_key"}).conflicts == ()
    assert CFG.accounts.without_columns({"vat_id"}).conflicts == (("domain", "street"),)
