"""Who a record is about, as salted hashes: the only form in which an erased person is remembered.

Three kinds of identity, each normalised before hashing so that spelling does not let a person
slip back in:

* ``email``: trimmed, lower-case, ``mailto:`` and angle brackets removed;
* ``postal``: family name + street + house number + PLZ (umlauts spelled out, "Str."/"Straße"
  alike, leading zeros kept). First names are left out on purpose: the ERP's Ansprechpartner
  ("Frau Dr. Müller") carries only Anrede, title and family name, and a print list must not
  reach an erased person whose first name a source spelt differently;
* ``crm_contact``: the person's contact ID in the CRM.

A hash is ``sha256(salt + kind + ":" + value)``; the salt comes from configuration
(``CRM_PRIVACY_SALT``), so the list is useless without it and values cannot be looked up in a
rainbow table of e-mail addresses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from ..cleaning import map_unique
from ..cleaning.addresses import normalize_postcode, split_street, street_key
from ..cleaning.emails import normalize_email
from ..cleaning.names import SALUTATIONS, TITLE_TOKENS, name_key

KINDS = ("email", "postal", "crm_contact")


def family_name_of(contact_person: str | None) -> str | None:
    """'Frau Dr. von der Heide' -> 'von der Heide' (an ERP Ansprechpartner: Anrede, titles, family name)."""
    if not contact_person or not str(contact_person).strip():
        return None
    tokens = str(contact_person).split()
    while tokens and (tokens[0].lower() in SALUTATIONS or TITLE_TOKENS.match(tokens[0])):
        tokens.pop(0)
    return " ".join(tokens) or None


def postal_value(last_name: str | None, street: str | None, house_number: str | None, postal_code: str | None,
                 country: str | None = "DE") -> str | None:
    """The normalised postal identity, or None when a part is missing (no partial identities)."""
    if house_number is None or (isinstance(house_number, float) and np.isnan(house_number)):
        street, house_number = split_street(street) if isinstance(street, str) else (street, None)
    last = name_key(last_name) if isinstance(last_name, str) else None
    st = street_key(street) if isinstance(street, str) else None
    number = "".join(str(house_number).lower().split()) if house_number is not None else None
    plz = normalize_postcode(postal_code, country or "DE") if isinstance(postal_code, str) else None
    if not (last and st and number and plz):
        return None
    return f"{last}|{st}|{number}|{plz}"


@dataclass(frozen=True)
class IdentityHasher:
    salt: str

    def __post_init__(self) -> None:
        if not self.salt or len(self.salt) < 16:
            raise ValueError("the privacy salt must be at least 16 characters (CRM_PRIVACY_SALT)")

    def hash(self, kind: str, value: str | None) -> str | None:
        if value is None:
            return None
        return hashlib.sha256(f"{self.salt}{kind}:{value}".encode()).hexdigest()

    def email(self, email: str | None) -> str | None:
        return self.hash("email", normalize_email(email) if isinstance(email, str) else None)

    def postal(self, last_name, street, house_number, postal_code, country="DE") -> str | None:
        return self.hash("postal", postal_value(last_name, street, house_number, postal_code, country))

    def crm_contact(self, crm_id) -> str | None:
        if crm_id is None or (isinstance(crm_id, float) and np.isnan(crm_id)) or not str(crm_id).strip():
            return None
        return self.hash("crm_contact", str(crm_id).strip())

    # ------------------------------------------------------------------ frames

    def frame_identities(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row the hash of each identity kind the row's columns allow (None where it has none).

        Understands the canonical columns: ``email``, ``crm_contact_id``, ``last_name`` (or
        ``contact_person`` for an account's Ansprechpartner), ``street``, ``house_number``,
        ``postal_code``, ``country``.
        """
        out = pd.DataFrame(index=frame.index)
        out["email"] = map_unique(frame["email"], self.email) if "email" in frame.columns else None
        out["crm_contact"] = (map_unique(frame["crm_contact_id"].astype(object), self.crm_contact)
                              if "crm_contact_id" in frame.columns else None)
        if "last_name" in frame.columns:
            family = frame["last_name"]
        elif "contact_person" in frame.columns:
            family = map_unique(frame["contact_person"], family_name_of)
        else:
            family = None
        if family is not None and "street" in frame.columns and "postal_code" in frame.columns:
            number = frame["house_number"] if "house_number" in frame.columns else pd.Series(None, index=frame.index)
            country = frame["country"] if "country" in frame.columns else pd.Series("DE", index=frame.index)
            parts = pd.DataFrame({"f": family, "s": frame["street"], "n": number, "p": frame["postal_code"],
                                  "c": country}).astype(object).where(lambda d: d.notna(), None)
            has = parts["f"].notna() & parts["s"].notna() & parts["p"].notna()
            values = pd.Series(None, index=frame.index, dtype=object)
            if has.any():
                sub = parts[has]
                keys = list(zip(sub["f"], sub["s"], sub["n"], sub["p"], sub["c"]))
                lookup = {k: self.postal(*k) for k in set(keys)}
                values[has] = [lookup[k] for k in keys]
            out["postal"] = values
        else:
            out["postal"] = None
        return out[list(KINDS)]

    def hashes_of(self, frame: pd.DataFrame) -> set[tuple[str, str]]:
        ids = self.frame_identities(frame)
        return {(kind, h) for kind in KINDS for h in ids[kind].dropna().unique()}


def any_suppressed(identities: pd.DataFrame, suppressed: dict[str, set[str]] | Iterable) -> pd.Series:
    """Rows of which any identity hash is in the suppression set ``{kind: {hash, ...}}``."""
    hit = pd.Series(False, index=identities.index)
    for kind in KINDS:
        keys = suppressed.get(kind) if isinstance(suppressed, dict) else None
        if keys and kind in identities.columns:
            hit |= identities[kind].isin(keys).to_numpy()
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
