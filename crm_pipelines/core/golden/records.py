"""Cleaned person and account records built from the raw layer: the input of entity resolution.

Person records come from the CRM's contacts, web-form and trade-fair leads, newsletter
sign-ups and service requests. Account records are the ERP customers and CRM companies,
plus every company *mention* of a person record (a lead's "Musterfirma GmbH" with its
PLZ), so that a new lead's company joins the existing account instead of creating one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..cleaning import map_unique
from ..cleaning.addresses import clean_addresses, street_key
from ..cleaning.companies import parse_company_name
from ..cleaning.emails import clean_emails, domain_of_website
from ..cleaning.names import clean_person_names, koelner_phonetik, phonetic_pair
from ..cleaning.phones import clean_phones
from ..sources.roles import ACCOUNT_SOURCES, PERSON_SOURCES
from ..sources.transforms import split_full_name
from .matching.engine import name_mailboxes


def domain_key(domain: str | None) -> str | None:
    """'kade-maschinenbau2-group.com' -> 'kade maschinenbau group'."""
    if not domain:
        return None
    label = domain.rsplit(".", 1)[0]
    text = "".join(ch if ch.isalpha() else " " for ch in label.replace(".", " "))
    return " ".join(text.split()) or None


PERSON_COLUMNS = [
    "record_key", "source", "source_record_id", "record_ts", "salutation", "academic_title", "first_name", "last_name",
    "email", "email_norm", "email_local", "email_domain", "is_free_mail", "phone", "phone_e164", "mobile", "mobile_e164",
    "job_title", "company_name", "company_key", "legal_form", "street", "house_number", "postal_code", "city", "country",
    "leitregion", "crm_contact_id", "crm_company_id", "erp_customer_number", "first_key", "last_key", "first_kp",
    "last_kp", "name_kp_pair", "first_initial", "company_domain", "phone_any", "org_key", "company_first_token",
    "mailbox_is_name",
]
ACCOUNT_COLUMNS = [
    "record_key", "source", "source_record_id", "record_ts", "is_mention", "company_name", "company_base", "company_key",
    "company_first_token", "company_kp", "legal_form", "street", "house_number", "street_full_key", "postal_code", "city", "city_key",
    "country", "leitregion", "phone", "phone_e164", "email", "domain", "vat_id", "register_court", "register_number",
    "register_id", "industry", "employee_count", "erp_customer_number", "crm_company_id",
]


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per source record: the one from the latest delivery day (then the latest file position)."""
    if frame.empty:
        return frame
    ordered = frame.sort_values(["_partition", "_file", "_record_no"], ascending=False, kind="stable")
    return ordered.drop_duplicates("source_record_id", keep="first").reset_index(drop=True)


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return df[name].astype(object).where(df[name].notna(), None)
    return pd.Series(None, index=df.index, dtype=object)


def _ts(df: pd.DataFrame, *names: str) -> pd.Series:
    out = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    for name in names:
        if name in df.columns:
            out = out.fillna(pd.to_datetime(df[name], utc=True, errors="coerce"))
    return out


def _person_frame(source: str, df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["source"] = source
    out["source_record_id"] = df["source_record_id"].astype(str)
    if source == "service_requests":
        parts = map_unique(_col(df, "contact_name"), split_full_name)
        out["first_name"] = parts.map(lambda p: p[2] if p else None)
        out["last_name"] = parts.map(lambda p: p[3] if p else None)
        out["salutation"] = parts.map(lambda p: p[0] if p else None)
        out["academic_title"] = parts.map(lambda p: p[1] if p else None)
        out["record_ts"] = _ts(df, "created_at")
    elif source == "newsletter_signups":
        out["record_ts"] = _ts(df, "occurred_at")
    else:
        out["record_ts"] = _ts(df, "updated_at", "created_at")
    for c in ("salutation", "academic_title", "first_name", "last_name", "email", "phone", "mobile", "job_title",
              "company_name", "street", "house_number", "postal_code", "city", "country", "crm_contact_id",
              "crm_company_id", "erp_customer_number"):
        if c not in out.columns:
            out[c] = _col(df, c)
    return out


def person_records(raw: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Cleaned person records from the latest raw rows of each person source."""
    frames = [_person_frame(s, latest(raw[s])) for s in PERSON_SOURCES if s in raw and not raw[s].empty]
    if not frames:
        return pd.DataFrame(columns=PERSON_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df["record_key"] = df["source"] + ":" + df["source_record_id"]
    names = clean_person_names(df["first_name"], df["last_name"], df["salutation"], df["academic_title"])
    for c in ("first_name", "last_name", "salutation", "academic_title", "first_key", "last_key", "first_kp", "last_kp"):
        df[c] = names[c]
    emails = clean_emails(df["email"])
    for c in ("email_norm", "email_local", "email_domain", "is_free_mail"):
        df[c] = emails[c]
    df["phone_e164"] = clean_phones(df["phone"])
    df["mobile_e164"] = clean_phones(df["mobile"])
    addr = clean_addresses(df["street"], df["house_number"], df["postal_code"], df["city"], df["country"])
    for c in ("street", "house_number", "postal_code", "city", "country", "leitregion"):
        df[c] = addr[c]
    companies = map_unique(df["company_name"], parse_company_name)
    df["company_key"] = companies.map(lambda c: (c.key or None) if c else None)
    df["legal_form"] = companies.map(lambda c: c.legal_form if c else None)
    df["name_kp_pair"] = phonetic_pair(df["first_kp"], df["last_kp"])
    df["first_initial"] = df["first_key"].str[:1]
    df["company_domain"] = df["email_domain"].where(~df["is_free_mail"].astype(bool))
    df["phone_any"] = df["mobile_e164"].where(df["mobile_e164"].notna(), df["phone_e164"])
    # In B2B the mail domain names the employer: "j.mueller@jacob-wiek.de" works at "Jacob Wiek".
    df["org_key"] = df["company_key"].where(df["company_key"].notna(), map_unique(df["company_domain"], domain_key))
    df["company_first_token"] = df["org_key"].str.split(" ").str[0]
    df["mailbox_is_name"] = name_mailboxes(df["email_local"], df["first_key"], df["last_key"])
    return df[PERSON_COLUMNS].reset_index(drop=True)


def _account_frame(source: str, df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    out["source"] = source
    out["source_record_id"] = df["source_record_id"].astype(str)
    out["record_ts"] = _ts(df, "updated_at", "created_at")
    out["is_mention"] = False
    for c in ("company_name", "street", "house_number", "postal_code", "city", "country", "phone", "email", "website",
              "vat_id", "register_court", "register_number", "industry", "employee_count", "erp_customer_number",
              "crm_company_id"):
        out[c] = _col(df, c)
    return out


def account_records(raw: dict[str, pd.DataFrame], persons: pd.DataFrame,
                    register: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cleaned account records: ERP customers, CRM companies, and the company mentions of person records."""
    frames = [_account_frame(s, latest(raw[s])) for s in ACCOUNT_SOURCES if s in raw and not raw[s].empty]
    mentions = persons[persons["company_name"].notna()]
    if len(mentions):
        m = pd.DataFrame({
            "source": mentions["source"], "source_record_id": mentions["source_record_id"],
            "record_ts": mentions["record_ts"], "is_mention": True, "company_name": mentions["company_name"],
            "street": mentions["street"], "house_number": mentions["house_number"],
            "postal_code": mentions["postal_code"], "city": mentions["city"], "country": mentions["country"],
            "phone": None, "email": None, "website": mentions["company_domain"], "vat_id": None, "register_court": None,
            "register_number": None, "industry": None, "employee_count": None,
            "erp_customer_number": mentions["erp_customer_number"], "crm_company_id": mentions["crm_company_id"],
        })
        frames.append(m.reset_index(drop=True))
    if not frames:
        return pd.DataFrame(columns=ACCOUNT_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    df["record_key"] = np.where(df["is_mention"].astype(bool), MENTION_PREFIX + df["source"] + ":" + df["source_record_id"],
                                df["source"] + ":" + df["source_record_id"])
    parsed = map_unique(df["company_name"], parse_company_name)
    df["company_base"] = parsed.map(lambda c: c.base if c else None)
    df["company_key"] = parsed.map(lambda c: (c.key or None) if c else None)
    df["legal_form"] = parsed.map(lambda c: c.legal_form if c else None)
    df["company_first_token"] = df["company_key"].str.split(" ").str[0]
    # Phonetic code of the whole name: "Mueller Antriebstechnik" and "Müller Antriebstechnick" block together.
    df["company_kp"] = map_unique(df["company_key"], lambda k: koelner_phonetik(k.replace(" ", "")))
    addr = clean_addresses(df["street"], df["house_number"], df["postal_code"], df["city"], df["country"])
    for c in ("street", "house_number", "postal_code", "city", "country", "leitregion", "city_key"):
        df[c] = addr[c]
    full = [(f"{s} {h}" if is_text(h) else s) if is_text(s) else None for s, h in zip(df["street"], df["house_number"])]
    df["street_full_key"] = map_unique(pd.Series(full, index=df.index, dtype=object), street_key)
    df["phone_e164"] = clean_phones(df["phone"])
    emails = clean_emails(df["email"])
    web = domain_of_website(df["website"])
    email_domain = emails["email_domain"].where(~emails["is_free_mail"])
    df["domain"] = web.where(web.notna(), email_domain)
    df["vat_id"] = _col(df, "vat_id").str.replace(r"\s", "", regex=True).str.upper()
    if register is not None and len(register):
        reg = register.dropna(subset=["register_number"]).drop_duplicates(["company_key", "city_key"])
        joined = df[["company_key", "city_key"]].merge(reg[["company_key", "city_key", "register_court", "register_number"]],
                                                       on=["company_key", "city_key"], how="left")
        df["register_court"] = _col(df, "register_court").where(df["register_court"].notna(), joined["register_court"].to_numpy())
        df["register_number"] = _col(df, "register_number").where(df["register_number"].notna(),
                                                                   joined["register_number"].to_numpy())
    df["register_id"] = register_ids(df["register_court"], df["register_number"])
    return df[ACCOUNT_COLUMNS].reset_index(drop=True)


def is_text(value) -> bool:
    """Is a value text, not missing? pandas 3 holds a missing value of a text column as NaN, which is truthy: a
    test ``if value`` made "nan nan" the street of every address-less record, and so one street for all of them."""
    return isinstance(value, str) and value != ""


def register_ids(court, number) -> list:
    """``court|number`` where both are known, else None."""
    return [f"{c}|{n}" if is_text(c) and is_text(n) else None for c, n in zip(court, number)]


# An account record made from a person record's company mention is keyed by this and the person's key.
MENTION_PREFIX = "mention:"

SIGNATURE_COLUMNS = ["company_key", "company_first_token", "company_kp", "legal_form", "postal_code", "leitregion", "city_key",
                     "street_full_key", "domain", "phone_e164", "vat_id", "register_id", "erp_customer_number",
                     "crm_company_id"]


def account_signatures(accounts: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Distinct matching-relevant value combinations; many mentions of a company are written identically.

    Returns the signature table and, per account record, the row of its signature.
    """
    keys = accounts[SIGNATURE_COLUMNS].astype(object).where(accounts[SIGNATURE_COLUMNS].notna(), "\x00")
    codes = pd.MultiIndex.from_frame(keys).factorize()[0] if len(keys) else np.empty(0, np.int64)
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy() if len(codes) else np.empty(0, np.int64)
    sig = accounts.iloc[first][SIGNATURE_COLUMNS + ["source", "record_key"]].reset_index(drop=True)
    sig["records"] = np.bincount(codes, minlength=len(first)) if len(codes) else 0
    return sig, codes
