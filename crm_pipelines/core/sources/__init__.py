"""Raw sources: reading landing files (``readers``), mapping them onto the canonical schema
(``mapping``, ``transforms``) and loading them with quarantine and balance (``ingest``)."""
