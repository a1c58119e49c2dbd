"""One measured matching job in its own process (so its peak memory is its own); prints one JSON line.

    python -m benchmarks.matching_worker ours WAREHOUSE_URL LANDING
    python -m benchmarks.matching_worker splink WAREHOUSE_URL LANDING
    python -m benchmarks.matching_worker golden WAREHOUSE_URL LANDING
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from crm_pipelines.core.golden.build import ensure_golden_tables, resolve_accounts, resolve_contacts
from crm_pipelines.core.golden.matching.evaluate import load_truth, pairwise_scores
from crm_pipelines.core.golden.matching.resolve import resolve
from crm_pipelines.core.golden.matching.settings import load_matching_config
from crm_pipelines.core.golden.records import (ACCOUNT_SOURCES, PERSON_SOURCES, account_records, account_signatures,
                                               person_records)
from crm_pipelines.core.golden.review import build_review_queue
from crm_pipelines.core.golden.staging import build_account_records, build_person_records, read_raw
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.settings import DEFAULT_CONFIG_DIR


def _scores(truth: pd.DataFrame, person_keys, person_labels, account_keys, account_labels) -> dict:
    p = pairwise_scores(pd.Series(np.asarray(person_labels), index=person_keys), truth["person_id"])
    keys = pd.Series(account_keys).str.replace("^mention:", "", regex=True).to_numpy()
    a = pairwise_scores(pd.Series(np.asarray(account_labels), index=keys), truth["account_id"])
    return {"persons": p.__dict__, "accounts": a.__dict__}


def ours(wh: Warehouse, truth: pd.DataFrame) -> dict:
    """Cleaning and matching as the golden assets do it: each step keeps only what the next one needs."""
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    t0 = time.monotonic()
    persons = person_records(read_raw(wh, PERSON_SOURCES))
    accounts = account_records(read_raw(wh, ACCOUNT_SOURCES), persons)
    sig, codes = account_signatures(accounts)
    n_accounts, account_keys = len(accounts), accounts["record_key"].to_numpy()
    del accounts
    t_clean = time.monotonic() - t0
    t1 = time.monotonic()
    ares = resolve(sig, cfg.accounts)
    account_labels, account_stats = ares.labels[codes], ares.stats
    del ares
    pres = resolve(persons, cfg.persons)
    t_resolve = time.monotonic() - t1
    return {
        "seconds_clean": t_clean, "seconds_resolve": t_resolve,
        "person_records": len(persons), "account_records": n_accounts, "account_signatures": len(sig),
        "person_comparisons": pres.stats["candidate_pairs"], "person_possible": pres.stats["possible_pairs"],
        "account_comparisons": account_stats["candidate_pairs"], "account_possible": account_stats["possible_pairs"],
        **_scores(truth, persons["record_key"].to_numpy(), pres.labels, account_keys, account_labels),
    }


def splink(wh: Warehouse, truth: pd.DataFrame) -> dict:
    from benchmarks.splink_runner import splink_accounts, splink_persons

    raw = read_raw(wh, PERSON_SOURCES + ACCOUNT_SOURCES)
    persons = person_records(raw)
    accounts = account_records(raw, persons)
    del raw
    sig, codes = account_signatures(accounts)
    t = time.monotonic()
    pc = splink_persons(persons)
    t_persons = time.monotonic() - t
    t = time.monotonic()
    ac = splink_accounts(sig)
    t_accounts = time.monotonic() - t
    plabels = pc.set_index("unique_id")["cluster_id"].reindex(persons["record_key"]).to_numpy()
    alabels = ac.set_index("unique_id")["cluster_id"].reindex(range(len(sig))).to_numpy()[codes]
    return {"seconds_resolve": t_persons + t_accounts, "seconds_persons": t_persons, "seconds_accounts": t_accounts,
            **_scores(truth, persons["record_key"].to_numpy(), plabels, accounts["record_key"].to_numpy(), alabels)}


def golden(wh: Warehouse, truth: pd.DataFrame) -> dict:
    """The asset path: records written to staging, resolved, golden tables, crosswalk and lineage written."""
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")
    t = time.monotonic()
    ensure_golden_tables(wh)
    build_person_records(wh)
    build_account_records(wh)
    resolve_accounts(wh, cfg, "bench")
    resolve_contacts(wh, cfg, "bench")
    build_review_queue(wh)
    seconds = time.monotonic() - t
    pc = wh.read_raw_sql("SELECT record_key, golden_id FROM golden.person_crosswalk WHERE valid_to IS NULL")
    ac = wh.read_raw_sql("SELECT record_key, golden_id FROM golden.account_crosswalk WHERE valid_to IS NULL")
    return {"seconds": seconds, **_scores(truth, pc["record_key"].to_numpy(), pc["golden_id"], ac["record_key"].to_numpy(),
                                          ac["golden_id"])}


def main(argv: list[str]) -> int:
    mode, url, landing = argv
    wh = Warehouse.for_url(url)
    truth = load_truth(Path(landing) / "_ground_truth" / "records.csv").set_index("record_key")
    out = {"ours": ours, "splink": splink, "golden": golden}[mode](wh, truth)
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
