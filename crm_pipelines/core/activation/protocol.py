"""What the activation needs from a marketing-automation tool, independent of the vendor.

Brevo is the first (``brevo.py``); CleverReach or Mailchimp would be a second module with the same
methods: their lists are Brevo's lists (Mailchimp: tags or static segments of one audience), their
bulk upsert is Brevo's import (Mailchimp: batch operations; CleverReach: ``upsertplus``), their
journey triggers are Brevo's events (Mailchimp: customer journeys' API triggers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from ..platform.http import CallStats


class ToolAuthError(Exception):
    """The tool refused the credentials (401/403): nothing else will work, so the sync stops."""


class ToolRejected(Exception):
    """The tool refused a request as invalid (4xx other than 429): a bug or a configuration error, never retried."""


@dataclass(frozen=True)
class ToolContact:
    """An upsert row: the address and the attributes in the tool's names."""
    email: str
    attributes: dict


@dataclass(frozen=True)
class RemoteState:
    """A contact as the tool reports it: only what the activation needs to respect its decisions."""
    email: str
    blocked: bool                 # unsubscribed, spam complaint, hard bounce or blocklisted by hand
    modified_at: str
    list_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ToolEvent:
    """An automation trigger: the event name the tool's workflow listens to, for one address."""
    event_id: str                 # ours: lets the tool's workflow (and the local tool) see a repeat
    name: str
    email: str
    properties: dict
    occurred_at: str


class MarketingTool(Protocol):
    name: str
    max_list_call: int
    stats: CallStats

    def ensure_attributes(self, definitions: dict[str, str]) -> list[str]:
        """Creates the attributes (name -> type) the account lacks; returns the names created."""

    def ensure_list(self, name: str, folder: str) -> int:
        """The ID of the list of this name in this folder (the folder holds the lists we own), created if missing."""

    def upsert(self, contacts: Sequence[ToolContact], list_id: int) -> int:
        """Creates or updates contacts (bulk, asynchronous on the tool's side), waits until the tool has
        applied them; also puts them on ``list_id``. Returns how many rows the tool accepted."""

    def add_to_list(self, list_id: int, emails: Sequence[str]) -> tuple[list[str], list[str]]:
        """(added, failed): at most ``max_list_call`` per request, split here."""

    def remove_from_list(self, list_id: int, emails: Sequence[str]) -> tuple[list[str], list[str]]:
        """(removed, not members)."""

    def changed_since(self, since_iso: str | None) -> Iterator[RemoteState]:
        """Every contact the tool changed at or after ``since_iso`` (all when None), oldest first."""

    def send_events(self, events: Sequence[ToolEvent]) -> list[tuple[str, str | None]]:
        """(event_id, error or None) per event."""

    def delete_contact(self, email: str) -> str:
        """``deleted`` or ``absent`` (an erasure: the tool keeps nothing)."""

    def request_double_opt_in(self, email: str, list_id: int, attributes: dict, *, template_id: int,
                              redirection_url: str) -> None:
        """Asks the tool to send its confirmation mail; the contact enters ``list_id`` when confirmed."""
