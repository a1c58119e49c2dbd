"""Splink (DuckDB backend) on the same prepared records, for a side-by-side measurement.

The configuration follows Splink's published person-deduplication example (forename/surname
comparison with term frequencies, date/e-mail/postcode comparisons, EM trained on two
blocking rules, u by random sampling, prior from deterministic rules), adapted to the
columns this data has; accounts use name token similarity, postcode, domain and the
identifiers. Splink is installed only for benchmarks (`pip install -e '.[bench]'`).

    python -m benchmarks.splink_runner persons RECORDS.pkl OUT.csv
    python -m benchmarks.splink_runner generic PEOPLE.csv OUT.csv   (PEOPLE.mapping.yaml beside it)
    python -m benchmarks.splink_runner febrl FEBRL.csv OUT.csv      (a FEBRL file as published)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd


def _linker(df: pd.DataFrame, settings):
    import duckdb
    from splink import Linker
    from splink.backends.duckdb import DuckDBAPI

    from benchmarks.common import CACHE

    # DuckDB takes up to 80 % of the machine by default; beside the Python side's frames that ended in the
    # kernel's OOM killer at 24.2 GB for 1.3M person records on a 24 GB machine. With a limit DuckDB
    # spills to disk instead (BENCH_SPLINK_MEMORY_LIMIT, DuckDB's syntax).
    spill = CACHE / "splink-spill"
    spill.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(config={"memory_limit": os.environ.get("BENCH_SPLINK_MEMORY_LIMIT", "12GB"),
                                        "temp_directory": str(spill)})
    db_api = DuckDBAPI(connection=connection)
    sdf = db_api.register(df)
    return Linker(sdf, settings, log_level=30)


def _clusters(linker, threshold: float) -> pd.DataFrame:
    preds = linker.inference.predict(threshold_match_probability=0.3)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(preds, threshold_match_probability=threshold)
    out = clusters.as_pandas_dataframe()
    return out[["unique_id", "cluster_id"]]


def splink_persons(records: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    df = pd.DataFrame({
        "unique_id": records["record_key"].astype(str),
        "first_name": records["first_key"], "surname": records["last_key"],
        "email": records["email_norm"], "phone": records["phone_any"], "company": records["org_key"],
        "postcode": records["postal_code"],
    })
    both = df["first_name"].notna() & df["surname"].notna()
    df["first_name_surname_concat"] = (df["first_name"] + " " + df["surname"]).where(both)
    df = df.astype(object).where(df.notna(), None)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.ForenameSurnameComparison("first_name", "surname",
                                         forename_surname_concat_col_name="first_name_surname_concat"),
            cl.EmailComparison("email"),
            cl.ExactMatch("phone"),
            cl.JaroWinklerAtThresholds("company", [0.9, 0.7]),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("email"), block_on("phone"), block_on("first_name", "surname"), block_on("surname", "postcode"),
            block_on("first_name", "postcode"), block_on("company", "surname"),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    linker = _linker(df, settings)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("email"), block_on("first_name", "surname", "postcode")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    # Two EM sessions, as in Splink's examples, on rules that admit few non-matches here (the
    # example's first+surname session learns "same company" instead of "same person" on B2B data).
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("email"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("phone"))
    return _clusters(linker, threshold)


def splink_accounts(signatures: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    df = pd.DataFrame({
        "unique_id": [str(i) for i in range(len(signatures))],
        "name": signatures["company_key"], "postcode": signatures["postal_code"], "city": signatures["city_key"],
        "street": signatures["street_full_key"], "domain": signatures["domain"], "phone": signatures["phone_e164"],
        "vat": signatures["vat_id"], "erp": signatures["erp_customer_number"], "crm": signatures["crm_company_id"],
        "region": signatures["leitregion"],
    })
    df = df.astype(object).where(df.notna(), None)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.JaroWinklerAtThresholds("name", [0.95, 0.88, 0.7]).configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode"), cl.ExactMatch("city"), cl.JaroWinklerAtThresholds("street", [0.9]),
            cl.ExactMatch("domain"), cl.ExactMatch("phone"), cl.ExactMatch("vat"), cl.ExactMatch("erp"), cl.ExactMatch("crm"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("name", "region"), block_on("domain"), block_on("phone"), block_on("vat"), block_on("erp"),
            block_on("crm"),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    linker = _linker(df, settings)
    linker.training.estimate_probability_two_random_records_match([block_on("crm"), block_on("erp")], recall=0.5)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("name", "region"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("postcode"))
    out = _clusters(linker, threshold)
    out["unique_id"] = out["unique_id"].astype(int)
    return out


def splink_generic(records: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Any person file as the dedupe command prepares it: Splink's published person example (forename and surname
    with term frequencies, date of birth, postcode, e-mail; EM on name and date-of-birth blocks), with the street,
    town and phone this data has."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    df = pd.DataFrame({
        "unique_id": records["record_key"].astype(str),
        "first_name": records["first_key"], "surname": records["last_key"], "dob": records["date_of_birth"],
        "email": records["email_norm"], "phone": records["phone_any"], "street": records["street_key"],
        "postcode": records["postal_code"], "city": records["city_key"],
    })
    df = df.astype(object).where(df.notna(), None)
    both = df["first_name"].notna() & df["surname"].notna()
    df["first_name_surname_concat"] = (df["first_name"].astype(str) + " " + df["surname"].astype(str)).where(both, None)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.ForenameSurnameComparison("first_name", "surname",
                                         forename_surname_concat_col_name="first_name_surname_concat"),
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.EmailComparison("email"),
            cl.ExactMatch("phone"),
            cl.JaroWinklerAtThresholds("street", [0.9]),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
            cl.ExactMatch("city").configure(term_frequency_adjustments=True),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("first_name", "surname"), block_on("surname", "dob"), block_on("first_name", "dob"),
            block_on("postcode", "first_name"), block_on("email"), block_on("phone"),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    linker = _linker(df, settings)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("first_name", "surname", "dob"), block_on("email")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("first_name", "surname"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    return _clusters(linker, threshold)


def splink_febrl(path: Path, threshold: float = 0.95) -> pd.DataFrame:
    """A FEBRL file as published, with the settings of Splink's own FEBRL3 example (docs/demos/examples/duckdb/
    febrl3: name comparisons, date of birth, soc_sec_id within two edits, street number and postcode with term
    frequencies; blocks on each of soc_sec_id, given name, surname, date of birth and postcode; the prior from
    three deterministic rules at recall 0.9, u from a million random pairs, EM on date of birth and on postcode),
    clustered at ``threshold`` as the other comparisons here are."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = df.astype(object).where(df != "", None).rename(columns={"rec_id": "unique_id"})
    settings = SettingsCreator(
        link_type="dedupe_only",
        blocking_rules_to_generate_predictions=[
            block_on("soc_sec_id"), block_on("given_name"), block_on("surname"), block_on("date_of_birth"),
            block_on("postcode"),
        ],
        comparisons=[
            cl.NameComparison("given_name"),
            cl.NameComparison("surname"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True, datetime_format="%Y%m%d"),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [2]),
            cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
            cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
        ],
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )
    linker = _linker(df, settings)
    linker.training.estimate_probability_two_random_records_match([
        block_on("soc_sec_id"), block_on("given_name", "surname", "date_of_birth"),
        "l.given_name = r.surname and l.surname = r.given_name and l.date_of_birth = r.date_of_birth",
    ], recall=0.9)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=2)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("date_of_birth"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("postcode"))
    return _clusters(linker, threshold)


def main(argv: list[str]) -> int:
    kind, src, dst = argv
    if kind == "febrl":
        out = splink_febrl(Path(src)).rename(columns={"unique_id": "record_id"})
    elif kind == "generic":  # a person CSV with its mapping beside it, read and prepared as the dedupe command does
        from crm_pipelines.matching.generic import prepare, read_mapped

        raw, _rejected, _mapping = read_mapped(Path(src), Path(src).with_suffix(".mapping.yaml"))
        records = prepare(raw)
        del raw
        out = splink_generic(records).rename(columns={"unique_id": "record_id"})
    else:
        records = pd.read_pickle(src)
        out = splink_persons(records) if kind == "persons" else splink_accounts(records)
    out.to_csv(dst, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
