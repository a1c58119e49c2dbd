"""Notifications to people: Slack incoming webhooks (blocks), Microsoft Teams workflows (an
Adaptive Card) and e-mail (SMTP). Retries what is worth retrying, escapes what users typed.

* Slack: ``{"text", "blocks"}``; ``&``, ``<`` and ``>`` in user data are escaped, so a company
  called "<!channel>" neither pings anyone nor breaks the message; a section's text stays
  under 3,000 characters.
* Teams: a Power Automate workflow URL taking ``{"type": "message", "attachments": [Adaptive Card]}``;
  Markdown characters in user data are escaped.
* SMTP: plain text and HTML (escaped) alternatives, UTF-8.
* 429 waits ``Retry-After``; 5xx, timeouts and refused connections back off and try again;
  after the last attempt the failure is returned (the caller records it and surfaces it), never
  raised into the code that sends the alert.
"""

from __future__ import annotations

import html
import random
import re
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Callable

import requests

SLACK_SECTION_LIMIT = 3000
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~])")


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


@dataclass
class Message:
    """What a person is told. ``fields`` are user data (escaped per channel); ``title`` and
    ``footer`` are ours."""

    title: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    footer: str = ""
    link: str | None = None

    def plain(self) -> str:
        lines = [self.title, ""] + [f"{k}: {v}" for k, v in self.fields]
        if self.link:
            lines += ["", self.link]
        if self.footer:
            lines += ["", self.footer]
        return "\n".join(lines)


def slack_payload(msg: Message) -> dict:
    body = "\n".join(f"*{k}:* {slack_escape(v)}" for k, v in msg.fields)[:SLACK_SECTION_LIMIT]
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": msg.title[:150]}},
                          {"type": "section", "text": {"type": "mrkdwn", "text": body or " "}}]
    if msg.link:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{msg.link}|Im CRM öffnen>"}})
    if msg.footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(msg.footer)}]})
    return {"text": slack_escape(msg.title), "blocks": blocks}


def teams_payload(msg: Message) -> dict:
    facts = [{"title": k, "value": markdown_escape(v)} for k, v in msg.fields]
    body: list[dict] = [{"type": "TextBlock", "text": markdown_escape(msg.title), "weight": "Bolder", "size": "Medium",
                         "wrap": True},
                        {"type": "FactSet", "facts": facts}]
    if msg.footer:
        body.append({"type": "TextBlock", "text": markdown_escape(msg.footer), "isSubtle": True, "wrap": True})
    card = {"type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "version": "1.4",
            "body": body}
    if msg.link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Im CRM öffnen", "url": msg.link}]
    return {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                                 "content": card}]}


def email_message(msg: Message, sender: str, to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = msg.title
    mail["From"] = sender
    mail["To"] = to
    mail.set_content(msg.plain())
    rows = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in msg.fields)
    link = f"<p><a href='{html.escape(msg.link)}'>Im CRM öffnen</a></p>" if msg.link else ""
    mail.add_alternative(f"<h3>{html.escape(msg.title)}</h3><table>{rows}</table>{link}"
                         f"<p><small>{html.escape(msg.footer)}</small></p>", subtype="html")
    return mail


@dataclass
class Delivery:
    ok: bool
    attempts: int
    detail: str = ""


@dataclass
class WebhookChannel:
    url: str
    kind: str = "slack"                      # slack | teams
    max_attempts: int = 4
    backoff_base: float = 0.5
    max_retry_after: float = 30.0
    timeout: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:  # the URL is a secret (whoever has it can post)
        return f"WebhookChannel(kind={self.kind!r})"

    def send(self, msg: Message) -> Delivery:
        payload = slack_payload(msg) if self.kind == "slack" else teams_payload(msg)
        return self.post(payload)

    def post(self, payload: dict) -> Delivery:
        detail = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = requests.post(self.url, json=payload, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                detail = type(exc).__name__
                self.sleep(self._backoff(attempt))
                continue
            if 200 <= resp.status_code < 300:
                return Delivery(True, attempt)
            detail = f"HTTP {resp.status_code}"
            if resp.status_code == 429:
                self.sleep(_retry_after(resp, self.max_retry_after) or self._backoff(attempt))
                continue
            if resp.status_code >= 500:
                self.sleep(self._backoff(attempt))
                continue
            return Delivery(False, attempt, f"{detail}: {resp.text[:200]}")  # 4xx: the payload is wrong, do not repeat
        return Delivery(False, self.max_attempts, f"gave up after {self.max_attempts} attempts ({detail})")

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, self.backoff_base * 2 ** (attempt - 1))


def _retry_after(resp: requests.Response, cap: float) -> float | None:
    try:
        return min(float(resp.headers.get("Retry-After", "")), cap)
    except ValueError:
        return None


@dataclass
class SmtpChannel:
    host: str
    port: int = 25
    sender: str = "crm-pipelines@localhost"
    max_attempts: int = 3
    timeout: float = 10.0
    backoff_base: float = 0.5
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"SmtpChannel(host={self.host!r}, port={self.port})"

    def send(self, msg: Message, to: str) -> Delivery:
        detail = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                    if self.starttls:
                        smtp.starttls()
                    if self.username:
                        smtp.login(self.username, self.password or "")
                    smtp.send_message(email_message(msg, self.sender, to))
                return Delivery(True, attempt)
            except smtplib.SMTPResponseException as exc:
                detail = f"SMTP {exc.smtp_code}"
                if exc.smtp_code < 500:  # 4xx: temporary (greylisting, busy)
                    self.sleep(random.uniform(0, self.backoff_base * 2 ** (attempt - 1)))
                    continue
                return Delivery(False, attempt, detail)
            except (OSError, smtplib.SMTPException) as exc:
                detail = type(exc).__name__
                self.sleep(random.uniform(0, self.backoff_base * 2 ** (attempt - 1)))
        return Delivery(False, self.max_attempts, f"gave up after {self.max_attempts} attempts ({detail})")
