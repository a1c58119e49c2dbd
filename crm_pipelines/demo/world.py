"""The world the demo data is drawn from: companies (legal forms, register entries, places) and the people
working there, held column-wise so a million contacts fit; every source renders the same world."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import numpy as np

from . import places as P

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


@dataclass
class GeneratorConfig:
    contacts: int = 3000
    seed: int = 42
    out: Path = Path("data/landing")
    start: date = DEFAULT_START
    days: int = 14
    malformed_rate: float = 0.002


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
