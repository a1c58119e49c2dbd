"""The demo landing-zone generator: deterministic, realistic German B2B data, and the mess real data has."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from crm_pipelines.demo.generator import SOURCES, GeneratorConfig, generate
from crm_pipelines.demo.world import translit

ROOT = Path(__file__).resolve().parents[2]


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def texts(root: Path, source: str, encoding: str = "utf-8") -> str:
    return "\n".join(p.read_bytes().decode(encoding) for p in sorted((root / source).rglob("*")) if p.is_file())


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = generate(GeneratorConfig(contacts=300, seed=5, out=tmp_path / "a", days=3))
    b = generate(GeneratorConfig(contacts=300, seed=5, out=tmp_path / "b", days=3))
    generate(GeneratorConfig(contacts=300, seed=6, out=tmp_path / "c", days=3))
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    assert a == b


def test_every_source_gets_files_for_its_days(demo_landing):
    root, manifest = demo_landing
    assert set(manifest["sources"]) == set(SOURCES)
    for source in ("web_form_leads", "erp_customers", "erp_orders", "newsletter_signups", "behaviour_events",
                   "crm_accounts", "crm_contacts"):
        days = sorted(p.name for p in (root / source).iterdir())
        assert days == manifest["partitions"], source


def test_formats_are_those_the_sources_deliver(demo_landing):
    root, _ = demo_landing
    fair = next((root / "trade_fair_leads").rglob("*.csv")).read_bytes()
    assert fair.startswith(b"\xef\xbb\xbf") and b";" in fair.splitlines()[0] and b"\r\n" in fair
    erp = next((root / "erp_customers").rglob("KUNDEN_*.txt")).read_bytes()
    assert erp.endswith(b"\r\n\x1a")
    lines = erp.decode("cp850").split("\r\n")[:-1]
    assert {len(line) for line in lines} <= {339, 345}  # 345: a record made over-long on purpose
    page = json.loads(next((root / "crm_contacts").rglob("page_00001.json")).read_text())
    assert set(page) <= {"results", "paging"} and page["results"][0]["properties"]["hs_object_id"] == page["results"][0]["id"]


def test_german_details_survive(demo_landing):
    root, _ = demo_landing
    erp = texts(root, "erp_customers", "cp850") + texts(root, "crm_accounts") + texts(root, "web_form_leads")
    for form in ("GmbH & Co. KG", "GmbH", "AG", "e.K.", "UG (haftungsbeschr"):
        assert form in erp, form
    assert re.search(r'"zip": "0\d{4}"', texts(root, "crm_contacts"))  # PLZ with a leading zero
    assert re.search("[äöüÄÖÜß]", texts(root, "crm_contacts"))
    phones = texts(root, "trade_fair_leads")
    assert re.search(r"\+49 \d", phones) and re.search(r"0\d{2,4}/\d", phones)  # several phone notations


def test_the_same_person_appears_across_sources_with_variations(demo_landing):
    root, _ = demo_landing
    truth = pd.read_csv(root / "_ground_truth" / "records.csv", dtype=str, keep_default_na=False)
    multi = truth[truth.person_id != ""].groupby("person_id")["source"].nunique()
    assert (multi >= 2).sum() > 50
    names: dict[str, set[str]] = defaultdict(set)
    ids = dict(zip(zip(truth.source, truth.source_record_id), truth.person_id))
    for path in (root / "crm_contacts").rglob("*.json"):
        for rec in json.loads(path.read_text())["results"]:
            if (pid := ids.get(("crm_contacts", rec["id"]))):
                names[pid].add(rec["properties"]["lastname"] or "")
    for path in (root / "web_form_leads").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (pid := ids.get(("web_form_leads", rec["lead_id"]))):
                names[pid].add(rec["last_name"] or "")
    varied = [v for v in names.values() if len(v) > 1]
    assert varied, "no person is spelled differently in two sources"
    assert any(translit(a) == translit(b) and a != b for v in varied for a in v for b in v)  # Müller vs Mueller


def test_malformed_records_are_counted_in_the_manifest(demo_landing):
    _, manifest = demo_landing
    total = sum(s["expected_quarantined"] for s in manifest["sources"].values())
    kinds = {k for s in manifest["sources"].values() for k in s["malformed_kinds"]}
    assert total > 10
    assert {"broken_json", "invalid_date", "extra_column", "duplicate_record_id"} & kinds
    assert manifest["sources"]["web_form_leads"]["duplicate_files"] == 1


def test_ground_truth_lists_every_person_and_company_record(demo_landing):
    root, _ = demo_landing
    with open(root / "_ground_truth" / "records.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    crm_ids = set()
    for path in (root / "crm_contacts" / sorted(p.name for p in (root / "crm_contacts").iterdir())[0]).glob("*.json"):
        crm_ids |= {r["id"] for r in json.loads(path.read_text())["results"]}
    truth_crm = {r["source_record_id"] for r in rows if r["source"] == "crm_contacts"}
    assert crm_ids == truth_crm
    assert all(r["account_id"].startswith("A") for r in rows if r["source"] in ("erp_customers", "crm_accounts"))


def test_cli_generate(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crm_pipelines.demo", "generate", "--contacts", "200", "--seed", "3",
                           "--days", "2", "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["web_form_leads"] > 0
    assert "drawing 200 people" in proc.stderr  # progress on stderr
    assert (tmp_path / "out" / "_ground_truth" / "manifest.json").is_file()


def test_cli_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crm_pipelines.demo", "generate", "--contacts", "0", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be a positive whole number" in proc.stderr


@pytest.mark.slow
def test_larger_sizes_scale_linearly_enough(tmp_path):
    import time

    t0 = time.monotonic()
    small = generate(GeneratorConfig(contacts=2_000, seed=1, out=tmp_path / "s", days=2))
    t_small = time.monotonic() - t0
    t0 = time.monotonic()
    big = generate(GeneratorConfig(contacts=20_000, seed=1, out=tmp_path / "b", days=2))
    t_big = time.monotonic() - t0
    ratio = sum(s["records"] for s in big["sources"].values()) / sum(s["records"] for s in small["sources"].values())
    assert 8 < ratio < 12
    assert t_big < 10 * t_small + 10  # no quadratic step
