"""Dagster wiring: thin assets, checks, jobs and resources that call ``crm_pipelines.core``."""

import warnings

import dagster as dg

# Single-run backfills are how a month of landing files loads in one run instead of thirty;
# the parameter is marked beta, which is not news to anyone reading the code location's logs.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
# Dagster's own sensor decorators pass `owners` (None) to SensorDefinition, which then warns that the
# parameter is beta, in every process that loads the code location (each step's): noise we did not cause.
warnings.filterwarnings("ignore", message=".*owners.*SensorDefinition.*", category=dg.BetaWarning)
