"""A German person CSV for the dedupe command, made apart from the demo world's generator.

Originals have Faker's German names (every surname about as frequent as "Müller" in Germany, so
namesakes abound at a million people), a birth date, an address, a private or work e-mail and a
phone number, each with gaps. About a quarter of the records are duplicates of an original (some
originals have several) with one to three of: a typo in a name, umlauts spelled out (Müller ->
Mueller) or lost, first and last name swapped, a double first name shortened, a field left blank,
a birth date with swapped day and month or a wrong digit, a move to another address, another e-mail,
the phone written another way, "Straße" abbreviated. The true person of every record is returned.

    python -m benchmarks.german_people OUT.csv --records 130000
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

HEADER = ["kundennr", "vorname", "nachname", "geburtsdatum", "strasse", "plz", "ort", "email", "telefon"]
MAPPING = """\
source: kunden
entity: person
description: German person records (benchmarks/german_people.py)
format: {type: csv, delimiter: ","}
fields:
  kundennr: {target: source_record_id, transforms: [trim]}
  vorname: {target: first_name, transforms: [trim]}
  nachname: {target: last_name, transforms: [trim]}
  geburtsdatum: {target: date_of_birth, transforms: [trim, {parse_date: {formats: ["%d.%m.%Y"]}}]}
  strasse: {target: street, transforms: [trim]}
  plz: {target: postal_code, transforms: [trim]}
  ort: {target: city, transforms: [trim]}
  email: {target: email, transforms: [trim, lower]}
  telefon: {target: phone, transforms: [trim]}
constants:
  country: DE
"""
FREE_MAIL = ("gmx.de", "web.de", "t-online.de", "gmail.com", "outlook.de", "freenet.de", "posteo.de", "yahoo.de")
UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})
LOST = str.maketrans({"ä": "a", "ö": "o", "ü": "u", "Ä": "A", "Ö": "O", "Ü": "U", "ß": "s"})
SURNAME_PARTS = (("Berg", "Hof", "Wald", "Stein", "Brand", "Kirch", "Linden", "Rosen", "Acker", "Feld", "Ober", "Nieder",
                  "Holz", "Bach", "Sonnen", "Eich", "Buch", "Mühl", "Schön", "Grün", "Kalt", "Winter", "Sommer"),
                 ("mann", "meier", "huber", "bauer", "müller", "hofer", "berger", "brunner", "schmidt", "rieder",
                  "maier", "ner", "inger", "ling", "hardt", "stätter", "reiter", "wieser", "egger", "lechner"))


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s) - 1)
    op = rng.randrange(4)
    if op == 0:
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    if op == 1:
        return s[:i] + s[i + 1:]
    if op == 2:
        return s[:i] + s[i] + s[i:]
    return s[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + s[i + 1:]


def _slug(s: str) -> str:
    return "".join(ch for ch in s.translate(UMLAUTS).lower() if ch.isalnum() or ch == "-").replace("-", "")


_TAKEN: set[str] = set()


def _email(rng: random.Random, first: str, last: str) -> str:
    """A free-mail address the provider has not given anyone else (a namesake gets a number added)."""
    f, l = _slug(first), _slug(last)
    local = rng.choice((f"{f}.{l}", f"{f[:1]}.{l}", f"{l}.{f}", f"{f}{l}{rng.randint(1, 99)}", f"{f}_{l}",
                        f"{f}.{l}{rng.randint(60, 99)}"))
    domain = rng.choice(FREE_MAIL)
    address, k = f"{local}@{domain}", 1
    while address in _TAKEN:
        k += 1
        address = f"{local}{k}@{domain}"
    _TAKEN.add(address)
    return address


def _phone(rng: random.Random) -> tuple[str, str]:
    """(area code without 0, subscriber number)"""
    if rng.random() < 0.45:
        return f"1{rng.choice('567')}{rng.randint(0, 9)}", str(rng.randint(1_000_000, 99_999_999))
    return str(rng.randint(20, 9999)), str(rng.randint(10_000, 9_999_999))


def _phone_text(rng: random.Random, area: str, number: str) -> str:
    style = rng.randrange(5)
    if style == 0:
        return f"0{area} {number}"
    if style == 1:
        return f"0{area}/{number}"
    if style == 2:
        return f"+49 {area} {number}"
    if style == 3:
        return f"+49 (0){area} {number[:3]} {number[3:]}"
    return f"0{area}-{number}"


def _pools(rng: random.Random):
    from faker import Faker
    from faker.providers.person.de_DE import Provider as Person

    fake = Faker("de_DE")
    fake.seed_instance(rng.randrange(1 << 30))
    first_f = sorted(set(Person.first_names_female))
    first_m = sorted(set(Person.first_names_male))
    last = sorted(set(Person.last_names))
    last += sorted({a + b for a in SURNAME_PARTS[0] for b in SURNAME_PARTS[1]} - set(last))
    streets = sorted({fake.street_name() for _ in range(4000)})
    places = [(fake.postcode(), fake.city_name()) for _ in range(6000)]
    return first_f, first_m, last, streets, places


def write(path: Path, records: int = 130_000, seed: int = 11, duplicate_share: float = 0.23,
          progress=None) -> dict[str, str]:
    """Writes the CSV; returns record id -> true person."""
    rng = random.Random(seed)
    _TAKEN.clear()
    first_f, first_m, last, streets, places = _pools(rng)
    n_dups = int(records * duplicate_share)
    originals = records - n_dups
    people = []
    for i in range(originals):
        female = rng.random() < 0.48
        first = rng.choice(first_f if female else first_m)
        if rng.random() < 0.06:  # double first names
            first = f"{first}-{rng.choice(first_f if female else first_m)}"
        surname = rng.choice(last)
        if rng.random() < 0.03:
            surname = f"{surname}-{rng.choice(last)}"
        plz, city = rng.choice(places)
        area, number = _phone(rng)
        p = {
            "vorname": first, "nachname": surname,
            "geburtsdatum": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1945, 2006)}"
            if rng.random() < 0.85 else "",
            "street": rng.choice(streets), "nr": str(rng.randint(1, 180)) + (rng.choice("abc") if rng.random() < 0.05 else ""),
            "plz": plz, "ort": city,
            "email": _email(rng, first, surname) if rng.random() < 0.75 else "",
            "phone": (area, number) if rng.random() < 0.65 else None,
        }
        people.append(p)
        if progress and i % 200_000 == 0:
            progress(f"{i:,} of {originals:,} people")
    truth: dict[str, str] = {}
    rows = []
    for i, p in enumerate(people):
        rows.append((i, p, rng))
    for d in range(n_dups):
        i = rng.randrange(originals) if rng.random() < 0.8 else rng.randrange(max(1, originals // 10))
        rows.append((i, _corrupt(rng, dict(people[i]), first_f + first_m, streets, places), rng))
    rng.shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for k, (i, p, _r) in enumerate(rows):
            rid = f"K{k + 1:08d}"
            truth[rid] = f"p{i}"
            street = f"{p['street']} {p['nr']}".strip() if p["street"] else ""
            phone = _phone_text(rng, *p["phone"]) if p["phone"] else ""
            w.writerow([rid, p["vorname"], p["nachname"], p["geburtsdatum"], street, p["plz"], p["ort"], p["email"], phone])
    return truth


def _corrupt(rng: random.Random, p: dict, firsts: list[str], streets: list[str], places: list) -> dict:
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        what = rng.choices(("typo_first", "typo_last", "umlaut", "swap", "short_first", "blank", "dob", "moved", "email",
                            "strasse", "upper"),
                           weights=(14, 14, 10, 6, 4, 20, 7, 8, 8, 6, 3))[0]
        if what == "typo_first":
            p["vorname"] = _typo(rng, p["vorname"])
        elif what == "typo_last":
            p["nachname"] = _typo(rng, p["nachname"])
        elif what == "umlaut":
            table = UMLAUTS if rng.random() < 0.7 else LOST
            key = rng.choice(("vorname", "nachname", "street", "ort"))
            if p[key]:
                p[key] = p[key].translate(table)
        elif what == "swap":
            p["vorname"], p["nachname"] = p["nachname"], p["vorname"]
        elif what == "short_first":
            p["vorname"] = p["vorname"].split("-")[0] if "-" in p["vorname"] else p["vorname"][:1] + "."
        elif what == "blank":
            key = rng.choice(("geburtsdatum", "email", "phone", "street", "plz_ort", "vorname"))
            if key == "plz_ort":
                p["plz"] = p["ort"] = ""
            elif key == "phone":
                p["phone"] = None
            else:
                p[key] = ""
        elif what == "dob" and p["geburtsdatum"]:
            d, m, y = p["geburtsdatum"].split(".")
            if rng.random() < 0.5 and int(d) <= 12:
                p["geburtsdatum"] = f"{m}.{d}.{y}"
            else:
                y = y[:3] + str((int(y[3]) + rng.randint(1, 9)) % 10)
                p["geburtsdatum"] = f"{d}.{m}.{y}"
        elif what == "moved":
            p["plz"], p["ort"] = rng.choice(places)
            p["street"], p["nr"] = rng.choice(streets), str(rng.randint(1, 180))
            if rng.random() < 0.5:
                p["phone"] = _phone(rng) if p["phone"] else None
        elif what == "email":
            p["email"] = _email(rng, p["vorname"], p["nachname"]) if rng.random() < 0.7 else ""
        elif what == "strasse" and p["street"]:
            p["street"] = p["street"].replace("straße", "str.").replace("Straße", "Str.")
        elif what == "upper":
            p["nachname"] = p["nachname"].upper()
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.german_people", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=130_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    truth = write(args.out, args.records, args.seed, progress=lambda m: print(m, file=sys.stderr))
    with open(args.out.with_suffix(".truth.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "person_id"])
        w.writerows(truth.items())
    (args.out.with_suffix(".mapping.yaml")).write_text(MAPPING, encoding="utf-8")
    print(f"wrote {len(truth):,} records to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
