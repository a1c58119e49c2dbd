"""The golden layer: source records cleaned, matched and survived into golden contacts and accounts.

``records`` turns raw rows into comparable records, ``matching`` finds which belong together,
``survivorship`` picks each golden field, ``enrichment`` adds the Handelsregister; the golden steps
read and write the warehouse: ``staging`` (record builders), ``build`` (resolve and persist),
``crosswalk`` (record -> golden ID), ``review`` (steward decisions, review queue), ``explain``,
``consent`` (the consent ledger as a field of the golden contact).
"""
