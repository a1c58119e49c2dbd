"""What the hand-off asks of a sales tool: a follow-up task per hot lead, and the answer it expects.

Defined here, below the outlets, so the hand-off names what it needs without knowing any CRM; every
CRM connector (``core/crm/protocol.py``) takes these tasks and answers with ``CREATED`` per task.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATED = "created"  # the row status a connector reports for a task (or object) it created


@dataclass(frozen=True)
class Task:
    key: str                      # our idempotency key for the task
    subject: str
    body: str
    due_at: str                   # ISO-8601 UTC
    contact_crm_id: str | None = None
    owner_id: str | None = None
    priority: str = "HIGH"
