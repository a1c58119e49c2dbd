"""``python -m crm_pipelines.activation``: the marketing tool's webhook endpoint and its one-time set-up."""
