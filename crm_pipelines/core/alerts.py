"""Alerts to a chat webhook: Slack incoming webhooks ({"text": ...}) or a Teams workflow (Adaptive Card).

Used by the CRM sync for failures and recoveries; the lead alerts build on it. Messages never carry
unmasked personal data (callers pass masked text; this module escapes, it does not mask).
"""

from __future__ import annotations

import requests

SLACK_TEXT_LIMIT = 3000


def slack_escape(text: str) -> str:
    """Slack's mrkdwn reserves &, < and >; user data must not open links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_body(text: str, kind: str = "slack") -> dict:
    if kind == "teams":
        return {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {"type": "AdaptiveCard", "version": "1.4",
                        "body": [{"type": "TextBlock", "text": text[:SLACK_TEXT_LIMIT], "wrap": True}]}}]}
    return {"text": slack_escape(text)[:SLACK_TEXT_LIMIT]}


def post_alert(url: str, text: str, kind: str = "slack", timeout: float = 10.0) -> bool:
    """Posts once; returns whether the webhook accepted it (an alert must not fail the run it reports on)."""
    try:
        resp = requests.post(url, json=webhook_body(text, kind), timeout=timeout)
    except (requests.ConnectionError, requests.Timeout):
        return False
    return 200 <= resp.status_code < 300
