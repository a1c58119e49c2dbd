"""The staging records the golden steps match: person and account records cleaned from the raw sources,
written and read back slice by slice, and the register data joined onto accounts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..cleaning.names import phonetic_pair
from ..platform.schema import ACCOUNT_RECORDS, PERSON_RECORDS, REGISTER_CACHE
from ..platform.frames import ValuePool
from ..platform.warehouse import KeyRange, Warehouse
from ..privacy_screen.suppression import Screen
from ..sources.roles import ACCOUNT_SOURCES, PERSON_SOURCES
from .records import account_records, person_records, register_ids

Log = Callable[[str], None]


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


def read_raw(wh: Warehouse, sources: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """The latest raw rows of each source, whole (see :func:`raw_slices` for a table of any length)."""
    from .records import latest

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


def raw_slices(wh: Warehouse, source: str, slice_records: int) -> Iterator[pd.DataFrame]:
    """A source's latest raw rows, about ``slice_records`` records at a time. The slices are ranges of
    the source's record IDs, so every delivered version of a record is in the same slice and
    :func:`latest` picks the same row as over the whole table. Nothing when the table does not exist."""
    from .records import latest

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


def load_person_records(wh: Warehouse, columns: set[str] | None = None, key_range: KeyRange | None = None) -> pd.DataFrame:
    """The person records with the derived blocking keys; ``columns``: only these (a column nobody
    asked for is never read: the raw e-mail of 10 million records is a gigabyte); ``key_range``: only the
    records of that range of record keys."""
    wh.ensure_tables([PERSON_RECORDS])
    stored = list(PERSON_RECORDS.columns.keys())
    wanted = set(stored) | set(_DERIVED_PERSON_COLUMNS) if columns is None else set(columns)
    inputs = {c for d, needs in _DERIVED_PERSON_COLUMNS.items() if d in wanted for c in needs}
    read = [c for c in stored if c in wanted | inputs]
    df = wh.read_columns(PERSON_RECORDS, read, key_range)
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
            values = phonetic_pair(df["first_kp"], df["last_kp"])
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


def load_account_records(wh: Warehouse, columns: set[str] | None = None, key_range: KeyRange | None = None) -> pd.DataFrame:
    """The account records in record-key order; ``columns``: only these (every column of 13 million
    records at 10 million contacts would not fit beside the matching); ``key_range``: only the records of
    that range of record keys."""
    wh.ensure_tables([ACCOUNT_RECORDS])
    df = wh.read_columns(ACCOUNT_RECORDS, [c for c in ACCOUNT_RECORDS.columns.keys() if columns is None or c in columns],
                         key_range)
    if "record_ts" in df.columns:
        df["record_ts"] = pd.to_datetime(df["record_ts"], utc=True)
    if "is_mention" in df.columns:
        df["is_mention"] = df["is_mention"].astype(bool)
    return df


# What register enrichment reads of an account record (see enrichment.enrich).
ENRICHMENT_COLUMNS = {"record_key", "company_name", "company_key", "city", "city_key", "register_number"}


def register_found(wh: Warehouse) -> pd.DataFrame:
    """What the register enrichment found: court and number by (name key, city key)."""
    wh.ensure_tables([REGISTER_CACHE])
    cache = wh.read_frame(sa.select(REGISTER_CACHE.c.company_key, REGISTER_CACHE.c.city_key, REGISTER_CACHE.c.register_court,
                                    REGISTER_CACHE.c.register_number).where(REGISTER_CACHE.c.status == "found"))
    return cache.drop_duplicates(["company_key", "city_key"])


def apply_register(accounts: pd.DataFrame, wh: Warehouse, cache: pd.DataFrame | None = None) -> pd.DataFrame:
    """Register court and number from the enrichment cache, by (name key, city key); ``cache``: what
    :func:`register_found` returned (read from ``wh`` when not given)."""
    cache = register_found(wh) if cache is None else cache
    if cache.empty:
        return accounts
    joined = accounts[["company_key", "city_key"]].merge(cache, on=["company_key", "city_key"], how="left")
    out = accounts.copy(deep=False)  # new columns only: a deep copy of every column was a second frame
    court = out["register_court"].where(out["register_court"].notna(), joined["register_court"].to_numpy())
    number = out["register_number"].where(out["register_number"].notna(), joined["register_number"].to_numpy())
    out["register_court"], out["register_number"] = court, number
    out["register_id"] = register_ids(court, number)
    return out

