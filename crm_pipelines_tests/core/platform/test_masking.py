"""Masking of personal data for logs, metadata and previews."""

from __future__ import annotations

import pandas as pd

from crm_pipelines.core.model import CONTACT
from crm_pipelines.core.platform.masking import mask_email, mask_name, mask_phone, mask_text, mask_value, masked_preview


def test_mask_email_keeps_only_initials_and_tld():
    assert mask_email("j.mueller@musterfirma.de") == "j***@m***.de"
    assert mask_email("no-at-sign") == "n***"
    assert mask_email(None) is None


def test_mask_phone_keeps_the_last_two_digits():
    assert mask_phone("+49 351 4711-23") == "***23"
    assert mask_phone("12") == "***"


def test_mask_name_and_other_kinds():
    assert mask_name("Hans-Peter von Müller") == "H*** v*** M***"
    assert mask_value("Hauptstraße 12", "address") == "[14 chars]"
    assert mask_value("1975-04-01", "date") == "****-**-**"
    assert mask_value("DE", None) == "DE"


def test_mask_text_finds_emails_and_phones_but_leaves_dates_and_line_numbers():
    text = "2026-11-04: file.csv, line 2, column 31: call 0351 4711-23 or mail Jane.Doe@Example.com on 03.11.2026 14:35"
    masked = mask_text(text)
    assert "Jane.Doe" not in masked and "4711" not in masked
    assert masked.startswith("2026-11-04: file.csv, line 2, column 31:")
    assert masked.endswith("on 03.11.2026 14:35")


def test_masked_preview_masks_by_model_field_kind():
    df = pd.DataFrame({"source_record_id": ["1"], "first_name": ["Jörg"], "email": ["j@x.de"], "phone": ["0351 12345"],
                       "city": ["Dresden"]})
    out = masked_preview(df, CONTACT)
    assert out.iloc[0].tolist() == ["1", "J***", "j***@x***.de", "***45", "Dresden"]
