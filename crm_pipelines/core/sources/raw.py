"""What every reader produces: chunks of raw records (text values keyed by source field) with their line
and record numbers and the raw text for the quarantine, the per-value checks (control characters, lone
surrogates), and the error that rejects a whole file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..cleaning.text import clean_text, control_character, lone_surrogate
from .mapping import SourceMapping


def id_field_of(mapping: SourceMapping) -> str | None:
    """The source field that carries the record ID."""
    return next((f.source_field for f in mapping.fields if "source_record_id" in f.targets), None)

# A service-desk ticket may carry a long text; the csv module's default of 128 KiB per field
# would stop the whole file at such a record. Swallowed lines are caught separately.
CSV_FIELD_LIMIT = 64 << 20


# Lines worth a closer look: non-ASCII text, control characters, JSON escapes and constants.
_SUSPECT = re.compile(r"[^\x20-\x7e\t\r\n]|\\u|NaN|Infinity")


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
class RecordBuffer:
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
            cols[f] = [(v or None) if v.__class__ is str else (None if v is None else as_text(v)) for v in raw]
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


def as_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v if v else None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v, ensure_ascii=False)

