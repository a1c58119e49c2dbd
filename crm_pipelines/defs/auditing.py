"""One line for the assets that change data: an audit row per run (counts only, never values)."""

from __future__ import annotations

from ..core.platform.audit import AuditEntry, append
from ..core.platform.warehouse import Warehouse


def audit_run(wh: Warehouse, context, action: str, details: dict, subject: str | None = None) -> None:
    append(wh, [AuditEntry(action, f"dagster:{context.job_name}", subject, details, context.run.run_id)])
