"""Warehouse tables, derived from the canonical model (the DDL in ``sql/`` is generated from here).

Layers are schemas: ``raw`` (one table per source, as delivered but typed), ``staging``,
``golden``, ``marts`` and ``ops`` (quarantine, file ledger, and later sync state and
audit). On SQLite each layer is its own attached database file.
"""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from ..model import RAW_LINEAGE_COLUMNS, Entity, Field

LAYERS = ("raw", "staging", "golden", "marts", "ops")


def sa_type(type_: str) -> sa.types.TypeEngine:
    return {
        "string": sa.Text(),
        "integer": sa.BigInteger(),
        "decimal": sa.Numeric(18, 4),
        "date": sa.Date(),
        "datetime": sa.DateTime(timezone=True),
        "boolean": sa.Boolean(),
    }[type_]


def _column(f: Field, nullable: bool = True) -> sa.Column:
    return sa.Column(f.name, sa_type(f.type), nullable=nullable, comment=f.meaning)


metadata = sa.MetaData()

QUARANTINE = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text(), nullable=False, comment="source name (mapping file stem)"),
    sa.Column("partition", sa.Text(), nullable=False, comment="landing-zone day YYYY-MM-DD"),
    sa.Column("file", sa.Text(), nullable=False, comment="landing file name"),
    sa.Column("line_no", sa.BigInteger(), comment="line where the record starts (null for JSON documents)"),
    sa.Column("record_no", sa.BigInteger(), nullable=False, comment="1-based record number in the file"),
    sa.Column("source_record_id", sa.Text(), comment="record ID when it could be read"),
    sa.Column("fields", sa.Text(), comment="comma-separated source fields with problems"),
    sa.Column("reason", sa.Text(), nullable=False, comment="every problem of the record; personal values masked"),
    sa.Column("raw_payload", sa.Text(), nullable=False, comment="the record exactly as delivered"),
    sa.Column("identity_hashes", sa.Text(),
              comment="salted hashes of the identities the record names (space-separated kind:hash): how an erasure "
                      "finds a record that never parsed"),
    sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
    schema="ops",
    comment="Records that failed parsing or mapping, with their reason. Never silently dropped.",
)
sa.Index("ix_quarantine_source_partition", QUARANTINE.c.source, QUARANTINE.c.partition)

LANDING_FILES = sa.Table(
    "landing_files", metadata,
    sa.Column("source", sa.Text(), primary_key=True),
    sa.Column("partition", sa.Text(), primary_key=True),
    sa.Column("file", sa.Text(), primary_key=True),
    sa.Column("sha256", sa.Text(), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False,
              comment="loaded | duplicate | rejected (not readable as a whole) | ignored (matches no pattern of the source)"),
    sa.Column("error", sa.Text(), comment="why a rejected file could not be read, or why a file was ignored"),
    sa.Column("duplicate_of", sa.Text(), comment="partition/file already delivered with the same content"),
    sa.Column("rows_read", sa.BigInteger(), nullable=False),
    sa.Column("rows_loaded", sa.BigInteger(), nullable=False),
    sa.Column("rows_quarantined", sa.BigInteger(), nullable=False),
    sa.Column("rows_suppressed", sa.BigInteger(),
              comment="records of suppressed (erased) people, counted and not stored: rows_read = loaded + quarantined "
                      "+ suppressed"),
    sa.Column("text_values_cleaned", sa.BigInteger(),
              comment="text values normalised to NFC or stripped of invisible format characters on load"),
    sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("mapping_version", sa.Text(),
              comment="code version of the mapping the file was loaded with (a mapping edit makes the day outdated)"),
    schema="ops",
    comment="Ledger of every landing file seen: content hash, status and row counts.",
)
sa.Index("ix_landing_files_sha256", LANDING_FILES.c.source, LANDING_FILES.c.sha256)

LANDING_ALIASES = sa.Table(
    "landing_aliases", metadata,
    sa.Column("source", sa.Text(), nullable=False),
    sa.Column("partition", sa.Text(), nullable=False),
    sa.Column("file", sa.Text(), nullable=False),
    sa.Column("original_sha256", sa.Text(), nullable=False, comment="content hash before an erasure rewrote the file"),
    sa.Column("scrubbed_sha256", sa.Text(), nullable=False, comment="content hash after the rewrite"),
    sa.Column("scrubbed_at", sa.DateTime(timezone=True), nullable=False),
    schema="ops",
    comment="Landing files rewritten by an erasure: the original hash still marks a re-delivery as a duplicate.",
)
sa.Index("ix_landing_aliases_original", LANDING_ALIASES.c.source, LANDING_ALIASES.c.original_sha256)


def raw_table(source: str, entity: Entity, md: sa.MetaData | None = None) -> sa.Table:
    md = metadata if md is None else md
    key = f"raw.{source}"
    if key in md.tables:
        return md.tables[key]
    cols = [_column(f, nullable=not f.required) for f in RAW_LINEAGE_COLUMNS]
    # Entity fields stay nullable in raw: required-ness is enforced by the mapper and the
    # quarantine, and a later model change must not make old partitions unloadable.
    cols += [_column(f) for f in entity.fields]
    table = sa.Table(source, md, *cols, schema="raw", comment=f"{entity.name} records from source {source}")
    sa.Index(f"ix_{source}_partition", table.c._partition)
    return table


def ddl(tables: Iterable[sa.Table], dialect_name: str = "postgresql") -> str:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}[dialect_name]
    out: list[str] = []
    for t in tables:
        stmt = str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)).strip()
        out.append(stmt + ";")
        for idx in sorted(t.indexes, key=lambda i: i.name):
            out.append(str(CreateIndex(idx, if_not_exists=True).compile(dialect=dialect)).strip() + ";")
    return "\n\n".join(out) + "\n"


# ----------------------------------------------------------------------------- golden layer

def _t(name: str, schema: str, comment: str, *cols: sa.Column, indexes: tuple[tuple[str, ...], ...] = ()) -> sa.Table:
    table = sa.Table(name, metadata, *cols, schema=schema, comment=comment)
    for idx in indexes:
        sa.Index(f"ix_{name}_{'_'.join(idx)}", *(table.c[c] for c in idx))
    return table


def _text(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.Text()) for n in names]


_TS = sa.DateTime(timezone=True)

PERSON_RECORDS = _t(
    "person_records", "staging", "Cleaned person records from every person source: the input of contact matching.",
    sa.Column("record_key", sa.Text(), primary_key=True), sa.Column("source", sa.Text(), nullable=False),
    sa.Column("source_record_id", sa.Text(), nullable=False), sa.Column("record_ts", _TS),
    *_text("salutation", "academic_title", "first_name", "last_name", "email", "email_norm", "email_domain"),
    sa.Column("is_free_mail", sa.Boolean()),
    *_text("phone", "phone_e164", "mobile", "mobile_e164", "job_title", "company_name", "company_key", "legal_form",
           "org_key", "street", "house_number", "postal_code", "city", "country", "leitregion", "crm_contact_id",
           "crm_company_id", "erp_customer_number", "first_key", "last_key", "first_kp", "last_kp"),
)
ACCOUNT_RECORDS = _t(
    "account_records", "staging", "Cleaned account records: ERP customers, CRM companies and company mentions of persons.",
    sa.Column("record_key", sa.Text(), primary_key=True), sa.Column("source", sa.Text(), nullable=False),
    sa.Column("source_record_id", sa.Text(), nullable=False), sa.Column("record_ts", _TS),
    sa.Column("is_mention", sa.Boolean(), nullable=False),
    *_text("company_name", "company_base", "company_key", "company_first_token", "company_kp", "legal_form", "street",
           "house_number",
           "street_full_key", "postal_code", "city", "city_key", "country", "leitregion", "phone", "phone_e164",
           "email", "domain", "vat_id", "register_court", "register_number", "register_id", "industry"),
    sa.Column("employee_count", sa.BigInteger()),
    *_text("erp_customer_number", "crm_company_id"),
)

GOLDEN_CONTACTS = _t(
    "contacts", "golden", "Golden contacts: one row per person, fields chosen by survivorship rules.",
    sa.Column("golden_id", sa.Text(), primary_key=True),
    *_text("salutation", "academic_title", "first_name", "last_name", "email", "phone", "mobile", "job_title",
           "company_name", "street", "house_number", "postal_code", "city", "country", "crm_contact_id",
           "crm_company_id", "erp_customer_number", "account_id"),
    # The current consent per channel (the consent ledger's verdict): granted / withdrawn / objected, and its basis.
    *_text("email_consent", "email_consent_basis", "phone_consent", "phone_consent_basis", "post_consent",
           "post_consent_basis"),
    sa.Column("record_count", sa.BigInteger(), nullable=False), sa.Column("sources", sa.Text(), nullable=False),
    sa.Column("first_seen_at", _TS), sa.Column("last_seen_at", _TS), sa.Column("run_id", sa.Text(), nullable=False),
    indexes=(("email",), ("account_id",)),
)
GOLDEN_ACCOUNTS = _t(
    "accounts", "golden", "Golden accounts: one row per company, fields chosen by survivorship rules.",
    sa.Column("golden_id", sa.Text(), primary_key=True),
    *_text("company_name", "base_name", "legal_form", "street", "house_number", "postal_code", "city", "country",
           "phone", "domain", "vat_id", "register_court", "register_number", "industry"),
    sa.Column("employee_count", sa.BigInteger()),
    *_text("erp_customer_number", "crm_company_id"),
    sa.Column("record_count", sa.BigInteger(), nullable=False), sa.Column("sources", sa.Text(), nullable=False),
    sa.Column("run_id", sa.Text(), nullable=False),
)


def _lineage_table(name: str, what: str) -> sa.Table:
    # One row per contributing record (not per field): a million golden records times twenty
    # fields would be the largest table of the warehouse. Golden records made of a single
    # source record have no rows here: every field came from it (see the crosswalk).
    return _t(name, "golden", f"Field-level lineage of {what} with several records: which record supplied which fields.",
              sa.Column("golden_id", sa.Text(), nullable=False), sa.Column("record_key", sa.Text(), nullable=False),
              sa.Column("fields", sa.Text(), nullable=False, comment="comma-separated golden fields taken from this record"),
              sa.Column("rules", sa.Text(), nullable=False, comment="the survivorship rule per field, same order"),
              indexes=(("golden_id",),))


def _crosswalk_table(name: str, what: str) -> sa.Table:
    return _t(name, "golden", f"Every source record -> its {what} golden ID, with history (valid_to null = current).",
              sa.Column("record_key", sa.Text(), nullable=False), sa.Column("source", sa.Text(), nullable=False),
              sa.Column("source_record_id", sa.Text(), nullable=False), sa.Column("golden_id", sa.Text(), nullable=False),
              sa.Column("valid_from", _TS, nullable=False), sa.Column("valid_to", _TS),
              sa.Column("run_id", sa.Text(), nullable=False),
              indexes=(("record_key",), ("golden_id",)))


CONTACT_LINEAGE = _lineage_table("contact_lineage", "golden contacts")
ACCOUNT_LINEAGE = _lineage_table("account_lineage", "golden accounts")
PERSON_CROSSWALK = _crosswalk_table("person_crosswalk", "contact")
ACCOUNT_CROSSWALK = _crosswalk_table("account_crosswalk", "account")
CROSSWALK = _t(
    "crosswalk", "golden", "Current golden IDs of every source record: the contact and the account it belongs to.",
    sa.Column("record_key", sa.Text(), primary_key=True), sa.Column("source", sa.Text(), nullable=False),
    sa.Column("source_record_id", sa.Text(), nullable=False), sa.Column("contact_id", sa.Text()),
    sa.Column("account_id", sa.Text()),
)

ID_REGISTRY = _t(
    "id_registry", "golden", "Every golden ID ever issued: status active or merged (into another ID).",
    sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("entity", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False), sa.Column("merged_into", sa.Text()),
    sa.Column("created_at", _TS, nullable=False), sa.Column("updated_at", _TS, nullable=False),
    sa.Column("created_run", sa.Text(), nullable=False),
)
ID_EVENTS = _t(
    "id_events", "golden", "Append-only log of golden-ID events: created, merged, split.",
    sa.Column("at", _TS, nullable=False), sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("entity", sa.Text(), nullable=False), sa.Column("event", sa.Text(), nullable=False),
    sa.Column("golden_id", sa.Text(), nullable=False), sa.Column("into", sa.Text()),
)
MATCH_EDGES = _t(
    "match_edges", "golden", "The pairs that merged records into each golden ID, with their field-level evidence.",
    sa.Column("entity", sa.Text(), nullable=False), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("record_a", sa.Text(), nullable=False), sa.Column("record_b", sa.Text(), nullable=False),
    sa.Column("probability", sa.Float(), nullable=False), sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("evidence", sa.Text(), nullable=False, comment="JSON: comparison -> [level, weight]"),
    sa.Column("run_id", sa.Text(), nullable=False),
    indexes=(("entity", "golden_id"),),
)
REVIEW_CANDIDATES = _t(
    "review_candidates", "staging", "Pairs in the review band (or refused merges) of the last matching run, per entity.",
    sa.Column("entity", sa.Text(), nullable=False), sa.Column("record_a", sa.Text(), nullable=False),
    sa.Column("record_b", sa.Text(), nullable=False), sa.Column("probability", sa.Float(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False), sa.Column("evidence", sa.Text(), nullable=False),
    sa.Column("run_id", sa.Text(), nullable=False),
)
REVIEW_QUEUE = _t(
    "review_queue", "golden", "Pairs a data steward should decide (same / different), with per-field scores.",
    sa.Column("entity", sa.Text(), nullable=False), sa.Column("record_a", sa.Text(), nullable=False),
    sa.Column("record_b", sa.Text(), nullable=False), sa.Column("golden_a", sa.Text()), sa.Column("golden_b", sa.Text()),
    sa.Column("probability", sa.Float(), nullable=False), sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("evidence", sa.Text(), nullable=False), sa.Column("run_id", sa.Text(), nullable=False),
)
STEWARD_DECISIONS = _t(
    "steward_decisions", "golden", "Decisions of data stewards, honoured on every run as must-link / cannot-link.",
    sa.Column("entity", sa.Text(), nullable=False, comment="persons | accounts"),
    sa.Column("record_a", sa.Text(), nullable=False), sa.Column("record_b", sa.Text(), nullable=False),
    sa.Column("decision", sa.Text(), nullable=False, comment="same | different"),
    sa.Column("decided_by", sa.Text(), nullable=False), sa.Column("decided_at", _TS, nullable=False),
    sa.Column("note", sa.Text()),
)
MATCH_RUNS = _t(
    "match_runs", "ops", "One row per matching run and entity: sizes and rates, for trends and the jump check.",
    sa.Column("run_id", sa.Text(), nullable=False), sa.Column("entity", sa.Text(), nullable=False),
    sa.Column("run_at", _TS, nullable=False), sa.Column("records", sa.BigInteger(), nullable=False),
    sa.Column("clusters", sa.BigInteger(), nullable=False), sa.Column("match_rate", sa.Float(), nullable=False),
    sa.Column("candidate_pairs", sa.BigInteger(), nullable=False), sa.Column("possible_pairs", sa.BigInteger(), nullable=False),
    sa.Column("review_pairs", sa.BigInteger(), nullable=False), sa.Column("seconds", sa.Float(), nullable=False),
    sa.Column("accepted", sa.Boolean(), nullable=False,
              comment="within the allowed change of the last accepted run, or accepted by hand"),
)
REGISTER_CACHE = _t(
    "register_cache", "ops", "Answers of the company register (Handelsregister data), by name and city searched.",
    sa.Column("company_key", sa.Text(), nullable=False), sa.Column("city_key", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False, comment="found | not_found"),
    *_text("register_court", "register_number", "legal_form", "name", "street", "postal_code", "city"),
    sa.Column("fetched_at", _TS, nullable=False),
    indexes=(("company_key", "city_key"),),
)

GOLDEN_TABLES = (PERSON_RECORDS, ACCOUNT_RECORDS, GOLDEN_CONTACTS, GOLDEN_ACCOUNTS, CONTACT_LINEAGE, ACCOUNT_LINEAGE,
                 PERSON_CROSSWALK, ACCOUNT_CROSSWALK, ID_REGISTRY, ID_EVENTS, MATCH_EDGES, REVIEW_CANDIDATES,
                 REVIEW_QUEUE, STEWARD_DECISIONS, MATCH_RUNS, REGISTER_CACHE)


# ---------------------------------------------------------------------------- CRM sync (ops)

CRM_SYNC_STATE = _t(
    "crm_sync_state", "ops", "Per golden record and CRM object type: what was last sent, its CRM ID and outcome.",
    sa.Column("object_type", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("crm_id", sa.Text()), sa.Column("payload_hash", sa.Text()),
    sa.Column("last_status", sa.Text(), nullable=False), sa.Column("last_message", sa.Text()),
    sa.Column("last_synced_at", _TS, nullable=False), sa.Column("last_run_id", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False), sa.Column("associated_crm_id", sa.Text()),
)
CRM_SYNC_LOG = _t(
    "crm_sync_log", "ops", "Append-only row log of every CRM write: run, record, operation, status, message.",
    sa.Column("at", _TS, nullable=False), sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("object_type", sa.Text(), nullable=False), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("crm_id", sa.Text()), sa.Column("operation", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False), sa.Column("message", sa.Text()),
    indexes=(("run_id",), ("golden_id",)),
)
CRM_SYNC_RUNS = _t(
    "crm_sync_runs", "ops", "One row per push and object type: mode, dry run, counts (JSON), outcome.",
    sa.Column("run_id", sa.Text(), nullable=False), sa.Column("object_type", sa.Text(), nullable=False),
    sa.Column("mode", sa.Text(), nullable=False), sa.Column("dry_run", sa.Boolean(), nullable=False),
    sa.Column("started_at", _TS, nullable=False), sa.Column("finished_at", _TS),
    sa.Column("status", sa.Text(), nullable=False), sa.Column("counts", sa.Text()),
)
CRM_REMOTE = _t(
    "crm_remote", "ops",
    "What the CRM holds per object, as the last pull saw it: the fields our policies read (stage, CRM-owned and "
    "fill-when-empty fields), deleted (archived) objects and merged-away IDs with their survivor.",
    sa.Column("object_type", sa.Text(), primary_key=True), sa.Column("crm_id", sa.Text(), primary_key=True),
    sa.Column("golden_id", sa.Text(), comment="the ID property's value in the CRM, if set"),
    sa.Column("properties", sa.Text(), comment="JSON: property -> value, the fields the push policies read"),
    sa.Column("modified_at", _TS), sa.Column("archived", sa.Boolean(), nullable=False),
    sa.Column("merged_into", sa.Text(), comment="the surviving CRM ID when this one was merged away"),
    sa.Column("seen_at", _TS, nullable=False), sa.Column("run_id", sa.Text()),
    indexes=(("object_type", "golden_id"),),
)
CRM_PULL_STATE = _t(
    "crm_pull_state", "ops", "Per CRM object type: up to which modification time the incremental pull has read.",
    sa.Column("object_type", sa.Text(), primary_key=True), sa.Column("watermark_ms", sa.BigInteger()),
    sa.Column("pulled_at", _TS, nullable=False), sa.Column("run_id", sa.Text()),
)
CRM_DEALS = _t(
    "crm_deals", "staging", "Deals as the CRM holds them (pulled incrementally): current stage with its probability, "
                            "amount, currency, close date, owner.",
    sa.Column("deal_id", sa.Text(), primary_key=True), sa.Column("deal_name", sa.Text()),
    sa.Column("pipeline", sa.Text()), sa.Column("stage", sa.Text()), sa.Column("stage_label", sa.Text()),
    sa.Column("probability", sa.Float()), sa.Column("is_closed", sa.Boolean()), sa.Column("is_won", sa.Boolean()),
    sa.Column("amount", sa.Float()), sa.Column("currency", sa.Text()), sa.Column("close_date", _TS),
    sa.Column("created_at", _TS), sa.Column("modified_at", _TS), sa.Column("owner_id", sa.Text()),
    sa.Column("erp_order_number", sa.Text(), comment="the ERP order the rep linked to the deal (Auftragsnummer)"),
    sa.Column("pulled_at", _TS, nullable=False), sa.Column("run_id", sa.Text()),
)
CRM_DEAL_STAGES = _t(
    "crm_deal_stages", "staging", "Every stage a deal entered and when (the CRM's dealstage history): time in stage.",
    sa.Column("deal_id", sa.Text(), primary_key=True), sa.Column("stage", sa.Text(), primary_key=True),
    sa.Column("entered_at", _TS, primary_key=True), sa.Column("source_type", sa.Text()),
)
CRM_DEAL_LINKS = _t(
    "crm_deal_links", "staging", "The CRM contacts and companies a deal is associated with.",
    sa.Column("deal_id", sa.Text(), primary_key=True), sa.Column("object_type", sa.Text(), primary_key=True,
                                                                   comment="contacts | companies"),
    sa.Column("object_id", sa.Text(), primary_key=True, comment="the CRM's ID of the contact or company"),
    indexes=(("object_id",),),
)

# ---------------------------------------------------------------------------- reporting (docs/reporting.md)

TOUCHPOINTS = _t(
    "touchpoints", "marts", "Every touch of a known contact on every channel (web, forms, fairs, newsletters, e-mail, "
                            "print, service, sales): the input of attribution.",
    sa.Column("touch_key", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("channel", sa.Text(), nullable=False), sa.Column("campaign", sa.Text()), sa.Column("source", sa.Text()),
    sa.Column("detail", sa.Text(), comment="an event's type (page_view, pricing_page ...)"),
    sa.Column("at", _TS, nullable=False),
    indexes=(("golden_id",),),
)
REVENUE_LINES = _t(
    "revenue_lines", "marts", "Revenue: ERP order lines (not cancelled) and won deals without an order, in the "
                              "reporting currency, linked to deals by the documented rule.",
    sa.Column("revenue_key", sa.Text(), primary_key=True), sa.Column("kind", sa.Text(), nullable=False,
                                                                     comment="order | deal"),
    *_text("order_id", "erp_customer_number", "account_id", "contact_id", "deal_id"),
    sa.Column("link", sa.Text(), nullable=False, comment="crm | account_time | account | deal_amount"),
    sa.Column("booked_at", _TS), sa.Column("amount", sa.Float()), sa.Column("currency", sa.Text()),
    sa.Column("net", sa.Float(), comment="in the reporting currency (NaN: no exchange rate)"),
    indexes=(("contact_id",), ("account_id",)),
)
FUNNEL = _t(
    "funnel", "marts", "The funnel per dimension value: contacts reaching each stage, conversion rates, median days.",
    sa.Column("dimension", sa.Text(), primary_key=True), sa.Column("value", sa.Text(), primary_key=True),
    *[sa.Column(c, sa.BigInteger(), nullable=False) for c in ("lead", "mql", "sql", "opportunity", "closed_won",
                                                              "closed_lost")],
    *[sa.Column(c, sa.Float()) for c in ("mql_rate", "sql_rate", "opportunity_rate", "won_rate", "win_rate",
                                         "days_to_mql", "days_to_sql", "days_to_opportunity", "days_to_close",
                                         "median_response_minutes")],
)
LEAD_RESPONSE = _t(
    "lead_response", "marts", "Lead response time per hand-off (minutes from landing to the first CRM activity), with "
                              "the dimensions of its contact.",
    sa.Column("handoff_key", sa.Text(), primary_key=True, comment="a hash of the hand-off (no golden ID)"),
    sa.Column("kind", sa.Text()), sa.Column("minutes", sa.Float()),
    *_text("handoff_month", "source", "campaign", "territory"),
)
DEAL_STAGE_TIMES = _t(
    "deal_stage_times", "marts", "Time in each deal stage from the stage history.",
    sa.Column("stage", sa.Text(), primary_key=True), sa.Column("entered", sa.BigInteger()),
    sa.Column("left", sa.BigInteger()), sa.Column("median_days", sa.Float()), sa.Column("p90_days", sa.Float()),
)
ATTRIBUTION = _t(
    "attribution", "marts", "Revenue credited per model to each channel and campaign.",
    sa.Column("model", sa.Text(), primary_key=True), sa.Column("channel", sa.Text(), primary_key=True),
    sa.Column("campaign", sa.Text(), primary_key=True), sa.Column("revenue", sa.Float(), nullable=False),
)
CAMPAIGN_ECONOMICS = _t(
    "campaign_economics", "marts", "Revenue, customers, cost, CAC and ROMI per campaign, channel and segment.",
    sa.Column("level", sa.Text(), primary_key=True, comment="campaign | channel | segment"),
    sa.Column("name", sa.Text(), primary_key=True), sa.Column("revenue", sa.Float()),
    sa.Column("customers", sa.Float()), sa.Column("cost", sa.Float()), sa.Column("cac", sa.Float()),
    sa.Column("romi", sa.Float()),
)
PRINT_RESPONSE = _t(
    "print_response", "marts", "Rücklaufquote per released print list against its holdout.",
    sa.Column("list_id", sa.Text(), primary_key=True), sa.Column("campaign", sa.Text(), nullable=False),
    sa.Column("dropped_at", _TS), *[sa.Column(c, sa.BigInteger()) for c in ("mailed", "mailed_responded", "holdout",
                                                                              "holdout_responded")],
    *[sa.Column(c, sa.Float()) for c in ("response_rate", "holdout_rate", "uplift")],
)
REPORTING_TABLES = (TOUCHPOINTS, REVENUE_LINES, FUNNEL, LEAD_RESPONSE, DEAL_STAGE_TIMES, ATTRIBUTION,
                    CAMPAIGN_ECONOMICS, PRINT_RESPONSE)
SUPPRESSION = _t(
    "suppression_list", "ops",
    "Identities that must never come back (erasure) or be contacted (objection): salted SHA-256 of the normalised "
    "e-mail, postal identity or CRM contact ID, never plain text. Lifted only by an audited re-permission.",
    sa.Column("kind", sa.Text(), primary_key=True, comment="email | postal | crm_contact"),
    sa.Column("identity_hash", sa.Text(), primary_key=True, comment="sha256(salt + kind + ':' + normalised value)"),
    sa.Column("subject", sa.Text(), nullable=False, comment="pseudonym of the person the entry belongs to"),
    sa.Column("reason", sa.Text(), nullable=False), sa.Column("request_id", sa.Text()),
    sa.Column("added_at", _TS, nullable=False),
    sa.Column("lifted_at", _TS, comment="set by a re-permission; the entry stays for the record"),
    sa.Column("lifted_by", sa.Text(), comment="the re-permission event (source and record) or the person who lifted it"),
)
AUDIT_LOG = _t(
    "audit_log", "ops",
    "Append-only audit trail of every change and privacy request; each row hash-chained to the one before.",
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", _TS, nullable=False), sa.Column("run_id", sa.Text()),
    sa.Column("actor", sa.Text(), nullable=False, comment="system or person that acted"),
    sa.Column("action", sa.Text(), nullable=False), sa.Column("subject", sa.Text(), comment="pseudonym, never a name"),
    sa.Column("details", sa.Text(), comment="JSON without personal data"),
    sa.Column("prev_hash", sa.Text(), nullable=False), sa.Column("row_hash", sa.Text(), nullable=False),
    indexes=(("subject",),),
)
PRIVACY_REQUESTS = _t(
    "privacy_requests", "ops", "Erasure, export and re-permission requests: who (pseudonym), from where, when, outcome.",
    sa.Column("request_id", sa.Text(), primary_key=True), sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("subject", sa.Text(), nullable=False), sa.Column("source", sa.Text(), nullable=False),
    sa.Column("received_at", _TS, nullable=False), sa.Column("completed_at", _TS),
    sa.Column("status", sa.Text(), nullable=False), sa.Column("details", sa.Text()),
)
ERASURE_OUTBOX = _t(
    "erasure_outbox", "ops",
    "Erasures a connected system has not confirmed yet (it was down): the identifier it needs, kept only until it "
    "confirms, then deleted. The one place an erased address may wait in clear text, for the shortest time.",
    sa.Column("request_id", sa.Text(), primary_key=True), sa.Column("target", sa.Text(), primary_key=True),
    sa.Column("kind", sa.Text(), primary_key=True, comment="email | crm_contact_id"),
    sa.Column("identifier", sa.Text(), primary_key=True), sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("added_at", _TS, nullable=False), sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.Text()),
)
CONSENT_EVENTS = _t(
    "consent_events", "staging",
    "The consent ledger: every opt-in, opt-out, unsubscribe and objection per channel, linked to a person record.",
    sa.Column("event_key", sa.Text(), primary_key=True), sa.Column("source", sa.Text(), nullable=False),
    sa.Column("person_record_key", sa.Text(), comment="the person record it was linked to, by CRM ID or e-mail"),
    sa.Column("email_hash", sa.Text(), comment="salted hash of the normalised e-mail: links without holding it"),
    sa.Column("channel", sa.Text(), nullable=False), sa.Column("status", sa.Text(), nullable=False),
    sa.Column("legal_basis", sa.Text()), sa.Column("purpose", sa.Text()),
    sa.Column("occurred_at", _TS, nullable=False), sa.Column("double_opt_in_at", _TS), sa.Column("opt_in_source", sa.Text()),
    indexes=(("person_record_key",), ("email_hash",)),
)
RETIRED_CONTACTS = _t(
    "retired_contacts", "golden",
    "Contacts anonymised by the retention job: no personal data, kept for statistics (region, company, dates).",
    sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("leitregion", sa.Text()),
    sa.Column("country", sa.Text()), sa.Column("account_id", sa.Text()), sa.Column("sources", sa.Text()),
    sa.Column("record_count", sa.BigInteger()), sa.Column("first_seen_at", _TS), sa.Column("last_seen_at", _TS),
    sa.Column("anonymised_at", _TS, nullable=False), sa.Column("reason", sa.Text(), nullable=False),
)
CRM_PAYLOADS = {
    name: _t(f"crm_{name}_payload", "marts", f"The {name} as they would be sent to the CRM: CRM property names, strings.",
             sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("crm_id", sa.Text()),
             *([sa.Column("account_id", sa.Text())] if name == "contacts" else []),
             *_text(*props))
    for name, props in (
        ("companies", ("name", "domain", "phone", "address", "zip", "city", "country", "industry", "numberofemployees",
                       "legal_form", "register_court", "register_number", "vat_id", "erp_customer_number")),
        ("contacts", ("email", "salutation", "academic_title", "firstname", "lastname", "phone", "mobilephone", "jobtitle",
                      "company", "address", "zip", "city", "country", "lifecyclestage", "crm_account_golden_id",
                      "crm_email_consent", "crm_phone_consent", "crm_post_consent")),
    )
}


# ---------------------------------------------------------------------------- scoring and hand-off

LEAD_SCORES = _t(
    "lead_scores", "marts", "Current lead score per golden contact: stage, the strongest reasons, when each stage was reached.",
    sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("score", sa.Float(), nullable=False),
    sa.Column("stage", sa.Text(), nullable=False, comment="lead | mql | sql"),
    sa.Column("explanation", sa.Text(), nullable=False, comment='JSON: [[rule, points, events], ...], strongest first'),
    sa.Column("mql_at", _TS), sa.Column("sql_at", _TS),
    sa.Column("sql_since", _TS, comment="when the contact last entered SQL; a new crossing, a new value"),
    sa.Column("scored_at", _TS, nullable=False), sa.Column("run_id", sa.Text(), nullable=False),
    indexes=(("stage",),),
)
LEAD_SCORE_HISTORY = _t(
    "lead_score_history", "marts", "Daily snapshot of every contact's score and stage, for trends.",
    sa.Column("day", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("score", sa.Float(), nullable=False), sa.Column("stage", sa.Text(), nullable=False),
    indexes=(("golden_id",),),
)
ALERT_LEDGER = _t(
    "alert_ledger", "ops",
    "One row per hand-off (an SQL crossing or a new trade-fair lead / service request): exactly one alert, even "
    "when sensors re-evaluate or runs retry. Owner, CRM task, channels notified, SLA.",
    sa.Column("alert_key", sa.Text(), primary_key=True, comment="sql:<golden id>:<sql_since> | lead:<record key>"),
    sa.Column("kind", sa.Text(), nullable=False, comment="sql_crossing | trade_fair_lead | service_request"),
    sa.Column("golden_id", sa.Text()), sa.Column("record_key", sa.Text()),
    sa.Column("team", sa.Text()), sa.Column("owner_id", sa.Text()),
    sa.Column("score", sa.Float()), sa.Column("landed_at", _TS, comment="when the lead landed (response time starts)"),
    sa.Column("created_at", _TS, nullable=False), sa.Column("due_at", _TS),
    sa.Column("task_crm_id", sa.Text()), sa.Column("notified", sa.Text(), comment="JSON: channel -> status"),
    sa.Column("status", sa.Text(), nullable=False, comment="open | notified | failed | suppressed | done"),
    sa.Column("first_activity_at", _TS, comment="first CRM activity (the task done): response time ends"),
    sa.Column("escalated_at", _TS),
    sa.Column("sla_checked_at", _TS, comment="last time the SLA check read its CRM task (checks start near the due time)"),
    sa.Column("run_id", sa.Text()),
    indexes=(("golden_id",), ("status",), ("due_at",)),
)
PRINT_QUEUE = _t(
    "print_queue", "ops", "Single-recipient print jobs queued by the hand-off and the print journeys (hot lead: a "
                          "printed brochure).",
    sa.Column("alert_key", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("campaign", sa.Text(), nullable=False), sa.Column("queued_at", _TS, nullable=False),
    sa.Column("status", sa.Text(), nullable=False,
              comment="queued | listed (on a list not yet released) | printed (its list released) | dropped"),
    sa.Column("list_id", sa.Text(), comment="the list it is on while listed; a superseded list's entries are listed again"),
    sa.Column("reason", sa.Text(), comment="why a job was dropped (the print list's exclusion reason) or merged"),
    sa.Column("printed_at", _TS, comment="when its list went to the print shop's outbox"),
    indexes=(("status",),),
)
PRINT_TEMPLATE_APPROVALS = _t(
    "print_template_approvals", "ops",
    "Standing approvals of a single-recipient campaign's template: the rules file (by its SHA-256) and the template "
    "proof a person saw; jobs built under exactly these rules are released without a look at each one.",
    sa.Column("campaign", sa.Text(), primary_key=True), sa.Column("rules_sha256", sa.Text(), primary_key=True),
    sa.Column("proof_sha256", sa.Text()), sa.Column("approved_by", sa.Text(), nullable=False),
    sa.Column("approved_at", _TS, nullable=False),
)
REACTIVATION_SEGMENT = _t(
    "reactivation_segment", "marts",
    "Customers to win back (weekly): no order for 12 months and no visit; postal contact allowed, address complete.",
    sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("account_id", sa.Text()),
    sa.Column("last_order_date", sa.Date()), sa.Column("last_activity_at", _TS),
    sa.Column("segment_date", sa.Text(), nullable=False),
)
PRINT_LISTS = _t(
    "print_lists", "ops", "Every print list built: files, checksum, approval and release (the release needs an approval).",
    sa.Column("list_id", sa.Text(), primary_key=True), sa.Column("campaign", sa.Text(), nullable=False),
    sa.Column("run_id", sa.Text(), nullable=False), sa.Column("created_at", _TS, nullable=False),
    sa.Column("folder", sa.Text(), nullable=False), sa.Column("csv_sha256", sa.Text(), nullable=False),
    sa.Column("rules_sha256", sa.Text(), nullable=False), sa.Column("recipients", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False, comment="built | approved | released | expired | superseded"),
    sa.Column("approved_by", sa.Text()), sa.Column("approved_at", _TS),
    sa.Column("approved_csv_sha256", sa.Text(), comment="the checksum the approval quoted: the list the approver saw"),
    sa.Column("proof_sha256", sa.Text(), comment="the proof PDF the list was approved on"),
    sa.Column("prospects", sa.BigInteger(), comment="listed recipients without a customer relationship"),
    sa.Column("robinson_checked", sa.Boolean(), comment="checked against a Robinson list when built"),
    sa.Column("released_at", _TS), sa.Column("released_file", sa.Text()),
)
PRINT_RECIPIENTS = _t(
    "print_recipients", "ops", "Which golden contact each pseudonymous recipient ID of a list stands for (never in the CSV).",
    sa.Column("list_id", sa.Text(), primary_key=True), sa.Column("recipient_id", sa.Text(), primary_key=True),
    sa.Column("golden_id", sa.Text(), nullable=False), sa.Column("variant", sa.Text(), nullable=False),
    indexes=(("golden_id",),),
)

PRINT_HOLDOUTS = _t(
    "print_holdouts", "ops", "Eligible recipients of a print list kept out on purpose (the campaign's holdout): the "
                             "baseline of the Rücklaufquote.",
    sa.Column("list_id", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("campaign", sa.Text(), nullable=False),
    indexes=(("golden_id",),),
)


# ---------------------------------------------------------------------------- activation

SEGMENT_MEMBERS = _t(
    "segment_members", "marts", "Who is in each segment now (config/segments), since when and why.",
    sa.Column("segment", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("since", _TS, nullable=False), sa.Column("reason", sa.Text(), nullable=False),
    indexes=(("golden_id",),),
)
SEGMENT_HISTORY = _t(
    "segment_history", "ops", "Every entry into and exit from a segment: who, when, why, by which run.",
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("segment", sa.Text(), nullable=False), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("change", sa.Text(), nullable=False, comment="entered | left"), sa.Column("at", _TS, nullable=False),
    sa.Column("reason", sa.Text(), nullable=False), sa.Column("run_id", sa.Text()),
    indexes=(("segment", "at"), ("golden_id",)),
)
ACTIVATION_STATE = _t(
    "activation_state", "ops", "Watermarks of the activation: what the incremental segment update and the tool pull have seen.",
    sa.Column("key", sa.Text(), primary_key=True), sa.Column("value", sa.Text(), nullable=False),
)
ACTIVATION_LISTS = _t(
    "activation_lists", "ops", "Lists the project created (and so owns) in each destination: the only ones it ever removes from.",
    sa.Column("destination", sa.Text(), primary_key=True), sa.Column("list_name", sa.Text(), primary_key=True),
    sa.Column("remote_id", sa.Text(), nullable=False), sa.Column("created_at", _TS, nullable=False),
)
ACTIVATION_MEMBERS = _t(
    "activation_members", "ops",
    "Memberships the project added to a destination's list: the only memberships it may remove. No address, its hash.",
    sa.Column("destination", sa.Text(), primary_key=True), sa.Column("list_name", sa.Text(), primary_key=True),
    sa.Column("golden_id", sa.Text(), primary_key=True), sa.Column("email_hash", sa.Text(), nullable=False),
    sa.Column("added_at", _TS, nullable=False),
    indexes=(("golden_id",),),
)
ACTIVATION_CONTACTS = _t(
    "activation_contacts", "ops", "Contacts upserted into a destination: the attributes' hash last sent (unchanged: not sent again).",
    sa.Column("destination", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("email_hash", sa.Text(), nullable=False), sa.Column("attributes_sha", sa.Text(), nullable=False),
    sa.Column("synced_at", _TS, nullable=False),
)
ACTIVATION_BLOCKED = _t(
    "activation_blocked", "ops",
    "Addresses a destination reports unsubscribed, complained, hard-bounced or blocklisted: never (re-)subscribed by us.",
    sa.Column("destination", sa.Text(), primary_key=True), sa.Column("email_hash", sa.Text(), primary_key=True),
    sa.Column("reason", sa.Text(), nullable=False), sa.Column("reported_at", _TS, nullable=False),
)
JOURNEY_ENROLLMENTS = _t(
    "journey_enrollments", "ops",
    "Each contact's state in each journey (config/journeys): enrolled, holdout (never enrolled), capped, exited.",
    sa.Column("journey", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), primary_key=True),
    sa.Column("status", sa.Text(), nullable=False, comment="enrolled | holdout | capped | exited"),
    sa.Column("arm", sa.Text(), nullable=False, comment="treatment | holdout: kept when the contact exits"),
    sa.Column("entries", sa.Integer(), nullable=False), sa.Column("entered_at", _TS, nullable=False),
    sa.Column("exited_at", _TS), sa.Column("exit_reason", sa.Text()), sa.Column("updated_at", _TS, nullable=False),
    indexes=(("golden_id",), ("journey", "status")),
)
CONTACT_TOUCHES = _t(
    "contact_touches", "ops",
    "Every marketing or sales touch of a contact on any channel (journey e-mails, print mailings, sales hand-offs): "
    "what the weekly frequency cap counts.",
    sa.Column("touch_key", sa.Text(), primary_key=True), sa.Column("golden_id", sa.Text(), nullable=False),
    sa.Column("channel", sa.Text(), nullable=False, comment="email | print | sales"),
    sa.Column("source", sa.Text(), nullable=False, comment="journey, print list or hand-off"),
    sa.Column("at", _TS, nullable=False),
    indexes=(("golden_id", "at"),),
)
ACTIVATION_AUDIENCE = _t(
    "activation_audience", "marts",
    "The planned activation: who goes onto which of our lists in the marketing tool after the gate (consent, "
    "suppression, the tool's blocklist). The blocking checks read it before anything is sent.",
    sa.Column("destination", sa.Text(), primary_key=True), sa.Column("list_name", sa.Text(), primary_key=True),
    sa.Column("golden_id", sa.Text(), primary_key=True),
)
ACTIVATION_TABLES = (ACTIVATION_AUDIENCE, SEGMENT_MEMBERS, SEGMENT_HISTORY, ACTIVATION_STATE, ACTIVATION_LISTS, ACTIVATION_MEMBERS,
                     ACTIVATION_CONTACTS, ACTIVATION_BLOCKED, JOURNEY_ENROLLMENTS, CONTACT_TOUCHES)
