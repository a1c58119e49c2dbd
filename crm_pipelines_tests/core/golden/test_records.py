"""Account records as the cleaning makes them: missing parts stay missing (pandas 3 holds them as NaN)."""

import pandas as pd
import pytest

from crm_pipelines.core.golden.records import account_records, register_ids


def test_an_address_without_street_has_no_street_and_a_register_id_needs_court_and_number():
    raw = {"erp_customers": pd.DataFrame({
        "source_record_id": ["1", "2", "3", "4"], "company_name": ["Alpha GmbH", "Beta AG", "Gamma KG", "Delta GmbH"],
        "street": ["Hauptstr.", None, None, "Ring"], "house_number": ["1", None, "5", None],
        "postal_code": ["01067", "01067", "80331", "80331"], "city": ["Dresden", "Dresden", "München", "München"],
        "register_court": ["Amtsgericht Dresden", None, None, "Amtsgericht München"],
        "register_number": ["HRB 1", None, "HRB 2", None],
        "_partition": ["2026-01-01"] * 4, "_file": ["a.csv"] * 4, "_record_no": [1, 2, 3, 4]})}
    out = account_records(raw, pd.DataFrame(columns=["company_name"])).set_index("source_record_id")
    # Two companies without a street do not share one ("nan nan" was the street of every address-less record).
    assert out.loc["1", "street_full_key"] == "hauptstr1"
    assert pd.isna(out.loc["2", "street_full_key"]) and pd.isna(out.loc["3", "street_full_key"])
    assert out.loc["4", "street_full_key"] == "ring"
    assert out.loc["1", "register_id"] == "Amtsgericht Dresden|HRB 1"
    assert out[["register_id"]].drop(index="1")["register_id"].isna().all()


@pytest.mark.parametrize("dtype", ["str", "object"])
def test_register_ids_of_missing_parts_are_missing(dtype):
    court = pd.Series(["Amtsgericht Dresden", None, None, ""], dtype=dtype)
    number = pd.Series(["HRB 1", None, "HRB 2", "HRB 3"], dtype=dtype)
    assert register_ids(court, number) == ["Amtsgericht Dresden|HRB 1", None, None, None]
