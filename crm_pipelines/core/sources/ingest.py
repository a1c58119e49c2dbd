"""Loading one landing-zone partition of one source into the raw layer.

For a source and a day: every file in ``<landing>/<source>/<YYYY-MM-DD>/`` that
matches the mapping's pattern is read, mapped and validated; good records go to
``raw.<source>``, bad ones to ``ops.quarantine`` with their reason, and each file
to the ``ops.landing_files`` ledger. Records of people on the suppression list (erased) are
counted and not stored anywhere. The partition is replaced in one transaction, so
``rows read = rows loaded + rows quarantined + rows suppressed`` holds for every partition
and a re-run never duplicates anything.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.masking import mask_text, masked_preview
from ..platform.schema import LANDING_ALIASES, LANDING_FILES, QUARANTINE, raw_table
from ..platform.warehouse import Warehouse
from ..privacy_screen.identity import IdentityHasher, entries, hash_list
from ..privacy_screen.suppression import ACCOUNT_PERSON_COLUMNS, Screen, SuppressionList
from .mapping import SourceMapping, apply_mapping
from .readers import RawChunk, SourceFileError, canonical_values, id_field_of, read_file

Log = Callable[[str], None]


@dataclass
class FileReport:
    file: str
    sha256: str
    size_bytes: int
    status: str = "loaded"  # loaded | duplicate | rejected | ignored
    duplicate_of: str | None = None
    error: str | None = None  # rejected: why the file could not be read (names file, line, column)
    text_values_cleaned: int = 0
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_suppressed: int = 0


@dataclass
class PartitionReport:
    source: str
    partition: str
    files: list[FileReport] = field(default_factory=list)
    reason_counts: Counter = field(default_factory=Counter)
    preview: pd.DataFrame | None = None
    seconds: float = 0.0
    fields_anonymised: int = 0          # account records that lost a suppressed person's Ansprechpartner/e-mail
    repermissions: list = field(default_factory=list)  # fresh double-opt-in sign-ups that lift a suppression
    pruned: bool = False  # the day's landing folder is gone (retention): the earlier load was kept

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_loaded(self) -> int:
        return sum(f.rows_loaded for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def rows_suppressed(self) -> int:
        return sum(f.rows_suppressed for f in self.files)

    @property
    def duplicate_files(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "duplicate"]

    @property
    def rejected_files(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "rejected"]

    @property
    def ignored_files(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "ignored"]

    @property
    def text_values_cleaned(self) -> int:
        return sum(f.text_values_cleaned for f in self.files)


def partition_folder(landing_root: Path, source: str, partition: str) -> Path:
    return Path(landing_root) / source / partition


def landing_files(landing_root: Path, mapping: SourceMapping, partition: str) -> list[Path]:
    folder = partition_folder(landing_root, mapping.source, partition)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(mapping.pattern) if p.is_file())


def unexpected_files(landing_root: Path, mapping: SourceMapping, partition: str) -> list[Path]:
    """Files in the day's folder that match no pattern of the source: not read, but never unseen."""
    folder = partition_folder(landing_root, mapping.source, partition)
    if not folder.is_dir():
        return []
    expected = set(landing_files(landing_root, mapping, partition))
    return sorted(p for p in folder.iterdir() if p.is_file() and p not in expected)


def landed_partitions(landing_root: Path, source: str) -> list[str]:
    folder = Path(landing_root) / source
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _is_day(p.name))


def _is_day(name: str) -> bool:
    try:
        datetime.strptime(name, "%Y-%m-%d")
    except ValueError:
        return False
    return len(name) == 10


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def ingest_partition(
    mapping: SourceMapping,
    partition: str,
    landing_root: Path,
    warehouse: Warehouse,
    run_id: str,
    chunk_rows: int = 50_000,
    log: Log | None = None,
    suppression: SuppressionList | None = None,
) -> PartitionReport:
    """``suppression``: records of suppressed (erased) people are counted and not stored."""
    started = time.monotonic()
    screen = suppression.screen() if suppression is not None else None
    log = log or (lambda _m: None)
    table = raw_table(mapping.source, mapping.entity)
    warehouse.ensure_tables([table, QUARANTINE, LANDING_FILES])
    report = PartitionReport(mapping.source, partition)
    loaded_at = _now()

    if not partition_folder(landing_root, mapping.source, partition).is_dir():
        kept = _ledger_of(warehouse, mapping.source, partition)
        if kept:
            # The day's folder was removed by the landing retention (privacy.yaml): what was loaded
            # from it stays; a backfill must not empty the day.
            report.files, report.pruned = kept, True
            log(f"{mapping.source} {partition}: landing folder removed by retention; the {len(kept)} file(s) loaded "
                "earlier are kept as they are")
            report.seconds = time.monotonic() - started
            return report
    files = landing_files(landing_root, mapping, partition)
    reports = [FileReport(file=p.name, sha256=sha256_file(p), size_bytes=p.stat().st_size) for p in files]
    report.files = reports + [
        FileReport(file=p.name, sha256=sha256_file(p), size_bytes=p.stat().st_size, status="ignored",
                   error=f"matches no pattern of the source ({mapping.pattern} in {mapping.file.name})")
        for p in unexpected_files(landing_root, mapping, partition)]
    for f in report.files[len(reports):]:
        log(f"{mapping.source} {partition}: {f.file} ignored: it {f.error}")
    elsewhere = _delivered_elsewhere(warehouse, mapping.source, partition, [f.sha256 for f in reports])
    by_name = {f.file: f for f in reports}
    good_frames: list[pd.DataFrame] = []
    quarantine_frames: list[pd.DataFrame] = []
    seen_ids: dict[str, tuple[str, int | None, int]] = {}
    id_field = id_field_of(mapping)
    # Small files (a CRM page holds 100 records) are mapped together: pandas work has a
    # fixed cost per call that would otherwise dominate.
    pending: list[tuple[str, RawChunk]] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        chunk, row_files = _concat(pending)
        good, quarantined = _map_chunk(mapping, chunk, row_files, partition, run_id, loaded_at, seen_ids, id_field, report,
                                       suppression.hasher if suppression is not None else None)
        if screen is not None and not screen.empty:
            good, quarantined, suppressed_files = _screen(mapping, screen, good, quarantined, report)
            for name, n in Counter(suppressed_files).items():
                by_name[name].rows_suppressed += n
        for name, n in Counter(good["_file"]).items():
            by_name[name].rows_loaded += n
        for name, n in Counter(quarantined["file"]).items():
            by_name[name].rows_quarantined += n
        if len(good):
            good_frames.append(good)
            if report.preview is None:
                report.preview = masked_preview(good, mapping.entity, columns=list(mapping.entity.field_names)[:8])
        if len(quarantined):
            quarantine_frames.append(quarantined)
        pending, pending_rows = [], 0

    hashes_here: dict[str, str] = {}
    log_every = max(1, len(files) // 10)
    for n, (path, fr) in enumerate(zip(files, reports), 1):
        earlier = hashes_here.get(fr.sha256) or elsewhere.get(fr.sha256)
        if earlier:
            fr.status, fr.duplicate_of = "duplicate", earlier
            log(f"{mapping.source} {partition}: {path.name} skipped, same content as {earlier} (duplicate delivery)")
            continue
        hashes_here[fr.sha256] = path.name
        try:
            for chunk in read_file(path, mapping, chunk_rows=chunk_rows):
                fr.rows_read += len(chunk)
                fr.text_values_cleaned += chunk.cleaned_values
                pending.append((path.name, chunk))
                pending_rows += len(chunk)
                if pending_rows >= chunk_rows:
                    flush()
        except SourceFileError as exc:
            # The file as a whole is unreadable: none of its records count, the day's other files load.
            pending = [(name, c) for name, c in pending if name != path.name]
            pending_rows = sum(len(c) for _, c in pending)
            good_frames[:] = [f[f["_file"] != path.name] for f in good_frames]
            quarantine_frames[:] = [f[f["file"] != path.name] for f in quarantine_frames]
            for rid in [rid for rid, at in seen_ids.items() if at[0] == path.name]:
                del seen_ids[rid]
            fr.status, fr.error = "rejected", str(exc)
            fr.rows_read = fr.rows_quarantined = 1
            fr.rows_loaded = fr.rows_suppressed = fr.text_values_cleaned = 0
            quarantine_frames.append(_rejected_file_row(mapping, partition, exc, run_id, loaded_at))
            report.reason_counts["file rejected"] += 1
            log(f"{mapping.source} {partition}: {path.name} rejected: {mask_text(exc.message)}")
        if n % log_every == 0 or n == len(files):
            log(f"{mapping.source} {partition}: read {n}/{len(files)} files, {report.rows_read} records")
    if pending:
        flush()

    ledger = pd.DataFrame([
        {"source": mapping.source, "partition": partition, "file": f.file, "sha256": f.sha256,
         "size_bytes": f.size_bytes, "status": f.status, "error": f.error, "duplicate_of": f.duplicate_of,
         "rows_read": f.rows_read, "rows_loaded": f.rows_loaded, "rows_quarantined": f.rows_quarantined,
         "rows_suppressed": f.rows_suppressed, "text_values_cleaned": f.text_values_cleaned,
         "run_id": run_id, "loaded_at": loaded_at, "mapping_version": mapping.code_version}
        for f in report.files
    ])
    if not ledger.empty:
        ledger["loaded_at"] = pd.to_datetime(ledger["loaded_at"], utc=True)

    with warehouse.engine.begin() as conn:
        warehouse.delete_where(conn, table, _partition=partition)
        warehouse.delete_where(conn, QUARANTINE, source=mapping.source, partition=partition)
        warehouse.delete_where(conn, LANDING_FILES, source=mapping.source, partition=partition)
        for frame in good_frames:
            warehouse.bulk_insert(conn, table, frame)
        for frame in quarantine_frames:
            warehouse.bulk_insert(conn, QUARANTINE, frame)
        warehouse.bulk_insert(conn, LANDING_FILES, ledger)
    if report.repermissions and suppression is not None:
        lifted = suppression.apply_lifts(report.repermissions, actor=f"ingest:{mapping.source}", run_id=run_id)
        log(f"{mapping.source} {partition}: {lifted} suppression(s) lifted by a fresh double-opt-in sign-up")
    if report.rows_suppressed or report.fields_anonymised:
        log(f"{mapping.source} {partition}: {report.rows_suppressed} record(s) of suppressed people not stored, "
            f"{report.fields_anonymised} account record(s) stripped of a suppressed person's details")
    report.seconds = time.monotonic() - started
    return report


def _rejected_file_row(mapping: SourceMapping, partition: str, exc: SourceFileError, run_id: str,
                       loaded_at: datetime) -> pd.DataFrame:
    """The quarantine's record of a file that could not be read at all: record 0, no payload (the
    file stays in the landing zone to be fixed and re-delivered)."""
    return pd.DataFrame({
        "source": [mapping.source], "partition": [partition], "file": [exc.file],
        "line_no": pd.array([exc.line], dtype="Int64"), "record_no": pd.array([0], dtype="Int64"),
        "source_record_id": [None], "fields": [None], "reason": [f"file rejected: {mask_text(str(exc))}"],
        "raw_payload": ["<the file as a whole could not be read; it stays in the landing zone>"], "run_id": [run_id], "quarantined_at": [pd.Timestamp(loaded_at)],
    })


def _screen(mapping: SourceMapping, screen: Screen, good: pd.DataFrame, quarantined: pd.DataFrame,
            report: PartitionReport) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Keeps suppressed people out: their records are dropped (and counted), an account record only
    loses the fields that name the person, a free text that mentions them is blanked."""
    if mapping.entity.name == "account":
        hit = screen.mentioned(good)
        if hit.any():
            good = good.copy()
            for col in ACCOUNT_PERSON_COLUMNS:
                if col in good.columns:
                    good.loc[hit, col] = None
            report.fields_anonymised += int(hit.sum())
        drop = np.zeros(len(good), dtype=bool)
    else:
        drop = screen.suppressed(good, mapping.source)
        if mapping.entity.name == "consent_event" and drop.any():
            permits, lifts = screen.repermissions(good, mapping.source)
            drop = drop & ~permits
            report.repermissions.extend(lifts)
    free_text = [f.name for f in mapping.entity.fields if f.pii == "free_text"]
    mentions = screen.free_text_mentions(good, free_text)
    if any(m.any() for m in mentions.values()):
        good = good.copy()
        for col, hit in mentions.items():
            hit = hit & ~drop
            good.loc[hit, col] = None
            report.fields_anonymised += int(hit.sum())
    files = good.loc[drop, "_file"].tolist()
    good = good[~drop].reset_index(drop=True)
    # The identities of each quarantined record (readable fields and its text) were hashed when it
    # was quarantined, with the same hasher as the screen's.
    qdrop = screen.hashes_suppressed(quarantined["identity_hashes"])
    files += quarantined.loc[qdrop, "file"].tolist()
    quarantined = quarantined[~qdrop].reset_index(drop=True)
    return good, quarantined, files


def quarantine_identities(hasher: IdentityHasher, mapping: SourceMapping, chunk: RawChunk,
                          positions: list[int]) -> list[str | None]:
    """The identities each quarantined record names, as ``kind:hash`` lists: from the fields that
    could be read (under their canonical names, before any transform) and from its text."""
    if not positions:
        return []
    frame = canonical_values(mapping, chunk, positions)
    ids = hasher.frame_identities(frame, mapping.source) if len(frame.columns) else pd.DataFrame(index=frame.index)
    return [hash_list(entries(ids.iloc[i]) | hasher.text_identities(chunk.payload_text(p)))
            for i, p in enumerate(positions)]


def _ledger_of(warehouse: Warehouse, source: str, partition: str) -> list[FileReport]:
    """The files an earlier run recorded for the day, as reports (empty if none)."""
    with warehouse.engine.connect() as conn:
        if not sa.inspect(conn).has_table(LANDING_FILES.name, schema=LANDING_FILES.schema):
            return []
        t = LANDING_FILES
        rows = conn.execute(sa.select(t).where(t.c.source == source, t.c.partition == partition)).mappings().all()
    return [FileReport(file=r["file"], sha256=r["sha256"], size_bytes=r["size_bytes"], status=r["status"],
                       duplicate_of=r["duplicate_of"], error=r["error"], rows_read=r["rows_read"],
                       rows_loaded=r["rows_loaded"], rows_quarantined=r["rows_quarantined"],
                       rows_suppressed=r["rows_suppressed"] or 0, text_values_cleaned=r["text_values_cleaned"] or 0)
            for r in rows]


def _delivered_elsewhere(warehouse: Warehouse, source: str, partition: str, hashes: list[str]) -> dict[str, str]:
    """Files of other days with the same content, or with the content a file had before an erasure
    rewrote it (ops.landing_aliases): a re-delivery, not new data."""
    found: dict[str, str] = {}
    with warehouse.engine.connect() as conn:
        if sa.inspect(conn).has_table(LANDING_ALIASES.name, schema=LANDING_ALIASES.schema):
            al = LANDING_ALIASES
            for i in range(0, len(hashes), 500):
                for row in conn.execute(sa.select(al.c.original_sha256, al.c.partition, al.c.file).where(
                        al.c.source == source, al.c.original_sha256.in_(hashes[i:i + 500]))):
                    found.setdefault(row.original_sha256, f"{row.partition}/{row.file}")
        for i in range(0, len(hashes), 500):
            q = (
                sa.select(LANDING_FILES.c.sha256, LANDING_FILES.c.partition, LANDING_FILES.c.file)
                .where(LANDING_FILES.c.source == source, LANDING_FILES.c.sha256.in_(hashes[i:i + 500]),
                       LANDING_FILES.c.status == "loaded", LANDING_FILES.c.partition != partition)
                .order_by(LANDING_FILES.c.partition)
            )
            for row in conn.execute(q):
                found.setdefault(row.sha256, f"{row.partition}/{row.file}")
    return found


def _concat(pending: list[tuple[str, RawChunk]]) -> tuple[RawChunk, list[str]]:
    chunk = RawChunk.concat([c for _, c in pending])
    return chunk, [name for name, c in pending for _ in range(len(c))]


def _map_chunk(
    mapping: SourceMapping,
    chunk: RawChunk,
    files: list[str],
    partition: str,
    run_id: str,
    loaded_at: datetime,
    seen_ids: dict[str, tuple[str, int | None, int]],
    id_field: str | None,
    report: PartitionReport,
    hasher: IdentityHasher | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(chunk)
    mapped = apply_mapping(mapping, chunk.frame, chunk.problems)
    good_pos = np.setdiff1d(np.arange(n), mapped.bad_positions)
    good = mapped.good
    bad_pos = list(mapped.bad_positions)
    reasons, fields_ = list(mapped.bad_reasons), list(mapped.bad_fields)
    report.reason_counts.update(mapped.reason_codes)

    # The same record ID twice in one delivery day: keep the first, quarantine the rest.
    ids = good["source_record_id"].tolist()
    keep = np.ones(len(ids), dtype=bool)
    for i, rid in enumerate(ids):
        first = seen_ids.get(rid)
        pos = int(good_pos[i])
        if first is None:
            seen_ids[rid] = (files[pos], chunk.line_no[pos], chunk.record_no[pos])
            continue
        keep[i] = False
        where = f"file {first[0]}, " + (f"line {first[1]}" if first[1] is not None else f"record {first[2]}")
        bad_pos.append(pos)
        reasons.append(f"duplicate record id {rid!r} in this delivery day (first at {where})")
        fields_.append(id_field or "source_record_id")
        report.reason_counts["duplicate record id"] += 1
    if not keep.all():
        good = good[keep].reset_index(drop=True)
        good_pos = good_pos[keep]

    good = good.copy()
    good["_partition"] = partition
    good["_file"] = [files[p] for p in good_pos]
    good["_line"] = pd.array([chunk.line_no[p] for p in good_pos], dtype="Int64")
    good["_record_no"] = pd.array([chunk.record_no[p] for p in good_pos], dtype="Int64")
    good["_run_id"] = run_id
    good["_loaded_at"] = pd.Timestamp(loaded_at)

    raw_ids = chunk.columns.get(id_field) if id_field else None
    quarantined = pd.DataFrame({
        "source": mapping.source,
        "partition": partition,
        "file": [files[p] for p in bad_pos],
        "line_no": pd.array([chunk.line_no[p] for p in bad_pos], dtype="Int64"),
        "record_no": pd.array([chunk.record_no[p] for p in bad_pos], dtype="Int64"),
        "source_record_id": [(str(raw_ids[p]).strip() or None) if raw_ids is not None and raw_ids[p] is not None
                             else chunk.record_id(p) for p in bad_pos],
        "fields": [f or None for f in fields_],
        "reason": reasons,
        "raw_payload": [chunk.payload_text(p) for p in bad_pos],
        "identity_hashes": (quarantine_identities(hasher, mapping, chunk, [int(p) for p in bad_pos])
                            if hasher is not None else [None] * len(bad_pos)),
        "run_id": run_id,
        "quarantined_at": pd.Timestamp(loaded_at),
    })
    return good, quarantined


def outdated_partitions(warehouse: Warehouse, mapping: SourceMapping, landing_root: Path | None = None) -> dict[str, list[str]]:
    """The days loaded with another version of the mapping than the current one (or before versions were
    recorded), by what can be done about them: ``rebuild`` (their delivery is still in the landing zone,
    or no landing zone was given) and ``pruned`` (loaded, but the landing folder is gone: cannot be
    re-derived). Days without a delivery are in neither: a rebuild leaves them empty."""
    out: dict[str, list[str]] = {"rebuild": [], "pruned": []}
    t = LANDING_FILES
    warehouse.ensure_tables([t])  # a ledger from before versions were recorded gets the column (days unknown: outdated)
    with warehouse.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.partition).where(
            t.c.source == mapping.source, t.c.status == "loaded",
            sa.or_(t.c.mapping_version.is_(None), t.c.mapping_version != mapping.code_version)).distinct()).all()
    present = set(landed_partitions(landing_root, mapping.source)) if landing_root is not None else None
    for (partition,) in sorted(rows):
        out["rebuild" if present is None or partition in present else "pruned"].append(partition)
    return out


def partition_ranges(partitions: list[str]) -> list[tuple[str, str]]:
    """Consecutive days as (first, last) ranges: one run each, so days between them stay untouched."""
    ranges: list[list[date]] = []
    for day in sorted(date.fromisoformat(p) for p in partitions):
        if ranges and (day - ranges[-1][1]).days == 1:
            ranges[-1][1] = day
        else:
            ranges.append([day, day])
    return [(a.isoformat(), b.isoformat()) for a, b in ranges]


def partition_balance(warehouse: Warehouse, mapping: SourceMapping, partitions: list[str]) -> dict[str, dict[str, int]]:
    """What the warehouse holds per partition: read and suppressed (ledger), loaded (raw rows), quarantined."""
    table = raw_table(mapping.source, mapping.entity)
    out: dict[str, dict[str, int]] = {p: {"read": 0, "loaded": 0, "quarantined": 0, "suppressed": 0} for p in partitions}
    with warehouse.engine.connect() as conn:
        for p, n in conn.execute(sa.select(table.c._partition, sa.func.count()).where(table.c._partition.in_(partitions))
                                 .group_by(table.c._partition)):
            out[p]["loaded"] = n
        for p, n in conn.execute(sa.select(QUARANTINE.c.partition, sa.func.count())
                                 .where(QUARANTINE.c.source == mapping.source, QUARANTINE.c.partition.in_(partitions))
                                 .group_by(QUARANTINE.c.partition)):
            out[p]["quarantined"] = n
        for p, n, sup in conn.execute(
                sa.select(LANDING_FILES.c.partition, sa.func.sum(LANDING_FILES.c.rows_read),
                          sa.func.sum(sa.func.coalesce(LANDING_FILES.c.rows_suppressed, 0)))
                .where(LANDING_FILES.c.source == mapping.source, LANDING_FILES.c.partition.in_(partitions))
                .group_by(LANDING_FILES.c.partition)):
            out[p]["read"] = int(n or 0)
            out[p]["suppressed"] = int(sup or 0)
    return out
