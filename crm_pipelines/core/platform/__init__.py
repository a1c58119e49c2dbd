"""The floor every group stands on: the warehouse and its schema, config files, masking,
notifications and operational alerts, the audit log, GX quality suites, run hygiene."""
