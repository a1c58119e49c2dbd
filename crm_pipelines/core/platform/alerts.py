"""Operational alerts (a push that failed, a run that failed, a recovery) to the data-engineering
channel: a Slack incoming webhook or a Teams workflow. Messages carry counts and run IDs, never
personal data; the sending, retries and escaping are in :mod:`.notify`."""

from __future__ import annotations

from .notify import Message, WebhookChannel


def post_alert(url: str, text: str, kind: str = "slack", timeout: float = 10.0, max_attempts: int = 3) -> bool:
    """Posts once (with retries for 429/5xx); returns whether it arrived. An alert must not fail the
    run it reports on, so nothing is raised."""
    title, _, rest = text.partition(": ")
    msg = Message(title=title if rest else text[:150], fields=[("Details", rest)] if rest else [])
    return WebhookChannel(url, kind, max_attempts=max_attempts, timeout=timeout).send(msg).ok
