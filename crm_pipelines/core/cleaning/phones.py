"""Phone numbers to E.164 (+4935147110), default region DE.

Written out rather than delegated to a full phone-number library: the project sees the
notations of the DACH region ("0351/4711-0", "+49 (0)351 4711 0", "0049 351 47110"), a
million numbers must normalise in about a second, and the rules for trunk prefixes
are short. A few other regions are known for the generic dedupe command.
"""

from __future__ import annotations

import re

import pandas as pd

# region -> (country calling code, national trunk prefix)
REGIONS: dict[str, tuple[str, str]] = {
    "DE": ("49", "0"), "AT": ("43", "0"), "CH": ("41", "0"), "NL": ("31", "0"), "BE": ("32", "0"),
    "FR": ("33", "0"), "IT": ("39", ""), "GB": ("44", "0"), "IE": ("353", "0"), "AU": ("61", "0"),
    "NZ": ("64", "0"), "US": ("1", "1"), "CA": ("1", "1"), "PL": ("48", ""), "DK": ("45", ""), "SE": ("46", "0"),
}


_NON_DIGIT = re.compile(r"\D")


def to_e164(value: str | None, default_region: str = "DE") -> str | None:
    """One value, the same rules as :func:`clean_phones` without a pandas call per value (the
    suppression screen hashes phone numbers one by one)."""
    if value is None:
        return None
    cc, trunk = REGIONS[default_region]
    text = value.strip().replace("(0)", "")
    digits = _NON_DIGIT.sub("", text)
    if text.startswith("+"):
        e164 = "+" + digits
    elif digits.startswith("00"):
        e164 = "+" + digits[2:]
    elif trunk and digits.startswith(trunk):
        e164 = "+" + cc + digits[len(trunk):]
    elif trunk:
        e164 = "+1" + digits if cc == "1" and len(digits) == 10 else None
    else:
        e164 = "+" + cc + digits
    return e164 if e164 is not None and 9 <= len(e164) <= 16 else None


def clean_phones(series: pd.Series, default_region: str = "DE") -> pd.Series:
    """E.164 strings, or None where the value is not a plausible phone number."""
    cc, trunk = REGIONS[default_region]
    text = series.astype(object).where(series.notna(), None).str.strip()
    # "+49 (0)351 ..." : the bracketed trunk zero is not dialled from abroad.
    text = text.str.replace(r"\(0\)", "", regex=True)
    plus = text.str.startswith("+").fillna(False).astype(bool)
    digits = text.str.replace(r"\D", "", regex=True)
    intl = plus | digits.str.startswith("00").fillna(False).astype(bool)
    e164 = pd.Series(None, index=series.index, dtype=object)
    intl_digits = digits.where(plus, digits.str[2:])
    e164 = e164.where(~intl, "+" + intl_digits)
    national = ~intl & digits.notna()
    if trunk:
        has_trunk = national & digits.str.startswith(trunk).fillna(False).astype(bool)
        e164 = e164.where(~has_trunk, "+" + cc + digits.str[len(trunk):])
        if cc == "1":  # NANP: ten digits without the trunk 1 are also complete numbers
            ten = national & ~has_trunk & (digits.str.len() == 10)
            e164 = e164.where(~ten, "+1" + digits)
    else:
        e164 = e164.where(~national, "+" + cc + digits)
    length = e164.str.len()
    plausible = e164.notna() & (length >= 9) & (length <= 16)
    return e164.astype(object).where(plausible, None)
