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
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .cleaning.text import clean_text, control_character, lone_surrogate
from .mapping import SourceMapping

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# A service-desk ticket may carry a long text; the csv module's default of 128 KiB per field
# would stop the whole file at such a record. Swallowed lines are caught separately.
CSV_FIELD_LIMIT = 64 << 20
csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
# Lines worth a closer look: non-ASCII text, control characters, JSON escapes and constants.
_SUSPECT = re.compile(r"[^\x20-\x7e\t\r\n]|\\u|NaN|Infinity")
_EXCEL_SEP = re.compile(r"sep=.")
_JSON_CONSTANT = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*(-?Infinity|NaN)')


class SourceFileError(Exception):
    """A landing file that cannot be read at all. Ingestion rejects the file, not the day."""

    def __init__(self, file: str, message: str, line: int | None = None, column: int | None = None):
        self.file, self.message, self.line, self.column = file, message, line, column
        where = file
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")


@dataclass
class RawChunk:
    columns: dict[str, list]  # one list per mapped source field, values str or None
    line_no: list[int | None]
    record_no: list[int]
    payload: list  # the record as delivered: text, or the parsed JSON object (serialised only if quarantined)
    problems: list[str | None]
    record_ids: list[str | None] | None = None  # the record ID read from a record with a problem, when readable
    cleaned_values: int = 0   # text values changed by NFC normalisation or removal of invisible characters

    def __len__(self) -> int:
        return len(self.record_no)

    @property
    def frame(self) -> pd.DataFrame:
        n = len(self.record_no)
        return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in self.columns.items()}, index=pd.RangeIndex(n))

    def payload_text(self, pos: int) -> str:
        p = self.payload[pos]
        text = p if isinstance(p, str) else json.dumps(p, ensure_ascii=False)
        # A lone surrogate cannot be stored anywhere: keep the record readable, escaped.
        return text if lone_surrogate(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")

    def record_id(self, pos: int) -> str | None:
        return self.record_ids[pos] if self.record_ids is not None else None

    @staticmethod
    def concat(chunks: list["RawChunk"]) -> "RawChunk":
        if len(chunks) == 1:
            return chunks[0]
        keys = list(dict.fromkeys(k for c in chunks for k in c.columns))
        return RawChunk(
            columns={k: [v for c in chunks for v in (c.columns.get(k) or [None] * len(c))] for k in keys},
            line_no=[x for c in chunks for x in c.line_no],
            record_no=[x for c in chunks for x in c.record_no],
            payload=[x for c in chunks for x in c.payload],
            problems=[x for c in chunks for x in c.problems],
            record_ids=[x for c in chunks for x in (c.record_ids or [None] * len(c))],
            cleaned_values=sum(c.cleaned_values for c in chunks),
        )


def _check_value(name: str, v: str) -> str | None:
    """Why a text value cannot be loaded (control character, lone surrogate), or None."""
    bad = lone_surrogate(v)
    if bad:
        return f"field '{name}' holds {bad}, an unpaired surrogate (a broken \\u escape), not text"
    bad = control_character(v)
    if bad:
        return f"field '{name}' holds the control character {bad}"
    return None


@dataclass
class _Buffer:
    fields: tuple[str, ...]
    rows: list[dict | list | None] = field(default_factory=list)
    line_no: list[int | None] = field(default_factory=list)
    record_no: list[int] = field(default_factory=list)
    payload: list[str] = field(default_factory=list)
    problems: list[str | None] = field(default_factory=list)
    record_ids: list[str | None] = field(default_factory=list)
    cleaned: int = 0

    def add(self, values, line: int | None, record: int, payload: str, problem: str | None,
            record_id: str | None = None, names: dict[str, int] | None = None) -> None:
        """``names``: for a row given as a list, the position of each mapped field."""
        if values is not None and problem is None and (not isinstance(payload, str) or _SUSPECT.search(payload)):
            values, problem = self._clean(values, names)
            if problem is not None:
                problem = (f"line {line}: " if line is not None else f"record {record}: ") + problem
        self.rows.append(values)
        self.line_no.append(line)
        self.record_no.append(record)
        self.payload.append(payload)
        self.problems.append(problem)
        self.record_ids.append(record_id if problem is not None else None)

    def _clean(self, values, names: dict[str, int] | None):
        keys = names.items() if names is not None else [(k, k) for k in values]
        for name, key in keys:
            if names is not None and key >= len(values):
                continue
            v = values[key]
            if v.__class__ is not str or (v.isascii() and v.isprintable()):
                continue
            problem = _check_value(name, v)
            if problem is not None:
                return values, problem
            cleaned = clean_text(v)
            if cleaned != v:
                values[key] = cleaned
                self.cleaned += 1
        return values, None

    def __len__(self) -> int:
        return len(self.rows)

    def flush_dicts(self) -> RawChunk:
        cols = {}
        for f in self.fields:
            raw = [r.get(f) if r else None for r in self.rows]
            # Most values are already text; only the rest pays for a conversion call.
            cols[f] = [(v or None) if v.__class__ is str else (None if v is None else _text(v)) for v in raw]
        return self._chunk(cols)

    def flush_positions(self, positions: dict[str, int]) -> RawChunk:
        cols = {f: [(_empty_to_none(r[p]) if r is not None and p < len(r) else None) for r in self.rows]
                for f, p in positions.items()}
        return self._chunk(cols)

    def _chunk(self, cols: dict[str, list]) -> RawChunk:
        chunk = RawChunk(cols, self.line_no, self.record_no, self.payload, self.problems, self.record_ids, self.cleaned)
        self.rows, self.line_no, self.record_no, self.payload, self.problems, self.record_ids = [], [], [], [], [], []
        self.cleaned = 0
        return chunk


def _empty_to_none(v: str | None) -> str | None:
    return v if v else None


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v if v else None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v, ensure_ascii=False)


# ----------------------------------------------------------------------------- bytes -> lines

# What a file that is not text at all starts with (an Excel sheet saved into a CSV folder, a
# zipped export, a PDF): named so the message says what the file seems to be.
MAGIC = ((b"PK\x03\x04", "a ZIP archive (an .xlsx workbook or a zipped export)"),
         (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel/Word document (.xls/.doc)"),
         (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x89PNG", "a PNG image"),
         (b"\xff\xd8\xff", "a JPEG image"), (b"SQLite format 3", "an SQLite database"))
# Valid UTF-8 multibyte sequences (RFC 3629), to tell a UTF-8 file from a Latin-1/cp850 one by
# what the whole file holds, not by its first megabyte.
_UTF8_MB = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
                      rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                      rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_HIGH = re.compile(rb"[\x80-\xff]")
SCAN_BLOCK = 1 << 20


@dataclass
class _Scan:
    """What a pass over the whole file found: how lines end, where the encoding is in doubt."""
    skip: int = 0                 # bytes of byte-order mark
    cr_only: bool = False         # classic Mac line ends: records end in CR alone
    high_bytes: int = 0           # bytes >= 0x80
    utf8_bytes: int = 0           # of those, bytes in valid UTF-8 multibyte sequences
    first_high: tuple[int, int] | None = None      # (line, column) of the first byte >= 0x80
    first_invalid: tuple[int, int, int] | None = None  # (line, column, byte) of the first byte that is not UTF-8


def _position(data: bytes, pos: int, line_base: int, sep: bytes) -> tuple[int, int]:
    line = line_base + data.count(sep, 0, pos)
    return line, pos - (data.rfind(sep, 0, pos) + 1) + 1


def _scan(path: Path, name: str, encoding: str) -> _Scan:
    """Checks the file as a whole before a record is read; raises SourceFileError for a file that
    is not the declared text at all (empty, binary, UTF-16, the wrong 8-bit or Unicode encoding)."""
    size = path.stat().st_size
    if size == 0:
        raise SourceFileError(name, "file is empty (0 bytes); an export that delivers nothing must still not be a blank file", line=1, column=1)
    codec = encoding.lower().replace("_", "-")
    is_utf8 = codec in ("utf-8", "utf8", "utf-8-sig")
    scan = _Scan()
    with open(path, "rb") as fh:
        head = fh.read(SCAN_BLOCK)
        if head.startswith(UTF16_BOMS):
            raise SourceFileError(name, f"file is UTF-16 encoded (byte-order mark {head[:2].hex(' ').upper()}), expected {encoding}", line=1, column=1)
        for magic, what in MAGIC:
            if head.startswith(magic):
                raise SourceFileError(name, f"file is not text: it seems to be {what}, expected {encoding} text", line=1, column=1)
        if head.startswith(UTF8_BOM):
            if not is_utf8:
                raise SourceFileError(name, f"file starts with a UTF-8 byte-order mark, but {encoding} is declared", line=1, column=1)
            scan.skip = len(UTF8_BOM)
        if not head[scan.skip:].strip():
            raise SourceFileError(name, "file contains no records (only white space)", line=1, column=1)
        sample = head[:65536]
        if sample.count(b"\0") > max(8, len(sample) // 100):
            raise SourceFileError(name, f"file is not text: {sample.count(0)} NUL bytes in its first {len(sample)} bytes "
                                  "(a binary file, or UTF-16/32 without a byte-order mark)", line=1, column=1)
        scan.cr_only = b"\n" not in head and b"\r" in head
        sep = b"\r" if scan.cr_only else b"\n"
        line_base, block, lf_seen = 1, head, b"\n" in head
        while block:
            # Whole lines per block, so no multibyte sequence is cut in two.
            tail = fh.readline() if not scan.cr_only else b""
            block += tail
            lf_seen = lf_seen or b"\n" in block
            high = len(_HIGH.findall(block))
            if high:
                scan.high_bytes += high
                utf8 = sum(len(m) for m in _UTF8_MB.findall(block))
                scan.utf8_bytes += utf8
                if scan.first_high is None:
                    scan.first_high = _position(block, _HIGH.search(block).start(), line_base, sep)
                if scan.first_invalid is None and utf8 < high:
                    try:
                        block.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        scan.first_invalid = (*_position(block, exc.start, line_base, sep), block[exc.start])
            line_base += block.count(sep)
            block = fh.read(SCAN_BLOCK)
        scan.cr_only = scan.cr_only and not lf_seen
    if scan.high_bytes:
        if is_utf8 and scan.first_invalid is not None and scan.utf8_bytes * 2 < scan.high_bytes:
            line, column, byte = scan.first_invalid
            raise SourceFileError(
                name, f"byte 0x{byte:02X} is not valid UTF-8 ({bytes([byte]).decode('cp1252', 'replace')!r} in "
                f"Windows-1252), nor are most non-ASCII bytes of the file: it seems to be Latin-1 / Windows-1252 / "
                f"cp850, but {encoding} is declared", line=line, column=column)
        if not is_utf8 and scan.first_invalid is None:
            line, column = scan.first_high
            raise SourceFileError(name, f"file looks UTF-8 encoded (multibyte characters), but the layout declares {encoding}",
                                  line=line, column=column)
    return scan


class _Lines:
    """Decoded lines of a file with their numbers; remembers the text taken since the last call.

    A line that does not decode (one damaged record in an otherwise valid UTF-8 file) is read
    with replacement characters and its problem kept in ``bad``: the reader quarantines that
    record, the file goes on. Lines can be pushed back to be read again (a CSV record that
    swallowed the lines after it).
    """

    def __init__(self, path: Path, name: str, encoding: str, keep_newline: bool = False):
        self.path, self.name, self.keep_newline = path, name, keep_newline
        codec = encoding.lower().replace("_", "-")
        self.encoding = "utf-8" if codec == "utf-8-sig" else encoding
        self.scan = _scan(path, name, encoding)
        self.lineno = 0
        self.bad: dict[int, str] = {}
        self._taken: list[str] = []
        self._again: list[tuple[int, str]] = []

    def _raw_lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            if self.scan.skip:
                fh.read(self.scan.skip)
            if not self.scan.cr_only:
                yield from fh
                return
            rest = b""
            for block in iter(lambda: fh.read(SCAN_BLOCK), b""):
                parts = (rest + block).split(b"\r")
                rest = parts.pop()
                for part in parts:
                    yield part + b"\r"
            if rest:
                yield rest

    def __iter__(self) -> Iterator[str]:
        raw_lines = self._raw_lines()
        while True:
            if self._again:
                self.lineno, text = self._again.pop(0)
            else:
                raw = next(raw_lines, None)
                if raw is None:
                    return
                self.lineno += 1
                try:
                    text = raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    self.bad[self.lineno] = (f"line {self.lineno}: byte 0x{raw[exc.start]:02X} at column {exc.start + 1} "
                                             f"is not valid {self.encoding}")
                    text = raw.decode(self.encoding, errors="replace")
                text = text.rstrip("\r\n")
            self._taken.append(text)
            yield text + "\n" if self.keep_newline else text

    def take(self) -> str:
        text = "\n".join(self._taken)
        self._taken = []
        return text

    def read_again(self, lines: list[tuple[int, str]]) -> None:
        self._again = list(lines) + self._again

    def problem(self, first: int, last: int) -> str | None:
        if not self.bad:
            return None
        return next((self.bad[n] for n in range(first, last + 1) if n in self.bad), None)


# ----------------------------------------------------------------------------- readers

def read_file(path: Path, mapping: SourceMapping, chunk_rows: int = 50_000) -> Iterator[RawChunk]:
    name = path.name
    kind = mapping.format.type
    if kind == "csv":
        yield from _read_csv(path, name, mapping, chunk_rows)
    elif kind == "jsonl":
        yield from _read_jsonl(path, name, mapping, chunk_rows)
    elif kind == "json":
        yield from _read_json(path, name, mapping, chunk_rows)
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


def id_field_of(mapping: SourceMapping) -> str | None:
    """The source field that carries the record ID."""
    return next((f.source_field for f in mapping.fields if "source_record_id" in f.targets), None)


def _swallowed(row: list[str], width: int, delimiter: str) -> bool:
    """A value that spans lines holding a whole record's worth of delimiters: a quote that never
    closed on its line ate the records after it."""
    return any("\n" in v and any(line.count(delimiter) >= max(1, width - 2) for line in v.split("\n")[1:]) for v in row)


def _read_csv(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    lines = _Lines(path, name, fmt.encoding, keep_newline=True)
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
    buf = _Buffer(tuple(positions))
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


def _prefixes(fields: frozenset[str]) -> frozenset[str]:
    out = set()
    for f in fields:
        parts = f.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return frozenset(out)


def _flatten(obj: dict, known: frozenset[str], prefixes: frozenset[str], prefix: str = "", out: dict | None = None,
             unknown: list | None = None) -> tuple[dict, list]:
    out = {} if out is None else out
    unknown = [] if unknown is None else unknown
    for k, v in obj.items():
        key = prefix + k if prefix else k
        if key in known:
            out[key] = v
        elif key in prefixes:
            if v.__class__ is dict:
                _flatten(v, known, prefixes, key + ".", out, unknown)
            elif v is not None:
                unknown.append(key)
        else:
            unknown.append(key)
    return out, unknown


def _record_values(obj: Any, mapping: SourceMapping, known: frozenset[str], prefixes: frozenset[str],
                   name: str, line: int | None, record: int) -> tuple[dict | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"record {record}: expected a JSON object, found {type(obj).__name__}"
    flat, unknown = _flatten(obj, known, prefixes)
    if unknown and mapping.on_unknown_field != "ignore":
        listed = ", ".join(f"'{u}'" for u in unknown[:5])
        if mapping.on_unknown_field == "error":
            raise SourceFileError(name, f"unexpected field(s) {listed}; map them in {mapping.file.name} or list them with 'ignore: true'",
                                  line=line)
        return flat, f"unexpected field(s) {listed} not in mapping {mapping.file.name}"
    return flat, None


class _NotAValue(ValueError):
    pass


def _no_constant(name: str):
    raise _NotAValue(name)


def _loads(text: str) -> tuple[Any, str | None]:
    """Parses one JSON text; returns (object, None) or (None, why not) in words a person understands."""
    try:
        return json.loads(text, parse_constant=_no_constant), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at column {exc.colno}: {exc.msg}"
    except _NotAValue as exc:
        m = _JSON_CONSTANT.search(text)
        where = f"field '{m.group(1)}'" if m else "a field"
        return None, f"{where} holds {exc.args[0]}, which is not a value (JSON has no NaN or Infinity)"
    except RecursionError:
        depth = max(text.count("["), text.count("{"))
        return None, f"JSON nested too deeply (about {depth} levels) to be a record"


_ID_IN_TEXT = {}


def _id_from_text(text: str, id_field: str | None) -> str | None:
    """The record ID of a JSON text that did not parse, when it is there to read."""
    if not id_field:
        return None
    pattern = _ID_IN_TEXT.get(id_field)
    if pattern is None:
        leaf = re.escape(id_field.split(".")[-1])
        pattern = _ID_IN_TEXT[id_field] = re.compile(r'"' + leaf + r'"\s*:\s*(?:"((?:[^"\\]|\\.){1,200})"|(-?\d{1,30}))')
    m = pattern.search(text)
    return (m.group(1) or m.group(2)) if m else None


def _id_from_values(values: dict | None, id_field: str | None) -> str | None:
    if not values or not id_field:
        return None
    v = values.get(id_field)
    return None if v is None or isinstance(v, (dict, list)) else (_text(v) or None)


def _read_jsonl(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    lines = _Lines(path, name, mapping.format.encoding)
    known = mapping.known_source_fields
    prefixes = _prefixes(known)
    id_field = id_field_of(mapping)
    buf = _Buffer(mapping.source_fields)
    record = 0
    for text in lines:
        lineno = lines.lineno
        payload = lines.take()
        if not text.strip():
            continue
        record += 1
        problem = lines.problem(lineno, lineno)
        obj, parse_problem = (None, None) if problem else _loads(text)
        problem = problem or (f"line {lineno}: {parse_problem}" if parse_problem else None)
        values = None
        if problem is None:
            values, problem = _record_values(obj, mapping, known, prefixes, name, lineno, record)
            problem = f"line {lineno}: {problem}" if problem else None
        rid = _id_from_values(values, id_field) or (_id_from_text(text, id_field) if problem else None)
        buf.add(values if problem is None else None, lineno, record, payload, problem, rid)
        if len(buf) >= chunk_rows:
            yield buf.flush_dicts()
    if len(buf):
        yield buf.flush_dicts()


def _read_json(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    scan = _scan(path, name, fmt.encoding)
    raw = path.read_bytes()[scan.skip:]
    codec = "utf-8" if fmt.encoding.lower().replace("_", "-") == "utf-8-sig" else fmt.encoding
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SourceFileError(name, f"byte 0x{raw[exc.start]:02X} is not valid {codec}", line=line, column=column) from exc
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SourceFileError(name, f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from exc
    except (_NotAValue, RecursionError):
        # One bad record must not cost the page: parse it without the offender's constraints,
        # then judge record by record below.
        doc = None
    if doc is None:
        doc = _lenient_document(text, name, fmt.records_path)
    records = doc
    if fmt.records_path:
        for part in fmt.records_path.split("."):
            if not isinstance(records, dict) or part not in records:
                raise SourceFileError(name, f"the document has no '{fmt.records_path}' (records_path in {mapping.file.name})", line=1)
            records = records[part]
    if not isinstance(records, list):
        raise SourceFileError(name, f"expected a list of records at '{fmt.records_path or '<document>'}', found {type(records).__name__}", line=1)
    known = mapping.known_source_fields
    prefixes = _prefixes(known)
    id_field = id_field_of(mapping)
    buf = _Buffer(mapping.source_fields)
    for i, obj in enumerate(records, start=1):
        if isinstance(obj, _Unreadable):
            buf.add(None, None, i, obj.text, f"record {i}: {obj.problem}", _id_from_text(obj.text, id_field))
        else:
            values, problem = _record_values(obj, mapping, known, prefixes, name, None, i)
            problem = f"record {i}: {problem}" if problem else None
            buf.add(values if problem is None else None, None, i, obj, problem, _id_from_values(values, id_field))
        if len(buf) >= chunk_rows:
            yield buf.flush_dicts()
    if len(buf):
        yield buf.flush_dicts()


@dataclass
class _Unreadable:
    text: str
    problem: str


def _lenient_document(text: str, name: str, records_path: str | None) -> Any:
    """A document with a record that holds NaN/Infinity or nests too deep: the outer structure is
    parsed with the record lists' items parsed one by one, so only the bad records are marked."""
    decoder = json.JSONDecoder(parse_constant=_no_constant)

    def value_at(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except (_NotAValue, RecursionError):
            end = _skip_value(text, pos)
            return _Unreadable(text[pos:end], _loads(text[pos:end])[1] or "not readable"), end

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def parse(pos: int, path: tuple[str, ...] | None) -> tuple[Any, int]:
        """``path``: the keys still to follow to the record list; None: an ordinary value."""
        pos = skip_ws(pos)
        if path is None or pos >= len(text) or text[pos] not in "[{":
            return value_at(pos)
        if text[pos] == "[":
            out, pos = [], skip_ws(pos + 1)
            if text[pos] == "]":
                return out, pos + 1
            while True:
                item, pos = parse(pos, None)
                out.append(item)
                pos = skip_ws(pos)
                if text[pos] == "]":
                    return out, pos + 1
                pos += 1  # ','
        obj, pos = {}, skip_ws(pos + 1)
        if text[pos] == "}":
            return obj, pos + 1
        while True:
            key, pos = decoder.raw_decode(text, skip_ws(pos))
            pos = skip_ws(pos) + 1  # ':'
            obj[key], pos = parse(pos, path[1:] if path and key == path[0] else None)
            pos = skip_ws(pos)
            if text[pos] == "}":
                return obj, pos + 1
            pos += 1  # ','

    try:
        return parse(0, tuple(records_path.split(".")) if records_path else ())[0]
    except (ValueError, IndexError) as exc:
        raise SourceFileError(name, f"invalid JSON document: {exc}", line=1) from None


def _skip_value(text: str, pos: int) -> int:
    """The end of the JSON value at ``pos`` by bracket counting (strings respected)."""
    depth, i, in_string = 0, pos, False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif ch == "," and depth == 0:
            return i
        i += 1
    return i


def _read_fixed_width(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    layout = mapping.format.layout
    assert layout is not None
    lines = _Lines(path, name, layout.encoding)
    wanted = [lf for lf in layout.fields if lf.name in set(mapping.source_fields)]
    id_name = id_field_of(mapping)
    id_field = next((lf for lf in layout.fields if lf.name == id_name), None)
    length = layout.record_length
    buf = _Buffer(mapping.source_fields)
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
