"""Writing the landing zone: one folder per source and day, counts per source, timestamps as each
source system writes them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

BERLIN = ZoneInfo("Europe/Berlin")


@dataclass
class SourceStats:
    records: int = 0
    expected_quarantined: int = 0
    files: int = 0
    duplicate_files: int = 0
    malformed_kinds: dict[str, int] = field(default_factory=dict)


class Writer:
    def __init__(self, root: Path, source: str, stats: SourceStats):
        self.root, self.source, self.stats = root, source, stats

    def folder(self, day: date) -> Path:
        d = self.root / self.source / day.isoformat()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_text(self, day: date, name: str, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
        path = self.folder(day) / name
        with open(path, "w", encoding=encoding, newline=newline) as fh:
            fh.write(text)
        self.stats.files += 1
        return path

    def write_lines(self, day: date, name: str, lines: list[str], encoding: str = "utf-8", eol: str = "\n", bom: bool = False,
                    trailer: bytes = b"") -> Path:
        path = self.folder(day) / name
        with open(path, "wb") as fh:
            if bom:
                fh.write(b"\xef\xbb\xbf")
            fh.write(("".join(line + eol for line in lines)).encode(encoding))
            fh.write(trailer)
        self.stats.files += 1
        return path


def local_dt(day: date, r: random.Random, start_hour: int = 6, end_hour: int = 21) -> datetime:
    seconds = r.randrange(start_hour * 3600, end_hour * 3600)
    return datetime(day.year, day.month, day.day, tzinfo=BERLIN) + timedelta(seconds=seconds)


def epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def iso_z(dt: datetime) -> str:
    return dt.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def daily_deltas(rng: np.random.Generator, ids: np.ndarray, days: int, share: float) -> list[tuple[int, int]]:
    """Records changed on each day after the first; a nightly delta export is never empty."""
    out: list[tuple[int, int]] = []
    for d in range(1, days):
        changed = ids[rng.random(len(ids)) < share]
        if not len(changed) and len(ids):
            changed = ids[[int(rng.integers(len(ids)))]]
        out += [(d, int(x)) for x in changed]
    return out
