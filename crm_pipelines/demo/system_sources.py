"""The sources other systems export: the ERP's customers and orders (fixed width, cp850), the CRM's
companies and contacts (API pages), erasure requests, consent changes and the e-mail tool's engagement
(webhooks) (methods of the :class:`.generator.Generator`)."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from . import places as P
from .mess import Mess, malformed_positions
from .world import translit
from .writing import BERLIN, Writer, daily_deltas, epoch_ms, iso_z, local_dt


class SystemSources:
    """ERP, CRM, privacy webhooks."""

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
        deliveries += daily_deltas(rng, customers, len(self.days), 0.01)
        bad = malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
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
        bad = malformed_positions(mess, total, self.cfg.malformed_rate)
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
        for d, lines in self._deal_order_lines().items():
            by_day.setdefault(d, []).extend(lines)
            st.records += len(lines)
        for d, lines in sorted(by_day.items()):
            day = self.days[d]
            wr.write_lines(day, f"AUFTRAG_{day:%Y%m%d}.txt", lines, encoding="cp850", eol="\r\n")

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
        deliveries += daily_deltas(rng, companies, len(self.days), 0.01)
        bad = malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
        by_day: dict[int, list[dict]] = {}
        for pos, (d, c) in enumerate(deliveries):
            day = self.days[d]
            plz, city, area, country = w.place(c)
            created = datetime.combine(w.c_since[c], datetime.min.time(), BERLIN) + timedelta(hours=9)
            updated = local_dt(day, mess.r)
            props = {"name": mess.company(w, c, p_variant=0.15), "domain": w.c_domain[c] if mess.chance(0.9) else None,
                     "phone": mess.phone(country, area, w.c_phone[c], "0") if mess.chance(0.8) else None,
                     "address": mess.street(w.street(c)), "zip": plz, "city": city,
                     "country": mess.pick((P.COUNTRY_NAMES_EN[country], P.COUNTRY_NAMES_DE[country])),
                     "industry": P.INDUSTRIES[int(w.c_industry[c])], "numberofemployees": str(int(w.c_employees[c])),
                     "annualrevenue": f"{w.c_revenue[c]:.0f}" if mess.chance(0.6) else None,
                     "erp_customer_number": w.c_erp_no[c] if w.c_is_erp[c] and mess.chance(0.6) else None,
                     "vat_id": w.c_vat[c] if country == "DE" and mess.chance(0.3) else None,
                     "hs_object_id": w.c_crm_id[c], "createdate": iso_z(created), "hs_lastmodifieddate": iso_z(updated)}
            malformed = pos in bad
            if malformed:
                kind = ("missing_name", "bad_employees")[pos % 2]
                self._bad(src, kind)
                if kind == "missing_name":
                    props["name"] = None
                else:
                    props["numberofemployees"] = "viele"
            rec = {"id": w.c_crm_id[c], "properties": props, "createdAt": iso_z(created), "updatedAt": iso_z(updated),
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
        deliveries += daily_deltas(rng, people, len(self.days), 0.005)
        bad = malformed_positions(mess, len(deliveries), self.cfg.malformed_rate)
        stages = ("subscriber", "lead", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer")
        by_day: dict[int, list[dict]] = {}
        for pos, (d, i) in enumerate(deliveries):
            day = self.days[d]
            c = int(w.p_company[i])
            v = self._person_view(mess, i)
            created = local_dt(self.cfg.start - timedelta(days=mess.r.randrange(1, 2000)), mess.r)
            updated = local_dt(day, mess.r) if d else created + timedelta(days=mess.r.randrange(0, 30))
            props = {"salutation": v["salutation"] if mess.chance(0.6) else None, "firstname": v["first"],
                     "lastname": v["last"], "email": v["email"], "phone": v["phone"] if mess.chance(0.7) else None,
                     "mobilephone": v["mobile"], "jobtitle": v["job"], "company": v["company"],
                     "address": v["street"] if mess.chance(0.5) else None, "zip": v["plz"], "city": v["city"],
                     "country": mess.pick((P.COUNTRY_NAMES_EN[v["country"]], P.COUNTRY_NAMES_DE[v["country"]], None)),
                     "lifecyclestage": mess.pick(stages),
                     "erp_customer_number": w.c_erp_no[c] if w.c_is_erp[c] and mess.chance(0.4) else None,
                     "associatedcompanyid": w.c_crm_id[c] if w.c_is_crm[c] and mess.chance(0.85) else None,
                     "hs_object_id": w.p_crm_id[i], "createdate": iso_z(created), "lastmodifieddate": iso_z(updated)}
            rec = {"id": w.p_crm_id[i], "properties": props, "createdAt": iso_z(created), "updatedAt": iso_z(updated),
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
        bad = malformed_positions(mess, len(people), self.cfg.malformed_rate)
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            lines = []
            for pos in sel:
                i = int(people[pos])
                eid = 700_000 + int(pos)
                rec = {"eventId": eid, "subscriptionType": "contact.privacyDeletion",
                       "occurredAt": epoch_ms(local_dt(day, mess.r)),
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
        bad = malformed_positions(mess, len(people), self.cfg.malformed_rate)
        for d_idx, day in enumerate(self.days):
            sel = np.flatnonzero(days == d_idx)
            lines = []
            for pos in sel:
                i = int(people[pos])
                eid = 800_000 + int(pos)
                change = mess.pick(("opt_in", "opt_out", "opt_out", "objection"))
                rec = {"eventId": eid, "occurredAt": epoch_ms(local_dt(day, mess.r)),
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

    def _gen_email_engagement(self, out: Path, mess: Mess) -> None:
        """What the marketing tool's webhooks reported, as the webhook receiver lands it: one file per request,
        one event per line, a receipt ID per event. Malformed: an event type Brevo does not send, a missing
        timestamp, a body the receiver could not parse."""
        src = "email_engagement"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        rng = np.random.default_rng(self.cfg.seed + 91)
        people = self._sample(0.06, 17)
        days = self._days_for(len(people), 18)
        bad = malformed_positions(mess, len(people), self.cfg.malformed_rate)
        for d_idx, day in enumerate(self.days):
            lines = []
            for pos in np.flatnonzero(days == d_idx):
                i = int(people[pos])
                if not w.p_email[i]:
                    continue
                camp = "newsletter-" + day.strftime("%Y-%m")
                sent = local_dt(day, mess.r)
                chain = ["delivered"]
                roll = rng.random()
                if roll < 0.01:
                    chain = ["hard_bounce"]
                elif roll < 0.45:
                    chain += ["opened"] + (["click"] if rng.random() < 0.3 else [])
                if rng.random() < 0.01:
                    chain.append("unsubscribed")
                for k, event in enumerate(chain):
                    rec = {"event": event, "email": w.p_email[i], "id": 1, "date_event": None,
                           "ts_event": int(sent.timestamp()) + 60 * k, "message-id": f"<{self.cfg.seed}.{pos}@brevo>",
                           "tag": camp, "camp_id": 7000 + d_idx, **({"URL": P.SITE + "/preise"} if event == "click" else {})}
                    rec["receipt_id"] = f"{self.cfg.seed:04d}{int(pos):09d}{k}"
                    line = json.dumps(rec, ensure_ascii=False)
                    malformed = k == 0 and int(pos) in bad
                    if malformed:
                        kind = ("unknown_event", "missing_ts", "unparsable_body")[int(pos) % 3]
                        self._bad(src, kind)
                        if kind == "unknown_event":
                            line = json.dumps({**rec, "event": "proxy_open"}, ensure_ascii=False)
                        elif kind == "missing_ts":
                            line = json.dumps({k2: v for k2, v in rec.items() if k2 != "ts_event"}, ensure_ascii=False)
                        else:
                            line = json.dumps({"receipt_id": rec["receipt_id"], "unparsable_body": "event=opened&email="},
                                              ensure_ascii=False)
                    lines.append(line)
                    self._truth(src, rec["receipt_id"], i, int(w.p_company[i]), malformed)
                    st.records += 1
            if lines:
                wr.write_lines(day, f"webhooks_{day:%Y%m%d}.jsonl", lines)
