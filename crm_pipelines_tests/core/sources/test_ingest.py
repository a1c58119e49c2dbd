"""Loading partitions into the warehouse, on SQLite files and on PostgreSQL: the quarantine corpus,
rows in = rows loaded + rows quarantined, idempotent re-runs, duplicate deliveries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import LANDING_FILES, QUARANTINE, raw_table
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.ingest import ingest_partition, landed_partitions, partition_balance
from crm_pipelines_tests.conftest import put
from crm_pipelines_tests.core.sources.test_readers import TRADE_FAIR_HEADER, TRADE_FAIR_ROW

DAY = "2026-11-03"


def lead(n: int, **over) -> str:
    rec = {"lead_id": f"WF-{n}", "submitted_at": "2026-11-03T09:14:00+01:00", "first_name": "Jörg", "last_name": "Müller",
           "email": f"j{n}@musterfirma.de", "company_name": "Musterfirma GmbH", "zip": "01067", "newsletter_opt_in": False}
    rec.update(over)
    return json.dumps(rec, ensure_ascii=False)


def values(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series.tolist()]


def quarantine(wh: Warehouse, source: str) -> pd.DataFrame:
    return wh.read_frame(sa.select(QUARANTINE).where(QUARANTINE.c.source == source).order_by(QUARANTINE.c.file, QUARANTINE.c.record_no))


def raw(wh: Warehouse, mapping) -> pd.DataFrame:
    t = raw_table(mapping.source, mapping.entity)
    return wh.read_frame(sa.select(t).order_by(t.c._partition, t.c._file, t.c._record_no))


def test_demo_landing_zone_loads_with_exactly_the_expected_quarantine(demo_landing, mappings, warehouse_url):
    root, manifest = demo_landing
    wh = Warehouse.for_url(warehouse_url)
    for source, mapping in mappings.items():
        read = loaded = quarantined = 0
        partitions = landed_partitions(root, source)
        for p in partitions:
            rep = ingest_partition(mapping, p, root, wh, "run-1")
            read, loaded, quarantined = read + rep.rows_read, loaded + rep.rows_loaded, quarantined + rep.rows_quarantined
        expected = manifest["sources"][source]
        assert read == expected["records"], source
        assert quarantined == expected["expected_quarantined"], source
        assert read == loaded + quarantined
        balance = partition_balance(wh, mapping, partitions)
        assert all(b["read"] == b["loaded"] + b["quarantined"] for b in balance.values())
        assert sum(b["loaded"] for b in balance.values()) == loaded


def test_invalid_rows_are_quarantined_with_file_line_reason_and_raw_payload(landing, mappings, warehouse_url):
    m = mappings["web_form_leads"]
    bad_line = lead(2, submitted_at="2026-13-45T25:61:00+01:00", salutation="Herrr")
    put(landing, m.source, DAY, "leads_0600.jsonl", "\n".join([lead(1), bad_line, '{"lead_id": "WF-3",', lead(4)]) + "\n")
    wh = Warehouse.for_url(warehouse_url)
    rep = ingest_partition(m, DAY, landing, wh, "run-1")
    assert (rep.rows_read, rep.rows_loaded, rep.rows_quarantined) == (4, 2, 2)
    q = quarantine(wh, m.source)
    assert q["line_no"].tolist() == [2, 3]
    assert values(q["source_record_id"]) == ["WF-2", "WF-3"]  # read from the broken JSON text too
    assert q.loc[0, "raw_payload"] == bad_line  # exactly as delivered
    assert "submitted_at -> created_at: '2026-13-45T25:61:00+01:00' is not a valid date/time" in q.loc[0, "reason"]
    assert "'Herrr' is not one of the mapped values" in q.loc[0, "reason"]
    assert q.loc[1, "reason"].startswith("line 3: invalid JSON")
    loaded = raw(wh, m)
    assert loaded["source_record_id"].tolist() == ["WF-1", "WF-4"]
    assert loaded["_line"].tolist() == [1, 4] and set(loaded["_file"]) == {"leads_0600.jsonl"}
    assert rep.reason_counts["submitted_at: parse_datetime"] == 1 and rep.reason_counts["unreadable record"] == 1


def test_values_keep_their_types_in_the_warehouse(landing, mappings, warehouse_url):
    customer = ("0000100000" + "Müller & Söhne GmbH".ljust(40) + "".ljust(40) + "Hauptstraße 1".ljust(35) + "01067".ljust(10)
                + "Dresden".ljust(35) + "D".ljust(3) + "0351 4711-0".ljust(20) + "INFO@Mueller.de".ljust(50)
                + "DE123456789".ljust(14) + "Maschinenbau".ljust(20) + "Herr Weiß".ljust(30) + "20040315" + "X"
                + "250".rjust(7) + "48.000.000,50".rjust(16))
    put(landing, "erp_customers", DAY, "KUNDEN_1.txt", (customer + "\r\n").encode("cp850"))
    put(landing, "trade_fair_leads", DAY, "a.csv", "\ufeff" + TRADE_FAIR_HEADER + "\r\n" + TRADE_FAIR_ROW + "\r\n")
    wh = Warehouse.for_url(warehouse_url)
    ingest_partition(mappings["erp_customers"], DAY, landing, wh, "run-1")
    ingest_partition(mappings["trade_fair_leads"], DAY, landing, wh, "run-1")
    t = raw_table("erp_customers", mappings["erp_customers"].entity)
    with wh.engine.connect() as conn:
        row = conn.execute(sa.select(t)).one()._mapping
    assert row["company_name"] == "Müller & Söhne GmbH" and row["contact_person"] == "Herr Weiß"
    assert row["postal_code"] == "01067" and row["country"] == "DE" and row["email"] == "info@mueller.de"
    assert row["customer_since"] == dt.date(2004, 3, 15)
    assert row["is_blocked"] is True
    assert row["employee_count"] == 250
    assert Decimal(str(row["annual_revenue"])) == Decimal("48000000.50")
    assert row["source_record_id"] == row["erp_customer_number"] == "0000100000"
    t = raw_table("trade_fair_leads", mappings["trade_fair_leads"].entity)
    with wh.engine.connect() as conn:
        lead_row = conn.execute(sa.select(t)).one()._mapping
    created = lead_row["created_at"]
    if created.tzinfo is None:  # SQLite stores UTC without the offset
        created = created.replace(tzinfo=dt.timezone.utc)
    assert created == dt.datetime(2026, 11, 3, 13, 35, tzinfo=dt.timezone.utc)
    assert lead_row["marketing_opt_in"] is True and lead_row["country"] == "DE"
    assert lead_row["street"] == "Hauptstraße 1" and lead_row["first_name"] == "Jörg"


def test_rerunning_a_partition_replaces_it(landing, mappings, warehouse_url):
    m = mappings["web_form_leads"]
    put(landing, m.source, DAY, "leads_0600.jsonl", "\n".join([lead(1), lead(2), "{broken"]) + "\n")
    put(landing, m.source, "2026-11-04", "leads_0600.jsonl", lead(9) + "\n")
    wh = Warehouse.for_url(warehouse_url)
    for _ in range(3):
        ingest_partition(m, DAY, landing, wh, "run-x")
    ingest_partition(m, "2026-11-04", landing, wh, "run-y")
    assert len(raw(wh, m)) == 3 and len(quarantine(wh, m.source)) == 1
    # A corrected re-delivery replaces the day's rows, quarantine and ledger, and leaves other days alone.
    put(landing, m.source, DAY, "leads_0600.jsonl", "\n".join([lead(1), lead(2), lead(3)]) + "\n")
    rep = ingest_partition(m, DAY, landing, wh, "run-z")
    assert rep.rows_quarantined == 0
    rows = raw(wh, m)
    assert rows["source_record_id"].tolist() == ["WF-1", "WF-2", "WF-3", "WF-9"]
    assert set(rows.loc[rows._partition == DAY, "_run_id"]) == {"run-z"}
    assert len(quarantine(wh, m.source)) == 0
    ledger = wh.read_frame(sa.select(LANDING_FILES))
    assert sorted(ledger["partition"]) == [DAY, "2026-11-04"]


def test_duplicate_delivery_of_the_same_file(landing, mappings, warehouse_url):
    m = mappings["web_form_leads"]
    content = "\n".join([lead(1), lead(2)]) + "\n"
    put(landing, m.source, DAY, "leads_0600.jsonl", content)
    put(landing, m.source, DAY, "leads_0600 (1).jsonl", content)          # the transfer job ran twice
    put(landing, m.source, "2026-11-04", "leads_0600.jsonl", content)     # and again the next day
    wh = Warehouse.for_url(warehouse_url)
    first = ingest_partition(m, DAY, landing, wh, "run-1")
    second = ingest_partition(m, "2026-11-04", landing, wh, "run-1")
    assert (first.rows_read, first.rows_loaded) == (2, 2)
    assert [(f.file, f.status, f.duplicate_of) for f in first.files] == [
        ("leads_0600 (1).jsonl", "loaded", None), ("leads_0600.jsonl", "duplicate", "leads_0600 (1).jsonl")]
    assert [(f.status, f.duplicate_of) for f in second.files] == [("duplicate", f"{DAY}/leads_0600 (1).jsonl")]
    assert second.rows_read == 0
    assert len(raw(wh, m)) == 2
    ledger = wh.read_frame(sa.select(LANDING_FILES).order_by(LANDING_FILES.c.partition, LANDING_FILES.c.file))
    assert ledger["status"].tolist() == ["loaded", "duplicate", "duplicate"]
    assert ledger["sha256"].nunique() == 1


def test_duplicate_record_id_within_a_day_is_quarantined(landing, mappings, warehouse_url):
    m = mappings["web_form_leads"]
    put(landing, m.source, DAY, "leads_0000.jsonl", lead(1) + "\n")
    put(landing, m.source, DAY, "leads_1200.jsonl", lead(2) + "\n" + lead(1, email="other@x.de") + "\n")
    wh = Warehouse.for_url(warehouse_url)
    rep = ingest_partition(m, DAY, landing, wh, "run-1")
    assert (rep.rows_loaded, rep.rows_quarantined) == (2, 1)
    q = quarantine(wh, m.source)
    assert q.loc[0, "reason"] == "duplicate record id 'WF-1' in this delivery day (first at file leads_0000.jsonl, line 1)"
    assert q.loc[0, "file"] == "leads_1200.jsonl" and q.loc[0, "line_no"] == 2


@pytest.mark.parametrize("case", ["empty", "wrong_encoding", "missing_header", "binary"])
def test_an_unreadable_file_is_rejected_and_the_days_other_files_load(landing, mappings, warehouse_url, case):
    m = mappings["trade_fair_leads"]
    content = {"empty": b"", "wrong_encoding": (TRADE_FAIR_HEADER + "\n" + TRADE_FAIR_ROW).encode("cp1252"),
               "missing_header": (TRADE_FAIR_ROW + "\n").encode(), "binary": b"PK\x03\x04" + bytes(range(256)) * 4}[case]
    put(landing, m.source, DAY, "messe.csv", content)
    put(landing, m.source, DAY, "messe_2.csv", (TRADE_FAIR_HEADER + "\n" + TRADE_FAIR_ROW + "\n").encode())
    wh = Warehouse.for_url(warehouse_url)
    rep = ingest_partition(m, DAY, landing, wh, "run-1")
    assert raw(wh, m)["source_record_id"].tolist() == ["TF-1"]
    [rejected] = rep.rejected_files
    assert rejected.file == "messe.csv" and rejected.error.startswith("messe.csv, line 1")
    ledger = wh.read_frame(sa.select(LANDING_FILES).where(LANDING_FILES.c.file == "messe.csv")).iloc[0]
    assert ledger["status"] == "rejected" and ledger["error"] == rejected.error
    q = quarantine(wh, m.source)
    assert q["reason"].tolist() == [f"file rejected: {rejected.error}"] and q["record_no"].tolist() == [0]
    assert partition_balance(wh, m, [DAY])[DAY] == {"read": 2, "loaded": 1, "quarantined": 1, "suppressed": 0}


def test_a_file_rejected_midway_keeps_none_of_its_records(landing, mappings, warehouse_url):
    # A mapping that refuses unknown fields for the whole file: the error comes after records were read.
    m = dataclasses.replace(mappings["web_form_leads"], on_unknown_field="error")
    put(landing, m.source, DAY, "leads_0600.jsonl", lead(1) + "\n")
    put(landing, m.source, DAY, "leads_0700.jsonl", "\n".join([lead(2), lead(3), lead(4, fax="0351 1")]) + "\n")
    wh = Warehouse.for_url(warehouse_url)
    rep = ingest_partition(m, DAY, landing, wh, "run-1", chunk_rows=1)
    assert raw(wh, m)["source_record_id"].tolist() == ["WF-1"]
    assert [(f.file, f.status, f.rows_loaded) for f in rep.files] == [("leads_0600.jsonl", "loaded", 1),
                                                                      ("leads_0700.jsonl", "rejected", 0)]
    assert rep.files[1].error.startswith("leads_0700.jsonl, line 3: unexpected field(s) 'fax'")
    assert partition_balance(wh, m, [DAY])[DAY] == {"read": 2, "loaded": 1, "quarantined": 1, "suppressed": 0}


def test_files_that_match_no_pattern_are_recorded_as_ignored(landing, mappings, warehouse_url):
    m = mappings["web_form_leads"]
    put(landing, m.source, DAY, "leads_0600.jsonl", lead(1) + "\n")
    put(landing, m.source, DAY, "leads_1800.json", lead(2) + "\n")
    wh = Warehouse.for_url(warehouse_url)
    rep = ingest_partition(m, DAY, landing, wh, "run-1")
    assert [(f.file, f.status) for f in rep.files] == [("leads_0600.jsonl", "loaded"), ("leads_1800.json", "ignored")]
    ledger = wh.read_frame(sa.select(LANDING_FILES.c.file, LANDING_FILES.c.status, LANDING_FILES.c.error)
                           .order_by(LANDING_FILES.c.file))
    assert ledger["status"].tolist() == ["loaded", "ignored"]
    assert "matches no pattern of the source (*.jsonl in web_form_leads.yaml)" in ledger["error"].iloc[1]


def test_a_day_without_files_loads_nothing_and_says_so(landing, mappings, warehouse_url):
    rep = ingest_partition(mappings["web_form_leads"], DAY, landing, Warehouse.for_url(warehouse_url), "run-1")
    assert rep.files == [] and rep.rows_read == 0


def test_partitions_ignore_folders_that_are_not_days(landing):
    for name in ("2026-11-03", "2026-11-04", "tmp", "2026-13-01"):
        (landing / "web_form_leads" / name).mkdir(parents=True)
    assert landed_partitions(landing, "web_form_leads") == ["2026-11-03", "2026-11-04"]


def test_new_model_columns_are_added_to_existing_tables(tmp_path, mappings):
    url = f"sqlite:///{tmp_path / 'wh.db'}"
    wh = Warehouse(url)
    m = mappings["erasure_requests"]
    old = sa.MetaData()
    sa.Table(m.source, old, sa.Column("_partition", sa.Text), sa.Column("source_record_id", sa.Text), schema="raw")
    old.create_all(wh.engine)
    wh.ensure_tables([raw_table(m.source, m.entity)])
    cols = {c["name"] for c in sa.inspect(wh.engine).get_columns(m.source, schema="raw")}
    assert {"requested_at", "email", "_loaded_at"} <= cols
    wh.engine.dispose()


def test_sqlite_layers_are_separate_files(tmp_path, mappings, landing):
    url = f"sqlite:///{tmp_path / 'data' / 'warehouse.db'}"
    put(landing, "web_form_leads", DAY, "a.jsonl", lead(1) + "\n")
    ingest_partition(mappings["web_form_leads"], DAY, landing, Warehouse.for_url(url), "r")
    assert {p.name for p in (tmp_path / "data").glob("*.db")} == {
        "warehouse.db", "warehouse.raw.db", "warehouse.staging.db", "warehouse.golden.db", "warehouse.marts.db", "warehouse.ops.db"}
    Warehouse.dispose_all()


@pytest.mark.postgres
def test_postgres_load_uses_copy(landing, mappings, postgres_url, monkeypatch):
    """Bulk path: rows reach PostgreSQL through COPY, not row-by-row INSERTs."""
    put(landing, "web_form_leads", DAY, "a.jsonl", "\n".join(lead(i) for i in range(500)) + "\n")
    wh = Warehouse.for_url(postgres_url)
    statements: list[str] = []
    sa.event.listen(wh.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    copies: list[str] = []
    original = Warehouse._copy

    def spy(self, conn, table, frame):
        copies.append(f"{table.fullname}:{len(frame)}")
        return original(self, conn, table, frame)

    monkeypatch.setattr(Warehouse, "_copy", spy)
    ingest_partition(mappings["web_form_leads"], DAY, landing, wh, "r")
    assert "raw.web_form_leads:500" in copies
    assert not [s for s in statements if s.lstrip().upper().startswith("INSERT INTO RAW")]


def test_same_files_same_result_on_both_backends(demo_landing, mappings, tmp_path, request):
    """The embedded default and PostgreSQL hold the same rows after the same loads."""
    postgres_url = request.getfixturevalue("postgres_url")
    root, _ = demo_landing
    m = mappings["crm_contacts"]
    partition = landed_partitions(root, m.source)[0]
    frames = []
    for url in (f"sqlite:///{tmp_path / 'wh.db'}", postgres_url):
        wh = Warehouse.for_url(url)
        ingest_partition(m, partition, root, wh, "same-run")
        df = raw(wh, m).drop(columns=["_loaded_at"]).sort_values("source_record_id").reset_index(drop=True)
        for c in ("created_at", "updated_at"):
            df[c] = pd.to_datetime(df[c], utc=True)
        frames.append(df)
    pd.testing.assert_frame_equal(frames[0], frames[1], check_dtype=False)


def test_ground_truth_covers_every_entity_record(demo_landing):
    root, manifest = demo_landing
    truth = pd.read_csv(root / "_ground_truth" / "records.csv", dtype=str)
    assert set(truth["source"]) == set(manifest["sources"]) - {"erp_orders", "behaviour_events"}


def test_parallel_steps_creating_the_same_layers_and_tables_do_not_collide(warehouse_url, mappings):
    """The multiprocess executor starts several ingest steps at once; each creates the layers and
    its tables. Neither Postgres (duplicate key in pg_namespace) nor SQLite (check, then create)
    makes that atomic on its own."""
    import threading

    tables = [raw_table(m.source, m.entity) for m in mappings.values()] + [QUARANTINE, LANDING_FILES]
    for attempt in range(4):
        warehouses = [Warehouse(warehouse_url) for _ in range(6)]
        barrier = threading.Barrier(len(warehouses))
        errors: list[BaseException] = []

        def create(wh: Warehouse) -> None:
            barrier.wait()
            try:
                wh.ensure_tables(tables)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(wh,)) for wh in warehouses]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for wh in warehouses:
            wh.engine.dispose()
        assert errors == [], f"attempt {attempt}: {errors[0]!r}"
        wh = Warehouse(warehouse_url)
        with wh.engine.begin() as conn:
            for t in tables:
                assert sa.inspect(conn).has_table(t.name, schema=t.schema), t.fullname
                conn.exec_driver_sql(f"DROP TABLE {wh.qualified(t)}")
            if wh.is_postgres:
                conn.exec_driver_sql("DROP SCHEMA raw, ops CASCADE")
        wh.engine.dispose()
