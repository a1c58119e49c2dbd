"""Command line for data-protection requests: ``python -m crm_pipelines.privacy --help``."""
