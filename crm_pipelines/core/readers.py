"""Readers for the landing-zone formats: CSV, JSON lines, JSON documents, fixed-width records.

A reader turns one file into chunks of raw records (text values keyed by source
field) with their line and record numbers and the raw text for the quarantine.
Two kinds of trouble are kept apart:

* a *record* that cannot be used (bad JSON on one line, a CSV row with the wrong
  number of values, an unexpected field) is passed on with a problem and ends up
  in the quarantine;
* a *file* that cannot be read at all (wrong encoding, empty, no header, a missing
  column, a truncated fixed-width record) raises :class:`SourceFileError`, which
  names the file, line and column, and fails the partition.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .mapping import SourceMapping

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
SNIFF_BYTES = 1 << 20


class SourceFileError(Exception):
    """A landing file that cannot be read at all. Fails its partition."""

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

    def __len__(self) -> int:
        return len(self.record_no)

    @property
    def frame(self) -> pd.DataFrame:
        n = len(self.record_no)
        return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in self.columns.items()}, index=pd.RangeIndex(n))

    def payload_text(self, pos: int) -> str:
        p = self.payload[pos]
        return p if isinstance(p, str) else json.dumps(p, ensure_ascii=False)

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
        )


@dataclass
class _Buffer:
    fields: tuple[str, ...]
    rows: list[dict | list | None] = field(default_factory=list)
    line_no: list[int | None] = field(default_factory=list)
    record_no: list[int] = field(default_factory=list)
    payload: list[str] = field(default_factory=list)
    problems: list[str | None] = field(default_factory=list)

    def add(self, values, line: int | None, record: int, payload: str, problem: str | None) -> None:
        self.rows.append(values)
        self.line_no.append(line)
        self.record_no.append(record)
        self.payload.append(payload)
        self.problems.append(problem)

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
        cols = {f: [(_empty_to_none(r[p]) if r is not None else None) for r in self.rows] for f, p in positions.items()}
        return self._chunk(cols)

    def _chunk(self, cols: dict[str, list]) -> RawChunk:
        chunk = RawChunk(cols, self.line_no, self.record_no, self.payload, self.problems)
        self.rows, self.line_no, self.record_no, self.payload, self.problems = [], [], [], [], []
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

def _check_start(path: Path, name: str, encoding: str) -> int:
    """Validates the file start; returns how many bytes of BOM to skip."""
    size = path.stat().st_size
    if size == 0:
        raise SourceFileError(name, "file is empty (0 bytes); an export that delivers nothing must still not be a blank file", line=1, column=1)
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if head.startswith(UTF16_BOMS):
        raise SourceFileError(name, f"file is UTF-16 encoded (byte-order mark {head[:2].hex(' ').upper()}), expected {encoding}", line=1, column=1)
    codec = encoding.lower().replace("_", "-")
    is_utf8 = codec in ("utf-8", "utf8", "utf-8-sig")
    skip = 0
    if head.startswith(UTF8_BOM):
        if not is_utf8:
            raise SourceFileError(name, f"file starts with a UTF-8 byte-order mark, but {encoding} is declared", line=1, column=1)
        skip = len(UTF8_BOM)
    if not head[skip:].strip():
        raise SourceFileError(name, "file contains no records (only white space)", line=1, column=1)
    if not is_utf8 and any(b >= 0x80 for b in head):
        _reject_if_utf8(head, name, encoding)
    return skip


def _reject_if_utf8(head: bytes, name: str, encoding: str) -> None:
    # cp850 / Latin-1 decode any byte, so a UTF-8 file would load as mojibake ("M├╝ller");
    # multibyte sequences that are valid UTF-8 are the tell-tale.
    cut = head.rfind(b"\n")
    sample = head[: cut if cut > 0 else len(head)]
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return
    pos = next(i for i, b in enumerate(sample) if b >= 0x80)
    line = sample[:pos].count(b"\n") + 1
    column = pos - (sample.rfind(b"\n", 0, pos) + 1) + 1
    raise SourceFileError(name, f"file looks UTF-8 encoded (multibyte characters), but the layout declares {encoding}", line=line, column=column)


class _Lines:
    """Decoded lines of a file with their numbers; remembers the text taken since the last call."""

    def __init__(self, path: Path, name: str, encoding: str, keep_newline: bool = False):
        self.path, self.name, self.keep_newline = path, name, keep_newline
        codec = encoding.lower().replace("_", "-")
        self.encoding = "utf-8" if codec == "utf-8-sig" else encoding
        self.skip = _check_start(path, name, encoding)
        self.lineno = 0
        self._taken: list[str] = []

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as fh:
            if self.skip:
                fh.read(self.skip)
            for raw in fh:
                self.lineno += 1
                try:
                    text = raw.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    bad = raw[exc.start]
                    raise SourceFileError(
                        self.name, f"byte 0x{bad:02X} is not valid {self.encoding} (is the file Latin-1 / cp850?)",
                        line=self.lineno, column=exc.start + 1) from exc
                text = text.rstrip("\r\n")
                self._taken.append(text)
                yield text + "\n" if self.keep_newline else text

    def take(self) -> str:
        text = "\n".join(self._taken)
        self._taken = []
        return text


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


def _read_csv(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    lines = _Lines(path, name, fmt.encoding, keep_newline=True)
    reader = csv.reader(lines, delimiter=fmt.delimiter, quotechar=fmt.quotechar)
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise SourceFileError(name, "file is empty", line=1) from None
    lines.take()
    positions = _check_header(header, mapping, name)
    width = len(header)
    buf = _Buffer(tuple(positions))
    record = 0
    last_line = lines.lineno
    for row in reader:
        start_line = last_line + 1
        last_line = lines.lineno
        payload = lines.take()
        if not any(cell.strip() for cell in row):
            continue
        record += 1
        if len(row) != width:
            buf.add(None, start_line, record, payload,
                    f"line {start_line}: {len(row)} values, but the header has {width} columns")
        else:
            buf.add(row, start_line, record, payload, None)
        if len(buf) >= chunk_rows:
            yield buf.flush_positions(positions)
    if len(buf):
        yield buf.flush_positions(positions)


def _check_header(header: list[str], mapping: SourceMapping, name: str) -> dict[str, int]:
    known = mapping.known_source_fields
    if not any(h in known for h in header):
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
        return None, f"unexpected field(s) {listed} not in mapping {mapping.file.name}"
    return flat, None


def _read_jsonl(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    lines = _Lines(path, name, mapping.format.encoding)
    known = mapping.known_source_fields
    prefixes = _prefixes(known)
    buf = _Buffer(mapping.source_fields)
    record = 0
    for text in lines:
        lineno = lines.lineno
        payload = lines.take()
        if not text.strip():
            continue
        record += 1
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            buf.add(None, lineno, record, payload, f"line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}")
        else:
            values, problem = _record_values(obj, mapping, known, prefixes, name, lineno, record)
            buf.add(values, lineno, record, payload, f"line {lineno}: {problem}" if problem else None)
        if len(buf) >= chunk_rows:
            yield buf.flush_dicts()
    if len(buf):
        yield buf.flush_dicts()


def _read_json(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    skip = _check_start(path, name, fmt.encoding)
    raw = path.read_bytes()[skip:]
    codec = "utf-8" if fmt.encoding.lower().replace("_", "-") == "utf-8-sig" else fmt.encoding
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SourceFileError(name, f"byte 0x{raw[exc.start]:02X} is not valid {codec}", line=line, column=column) from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceFileError(name, f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno) from exc
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
    buf = _Buffer(mapping.source_fields)
    for i, obj in enumerate(records, start=1):
        values, problem = _record_values(obj, mapping, known, prefixes, name, None, i)
        buf.add(values, None, i, obj, f"record {i}: {problem}" if problem else None)
        if len(buf) >= chunk_rows:
            yield buf.flush_dicts()
    if len(buf):
        yield buf.flush_dicts()


def _read_fixed_width(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    layout = mapping.format.layout
    assert layout is not None
    lines = _Lines(path, name, layout.encoding)
    wanted = [lf for lf in layout.fields if lf.name in set(mapping.source_fields)]
    length = layout.record_length
    texts: list[str | None] = []
    meta: list[tuple[int, int, str | None]] = []
    record = 0

    def flush() -> RawChunk:
        s = pd.Series(texts, dtype=object)
        cols = {}
        for lf in wanted:
            col = s.str.slice(lf.start - 1, lf.end).str.strip()
            col = col.mask(col == "").astype(object)
            cols[lf.name] = col.where(col.notna(), None)
        chunk = RawChunk({k: v.tolist() for k, v in cols.items()}, [m[0] for m in meta], [m[1] for m in meta], [t or "" for t in payloads], [m[2] for m in meta])
        texts.clear(), meta.clear(), payloads.clear()
        return chunk

    payloads: list[str] = []
    for text in lines:
        lineno = lines.lineno
        lines.take()
        # AS/400 transfers may end the file with a DOS end-of-file marker.
        text = text.rstrip("\x1a")
        if not text.strip():
            continue
        record += 1
        if len(text) < length:
            cut = next(lf for lf in layout.fields if lf.end > len(text))
            raise SourceFileError(
                name, f"truncated record: {len(text)} characters, layout {layout.file.name} needs {length}; "
                f"column '{cut.name}' (positions {cut.start}-{cut.end}) is cut off", line=lineno, column=len(text) + 1)
        problem = None
        if len(text) > length:
            problem = f"line {lineno}: record has {len(text)} characters, layout {layout.file.name} defines {length}"
        texts.append(None if problem else text)
        payloads.append(text)
        meta.append((lineno, record, problem))
        if len(texts) >= chunk_rows:
            yield flush()
    if texts:
        yield flush()
