"""The sources people fill in themselves: web forms, the trade-fair lead scanner, newsletter sign-ups,
behaviour events and service requests (methods of the :class:`.generator.Generator`)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from . import places as P
from .mess import Mess, malformed_positions
from .world import slug
from .writing import Writer, epoch_ms, iso_z, local_dt


class LeadSources:
    """Web forms, trade fairs, newsletter, behaviour, service desk."""

    def _gen_web_form_leads(self, out: Path, mess: Mess) -> None:
        src = "web_form_leads"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        people = self._sample(0.30, 1)
        again = people[np.random.default_rng(self.cfg.seed + 11).random(len(people)) < 0.05]
        who = np.concatenate([people, again])
        days = self._days_for(len(who), 2)
        order = np.lexsort((who, days))
        bad = malformed_positions(mess, len(who), self.cfg.malformed_rate)
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
                ts = local_dt(day, mess.r, 0, 24)
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
        bad = malformed_positions(mess, len(people), self.cfg.malformed_rate)
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
                ts = local_dt(day, mess.r, 9, 18)
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
        bad = malformed_positions(mess, len(events), self.cfg.malformed_rate)
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
                ts = local_dt(day, mess.r, 0, 23)
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
        bad = malformed_positions(mess, len(who), self.cfg.malformed_rate)
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
                ts = local_dt(day, mess.r, 0, 24)
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
                    "event_id": f"ev-{self.cfg.seed}-{seq:09d}", "type": kind, "ts": epoch_ms(ts),
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
        self._hot_prospects(wr, st)

    def _hot_prospects(self, wr: Writer, st) -> None:
        """A few prospects in a buying phase: in the last two days pricing page, demo videos, a webinar and a
        whitepaper (as the articles' hot lead looks). They cross the SQL threshold, so the hand-off, the hot-leads
        segment and the brochure journey have someone to act on. A file of their own (evening), clean, so the
        other files stay as they were."""
        w = self.w
        rng = np.random.default_rng(self.cfg.seed + 78)
        n = self.cfg.contacts
        size = max(4, n // 100)
        # Half of them existing customers in an upsell (the CRM knows them, their company buys through the ERP):
        # post may reach them without a separate consent, so the brochure has someone to print for.
        customers = np.flatnonzero(w.p_in_crm & w.c_is_erp[w.p_company])
        some = rng.choice(customers, size=min(size // 2, len(customers)), replace=False)
        rest = np.setdiff1d(np.arange(n), some)
        hot = np.concatenate([some, rng.choice(rest, size=size - len(some), replace=False)])
        burst = ("pricing_view", "pricing_view", "pricing_view", "video_play", "video_play", "webinar_attended",
                 "whitepaper_download", "pageview", "pageview")
        for d_idx, day in enumerate(self.days[-2:]):
            lines = []
            for k, i in enumerate(sorted(int(x) for x in hot)):
                for j, kind in enumerate(burst[d_idx::2]):
                    ts = datetime(day.year, day.month, day.day, 19, (k * 7 + j * 3) % 60, j, tzinfo=timezone.utc)
                    url = {"pricing_view": "/preise", "pageview": "/produkte/servo-pressen"}.get(kind)
                    content = {"video_play": "demo-servo-presse", "webinar_attended": "webinar-retrofit",
                               "whitepaper_download": "whitepaper-tco"}.get(kind)
                    lines.append(json.dumps({
                        "event_id": f"ev-{self.cfg.seed}-hot-{day:%Y%m%d}-{i:07d}-{j}", "type": kind, "ts": epoch_ms(ts),
                        "anonymous_id": f"anon-{i * 2654435761 % (1 << 32):08x}", "email": w.p_email[i],
                        "contact_id": None, "page": {"url": P.SITE + url, "title": None} if url else None,
                        "content_id": content, "utm": {"campaign": "herbst-2026", "source": "linkedin"}},
                        ensure_ascii=False))
                    st.records += 1
            wr.write_lines(day, f"events_{day:%Y%m%d}_21.jsonl", lines)

    # ------------------------------------------------------------------------ service desk
    def _gen_service_requests(self, out: Path, mess: Mess) -> None:
        src = "service_requests"
        st, wr = self.stats[src], Writer(out, src, self.stats[src])
        w = self.w
        pool = np.flatnonzero(w.c_is_erp[w.p_company])
        people = self._sample(0.12, 8, pool=pool)
        days = self._days_for(len(people), 9)
        bad = malformed_positions(mess, len(people), self.cfg.malformed_rate)
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
                ts = local_dt(day, mess.r, 7, 19)
                name = f"{v['first']} {v['last']}" if mess.chance(0.7) else f"{v['last']}, {v['first']}"
                rec = {"ticket_id": f"SR-{day:%Y}-{seq:06d}", "opened_at": iso_z(ts),
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
                    doc = {"export_id": f"EXP-{day:%Y%m%d}-{h + 1}", "exported_at": iso_z(local_dt(day, mess.r, 13 if h == 0 else 20, 14 if h == 0 else 21)),
                           "tickets": tickets}
                    wr.write_text(day, f"tickets_{day:%Y%m%d}_{h + 1}.json", json.dumps(doc, ensure_ascii=False, indent=1))
