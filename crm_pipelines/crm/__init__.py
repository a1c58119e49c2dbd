"""The CRM outlet's command line: ``python -m crm_pipelines.crm``."""
