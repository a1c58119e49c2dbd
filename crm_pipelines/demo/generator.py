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
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np

from . import places as P
from .deals import Deals
from .lead_sources import LeadSources
from .mess import Mess
from .system_sources import SystemSources
from .world import LEGAL_FORMS, GeneratorConfig, World
from .writing import SourceStats

SOURCES = ("web_form_leads", "trade_fair_leads", "erp_customers", "erp_orders", "newsletter_signups",
           "behaviour_events", "service_requests", "crm_accounts", "crm_contacts", "erasure_requests",
           "consent_changes", "email_engagement")


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.started:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Generator(LeadSources, SystemSources, Deals):
    def __init__(self, cfg: GeneratorConfig, progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = progress or (lambda m: None)
        self.days = [cfg.start + timedelta(days=d) for d in range(cfg.days)]
        self.stats = {s: SourceStats() for s in SOURCES}
        self.truth_rows = 0


    def run(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.out)
        for s in (*SOURCES, "_crm_deals"):
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
        self._draw_deals(out)
        self.log(f"deals: {len(self.deals):,} in the CRM ({sum(d['outcome'] == 'won' for d in self.deals):,} won, "
                 f"{sum(d['outcome'] == 'lost' for d in self.deals):,} lost)")
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
            "deals": {o: sum(d["outcome"] == o for d in self.deals) for o in ("open", "won", "lost")},
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


def generate(cfg: GeneratorConfig, progress: Callable[[str], None] | None = None) -> dict:
    return Generator(cfg, progress).run()
