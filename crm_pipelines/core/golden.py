"""The golden layer: cleaned records in, golden contacts and accounts out, with IDs that stay put.

Plain Python over the warehouse (no Dagster): the assets in ``defs/golden.py`` call
these functions, and tests call them directly.

Order of a run: person records, account records (ERP, CRM and the company mentions of
persons), register enrichment (see ``core/enrichment``), accounts resolved, contacts
resolved and linked to their account, review queue.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import sqlalchemy as sa

from .masking import mask_value
from .matching.ids import assign_ids, id_seq
from .matching.records import (ACCOUNT_SOURCES, PERSON_SOURCES, account_records, account_signatures,
                               person_records)
from .matching.resolve import Resolution, resolve
from .matching.settings import EntityMatchSpec, MatchingConfig
from .matching.survivorship import survive
from .model import ENTITIES
from .privacy import consent
from .privacy.identity import IdentityHasher
from .privacy.suppression import Screen
from .schema import (ACCOUNT_CROSSWALK, ACCOUNT_LINEAGE, ACCOUNT_RECORDS, CONSENT_EVENTS, CONTACT_LINEAGE,
                     GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, GOLDEN_TABLES, ID_EVENTS, ID_REGISTRY, MATCH_EDGES, MATCH_RUNS,
                     PERSON_CROSSWALK, PERSON_RECORDS, REGISTER_CACHE, REVIEW_CANDIDATES, REVIEW_QUEUE,
                     STEWARD_DECISIONS, raw_table)
from .warehouse import KeyRange, Warehouse, shared_objects, tables_present

Log = Callable[[str], None]
PREFIX = {"persons": "GC", "accounts": "GA"}
CONSENT_SOURCES = ("newsletter_signups", "consent_changes")
CONTACT_FIELDS = ["salutation", "academic_title", "first_name", "last_name", "email_norm", "phone", "mobile", "job_title",
                  "company_name", "street", "house_number", "postal_code", "city", "country", "crm_contact_id",
                  "crm_company_id", "erp_customer_number"]
ACCOUNT_FIELDS = ["company_name", "company_base", "legal_form", "street", "house_number", "postal_code", "city", "country",
                  "phone", "domain", "vat_id", "register_court", "register_number", "industry", "employee_count",
                  "erp_customer_number", "crm_company_id"]
_RAW_COLUMNS = ("_partition", "_file", "_record_no")
# Records read, cleaned and written at a time by the record builders: their memory stays that of one
# slice however long a source grows (at 10,000,000 contacts the person-record step peaked at 3.4 GB and
# account_records at 2.4 GB, bench_scale_10m). The default of CRM_SLICE_RECORDS (settings.py).
SLICE_RECORDS = 500_000


def now() -> datetime:
    return datetime.now(timezone.utc)


# ============================================================================ records

def read_raw(wh: Warehouse, sources: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The latest raw rows of each source, whole (see :func:`raw_slices` for a table of any length)."""
    from .matching.records import latest

    out = {}
    for source in sources:
        select = _raw_select(wh, source)
        if select is not None:
            out[source] = latest(wh.read_raw_sql(select))
    return out


def _raw_select(wh: Warehouse, source: str) -> str | None:
    insp = sa.inspect(wh.engine)
    if not insp.has_table(source, schema="raw"):
        return None
    cols = [c["name"] for c in insp.get_columns(source, schema="raw")]
    keep = [c for c in cols if not c.startswith("_") or c in _RAW_COLUMNS]
    # Plain rows: no per-value type processing; the record builders parse the timestamps.
    return f"SELECT {', '.join(wh.quote(c) for c in keep)} FROM raw.{wh.quote(source)}"


def replace_table(wh: Warehouse, table: sa.Table, frame: pd.DataFrame, where: dict | None = None) -> None:
    wh.ensure_tables([table])
    cols = [c for c in table.columns.keys() if c in frame.columns]
    with wh.engine.begin() as conn:
        if where:
            wh.delete_where(conn, table, **where)
        else:
            conn.execute(sa.delete(table))
        wh.bulk_insert(conn, table, frame[cols])


def raw_slices(wh: Warehouse, source: str, slice_records: int) -> Iterator[pd.DataFrame]:
    """A source's latest raw rows, about ``slice_records`` records at a time. The slices are ranges of
    the source's record IDs, so every delivered version of a record is in the same slice and
    :func:`latest` picks the same row as over the whole table. Nothing when the table does not exist."""
    from .matching.records import latest

    select = _raw_select(wh, source)
    if select is None:
        return
    for key_range in wh.key_ranges(f"raw.{wh.quote(source)}", "source_record_id", slice_records):
        condition, params = key_range.where(wh.quote)
        yield latest(wh.read_frame(f"{select} WHERE {condition}", params))


@dataclass
class RecordsWritten:
    """What a sliced build wrote: the counts a step reports, without keeping the records."""

    records: int = 0
    slices: int = 0
    suppressed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, dict] = field(default_factory=dict)  # column -> value -> records
    preview: pd.DataFrame | None = None

    def add(self, frame: pd.DataFrame, counts: dict[str, int] | None = None, values: tuple[str, ...] = (),
            preview: pd.DataFrame | None = None) -> None:
        self.records += len(frame)
        self.slices += 1
        for name, n in (counts or {}).items():
            self.counts[name] = self.counts.get(name, 0) + int(n)
        for col in values:
            tally = self.values.setdefault(col, {})
            for value, n in frame[col].fillna("(none)").value_counts().items():
                tally[value] = tally.get(value, 0) + int(n)
        if preview is not None and (self.preview is None or len(self.preview) < 5):
            self.preview = preview.head(5) if self.preview is None else pd.concat([self.preview, preview]).head(5)


def clean_person_source(wh: Warehouse, source: str, screen: Screen | None = None,
                        slice_records: int = SLICE_RECORDS) -> RecordsWritten:
    """One person source's latest raw rows cleaned into person records, stored in place of that source's
    rows in ``staging.person_records``. Records are cleaned one by one, so the sources can be cleaned in
    parallel (one step each) and the table is the same as cleaning them all at once; for the same
    reason a source is read, cleaned and written ``slice_records`` records at a time (the memory of
    the step is that of one slice, whatever the length of the source), in one transaction, so a
    failed step leaves the source's previous records in place. (On SQLite that transaction holds the
    write lock of the staging file until the last slice: PostgreSQL is the setting for big sources.)

    ``screen``: records of suppressed people are left out (counted in ``suppressed``). Ingestion
    already keeps them out; this holds even for a raw table restored from a backup."""
    wh.ensure_tables([PERSON_RECORDS])
    written = RecordsWritten()
    with wh.engine.begin() as conn:
        wh.delete_where(conn, PERSON_RECORDS, source=source)
        for raw in raw_slices(wh, source, slice_records):
            persons = person_records({source: raw})
            if screen is not None and not screen.empty and len(persons):
                hit = screen.suppressed(persons)
                written.suppressed += int(hit.sum())
                persons = persons[~hit].reset_index(drop=True)
            wh.bulk_insert(conn, PERSON_RECORDS, persons)
            written.add(persons, counts={
                "invalid_emails": (persons["email"].notna() & persons["email_norm"].isna()).sum(),
                "unparseable_phones": (persons["phone"].notna() & persons["phone_e164"].isna()).sum(),
                "with_legal_form": persons["legal_form"].notna().sum()})
    return written


def drop_unmapped_person_sources(wh: Warehouse) -> None:
    """Rows of a source that is no longer a person source must not linger in the table."""
    wh.ensure_tables([PERSON_RECORDS])
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(PERSON_RECORDS).where(PERSON_RECORDS.c.source.not_in(PERSON_SOURCES)))


def load_person_records_sample(wh: Warehouse, n: int) -> pd.DataFrame:
    """The first ``n`` person records by key (for previews; callers mask them)."""
    wh.ensure_tables([PERSON_RECORDS])
    return wh.read_frame(sa.select(PERSON_RECORDS).order_by(PERSON_RECORDS.c.record_key).limit(n))


def build_person_records(wh: Warehouse, screen: Screen | None = None,
                         slice_records: int = SLICE_RECORDS) -> dict[str, RecordsWritten]:
    """Every person source through :func:`clean_person_source`, in one process."""
    drop_unmapped_person_sources(wh)
    return {source: clean_person_source(wh, source, screen, slice_records) for source in PERSON_SOURCES}


def build_account_records(wh: Warehouse, slice_records: int = SLICE_RECORDS) -> RecordsWritten:
    """``staging.account_records`` from the ERP customers, the CRM companies and the company mentions of
    the person records, ``slice_records`` at a time (each account record comes from one row alone),
    in one transaction."""
    wh.ensure_tables([ACCOUNT_RECORDS, PERSON_RECORDS])
    written = RecordsWritten()
    no_mentions = pd.DataFrame(columns=["company_name"])

    def write(conn, accounts: pd.DataFrame) -> None:
        wh.bulk_insert(conn, ACCOUNT_RECORDS, accounts)
        companies = accounts[~accounts["is_mention"].astype(bool)]
        written.add(accounts, counts={"mentions": accounts["is_mention"].astype(bool).sum()}, values=("legal_form",),
                    preview=companies[["source", "company_name", "company_base", "legal_form", "postal_code", "city"]])

    with wh.engine.begin() as conn:
        conn.execute(sa.delete(ACCOUNT_RECORDS))
        for source in ACCOUNT_SOURCES:
            for raw in raw_slices(wh, source, slice_records):
                write(conn, account_records({source: raw}, no_mentions))
        for key_range in wh.key_ranges(wh.qualified(PERSON_RECORDS), "record_key", slice_records):
            mentions = load_person_mentions(wh, key_range)
            if len(mentions):
                write(conn, account_records({}, mentions))
    return written


def _read_all(wh: Warehouse, table: sa.Table) -> pd.DataFrame:
    cols = ", ".join(wh.quote(c) for c in table.columns.keys())
    return wh.read_raw_sql(f"SELECT {cols} FROM {wh.qualified(table)} ORDER BY record_key")  # None for missing


MENTION_COLUMNS = ("record_key", "source", "source_record_id", "record_ts", "company_name", "street", "house_number",
                   "postal_code", "city", "country", "email_domain", "is_free_mail", "erp_customer_number", "crm_company_id")


def load_person_mentions(wh: Warehouse, key_range: KeyRange | None = None) -> pd.DataFrame:
    """The person records that name a company, with only what an account record takes from them
    (``account_records``): the step does not need the names, e-mails and keys of a million people.
    ``key_range``: only the records in that range of record keys."""
    wh.ensure_tables([PERSON_RECORDS])
    cols = ", ".join(wh.quote(c) for c in MENTION_COLUMNS)
    condition, params = key_range.where(wh.quote) if key_range is not None else ("1 = 1", {})
    df = wh.read_frame(f"SELECT {cols} FROM {wh.qualified(PERSON_RECORDS)} WHERE company_name IS NOT NULL "
                       f"AND {condition} ORDER BY record_key", params)
    df["company_domain"] = _company_domain(df)
    df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    return df.drop(columns=["email_domain", "is_free_mail"])


def _company_domain(df: pd.DataFrame) -> pd.Series:
    """The e-mail domain where it is not a free-mail provider's (SQLite stores the flag as 0/1)."""
    return df["email_domain"].where(~df["is_free_mail"].fillna(False).astype(bool), None)


# Blocking keys derived at load (cheap to recompute, not worth their storage): the stored columns each needs.
_DERIVED_PERSON_COLUMNS = {
    "email_local": ("email_norm",), "company_domain": ("email_domain", "is_free_mail"),
    "name_kp_pair": ("first_kp", "last_kp"), "first_initial": ("first_key",), "phone_any": ("mobile_e164", "phone_e164"),
    "company_first_token": ("org_key",), "mailbox_is_name": ("email_norm", "first_key", "last_key"),
}


def load_person_records(wh: Warehouse, columns: set[str] | None = None) -> pd.DataFrame:
    """The person records with the derived blocking keys; ``columns``: only these (a column nobody
    asked for is never read: the raw e-mail of 10 million records is a gigabyte)."""
    from .matching.engine import name_mailboxes

    wh.ensure_tables([PERSON_RECORDS])
    stored = list(PERSON_RECORDS.columns.keys())
    wanted = set(stored) | set(_DERIVED_PERSON_COLUMNS) if columns is None else set(columns)
    inputs = {c for d, needs in _DERIVED_PERSON_COLUMNS.items() if d in wanted for c in needs}
    read = [c for c in stored if c in wanted | inputs]
    df = wh.read_raw_sql(f"SELECT {', '.join(wh.quote(c) for c in read)} FROM {wh.qualified(PERSON_RECORDS)} "
                         "ORDER BY record_key")  # None for missing
    if "is_free_mail" in df.columns:
        df["is_free_mail"] = df["is_free_mail"].fillna(False).astype(bool)  # SQLite returns 0/1
    if "email_local" in wanted or "mailbox_is_name" in wanted:
        df["email_local"] = df["email_norm"].str.rsplit("@", n=1).str[0]
    if "company_domain" in wanted:
        df["company_domain"] = _company_domain(df)
    if "name_kp_pair" in wanted:
        pair = [("-".join(sorted((f, l))) if f and l else None) for f, l in zip(df["first_kp"], df["last_kp"])]
        df["name_kp_pair"] = shared_objects(pd.Series(pair, index=df.index, dtype=object))
    if "first_initial" in wanted:
        df["first_initial"] = df["first_key"].str[:1]
    if "phone_any" in wanted:
        df["phone_any"] = df["mobile_e164"].where(df["mobile_e164"].notna(), df["phone_e164"])
    if "company_first_token" in wanted:
        df["company_first_token"] = shared_objects(df["org_key"].str.split(" ").str[0])
    if "mailbox_is_name" in wanted:
        df["mailbox_is_name"] = name_mailboxes(df["email_local"], df["first_key"], df["last_key"])
    if "record_ts" in df.columns:
        df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    return df[[c for c in df.columns if c in wanted]]


def load_consent_events(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [CONSENT_EVENTS]):
        return pd.DataFrame(columns=consent.EVENT_COLUMNS)
    df = wh.read_frame(sa.select(CONSENT_EVENTS))
    df["occurred_at"] = pd.to_datetime(df["occurred_at"], utc=True)
    df["double_opt_in_at"] = pd.to_datetime(df["double_opt_in_at"], utc=True)
    return df


def build_consent_events(wh: Warehouse, hasher: IdentityHasher) -> pd.DataFrame:
    wh.ensure_tables([CONSENT_EVENTS])
    raw = {s: wh.read_frame(sa.select(raw_table(s, ENTITIES["consent_event"]))) for s in CONSENT_SOURCES
           if tables_present(wh, [raw_table(s, ENTITIES["consent_event"])])}
    pr = PERSON_RECORDS
    persons = wh.read_frame(sa.select(pr.c.record_key, pr.c.source, pr.c.crm_contact_id, pr.c.email_norm)) \
        if tables_present(wh, [pr]) else pd.DataFrame(columns=["record_key", "source", "crm_contact_id", "email_norm"])
    events = consent.build_events(raw, persons, hasher)
    replace_table(wh, CONSENT_EVENTS, events)
    return events


def load_account_records(wh: Warehouse) -> pd.DataFrame:
    wh.ensure_tables([ACCOUNT_RECORDS])
    df = _read_all(wh, ACCOUNT_RECORDS)
    df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    df["is_mention"] = df["is_mention"].astype(bool)
    return df


def apply_register(accounts: pd.DataFrame, wh: Warehouse) -> pd.DataFrame:
    """Register court and number from the enrichment cache, by (name key, city key)."""
    wh.ensure_tables([REGISTER_CACHE])
    cache = wh.read_frame(sa.select(REGISTER_CACHE.c.company_key, REGISTER_CACHE.c.city_key, REGISTER_CACHE.c.register_court,
                                    REGISTER_CACHE.c.register_number).where(REGISTER_CACHE.c.status == "found"))
    if cache.empty:
        return accounts
    cache = cache.drop_duplicates(["company_key", "city_key"])
    joined = accounts[["company_key", "city_key"]].merge(cache, on=["company_key", "city_key"], how="left")
    out = accounts.copy()
    court = out["register_court"].where(out["register_court"].notna(), joined["register_court"].to_numpy())
    number = out["register_number"].where(out["register_number"].notna(), joined["register_number"].to_numpy())
    out["register_court"], out["register_number"] = court, number
    out["register_id"] = [(f"{c}|{n}" if c and n else None) for c, n in zip(court, number)]
    return out


# ============================================================================ steward decisions

def decisions(wh: Warehouse, entity: str) -> pd.DataFrame:
    wh.ensure_tables([STEWARD_DECISIONS])
    df = wh.read_frame(sa.select(STEWARD_DECISIONS).where(STEWARD_DECISIONS.c.entity == entity)
                       .order_by(STEWARD_DECISIONS.c.decided_at))
    # The latest decision about a pair counts.
    if df.empty:
        return df
    df["pair"] = [tuple(sorted((a, b))) for a, b in zip(df["record_a"], df["record_b"])]
    return df.drop_duplicates("pair", keep="last")


def record_decision(wh: Warehouse, entity: str, record_a: str, record_b: str, decision: str, decided_by: str,
                    note: str | None = None) -> None:
    if entity not in PREFIX:
        raise ValueError(f"entity must be one of {', '.join(PREFIX)}")
    if decision not in ("same", "different"):
        raise ValueError("decision must be 'same' or 'different'")
    wh.ensure_tables([STEWARD_DECISIONS])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(STEWARD_DECISIONS).values(entity=entity, record_a=record_a, record_b=record_b,
                                                          decision=decision, decided_by=decided_by, decided_at=now(),
                                                          note=note))


def _decision_links(dec: pd.DataFrame, position: Callable[[list], np.ndarray]) -> tuple[list, list, int]:
    """Steward decisions as must- and cannot-links between positions; ``position`` maps record keys to
    positions (-1 for a record that is gone)."""
    must, cannot, unknown = [], [], 0
    ra, rb = list(dec.get("record_a", [])), list(dec.get("record_b", []))
    positions_a, positions_b = (position(ra), position(rb)) if ra else ([], [])
    for pa, pb, d in zip(positions_a, positions_b, dec.get("decision", [])):
        pa, pb = int(pa), int(pb)
        if pa < 0 or pb < 0:
            unknown += 1
            continue
        if pa == pb:
            continue
        (must if d == "same" else cannot).append((pa, pb, "steward: same") if d == "same" else (pa, pb))
    return must, cannot, unknown


# ============================================================================ resolution

@dataclass
class GoldenResult:
    entity: str
    resolution: Resolution
    golden: pd.DataFrame
    crosswalk: pd.DataFrame  # current record -> golden ID
    events: list[dict]
    stats: dict = field(default_factory=dict)


def _evidence(res: Resolution, spec: EntityMatchSpec, idx: np.ndarray) -> list[str]:
    weights = res.model.weights()
    names = [c.name for c in spec.comparisons]
    level_names = [c.level_names() for c in spec.comparisons]
    out = []
    for i in idx:
        ev = {}
        for c, name in enumerate(names):
            lv = int(res.levels[name][i])
            if lv >= 0:
                ev[name] = [level_names[c][lv], round(float(weights[c][lv]), 2)]
        out.append(json.dumps(ev, ensure_ascii=False))
    return out


def _pair_index(res: Resolution, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Position of each (a, b) in the candidate pairs, -1 where the pair was not compared."""
    n = res.n_records
    codes = res.pairs.left * n + res.pairs.right
    want = np.minimum(a, b) * n + np.maximum(a, b)
    pos = np.searchsorted(codes, want)
    pos = np.clip(pos, 0, max(len(codes) - 1, 0))
    found = (len(codes) > 0) & (codes[pos] == want) if len(codes) else np.zeros(len(want), bool)
    return np.where(found, pos, -1)


def _update_crosswalk(wh: Warehouse, table: sa.Table, current: pd.DataFrame, run_id: str, at: datetime) -> int:
    """SCD2: close rows whose golden ID changed or whose record is gone; insert the new rows."""
    # Lined up by record key rather than merged: an outer merge of a million keys was the peak of the step.
    prev = _current_map(wh, table)
    old = current["record_key"].map(prev).to_numpy()
    known = pd.notna(old)
    changed = known & (old != current["golden_id"].to_numpy())
    new = ~known
    gone = ~prev.index.isin(current["record_key"])
    close = [*current["record_key"].to_numpy()[changed], *prev.index[gone]]
    rows = current[changed | new].assign(valid_from=pd.Timestamp(at), valid_to=pd.NaT, run_id=run_id)
    with wh.engine.begin() as conn:
        for i in range(0, len(close), 500):
            conn.execute(sa.update(table).where(table.c.valid_to.is_(None), table.c.record_key.in_(close[i:i + 500]))
                         .values(valid_to=at))
        wh.bulk_insert(conn, table, rows[["record_key", "source", "source_record_id", "golden_id", "valid_from", "run_id"]])
    return len(close) + int(new.sum())


def _register_ids(wh: Warehouse, entity: str, events: list[dict], run_id: str, at: datetime) -> None:
    wh.ensure_tables([ID_REGISTRY, ID_EVENTS])
    with wh.engine.begin() as conn:
        created = [e for e in events if e["event"] == "created"]
        if created:
            wh.bulk_insert(conn, ID_REGISTRY, pd.DataFrame({
                "golden_id": [e["golden_id"] for e in created], "entity": entity, "status": "active", "merged_into": None,
                "created_at": pd.Timestamp(at), "updated_at": pd.Timestamp(at), "created_run": run_id}))
        for e in events:
            if e["event"] == "merged":
                conn.execute(sa.update(ID_REGISTRY).where(ID_REGISTRY.c.golden_id == e["golden_id"])
                             .values(status="merged", merged_into=e["into"], updated_at=at))
        if events:
            wh.bulk_insert(conn, ID_EVENTS, pd.DataFrame({
                "at": pd.Timestamp(at), "run_id": run_id, "entity": entity, "event": [e["event"] for e in events],
                "golden_id": [e["golden_id"] for e in events], "into": [e["into"] for e in events]}))


def _next_seq(wh: Warehouse, entity: str) -> int:
    wh.ensure_tables([ID_REGISTRY])
    ids = wh.read_frame(sa.select(ID_REGISTRY.c.golden_id).where(ID_REGISTRY.c.entity == entity))
    return max((id_seq(i) for i in ids["golden_id"]), default=0) + 1


def _previous_match_rate(wh: Warehouse, entity: str) -> float | None:
    """The match rate of the last accepted run: a jump stays flagged until fixed or accepted."""
    wh.ensure_tables([MATCH_RUNS])
    row = wh.read_frame(sa.select(MATCH_RUNS.c.match_rate).where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.accepted)
                        .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    return float(row["match_rate"].iloc[0]) if len(row) else None


def accept_match_rate(wh: Warehouse, entity: str) -> float | None:
    """Accepts the latest run's match rate as the new reference (the change was legitimate)."""
    wh.ensure_tables([MATCH_RUNS])
    latest = wh.read_frame(sa.select(MATCH_RUNS.c.run_id, MATCH_RUNS.c.match_rate).where(MATCH_RUNS.c.entity == entity)
                           .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    if latest.empty:
        return None
    with wh.engine.begin() as conn:
        conn.execute(sa.update(MATCH_RUNS).where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.run_id == latest["run_id"].iloc[0])
                     .values(accepted=True))
    return float(latest["match_rate"].iloc[0])


def _lineage_rows(lineage: pd.DataFrame, ids: pd.Series, fields: list[str]) -> pd.DataFrame:
    lin = lineage.assign(golden_id=ids.reindex(lineage["cluster"]).to_numpy())
    if lin.empty:
        return pd.DataFrame(columns=["golden_id", "record_key", "fields", "rules"])
    # Fields per (golden ID, record) as a bit mask summed in C; the few distinct masks are then
    # spelled out once each. A Python join per group takes minutes on a million golden records.
    bit = {f: 1 << i for i, f in enumerate(fields)}
    lin = lin.assign(mask=lin["field"].map(bit).astype(np.int64))
    rule_of = dict(zip(lin["field"], lin["rule"]))
    grouped = lin.groupby(["golden_id", "record_key"], sort=True)["mask"].sum().reset_index()
    names = {m: [f for f in fields if m & bit[f]] for m in grouped["mask"].unique()}
    grouped["fields"] = grouped["mask"].map({m: ",".join(v) for m, v in names.items()})
    grouped["rules"] = grouped["mask"].map({m: ",".join(rule_of.get(f, "") for f in v) for m, v in names.items()})
    return grouped.drop(columns="mask")


def _persist(wh: Warehouse, entity: str, res: Resolution, spec: EntityMatchSpec, keys: np.ndarray, crosswalk: pd.DataFrame,
             cluster_ids: list[str], run_id: str, at: datetime, xw_table: sa.Table, started: float,
             match_rate: float, max_change: float) -> dict:
    rep_key = keys.__getitem__
    # Match edges: the pairs that joined records, with their evidence, for explanations.
    merges = res.clusters.merge_edges
    if merges:
        a = np.array([m[0] for m in merges])
        b = np.array([m[1] for m in merges])
        idx = _pair_index(res, a, b)
        evidence = _evidence(res, spec, np.where(idx >= 0, idx, 0))
        edges = pd.DataFrame({
            "entity": entity, "golden_id": [cluster_ids[res.labels[x]] for x in a],
            "record_a": [rep_key(x) for x in a], "record_b": [rep_key(x) for x in b],
            "probability": [m[2] for m in merges], "reason": [m[3] for m in merges],
            "evidence": [e if i >= 0 else "{}" for e, i in zip(evidence, idx)], "run_id": run_id})
    else:
        edges = pd.DataFrame(columns=["entity", "golden_id", "record_a", "record_b", "probability", "reason", "evidence", "run_id"])
    replace_table(wh, MATCH_EDGES, edges, where={"entity": entity})
    review = res.review
    idx = _pair_index(res, review["a"].to_numpy(), review["b"].to_numpy()) if len(review) else np.empty(0, int)
    cand = pd.DataFrame({
        "entity": entity, "record_a": [rep_key(x) for x in review["a"]], "record_b": [rep_key(x) for x in review["b"]],
        "probability": review["probability"].to_numpy(), "reason": review["reason"].to_numpy(),
        "evidence": _evidence(res, spec, np.where(idx >= 0, idx, 0)) if len(review) else [], "run_id": run_id})
    replace_table(wh, REVIEW_CANDIDATES, cand, where={"entity": entity})
    changes = _update_crosswalk(wh, xw_table, crosswalk, run_id, at)
    previous = _previous_match_rate(wh, entity)
    accepted = previous is None or abs(match_rate - previous) <= max_change
    seconds = time.monotonic() - started
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, MATCH_RUNS, pd.DataFrame([{
            "run_id": run_id, "entity": entity, "run_at": pd.Timestamp(at), "records": res.n_records,
            "clusters": res.n_clusters, "match_rate": match_rate, "candidate_pairs": res.stats["candidate_pairs"],
            "possible_pairs": res.stats["possible_pairs"], "review_pairs": len(review), "seconds": seconds,
            "accepted": accepted}]))
    return {"crosswalk_changes": changes, "previous_match_rate": previous, "seconds": round(seconds, 2)}


def resolve_accounts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.accounts
    accounts = apply_register(load_account_records(wh), wh)
    sig, codes = account_signatures(accounts)
    keys = pd.Index(accounts["record_key"].to_numpy(), dtype=object)
    dec = decisions(wh, "accounts")
    # Decisions name records; the resolution runs over signatures: a record's position is its signature's.
    must, cannot, unknown = _decision_links(dec, lambda k: np.where((i := keys.get_indexer(k)) >= 0, codes[i], -1))
    res = resolve(sig, spec, must_link=must, cannot_link=cannot, log=log)
    register_ids = int(accounts["register_id"].notna().sum())
    # The signatures did the matching: what follows needs the fields and the bookkeeping only.
    accounts = _only(accounts, set(ACCOUNT_FIELDS) | {"record_key", "source", "source_record_id", "record_ts"})
    labels = res.labels[codes] if len(codes) else np.empty(0, np.int64)
    ids = assign_ids(accounts["record_key"].to_numpy(), labels, _current_map(wh, ACCOUNT_CROSSWALK), PREFIX["accounts"],
                     _next_seq(wh, "accounts"))
    golden, lineage = survive(accounts, labels, ACCOUNT_FIELDS, cfg.survivorship["accounts"])
    gid = pd.Series(ids.cluster_ids)
    golden = golden.assign(golden_id=gid.to_numpy())
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    golden["sources"] = pd.Series(accounts["source"].to_numpy()).groupby(labels).agg(
        lambda s: ",".join(sorted(set(s)))).reindex(range(len(gid))).to_numpy()
    golden = golden.rename(columns={"company_base": "base_name"})
    golden["run_id"] = run_id
    _register_ids(wh, "accounts", ids.events, run_id, at)
    replace_table(wh, GOLDEN_ACCOUNTS, golden)
    replace_table(wh, ACCOUNT_LINEAGE, _lineage_rows(lineage, gid, ACCOUNT_FIELDS))  # multi-record clusters only
    crosswalk = pd.DataFrame({"record_key": accounts["record_key"], "source": accounts["source"],
                              "source_record_id": accounts["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    rep = sig["record_key"].to_numpy()
    rate = 1 - len(golden) / len(accounts) if len(accounts) else 0.0
    extra = _persist(wh, "accounts", res, spec, rep, crosswalk, ids.cluster_ids, run_id, at, ACCOUNT_CROSSWALK, started, rate,
                     cfg.max_match_rate_change)
    stats = {**res.stats, **extra, "records": len(accounts), "signatures": len(sig), "golden": len(golden),
             "decisions_applied": len(must) + len(cannot), "decisions_unknown_records": unknown,
             "register_ids": register_ids, "match_rate": rate}
    return GoldenResult("accounts", res, golden, crosswalk, ids.events, stats)


def _current_map(wh: Warehouse, table: sa.Table) -> pd.Series:
    """The current golden ID of each record, indexed by record key (a Series: about half the memory of a
    dict over a million records, and ``Series.map`` takes it as it is)."""
    wh.ensure_tables([table])
    df = wh.read_raw_sql(f"SELECT record_key, golden_id FROM {wh.qualified(table)} WHERE valid_to IS NULL")
    current = pd.Series(df["golden_id"].to_numpy(), index=pd.Index(df["record_key"].to_numpy(), dtype=object),
                        dtype=object)
    return current[~current.index.duplicated(keep="last")]


# What resolve_contacts needs of a person record besides the matching columns and the golden fields.
_CONTACT_BOOKKEEPING = {"record_key", "source", "source_record_id", "record_ts", "mailbox_is_name"}


def _spec_columns(spec: EntityMatchSpec) -> set[str]:
    """Every column the blocking rules, comparisons and links of a spec read."""
    cols = {alt for rule in spec.blocking for col in rule for alt in col.split("|")}
    cols |= {c for comp in spec.comparisons for c in comp.columns}
    return cols | set(spec.must_link) | set(spec.name_swap or ())


def _only(frame: pd.DataFrame, columns: set[str]) -> pd.DataFrame:
    """The frame with only these columns; the others' values are freed (no view keeps them alive)."""
    return frame[[c for c in frame.columns if c in columns]].copy()


def resolve_contacts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.persons
    persons = load_person_records(wh, _spec_columns(spec) | set(CONTACT_FIELDS) | _CONTACT_BOOKKEEPING)
    keys = pd.Index(persons["record_key"].to_numpy(), dtype=object)
    dec = decisions(wh, "persons")
    must, cannot, unknown = _decision_links(dec, keys.get_indexer)
    res = resolve(persons, spec, must_link=must, cannot_link=cannot, log=log)
    # The matching keys have done their work: what follows needs the fields and the bookkeeping only.
    persons = _only(persons, set(CONTACT_FIELDS) | _CONTACT_BOOKKEEPING)
    labels = res.labels
    ids = assign_ids(persons["record_key"].to_numpy(), labels, _current_map(wh, PERSON_CROSSWALK), PREFIX["persons"],
                     _next_seq(wh, "persons"))
    golden, lineage = survive(persons, labels, CONTACT_FIELDS, cfg.survivorship["persons"])
    gid = pd.Series(ids.cluster_ids)
    golden = golden.rename(columns={"email_norm": "email"}).assign(golden_id=gid.to_numpy())
    golden["email"] = _one_contact_per_email(golden["email"], ids.cluster_ids)
    lineage["field"] = lineage["field"].replace({"email_norm": "email"})
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    grouped = pd.DataFrame({"l": labels, "s": persons["source"].to_numpy(), "ts": persons["record_ts"].to_numpy()}).groupby("l")
    golden["sources"] = grouped["s"].agg(lambda s: ",".join(sorted(set(s)))).reindex(range(len(gid))).to_numpy()
    golden["first_seen_at"] = grouped["ts"].min().reindex(range(len(gid))).to_numpy()
    golden["last_seen_at"] = grouped["ts"].max().reindex(range(len(gid))).to_numpy()
    golden["account_id"] = _account_of_contacts(wh, persons, labels, len(gid))
    verdicts = consent.current(load_consent_events(wh), pd.Series(labels, index=keys), len(gid))
    golden = pd.concat([golden, verdicts.set_index(golden.index)], axis=1)
    golden["run_id"] = run_id
    _register_ids(wh, "persons", ids.events, run_id, at)
    replace_table(wh, GOLDEN_CONTACTS, golden)
    replace_table(wh, CONTACT_LINEAGE, _lineage_rows(lineage, gid, [*CONTACT_FIELDS[:4], "email", *CONTACT_FIELDS[5:]]))
    crosswalk = pd.DataFrame({"record_key": persons["record_key"], "source": persons["source"],
                              "source_record_id": persons["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    extra = _persist(wh, "persons", res, spec, persons["record_key"].to_numpy(), crosswalk, ids.cluster_ids, run_id, at,
                     PERSON_CROSSWALK, started, res.match_rate, cfg.max_match_rate_change)
    stats = {**res.stats, **extra, "golden": len(golden), "match_rate": res.match_rate,
             "decisions_applied": len(must) + len(cannot),
             "decisions_unknown_records": unknown, "linked_to_account": int(golden["account_id"].notna().sum())}
    return GoldenResult("persons", res, golden, crosswalk, ids.events, stats)


def _one_contact_per_email(emails: pd.Series, cluster_ids: list[str]) -> pd.Series:
    """A shared mailbox a steward split between people stays with the oldest golden contact only."""
    frame = pd.DataFrame({"email": emails.to_numpy(), "seq": [id_seq(i) for i in cluster_ids]}, index=emails.index)
    dup = frame["email"].notna() & frame.duplicated("email", keep=False)
    if not dup.any():
        return emails
    keeper = frame[dup].sort_values("seq").drop_duplicates("email").index
    return emails.where(~dup | emails.index.isin(keeper), None)


def _account_of_contacts(wh: Warehouse, persons: pd.DataFrame, labels: np.ndarray, n: int) -> np.ndarray:
    """A contact belongs to the golden account its records' company mentions were matched to (the most frequent)."""
    accounts = _current_map(wh, ACCOUNT_CROSSWALK)
    mention = ("mention:" + persons["record_key"]).map(accounts)
    frame = pd.DataFrame({"l": labels, "a": mention.to_numpy(), "ts": persons["record_ts"].to_numpy()}).dropna(subset=["a"])
    if frame.empty:
        return np.array([None] * n, dtype=object)
    frame["votes"] = frame.groupby(["l", "a"])["a"].transform("size")
    best = frame.sort_values(["l", "votes", "ts"], ascending=[True, False, False]).drop_duplicates("l").set_index("l")["a"]
    return best.reindex(range(n)).astype(object).where(best.reindex(range(n)).notna(), None).to_numpy()


# ============================================================================ review queue and explanations

def build_review_queue(wh: Warehouse) -> pd.DataFrame:
    """Review-band pairs of the last run, minus the pairs a steward has decided, with both golden IDs."""
    wh.ensure_tables([REVIEW_CANDIDATES, REVIEW_QUEUE, PERSON_CROSSWALK, ACCOUNT_CROSSWALK, STEWARD_DECISIONS])
    cand = wh.read_frame(sa.select(REVIEW_CANDIDATES))
    decided = set()
    for entity in PREFIX:
        d = decisions(wh, entity)
        decided |= {(entity, *p) for p in d.get("pair", [])}
    if len(cand):
        pair = [tuple(sorted((a, b))) for a, b in zip(cand["record_a"], cand["record_b"])]
        cand = cand[[(e, *p) not in decided for e, p in zip(cand["entity"], pair)]].copy()
        persons, accounts = _current_map(wh, PERSON_CROSSWALK), _current_map(wh, ACCOUNT_CROSSWALK)
        lookup = {"persons": persons, "accounts": accounts}
        cand["golden_a"] = [lookup[e].get(k) for e, k in zip(cand["entity"], cand["record_a"])]
        cand["golden_b"] = [lookup[e].get(k) for e, k in zip(cand["entity"], cand["record_b"])]
        cand = cand.sort_values(["entity", "probability"], ascending=[True, False])
    replace_table(wh, REVIEW_QUEUE, cand)
    return cand


def explain(wh: Warehouse, entity: str, golden_id: str, masked: bool = True) -> dict:
    """Which pairs, with which field evidence, merged the records of a golden ID (personal values masked)."""
    table = {"persons": PERSON_CROSSWALK, "accounts": ACCOUNT_CROSSWALK}[entity]
    members = wh.read_frame(sa.select(table.c.record_key, table.c.source).where(table.c.golden_id == golden_id,
                                                                                 table.c.valid_to.is_(None)))
    edges = wh.read_frame(sa.select(MATCH_EDGES).where(MATCH_EDGES.c.entity == entity, MATCH_EDGES.c.golden_id == golden_id)
                          .order_by(MATCH_EDGES.c.probability.desc()))
    records = _records_for(wh, entity, members["record_key"].tolist(), masked)
    return {
        "golden_id": golden_id, "entity": entity, "records": records,
        "merges": [{"record_a": r.record_a, "record_b": r.record_b, "probability": round(float(r.probability), 6),
                    "reason": r.reason, "evidence": json.loads(r.evidence)} for r in edges.itertuples()],
    }


def _records_for(wh: Warehouse, entity: str, keys: list[str], masked: bool) -> list[dict]:
    if not keys:
        return []
    table = PERSON_RECORDS if entity == "persons" else ACCOUNT_RECORDS
    cols = (["record_key", "source", "first_name", "last_name", "email_norm", "company_name", "postal_code", "city"]
            if entity == "persons" else ["record_key", "source", "company_name", "legal_form", "postal_code", "city", "domain"])
    df = wh.read_frame(sa.select(*(table.c[c] for c in cols)).where(table.c.record_key.in_(keys[:200])))
    contact = ENTITIES["contact"]
    out = []
    for row in df.to_dict("records"):
        if masked:
            for c in ("first_name", "last_name"):
                if c in row:
                    row[c] = mask_value(row[c], "name")
            if "email_norm" in row:
                row["email_norm"] = mask_value(row["email_norm"], contact.field("email").pii)
        out.append({k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in row.items()})
    return out


def ensure_golden_tables(wh: Warehouse) -> None:
    wh.ensure_tables(list(GOLDEN_TABLES))


__all__ = ["build_person_records", "build_account_records", "resolve_accounts", "resolve_contacts", "build_review_queue",
           "explain", "record_decision", "raw_table"]


def refresh_golden_consent(wh: Warehouse) -> int:
    """Re-applies the consent ledger to the golden contacts between golden builds (a consent change
    or objection arriving by webhook takes effect at once); returns how many contacts changed."""
    if not tables_present(wh, [GOLDEN_CONTACTS, PERSON_CROSSWALK]):
        return 0
    xw = PERSON_CROSSWALK
    members = wh.read_frame(sa.select(xw.c.record_key, xw.c.golden_id).where(xw.c.valid_to.is_(None)))
    ids = pd.Index(sorted(set(members["golden_id"])))
    verdicts = consent.current(load_consent_events(wh), dict(zip(members["record_key"],
                                                                 ids.get_indexer(members["golden_id"]))), len(ids))
    verdicts["golden_id"] = ids.to_numpy()
    cols = [c for c in verdicts.columns if c != "golden_id"]
    g = GOLDEN_CONTACTS
    current = wh.read_frame(sa.select(g.c.golden_id, *[g.c[c] for c in cols]))
    merged = current.merge(verdicts, on="golden_id", suffixes=("", "_new"))
    changed = merged[np.logical_or.reduce([merged[c].fillna("") != merged[f"{c}_new"].fillna("") for c in cols])]
    with wh.engine.begin() as conn:
        for row in changed.itertuples(index=False):
            conn.execute(sa.update(g).where(g.c.golden_id == row.golden_id).values(
                **{c: getattr(row, f"{c}_new") for c in cols}))
    return len(changed)
