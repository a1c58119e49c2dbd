"""Person names: salutation, academic titles, particles, matching keys and Kölner Phonetik."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import pandas as pd

from . import map_unique
from .text import clean_text

SALUTATIONS = {"herr": "Herr", "hr": "Herr", "hr.": "Herr", "frau": "Frau", "fr": "Frau", "fr.": "Frau",
               "mr": "Herr", "mr.": "Herr", "mrs": "Frau", "mrs.": "Frau", "ms": "Frau", "ms.": "Frau", "divers": "divers"}
TITLE_TOKENS = re.compile(r"^(?:prof\.?|dr\.?|med\.?|rer\.?|nat\.?|pol\.?|phil\.?|jur\.?|ing\.?|dipl\.?-?[a-zäöü]*\.?|"
                          r"mag\.?|h\.\s?c\.?|mba|msc|bsc|ba|ma|llm|dr\.-ing\.?)$", re.IGNORECASE)
PARTICLES = frozenset({"von", "van", "de", "der", "den", "zu", "vom", "zum", "zur", "ten", "ter", "di", "da", "del", "la", "le"})
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})


def name_key(value: str | None) -> str | None:
    """'Müller-Lüdenscheidt' -> 'mueller luedenscheidt': for comparisons, never for display."""
    if value is None:
        return None
    # NFC first: a decomposed 'u' + U+0308 must become 'ue' like the composed 'ü'.
    text = clean_text(value).lower().translate(_UMLAUTS)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"[^a-z ]+", " ", text)
    return " ".join(text.split()) or None


def display_name(value: str | None) -> str | None:
    """Fixes shouting ('MÜLLER' -> 'Müller'), keeps particles lower case ('Von Der Heide' -> 'von der Heide')."""
    if value is None:
        return None
    text = " ".join(value.split())
    if not text:
        return None
    if text.isupper() or text.islower():
        text = text.title()
    words = text.split(" ")
    return " ".join(w.lower() if i > 0 and w.lower() in PARTICLES else w for i, w in enumerate(words))


def split_titles(first_name: str | None) -> tuple[str | None, str | None, str | None]:
    """'Herr Dr. Max' in a first-name field -> ('Herr', 'Dr.', 'Max')."""
    if not first_name:
        return None, None, first_name
    tokens = first_name.split()
    salutation = None
    titles = []
    while tokens and tokens[0].lower() in SALUTATIONS:
        salutation = SALUTATIONS[tokens.pop(0).lower()]
    while tokens and TITLE_TOKENS.match(tokens[0]):
        titles.append(tokens.pop(0))
    return salutation, " ".join(titles) or None, " ".join(tokens) or None


# --- Kölner Phonetik -------------------------------------------------------------------------
# Hans Joachim Postel's phonetic code for German names (1969): letters to digits by context,
# repeated digits collapsed, zeros removed except at the start. "Müller" and "Mueller" -> "657".

_VOWELS = set("aeijouyäöü")
_C_INITIAL_HARD = set("ahkloqrux")
_C_HARD = set("ahkoqux")


def _kp_digit(prev: str, ch: str, nxt: str) -> str:
    # prev/nxt are "" at the edges; sets keep "" from matching ("" in "csz" is True for strings).
    if ch in _VOWELS:
        return "0"
    if ch == "b":
        return "1"
    if ch == "p":
        return "3" if nxt == "h" else "1"
    if ch in ("d", "t"):
        return "8" if nxt in ("c", "s", "z") else "2"
    if ch in ("f", "v", "w"):
        return "3"
    if ch in ("g", "k", "q"):
        return "4"
    if ch == "c":
        if prev == "":
            return "4" if nxt in _C_INITIAL_HARD else "8"
        return "8" if prev in ("s", "z") or nxt not in _C_HARD else "4"
    if ch == "x":
        return "8" if prev in ("c", "k", "q") else "48"
    if ch == "l":
        return "5"
    if ch in ("m", "n"):
        return "6"
    if ch == "r":
        return "7"
    if ch in ("s", "z", "ß"):
        return "8"
    return ""  # h and anything else


@lru_cache(maxsize=200_000)
def koelner_phonetik(value: str | None) -> str | None:
    if not value:
        return None
    text = "".join(ch for ch in value.lower() if ch.isalpha())
    if not text:
        return None
    raw = []
    for i, ch in enumerate(text):
        prev = text[i - 1] if i > 0 else ""
        nxt = text[i + 1] if i + 1 < len(text) else ""
        raw.append(_kp_digit(prev, ch, nxt))
    code = "".join(raw)
    collapsed = []
    for d in code:
        if not collapsed or collapsed[-1] != d:
            collapsed.append(d)
    out = "".join(collapsed)
    return out[:1] + out[1:].replace("0", "") if out else None


def clean_person_names(first: pd.Series, last: pd.Series, salutation: pd.Series | None = None,
                       title: pd.Series | None = None) -> pd.DataFrame:
    """Display names, salutation and titles pulled out of the first-name field, keys and phonetic codes."""
    parts = map_unique(first, split_titles)
    sal_from_first = parts.map(lambda p: p[0] if p else None)
    title_from_first = parts.map(lambda p: p[1] if p else None)
    first_clean = map_unique(parts.map(lambda p: p[2] if p else None), display_name)
    last_clean = map_unique(last, display_name)
    out = pd.DataFrame(index=first.index)
    out["first_name"] = first_clean
    out["last_name"] = last_clean
    sal = salutation if salutation is not None else pd.Series(None, index=first.index, dtype=object)
    out["salutation"] = sal.astype(object).where(sal.notna(), sal_from_first)
    ttl = title if title is not None else pd.Series(None, index=first.index, dtype=object)
    out["academic_title"] = ttl.astype(object).where(ttl.notna(), title_from_first)
    out["first_key"] = map_unique(first_clean, name_key)
    out["last_key"] = map_unique(last_clean, name_key)
    out["first_kp"] = map_unique(out["first_key"], koelner_phonetik)
    out["last_kp"] = map_unique(out["last_key"], koelner_phonetik)
    return out


def phonetic_pair(first_kp: pd.Series, last_kp: pd.Series) -> pd.Series:
    """Both names' phonetic codes in sorted order ("Hans Müller" and "Müller Hans" alike); None when either is
    missing (None, NaN or empty: a blank first name in a CSV arrives as NaN)."""
    ok = first_kp.notna() & last_kp.notna() & (first_kp.astype(object) != "") & (last_kp.astype(object) != "")
    a, b = first_kp.where(ok, "").astype(str), last_kp.where(ok, "").astype(str)
    low, high = a.where(a <= b, b), b.where(a <= b, a)
    return (low + "-" + high).astype(object).where(ok, None)
