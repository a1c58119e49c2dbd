"""Where a person can be in the warehouse, and how to find and remove them there.

One :class:`Locator` per table that can hold personal data. Erasure, the access export and
retention all walk this one list, and a test checks that every table with a personal column
(model fields marked ``pii``, the golden and staging tables) has a locator, so a table added
later cannot be forgotten.

A :class:`Person` is what erasure knows about someone: the identities given (e-mail, CRM ID),
the person records the matcher linked to them (their golden contact's members), and the
identity hashes of all of those.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..cleaning.text import clean_text
from ..platform import schema as S
from ..platform.warehouse import Warehouse, tables_present
from ..privacy_screen.identity import (KINDS, MENTION_KINDS, PERSON_KINDS, IdentityHasher, any_suppressed,
                                       company_value, family_name_of, names_any, parse_hash_list)
from ..sources.mapping import SourceMapping


@dataclass
class Person:
    subject: str
    emails: set[str] = field(default_factory=set)              # normalised
    crm_contact_ids: set[str] = field(default_factory=set)
    record_keys: set[str] = field(default_factory=set)         # person records ("<source>:<id>")
    golden_ids: set[str] = field(default_factory=set)
    identities: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})
    family_plz: set[tuple[str, str]] = field(default_factory=set)  # for text search in quarantined payloads
    families: set[str] = field(default_factory=set)     # family names as written, to find raw rows by name
    phones: set[str] = field(default_factory=set)       # phone numbers as written
    companies: set[str] = field(default_factory=set)    # company matching keys

    def source_ids(self, source: str) -> list[str]:
        prefix = source + ":"
        return sorted(k[len(prefix):] for k in self.record_keys if k.startswith(prefix))

    @property
    def mention_keys(self) -> list[str]:
        return sorted("mention:" + k for k in self.record_keys)

    @property
    def email_hashes(self) -> set[str]:
        return self.identities["email"]


Finder = Callable[[Connection, Warehouse, Person, IdentityHasher], pd.DataFrame]


@dataclass(frozen=True)
class Locator:
    table: sa.Table
    how: str                                   # what identifies the person's rows here (for the docs and export)
    action: str                                # delete | blank:<col,col> | mark_erased
    find: Finder

    @property
    def name(self) -> str:
        return self.table.fullname


def _in(col: sa.Column, values) -> sa.ColumnElement:
    values = sorted({v for v in values if isinstance(v, str) and v})
    return col.in_(values) if values else sa.false()


def _read(conn: Connection, wh: Warehouse, query) -> pd.DataFrame:
    return pd.read_sql_query(query, conn)


# ------------------------------------------------------------------------------------ raw tables

_NAME_BREAKS = re.compile(r"ae|oe|ue|ss|ä|ö|ü|ß|[^a-z]+")


def name_fragment(family: str) -> str | None:
    """The longest piece of a family name that every spelling shares ('Müller', 'Mueller', 'MULLER'
    all contain 'ller'): a generous pre-filter for SQL, confirmed by the identity hashes after."""
    pieces = [p for p in _NAME_BREAKS.split(clean_text(family).lower()) if len(p) >= 3]
    return max(pieces, key=len) if pieces else None


def digits_tail(phone: str) -> str | None:
    digits = re.sub(r"\D", "", phone)
    return digits[-6:] if len(digits) >= 6 else None


def stripped_phone(col: sa.Column) -> sa.ColumnElement:
    out = col
    for ch in (" ", "-", "/", "(", ")", ".", "+"):
        out = sa.func.replace(out, ch, "")
    return out


def _raw_finder(source: str, entity_name: str) -> Finder:
    def find(conn, wh, person, hasher) -> pd.DataFrame:
        t = S.metadata.tables[f"raw.{source}"]
        cond = [_in(t.c.source_record_id, person.source_ids(source))]
        if "email" in t.c:
            variants = set(person.emails) | {f"mailto:{e}" for e in person.emails}
            cond.append(_in(sa.func.lower(sa.func.trim(t.c.email)), variants))
        if "crm_contact_id" in t.c:
            cond.append(_in(t.c.crm_contact_id, person.crm_contact_ids))
        if "postal_code" in t.c and ("last_name" in t.c or "contact_person" in t.c):
            cond.append(_in(t.c.postal_code, {plz for _, plz in person.family_plz}))
        fragments = {f for f in (name_fragment(x) for x in person.families) if f}
        for column in ("last_name", "contact_name", "contact_person"):
            if column in t.c:
                cond += [t.c[column].ilike(f"%{f}%") for f in sorted(fragments)]
        tails = {d for d in (digits_tail(p) for p in person.phones) if d}
        for column in ("phone", "mobile"):
            if column in t.c and entity_name != "account":
                cond += [stripped_phone(t.c[column]).like(f"%{d}") for d in sorted(tails)]
        free_text = [c for c in ("notes", "subject") if c in t.c]
        for column in free_text:
            cond += [t.c[column].ilike(f"%{f}%") for f in sorted(fragments)]
            cond += [sa.func.lower(t.c[column]).contains(e, autoescape=True) for e in sorted(person.emails)]
        rows = _read(conn, wh, sa.select(t).where(sa.or_(*cond)))
        if rows.empty:
            return rows
        ids = hasher.frame_identities(rows, source)
        kinds = MENTION_KINDS if entity_name == "account" else PERSON_KINDS
        hit = any_suppressed(ids, person.identities, kinds).to_numpy() | rows["source_record_id"].astype(str).isin(
            person.source_ids(source)).to_numpy()
        mention = _text_mentions(rows, free_text, person, hasher) & ~hit
        rows = rows.assign(_mention_only=mention)
        return rows[hit | mention]
    return find


def _text_mentions(rows: pd.DataFrame, columns: list[str], person: Person, hasher: IdentityHasher) -> np.ndarray:
    """Rows whose free text names the person (their record is about someone else: the text is blanked)."""
    if not columns or rows.empty:
        return np.zeros(len(rows), dtype=bool)
    companies = rows["company_name"].map(company_value) if "company_name" in rows.columns else [None] * len(rows)
    out = np.zeros(len(rows), dtype=bool)
    for c in columns:
        out |= np.array([names_any(hasher.text_identities(t, key), person.identities)
                         for t, key in zip(rows[c], companies)], dtype=bool)
    return out


def _raw_locator(mapping: SourceMapping) -> Locator:
    t = S.raw_table(mapping.source, mapping.entity)
    if mapping.entity.name == "account":
        return Locator(t, "the Ansprechpartner or e-mail of a company record names the person (e-mail, family name + "
                          "company, family name + address)", "blank:contact_person,email", _raw_finder(mapping.source, "account"))
    free_text = [f.name for f in mapping.entity.fields if f.pii == "free_text"]
    if free_text:
        return Locator(t, "records with one of the person's identities (e-mail, phone, name + company, name + address, "
                          "name + birth date, CRM contact ID, record ID); free text of other records that names them",
                       "delete_or_blank:" + ",".join(free_text), _raw_finder(mapping.source, mapping.entity.name))
    return Locator(t, "records with one of the person's identities (e-mail, phone, name + company, name + address, "
                      "name + birth date, CRM contact ID, record ID)", "delete", _raw_finder(mapping.source, "x"))


# ------------------------------------------------------------------------------------ other layers

def _find_quarantine(conn, wh, person, hasher) -> pd.DataFrame:
    """Quarantined records of the person: by record ID, by the identity hashes stored when the
    record was quarantined, and by what its text names (e-mail, phone digits, family name + PLZ).
    Read whole and judged in Python: the quarantine is small next to the raw tables, and its
    texts need the same normalisation as everything else."""
    t = S.QUARANTINE
    rows = _read(conn, wh, sa.select(t))
    if rows.empty:
        return rows
    keep = (rows["source"] + ":" + rows["source_record_id"].astype(str)).isin(person.record_keys).to_numpy().copy()
    if "identity_hashes" in rows.columns:
        keep |= rows["identity_hashes"].map(lambda v: names_any(parse_hash_list(v), person.identities)).to_numpy()
    texts = rows["raw_payload"].fillna("").map(clean_text)
    low = texts.str.lower()
    if person.emails:
        pattern = "|".join(re.escape(e) for e in sorted(person.emails))
        keep |= low.str.contains(pattern, regex=True).to_numpy()
    for family, plz in person.family_plz:
        # A record that did not parse still names the person: family name and PLZ in its text.
        keep |= (low.str.contains(family.lower(), regex=False) & texts.str.contains(plz, regex=False)).to_numpy()
    tails = {d for d in (digits_tail(p) for p in person.phones) if d}
    if tails or person.families:
        # Phones and names in any spelling: the same normalisation as the ingest screen, row by row
        # for the rows that could name the person at all.
        digits = texts.str.replace(r"\D", "", regex=True)
        fragments = [f for f in (name_fragment(x) for x in person.families) if f]
        maybe = digits.map(lambda s: any(d in s for d in tails)) | low.map(lambda s: any(f in s for f in fragments))
        for i in np.flatnonzero(maybe.to_numpy() & ~keep):
            keep[i] = names_any(hasher.text_identities(texts.iat[i]), person.identities)
    return rows[keep]


def _by(column_getter: Callable[[sa.Table], sa.Column], values: Callable[[Person], set | list],
        extra: Callable[[sa.Table], sa.ColumnElement] | None = None) -> Callable[[sa.Table], Finder]:
    def bind(t: sa.Table) -> Finder:
        def find(conn, wh, person, hasher) -> pd.DataFrame:
            q = sa.select(t).where(_in(column_getter(t), values(person)))
            if extra is not None:
                q = q.where(extra(t))
            return _read(conn, wh, q)
        return find
    return bind


def _find_crm_remote(conn, wh, person, hasher) -> pd.DataFrame:
    # By the CRM IDs the person's records carry, and by golden ID for the contacts we created in the CRM.
    t = S.CRM_REMOTE
    return _read(conn, wh, sa.select(t).where(t.c.object_type == "contacts", sa.or_(
        _in(t.c.crm_id, person.crm_contact_ids), _in(t.c.golden_id, person.golden_ids))))


def _find_pairs(entity_values: Callable[[Person], set]) -> Callable[[sa.Table], Finder]:
    def bind(t: sa.Table) -> Finder:
        def find(conn, wh, person, hasher) -> pd.DataFrame:
            keys = entity_values(person)
            return _read(conn, wh, sa.select(t).where(t.c.entity == "persons",
                                                      sa.or_(_in(t.c.record_a, keys), _in(t.c.record_b, keys))))
        return find
    return bind


def _find_match_edges(conn, wh, person, hasher) -> pd.DataFrame:
    t = S.MATCH_EDGES
    return _read(conn, wh, sa.select(t).where(t.c.entity == "persons", sa.or_(
        _in(t.c.golden_id, person.golden_ids), _in(t.c.record_a, person.record_keys), _in(t.c.record_b, person.record_keys))))


def _find_consent(conn, wh, person, hasher) -> pd.DataFrame:
    t = S.CONSENT_EVENTS
    return _read(conn, wh, sa.select(t).where(sa.or_(_in(t.c.person_record_key, person.record_keys),
                                                     _in(t.c.email_hash, person.email_hashes))))


def _find_alerts(conn, wh, person, hasher) -> pd.DataFrame:
    t = S.ALERT_LEDGER
    return _read(conn, wh, sa.select(t).where(sa.or_(_in(t.c.golden_id, person.golden_ids),
                                                     _in(t.c.record_key, person.record_keys))))


def _find_account_records(conn, wh, person, hasher) -> pd.DataFrame:
    t = S.ACCOUNT_RECORDS
    mentions = _read(conn, wh, sa.select(t).where(_in(t.c.record_key, person.mention_keys)))
    emails = _read(conn, wh, sa.select(t).where(t.c.is_mention.is_(False), _in(t.c.email, person.emails)))
    return pd.concat([mentions, emails], ignore_index=True)


def build_inventory(mappings: dict[str, SourceMapping]) -> list[Locator]:
    g = S  # short for the table list below
    crm_payload = g.CRM_PAYLOADS["contacts"]
    locators = [_raw_locator(m) for m in mappings.values() if _holds_person(m)]
    locators += [
        Locator(g.QUARANTINE, "records of the person's sources that failed validation, and any quarantined record whose "
                              "text holds their e-mail, or their family name and PLZ", "delete", _find_quarantine),
        Locator(g.PERSON_RECORDS, "the person's cleaned records", "delete",
                _by(lambda t: t.c.record_key, lambda p: p.record_keys)(g.PERSON_RECORDS)),
        Locator(g.ACCOUNT_RECORDS, "company mentions of the person's records; company records carrying their e-mail",
                "delete_mentions_blank:email", _find_account_records),
        Locator(g.CONSENT_EVENTS, "the person's consent events (linked record or e-mail hash)", "delete", _find_consent),
        Locator(g.GOLDEN_CONTACTS, "the person's golden contact", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.GOLDEN_CONTACTS)),
        Locator(g.CONTACT_LINEAGE, "lineage of the person's golden contact", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.CONTACT_LINEAGE)),
        Locator(g.PERSON_CROSSWALK, "the person's records -> golden ID, with history", "delete",
                _by(lambda t: t.c.record_key, lambda p: p.record_keys)(g.PERSON_CROSSWALK)),
        Locator(g.ACCOUNT_CROSSWALK, "company mentions of the person's records", "delete",
                _by(lambda t: t.c.record_key, lambda p: p.mention_keys)(g.ACCOUNT_CROSSWALK)),
        Locator(g.CROSSWALK, "the person's records with their golden IDs", "delete",
                _by(lambda t: t.c.record_key, lambda p: p.record_keys)(g.CROSSWALK)),
        Locator(g.MATCH_EDGES, "merges that built the person's golden contact", "delete", _find_match_edges),
        Locator(g.REVIEW_CANDIDATES, "review pairs with one of the person's records", "delete",
                _find_pairs(lambda p: p.record_keys)(g.REVIEW_CANDIDATES)),
        Locator(g.REVIEW_QUEUE, "review pairs with one of the person's records", "delete",
                _find_pairs(lambda p: p.record_keys)(g.REVIEW_QUEUE)),
        Locator(g.STEWARD_DECISIONS, "steward decisions about the person's records", "delete",
                _find_pairs(lambda p: p.record_keys)(g.STEWARD_DECISIONS)),
        Locator(g.ID_REGISTRY, "the golden ID (a pseudonym): kept, marked erased", "mark_erased",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.ID_REGISTRY)),
        Locator(crm_payload, "the person's outgoing CRM payload", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(crm_payload)),
        Locator(g.CRM_SYNC_STATE, "sync state of the person's golden ID: the CRM ID is forgotten, marked erased",
                "mark_erased", _by(lambda t: t.c.golden_id, lambda p: p.golden_ids,
                                   lambda t: t.c.object_type == "contacts")(g.CRM_SYNC_STATE)),
        Locator(g.CRM_REMOTE, "what the CRM held of the person's contact (its CRM ID, stage, which fields were filled)",
                "delete", _find_crm_remote),
        Locator(g.ERASURE_OUTBOX, "erasures a connected system has not confirmed yet (kept until it does)", "keep",
                _by(lambda t: t.c.identifier, lambda p: p.emails | p.crm_contact_ids)(g.ERASURE_OUTBOX)),
        Locator(g.LEAD_SCORES, "the person's lead score and its reasons", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.LEAD_SCORES)),
        Locator(g.LEAD_SCORE_HISTORY, "the person's daily scores", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.LEAD_SCORE_HISTORY)),
        Locator(g.ALERT_LEDGER, "sales hand-offs about the person", "delete", _find_alerts),
        Locator(g.PRINT_QUEUE, "print jobs for the person", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.PRINT_QUEUE)),
        Locator(g.REACTIVATION_SEGMENT, "the person in the reactivation segment", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.REACTIVATION_SEGMENT)),
        Locator(g.CRM_DEAL_LINKS, "the person's link to CRM deals (the deal stays: it is the company's)", "delete",
                _by(lambda t: t.c.object_id, lambda p: p.crm_contact_ids,
                    lambda t: t.c.object_type == "contacts")(g.CRM_DEAL_LINKS)),
        Locator(g.TOUCHPOINTS, "the person's touches (rebuilt by the reporting group)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.TOUCHPOINTS)),
        Locator(g.REVENUE_LINES, "revenue lines naming the person as the deal's contact (the revenue stays: it is the "
                                 "company's)", "blank:contact_id",
                _by(lambda t: t.c.contact_id, lambda p: p.golden_ids)(g.REVENUE_LINES)),
        Locator(g.PRINT_HOLDOUTS, "the person in a print campaign's holdout", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.PRINT_HOLDOUTS)),
        Locator(g.PRINT_RECIPIENTS, "the person's place in print lists (pseudonymous recipient IDs)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.PRINT_RECIPIENTS)),
        Locator(g.RETIRED_CONTACTS, "statistics row of a retired golden ID (no personal data)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.RETIRED_CONTACTS)),
        Locator(g.ACTIVATION_AUDIENCE, "the person's planned lists in the marketing tool", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.ACTIVATION_AUDIENCE)),
        Locator(g.SEGMENT_MEMBERS, "the person's segment memberships", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.SEGMENT_MEMBERS)),
        Locator(g.SEGMENT_HISTORY, "the person's entries into and exits from segments", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.SEGMENT_HISTORY)),
        Locator(g.ACTIVATION_MEMBERS, "the person's memberships in the marketing tool's lists (the tool deletes the contact)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.ACTIVATION_MEMBERS)),
        Locator(g.ACTIVATION_CONTACTS, "what was last sent to the marketing tool for the person (a hash)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.ACTIVATION_CONTACTS)),
        Locator(g.JOURNEY_ENROLLMENTS, "the person's journeys (enrolled, holdout, exited)", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.JOURNEY_ENROLLMENTS)),
        Locator(g.CONTACT_TOUCHES, "the person's marketing and sales touches", "delete",
                _by(lambda t: t.c.golden_id, lambda p: p.golden_ids)(g.CONTACT_TOUCHES)),
        Locator(g.ACTIVATION_BLOCKED, "the person's address as the marketing tool reported it blocked (a hash)", "delete",
                _by(lambda t: t.c.email_hash, lambda p: p.email_hashes)(g.ACTIVATION_BLOCKED)),
    ]
    return locators


def _holds_person(mapping: SourceMapping) -> bool:
    return any(f.pii for f in mapping.entity.fields) or mapping.entity.has("crm_contact_id")


# Tables that hold no personal data, or only pseudonyms that are the point of the table (audit
# trail, suppression list, request log, row log of CRM writes with masked messages).
NOT_PERSONAL = {"golden.accounts", "golden.account_lineage", "golden.id_events", "ops.match_runs", "ops.register_cache",
                "ops.register_calls", "ops.landing_files", "ops.landing_aliases", "ops.crm_sync_log", "ops.crm_sync_runs",
                "ops.crm_pull_state",
                "ops.suppression_list", "ops.audit_log", "ops.privacy_requests", "marts.crm_companies_payload", "ops.print_lists",
                "raw.erp_orders", "ops.activation_state", "ops.activation_lists", "ops.print_template_approvals",
                "staging.crm_deals", "staging.crm_deal_stages", "marts.funnel", "marts.lead_response",
                "marts.deal_stage_times", "marts.attribution", "marts.campaign_economics", "marts.print_response"}


def locate(wh: Warehouse, locators: list[Locator], person: Person, hasher: IdentityHasher) -> dict[str, pd.DataFrame]:
    """Every locator's rows of the person (tables that do not exist yet are skipped)."""
    present = [loc for loc in locators if tables_present(wh, [loc.table])]
    wh.ensure_tables([loc.table for loc in present])  # a warehouse of an older version gains new columns
    out = {}
    with wh.engine.connect() as conn:
        for loc in present:
            rows = loc.find(conn, wh, person, hasher)
            out[loc.name] = rows
    return out


def to_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (dates as ISO strings, missing as null)."""
    if frame is None or frame.empty:
        return []
    return json.loads(frame.to_json(orient="records", date_format="iso", force_ascii=False))


def family_plz_of(records: pd.DataFrame) -> set[tuple[str, str]]:
    out = set()
    if records.empty or "postal_code" not in records.columns:
        return out
    family = records["last_name"] if "last_name" in records.columns else records.get("contact_person", pd.Series(
        None, index=records.index)).map(family_name_of)
    for f, plz in zip(family, records["postal_code"]):
        if isinstance(f, str) and f.strip() and isinstance(plz, str) and plz.strip():
            out.add((f.strip(), plz.strip()))
    return out


def nonempty(frames: dict[str, pd.DataFrame]) -> dict[str, int]:
    return {k: int(len(v)) for k, v in frames.items() if v is not None and len(v)}


def inventory_markdown(mappings: dict[str, SourceMapping]) -> str:
    """The inventory as a table for docs/privacy.md (regenerated by ``make sql``)."""
    actions = {"delete": "rows deleted", "keep": "kept until confirmed", "mark_erased": "kept as a pseudonym, marked erased",
               "delete_mentions_blank:email": "mentions deleted, e-mail blanked"}
    lines = ["| table | how the person is found there | erasure |", "|---|---|---|"]
    for loc in build_inventory(mappings):
        action = actions.get(loc.action)
        if action is None and loc.action.startswith("delete_or_blank:"):
            action = "rows deleted; in other rows blanked: " + loc.action.split(":", 1)[1].replace(",", ", ")
        action = action or ("fields blanked: " + loc.action.split(":", 1)[1].replace(",", ", "))
        lines.append(f"| `{loc.name}` | {loc.how} | {action} |")
    return "\n".join(lines)


def render_privacy_doc(doc: str, mappings: dict[str, SourceMapping]) -> str:
    start, end = "<!-- inventory:start -->", "<!-- inventory:end -->"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{inventory_markdown(mappings)}\n{end}{tail}"

