"""Resources: the warehouse and the landing zone, configured from the environment.

Secrets (a Postgres URL with its password) reach Dagster only through ``EnvVar``,
so they never show in run configuration or the UI.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ..core.enrichment import RegisterClient
from ..core.warehouse import Warehouse, describe_url
from ..settings import Settings


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse: SQLite files under CRM_DATA_DIR by default, PostgreSQL via CRM_WAREHOUSE_URL."""

    url: str

    def get(self) -> Warehouse:
        return Warehouse.for_url(self.url)

    @property
    def display_url(self) -> str:
        return describe_url(self.url)


class LandingZoneResource(dg.ConfigurableResource):
    """Folder where sources drop their files: <root>/<source>/<YYYY-MM-DD>/."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)


class RegisterResource(dg.ConfigurableResource):
    """The company register's REST endpoint (CRM_REGISTER_URL); empty: enrichment is skipped."""

    base_url: str = ""
    api_key: str = ""
    calls_per_hour: int = 60
    timeout_seconds: float = 5.0

    def client(self) -> RegisterClient | None:
        if not self.base_url:
            return None
        return RegisterClient(self.base_url, api_key=self.api_key or None, timeout=self.timeout_seconds)


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    url: str | dg.EnvVar = dg.EnvVar("CRM_WAREHOUSE_URL") if settings.warehouse_url else settings.default_warehouse_url
    register_key: str | dg.EnvVar = dg.EnvVar("CRM_REGISTER_API_KEY") if os.environ.get("CRM_REGISTER_API_KEY") else ""
    return {
        "warehouse": WarehouseResource(url=url),
        "landing": LandingZoneResource(root=str(settings.landing_dir.resolve())),
        "register": RegisterResource(base_url=settings.register_url or "", api_key=register_key,
                                     calls_per_hour=settings.register_calls_per_hour),
    }
