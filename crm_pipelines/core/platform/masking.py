"""Masking of personal data for everything that leaves the warehouse as text.

Logs, Dagster metadata, previews and error messages are read by many people and
kept for a long time; they must never carry an e-mail address, a phone number or
a name in clear. The warehouse itself holds the real values.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import pandas as pd

from ..model import Entity

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Seven or more digits, optionally separated by the usual phone punctuation.
PHONE_RE = re.compile(r"(?<![\w.])\+?(?:\(?\d[\d\s/()\-]{5,}\d)(?![\w.])")


def mask_email(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value)
    local, at, domain = text.partition("@")
    if not at:
        return _mask_word(text)
    host, dot, tld = domain.rpartition(".")
    if not dot:
        host, tld = domain, ""
    return f"{local[:1]}***@{host[:1]}***{'.' + tld if tld else ''}"


def mask_phone(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    digits = re.sub(r"\D", "", str(value))
    return f"***{digits[-2:]}" if len(digits) > 4 else "***"


def _mask_word(text: str) -> str:
    return f"{text[:1]}***" if text else text


def mask_name(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return " ".join(_mask_word(part) for part in str(value).split())


def mask_value(value: Any, kind: str | None) -> Any:
    if kind is None or value is None:
        return value
    if isinstance(value, float) and pd.isna(value):
        return None
    if kind == "email":
        return mask_email(value)
    if kind == "phone":
        return mask_phone(value)
    if kind == "name":
        return mask_name(value)
    if kind == "date":
        return "****-**-**"
    if kind in ("address", "free_text"):
        return f"[{len(str(value))} chars]"
    raise ValueError(f"unknown pii kind {kind!r}")


DATE_LIKE_RE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}\.\d{1,2}\.\d{2,4}(?: \d{1,2}:\d{2}(?::\d{2})?)?|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?")


def _mask_phone_match(m: re.Match) -> str:
    text = m.group(0)
    # Dates and times in messages ("2026-11-04: line 2") are not phone numbers.
    if DATE_LIKE_RE.fullmatch(text.strip()) or len(re.sub(r"\D", "", text)) < 7:
        return text
    return mask_phone(text) or ""


def mask_text(text: str) -> str:
    """Masks e-mail addresses and phone-like digit runs inside free text (error messages, log lines)."""
    text = EMAIL_RE.sub(lambda m: mask_email(m.group(0)) or "", text)
    return PHONE_RE.sub(_mask_phone_match, text)


def masked_preview(df: pd.DataFrame, entity: Entity, columns: Iterable[str] | None = None, rows: int = 5) -> pd.DataFrame:
    """A few rows for Dagster metadata, with every personal field masked by its model kind."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    head = df.loc[:, cols].head(rows).copy()
    for col in cols:
        kind = entity.field(col).pii if entity.has(col) else None
        if kind:
            head[col] = [mask_value(v, kind) for v in head[col].tolist()]
    return head.astype(object).where(head.notna(), None)
