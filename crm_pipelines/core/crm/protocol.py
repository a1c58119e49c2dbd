"""What the sync engine needs from a CRM, independent of the vendor.

Object types are named the HubSpot way ("companies", "contacts", "tasks"); a connector for
another CRM translates them (Salesforce: Account, Contact, Task) and its batch size
(Salesforce sObject Collections: 200 per request, ``allOrNone=false``, results in request
order). Every write returns one :class:`RowResult` per input, so partial failures are
per row whatever the vendor's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

from ..scoring.tasks import CREATED as CREATED  # the hand-off's task, a connector's to create
from ..scoring.tasks import Task as Task
from ..platform.http import CallStats

UPDATED, REJECTED, FAILED, ARCHIVED, DELETED, ABSENT = ("updated", "rejected", "failed", "archived", "deleted", "absent")


class CrmAuthError(Exception):
    """The CRM refused the credentials (401/403): nothing else will work, so the sync stops."""


@dataclass(frozen=True)
class UpsertInput:
    key: str                      # our golden ID, stored in the CRM as the external ID property
    properties: dict[str, Any]


@dataclass
class RowResult:
    key: str
    status: str                   # created / updated / rejected (4xx, never retried) / failed (retry next run)
    crm_id: str | None = None
    message: str | None = None


class CrmConnector(Protocol):
    name: str
    max_batch: int
    max_association_batch: int
    stats: CallStats

    def read_objects(self, object_type: str, properties: Sequence[str], archived: bool = False) -> Iterator[dict]:
        """Every object of a type, page by page: {"id", "properties", "createdAt", "updatedAt", "archived"};
        with ``archived`` the ones deleted (archived) in the CRM instead."""

    def changed_since(self, object_type: str, since_ms: int, properties: Sequence[str]) -> Iterator[dict]:
        """Every live object modified at or after ``since_ms`` (epoch ms), oldest first."""

    def read_by(self, object_type: str, values: Sequence[str], properties: Sequence[str] = (),
                id_property: str | None = None) -> dict[str, dict]:
        """Objects by CRM ID (a merged-away ID answers with its survivor) or by a unique property."""

    def properties(self, object_type: str) -> dict[str, dict]:
        """The portal's property definitions: name -> {"type", "options", "hasUniqueValue", ...}."""

    def pipelines(self, object_type: str = "deals") -> list[dict]:
        """The type's pipelines with their stages (``metadata``: ``probability``, ``isClosed``)."""

    def read_with_history(self, object_type: str, ids: Sequence[str], properties: Sequence[str],
                          history_of: Sequence[str]) -> dict[str, dict]:
        """Objects by ID with the history of some properties (``propertiesWithHistory``, newest first)."""

    def associations(self, from_type: str, to_type: str, ids: Sequence[str]) -> dict[str, list[str]]:
        """Each object's associated objects of ``to_type``: ID -> their IDs."""

    def property_groups(self, object_type: str) -> set[str]:
        """Names of the portal's property groups."""

    def create_property_group(self, object_type: str, name: str, label: str) -> str:
        """``created`` or ``exists``."""

    def create_property(self, object_type: str, definition: dict) -> str:
        """``created`` or ``exists``."""

    def get_object(self, object_type: str, object_id: str, properties: Sequence[str] = ()) -> dict | None:
        """One object by the CRM's own ID, or None."""

    def upsert(self, object_type: str, id_property: str, inputs: Sequence[UpsertInput]) -> list[RowResult]:
        """Creates or updates by external ID; at most ``max_batch`` inputs."""

    def update(self, object_type: str, inputs: Sequence[UpsertInput], crm_ids: Sequence[str]) -> list[RowResult]:
        """Updates objects the CRM already has by its own IDs (records that came from the CRM), and
        stamps our external ID on them, so they are never created a second time."""

    def archive(self, object_type: str, keys_and_ids: Sequence[tuple[str, str]]) -> list[RowResult]:
        """Archives (soft-deletes) objects by CRM ID; used by mirror mode."""

    def associate(self, from_type: str, to_type: str, pairs: Sequence[tuple[str, str, str]]) -> list[RowResult]:
        """Links (key, from CRM ID, to CRM ID) with the default association type."""

    def create_tasks(self, tasks: Sequence[Task]) -> list[RowResult]:
        """Creates follow-up tasks, associated with their contact."""

    def ensure_list(self, name: str) -> str:
        """The ID of the static (manual) contact list of this name, created if missing."""

    def change_list(self, list_id: str, record_ids: Sequence[str], add: bool) -> tuple[list[str], list[str]]:
        """Adds or removes contacts (CRM IDs): (changed, missing)."""

    def list_members(self, list_id: str) -> list[str]:
        """The CRM IDs on a list."""

    def gdpr_delete(self, identifier: str, by: str = "email") -> RowResult:
        """Deletes a contact permanently (by e-mail, which also blocks the address, or by CRM ID)."""
