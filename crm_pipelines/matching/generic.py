"""Deduplicating any person CSV described by a field mapping: the engine without the warehouse."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..core.cleaning import map_unique, on_distinct
from ..core.cleaning.addresses import normalize_postcode, split_street, street_key
from ..core.cleaning.emails import clean_emails
from ..core.cleaning.names import clean_person_names, phonetic_pair
from ..core.cleaning.phones import clean_phones
from ..core.golden.matching.engine import compact, concat_compact, name_mailboxes
from ..core.golden.matching.resolve import Resolution, resolve
from ..core.golden.matching.settings import EntityMatchSpec
from ..core.sources.mapping import SourceMapping, apply_mapping, load_mapping
from ..core.sources.readers import RawChunk, read_file
from ..core.sources.transforms import split_full_name

NEEDED = {"first_key", "last_key", "date_of_birth", "national_id", "email_norm", "phone_e164", "street_key",
          "house_number", "postal_code", "city_key", "phone_any", "first_initial", "last_kp", "name_kp_pair"}


CHUNK_ROWS = 100_000  # records read, mapped and cleaned at a time


def read_mapped(input_csv: Path, mapping_file: Path, each: Callable[[pd.DataFrame], pd.DataFrame] | None = None
                ) -> tuple[pd.DataFrame, list[tuple[int, str]], SourceMapping]:
    """The mapped records of a CSV and the rejected lines. ``each``: applied to every chunk of mapped records as it
    is read (the dedupe command cleans a chunk at a time, so the raw text of a million records is never held)."""
    take = each or (lambda frame: frame)
    mapping = load_mapping(mapping_file, name_must_match=False)
    if mapping.entity.name != "person":
        raise SystemExit(f"{mapping_file}: entity must be 'person' for the dedupe command (is '{mapping.entity.name}')")
    frames, rejected = [], []
    for chunk in read_file(input_csv, mapping, chunk_rows=CHUNK_ROWS):
        frame = chunk.frame
        mapped = apply_mapping(mapping, frame, chunk.problems)
        frames.append(take(mapped.good))
        if not len(mapped.bad_positions):
            continue
        # A typo in a birth date should not drop the person from deduplication: blank the fields
        # that failed and map again; only records that still fail (no ID, unreadable) are rejected.
        retry = frame.iloc[mapped.bad_positions].reset_index(drop=True).copy()
        for i, fields in enumerate(mapped.bad_fields):
            for f in (fields or "").split(","):
                if f in retry.columns:
                    retry.at[i, f] = None
        problems = [chunk.problems[p] for p in mapped.bad_positions]
        second = apply_mapping(mapping, retry, problems)
        frames.append(take(second.good))
        for p, r in zip(mapped.bad_positions, mapped.bad_reasons):
            where = chunk.line_no[p] or chunk.record_no[p]
            rejected.append((where, r))
        kept = set(range(len(retry))) - set(second.bad_positions.tolist())
        rejected = rejected[:len(rejected) - len(mapped.bad_positions)] + [
            (chunk.line_no[p] or chunk.record_no[p], ("kept with blank field(s): " if i in kept else "") + r)
            for i, (p, r) in enumerate(zip(mapped.bad_positions, mapped.bad_reasons))]
    frames = [f.result() if isinstance(f, Future) else f for f in frames]
    return (concat_compact(frames) if frames else pd.DataFrame()), rejected, mapping


def prepare(df: pd.DataFrame, region: str = "DE") -> pd.DataFrame:
    """Cleaned columns the generic matching settings compare, from canonical 'person' fields."""
    out = pd.DataFrame(index=df.index)
    out["record_key"] = df["source_record_id"].astype(str)
    first, last = df["first_name"].astype(object), df["last_name"].astype(object)
    if df["full_name"].notna().any():
        parts = map_unique(df["full_name"], split_full_name)
        first = first.where(first.notna(), parts.map(lambda p: p[2] if p else None))
        last = last.where(last.notna(), parts.map(lambda p: p[3] if p else None))
    names = clean_person_names(first.where(first.notna(), None), last.where(last.notna(), None))
    for c in ("first_key", "last_key", "first_kp", "last_kp"):  # the display forms are not compared
        out[c] = names[c]
    out["first_initial"] = out["first_key"].str[:1]
    out["name_kp_pair"] = phonetic_pair(out["first_kp"], out["last_kp"])
    dob = df["date_of_birth"]
    out["date_of_birth"] = pd.to_datetime(dob, errors="coerce").dt.strftime("%Y-%m-%d").astype(object).where(dob.notna(), None)
    nid = df["national_id"].astype(object).where(df["national_id"].notna(), None).str.replace(r"\s", "", regex=True)
    out["national_id"] = nid.where(nid != "", None)
    emails = on_distinct(df["email"], clean_emails)
    out["email_norm"] = emails["email_norm"]
    out["email_local"] = emails["email_local"]
    # "hans.mueller@gmx.de" and "hans.mueller@web.de" repeat the name: the e-mail comparison gives such mailboxes
    # no evidence of their own, or every pair of namesakes would merge.
    out["mailbox_is_name"] = name_mailboxes(out["email_local"], out["first_key"], out["last_key"])
    out["phone_e164"] = on_distinct(df["phone"], lambda s: clean_phones(s, region))
    out["phone_any"] = out["phone_e164"]
    street = df["street"].astype(object).where(df["street"].notna(), None)
    parts = map_unique(street, split_street)
    number = df["house_number"].astype(object).where(df["house_number"].notna(), parts.map(lambda p: p[1] if p else None))
    out["house_number"] = number.astype(object).where(number.notna(), None).str.strip().str.lower()
    out["street_key"] = map_unique(parts.map(lambda p: p[0] if p else None), street_key)
    country = (df["country"].astype(object).where(df["country"].notna(), region) if "country" in df
               else pd.Series(region, index=df.index, dtype=object))
    postal = pd.Series(None, index=df.index, dtype=object)
    for code in pd.unique(country):  # one pass per country over its distinct postcodes
        mine = (country == code).to_numpy()
        postal[mine] = map_unique(df["postal_code"][mine], lambda p, c=code: normalize_postcode(p, c))
    out["postal_code"] = postal
    out["city_key"] = map_unique(df["city"].astype(object).where(df["city"].notna(), None), street_key)
    return compact(out)


class _Cleaner:
    """Cleans the chunks of mapped records while the next ones are read: in a second process where there is a
    second core and more than one chunk (reading and cleaning a million records each take half a minute), at most
    two chunks in flight so that a fast reader cannot pile up raw text; else in this process."""

    def __init__(self, region: str, log: Callable[[str], None]):
        self.region, self.log = region, log
        self.pool: ProcessPoolExecutor | None = None
        self.pending: list[Future] = []
        self.chunks = self.records = 0

    def __enter__(self) -> "_Cleaner":
        return self

    def submit(self, frame: pd.DataFrame):
        self.chunks += 1
        self.records += len(frame)
        self.log(f"read and mapped {self.records:,} records")
        if self.pool is None and self.chunks > 1 and (os.cpu_count() or 1) > 1:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        if self.pool is None:
            return prepare(frame, self.region)
        self.pending = [f for f in self.pending if not f.done()]
        if len(self.pending) >= 2:
            wait(self.pending[:1])
        future = self.pool.submit(prepare, frame, self.region)
        self.pending.append(future)
        return future

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=exc[0] is not None)


def dedupe(input_csv: Path, mapping_file: Path, spec: EntityMatchSpec, region: str = "DE",
           log: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, Resolution, list]:
    log = log or (lambda m: print(m, file=sys.stderr))
    started = time.monotonic()
    with _Cleaner(region, log) as cleaner:
        records, rejected, _mapping = read_mapped(input_csv, mapping_file, each=cleaner.submit)
    dropped = sum(1 for _, r in rejected if not r.startswith("kept with blank"))
    log(f"read {len(records) + dropped:,} records from {input_csv.name}: {len(records):,} usable "
        f"({len(rejected) - dropped:,} with a field blanked), {dropped:,} rejected")
    present = {c for c in NEEDED if c in records.columns and records[c].notna().any()}
    usable = spec.without_columns(NEEDED - present)
    if not usable.comparisons:
        raise SystemExit(f"{mapping_file}: the mapped fields leave nothing to compare (map names, dates, addresses ...)")
    res = resolve(records, usable, log=log)
    clusters = pd.DataFrame({"record_id": records["record_key"], "cluster_id": res.labels})
    # Cluster IDs name their smallest record ID, so they read well and do not depend on row order.
    clusters["cluster_id"] = clusters.groupby("cluster_id")["record_id"].transform("min")
    log(f"{res.n_records:,} records in {res.n_clusters:,} clusters; {res.stats['candidate_pairs']:,} comparisons of "
        f"{res.stats['possible_pairs']:,} possible ({time.monotonic() - started:.1f}s)")
    return clusters, res, rejected


__all__ = ["dedupe", "prepare", "read_mapped", "RawChunk", "np"]
