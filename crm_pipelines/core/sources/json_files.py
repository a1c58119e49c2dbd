"""The JSON readers: JSON lines (one record per line) and JSON documents (records under a path, pages of an
API), flattened onto the mapping's source fields; NaN, Infinity and over-deep nesting quarantined per
record; a document that does not parse at all read leniently record by record where its shape allows."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .lines import Lines, scan_file
from .mapping import SourceMapping
from .raw import RawChunk, RecordBuffer, SourceFileError, as_text

_JSON_CONSTANT = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*(-?Infinity|NaN)')
from .raw import id_field_of


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
    return None if v is None or isinstance(v, (dict, list)) else (as_text(v) or None)


def read_jsonl(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    lines = Lines(path, name, mapping.format.encoding)
    known = mapping.known_source_fields
    prefixes = _prefixes(known)
    id_field = id_field_of(mapping)
    buf = RecordBuffer(mapping.source_fields)
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


def read_json(path: Path, name: str, mapping: SourceMapping, chunk_rows: int) -> Iterator[RawChunk]:
    fmt = mapping.format
    scan = scan_file(path, name, fmt.encoding)
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
    buf = RecordBuffer(mapping.source_fields)
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

