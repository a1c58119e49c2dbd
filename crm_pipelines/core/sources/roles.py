"""Which raw sources describe persons, which accounts (companies), which carry consent events.

Kept with the sources, below the golden layer that builds records from them and the privacy duties
that look through them for a person: both read the same list, so a new person source is named once.
"""

PERSON_SOURCES = ("crm_contacts", "web_form_leads", "trade_fair_leads", "newsletter_signups", "service_requests")
ACCOUNT_SOURCES = ("erp_customers", "crm_accounts")
CONSENT_SOURCES = ("newsletter_signups", "consent_changes")
# Person sources whose records carry a marketing opt-in (contact field ``marketing_opt_in``): the ledger takes it
# as an e-mail consent pending its double opt-in.
OPT_IN_SOURCES = ("web_form_leads", "trade_fair_leads")
# What the marketing tool reports back (webhooks, behaviour-event shape): engagement for the scores, unsubscribes,
# complaints and double-opt-in confirmations for the ledger.
ENGAGEMENT_SOURCES = ("email_engagement",)
