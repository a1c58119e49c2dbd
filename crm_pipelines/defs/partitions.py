"""Partitioning shared by every landing-zone source: one partition per delivery day (Europe/Berlin)."""

from __future__ import annotations

import dagster as dg

from ..settings import Settings


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    # end_offset=1: today's partition exists, so near-real-time loads of today's files
    # (trade-fair leads, service requests) have somewhere to go.
    return dg.DailyPartitionsDefinition(start_date=settings.partition_start, timezone=settings.timezone, end_offset=1)
