"""Text as it should be compared and stored: one Unicode form, no invisible characters.

Two spellings of the same name must be the same string before any key or hash is built:
"Müller" typed on a Mac often arrives decomposed (``u`` + U+0308), copied from a web page it may
carry a zero-width space (U+200B) or a soft hyphen (U+00AD). :func:`clean_text` folds both into
the composed (NFC) form without the invisible format characters (Unicode category ``Cf``).

Control characters (category ``Cc``: NUL, BEL, ESC, C1 controls) are another matter: they are
never part of a name or an address, so a value carrying them is damaged and the readers
quarantine its record instead of silently repairing it (:func:`control_character`).
"""

from __future__ import annotations

import re
import unicodedata

# The invisible format characters (Unicode category Cf, as of Unicode 14: zero-width space and
# joiners, direction marks and isolates, word joiner, BOM, soft hyphen, Mongolian vowel separator,
# Arabic number signs, interlinear annotation, tags). A test checks the list against unicodedata.
FORMAT_RANGES = ((0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                 (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
                 (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
                 (0x110CD, 0x110CD), (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
                 (0xE0020, 0xE007F))
_FORMAT = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in FORMAT_RANGES) + "]")
# Line breaks and tabs are layout, not damage (a multi-line note, a tab in a CSV value).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x1B: "ESC", 0x7F: "DEL", 0x0B: "VT", 0x0C: "FF"}


def clean_text(value: str) -> str:
    """NFC, invisible format characters removed. ASCII text is returned as it is (the common case)."""
    if value.isascii():
        return value
    return unicodedata.normalize("NFC", _FORMAT.sub("", value))


def format_characters(value: str) -> int:
    """How many invisible format characters the value holds."""
    return 0 if value.isascii() else len(_FORMAT.findall(value))


def control_character(value: str) -> str | None:
    """The first control character of the value, described ('U+001B (ESC)'), or None."""
    m = _CONTROL.search(value)
    if m is None:
        return None
    code = ord(m.group(0))
    name = _CONTROL_NAMES.get(code)
    return f"U+{code:04X}" + (f" ({name})" if name else "")


def lone_surrogate(value: str) -> str | None:
    """An unpaired UTF-16 surrogate (from a JSON escape such as ``\\ud800``), described, or None:
    such a value is not text and cannot be stored or sent anywhere."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"U+{ord(value[exc.start]):04X}"
    return None
