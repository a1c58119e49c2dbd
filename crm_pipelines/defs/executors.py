"""Which executor runs a run's steps (CRM_EXECUTOR): one process per step (default), all in one process,
or Celery workers on a real broker. The graph is the same; results do not depend on the choice."""

from __future__ import annotations

import dagster as dg

from ..settings import Settings

# Celery reads these through the executor config (StringSource), so the URLs stay out of the code and the
# run config shown in the UI: redis://127.0.0.1:6379/0 style, credentials in the URL when there are any.
CELERY_BROKER_ENV = "CRM_CELERY_BROKER"
CELERY_BACKEND_ENV = "CRM_CELERY_BACKEND"


# The near-real-time jobs (a lead's alert, a consent change, a segment update, a brochure job) are a few small
# steps: one process per step would start (and load the code location) again for each of them, seconds on top of
# the run's own start, measured in bench_leads (docs/benchmarks.md). They run in the run's process, whatever
# CRM_EXECUTOR says; the concurrency pools hold all the same.
NEAR_REAL_TIME_EXECUTOR = dg.in_process_executor


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "celery":
        # Imported only when chosen: dagster-celery is the scale-out extra (pip install '.[celery]').
        from dagster_celery import celery_executor

        return celery_executor.configured({
            "broker": {"env": CELERY_BROKER_ENV},
            "backend": {"env": CELERY_BACKEND_ENV},
            # One task at a time per worker process and acknowledged when done: a worker lost mid-step
            # leaves its step to be redelivered instead of silently dropped.
            "config_source": {"worker_prefetch_multiplier": 1, "task_acks_late": True},
        }, name="celery")
    # Dagster's default: one process per step; a run's config may still pick `in_process` or set
    # `multiprocess: {max_concurrent: N}`.
    return dg.multi_or_in_process_executor
