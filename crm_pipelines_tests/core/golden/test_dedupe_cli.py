"""`python -m crm_pipelines.matching dedupe`: the same cleaning and matching on any person CSV, non-German too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from crm_pipelines.core.golden.matching.evaluate import pairwise_scores
from crm_pipelines_tests.febrl_like import MAPPING, write

ROOT = Path(__file__).resolve().parents[3]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crm_pipelines.matching", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_dedupe_an_australian_febrl_style_extract(tmp_path):
    truth = write(tmp_path / "people.csv", originals=400, duplicates=250, seed=3)
    (tmp_path / "mapping.yaml").write_text(MAPPING, encoding="utf-8")
    proc = run("dedupe", str(tmp_path / "people.csv"), "--mapping", str(tmp_path / "mapping.yaml"),
               "--out", str(tmp_path / "clusters.csv"), "--region", "AU")
    assert proc.returncode == 0, proc.stderr
    clusters = pd.read_csv(tmp_path / "clusters.csv", dtype=str)
    assert list(clusters.columns) == ["record_id", "cluster_id"] and len(clusters) == 650
    scores = pairwise_scores(clusters.set_index("record_id")["cluster_id"], pd.Series(truth))
    assert scores.f1 >= 0.95, scores
    assert "comparisons of" in proc.stderr  # the reduction by blocking is reported
    assert "with a field blanked" in proc.stderr  # typo'd birth dates do not drop the person


def test_dedupe_reports_bad_mapping_and_missing_file(tmp_path):
    (tmp_path / "m.yaml").write_text(MAPPING.replace("target: last_name", "target: surname"), encoding="utf-8")
    write(tmp_path / "p.csv", originals=5, duplicates=2)
    proc = run("dedupe", str(tmp_path / "p.csv"), "--mapping", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode != 0 and "fields.surname.target: unknown canonical field 'surname'" in proc.stderr
    proc = run("dedupe", str(tmp_path / "missing.csv"), "--mapping", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_dedupe_a_german_extract_with_full_names(tmp_path):
    rows = [
        ("1", "Herr Dr. Hans-Peter Müller", "01.02.1970", "Hauptstr. 5", "01067", "Dresden", "hp.mueller@firma.de"),
        ("2", "Mueller, Hans-Peter", "01.02.1970", "Hauptstraße 5", "01067", "Dresden", None),
        ("3", "Hans Müller", "03.04.1981", "Ringweg 2", "80331", "München", "hans.mueller@web.de"),
        ("4", "Anna Schmidt", "05.06.1975", "Am Markt 1", "04109", "Leipzig", "anna@schmidt-gmbh.de"),
        ("5", "Schmidt Anna", "05.06.1975", "Am Markt 1", "04109", "Leipzig", None),
    ]
    pd.DataFrame(rows, columns=["id", "name", "geburtsdatum", "strasse", "plz", "ort", "email"]).to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "m.yaml").write_text("""\
source: kunden
entity: person
format: {type: csv}
fields:
  id: {target: source_record_id}
  name: {target: full_name, transforms: [trim]}
  geburtsdatum: {target: date_of_birth, transforms: [parse_date]}
  strasse: {target: street}
  plz: {target: postal_code}
  ort: {target: city}
  email: {target: email, transforms: [trim, lower]}
""", encoding="utf-8")
    proc = run("dedupe", str(tmp_path / "p.csv"), "--mapping", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 0, proc.stderr
    c = pd.read_csv(tmp_path / "o.csv", dtype=str).set_index("record_id")["cluster_id"]
    assert c["1"] == c["2"] != c["3"]
    assert c["4"] == c["5"] != c["1"]
    assert json.dumps(c.to_dict())


def test_dedupe_a_german_file_of_namesakes_swaps_umlauts_gaps_and_moves(tmp_path):
    from benchmarks.german_people import MAPPING as GERMAN_MAPPING
    from benchmarks.german_people import write as write_german

    truth = write_german(tmp_path / "kunden.csv", records=6000, seed=5)
    (tmp_path / "kunden.yaml").write_text(GERMAN_MAPPING, encoding="utf-8")
    proc = run("dedupe", str(tmp_path / "kunden.csv"), "--mapping", str(tmp_path / "kunden.yaml"),
               "--out", str(tmp_path / "clusters.csv"))
    assert proc.returncode == 0, proc.stderr  # a blank first name once crashed the phonetic pairing
    clusters = pd.read_csv(tmp_path / "clusters.csv", dtype=str)
    scores = pairwise_scores(clusters.set_index("record_id")["cluster_id"], pd.Series(truth))
    assert scores.precision >= 0.99 and scores.f1 >= 0.98, scores


def test_cleaning_chunks_in_a_second_process_gives_the_same_clusters(tmp_path, monkeypatch):
    from benchmarks.german_people import MAPPING as GERMAN_MAPPING
    from benchmarks.german_people import write as write_german
    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.matching import generic
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    write_german(tmp_path / "kunden.csv", records=3000, seed=8)
    (tmp_path / "kunden.yaml").write_text(GERMAN_MAPPING, encoding="utf-8")
    spec = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml").generic_persons
    monkeypatch.setattr(generic, "CHUNK_ROWS", 700)  # five chunks: the second and later go to the worker
    started = []
    real_pool = generic.ProcessPoolExecutor
    monkeypatch.setattr(generic, "ProcessPoolExecutor", lambda *a, **k: started.append(1) or real_pool(*a, **k))
    monkeypatch.setattr(generic.os, "cpu_count", lambda: 2)
    two, _res, _rej = generic.dedupe(tmp_path / "kunden.csv", tmp_path / "kunden.yaml", spec, log=lambda _m: None)
    assert started == [1]
    monkeypatch.setattr(generic.os, "cpu_count", lambda: 1)
    one, _res, _rej = generic.dedupe(tmp_path / "kunden.csv", tmp_path / "kunden.yaml", spec, log=lambda _m: None)
    assert started == [1] and len(one) == 3000
    pd.testing.assert_frame_equal(two, one)
