"""DSGVO by design, the duties that act on a person: erasure (and the requests ledger), consent and its
ledger, access export, retention, the scrub of landing files. Identity hashing and the suppression list
every load checks are one floor below the sources, in ``core/privacy_screen``; the hash-chained audit
trail is ``core/platform/audit.py``. Plain Python; the Dagster wiring is ``crm_pipelines/defs/privacy.py``,
the command line ``python -m crm_pipelines.privacy``."""
