"""Deals the sales team works in the CRM, with their truth (methods of the :class:`.generator.Generator`).

Close to half the companies in the CRM have one to three deals with one of their CRM contacts, created in the quarter
before the demo starts or during it. A deal moves through the pipeline's stages (days in a stage: log-normal around six days), is lost at a stage with that stage's chance, and is won after the contract stage; a deal still open when
the demo's last day ends stays in its stage. Amounts are log-normal around 18,000 (EUR, CHF for Swiss companies).
A won deal of an ERP customer becomes an order line a few days after the close (``_gen_erp_orders`` writes it);
the rep enters the order number on seven of ten such deals (``erp_order_number``), the others are linked by rule.

Written: ``_crm_deals/deals.jsonl`` (what the CRM holds: properties, stage history, associations; the demo's CRM
is seeded from it) and ``_ground_truth/deals.csv`` (person, company, stages reached, outcome, the order).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, time, timedelta
from pathlib import Path

import numpy as np

from . import places as P
from .writing import BERLIN, iso_z

# (stage, chance to be lost when leaving it); the stages of the local CRM's pipeline, in order.
DEAL_PATH = (("appointmentscheduled", 0.35), ("qualifiedtobuy", 0.25), ("presentationscheduled", 0.2),
             ("decisionmakerboughtin", 0.15), ("contractsent", 0.15))
OWNERS = ("710001", "710002", "710003", "710004", "710005", "710006")
DEAL_ID_BASE = 30_000_001
DEAL_ORDER_BASE = 5_000_000


class Deals:
    def _draw_deals(self, out: Path) -> None:
        w, cfg = self.w, self.cfg
        rng = np.random.default_rng(cfg.seed + 1212)
        now = datetime.combine(self.days[-1], time(20, 0), tzinfo=BERLIN)
        crm_people: dict[int, list[int]] = {}
        for i in np.flatnonzero(w.p_in_crm):
            c = int(w.p_company[i])
            if w.c_is_crm[c]:
                crm_people.setdefault(c, []).append(int(i))
        companies = sorted(crm_people)
        chosen = [c for c in companies if rng.random() < 0.45]
        self.deals: list[dict] = []
        for c in chosen:
            for _ in range(1 + int(rng.random() < 0.4) + int(rng.random() < 0.15)):
                people = crm_people[c]
                person = people[int(rng.integers(len(people)))]
                created = datetime.combine(cfg.start + timedelta(days=int(rng.integers(-90, cfg.days))),
                                           time(int(rng.integers(8, 17)), int(rng.integers(60))), tzinfo=BERLIN)
                history, outcome, at = [], "open", created
                for k, (stage, p_lost) in enumerate(DEAL_PATH):
                    if at > now:
                        break
                    if k and rng.random() < 0.1 and k < len(DEAL_PATH) - 1:
                        continue  # a stage skipped: the rep moved the deal two steps at once
                    history.append((stage, at))
                    at = at + timedelta(hours=float(rng.lognormal(np.log(6 * 24), 0.7)))
                    if at > now:
                        break
                    if rng.random() < p_lost:
                        history.append(("closedlost", at))
                        outcome = "lost"
                        break
                else:
                    if at <= now:
                        history.append(("closedwon", at))
                        outcome = "won"
                country = P.PLACES[int(w.c_place[c])][3]
                amount = float(np.round(rng.lognormal(np.log(18_000), 0.9), -1))
                closed = history[-1][1] if outcome != "open" else created + timedelta(days=90)
                deal = {"id": str(DEAL_ID_BASE + len(self.deals)), "person": person, "company": c,
                        "history": history, "outcome": outcome, "amount": max(amount, 500.0),
                        "currency": "CHF" if country == "CH" else "EUR", "closed": closed,
                        "owner": OWNERS[int(rng.integers(len(OWNERS)))], "order_id": None, "order_date": None,
                        "order_named": False}
                if outcome == "won" and w.c_is_erp[c]:
                    order_date = closed.date() + timedelta(days=int(rng.integers(2, 21)))
                    if order_date <= self.days[-1]:
                        deal["order_id"] = f"{DEAL_ORDER_BASE + len(self.deals):010d}"
                        deal["order_date"] = order_date
                        deal["order_named"] = bool(rng.random() < 0.7)
                self.deals.append(deal)
        self._write_deals(out)

    def _write_deals(self, out: Path) -> None:
        w = self.w
        folder = out / "_crm_deals"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "deals.jsonl", "w", encoding="utf-8") as fh:
            for d in self.deals:
                c = d["company"]
                props = {"dealname": f"{w.c_base[c]} – {P.ARTICLES[int(d['id']) % len(P.ARTICLES)]}",
                         "amount": f"{d['amount']:.2f}", "deal_currency_code": d["currency"], "pipeline": "default",
                         "closedate": iso_z(d["closed"]), "createdate": iso_z(d["history"][0][1]),
                         "hubspot_owner_id": d["owner"]}
                if d["order_named"]:
                    props["erp_order_number"] = d["order_id"]
                fh.write(json.dumps({"id": d["id"], "properties": props,
                                     "history": [(s, iso_z(t)) for s, t in d["history"]],
                                     "contacts": [w.p_crm_id[d["person"]]], "companies": [w.c_crm_id[c]]},
                                    ensure_ascii=False) + "\n")
        with open(out / "_ground_truth" / "deals.csv", "w", encoding="utf-8", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["deal_id", "person_id", "account_id", "crm_contact_id", "crm_company_id", "created_at",
                         "stages", "outcome", "closed_at", "amount", "currency", "order_id", "order_date",
                         "order_named"])
            for d in self.deals:
                wr.writerow([d["id"], f"P{d['person'] + 1:07d}", f"A{d['company'] + 1:06d}", w.p_crm_id[d["person"]],
                             w.c_crm_id[d["company"]], iso_z(d["history"][0][1]),
                             "|".join(s for s, _ in d["history"]), d["outcome"],
                             iso_z(d["closed"]) if d["outcome"] != "open" else "", f"{d['amount']:.2f}", d["currency"],
                             d["order_id"] or "", d["order_date"].isoformat() if d["order_date"] else "",
                             int(d["order_named"])])

    def _deal_order_lines(self) -> dict[int, list[str]]:
        """The order line each won deal of an ERP customer became: day index -> fixed-width lines."""
        w = self.w
        by_day: dict[int, list[str]] = {}
        for d in self.deals:
            if not d["order_id"]:
                continue
            c = d["company"]
            day = max(0, (d["order_date"] - self.days[0]).days)
            amount_txt = f"{d['amount']:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
            by_day.setdefault(day, []).append(self._erp_line([
                (d["order_id"], 10), (w.c_erp_no[c], 10), (d["order_date"].strftime("%Y%m%d"), 8),
                (P.ARTICLES[int(d["id"]) % len(P.ARTICLES)], 15), ("1".rjust(7), 7), (amount_txt.rjust(15), 15),
                (d["currency"], 3), ("F", 5)]))
        return by_day
