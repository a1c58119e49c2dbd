"""The landing zone forgets too: scrubbing an erased person's lines, and removing old deliveries.

The landing zone holds every delivery as it came. Two things keep it from becoming the place
where erased people live on in clear text:

* :func:`scrub_landing`: after an erasure, every kept landing file that names the person is
  rewritten without them. A person's record (a web-form line, a CRM contact in a page, a ticket)
  is removed; a company record keeps its data and loses the Ansprechpartner and e-mail that name
  the person; a free-text value naming them is blanked. Files are pre-filtered on their bytes
  (an e-mail, the digits of a phone number, a fragment of the family name), then read with the
  source's own reader and judged by identity hashes like everything else. The file's hash before
  the rewrite is kept in ``ops.landing_aliases``, so a re-delivery of the original file is still
  recognised as a duplicate.
* :func:`prune_landing`: day folders older than ``landing.retention_days`` (privacy.yaml) are
  removed. What was loaded from them stays in the warehouse; a backfill of such a day keeps it
  (:func:`..ingest.ingest_partition` sees the ledger and no folder).

An erasure request file is deleted once its requests are handled: the request survives only as
its suppression entries, its row in ``ops.privacy_requests`` and, while a connected system has not
confirmed, in ``ops.erasure_outbox``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from ..cleaning.text import clean_text
from ..platform.schema import LANDING_ALIASES
from ..platform.warehouse import Warehouse
from ..privacy_screen.identity import MENTION_KINDS, PERSON_KINDS, IdentityHasher, company_value, entries, names_any
from ..sources.ingest import landed_partitions, landing_files, sha256_file
from ..sources.mapping import SourceMapping
from ..sources.readers import canonical_values, read_file
from .inventory import Person, digits_tail, name_fragment

Log = Callable[[str], None]
# UTF-8 lead bytes of the invisible characters people and tools slip into names and addresses
# (zero-width space and joiners, direction marks, word joiner, BOM, soft hyphen).
_INVISIBLE_UTF8 = (b"\xe2\x80", b"\xe2\x81", b"\xef\xbb\xbf", b"\xc2\xad")
# Fields of a company record that name a person (blanked, the company stays).
ACCOUNT_PERSON_FIELDS = ("contact_person", "email")


@dataclass
class LandingScrub:
    files_checked: int = 0
    files_rewritten: int = 0
    records_removed: int = 0
    values_blanked: int = 0
    by_file: dict[str, int] = field(default_factory=dict)   # <source>/<day>/<file> -> records changed


_SPELL = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_UNSPELL = (("ae", "ä"), ("oe", "ö"), ("ue", "ü"))


def spellings(family: str) -> set[str]:
    """'Müller' -> {'müller', 'mueller', 'muller'}; 'Mueller' -> {'mueller', 'müller'}: how one
    family name is written across systems (compared case-insensitively)."""
    import unicodedata

    name = clean_text(family).lower().strip()
    out = {name, name.translate(_SPELL),
           "".join(c for c in unicodedata.normalize("NFD", name) if not unicodedata.combining(c))}
    for plain, umlaut in _UNSPELL:
        if plain in name:
            out.add(name.replace(plain, umlaut))
    return {v for v in out if v}


def _needles(person: Person, mapping: SourceMapping) -> re.Pattern | None:
    """A pattern any record of this source that names the person matches, in some spelling: their
    e-mail, CRM ID, the last six digits of a phone (any separators between them), a fragment of
    the family name that every spelling shares. Only what the source's fields can hold."""
    entity = mapping.entity
    parts = [re.escape(e) for e in sorted(person.emails)] if entity.has("email") else []
    if entity.has("crm_contact_id"):
        parts += [rf"\b{re.escape(c)}\b" for c in sorted(person.crm_contact_ids)]
    if any(entity.has(f) for f in ("last_name", "contact_name", "contact_person")) or any(
            f.pii == "free_text" for f in entity.fields):
        parts += [re.escape(v) for v in sorted({v for x in person.families for v in spellings(x)})]
    if entity.has("phone") or entity.has("mobile"):
        for tail in sorted({digits_tail(p) for p in person.phones} - {None}):
            parts.append(r"[ ()/.\-]*".join(tail))
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _judge(mapping: SourceMapping, path: Path, person: Person, hasher: IdentityHasher,
           needles: re.Pattern) -> dict[int, str]:
    """Record number -> 'remove' (a record about the person) or 'blank' (a record naming them).
    Only records whose text matches the needles are hashed."""
    import pandas as pd

    account = mapping.entity.name == "account"
    kinds = MENTION_KINDS if account else PERSON_KINDS
    free_text = [f.name for f in mapping.entity.fields if f.pii == "free_text"]
    out: dict[int, str] = {}
    for chunk in read_file(path, mapping):
        texts = [clean_text(chunk.payload_text(i)) for i in range(len(chunk))]
        candidates = [i for i, t in enumerate(texts) if needles.search(t)]
        if not candidates:
            continue
        frame = canonical_values(mapping, chunk, candidates)
        ids = hasher.frame_identities(frame, mapping.source) if len(frame.columns) else pd.DataFrame(index=frame.index)
        companies = (frame["company_name"].map(company_value) if "company_name" in frame.columns
                     else pd.Series(None, index=frame.index, dtype=object))
        for j, i in enumerate(candidates):
            row_ids = entries(ids.iloc[j], kinds) if len(ids.columns) else set()
            if names_any(row_ids, person.identities) or (
                    chunk.problems[i] and names_any(hasher.text_identities(texts[i]), person.identities)):
                out[chunk.record_no[i]] = "blank" if account and not chunk.problems[i] else "remove"
            elif any(isinstance(frame.at[j, c], str) and names_any(
                    hasher.text_identities(frame.at[j, c], companies.iat[j]), person.identities)
                    for c in free_text if c in frame.columns):
                out[chunk.record_no[i]] = "blank"
    return out


def scrub_landing(landing_root: Path, mappings: dict[str, SourceMapping], person: Person, hasher: IdentityHasher,
                  wh: Warehouse, log: Log | None = None) -> LandingScrub:
    """Rewrites every kept landing file that names the person without them (see module doc)."""
    log = log or (lambda _m: None)
    report = LandingScrub()
    wh.ensure_tables([LANDING_ALIASES])
    for mapping in mappings.values():
        needles = _needles(person, mapping)
        if needles is None or mapping.entity.name == "erasure_request":
            continue  # nothing of the person fits this source; request files go once handled
        # For the bytes of a whole file: the family name's fragment every spelling shares (a
        # byte pattern cannot fold the case of 'Ü'); the record-level needles are the spellings.
        raw_needles = re.compile("|".join(
            [p for p in needles.pattern.split("|") if p.isascii()]
            + [re.escape(f) for f in sorted({name_fragment(x) for x in person.families} - {None})]).encode(),
            re.IGNORECASE)
        for day in landed_partitions(landing_root, mapping.source):
            for path in landing_files(landing_root, mapping, day):
                report.files_checked += 1
                # A first look at the bytes (an invisible character inside a name would hide it
                # here, so the file's text is cleaned only when the bytes hold such characters).
                data = path.read_bytes()
                if not raw_needles.search(data) and not (
                        any(m in data for m in _INVISIBLE_UTF8)
                        and needles.search(clean_text(data.decode("utf-8", "ignore")))):
                    continue
                try:
                    verdicts = _judge(mapping, path, person, hasher, needles)
                except Exception:  # noqa: BLE001 - an unreadable file is the reader's business, not ours
                    continue
                if not verdicts:
                    continue
                before = sha256_file(path)
                removed, blanked = _rewrite(mapping, path, verdicts, person, hasher)
                after = sha256_file(path)
                with wh.engine.begin() as conn:
                    conn.execute(sa.insert(LANDING_ALIASES).values(
                        source=mapping.source, partition=day, file=path.name, original_sha256=before,
                        scrubbed_sha256=after, scrubbed_at=datetime.now(timezone.utc)))
                report.files_rewritten += 1
                report.records_removed += removed
                report.values_blanked += blanked
                report.by_file[f"{mapping.source}/{day}/{path.name}"] = removed + blanked
                log(f"landing {mapping.source}/{day}/{path.name}: {removed} record(s) removed, {blanked} blanked")
    return report


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.scrub")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _rewrite(mapping: SourceMapping, path: Path, verdicts: dict[int, str], person: Person,
             hasher: IdentityHasher) -> tuple[int, int]:
    kind = mapping.format.type
    if kind == "json":
        return _rewrite_document(mapping, path, verdicts)
    # Line formats: the reader's record numbers and start lines, then the physical lines.
    starts: dict[int, tuple[int, int]] = {}
    for chunk in read_file(path, mapping):
        for i, rec in enumerate(chunk.record_no):
            if rec in verdicts:
                text = chunk.payload_text(i)
                starts[rec] = (chunk.line_no[i], text.count("\n") + 1)
    raw = path.read_bytes()
    lines = raw.splitlines(keepends=True)
    layout = mapping.format.layout
    encoding = layout.encoding if layout is not None else "utf-8"
    drop: set[int] = set()
    removed = blanked = 0
    for rec, verdict in verdicts.items():
        first, count = starts[rec]
        if verdict == "remove" or kind != "fixed_width":
            # A CSV or JSON line that only names the person in free text goes too: rewriting one
            # value inside a delimited line is where a delivery gets corrupted.
            drop.update(range(first - 1, first - 1 + count))
            removed += 1
            continue
        line = lines[first - 1]
        ending = line[len(line.rstrip(b"\r\n")):]
        text = line.rstrip(b"\r\n").decode(encoding)
        for lf in layout.fields:
            if any(lf.name == fm.source_field and set(fm.targets) & set(ACCOUNT_PERSON_FIELDS) for fm in mapping.fields):
                text = text[:lf.start - 1] + " " * lf.length + text[lf.end:]
        lines[first - 1] = text.encode(encoding) + ending
        blanked += 1
    _replace(path, b"".join(line for i, line in enumerate(lines) if i not in drop))
    return removed, blanked


def _rewrite_document(mapping: SourceMapping, path: Path, verdicts: dict[int, str]) -> tuple[int, int]:
    text = path.read_bytes().decode("utf-8-sig")
    doc = json.loads(text)
    holder, key = None, None
    records = doc
    for part in (mapping.format.records_path or "").split(".") if mapping.format.records_path else []:
        holder, key, records = records, part, records[part]
    # What a 'blank' verdict empties: a company record's Ansprechpartner and e-mail; in a record
    # about somebody else only the free text that names the person.
    blanked_fields = (set(ACCOUNT_PERSON_FIELDS) if mapping.entity.name == "account"
                      else {f.name for f in mapping.entity.fields if f.pii == "free_text"})
    person_paths = [fm.source_field.split(".") for fm in mapping.fields if set(fm.targets) & blanked_fields]
    kept, removed, blanked = [], 0, 0
    for i, rec in enumerate(records, start=1):
        verdict = verdicts.get(i)
        if verdict == "remove" or (verdict == "blank" and not isinstance(rec, dict)):
            removed += 1
            continue
        if verdict == "blank":
            for p in person_paths:
                node = rec
                for step in p[:-1]:
                    node = node.get(step) if isinstance(node, dict) else None
                if isinstance(node, dict) and p[-1] in node:
                    node[p[-1]] = None
            blanked += 1
        kept.append(rec)
    if holder is None:
        doc = kept
    else:
        holder[key] = kept
    _replace(path, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    return removed, blanked


# ------------------------------------------------------------------ retention of the landing zone

@dataclass
class LandingPrune:
    cutoff: date
    folders_removed: int = 0
    files_removed: int = 0
    bytes_removed: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


def prune_landing(landing_root: Path, mappings: dict[str, SourceMapping], days: int, today: date,
                  dry_run: bool = False) -> LandingPrune:
    """Removes day folders older than ``days`` (the ledger and the warehouse keep what was loaded)."""
    from datetime import timedelta

    report = LandingPrune(today - timedelta(days=days))
    for mapping in mappings.values():
        for day in landed_partitions(landing_root, mapping.source):
            if date.fromisoformat(day) >= report.cutoff:
                continue
            folder = Path(landing_root) / mapping.source / day
            files = [p for p in folder.rglob("*") if p.is_file()]
            report.folders_removed += 1
            report.files_removed += len(files)
            report.bytes_removed += sum(p.stat().st_size for p in files)
            report.by_source[mapping.source] = report.by_source.get(mapping.source, 0) + 1
            if not dry_run:
                shutil.rmtree(folder)
    return report


def remove_request_file(path: Path) -> bool:
    """Deletes a handled erasure request file (its requests live on only as hashes and request rows)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
