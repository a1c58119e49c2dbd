"""A small FEBRL-style person data set (Australian names and addresses), made here: originals and
duplicates with typos, swapped fields and missing values, with the true entity of every record."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from benchmarks.bench_febrl import MAPPING  # noqa: F401  the public FEBRL files' mapping: the same columns

GIVEN = ["jack", "oliver", "william", "noah", "thomas", "james", "lucas", "henry", "charlotte", "olivia", "amelia",
         "isla", "mia", "ava", "grace", "chloe", "sophie", "ruby", "emily", "zoe", "liam", "ethan", "mason", "logan",
         "harper", "ella", "lily", "matilda", "sienna", "evie", "max", "samuel", "joshua", "ryan", "daniel", "alexander"]
SURNAMES = ["smith", "jones", "williams", "brown", "wilson", "taylor", "johnson", "white", "martin", "anderson",
            "thompson", "nguyen", "thomas", "walker", "harris", "lee", "ryan", "robinson", "kelly", "king", "davis",
            "wright", "evans", "roberts", "green", "hall", "wood", "jackson", "clarke", "patel", "khan", "lewis",
            "james", "phillips", "mitchell", "campbell", "oconnor", "murphy", "sullivan", "hughes", "edwards", "cook"]
STREETS = ["miller street", "george street", "pitt street", "kent street", "elizabeth street", "macquarie street",
           "oxford street", "bourke street", "collins street", "flinders lane", "swanston street", "chapel street"]
SUBURBS = [("2060", "north sydney", "nsw"), ("2000", "sydney", "nsw"), ("3000", "melbourne", "vic"),
           ("4000", "brisbane", "qld"), ("5000", "adelaide", "sa"), ("6000", "perth", "wa"), ("2600", "canberra", "act"),
           ("7000", "hobart", "tas"), ("2250", "gosford", "nsw"), ("3220", "geelong", "vic")]
HEADER = ["rec_id", "given_name", "surname", "street_number", "address_1", "address_2", "suburb", "postcode", "state",
          "date_of_birth", "soc_sec_id"]


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s) - 1)
    op = rng.randrange(3)
    if op == 0:
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if op == 1:
        return s[:i] + s[i + 1:]
    return s[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + s[i + 1:]


def write(path: Path, originals: int = 400, duplicates: int = 250, seed: int = 1) -> dict[str, str]:
    rng = random.Random(seed)
    people = []
    for n in range(originals):
        plz, suburb, state = rng.choice(SUBURBS)
        people.append({"given_name": rng.choice(GIVEN), "surname": rng.choice(SURNAMES),
                       "street_number": str(rng.randint(1, 300)), "address_1": rng.choice(STREETS),
                       "address_2": rng.choice(["", "", "unit 3", "flat 12"]), "suburb": suburb, "postcode": plz,
                       "state": state, "date_of_birth": f"19{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                       "soc_sec_id": str(rng.randint(1_000_000, 9_999_999))})
    truth: dict[str, str] = {}
    rows = []
    for n, p in enumerate(people):
        rid = f"rec-{n}-org"
        rows.append({"rec_id": rid, **p})
        truth[rid] = f"e{n}"
    for d in range(duplicates):
        n = rng.randrange(originals)
        p = dict(people[n])
        for _ in range(rng.randint(1, 3)):
            f = rng.choice(["given_name", "surname", "address_1", "soc_sec_id", "date_of_birth", "swap", "blank", "suburb"])
            if f == "swap":
                p["given_name"], p["surname"] = p["surname"], p["given_name"]
            elif f == "blank":
                p[rng.choice(["street_number", "address_2", "soc_sec_id", "date_of_birth"])] = ""
            elif p[f]:
                p[f] = _typo(rng, p[f])
        rid = f"rec-{n}-dup-{d}"
        rows.append({"rec_id": rid, **p})
        truth[rid] = f"e{n}"
    rng.shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    return truth
