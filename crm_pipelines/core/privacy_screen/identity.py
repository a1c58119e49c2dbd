"""Who a record is about, as salted hashes: the only form in which an erased person is remembered.

A person can come back under any of their identities, so every one of them is remembered, each
normalised exactly as the matcher normalises it (case, white space, invisible characters, NFC,
umlauts spelled out, phone formats) so that no spelling lets a person slip back in:

* ``email``: the normalised address;
* ``phone``: a phone or mobile number in E.164, unless the number is shared (a company's
  switchboard, or used by people of another name): then it identifies nobody on its own;
* ``name_company``: first name + family name + the company's matching key ("Musterfirma" for
  "Musterfirma GmbH & Co. KG");
* ``family_company``: family name + company key. It never suppresses a person record on its own
  (two Müllers may work at one company); it names the ERP's Ansprechpartner ("Frau Römer") and a
  mention in free text, which are blanked;
* ``postal``: family name + street + house number + PLZ, of the person's own address and of their
  company's address (first names are left out: the Ansprechpartner carries only Anrede, title
  and family name);
* ``name_birth``: first name + family name + date of birth;
* ``crm_contact``: the person's contact ID in the CRM;
* ``record``: ``<source>:<record ID>`` of each of the person's records, so a re-delivered old line
  is recognised whatever else changed in it.

A name alone is never an identity: a namesake at another company or address is not suppressed.

A hash is ``sha256(salt + kind + ":" + value)``; the salt comes from configuration
(``CRM_PRIVACY_SALT``), so the list is useless without it and values cannot be looked up in a
rainbow table of e-mail addresses.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from ..cleaning import map_unique
from ..cleaning.addresses import normalize_postcode, split_street, street_key
from ..cleaning.companies import parse_company_name
from ..cleaning.emails import normalize_email
from ..cleaning.names import PARTICLES, SALUTATIONS, TITLE_TOKENS, name_key
from ..cleaning.phones import to_e164
from ..cleaning.text import clean_text

KINDS = ("email", "phone", "name_company", "family_company", "postal", "name_birth", "crm_contact", "record")
# The kinds that identify a person record on their own; family_company only names a mention.
PERSON_KINDS = tuple(k for k in KINDS if k != "family_company")
# What names the person inside a company record (Ansprechpartner, general e-mail).
MENTION_KINDS = ("email", "family_company", "postal")
EMAIL_IN_TEXT = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
PHONE_IN_TEXT = re.compile(r"(?:\+|\b00|\b0)\d[\d ()/\-.]{4,18}\d\b")
WORD = re.compile(r"[^\W\d_][^\W\d_'\-]*(?:[-'][^\W\d_]+)*")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or (isinstance(v, str) and not v.strip()) or v is pd.NA


def family_name_of(contact_person: str | None) -> str | None:
    """'Frau Dr. von der Heide' -> 'von der Heide' (an ERP Ansprechpartner: Anrede, titles, family name)."""
    return split_name(contact_person)[1]


def split_name(full: str | None) -> tuple[str | None, str | None]:
    """(first names, family name) of a name written in one field: 'Herr Dr. Jörg Müller',
    'Müller, Jörg', 'Frau Römer', 'Hans von der Heide'."""
    if _missing(full):
        return None, None
    text = " ".join(clean_text(str(full)).split())
    if "," in text:
        last, _, first = (p.strip() for p in text.partition(","))
        tokens = first.split()
    else:
        tokens, last = text.split(), None
    while tokens and (tokens[0].lower() in SALUTATIONS or TITLE_TOKENS.match(tokens[0])):
        tokens.pop(0)
    if last is not None:
        return " ".join(tokens) or None, last or None
    if not tokens:
        return None, None
    split_at = len(tokens) - 1
    for i in range(0, len(tokens) - 1):
        if tokens[i].lower() in PARTICLES:
            split_at = i
            break
    return " ".join(tokens[:split_at]) or None, " ".join(tokens[split_at:])


def company_value(company_name) -> str | None:
    return None if _missing(company_name) else (parse_company_name(clean_text(str(company_name))).key or None)


def postal_value(last_name: str | None, street: str | None, house_number: str | None, postal_code: str | None,
                 country: str | None = "DE") -> str | None:
    """The normalised postal identity, or None when a part is missing (no partial identities)."""
    if _missing(house_number):
        street, house_number = split_street(clean_text(street)) if isinstance(street, str) else (street, None)
    last = name_key(last_name) if isinstance(last_name, str) else None
    st = street_key(street) if isinstance(street, str) else None
    number = "".join(clean_text(str(house_number)).lower().split()) if not _missing(house_number) else None
    plz = normalize_postcode(clean_text(postal_code), country or "DE") if isinstance(postal_code, str) else None
    if not (last and st and number and plz):
        return None
    return f"{last}|{st}|{number}|{plz}"


def _birth(value) -> str | None:
    if _missing(value):
        return None
    ts = pd.to_datetime(str(value), errors="coerce", dayfirst="." in str(value))
    return None if pd.isna(ts) else ts.date().isoformat()


@dataclass(frozen=True)
class IdentityHasher:
    salt: str

    def __post_init__(self) -> None:
        if not self.salt or len(self.salt) < 16:
            raise ValueError("the privacy salt must be at least 16 characters (CRM_PRIVACY_SALT)")

    def hash(self, kind: str, value: str | None) -> str | None:
        if value is None:
            return None
        # backslashreplace: a value with a lone surrogate still hashes (and is quarantined anyway).
        return hashlib.sha256(f"{self.salt}{kind}:{value}".encode("utf-8", "backslashreplace")).hexdigest()

    def email(self, email: str | None) -> str | None:
        return self.hash("email", normalize_email(email) if isinstance(email, str) else None)

    def phone(self, phone: str | None) -> str | None:
        if _missing(phone):
            return None
        return self.hash("phone", to_e164(clean_text(str(phone))))

    def postal(self, last_name, street, house_number, postal_code, country="DE") -> str | None:
        return self.hash("postal", postal_value(last_name, street, house_number, postal_code, country))

    def crm_contact(self, crm_id) -> str | None:
        if _missing(crm_id):
            return None
        return self.hash("crm_contact", str(crm_id).strip())

    def name_company(self, first, last, company_key: str | None) -> str | None:
        f, la = (name_key(first) if isinstance(first, str) else None), (name_key(last) if isinstance(last, str) else None)
        return self.hash("name_company", f"{f}|{la}|{company_key}") if f and la and company_key else None

    def family_company(self, last, company_key: str | None) -> str | None:
        la = name_key(last) if isinstance(last, str) else None
        return self.hash("family_company", f"{la}|{company_key}") if la and company_key else None

    def name_birth(self, first, last, birth) -> str | None:
        f, la = (name_key(first) if isinstance(first, str) else None), (name_key(last) if isinstance(last, str) else None)
        day = _birth(birth)
        return self.hash("name_birth", f"{f}|{la}|{day}") if f and la and day else None

    def record(self, source: str, record_id) -> str | None:
        return None if _missing(record_id) else self.hash("record", f"{source}:{str(record_id).strip()}")

    # ------------------------------------------------------------------ frames

    def frame_identities(self, frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """Per row the hash of each identity the row's columns allow (None where it has none).

        Columns are named by kind; a kind a row can have twice (phone and mobile, an address of
        its own and of its company) gets a second column ``<kind>:2``. Understands the canonical
        columns: ``email``, ``phone``, ``mobile``, ``first_name``, ``last_name``, ``contact_name``
        (a person's whole name) or ``contact_person`` (an account's Ansprechpartner),
        ``company_name``, ``street``, ``house_number``, ``postal_code``, ``country``,
        ``date_of_birth``, ``crm_contact_id``, and ``source`` + ``source_record_id`` (or
        ``source_record_id`` with ``source`` given) for the record kind.
        """
        idx = frame.index
        none = pd.Series(None, index=idx, dtype=object)
        col = (lambda c: frame[c].astype(object).where(frame[c].notna(), None) if c in frame.columns else none)
        out = pd.DataFrame(index=idx)
        out["email"] = map_unique(frame["email"], self.email) if "email" in frame.columns else none
        out["crm_contact"] = map_unique(col("crm_contact_id"), self.crm_contact)
        person_level = "last_name" in frame.columns or "contact_name" in frame.columns
        if "last_name" in frame.columns:
            first, family = col("first_name"), col("last_name")
        elif "contact_name" in frame.columns or "contact_person" in frame.columns:
            parts = map_unique(col("contact_name" if "contact_name" in frame.columns else "contact_person"), split_name)
            first = parts.map(lambda p: p[0] if p else None)
            family = parts.map(lambda p: p[1] if p else None)
        else:
            first = family = none
        company = map_unique(col("company_name"), company_value)
        out["name_company"] = self._combine(self.name_company, first, family, company) if person_level else none
        out["family_company"] = self._combine(self.family_company, family, company)
        out["name_birth"] = self._combine(self.name_birth, first, family, col("date_of_birth"))
        country = col("country").where(col("country").notna(), "DE")
        out["postal"] = self._combine(self.postal, family, col("street"), col("house_number"), col("postal_code"), country)
        if person_level:
            out["phone"] = map_unique(col("phone"), self.phone)
            out["phone:2"] = map_unique(col("mobile"), self.phone)
            sources = col("source") if "source" in frame.columns else pd.Series(source, index=idx, dtype=object)
            out["record"] = self._combine(self.record, sources, col("source_record_id")) if (
                source is not None or "source" in frame.columns) else none
        else:
            out["phone"] = out["record"] = none
        return out

    @staticmethod
    def _combine(fn, *columns: pd.Series) -> pd.Series:
        """fn over the rows' value tuples, once per distinct tuple; None where the first value is missing."""
        index = columns[0].index
        has = columns[0].notna().to_numpy()
        values = pd.Series(None, index=index, dtype=object)
        if has.any():
            keys = list(zip(*(c[has].tolist() for c in columns)))
            lookup = {k: fn(*k) for k in set(keys)}
            values[has] = [lookup[k] for k in keys]
        return values

    def hashes_of(self, frame: pd.DataFrame, source: str | None = None,
                  kinds: Iterable[str] = KINDS) -> set[tuple[str, str]]:
        return entries(self.frame_identities(frame, source), kinds)

    # ------------------------------------------------------------------ free text

    def text_identities(self, text: str | None, company_key: str | None = None) -> set[tuple[str, str]]:
        """Identities named inside a free text (a ticket's subject, a note, a quarantined record as
        delivered): e-mail addresses and phone numbers anywhere; "first family" and "Frau/Herr
        family" only together with the company the text is about (a name alone is no identity)."""
        if not text or not isinstance(text, str):
            return set()
        text = clean_text(text)
        out = {("email", h) for h in (self.email(m) for m in EMAIL_IN_TEXT.findall(text)) if h}
        out |= {("phone", h) for h in (self.phone(m) for m in PHONE_IN_TEXT.findall(text)) if h}
        if company_key:
            words = WORD.findall(text)
            for a, b in zip(words, words[1:]):
                if a.lower() in SALUTATIONS:
                    h = self.family_company(b, company_key)
                    if h:
                        out.add(("family_company", h))
                else:
                    h = self.name_company(a, b, company_key)
                    if h:
                        out.add(("name_company", h))
        return out


def kind_of(column: str) -> str:
    """The identity kind of a column of :meth:`IdentityHasher.frame_identities` ('phone:2' -> 'phone')."""
    return column.split(":", 1)[0]


def entries(ids: pd.DataFrame | pd.Series, kinds: Iterable[str] = KINDS) -> set[tuple[str, str]]:
    """The (kind, hash) pairs in identity columns: of a whole frame, or of one row."""
    wanted = set(kinds)
    if isinstance(ids, pd.Series):
        return {(kind_of(c), h) for c, h in ids.items() if h is not None and kind_of(c) in wanted}
    return {(kind_of(c), h) for c in ids.columns if kind_of(c) in wanted for h in ids[c].dropna().unique()}


def names_any(found: Iterable[tuple[str, str]], identities: dict[str, set[str]]) -> bool:
    """Whether any (kind, hash) pair is among the identities ``{kind: {hash, ...}}``."""
    return any(h in identities.get(kind, ()) for kind, h in found)


def hash_list(found: Iterable[tuple[str, str]]) -> str | None:
    """(kind, hash) pairs as stored in ``ops.quarantine.identity_hashes``: space-separated ``kind:hash``."""
    return " ".join(sorted(f"{k}:{h}" for k, h in found)) or None


def parse_hash_list(text: str | None) -> set[tuple[str, str]]:
    return {tuple(item.split(":", 1)) for item in text.split()} if isinstance(text, str) else set()


def any_suppressed(identities: pd.DataFrame, suppressed: dict[str, set[str]] | Iterable,
                   kinds: Iterable[str] = PERSON_KINDS) -> pd.Series:
    """Rows of which any identity hash of the given kinds is in the set ``{kind: {hash, ...}}``."""
    hit = pd.Series(False, index=identities.index)
    wanted = set(kinds)
    for column in identities.columns:
        kind = kind_of(column)
        keys = suppressed.get(kind) if isinstance(suppressed, dict) else None
        if keys and kind in wanted:
            hit |= identities[column].isin(keys).to_numpy()
    return hit


def load_or_create_salt(path) -> str:
    """The local salt for a first run without CRM_PRIVACY_SALT: made once, kept beside the warehouse
    (readable by the owner only). Losing it orphans the suppression list: back it up with the data."""
    import os
    import secrets
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(salt + "\n")
    return salt
