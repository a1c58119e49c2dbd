"""Readers for the landing-zone formats: CSV, JSON lines, JSON documents, fixed-width records.

A reader turns one file into chunks of raw records (text values keyed by source
field) with their line and record numbers and the raw text for the quarantine.
Two kinds of trouble are kept apart:

* a *record* that cannot be used is passed on with a problem that says why in words a person
  understands, and ends up in the quarantine: bad JSON on one line (nested too deep, NaN or
  Infinity where a value belongs), a CSV row with the wrong number of values or an unbalanced
  quote that swallowed the lines after it (those lines are read again as records of their own),
  an unexpected field, a fixed-width record cut short, a value holding a control character or a
  lone surrogate, a line that is not valid in the file's encoding;
* a *file* that cannot be read at all (empty, binary, UTF-16, the wrong encoding across the
  file, no header or the wrong delimiter, a missing column, an unparsable JSON document) raises
  :class:`SourceFileError`, which names the file, line and column and what the file seems to
  be. Ingestion records the file as rejected; the other files of the day still load.

Text values are NFC-normalised and stripped of invisible format characters as they are read
(:mod:`.cleaning.text`); how many values that changed is counted per chunk.

Here: the dispatch by format, CSV and fixed width; the JSON readers are in :mod:`.json_files`, the scan
of a file's bytes and lines in :mod:`.lines`, the chunks and per-value checks in :mod:`.raw`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

import pandas as pd

from .json_files import read_json, read_jsonl
from .lines import Lines
from .mapping import SourceMapping
from .raw import CSV_FIELD_LIMIT, RawChunk, RecordBuffer, SourceFileError, id_field_of

csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))


_EXCEL_SEP = re.compile(r"sep=.")


def read_file(path: Path, mapping: SourceMapping, chunk_rows: int = 50_000) -> Iterator[RawChunk]:
    name = path.name
    kind = mapping.format.type
    if kind == "csv":
        yield from _read_csv(path, name, mapping, chunk_rows)
    elif kind == "jsonl":
        yield from read_jsonl(path, name, mapping, chunk_rows)
    elif kind == "json":
        yield from read_json(path, name, mapping, chunk_rows)
    elif kind == "fixed_width":
        yield from _read_fixed_width(path, name, mapping, chunk_rows)
    else:  # pragma: no cover - rejected when the mapping loads
        raise ValueError(kind)


def canonical_values(mapping: SourceMapping, chunk: RawChunk, positions: list[int]) -> pd.DataFrame:
    """The records at ``positions`` as read, under their canonical field names and before any
    transform: what identity hashing needs of a record that may not have passed the mapping."""
    data: dict[str, list] = {}
    for fm in mapping.fields:
        values = chunk.columns.get(fm.source_field)
        for target in fm.targets:
            if values is not None and target not in data:
                data[target] = [values[p] for p in positions]
    return pd.DataFrame(data, index=pd.RangeIndex(len(positions)))


def _swallowed(row: list[str], width: int, delimiter: str) -> bool:
    """A value that spans lines holding a whole record's worth of delimiters: a quote that never
    closed on its line ate the records after it."""
    return any("\n" in v and any(line.count(delimiter) >= max(1, width - 2) for line in v.split("\n")[1:]) for v in row)


def _read_csv(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    lines = Lines(path, name, fmt.encoding, keep_newline=True)
    source = iter(lines)
    first = next(source, None)
    if first is not None and _EXCEL_SEP.fullmatch(first.strip()):
        lines.take()  # Excel's "sep=;" hint line before the header: not data, not the header
    elif first is not None:
        lines.take()
        lines.read_again([(1, first.rstrip("\n"))])
    reader = csv.reader(source, delimiter=fmt.delimiter, quotechar=fmt.quotechar)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise SourceFileError(name, "file is empty", line=1) from None
    except csv.Error as exc:
        raise SourceFileError(name, f"the header row cannot be read as CSV: {exc}", line=1) from None
    header_text = lines.take()
    positions = _check_header(header, mapping, name, header_text)
    width = len(header)
    id_pos = positions.get(id_field_of(mapping) or "")
    buf = RecordBuffer(tuple(positions))
    record = 0
    last_line = lines.lineno
    while True:
        start_line = last_line + 1
        try:
            row = next(reader)
            problem = None
        except StopIteration:
            break
        except csv.Error as exc:
            row, problem = None, f"line {start_line}: not readable as CSV ({exc})"
            reader = csv.reader(source, delimiter=fmt.delimiter, quotechar=fmt.quotechar)
        last_line = lines.lineno
        payload = lines.take()
        if row is not None and last_line > start_line and _swallowed(row, width, fmt.delimiter):
            # Quarantine the line with the open quote, read the lines it swallowed again.
            physical = payload.split("\n")
            lines.read_again([(start_line + i, text) for i, text in enumerate(physical[1:], 1)])
            reader = csv.reader(source, delimiter=fmt.delimiter, quotechar=fmt.quotechar)
            row, payload, last_line = None, physical[0], start_line
            problem = (f"line {start_line}: unbalanced quote: a quoted value opened on this line does not close on it "
                       f"and swallowed the following line(s); they are read as records of their own")
        if row is not None and not any(cell.strip() for cell in row):
            continue
        record += 1
        problem = problem or lines.problem(start_line, last_line)
        rid = row[id_pos].strip() or None if row is not None and id_pos is not None and id_pos < len(row) else None
        if problem is None and row is not None and len(row) != width:
            problem = f"line {start_line}: {len(row)} values, but the header has {width} columns"
        if problem is not None:
            if rid is None and id_pos is not None:
                rid = _first_value(payload, fmt.delimiter, fmt.quotechar, id_pos)
            buf.add(None, start_line, record, payload, problem, rid)
        else:
            buf.add(row, start_line, record, payload, None, rid, names=positions)
        if len(buf) >= chunk_rows:
            yield buf.flush_positions(positions)
    if len(buf):
        yield buf.flush_positions(positions)


def _first_value(payload: str, delimiter: str, quotechar: str, pos: int) -> str | None:
    try:
        values = next(csv.reader([payload.split("\n")[0]], delimiter=delimiter, quotechar=quotechar))
    except (csv.Error, StopIteration):
        return None
    return (values[pos].strip() or None) if pos < len(values) else None


def _check_header(header: list[str], mapping: SourceMapping, name: str, header_text: str = "") -> dict[str, int]:
    known = mapping.known_source_fields
    if not any(h in known for h in header):
        declared = mapping.format.delimiter
        for other in (",", ";", "\t", "|"):
            if other == declared:
                continue
            cells = [c.strip().strip('"').lstrip("\ufeff") for c in header_text.strip().split(other)]
            if len(cells) > 1 and sum(c in known for c in cells) >= max(1, len(cells) // 2):
                shown = {"\t": "a tab", ",": "',' (comma)", ";": "';' (semicolon)", "|": "'|' (pipe)"}[other]
                raise SourceFileError(name, f"the file seems to use {shown} as its delimiter, but {mapping.file.name} "
                                      f"declares {declared!r}: the header splits into {len(cells)} known columns at "
                                      f"{other!r}", line=1, column=1)
        expected = ", ".join(f"'{f}'" for f in mapping.source_fields[:4])
        raise SourceFileError(name, f"no header row: line 1 does not name any mapped column (expected e.g. {expected})", line=1, column=1)
    seen: dict[str, int] = {}
    for i, h in enumerate(header):
        if h in seen:
            raise SourceFileError(name, f"column '{h}' appears twice in the header (columns {seen[h] + 1} and {i + 1})", line=1, column=i + 1)
        seen[h] = i
        if h not in known and mapping.on_unknown_field != "ignore":
            raise SourceFileError(name, f"unexpected column '{h}' in the header; map it in {mapping.file.name} "
                                  "or list it with 'ignore: true' and a note", line=1, column=i + 1)
    missing = [f.source_field for f in mapping.fields if f.source_field not in seen and not f.optional]
    if missing:
        raise SourceFileError(name, f"missing required column(s) {', '.join(repr(m) for m in missing)} in the header", line=1)
    return {f.source_field: seen[f.source_field] for f in mapping.fields if f.source_field in seen}


def _read_fixed_width(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    layout = mapping.format.layout
    assert layout is not None
    lines = Lines(path, name, layout.encoding)
    wanted = [lf for lf in layout.fields if lf.name in set(mapping.source_fields)]
    id_name = id_field_of(mapping)
    id_field = next((lf for lf in layout.fields if lf.name == id_name), None)
    length = layout.record_length
    buf = RecordBuffer(mapping.source_fields)
    record = 0
    for text in lines:
        lineno = lines.lineno
        lines.take()
        # AS/400 transfers may end the file with a DOS end-of-file marker.
        text = text.rstrip("\x1a")
        if not text.strip():
            continue
        record += 1
        problem = lines.problem(lineno, lineno)
        if problem is None and len(text) < length:
            cut = next(lf for lf in layout.fields if lf.end > len(text))
            problem = (f"line {lineno}: truncated record: {len(text)} characters, layout {layout.file.name} needs "
                       f"{length}; column '{cut.name}' (positions {cut.start}-{cut.end}) is cut off")
        elif problem is None and len(text) > length:
            problem = f"line {lineno}: record has {len(text)} characters, layout {layout.file.name} defines {length}"
        rid = (text[id_field.start - 1:id_field.end].strip() or None) if id_field is not None else None
        values = None
        if problem is None:
            values = {}
            for lf in wanted:
                v = text[lf.start - 1:lf.end].strip()
                values[lf.name] = v or None
        buf.add(values, lineno, record, text, problem, rid)
        if len(buf) >= chunk_rows:
            yield buf.flush_dicts()
    if len(buf):
        yield buf.flush_dicts()

