"""Postal addresses: street and house number apart, one spelling of "Straße", PLZ as a string, ISO country."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from . import map_unique
from .text import clean_text

HOUSE_NUMBER = re.compile(r"^(?P<street>.*?)(?:[\s,]+|(?<=\.))(?P<number>\d+\s?[a-zA-Z]?(?:\s?[-/]\s?\d+\s?[a-zA-Z]?)?)\s*$")
_STRASSE = re.compile(r"(str\.|strasse|straße|str\b)", re.IGNORECASE)
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})

COUNTRY_NAMES = {
    "de": "DE", "d": "DE", "deu": "DE", "ger": "DE", "germany": "DE", "deutschland": "DE", "brd": "DE",
    "at": "AT", "a": "AT", "aut": "AT", "austria": "AT", "österreich": "AT", "oesterreich": "AT",
    "ch": "CH", "che": "CH", "switzerland": "CH", "schweiz": "CH", "suisse": "CH", "svizzera": "CH",
}
POSTCODE_LENGTH = {"DE": 5, "AT": 4, "CH": 4}


def split_street(value: str | None) -> tuple[str | None, str | None]:
    """'Hauptstr. 12a' -> ('Hauptstraße', '12a'); 'Am Markt' -> ('Am Markt', None)."""
    if not value or not value.strip():
        return None, None
    text = " ".join(value.split())
    m = HOUSE_NUMBER.match(text)
    street, number = (m.group("street"), m.group("number").replace(" ", "")) if m else (text, None)
    street = _STRASSE.sub(lambda mm: "straße" if mm.group(0)[0].islower() else "Straße", street)
    return street.strip(" ,") or None, number


def street_key(street: str | None) -> str | None:
    if not street:
        return None
    text = clean_text(street).lower().translate(_UMLAUTS)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = re.sub(r"strasse\b", "str", text)
    return re.sub(r"[^a-z0-9]+", "", text) or None


def normalize_country(value: str | None, default: str | None = "DE") -> str | None:
    if value is None or not str(value).strip():
        return default
    key = str(value).strip().lower()
    if key in COUNTRY_NAMES:
        return COUNTRY_NAMES[key]
    return key.upper() if len(key) == 2 and key.isalpha() else None


def normalize_postcode(value: str | None, country: str | None) -> str | None:
    """Keeps German PLZ five characters ('1067' from a numeric ERP field -> '01067')."""
    if value is None:
        return None
    text = re.sub(r"\s+", "", str(value)).upper()
    text = re.sub(r"^(D|A|CH)-", "", text)
    if not text:
        return None
    want = POSTCODE_LENGTH.get(country or "")
    if want and text.isdigit():
        if len(text) < want and country == "DE":
            text = text.zfill(want)
        if len(text) != want:
            return None
    return text


def clean_addresses(street: pd.Series, house_number: pd.Series | None, postal_code: pd.Series, city: pd.Series,
                    country: pd.Series, default_country: str = "DE") -> pd.DataFrame:
    out = pd.DataFrame(index=street.index)
    parts = map_unique(street, split_street)
    out["street"] = parts.map(lambda p: p[0] if p else None)
    number = parts.map(lambda p: p[1] if p else None)
    if house_number is not None:
        number = house_number.astype(object).where(house_number.notna(), number)
    out["house_number"] = number
    explicit = map_unique(country, lambda v: normalize_country(v, None))
    # Without a country, a four-digit postcode is Austrian or Swiss, not a German PLZ that lost
    # its leading zero: leave the country open rather than invent "05020".
    pcs = postal_code.astype(object).where(postal_code.notna(), None)
    four = pcs.str.strip().str.fullmatch(r"\d{4}").fillna(False).astype(bool)
    out["country"] = explicit.where(explicit.notna(), pd.Series(np.where(four, None, default_country), index=street.index))
    pairs = pd.MultiIndex.from_arrays([pcs.fillna("\x00"), out["country"].fillna("\x00")])
    codes, uniques = pairs.factorize()
    normalised = [normalize_postcode(p, c if c != "\x00" else None) if p != "\x00" else None for p, c in uniques]
    out["postal_code"] = pd.Series(np.array(normalised, dtype=object)[codes] if len(codes) else [], index=street.index,
                                   dtype=object)
    out["city"] = city.astype(object).where(city.notna(), None).str.strip()
    out["street_key"] = map_unique(out["street"], street_key)
    out["city_key"] = map_unique(out["city"], lambda c: street_key(re.sub(r"\(.*?\)", "", c)))
    # Leitregion: the first two digits of a German PLZ (postal routing region).
    out["leitregion"] = out["postal_code"].where(out["country"] == "DE").str[:2]
    return out
