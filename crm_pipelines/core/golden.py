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
from .matching.ids import IdAssignment, assign_ids, id_seq
from .matching.records import (ACCOUNT_SOURCES, MENTION_PREFIX, PERSON_SOURCES, SIGNATURE_COLUMNS, account_records,
                               account_signatures, person_records)
from .matching.resolve import Resolution, resolve
from .matching.settings import EntityMatchSpec, MatchingConfig
from .matching.survivorship import survive
from .model import ENTITIES
from .privacy import consent
from .privacy.identity import IdentityHasher
from .privacy.suppression import Screen
from .schema import (ACCOUNT_CROSSWALK, ACCOUNT_LINEAGE, ACCOUNT_RECORDS, CONSENT_EVENTS, CONTACT_LINEAGE, CROSSWALK,
                     GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, GOLDEN_TABLES, ID_EVENTS, ID_REGISTRY, MATCH_EDGES, MATCH_RUNS,
                     PERSON_CROSSWALK, PERSON_RECORDS, REGISTER_CACHE, REVIEW_CANDIDATES, REVIEW_QUEUE,
                     STEWARD_DECISIONS, raw_table)
from .warehouse import KeyRange, ValuePool, Warehouse, tables_present

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


def _read_all(wh: Warehouse, table: sa.Table, columns: set[str] | None = None) -> pd.DataFrame:
    """The table's rows in record-key order; ``columns``: only these (in the table's order)."""
    return _read_columns(wh, table, [c for c in table.columns.keys() if columns is None or c in columns])


def _read_columns(wh: Warehouse, table: sa.Table, columns: list[str]) -> pd.DataFrame:
    """These columns of the table in record-key order, None for missing (COPY on PostgreSQL)."""
    return wh.read_raw_sql(f"SELECT {', '.join(wh.quote(c) for c in columns)} FROM {wh.qualified(table)} "
                           "ORDER BY record_key", types={c: table.c[c].type for c in columns})


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
    wh.ensure_tables([PERSON_RECORDS])
    stored = list(PERSON_RECORDS.columns.keys())
    wanted = set(stored) | set(_DERIVED_PERSON_COLUMNS) if columns is None else set(columns)
    inputs = {c for d, needs in _DERIVED_PERSON_COLUMNS.items() if d in wanted for c in needs}
    read = [c for c in stored if c in wanted | inputs]
    df = _read_columns(wh, PERSON_RECORDS, read)
    if "is_free_mail" in df.columns:
        df["is_free_mail"] = df["is_free_mail"].fillna(False).astype(bool)  # SQLite returns 0/1
    derived = [d for d in _DERIVED_PERSON_COLUMNS if d in wanted]
    if derived:
        # A slice of records at a time: the string work makes and drops several strings per record,
        # and over 13 million records at once that garbage stayed behind as the process's memory.
        parts: dict[str, list[np.ndarray]] = {d: [] for d in derived}
        pools = {d: ValuePool() for d in derived}
        for start in range(0, len(df), _DERIVE_ROWS):
            for name, values in _person_keys(df.iloc[start:start + _DERIVE_ROWS], derived).items():
                parts[name].append(pools[name].share(values) if values.dtype == object else values)
        for name in derived:
            df[name] = np.concatenate(parts.pop(name)) if len(df) else np.empty(0, dtype=object)
    if "record_ts" in df.columns:
        df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    return df[[c for c in df.columns if c in wanted]]


_DERIVE_ROWS = 250_000


def _person_keys(df: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """The derived blocking keys ``names`` of some person records (see _DERIVED_PERSON_COLUMNS)."""
    from .matching.engine import name_mailboxes

    out: dict[str, np.ndarray] = {}
    local = df["email_norm"].str.rsplit("@", n=1).str[0] if {"email_local", "mailbox_is_name"} & set(names) else None
    for name in names:
        if name == "email_local":
            values = local
        elif name == "company_domain":
            values = _company_domain(df)
        elif name == "name_kp_pair":
            values = [("-".join(sorted((f, l))) if f and l else None) for f, l in zip(df["first_kp"], df["last_kp"])]
        elif name == "first_initial":
            values = df["first_key"].str[:1]
        elif name == "phone_any":
            values = df["mobile_e164"].where(df["mobile_e164"].notna(), df["phone_e164"])
        elif name == "company_first_token":
            values = df["org_key"].str.split(" ").str[0]
        else:  # mailbox_is_name
            out[name] = name_mailboxes(local, df["first_key"], df["last_key"])
            continue
        out[name] = np.asarray(pd.Series(values, dtype=object), dtype=object)
    return out


def load_consent_events(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [CONSENT_EVENTS]):
        return pd.DataFrame(columns=consent.EVENT_COLUMNS)
    df = wh.read_select(sa.select(CONSENT_EVENTS))
    df["occurred_at"] = pd.to_datetime(df["occurred_at"], utc=True)
    df["double_opt_in_at"] = pd.to_datetime(df["double_opt_in_at"], utc=True)
    return df


def build_consent_events(wh: Warehouse, hasher: IdentityHasher) -> pd.DataFrame:
    wh.ensure_tables([CONSENT_EVENTS])
    raw = {s: wh.read_select(sa.select(raw_table(s, ENTITIES["consent_event"]))) for s in CONSENT_SOURCES
           if tables_present(wh, [raw_table(s, ENTITIES["consent_event"])])}
    pr = PERSON_RECORDS
    person_keys = sa.select(pr.c.record_key, pr.c.source, pr.c.crm_contact_id, pr.c.email_norm)
    persons = wh.read_select(person_keys) if tables_present(wh, [pr]) \
        else pd.DataFrame(columns=[c.name for c in person_keys.selected_columns])
    events = consent.build_events(raw, persons, hasher)
    replace_table(wh, CONSENT_EVENTS, events)
    return events


def load_account_records(wh: Warehouse, columns: set[str] | None = None) -> pd.DataFrame:
    """The account records in record-key order; ``columns``: only these (every column of 13 million
    records at 10 million contacts would not fit beside the matching)."""
    wh.ensure_tables([ACCOUNT_RECORDS])
    df = _read_all(wh, ACCOUNT_RECORDS, columns)
    if "record_ts" in df.columns:
        df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    if "is_mention" in df.columns:
        df["is_mention"] = df["is_mention"].astype(bool)
    return df


# What register enrichment reads of an account record (see core/enrichment.enrich).
ENRICHMENT_COLUMNS = {"record_key", "company_name", "company_key", "city", "city_key", "register_number"}


def apply_register(accounts: pd.DataFrame, wh: Warehouse) -> pd.DataFrame:
    """Register court and number from the enrichment cache, by (name key, city key)."""
    wh.ensure_tables([REGISTER_CACHE])
    cache = wh.read_frame(sa.select(REGISTER_CACHE.c.company_key, REGISTER_CACHE.c.city_key, REGISTER_CACHE.c.register_court,
                                    REGISTER_CACHE.c.register_number).where(REGISTER_CACHE.c.status == "found"))
    if cache.empty:
        return accounts
    cache = cache.drop_duplicates(["company_key", "city_key"])
    joined = accounts[["company_key", "city_key"]].merge(cache, on=["company_key", "city_key"], how="left")
    out = accounts.copy(deep=False)  # new columns only: a deep copy of every column was a second frame
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
    events: list[dict]  # merged and split IDs (the created ones are counted in id_events)
    stats: dict = field(default_factory=dict)
    id_events: dict[str, int] = field(default_factory=dict)  # created / merged / split -> how many


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


def _register_ids(wh: Warehouse, entity: str, ids: IdAssignment, run_id: str, at: datetime) -> None:
    wh.ensure_tables([ID_REGISTRY, ID_EVENTS])
    events, created = ids.events, ids.created
    with wh.engine.begin() as conn:
        if created:
            wh.bulk_insert(conn, ID_REGISTRY, pd.DataFrame({
                "golden_id": created, "entity": entity, "status": "active", "merged_into": None,
                "created_at": pd.Timestamp(at), "updated_at": pd.Timestamp(at), "created_run": run_id}))
        for e in events:
            if e["event"] == "merged":
                conn.execute(sa.update(ID_REGISTRY).where(ID_REGISTRY.c.golden_id == e["golden_id"])
                             .values(status="merged", merged_into=e["into"], updated_at=at))
        if events or created:
            wh.bulk_insert(conn, ID_EVENTS, pd.DataFrame({
                "at": pd.Timestamp(at), "run_id": run_id, "entity": entity,
                "event": ["created"] * len(created) + [e["event"] for e in events],
                "golden_id": [*created, *(e["golden_id"] for e in events)],
                "into": [None] * len(created) + [e["into"] for e in events]}))


def _next_seq(wh: Warehouse, entity: str) -> int:
    wh.ensure_tables([ID_REGISTRY])
    ids = wh.read_select(sa.select(ID_REGISTRY.c.golden_id).where(ID_REGISTRY.c.entity == entity))
    return max((id_seq(i) for i in ids["golden_id"]), default=0) + 1


def _reference_run(wh: Warehouse, entity: str) -> tuple[float, int] | None:
    """Match rate and record count of the last accepted run with records: a jump stays flagged until fixed or
    accepted. A run over nothing (an empty first night) has a rate of 0 that says nothing: never the reference."""
    wh.ensure_tables([MATCH_RUNS])
    row = wh.read_frame(sa.select(MATCH_RUNS.c.match_rate, MATCH_RUNS.c.records)
                        .where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.accepted, MATCH_RUNS.c.records > 0)
                        .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    return (float(row["match_rate"].iloc[0]), int(row["records"].iloc[0])) if len(row) else None


def accept_match_rate(wh: Warehouse, entity: str) -> float | None:
    """Accepts the latest run's match rate as the new reference (the change was legitimate); runs over no
    records are not candidates."""
    wh.ensure_tables([MATCH_RUNS])
    latest = wh.read_frame(sa.select(MATCH_RUNS.c.run_id, MATCH_RUNS.c.match_rate).where(MATCH_RUNS.c.entity == entity,
                                                                                          MATCH_RUNS.c.records > 0)
                           .order_by(MATCH_RUNS.c.run_at.desc()).limit(1))
    if latest.empty:
        return None
    with wh.engine.begin() as conn:
        conn.execute(sa.update(MATCH_RUNS).where(MATCH_RUNS.c.entity == entity, MATCH_RUNS.c.run_id == latest["run_id"].iloc[0])
                     .values(accepted=True))
    return float(latest["match_rate"].iloc[0])


def _lineage_rows(lineage: pd.DataFrame, ids: pd.Series, fields: list[str]) -> pd.DataFrame:
    """One row per (golden ID, contributing record) with the fields it supplied and their rules.

    The fields of a pair are a bit mask OR-ed over integer codes of (cluster, record): at 10 million
    contacts the lineage has tens of millions of rows, and grouping them by two string columns held
    more memory than the golden records themselves. The few distinct masks are spelled out once each."""
    if lineage.empty:
        return pd.DataFrame(columns=["golden_id", "record_key", "fields", "rules"])
    bit = {f: 1 << i for i, f in enumerate(fields)}
    firsts = lineage.drop_duplicates("field")
    rule_of = dict(zip(firsts["field"], firsts["rule"]))
    cluster = lineage["cluster"].to_numpy(np.int64)
    record, keys = pd.factorize(lineage["record_key"].to_numpy(dtype=object))
    pair = cluster * max(len(keys), 1) + record
    order = np.argsort(pair, kind="stable")
    sorted_pair = pair[order]
    starts = np.flatnonzero(np.r_[True, sorted_pair[1:] != sorted_pair[:-1]])
    masks = np.bitwise_or.reduceat(lineage["field"].map(bit).to_numpy(np.int64)[order], starts)
    first = order[starts]
    del pair, order, sorted_pair
    # In cluster order (a table has no order of its own; sorting by the two strings cost as much again).
    grouped = pd.DataFrame({"golden_id": ids.reindex(cluster[first]).to_numpy(),
                            "record_key": np.asarray(keys, dtype=object)[record[first]], "mask": masks})
    names = {m: [f for f in fields if m & bit[f]] for m in pd.unique(grouped["mask"])}
    grouped["fields"] = grouped["mask"].map({m: ",".join(v) for m, v in names.items()})
    grouped["rules"] = grouped["mask"].map({m: ",".join(rule_of.get(f, "") for f in v) for m, v in names.items()})
    return grouped.drop(columns="mask")


_EDGE_ROWS = 200_000


def _persist(wh: Warehouse, entity: str, res: Resolution, spec: EntityMatchSpec, keys: np.ndarray, crosswalk: pd.DataFrame,
             cluster_ids: list[str], run_id: str, at: datetime, xw_table: sa.Table, started: float,
             match_rate: float, max_change: float, max_growth: float) -> dict:
    rep_key = keys.__getitem__
    # Match edges: the pairs that joined records, with their evidence, for explanations. Written a
    # slice at a time in one transaction: the evidence of millions of merges as text at once was the
    # largest thing a 10-million-contact golden step held at its end.
    merges = res.clusters.merge_edges
    wh.ensure_tables([MATCH_EDGES])
    with wh.engine.begin() as conn:
        wh.delete_where(conn, MATCH_EDGES, entity=entity)
        for start in range(0, len(merges), _EDGE_ROWS):
            part = merges[start:start + _EDGE_ROWS]
            a = np.array([m[0] for m in part])
            b = np.array([m[1] for m in part])
            idx = _pair_index(res, a, b)
            evidence = _evidence(res, spec, np.where(idx >= 0, idx, 0))
            wh.bulk_insert(conn, MATCH_EDGES, pd.DataFrame({
                "entity": entity, "golden_id": [cluster_ids[res.labels[x]] for x in a],
                "record_a": [rep_key(x) for x in a], "record_b": [rep_key(x) for x in b],
                "probability": [m[2] for m in part], "reason": [m[3] for m in part],
                "evidence": [e if i >= 0 else "{}" for e, i in zip(evidence, idx)], "run_id": run_id}))
    review = res.review
    idx = _pair_index(res, review["a"].to_numpy(), review["b"].to_numpy()) if len(review) else np.empty(0, int)
    cand = pd.DataFrame({
        "entity": entity, "record_a": [rep_key(x) for x in review["a"]], "record_b": [rep_key(x) for x in review["b"]],
        "probability": review["probability"].to_numpy(), "reason": review["reason"].to_numpy(),
        "evidence": _evidence(res, spec, np.where(idx >= 0, idx, 0)) if len(review) else [], "run_id": run_id})
    replace_table(wh, REVIEW_CANDIDATES, cand, where={"entity": entity})
    changes = _update_crosswalk(wh, xw_table, crosswalk, run_id, at)
    reference = _reference_run(wh, entity)
    # The first nights (or a new source) grow the record base by half or more at a time, and the share of
    # merged records rises with it: that is growth, not a broken mapping. Past max_growth the new rate
    # becomes the reference; the jump check compares runs over a comparable base.
    grew = reference is not None and res.n_records > reference[1] * (1 + max_growth)
    previous = None if reference is None or grew else reference[0]
    accepted = res.n_records > 0 and (previous is None or abs(match_rate - previous) <= max_change)
    seconds = time.monotonic() - started
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, MATCH_RUNS, pd.DataFrame([{
            "run_id": run_id, "entity": entity, "run_at": pd.Timestamp(at), "records": res.n_records,
            "clusters": res.n_clusters, "match_rate": match_rate, "candidate_pairs": res.stats["candidate_pairs"],
            "possible_pairs": res.stats["possible_pairs"], "review_pairs": len(review), "seconds": seconds,
            "accepted": accepted}]))
    return {"crosswalk_changes": changes, "previous_match_rate": previous, "seconds": round(seconds, 2),
            "reference_records": reference[1] if reference else 0, "record_base_grew": grew}


def resolve_accounts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.accounts
    # The records are read twice: the signature columns for the matching, then, once those are freed,
    # the golden fields. Held together they were the step's peak (see resolve_contacts).
    accounts = apply_register(load_account_records(wh, _ACCOUNT_MATCHING_COLUMNS), wh)
    sig, codes = account_signatures(accounts)
    keys = pd.Index(accounts["record_key"].to_numpy(), dtype=object)
    dec = decisions(wh, "accounts")
    # Decisions name records; the resolution runs over signatures: a record's position is its signature's.
    must, cannot, unknown = _decision_links(dec, lambda k: np.where((i := keys.get_indexer(k)) >= 0, codes[i], -1))
    register_ids = int(accounts["register_id"].notna().sum())
    read_order = _key_digest(keys)
    accounts = keys = None  # freed before the resolution
    res = resolve(sig, spec, must_link=must, cannot_link=cannot, log=log)
    rep = sig["record_key"].to_numpy()  # a signature's record, for the match edges
    n_signatures = len(sig)
    del sig
    accounts = apply_register(load_account_records(wh, _ACCOUNT_GOLDEN_COLUMNS), wh)
    _check_same_records(read_order, accounts["record_key"], ACCOUNT_RECORDS)
    accounts = accounts.drop(columns=[c for c in ("company_key", "city_key", "register_id") if c in accounts.columns])
    labels = res.labels[codes] if len(codes) else np.empty(0, np.int64)
    ids = assign_ids(accounts["record_key"].to_numpy(), labels, _current_map(wh, ACCOUNT_CROSSWALK), PREFIX["accounts"],
                     _next_seq(wh, "accounts"))
    golden, lineage = survive(accounts, labels, ACCOUNT_FIELDS, cfg.survivorship["accounts"])
    gid = pd.Series(ids.cluster_ids)
    golden = golden.assign(golden_id=gid.to_numpy())
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    golden["sources"] = _sources_per_cluster(accounts["source"].to_numpy(), labels, len(gid))
    golden = golden.rename(columns={"company_base": "base_name"})
    golden["run_id"] = run_id
    _register_ids(wh, "accounts", ids, run_id, at)
    replace_table(wh, GOLDEN_ACCOUNTS, golden)
    replace_table(wh, ACCOUNT_LINEAGE, _lineage_rows(lineage, gid, ACCOUNT_FIELDS))  # multi-record clusters only
    crosswalk = pd.DataFrame({"record_key": accounts["record_key"], "source": accounts["source"],
                              "source_record_id": accounts["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    rate = 1 - len(golden) / len(accounts) if len(accounts) else 0.0
    extra = _persist(wh, "accounts", res, spec, rep, crosswalk, ids.cluster_ids, run_id, at, ACCOUNT_CROSSWALK, started, rate,
                     cfg.max_match_rate_change, cfg.max_record_growth)
    stats = {**res.stats, **extra, "records": len(accounts), "signatures": n_signatures, "golden": len(golden),
             "decisions_applied": len(must) + len(cannot), "decisions_unknown_records": unknown,
             "register_ids": register_ids, "match_rate": rate}
    return GoldenResult("accounts", res, golden, crosswalk, ids.events, stats, ids.event_counts())


def _current_map(wh: Warehouse, table: sa.Table, named_in: sa.Table | None = None) -> pd.Series:
    """The current golden ID of each record, indexed by record key (a Series: about half the memory of a
    dict over a million records, and ``Series.map`` takes it as it is). ``named_in``: only the records
    a pair of that table (``record_a``, ``record_b``) names, selected in the database."""
    wh.ensure_tables([table])
    named = "" if named_in is None else wh.qualified(named_in)
    only = f" AND record_key IN (SELECT record_a FROM {named} UNION SELECT record_b FROM {named})" if named else ""
    df = wh.read_raw_sql(f"SELECT record_key, golden_id FROM {wh.qualified(table)} WHERE valid_to IS NULL{only}",
                         types={"record_key": table.c.record_key.type, "golden_id": table.c.golden_id.type})
    current = pd.Series(df["golden_id"].to_numpy(), index=pd.Index(df["record_key"].to_numpy(), dtype=object),
                        dtype=object)
    return current[~current.index.duplicated(keep="last")]


# What the golden steps need of a record besides the golden fields, once the matching is done.
_BOOKKEEPING = {"record_key", "source", "source_record_id", "record_ts"}
# resolve_accounts: what the signatures and the register lookup read; then the golden fields, with the
# (name, city) keys the register cache is looked up by.
_ACCOUNT_MATCHING_COLUMNS = set(SIGNATURE_COLUMNS) | {"record_key", "source", "register_court", "register_number"}
_ACCOUNT_GOLDEN_COLUMNS = set(ACCOUNT_FIELDS) | _BOOKKEEPING | {"company_key", "city_key"}


def _key_digest(keys) -> np.ndarray:
    """A 64-bit hash per record key: enough to tell that a second read returned the same records in
    the same order, at an eighth of the keys' memory."""
    return pd.util.hash_array(np.asarray(keys, dtype=object))


def _check_same_records(digest: np.ndarray, keys: pd.Series, table: sa.Table) -> None:
    if len(digest) != len(keys) or not np.array_equal(digest, _key_digest(keys)):
        raise RuntimeError(f"{table.schema}.{table.name} changed while the golden step was reading it "
                           f"({len(digest):,} records at the first read, {len(keys):,} at the second): "
                           "another run rebuilt the records; materialise the golden step again")


def _spec_columns(spec: EntityMatchSpec) -> set[str]:
    """Every column the blocking rules, comparisons and links of a spec read."""
    cols = {alt for rule in spec.blocking for col in rule for alt in col.split("|")}
    cols |= {c for comp in spec.comparisons for c in comp.columns}
    return cols | set(spec.must_link) | set(spec.name_swap or ())


def resolve_contacts(wh: Warehouse, cfg: MatchingConfig, run_id: str, log: Log | None = None) -> GoldenResult:
    started = time.monotonic()
    at = now()
    spec = cfg.persons
    # The records are read twice: the matching columns (keys, phonetic codes, e-mails, phones), and,
    # once the matching is done and they are freed, the golden fields. Read together, the 13 million
    # records of 10 million contacts held both sets at once, and that was the step's peak.
    matching = load_person_records(wh, _spec_columns(spec) | {"record_key", "mailbox_is_name"})
    dec = decisions(wh, "persons")
    must, cannot, unknown = _decision_links(dec, pd.Index(matching["record_key"].to_numpy(), dtype=object).get_indexer)
    read_order = _key_digest(matching["record_key"])
    matching = matching.drop(columns="record_key")
    res = resolve(matching, spec, must_link=must, cannot_link=cannot, log=log)
    del matching
    persons = load_person_records(wh, set(CONTACT_FIELDS) | _BOOKKEEPING)
    _check_same_records(read_order, persons["record_key"], PERSON_RECORDS)
    keys = pd.Index(persons["record_key"].to_numpy(), dtype=object)
    labels = res.labels
    ids = assign_ids(persons["record_key"].to_numpy(), labels, _current_map(wh, PERSON_CROSSWALK), PREFIX["persons"],
                     _next_seq(wh, "persons"))
    golden, lineage = survive(persons, labels, CONTACT_FIELDS, cfg.survivorship["persons"])
    # The fields live on in the golden records: the records' own arrays (and the values no golden
    # record took) are freed for what follows, which needs the bookkeeping only.
    persons = persons[[c for c in persons.columns if c in _BOOKKEEPING]].copy()
    gid = pd.Series(ids.cluster_ids)
    golden = golden.rename(columns={"email_norm": "email"}).assign(golden_id=gid.to_numpy())
    golden["email"] = _one_contact_per_email(golden["email"], ids.cluster_ids)
    lineage["field"] = lineage["field"].replace({"email_norm": "email"})
    sizes = np.bincount(labels, minlength=len(gid)) if len(labels) else np.zeros(0, int)
    golden["record_count"] = sizes
    grouped = pd.DataFrame({"l": labels, "ts": persons["record_ts"].to_numpy()}).groupby("l")
    golden["sources"] = _sources_per_cluster(persons["source"].to_numpy(), labels, len(gid))
    golden["first_seen_at"] = grouped["ts"].min().reindex(range(len(gid))).to_numpy()
    golden["last_seen_at"] = grouped["ts"].max().reindex(range(len(gid))).to_numpy()
    golden["account_id"] = _account_of_contacts(wh, persons, labels, len(gid))
    verdicts = consent.current(load_consent_events(wh), pd.Series(labels, index=keys), len(gid))
    for column in verdicts.columns:  # column by column: a concat copied every golden column once more
        golden[column] = verdicts[column].to_numpy()
    golden["run_id"] = run_id
    _register_ids(wh, "persons", ids, run_id, at)
    replace_table(wh, GOLDEN_CONTACTS, golden)
    replace_table(wh, CONTACT_LINEAGE, _lineage_rows(lineage, gid, [*CONTACT_FIELDS[:4], "email", *CONTACT_FIELDS[5:]]))
    crosswalk = pd.DataFrame({"record_key": persons["record_key"], "source": persons["source"],
                              "source_record_id": persons["source_record_id"], "golden_id": gid.to_numpy()[labels]})
    extra = _persist(wh, "persons", res, spec, persons["record_key"].to_numpy(), crosswalk, ids.cluster_ids, run_id, at,
                     PERSON_CROSSWALK, started, res.match_rate, cfg.max_match_rate_change,
                     cfg.max_record_growth)
    stats = {**res.stats, **extra, "golden": len(golden), "match_rate": res.match_rate,
             "decisions_applied": len(must) + len(cannot),
             "decisions_unknown_records": unknown, "linked_to_account": int(golden["account_id"].notna().sum())}
    return GoldenResult("persons", res, golden, crosswalk, ids.events, stats, ids.event_counts())


def _sources_per_cluster(source: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per cluster its records' distinct sources, sorted and joined by commas (None for a cluster
    without records). A set of sources is a bit mask (there are a handful of sources), so the
    strings are made once per distinct set, not once per golden record as a groupby lambda did."""
    codes, names = pd.factorize(source, sort=True)
    if len(names) > 62 or (codes < 0).any():  # more sources than bits, or a record without one
        joined = pd.Series(source).groupby(labels).agg(lambda s: ",".join(sorted(set(s))))
        return joined.reindex(range(n)).to_numpy(dtype=object, na_value=None)
    masks = np.zeros(n, dtype=np.int64)
    np.bitwise_or.at(masks, labels, np.left_shift(1, codes.astype(np.int64)))
    distinct, which = np.unique(masks, return_inverse=True)
    text = np.array([",".join(name for i, name in enumerate(names) if int(m) >> i & 1) or None for m in distinct],
                    dtype=object)
    return text[which]


def _one_contact_per_email(emails: pd.Series, cluster_ids: list[str]) -> pd.Series:
    """A shared mailbox a steward split between people stays with the oldest golden contact only."""
    frame = pd.DataFrame({"email": emails.to_numpy(), "seq": [id_seq(i) for i in cluster_ids]}, index=emails.index)
    dup = frame["email"].notna() & frame.duplicated("email", keep=False)
    if not dup.any():
        return emails
    keeper = frame[dup].sort_values("seq").drop_duplicates("email").index
    return emails.where(~dup | emails.index.isin(keeper), None)


# SQL: the current account-crosswalk row ``a`` of the company mention of person record ``p``.
_MENTION_OF_P = f"a.record_key = '{MENTION_PREFIX}' || p.record_key AND a.valid_to IS NULL"


def _mention_accounts(wh: Warehouse, persons: pd.DataFrame) -> np.ndarray:
    """Per person record (``persons`` in record-key order): the current golden account of its company
    mention, None where it has none. Joined in the database: a map of every account record key plus a
    "mention:" key per person record came to gigabytes at 10 million contacts. A crosswalk holding
    two current rows for one record (never written so, but not enforced) falls back to the map."""
    wh.ensure_tables([ACCOUNT_CROSSWALK, PERSON_RECORDS])
    found = wh.read_raw_sql(
        f"SELECT a.golden_id FROM {wh.qualified(PERSON_RECORDS)} p LEFT JOIN {wh.qualified(ACCOUNT_CROSSWALK)} a "
        f"ON {_MENTION_OF_P} ORDER BY p.record_key", types={"golden_id": ACCOUNT_CROSSWALK.c.golden_id.type})["golden_id"]
    if len(found) != len(persons):
        found = (MENTION_PREFIX + persons["record_key"]).map(_current_map(wh, ACCOUNT_CROSSWALK))
    return found.to_numpy(dtype=object, na_value=None)


def _account_of_contacts(wh: Warehouse, persons: pd.DataFrame, labels: np.ndarray, n: int) -> np.ndarray:
    """A contact belongs to the golden account its records' company mentions were matched to (the most frequent)."""
    mention = _mention_accounts(wh, persons)
    frame = pd.DataFrame({"l": labels, "a": mention, "ts": persons["record_ts"].to_numpy()}).dropna(subset=["a"])
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


# ============================================================================ review queue and explanations

def build_review_queue(wh: Warehouse) -> pd.DataFrame:
    """Review-band pairs of the last run, minus the pairs a steward has decided, with both golden IDs."""
    wh.ensure_tables([REVIEW_CANDIDATES, REVIEW_QUEUE, PERSON_CROSSWALK, ACCOUNT_CROSSWALK, STEWARD_DECISIONS])
    cand = wh.read_select(sa.select(REVIEW_CANDIDATES))
    decided = set()
    for entity in PREFIX:
        d = decisions(wh, entity)
        decided |= {(entity, *p) for p in d.get("pair", [])}
    if len(cand):
        pair = [tuple(sorted((a, b))) for a, b in zip(cand["record_a"], cand["record_b"])]
        cand = cand[[(e, *p) not in decided for e, p in zip(cand["entity"], pair)]].copy()
        # Only the records the candidates name: two crosswalks of 13 million rows each are not read for them.
        persons = _current_map(wh, PERSON_CROSSWALK, REVIEW_CANDIDATES)
        accounts = _current_map(wh, ACCOUNT_CROSSWALK, REVIEW_CANDIDATES)
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

