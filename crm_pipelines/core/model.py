"""The canonical schema: the single definition every mapping is validated against.

Each raw source maps onto exactly one entity. The warehouse tables, the generated
DDL in ``sql/`` and ``docs/data-model.md`` are all derived from this module, so a
field exists in exactly one place. ``pii`` says how a value is masked wherever it
is shown outside the warehouse (logs, Dagster metadata, previews).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FieldType = Literal["string", "integer", "decimal", "date", "datetime", "boolean"]
PiiKind = Literal["email", "phone", "name", "address", "free_text", "date"]

FIELD_TYPES: tuple[str, ...] = ("string", "integer", "decimal", "date", "datetime", "boolean")


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    meaning: str
    example: str
    required: bool = False
    allowed: tuple[str, ...] | None = None
    pii: PiiKind | None = None


@dataclass(frozen=True)
class Entity:
    name: str
    meaning: str
    fields: tuple[Field, ...]
    # Groups of fields of which at least one must be present per record
    # (an erasure request without e-mail and without CRM id cannot be executed).
    require_any: tuple[tuple[str, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        assert len(names) == len(set(names)), f"duplicate field in entity {self.name}"
        for group in self.require_any:
            assert set(group) <= set(names), group

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)


def _f(name, type_, meaning, example, **kw) -> Field:
    return Field(name=name, type=type_, meaning=meaning, example=example, **kw)


SALUTATIONS = ("Herr", "Frau", "divers")
COUNTRY_MEANING = "ISO 3166-1 alpha-2 country code"

_RECORD_ID = _f("source_record_id", "string", "the record's own ID in its source system; stable across deliveries",
                "WF-20261103-000417", required=True)

_ADDRESS = (
    _f("street", "string", "street name, with the house number when the source does not split it",
       "Hauptstraße 12", pii="address"),
    _f("house_number", "string", "house number with suffix, when the source delivers it separately", "12a",
       pii="address"),
    _f("postal_code", "string", "postcode as a string (German PLZ: 5 characters, leading zeros kept)", "01067"),
    _f("city", "string", "town or city", "Dresden"),
    _f("country", "string", COUNTRY_MEANING, "DE"),
)

CONTACT = Entity(
    name="contact",
    meaning="A person as one source knows them: lead, CRM contact, ERP contact person.",
    fields=(
        _RECORD_ID,
        _f("salutation", "string", "Anrede", "Frau", allowed=SALUTATIONS),
        _f("academic_title", "string", "academic title as written", "Dr.", pii="name"),
        _f("first_name", "string", "given name", "Jörg", pii="name"),
        _f("last_name", "string", "family name including particles", "von Müller", pii="name"),
        _f("email", "string", "e-mail address as delivered", "j.mueller@musterfirma.de", pii="email"),
        _f("phone", "string", "landline number as delivered", "089 1234-567", pii="phone"),
        _f("mobile", "string", "mobile number as delivered", "+49 171 2345678", pii="phone"),
        _f("job_title", "string", "position / job title", "Leiter Einkauf"),
        _f("company_name", "string", "employer as stated by the source, legal form included",
           "Musterfirma GmbH & Co. KG"),
        *_ADDRESS,
        _f("date_of_birth", "date", "date of birth (rare in B2B; used by the generic dedupe command)",
           "1975-04-01", pii="date"),
        _f("crm_contact_id", "string", "contact ID in the CRM", "51234"),
        _f("crm_company_id", "string", "ID of the CRM company the contact is associated with", "9012345"),
        _f("erp_customer_number", "string", "Kundennummer of the employer in the ERP", "0000104711"),
        _f("campaign", "string", "form, trade fair or campaign that produced the record", "Hannover Messe 2026"),
        _f("interest", "string", "product interest as captured", "Hydraulikpressen"),
        _f("notes", "string", "free-text note", "Rückruf erwünscht", pii="free_text"),
        _f("marketing_opt_in", "boolean", "the person ticked a marketing opt-in at capture time", "true"),
        _f("lifecycle_stage", "string", "CRM lifecycle stage", "lead",
           allowed=("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity",
                    "customer", "evangelist", "other")),
        _f("created_at", "datetime", "when the source created the record (UTC)", "2026-11-03T09:14:00Z",
           required=True),
        _f("updated_at", "datetime", "when the source last changed the record (UTC)", "2026-11-04T16:02:11Z"),
    ),
)

ACCOUNT = Entity(
    name="account",
    meaning="A company (legal entity or site) as one source knows it: ERP customer, CRM company.",
    fields=(
        _RECORD_ID,
        _f("company_name", "string", "company name as delivered, legal form included", "Musterfirma GmbH",
           required=True),
        _f("name_addition", "string", "second name line (Name 2), e.g. department or site", "Werk Süd"),
        *_ADDRESS,
        _f("phone", "string", "switchboard number", "+49 351 4711-0", pii="phone"),
        _f("email", "string", "general e-mail address", "info@musterfirma.de", pii="email"),
        _f("website", "string", "web address or domain", "musterfirma.de"),
        _f("vat_id", "string", "USt-IdNr. (VAT identification number)", "DE123456789"),
        _f("register_court", "string", "Registergericht of the Handelsregister entry", "Amtsgericht Dresden"),
        _f("register_number", "string", "Handelsregister number with its section", "HRB 12345"),
        _f("industry", "string", "industry / Branche", "Maschinenbau"),
        _f("employee_count", "integer", "number of employees", "250"),
        _f("annual_revenue", "decimal", "annual revenue in EUR", "48000000.00"),
        _f("erp_customer_number", "string", "Kundennummer in the ERP", "0000104711"),
        _f("crm_company_id", "string", "company ID in the CRM", "9012345"),
        _f("contact_person", "string", "Ansprechpartner as free text", "Herr Dr. Weber", pii="name"),
        _f("customer_since", "date", "date the ERP customer was created", "2004-03-15"),
        _f("is_blocked", "boolean", "Sperrkennzeichen: the ERP blocks orders for this customer", "false"),
        _f("created_at", "datetime", "when the source created the record (UTC)", "2026-11-03T09:14:00Z"),
        _f("updated_at", "datetime", "when the source last changed the record (UTC)", "2026-11-04T16:02:11Z"),
    ),
)

CONSENT_EVENT = Entity(
    name="consent_event",
    meaning="A consent given, withdrawn or objected to, for one person and one channel.",
    fields=(
        _RECORD_ID,
        _f("channel", "string", "communication channel the consent is about", "email", required=True,
           allowed=("email", "phone", "post")),
        _f("status", "string", "what happened", "granted", required=True,
           allowed=("granted", "withdrawn", "objected")),
        _f("legal_basis", "string", "DSGVO legal basis", "consent",
           allowed=("consent", "contract", "legitimate_interest")),
        _f("purpose", "string", "purpose the consent covers", "newsletter"),
        _f("occurred_at", "datetime", "when the event happened (UTC)", "2026-11-03T09:14:00Z", required=True),
        _f("double_opt_in_at", "datetime", "when the double opt-in link was confirmed (UTC)",
           "2026-11-03T09:20:41Z"),
        _f("opt_in_source", "string", "where the consent was collected", "website footer form"),
        _f("email", "string", "e-mail address of the person", "j.mueller@musterfirma.de", pii="email"),
        _f("first_name", "string", "given name", "Jörg", pii="name"),
        _f("last_name", "string", "family name", "Müller", pii="name"),
        _f("crm_contact_id", "string", "contact ID in the CRM", "51234"),
    ),
    require_any=(("email", "crm_contact_id"),),
)

BEHAVIOUR_EVENT = Entity(
    name="behaviour_event",
    meaning="Something a (possibly anonymous) person did: page view, download, webinar, e-mail click.",
    fields=(
        _RECORD_ID,
        _f("event_type", "string", "kind of event", "pricing_page", required=True,
           allowed=("page_view", "pricing_page", "demo_video", "whitepaper_download", "webinar_attended",
                    "email_open", "email_click", "email_bounce", "unsubscribe", "email_delivered", "email_soft_bounce",
                    "email_spam", "email_confirmed")),
        _f("occurred_at", "datetime", "when it happened (UTC)", "2026-11-03T09:14:00Z", required=True),
        _f("anonymous_id", "string", "cookie / device ID", "a1f3c9e2-5b1d-4e6f-9a0b-7c2d1e3f4a5b"),
        _f("email", "string", "e-mail address when the person is identified", "j.mueller@musterfirma.de",
           pii="email"),
        _f("crm_contact_id", "string", "contact ID in the CRM when known", "51234"),
        _f("url", "string", "page URL", "https://www.example-maschinenbau.de/preise"),
        _f("content_id", "string", "whitepaper, webinar or video the event is about", "wp-hydraulik-2026"),
        _f("campaign", "string", "utm_campaign or mailing", "herbst-newsletter"),
    ),
    require_any=(("anonymous_id", "email", "crm_contact_id"),),
)

ORDER = Entity(
    name="order",
    meaning="An order line from the ERP.",
    fields=(
        _RECORD_ID,
        _f("erp_customer_number", "string", "Kundennummer of the ordering customer", "0000104711", required=True),
        _f("order_date", "date", "Auftragsdatum", "2026-10-28", required=True),
        _f("article_number", "string", "Artikelnummer", "HP-200-S"),
        _f("quantity", "integer", "ordered quantity", "3"),
        _f("amount", "decimal", "net amount of the line", "12499.90"),
        _f("currency", "string", "ISO 4217 currency", "EUR", allowed=("EUR", "CHF", "USD", "GBP")),
        _f("status", "string", "order status", "open", allowed=("open", "delivered", "invoiced", "cancelled")),
    ),
)

SERVICE_REQUEST = Entity(
    name="service_request",
    meaning="A service or support request from a customer.",
    fields=(
        _RECORD_ID,
        _f("created_at", "datetime", "when the request was opened (UTC)", "2026-11-03T09:14:00Z", required=True),
        _f("erp_customer_number", "string", "Kundennummer when the requester gave it", "0000104711"),
        _f("company_name", "string", "company as stated", "Musterfirma GmbH"),
        _f("contact_name", "string", "requester's name as stated", "Jörg Müller", pii="name"),
        _f("email", "string", "requester's e-mail", "j.mueller@musterfirma.de", pii="email"),
        _f("phone", "string", "requester's phone", "0351 4711-23", pii="phone"),
        _f("category", "string", "request category", "repair"),
        _f("priority", "string", "priority", "high", allowed=("low", "normal", "high", "urgent")),
        _f("subject", "string", "subject line", "Hydraulikpresse verliert Öl", pii="free_text"),
        _f("product_serial", "string", "serial number of the machine concerned", "HP200-2019-00417"),
    ),
    require_any=(("email", "phone", "erp_customer_number"),),
)

ERASURE_REQUEST = Entity(
    name="erasure_request",
    meaning="A DSGVO Art. 17 erasure request, as the CRM webhook delivers it.",
    fields=(
        _RECORD_ID,
        _f("requested_at", "datetime", "when the request was made (UTC)", "2026-11-03T09:14:00Z", required=True),
        _f("crm_contact_id", "string", "contact ID in the CRM", "51234"),
        _f("email", "string", "e-mail address to erase", "j.mueller@musterfirma.de", pii="email"),
        _f("requested_by", "string", "system or person that triggered it", "hubspot-webhook"),
        _f("reason", "string", "legal reference or reason", "Art. 17 DSGVO"),
    ),
    require_any=(("email", "crm_contact_id"),),
)

PERSON = Entity(
    name="person",
    meaning="A person in any data set, for the generic dedupe command (not a landing-zone source).",
    fields=(
        _RECORD_ID,
        _f("salutation", "string", "salutation as written", "Mrs"),
        _f("first_name", "string", "given name", "Jane", pii="name"),
        _f("last_name", "string", "family name", "Doe", pii="name"),
        _f("full_name", "string", "whole name when not split", "Jane Doe", pii="name"),
        _f("date_of_birth", "date", "date of birth", "1975-04-01", pii="date"),
        _f("email", "string", "e-mail address", "jane@example.com", pii="email"),
        _f("phone", "string", "phone number", "+61 2 9876 5432", pii="phone"),
        _f("house_number", "string", "street number", "12", pii="address"),
        _f("street", "string", "street (first address line)", "Miller Street", pii="address"),
        _f("address_line_2", "string", "second address line (unit, building)", "Unit 4", pii="address"),
        _f("postal_code", "string", "postcode", "2060"),
        _f("city", "string", "town, suburb or city", "North Sydney"),
        _f("region", "string", "state, province or region", "NSW"),
        _f("country", "string", COUNTRY_MEANING, "AU"),
        _f("national_id", "string", "an identification number (social security, tax, customer)", "1234567", pii="free_text"),
        _f("company_name", "string", "employer", "Acme Pty Ltd"),
    ),
)

ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (CONTACT, ACCOUNT, CONSENT_EVENT, BEHAVIOUR_EVENT, ORDER, SERVICE_REQUEST, ERASURE_REQUEST, PERSON)
}

# Columns every raw table carries besides its entity's fields: where each row came from.
RAW_LINEAGE_COLUMNS: tuple[Field, ...] = (
    _f("_partition", "string", "landing-zone day (YYYY-MM-DD) the row was delivered in", "2026-11-03",
       required=True),
    _f("_file", "string", "landing file name", "leads_0800.jsonl", required=True),
    _f("_line", "integer", "line in the file where the record starts (null for JSON documents)", "17"),
    _f("_record_no", "integer", "1-based record number within the file", "16", required=True),
    _f("_run_id", "string", "Dagster run that loaded the row", "4b9c…", required=True),
    _f("_loaded_at", "datetime", "when the row was loaded (UTC)", "2026-11-04T02:00:13Z", required=True),
)
