"""Which raw sources describe persons, which accounts (companies), which carry consent events.

Kept with the sources, below the golden layer that builds records from them and the privacy duties
that look through them for a person: both read the same list, so a new person source is named once.
"""

PERSON_SOURCES = ("crm_contacts", "web_form_leads", "trade_fair_leads", "newsletter_signups", "service_requests")
ACCOUNT_SOURCES = ("erp_customers", "crm_accounts")
CONSENT_SOURCES = ("newsletter_signups", "consent_changes")
