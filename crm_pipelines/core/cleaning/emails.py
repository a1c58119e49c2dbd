"""E-mail addresses: trimmed, lower-cased, syntax-checked, free-mail told apart from company domains."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .text import clean_text

# A pragmatic syntax check (RFC 5322 allows far more; CRMs and mail tools do not).
EMAIL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@"
                      r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")

FREE_MAIL_DOMAINS = frozenset({
    "gmx.de", "gmx.net", "gmx.at", "gmx.ch", "web.de", "t-online.de", "gmail.com", "googlemail.com", "outlook.de",
    "outlook.com", "hotmail.com", "hotmail.de", "live.de", "yahoo.de", "yahoo.com", "freenet.de", "posteo.de",
    "mailbox.org", "icloud.com", "me.com", "aol.com", "aon.at", "bluewin.ch", "gmx.com", "arcor.de", "email.de",
    "online.de", "mail.de", "protonmail.com", "proton.me",
})


def normalize_email(value: str | None) -> str | None:
    if value is None:
        return None
    email = clean_text(value).strip().strip("<>").strip().lower()
    if email.startswith("mailto:"):
        email = email[7:]
    return email if EMAIL_RE.match(email) else None


def clean_emails(series: pd.Series) -> pd.DataFrame:
    """Columns: email_norm (None if invalid), email_domain, email_local, is_free_mail, email_invalid."""
    raw = series.astype(object).where(series.notna(), None)
    text = _cleaned(raw).str.strip().str.strip("<>").str.strip().str.lower()
    text = text.str.replace(r"^mailto:", "", regex=True)
    valid = text.str.match(EMAIL_RE.pattern).fillna(False).astype(bool)
    norm = text.where(valid)
    parts = norm.str.rsplit("@", n=1, expand=True) if valid.any() else pd.DataFrame({0: norm, 1: norm})
    domain = parts[1] if 1 in parts else pd.Series(None, index=series.index, dtype=object)
    out = pd.DataFrame({
        "email_norm": norm.astype(object).where(valid, None),
        "email_local": parts[0].astype(object).where(valid, None),
        "email_domain": domain.astype(object).where(valid, None),
    }, index=series.index)
    out["is_free_mail"] = out["email_domain"].isin(FREE_MAIL_DOMAINS).to_numpy() & valid.to_numpy()
    out["email_invalid"] = raw.notna().to_numpy() & ~valid.to_numpy()
    return out


def _cleaned(text: pd.Series) -> pd.Series:
    """clean_text on the values that need it (non-ASCII), vectorised for the rest."""
    odd = ~text.str.isascii().fillna(True).astype(bool)
    if not odd.any():
        return text
    out = text.copy()
    out[odd] = text[odd].map(clean_text)
    return out


def domain_of_website(series: pd.Series) -> pd.Series:
    """'https://www.Musterfirma.de/kontakt' -> 'musterfirma.de'."""
    text = series.astype(object).where(series.notna(), None).str.strip().str.lower()
    text = text.str.replace(r"^[a-z]+://", "", regex=True).str.replace(r"^www\d?\.", "", regex=True)
    text = text.str.split("/").str[0].str.split(":").str[0]
    ok = text.str.match(r"^[a-z0-9.-]+\.[a-z]{2,}$").fillna(False).astype(bool)
    return text.astype(object).where(ok & text.notna(), None)


__all__ = ["clean_emails", "normalize_email", "domain_of_website", "FREE_MAIL_DOMAINS", "np"]
