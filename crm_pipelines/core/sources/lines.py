"""From bytes to numbered lines: what a file is (a ZIP, a PDF, UTF-16 ...), its encoding checked in
blocks, and its lines with their numbers, each decoded on its own so one bad line stays one bad record."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .raw import SourceFileError

UTF8_BOM = b"\xef\xbb\xbf"


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


# Valid UTF-8 multibyte sequences (RFC 3629), to tell a UTF-8 file from a Latin-1/cp850 one by
# what the whole file holds, not by its first megabyte.
_UTF8_MB = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
                      rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                      rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")

# What a file that is not text at all starts with (an Excel sheet saved into a CSV folder, a
# zipped export, a PDF): named so the message says what the file seems to be.
MAGIC = ((b"PK\x03\x04", "a ZIP archive (an .xlsx workbook or a zipped export)"),
         (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel/Word document (.xls/.doc)"),
         (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x89PNG", "a PNG image"),
         (b"\xff\xd8\xff", "a JPEG image"), (b"SQLite format 3", "an SQLite database"))


_HIGH = re.compile(rb"[\x80-\xff]")


SCAN_BLOCK = 1 << 20


@dataclass
class FileScan:
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


def scan_file(path: Path, name: str, encoding: str) -> FileScan:
    """Checks the file as a whole before a record is read; raises SourceFileError for a file that
    is not the declared text at all (empty, binary, UTF-16, the wrong 8-bit or Unicode encoding)."""
    size = path.stat().st_size
    if size == 0:
        raise SourceFileError(name, "file is empty (0 bytes); an export that delivers nothing must still not be a blank file", line=1, column=1)
    codec = encoding.lower().replace("_", "-")
    is_utf8 = codec in ("utf-8", "utf8", "utf-8-sig")
    scan = FileScan()
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


class Lines:
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
        self.scan = scan_file(path, name, encoding)
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

