"""DSGVO by design: identities as salted hashes, the suppression list, erasure, consent, access
export, retention and the hash-chained audit trail. Plain Python; the Dagster wiring is
``crm_pipelines/defs/privacy.py``, the command line ``python -m crm_pipelines.privacy``."""
