"""Command line for entity resolution: `python -m crm_pipelines.matching {dedupe,decide,explain}`.

The engine lives in ``crm_pipelines.core.golden.matching``; this package is its command-line face.
"""
