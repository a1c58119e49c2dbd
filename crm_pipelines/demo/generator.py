"""Demo landing zone: realistic German B2B data for every source, with the mess real data has.

One world of companies and people is drawn first; every source then renders the
people and companies it knows in its own format and with its own faults:
"Musterfirma GmbH" here and "Musterfirma GmbH & Co. KG" there, Müller and Mueller,
typos, swapped first and last names, missing fields, changed e-mail domains,
moved addresses, phone numbers in every notation, and a small share of records
that are malformed on purpose. Beside the landing zone, ``_ground_truth/``
records which person and company every source record really is, for measuring
deduplication, and ``manifest.json`` says how many records each source must
quarantine.

Deterministic for a seed (and a Faker version). Scales to a million contacts:
people are held column-wise and each source is written day by day.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

import numpy as np

from . import places as P

BERLIN = ZoneInfo("Europe/Berlin")
DEFAULT_START = date(2026, 11, 2)
LEGAL_FORMS = (  # (canonical form, weight, register section)
    ("GmbH", 44, "HRB"), ("GmbH & Co. KG", 17, "HRA"), ("AG", 6, "HRB"), ("KG", 5, "HRA"),
    ("UG (haftungsbeschränkt)", 5, "HRB"), ("e.K.", 5, "HRA"), ("OHG", 3, "HRA"), ("SE", 2, "HRB"),
    ("eG", 2, "GnR"), ("e.V.", 1, "VR"), ("GbR", 3, None), ("mbH", 2, "HRB"), ("KGaA", 1, "HRB"),
    ("GmbH & Co. OHG", 1, "HRA"), ("SE & Co. KGaA", 1, "HRB"), ("AG & Co. KG", 1, "HRA"), ("gGmbH", 1, "HRB"),
)
FORM_VARIANTS = {
    "GmbH": ("G.m.b.H.", "Gesellschaft mit beschränkter Haftung", "GMBH", "Gmbh", ""),
    "GmbH & Co. KG": ("GmbH & Co KG", "GmbH u. Co. KG", "GmbH & Co.KG", "GmbH", "KG"),
    "AG": ("Aktiengesellschaft", ""),
    "KG": ("Kommanditgesellschaft", ""),
    "UG (haftungsbeschränkt)": ("UG", "UG (haftungsbeschraenkt)", "UG (haftungsbeschr.)"),
    "e.K.": ("e.Kfm.", "eK", "e. K.", ""),
    "OHG": ("oHG", ""),
    "SE": ("",),
    "eG": ("e.G.", ""),
    "e.V.": ("eV", "e. V."),
    "GbR": ("",),
    "mbH": ("GmbH",),
    "KGaA": ("",),
    "GmbH & Co. OHG": ("GmbH & Co OHG",),
    "SE & Co. KGaA": ("SE & Co KGaA",),
    "AG & Co. KG": ("AG & Co KG",),
    "gGmbH": ("gemeinnützige GmbH",),
}
UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})
NEIGHBOUR_KEYS = dict(zip("qwertzuiopasdfghjklyxcvbnm", "wqetzrzuoipsadfghjklkxcvbnmn"))
SOURCES = ("web_form_leads", "trade_fair_leads", "erp_customers", "erp_orders", "newsletter_signups",
           "behaviour_events", "service_requests", "crm_accounts", "crm_contacts", "erasure_requests",
           "consent_changes")


@dataclass
class GeneratorConfig:
    contacts: int = 3000
    seed: int = 42
    out: Path = Path("data/landing")
    start: date = DEFAULT_START
    days: int = 14
    malformed_rate: float = 0.002


@dataclass
class SourceStats:
    records: int = 0
    expected_quarantined: int = 0
    files: int = 0
    duplicate_files: int = 0
    malformed_kinds: dict[str, int] = field(default_factory=dict)


def translit(s: str) -> str:
    return s.translate(UMLAUTS)


def slug(s: str) -> str:
    out = []
    for ch in translit(s).lower():
        out.append(ch if ch.isalnum() and ch.isascii() else "-")
    return "-".join(p for p in "".join(out).split("-") if p)


def cp850_safe(s: str) -> bool:
    try:
        s.encode("cp850")
    except UnicodeEncodeError:
        return False
    return True


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.started:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ============================================================================ the world

class World:
    """Companies and people, column-wise. Index i of every person list is person i."""

    def __init__(self, cfg: GeneratorConfig):
        from faker import Faker

        self.cfg = cfg
        n = cfg.contacts
        rng = np.random.default_rng(cfg.seed)
        self.np = rng
        fake = Faker("de_DE")
        fake.seed_instance(cfg.seed)
        first_f = _pool(fake.first_name_female, 700, 400)
        first_m = _pool(fake.first_name_male, 700, 400)
        last = _pool(fake.last_name, 3000, 600)
        # The most frequent German surnames must be frequent here too: matching has to learn
        # that two "Müller" are weak evidence.
        common = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann"]
        last = common + [x for x in last if x not in common]
        streets = _pool(fake.street_name, 1500, 300)
        self.first_f, self.first_m, self.last_pool, self.streets = first_f, first_m, last, streets

        # ---------------- companies
        a = max(20, n // 8)
        self.n_companies = a
        forms = [f for f, _, _ in LEGAL_FORMS]
        weights = np.array([w for _, w, _ in LEGAL_FORMS], dtype=float)
        self.c_form = [forms[i] for i in rng.choice(len(forms), size=a, p=weights / weights.sum())]
        self.c_base = _company_names(last, a, rng)
        # Same name, different company: a trap for matching (other town, often other form).
        for i in rng.choice(a, size=max(1, a // 50), replace=False):
            j = int(rng.integers(a))
            if j != i:
                self.c_base[i] = self.c_base[j]
        self.c_place = rng.integers(len(P.PLACES), size=a)
        self.c_street = [streets[k] for k in rng.integers(len(streets), size=a)]
        self.c_hno = [_house_number(rng) for _ in range(a)]
        moved = rng.random(a) < 0.03
        self.c_old_place = np.where(moved, rng.integers(len(P.PLACES), size=a), -1)
        self.c_old_street = [streets[k] if m else None for k, m in zip(rng.integers(len(streets), size=a), moved)]
        self.c_domain = []
        seen_domains: set[str] = set()
        for i in range(a):
            d = slug(self.c_base[i])[:40] or "firma"
            tld = {"DE": "de", "AT": "at", "CH": "ch"}[P.PLACES[self.c_place[i]][3]]
            cand = f"{d}.{tld}"
            k = 2
            while cand in seen_domains:
                cand = f"{d}{k}.{tld}"
                k += 1
            seen_domains.add(cand)
            self.c_domain.append(cand)
        self.c_phone = [str(x) for x in rng.integers(10_000, 9_999_999, size=a)]
        self.c_industry = rng.integers(len(P.INDUSTRIES), size=a)
        self.c_employees = np.clip(rng.lognormal(4.0, 1.3, size=a).astype(int), 1, 60_000)
        self.c_revenue = np.round(self.c_employees * rng.uniform(90_000, 260_000, size=a), -3)
        self.c_vat = [f"DE{x:09d}" for x in rng.integers(100_000_000, 999_999_999, size=a)]
        self.c_court = [P.REGISTER_COURTS[k] for k in rng.integers(len(P.REGISTER_COURTS), size=a)]
        self.c_regnum = rng.integers(1000, 99_999, size=a)
        self.c_is_erp = rng.random(a) < 0.5
        self.c_erp_no = [f"{100000 + i:010d}" for i in range(a)]
        self.c_is_crm = rng.random(a) < 0.65
        self.c_crm_id = [str(9_000_001 + i) for i in range(a)]
        self.c_since = [cfg.start - timedelta(days=int(d)) for d in rng.integers(30, 9000, size=a)]

        # ---------------- people
        ranks = np.arange(1, a + 1, dtype=float)
        company_w = 1.0 / ranks ** 0.6
        company_order = rng.permutation(a)
        self.p_company = company_order[rng.choice(a, size=n, p=company_w / company_w.sum())]
        g = rng.random(n)
        self.p_gender = np.where(g < 0.45, 0, np.where(g < 0.99, 1, 2))  # 0 Frau, 1 Herr, 2 divers
        fi = rng.integers(1 << 30, size=n)
        last_w = 1.0 / np.arange(1, len(last) + 1) ** 0.9
        li = rng.choice(len(last), size=n, p=last_w / last_w.sum())
        particle = rng.random(n)
        self.p_first: list[str] = []
        self.p_last: list[str] = []
        for i in range(n):
            pool = first_f if self.p_gender[i] == 0 else first_m if self.p_gender[i] == 1 else (first_f + first_m)
            self.p_first.append(pool[fi[i] % len(pool)])
            name = last[li[i]]
            if particle[i] < 0.012:
                name = "von " + name
            elif particle[i] < 0.016:
                name = "von der " + name
            self.p_last.append(name)
        t = rng.random(n)
        self.p_title = np.where(t < 0.07, 1, np.where(t < 0.08, 2, np.where(t < 0.10, 3, 0)))
        pattern = rng.random(n)
        free = rng.random(n) < 0.08
        free_dom = rng.integers(len(P.FREE_MAIL), size=n)
        self.p_email: list[str] = []
        used: set[str] = set()
        for i in range(n):
            f, l = slug(self.p_first[i]).replace("-", ""), slug(self.p_last[i]).replace("-", "")
            if free[i]:
                local = f"{f}.{l}{int(fi[i] % 90) + 10}"
                dom = P.FREE_MAIL[free_dom[i]]
            else:
                dom = self.c_domain[self.p_company[i]]
                local = (f"{f}.{l}" if pattern[i] < 0.6 else f"{f[:1]}.{l}" if pattern[i] < 0.85
                         else f"{f}{l}" if pattern[i] < 0.9 else f"{l}" if pattern[i] < 0.95 else f"{f[:1]}{l}")
            email = f"{local}@{dom}"
            k = 2
            while email in used:
                email = f"{local}{k}@{dom}"
                k += 1
            used.add(email)
            self.p_email.append(email)
        self.p_ext = rng.integers(10, 999, size=n)
        has_mobile = rng.random(n) < 0.5
        mob = rng.integers(1_000_000, 99_999_999, size=n)
        prefixes = ("151", "152", "160", "162", "170", "171", "172", "175", "176", "177", "179")
        pre = rng.integers(len(prefixes), size=n)
        self.p_mobile = [f"{prefixes[pre[i]]}{mob[i]}" if has_mobile[i] else None for i in range(n)]
        self.p_job = rng.integers(len(P.JOB_TITLES), size=n)
        self.p_in_crm = rng.random(n) < 0.55
        self.p_crm_id = [str(100_001 + i) for i in range(n)]

    # -------------------------------------------------------------- rendering helpers
    def title(self, i: int) -> str | None:
        return (None, "Dr.", "Prof. Dr.", "Dipl.-Ing.")[int(self.p_title[i])]

    def salutation(self, i: int) -> str:
        return ("Frau", "Herr", "divers")[int(self.p_gender[i])]

    def place(self, c: int, old: bool = False) -> tuple[str, str, str, str]:
        k = self.c_old_place[c] if old and self.c_old_place[c] >= 0 else self.c_place[c]
        return P.PLACES[int(k)]

    def street(self, c: int, old: bool = False) -> str:
        s = self.c_old_street[c] if old and self.c_old_street[c] else self.c_street[c]
        return f"{s} {self.c_hno[c]}"


def _pool(fn: Callable[[], str], tries: int, want: int) -> list[str]:
    seen: dict[str, None] = {}
    for _ in range(tries):
        v = fn()
        if cp850_safe(v):
            seen[v] = None
        if len(seen) >= want:
            break
    return list(seen)


def _house_number(rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 180))
    r = rng.random()
    return f"{n}{'abc'[int(rng.integers(3))]}" if r < 0.08 else f"{n}-{n + 2}" if r < 0.1 else str(n)


def _company_names(last: list[str], count: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    for _ in range(count):
        r = rng.random()
        if r < 0.3:
            base = last[int(rng.integers(len(last)))]
            if rng.random() < 0.2:
                base = f"{base} & {last[int(rng.integers(len(last)))]}"
            elif rng.random() < 0.1:
                base = f"{base} & Söhne"
        elif r < 0.6:
            base = f"{last[int(rng.integers(len(last)))]} {P.INDUSTRY_WORDS[int(rng.integers(len(P.INDUSTRY_WORDS)))]}"
        elif r < 0.75:
            base = f"{P.REGION_ADJECTIVES[int(rng.integers(len(P.REGION_ADJECTIVES)))]} {P.INDUSTRY_WORDS[int(rng.integers(len(P.INDUSTRY_WORDS)))]}"
        else:
            a, b = P.BRAND_PARTS
            base = a[int(rng.integers(len(a)))] + b[int(rng.integers(len(b)))]
            if rng.random() < 0.4:
                base += f" {P.INDUSTRY_WORDS[int(rng.integers(len(P.INDUSTRY_WORDS)))]}"
        names.append(base)
    return names


# ============================================================================ mess

class Mess:
    """Per-source random faults. Each source has its own stream so sources are independent."""

    def __init__(self, seed: int, source: str):
        self.r = random.Random(f"{seed}:{source}")

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def pick(self, seq):
        return seq[self.r.randrange(len(seq))]

    def typo(self, s: str) -> str:
        if len(s) < 4:
            return s
        i = self.r.randrange(1, len(s) - 1)
        op = self.r.randrange(4)
        if op == 0:
            return s[:i] + s[i + 1] + s[i] + s[i + 2:]
        if op == 1:
            return s[:i] + s[i + 1:]
        if op == 2:
            return s[:i] + s[i] + s[i:]
        c = s[i].lower()
        return s[:i] + NEIGHBOUR_KEYS.get(c, c) + s[i + 1:]

    def name(self, s: str, p_translit: float = 0.1, p_typo: float = 0.02) -> str:
        if self.chance(p_translit):
            s = translit(s)
        if self.chance(p_typo):
            s = self.typo(s)
        return s

    def company(self, world: World, c: int, p_variant: float = 0.25) -> str:
        base, form = world.c_base[c], world.c_form[c]
        if self.chance(0.08):
            base = translit(base)
        if self.chance(0.02):
            base = self.typo(base)
        if self.chance(p_variant):
            form = self.pick(FORM_VARIANTS.get(form, ("",)))
        if self.chance(0.03):
            base = base.upper()
        return f"{base} {form}".strip()

    def street(self, s: str) -> str:
        if "straße" in s and self.chance(0.3):
            return s.replace("straße", self.pick(("str.", "strasse", "Str.")))
        if "Straße" in s and self.chance(0.3):
            return s.replace("Straße", self.pick(("Str.", "Strasse")))
        return s

    def phone(self, country: str, area: str, number: str, ext: str | None = None) -> str:
        cc = P.COUNTRY_CALLING[country]
        tail = f"{number}{ext or ''}"
        style = self.r.randrange(7)
        if style == 0:
            return f"+{cc} {area} {tail}"
        if style == 1:
            return f"0{area}/{number}" + (f"-{ext}" if ext else "")
        if style == 2:
            return f"0{area} {number}" + (f"-{ext}" if ext else "")
        if style == 3:
            return f"00{cc} (0){area} {tail}"
        if style == 4:
            return f"+{cc}{area}{tail}"
        if style == 5:
            return f"(0{area}) {number} {ext or ''}".strip()
        return f"0{area}-{tail}"

    def email(self, world: World, i: int) -> str:
        e = world.p_email[i]
        if self.chance(0.03):  # changed domain: company renamed, or the private address
            local, _, dom = e.partition("@")
            if self.chance(0.5):
                return f"{local}@{self.pick(P.FREE_MAIL)}"
            return f"{local}@{dom.split('.')[0]}-group.com"
        if self.chance(0.02):
            return e.upper() if self.chance(0.5) else f"  {e} "
        return e


# ============================================================================ writing

class Writer:
    def __init__(self, root: Path, source: str, stats: SourceStats):
        self.root, self.source, self.stats = root, source, stats

    def folder(self, day: date) -> Path:
        d = self.root / self.source / day.isoformat()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_text(self, day: date, name: str, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
        path = self.folder(day) / name
        with open(path, "w", encoding=encoding, newline=newline) as fh:
            fh.write(text)
        self.stats.files += 1
        return path

    def write_lines(self, day: date, name: str, lines: list[str], encoding: str = "utf-8", eol: str = "\n", bom: bool = False,
                    trailer: bytes = b"") -> Path:
        path = self.folder(day) / name
        with open(path, "wb") as fh:
            if bom:
                fh.write(b"\xef\xbb\xbf")
            fh.write(("".join(line + eol for line in lines)).encode(encoding))
            fh.write(trailer)
        self.stats.files += 1
        return path


def _local_dt(day: date, r: random.Random, start_hour: int = 6, end_hour: int = 21) -> datetime:
    seconds = r.randrange(start_hour * 3600, end_hour * 3600)
    return datetime(day.year, day.month, day.day, tzinfo=BERLIN) + timedelta(seconds=seconds)


def _epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _iso_z(dt: datetime) -> str:
    return dt.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _daily_deltas(rng: np.random.Generator, ids: np.ndarray, days: int, share: float) -> list[tuple[int, int]]:
    """Records changed on each day after the first; a nightly delta export is never empty."""
    out: list[tuple[int, int]] = []
    for d in range(1, days):
        changed = ids[rng.random(len(ids)) < share]
        if not len(changed) and len(ids):
            changed = ids[[int(rng.integers(len(ids)))]]
        out += [(d, int(x)) for x in changed]
    return out


def _malformed_positions(mess: Mess, total: int, rate: float) -> set[int]:
    if total < 20 or rate <= 0:
        return set()
    k = max(1, round(total * rate))
    return set(mess.r.sample(range(total), k))


class Generator:
    def __init__(self, cfg: GeneratorConfig, progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = progress or (lambda m: None)
        self.days = [cfg.start + timedelta(days=d) for d in range(cfg.days)]
        self.stats = {s: SourceStats() for s in SOURCES}
        self.truth_rows = 0

    # ------------------------------------------------------------------------ entry
    def run(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.out)
        for s in SOURCES:
            if (out / s).exists():
                shutil.rmtree(out / s)
        truth_dir = out / "_ground_truth"
        if truth_dir.exists():
            shutil.rmtree(truth_dir)
        truth_dir.mkdir(parents=True)
        self.log(f"drawing {cfg.contacts:,} people and their companies (seed {cfg.seed})")
        w = World(cfg)
        self.w = w
        self.truth_fh = open(truth_dir / "records.csv", "w", encoding="utf-8", newline="")
        self.truth = csv.writer(self.truth_fh)
        self.truth.writerow(["source", "source_record_id", "person_id", "account_id", "malformed"])
        try:
            for source in SOURCES:
                t0 = time.monotonic()
                getattr(self, f"_gen_{source}")(out, Mess(cfg.seed, source))
                st = self.stats[source]
                self.log(f"{source}: {st.records:,} records in {st.files:,} files, "
                         f"{st.expected_quarantined} to be quarantined ({time.monotonic() - t0:.1f}s)")
        finally:
            self.truth_fh.close()
        self._write_register(out)
        manifest = {
            "seed": cfg.seed, "contacts": cfg.contacts, "companies": w.n_companies,
            "start": cfg.start.isoformat(), "days": cfg.days,
            "partitions": [d.isoformat() for d in self.days],
            "sources": {s: vars(st) for s, st in self.stats.items()},
        }
        (truth_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        self.log(f"done: {sum(s.records for s in self.stats.values()):,} records, ground truth in {truth_dir}")
        return manifest

    def _write_register(self, out: Path) -> None:
        """What a company register knows: official name, legal form, court and number, seat.

        Not a landing-zone source: the local register server (devtools) serves it to the
        enrichment client. GbR have no register entry.
        """
        w = self.w
        sections = {form: section for form, _, section in LEGAL_FORMS}
        folder = out / "_register"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        with open(folder / "companies.jsonl", "w", encoding="utf-8") as fh:
            for c in range(w.n_companies):
                section = sections.get(w.c_form[c])
                plz, city, _area, country = w.place(c)
                if section is None or country != "DE":
                    continue
                fh.write(json.dumps({
                    "name": f"{w.c_base[c]} {w.c_form[c]}", "legal_form": w.c_form[c],
                    "register_court": w.c_court[c], "register_number": f"{section} {int(w.c_regnum[c])}",
                    "street": w.street(c), "postal_code": plz, "city": city,
                }, ensure_ascii=False) + "\n")

    def _truth(self, source: str, rid: str, person: int | None, account: int | None, malformed: bool) -> None:
        self.truth.writerow([source, rid, "" if person is None else f"P{person + 1:07d}",
                             "" if account is None else f"A{account + 1:06d}", int(malformed)])

    def _bad(self, source: str, kind: str) -> None:
        st = self.stats[source]
        st.expected_quarantined += 1
        st.malformed_kinds[kind] = st.malformed_kinds.get(kind, 0) + 1

    def _sample(self, p: float, salt: int, pool: np.ndarray | None = None) -> np.ndarray:
        rng = np.random.default_rng(self.cfg.seed * 1000 + salt)
        n = self.cfg.contacts
        idx = np.flatnonzero(rng.random(n) < p) if pool is None else pool[rng.random(len(pool)) < p]
        return idx

    def _days_for(self, count: int, salt: int) -> np.ndarray:
        rng = np.random.default_rng(self.cfg.seed * 1000 + salt)
        return rng.integers(len(self.days), size=count)

    # ------------------------------------------------------------------------ people sources
    def _person_view(self, mess: Mess, i: int, swap_p: float = 0.0) -> dict:
        w = self.w
        c = int(w.p_company[i])
        first, last = mess.name(w.p_first[i]), mess.name(w.p_last[i])
        if swap_p and mess.chance(swap_p):
            first, last = last, first
        old = mess.chance(0.5)  # some sources still have the address from before a move
        plz, city, area, country = w.place(c, old=old)
        return {
            "salutation": w.salutation(i), "title": w.title(i), "first": first, "last": last,
            "email": mess.email(w, i), "company": mess.company(w, c), "job": P.JOB_TITLES[int(w.p_job[i])],
            "street": mess.street(w.street(c, old=old)), "plz": plz, "city": city, "country": country,
            "phone": mess.phone(country, area, w.c_phone[c], str(w.p_ext[i])),
            "mobile": (mess.phone(country, w.p_mobile[i][:3], w.p_mobile[i][3:]) if w.p_mobile[i] else None),
            "company_idx": c,
        }

    def _gen_web_form_leads(self, out: Path, mess: Mess) -> None:
        src = "web_form_leads"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        people = self._sample(0.30, 1)
        again = people[np.random.default_rng(self.cfg.seed + 11).random(len(people)) < 0.05]
        who = np.concatenate([people, again])
        days = self._days_for(len(who), 2)
        order = np.lexsort((who, days))
        bad = _malformed_positions(mess, len(who), self.cfg.malformed_rate)
        forms = ("kontakt", "whitepaper-hydraulik", "demo-anfrage", "webinar-retrofit", "angebot")
        seq = 0
        dup_done = False
        for d_idx, day in enumerate(self.days):
            sel = order[days[order] == d_idx]
            files: dict[str, list[str]] = {f"leads_{h:02d}00.jsonl": [] for h in (0, 6, 12, 18)}
            keys = list(files)
            last_rec: dict | None = None
            for pos in sel:
                i = int(who[pos])
                seq += 1
                rid = f"WF-{day:%Y%m%d}-{seq:06d}"
                v = self._person_view(mess, i, swap_p=0.02)
                ts = _local_dt(day, mess.r, 0, 24)
                rec = {
                    "lead_id": rid, "submitted_at": ts.isoformat(timespec="seconds"), "form": mess.pick(forms),
                    "salutation": v["salutation"] if not mess.chance(0.1) else "keine Angabe",
                    "title": v["title"], "first_name": v["first"], "last_name": v["last"],
                    "email": v["email"], "phone": v["phone"] if not mess.chance(0.3) else None,
                    "company_name": v["company"], "job_title": v["job"] if not mess.chance(0.4) else None,
                    "zip": v["plz"], "city": v["city"], "country": v["country"] if not mess.chance(0.5) else None,
                    "message": mess.pick((None, None, "Bitte um Rückruf.", "Angebot für 2 Maschinen erwünscht.",
                                          "Wir suchen einen Partner für Retrofit & Wartung <dringend>")),
                    "newsletter_opt_in": mess.chance(0.35), "utm_campaign": mess.pick((None, "herbst-2026", "messe-nachfass")),
                }
                malformed = pos in bad
                line: str | None = None
                if malformed:
                    kind = ("broken_json", "invalid_date", "bad_salutation", "missing_id", "unknown_field")[seq % 5]
                    self._bad(src, kind)
                    if kind == "invalid_date":
                        rec["submitted_at"] = f"{day:%Y}-13-45T25:61:00+01:00"
                    elif kind == "bad_salutation":
                        rec["salutation"] = "Herrr"
                    elif kind == "missing_id":
                        rec["lead_id"] = "  "
                    elif kind == "unknown_field":
                        rec["fax"] = "0351 123456"
                    line = json.dumps(rec, ensure_ascii=False)
                    if kind == "broken_json":
                        line = line[: len(line) // 2]
                self._truth(src, rec["lead_id"].strip() or f"<missing:{rid}>", i, v["company_idx"], malformed)
                files[keys[min(3, ts.hour // 6)]].append(line or json.dumps(rec, ensure_ascii=False))
                st.records += 1
                last_rec = rec if not malformed else last_rec
            # A form double-submit: the same lead ID lands again in a later file of the day.
            if last_rec is not None and d_idx % 5 == 1:
                files[keys[3]].append(json.dumps(last_rec, ensure_ascii=False))
                st.records += 1
                self._bad(src, "duplicate_record_id")
            for name, lines in files.items():
                if lines:
                    wr.write_lines(day, name, lines)
            # A re-delivery of a whole file (the transfer job ran twice).
            if not dup_done and d_idx == 1:
                first = next((n for n, l in files.items() if l), None)
                if first:
                    folder = wr.folder(day)
                    shutil.copyfile(folder / first, folder / first.replace(".jsonl", " (1).jsonl"))
                    st.files += 1
                    st.duplicate_files += 1
                    dup_done = True

    def _gen_trade_fair_leads(self, out: Path, mess: Mess) -> None:
        src = "trade_fair_leads"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        header = ["Scan-ID", "Messe", "Scan-Zeitpunkt", "Anrede", "Titel", "Vorname", "Nachname", "Firma", "Position",
                  "Straße", "PLZ", "Ort", "Land", "Telefon", "Mobil", "E-Mail", "Interesse", "Notiz", "Opt-In"]
        people = self._sample(0.10, 3)
        # Fairs last a few days; scans happen only then.
        fair_days = [d for d in range(len(self.days)) if d % 7 in (1, 2, 3)] or [0]
        rng = np.random.default_rng(self.cfg.seed + 33)
        days = np.array(fair_days)[rng.integers(len(fair_days), size=len(people))]
        bad = _malformed_positions(mess, len(people), self.cfg.malformed_rate)
        interests = ("Hydraulikpressen", "Antriebe", "Fördertechnik", "Wartungsvertrag", "Retrofit", "Automation")
        seq = 0
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            if not len(sel):
                continue
            fair = P.TRADE_FAIRS[(d_idx // 7) % len(P.TRADE_FAIRS)]
            buf = io.StringIO()
            wcsv = csv.writer(buf, delimiter=";", lineterminator="\r\n")
            wcsv.writerow(header)
            for pos in sel:
                i = int(people[pos])
                seq += 1
                v = self._person_view(mess, i, swap_p=0.03)
                ts = _local_dt(day, mess.r, 9, 18)
                row = [f"TF-{day:%y%m%d}-{seq:05d}", fair, ts.strftime("%d.%m.%Y %H:%M"),
                       mess.pick(("Herr", "Hr.")) if v["salutation"] == "Herr" else mess.pick(("Frau", "Fr.")) if v["salutation"] == "Frau" else "divers",
                       v["title"] or "", v["first"], v["last"], v["company"], v["job"] if not mess.chance(0.3) else "",
                       v["street"] if not mess.chance(0.25) else "", v["plz"], v["city"],
                       mess.pick((P.COUNTRY_NAMES_DE[v["country"]], v["country"], "")),
                       v["phone"] if not mess.chance(0.2) else "", v["mobile"] or "", v["email"] if not mess.chance(0.05) else "",
                       mess.pick(interests), mess.pick(("", "", "Möchte Angebot; Termin KW 48", 'Sagte: "sehr interessiert"', "Rückruf\nbitte vormittags")),
                       mess.pick(("ja", "nein", "nein"))]
                malformed = pos in bad
                if malformed:
                    kind = ("extra_column", "invalid_date", "bad_salutation")[seq % 3]
                    self._bad(src, kind)
                    if kind == "extra_column":
                        row.append("Stand B12")
                    elif kind == "invalid_date":
                        row[2] = f"31.02.{day:%Y} 10:00"
                    else:
                        row[3] = "Dr."
                wcsv.writerow(row)
                self._truth(src, row[0], i, v["company_idx"], malformed)
                st.records += 1
            wr.write_lines(day, f"{slug(fair)}_{day:%Y%m%d}.csv", [buf.getvalue().rstrip("\r\n")], eol="\r\n", bom=True)

    # ------------------------------------------------------------------------ ERP
    def _erp_line(self, fields: list[tuple[str, int]]) -> str:
        return "".join(value[:width].ljust(width) for value, width in fields)

    def _gen_erp_customers(self, out: Path, mess: Mess) -> None:
        src = "erp_customers"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        customers = np.flatnonzero(w.c_is_erp)
        contact_of = {}
        for i in range(self.cfg.contacts - 1, -1, -1):
            contact_of[int(w.p_company[i])] = i
        # Day 1 brings the full customer master; later days the customers changed that day.
        rng = np.random.default_rng(self.cfg.seed + 44)
        deliveries = [(0, c) for c in customers]
        deliveries += _daily_deltas(rng, customers, len(self.days), 0.01)
        bad = _malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
        by_day: dict[int, list[str]] = {}
        for pos, (d, c) in enumerate(deliveries):
            plz, city, area, country = w.place(c, old=True)  # the ERP is the last to hear about a move
            name = mess.company(w, c, p_variant=0.35)
            if mess.chance(0.4):
                name = translit(name).upper()  # 20-year-old master data: upper case, no umlauts
            p = contact_of.get(c)
            contact = ""
            if p is not None and mess.chance(0.8):
                contact = f"{w.salutation(p)} {w.title(p) + ' ' if w.title(p) else ''}{w.p_last[p]}"
            fields = [
                (w.c_erp_no[c], 10), (name, 40), ("Werk " + city if mess.chance(0.05) else "", 40),
                (mess.street(w.street(c, old=True)), 35), (plz, 10), (city, 35), (P.ERP_COUNTRY[country], 3),
                (mess.phone(country, area, w.c_phone[c], "0"), 20), (f"info@{w.c_domain[c]}" if mess.chance(0.7) else "", 50),
                (w.c_vat[c] if country == "DE" and mess.chance(0.8) else "", 14), (P.INDUSTRIES[int(w.c_industry[c])], 20),
                (contact, 30), (w.c_since[c].strftime("%Y%m%d") if mess.chance(0.9) else "00000000", 8),
                ("X" if mess.chance(0.02) else "", 1), (str(int(w.c_employees[c])).rjust(7), 7),
                (f"{w.c_revenue[c]:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".").rjust(16), 16),
            ]
            malformed = pos in bad
            if malformed:
                kind = ("overlong_record", "invalid_date", "bad_amount", "bad_country")[pos % 4]
                self._bad(src, kind)
                if kind == "invalid_date":
                    fields[12] = ("20261341", 8)
                elif kind == "bad_amount":
                    fields[15] = ("12.34.56,7".rjust(16), 16)
                elif kind == "bad_country":
                    fields[6] = ("XX", 3)
            line = self._erp_line(fields)
            if malformed and kind == "overlong_record":
                line += "ZUSATZ"
            by_day.setdefault(d, []).append(line)
            if d == 0:
                self._truth(src, w.c_erp_no[c], None, c, malformed)
            st.records += 1
        for d, lines in sorted(by_day.items()):
            day = self.days[d]
            # CRLF line ends and a DOS end-of-file marker, as the AS/400 transfer writes them.
            wr.write_lines(day, f"KUNDEN_{day:%Y%m%d}.txt", lines, encoding="cp850", eol="\r\n", trailer=b"\x1a")

    def _gen_erp_orders(self, out: Path, mess: Mess) -> None:
        src = "erp_orders"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        customers = np.flatnonzero(w.c_is_erp)
        rng = np.random.default_rng(self.cfg.seed + 55)
        per_customer = rng.poisson(8, size=len(customers))
        total = int(per_customer.sum())
        cust = np.repeat(customers, per_customer)
        # Day 1 carries the order history (initial load), later days the day's new orders.
        day_idx = np.where(rng.random(total) < 0.7, 0, rng.integers(len(self.days), size=total))
        age_days = rng.integers(0, 3 * 365, size=total)
        order = np.argsort(day_idx, kind="stable")
        bad = _malformed_positions(mess, total, self.cfg.malformed_rate)
        by_day: dict[int, list[str]] = {}
        for n, pos in enumerate(order):
            d, c = int(day_idx[pos]), int(cust[pos])
            day = self.days[d]
            odate = day - timedelta(days=int(age_days[pos])) if d == 0 else day
            qty = int(rng.integers(1, 20))
            amount = round(float(rng.uniform(80, 25_000)) * qty, 2)
            credit = rng.random() < 0.02
            amount_txt = f"{amount:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".") + ("-" if credit else "")
            fields = [(f"{4_000_000 + n:010d}", 10), (w.c_erp_no[c], 10), (odate.strftime("%Y%m%d"), 8),
                      (mess.pick(P.ARTICLES), 15), (str(qty).rjust(7), 7), (amount_txt.rjust(15), 15),
                      ("EUR" if P.PLACES[int(w.c_place[c])][3] != "CH" else "CHF", 3),
                      (mess.pick(("O", "G", "F", "F", "F", "S")), 5)]
            if pos in bad:
                kind = ("invalid_date", "bad_amount", "bad_status")[n % 3]
                self._bad(src, kind)
                if kind == "invalid_date":
                    fields[2] = ("20260230", 8)
                elif kind == "bad_amount":
                    fields[5] = ("1,2,3".rjust(15), 15)
                else:
                    fields[7] = ("Q", 5)
            by_day.setdefault(d, []).append(self._erp_line(fields))
            st.records += 1
        for d, lines in sorted(by_day.items()):
            day = self.days[d]
            wr.write_lines(day, f"AUFTRAG_{day:%Y%m%d}.txt", lines, encoding="cp850", eol="\r\n")

    # ------------------------------------------------------------------------ marketing tool
    def _gen_newsletter_signups(self, out: Path, mess: Mess) -> None:
        src = "newsletter_signups"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        people = self._sample(0.25, 6)
        rng = np.random.default_rng(self.cfg.seed + 66)
        unsub = people[rng.random(len(people)) < 0.12]
        events = [(int(i), "subscribed") for i in people] + [(int(i), "unsubscribed") for i in unsub]
        days = rng.integers(len(self.days), size=len(events))
        bad = _malformed_positions(mess, len(events), self.cfg.malformed_rate)
        sources = ("Website-Footer", "Whitepaper-Download", "Messe-Stand", "Webinar-Anmeldung")
        lists = ("newsletter-de", "produkt-news", "service-news")
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            if not len(sel):
                continue
            buf = io.StringIO()
            wcsv = csv.writer(buf, lineterminator="\n")
            wcsv.writerow(["subscriber_id", "email", "first_name", "last_name", "event_at", "double_opt_in_at",
                           "source", "list", "status"])
            for pos in sel:
                i, status = events[pos]
                ts = _local_dt(day, mess.r, 0, 23)
                doi = ts + timedelta(minutes=mess.r.randrange(1, 600)) if status == "subscribed" and mess.chance(0.93) else None
                rid = f"NL-{i + 1:07d}-{'S' if status == 'subscribed' else 'U'}"
                row = [rid, mess.email(w, i), mess.name(w.p_first[i]) if mess.chance(0.7) else "",
                       mess.name(w.p_last[i]) if mess.chance(0.7) else "", ts.strftime("%Y-%m-%d %H:%M:%S"),
                       doi.strftime("%Y-%m-%d %H:%M:%S") if doi else "", mess.pick(sources), mess.pick(lists), status]
                malformed = pos in bad
                if malformed:
                    kind = ("bad_status", "invalid_date", "missing_column")[pos % 3]
                    self._bad(src, kind)
                    if kind == "bad_status":
                        row[8] = "pending"
                    elif kind == "invalid_date":
                        row[4] = "gestern"
                    else:
                        row = row[:-1]
                wcsv.writerow(row)
                self._truth(src, rid, i, int(w.p_company[i]), malformed)
                st.records += 1
            wr.write_text(day, f"newsletter_{day:%Y%m%d}.csv", buf.getvalue())

    def _gen_behaviour_events(self, out: Path, mess: Mess) -> None:
        src = "behaviour_events"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        n = self.cfg.contacts
        rng = np.random.default_rng(self.cfg.seed + 77)
        active = np.flatnonzero(rng.random(n) < 0.4)
        per = rng.poisson(4, size=len(active))
        who = np.concatenate([np.repeat(active, per), np.full(n // 2, -1)])  # -1: anonymous visitor
        days = rng.integers(len(self.days), size=len(who))
        order = np.argsort(days, kind="stable")
        bad = _malformed_positions(mess, len(who), self.cfg.malformed_rate)
        kinds = ("pageview", "pageview", "pageview", "pricing_view", "video_play", "whitepaper_download",
                 "webinar_attended", "email_open", "email_click", "unsubscribe")
        kind_w = np.array([30, 30, 30, 8, 4, 5, 2, 12, 6, 0.5])
        kind_idx = rng.choice(len(kinds), size=len(who), p=kind_w / kind_w.sum())
        seq = 0
        start = 0
        for d_idx, day in enumerate(self.days):
            end = start
            while end < len(order) and days[order[end]] == d_idx:
                end += 1
            files: dict[int, list[str]] = {0: [], 6: [], 12: [], 18: []}
            for pos in order[start:end]:
                seq += 1
                i = int(who[pos])
                kind = kinds[kind_idx[pos]]
                ts = _local_dt(day, mess.r, 0, 24)
                known = i >= 0
                url, content = P.SITE + mess.pick(P.PRODUCT_PAGES), None
                if kind == "pricing_view":
                    url = P.SITE + "/preise"
                elif kind == "video_play":
                    content = mess.pick(P.VIDEOS)
                    url = f"{P.SITE}/videos/{content}"
                elif kind == "whitepaper_download":
                    content = mess.pick(P.WHITEPAPERS)
                    url = f"{P.SITE}/downloads/{content}"
                elif kind == "webinar_attended":
                    content, url = mess.pick(P.WEBINARS), None
                elif kind in ("email_open", "email_click", "unsubscribe"):
                    url = None if kind != "email_click" else url
                    content = "newsletter-" + day.strftime("%Y-%m")
                rec = {
                    "event_id": f"ev-{self.cfg.seed}-{seq:09d}", "type": kind, "ts": _epoch_ms(ts),
                    "anonymous_id": f"anon-{(i if known else seq) * 2654435761 % (1 << 32):08x}",
                    "email": w.p_email[i] if known and (kind.startswith("email") or kind in ("unsubscribe", "whitepaper_download", "webinar_attended") or mess.chance(0.2)) else None,
                    "contact_id": w.p_crm_id[i] if known and w.p_in_crm[i] and mess.chance(0.5) else None,
                    "page": {"url": url, "title": None} if url else None, "content_id": content,
                    "utm": {"campaign": mess.pick(("herbst-2026", "newsletter", None)), "source": mess.pick(("google", "newsletter", "linkedin", None))},
                }
                line = None
                if pos in bad:
                    bkind = ("broken_json", "unknown_type", "missing_ts", "unknown_field")[seq % 4]
                    self._bad(src, bkind)
                    if bkind == "unknown_type":
                        rec["type"] = "hover"
                    elif bkind == "missing_ts":
                        rec["ts"] = None
                    elif bkind == "unknown_field":
                        rec["page"] = {"url": P.SITE, "referrer": "https://www.google.de/"}
                    line = json.dumps(rec, ensure_ascii=False)
                    if bkind == "broken_json":
                        line = line[:-7]
                files[(ts.hour // 6) * 6].append(line or json.dumps(rec, ensure_ascii=False))
                st.records += 1
            start = end
            for h, lines in files.items():
                if lines:
                    wr.write_lines(day, f"events_{day:%Y%m%d}_{h:02d}.jsonl", lines)

    # ------------------------------------------------------------------------ service desk
    def _gen_service_requests(self, out: Path, mess: Mess) -> None:
        src = "service_requests"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        pool = np.flatnonzero(w.c_is_erp[w.p_company])
        people = self._sample(0.12, 8, pool=pool)
        days = self._days_for(len(people), 9)
        bad = _malformed_positions(mess, len(people), self.cfg.malformed_rate)
        subjects = ("Hydraulikpresse verliert Öl", "Antrieb macht Geräusche", "Ersatzteilanfrage Dichtungssatz",
                    "Wartungstermin vereinbaren", "Störung Steuerung E-17", "Förderband läuft nicht an")
        seq = 0
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            if not len(sel):
                continue
            halves: list[list[dict]] = [[], []]
            for pos in sel:
                i = int(people[pos])
                c = int(w.p_company[i])
                seq += 1
                v = self._person_view(mess, i)
                ts = _local_dt(day, mess.r, 7, 19)
                name = f"{v['first']} {v['last']}" if mess.chance(0.7) else f"{v['last']}, {v['first']}"
                rec = {"ticket_id": f"SR-{day:%Y}-{seq:06d}", "opened_at": _iso_z(ts),
                       "customer_no": w.c_erp_no[c] if mess.chance(0.7) else None, "company": v["company"],
                       "requester": {"name": name, "email": v["email"] if mess.chance(0.9) else None,
                                     "phone": v["phone"] if mess.chance(0.6) else None},
                       "category": mess.pick(("Reparatur", "Ersatzteil", "Wartung", "Reklamation")),
                       "priority": mess.pick(("niedrig", "normal", "normal", "hoch", "dringend")),
                       "subject": mess.pick(subjects), "serial_no": f"HP{mess.r.randrange(100, 999)}-{mess.r.randrange(2008, 2026)}-{mess.r.randrange(1, 99999):05d}"}
                req = rec["requester"]
                if not (req["email"] or req["phone"] or rec["customer_no"]):
                    req["email"] = v["email"]  # the service desk insists on one way to reach the requester
                malformed = pos in bad
                if malformed:
                    kind = ("bad_priority", "missing_opened_at")[seq % 2]
                    self._bad(src, kind)
                    if kind == "bad_priority":
                        rec["priority"] = "sofort!!"
                    else:
                        rec["opened_at"] = None
                self._truth(src, rec["ticket_id"], i, c, malformed)
                halves[0 if ts.hour < 13 else 1].append(rec)
                st.records += 1
            for h, tickets in enumerate(halves):
                if tickets:
                    doc = {"export_id": f"EXP-{day:%Y%m%d}-{h + 1}", "exported_at": _iso_z(_local_dt(day, mess.r, 13 if h == 0 else 20, 14 if h == 0 else 21)),
                           "tickets": tickets}
                    wr.write_text(day, f"tickets_{day:%Y%m%d}_{h + 1}.json", json.dumps(doc, ensure_ascii=False, indent=1))

    # ------------------------------------------------------------------------ CRM
    def _write_pages(self, wr: Writer, day: date, records: list[dict], object_type: str) -> None:
        for p in range(0, len(records), 100):
            page = records[p:p + 100]
            doc: dict = {"results": page}
            if p + 100 < len(records):
                after = records[p + 100]["id"]
                doc["paging"] = {"next": {"after": after, "link": f"https://api.example-crm.local/crm/v3/objects/{object_type}?after={after}"}}
            wr.write_text(day, f"page_{p // 100 + 1:05d}.json", json.dumps(doc, ensure_ascii=False))

    def _gen_crm_accounts(self, out: Path, mess: Mess) -> None:
        src = "crm_accounts"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        companies = np.flatnonzero(w.c_is_crm)
        rng = np.random.default_rng(self.cfg.seed + 88)
        deliveries = [(0, int(c)) for c in companies]
        deliveries += _daily_deltas(rng, companies, len(self.days), 0.01)
        bad = _malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
        by_day: dict[int, list[dict]] = {}
        for pos, (d, c) in enumerate(deliveries):
            day = self.days[d]
            plz, city, area, country = w.place(c)
            created = datetime.combine(w.c_since[c], datetime.min.time(), BERLIN) + timedelta(hours=9)
            updated = _local_dt(day, mess.r)
            props = {"name": mess.company(w, c, p_variant=0.15), "domain": w.c_domain[c] if mess.chance(0.9) else None,
                     "phone": mess.phone(country, area, w.c_phone[c], "0") if mess.chance(0.8) else None,
                     "address": mess.street(w.street(c)), "zip": plz, "city": city,
                     "country": mess.pick((P.COUNTRY_NAMES_EN[country], P.COUNTRY_NAMES_DE[country])),
                     "industry": P.INDUSTRIES[int(w.c_industry[c])], "numberofemployees": str(int(w.c_employees[c])),
                     "annualrevenue": f"{w.c_revenue[c]:.0f}" if mess.chance(0.6) else None,
                     "erp_customer_number": w.c_erp_no[c] if w.c_is_erp[c] and mess.chance(0.6) else None,
                     "vat_id": w.c_vat[c] if country == "DE" and mess.chance(0.3) else None,
                     "hs_object_id": w.c_crm_id[c], "createdate": _iso_z(created), "hs_lastmodifieddate": _iso_z(updated)}
            malformed = pos in bad
            if malformed:
                kind = ("missing_name", "bad_employees")[pos % 2]
                self._bad(src, kind)
                if kind == "missing_name":
                    props["name"] = None
                else:
                    props["numberofemployees"] = "viele"
            rec = {"id": w.c_crm_id[c], "properties": props, "createdAt": _iso_z(created), "updatedAt": _iso_z(updated),
                   "archived": False}
            by_day.setdefault(d, []).append(rec)
            if d == 0:
                self._truth(src, w.c_crm_id[c], None, c, malformed)
            st.records += 1
        for d, recs in sorted(by_day.items()):
            self._write_pages(wr, self.days[d], recs, "companies")

    def _gen_crm_contacts(self, out: Path, mess: Mess) -> None:
        src = "crm_contacts"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        people = np.flatnonzero(w.p_in_crm)
        rng = np.random.default_rng(self.cfg.seed + 99)
        deliveries = [(0, int(i)) for i in people]
        deliveries += _daily_deltas(rng, people, len(self.days), 0.005)
        bad = _malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
        stages = ("subscriber", "lead", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer")
        by_day: dict[int, list[dict]] = {}
        for pos, (d, i) in enumerate(deliveries):
            day = self.days[d]
            c = int(w.p_company[i])
            v = self._person_view(mess, i)
            created = _local_dt(self.cfg.start - timedelta(days=mess.r.randrange(1, 2000)), mess.r)
            updated = _local_dt(day, mess.r) if d else created + timedelta(days=mess.r.randrange(0, 30))
            props = {"salutation": v["salutation"] if mess.chance(0.6) else None, "firstname": v["first"],
                     "lastname": v["last"], "email": v["email"], "phone": v["phone"] if mess.chance(0.7) else None,
                     "mobilephone": v["mobile"], "jobtitle": v["job"], "company": v["company"],
                     "address": v["street"] if mess.chance(0.5) else None, "zip": v["plz"], "city": v["city"],
                     "country": mess.pick((P.COUNTRY_NAMES_EN[v["country"]], P.COUNTRY_NAMES_DE[v["country"]], None)),
                     "lifecyclestage": mess.pick(stages),
                     "erp_customer_number": w.c_erp_no[c] if w.c_is_erp[c] and mess.chance(0.4) else None,
                     "associatedcompanyid": w.c_crm_id[c] if w.c_is_crm[c] and mess.chance(0.85) else None,
                     "hs_object_id": w.p_crm_id[i], "createdate": _iso_z(created), "lastmodifieddate": _iso_z(updated)}
            rec = {"id": w.p_crm_id[i], "properties": props, "createdAt": _iso_z(created), "updatedAt": _iso_z(updated),
                   "archived": False}
            malformed = pos in bad
            if malformed:
                kind = ("missing_created", "bad_stage")[pos % 2]
                self._bad(src, kind)
                if kind == "missing_created":
                    rec["createdAt"] = None
                else:
                    props["lifecyclestage"] = "hot lead"
            by_day.setdefault(d, []).append(rec)
            if d == 0:
                self._truth(src, w.p_crm_id[i], i, c, malformed)
            st.records += 1
        for d, recs in sorted(by_day.items()):
            self._write_pages(wr, self.days[d], recs, "contacts")

    def _gen_erasure_requests(self, out: Path, mess: Mess) -> None:
        src = "erasure_requests"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        people = self._sample(0.003, 12)
        # Erasures arrive late in the window, after the person is known in other systems.
        days = np.random.default_rng(self.cfg.seed + 12).integers(len(self.days) // 2, len(self.days), size=len(people))
        bad = _malformed_positions(mess, len(people), self.cfg.malformed_rate)
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            lines = []
            for pos in sel:
                i = int(people[pos])
                eid = 700_000 + int(pos)
                rec = {"eventId": eid, "subscriptionType": "contact.privacyDeletion",
                       "occurredAt": _epoch_ms(_local_dt(day, mess.r)),
                       "objectId": int(w.p_crm_id[i]) if w.p_in_crm[i] else None, "email": w.p_email[i],
                       "changeSource": mess.pick(("CRM_UI", "API", "PRIVACY_PORTAL")), "portalId": 4711, "attemptNumber": 0}
                malformed = pos in bad
                if malformed:
                    self._bad(src, "no_identifier")
                    rec["objectId"], rec["email"] = None, None
                lines.append(json.dumps(rec))
                self._truth(src, str(eid), i, int(w.p_company[i]), malformed)
                st.records += 1
            if lines:
                wr.write_lines(day, f"webhook_{day:%Y%m%d}.jsonl", lines)

    def _gen_consent_changes(self, out: Path, mess: Mess) -> None:
        src = "consent_changes"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        people = self._sample(0.04, 13)
        days = self._days_for(len(people), 14)
        bad = _malformed_positions(mess, len(people), self.cfg.malformed_rate)
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            lines = []
            for pos in sel:
                i = int(people[pos])
                eid = 800_000 + int(pos)
                change = mess.pick(("opt_in", "opt_out", "opt_out", "objection"))
                rec = {"eventId": eid, "occurredAt": _epoch_ms(_local_dt(day, mess.r)),
                       "objectId": int(w.p_crm_id[i]) if w.p_in_crm[i] else None, "email": w.p_email[i],
                       "channel": mess.pick(("email", "email", "phone", "post")), "change": change,
                       "legalBasis": "consent" if change == "opt_in" else mess.pick(("consent", "legitimate_interest")),
                       "source": mess.pick(("preference-center", "sales-call", "letter")), "portalId": 4711}
                malformed = pos in bad
                if malformed:
                    self._bad(src, "bad_channel")
                    rec["channel"] = "fax"
                lines.append(json.dumps(rec, ensure_ascii=False))
                self._truth(src, str(eid), i, int(w.p_company[i]), malformed)
                st.records += 1
            if lines:
                wr.write_lines(day, f"webhook_{day:%Y%m%d}.jsonl", lines)


def generate(cfg: GeneratorConfig, progress: Callable[[str], None] | None = None) -> dict:
    return Generator(cfg, progress).run()

