"""A labelled horizontal bar chart as PNG, in plain Python (zlib + a 5x7 pixel font).

Enough for a funnel in the Dagster UI (an image in Markdown metadata) without a plotting
library: the report draws one chart, and a few kilobytes of code beat tens of megabytes of
dependency.
"""

from __future__ import annotations

import struct
import zlib

# 5x7 glyphs, one string of five bits per row.
_FONT = {
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    "-": "00000 00000 00000 11111 00000 00000 00000", "%": "11000 11001 00010 00100 01000 10011 00011",
    ".": "00000 00000 00000 00000 00000 01100 01100", ",": "00000 00000 00000 00000 01100 00100 01000",
    " ": "00000 00000 00000 00000 00000 00000 00000", ":": "00000 01100 01100 00000 01100 01100 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
}
_UMLAUT = str.maketrans({"Ä": "A", "Ö": "O", "Ü": "U", "ß": "S"})


def _text(pixels: list[bytearray], x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 2) -> None:
    for ch in text.upper().translate(_UMLAUT):
        glyph = _FONT.get(ch, _FONT[" "]).split()
        for row, bits in enumerate(glyph):
            for col, bit in enumerate(bits):
                if bit == "1":
                    for dy in range(scale):
                        for dx in range(scale):
                            _put(pixels, x + col * scale + dx, y + row * scale + dy, color)
        x += 6 * scale


def _put(pixels: list[bytearray], x: int, y: int, color: tuple[int, int, int]) -> None:
    if 0 <= y < len(pixels) and 0 <= x < len(pixels[0]) // 3:
        pixels[y][3 * x:3 * x + 3] = bytes(color)


def bar_chart_png(title: str, bars: list[tuple[str, float]], width: int = 640, bar_height: int = 28,
                  color: tuple[int, int, int] = (31, 119, 180)) -> bytes:
    """Horizontal bars, label left, value right, widest bar = the largest value."""
    label_w = max((len(label) for label, _ in bars), default=4) * 12 + 20
    top = 40
    height = top + len(bars) * (bar_height + 10) + 10
    pixels = [bytearray(b"\xff" * (width * 3)) for _ in range(height)]
    _text(pixels, 10, 10, title, (40, 40, 40))
    biggest = max((v for _, v in bars), default=0) or 1
    span = width - label_w - 110
    for i, (label, value) in enumerate(bars):
        y = top + i * (bar_height + 10)
        _text(pixels, 10, y + (bar_height - 14) // 2, label, (40, 40, 40))
        w = max(1, int(span * value / biggest)) if value else 0
        for yy in range(y, y + bar_height):
            for xx in range(label_w, label_w + w):
                _put(pixels, xx, yy, color)
        _text(pixels, label_w + w + 8, y + (bar_height - 14) // 2, f"{value:,.0f}".replace(",", "."), (40, 40, 40))
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
