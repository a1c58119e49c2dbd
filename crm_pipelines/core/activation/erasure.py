"""The marketing tool as an erasure target: the erasure fan-out deletes the contact there too."""

from __future__ import annotations

from dataclasses import dataclass

from ..platform.http import ServiceUnavailable
from .protocol import MarketingTool, ToolRejected


@dataclass
class MarketingToolErasureTarget:
    """Deletes the person's contact in the tool by e-mail (the tool knows no CRM IDs: nothing to do there).
    An outage answers ``failed``, so the erasure outbox tries again until the tool confirms."""

    tool: MarketingTool

    @property
    def name(self) -> str:
        return self.tool.name

    def erase(self, kind: str, identifier: str) -> tuple[str, str | None]:
        if kind != "email":
            return "absent", None
        try:
            return self.tool.delete_contact(identifier), None
        except ServiceUnavailable as exc:
            return "failed", str(exc)[:200]
        except ToolRejected as exc:
            return "rejected", str(exc)[:200]
