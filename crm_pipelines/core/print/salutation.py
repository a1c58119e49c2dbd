"""German letter salutations and address name lines, built from Anrede, title and name.

    Frau, Dr., Eva, Müller            -> "Sehr geehrte Frau Dr. Müller"       / "Frau Dr. Eva Müller"
    Herr, Prof. Dr., Hans, von Weber  -> "Sehr geehrter Herr Prof. Dr. von Weber" / "Herrn Prof. Dr. Hans von Weber"
    divers, Dr., Alex, Schmidt        -> "Guten Tag Dr. Alex Schmidt"          / "Dr. Alex Schmidt"
    (none), -, Eva, Müller            -> "Guten Tag Eva Müller"                / "Eva Müller"
    (no name)                         -> "Sehr geehrte Damen und Herren"       / ""

Only doctoral and professorial titles belong in a salutation ("Dipl.-Ing." does not); the address
line keeps the title as given. Name particles (von, van, zu ...) stay lower case. In the address
field "Herr" becomes "Herrn" (it is the accusative: "an Herrn ..."), as German letters write it.
"""

from __future__ import annotations

import re

import pandas as pd

from ..cleaning.names import display_name

_SALUTATION_TITLE = re.compile(r"^(prof\.?|dr\.?)$", re.IGNORECASE)
NO_NAME = "Sehr geehrte Damen und Herren"


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return " ".join(str(value).split())


def salutation_title(title: str) -> str:
    """'Prof. Dr. med.' -> 'Prof. Dr.'; 'Dipl.-Ing.' -> ''."""
    kept = []
    for token in title.split():
        if _SALUTATION_TITLE.match(token):
            kept.append("Prof." if token.lower().startswith("prof") else "Dr.")
    return " ".join(dict.fromkeys(kept))  # "Dr. Dr." -> "Dr."


def salutation_line(anrede, title, first, last) -> str:
    anrede, title, first = _clean(anrede), _clean(title), _clean(first)
    last = display_name(_clean(last)) or ""
    first = display_name(first) or ""
    t = salutation_title(title)
    if anrede == "Frau" and last:
        return " ".join(p for p in ("Sehr geehrte Frau", t, last) if p)
    if anrede == "Herr" and last:
        return " ".join(p for p in ("Sehr geehrter Herr", t, last) if p)
    if last:
        return " ".join(p for p in ("Guten Tag", t, first, last) if p)
    return NO_NAME


def name_line(anrede, title, first, last) -> str:
    anrede, title = _clean(anrede), _clean(title)
    first, last = display_name(_clean(first)) or "", display_name(_clean(last)) or ""
    if not last:
        return ""
    prefix = {"Frau": "Frau", "Herr": "Herrn"}.get(anrede, "")
    return " ".join(p for p in (prefix, title, first, last) if p)


def salutations(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Both lines for every row of a frame with salutation, academic_title, first_name, last_name
    (computed once per distinct combination)."""
    cols = ["salutation", "academic_title", "first_name", "last_name"]
    keys = list(zip(*(frame[c].astype(object).where(frame[c].notna(), None) if c in frame.columns
                      else [None] * len(frame) for c in cols)))
    lookup = {k: (salutation_line(*k), name_line(*k)) for k in set(keys)}
    return (pd.Series([lookup[k][0] for k in keys], index=frame.index, dtype=object),
            pd.Series([lookup[k][1] for k in keys], index=frame.index, dtype=object))
