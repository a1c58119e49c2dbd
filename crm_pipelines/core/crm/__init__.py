"""The CRM outlet: a connector protocol, the HubSpot connector, payloads, and the sync engine.

The sync engine (:mod:`.sync`) talks only to :class:`.protocol.CrmConnector`; a Salesforce
connector (sObject Collections upsert by external ID, 200 records per request) is another
implementation of that protocol beside :mod:`.hubspot`, and the sync logic does not change.
"""
