"""Resources: the warehouse and the landing zone, configured from the environment.

Secrets (a Postgres URL with its password) reach Dagster only through ``EnvVar``,
so they never show in run configuration or the UI.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg

from ..core.activation.brevo import BrevoConnector
from ..core.crm.hubspot import HubSpotConnector
from ..core.crm.settings import SyncSettings
from ..core.golden.enrichment import RegisterClient
from ..core.platform.alerts import post_alert
from ..core.platform.notify import Delivery, SmtpChannel, WebhookChannel
from ..core.platform.warehouse import Warehouse, describe_url
from ..core.privacy_screen.identity import IdentityHasher, load_or_create_salt
from ..core.privacy_screen.suppression import SuppressionList
from ..core.scoring.handoff import Channels
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


LOCAL_CRM_URL = "http://127.0.0.1:8766"


class CrmResource(dg.ConfigurableResource):
    """The CRM's API (CRM_API_URL, token from CRM_API_TOKEN via EnvVar: never in config or logs).

    The default URL is the local development CRM (``python -m crm_pipelines.devtools.crm_server``).
    The rate limit comes from sync.yaml unless set here.
    """

    base_url: str = LOCAL_CRM_URL
    token: str = ""
    timeout_seconds: float = 30.0
    max_attempts: int = 6
    max_requests: int = 0
    window_seconds: float = 0.0

    def unavailable(self) -> str | None:
        """Why there is no CRM to talk to, or None. Only the unconfigured default can be missing: the
        local development CRM runs only when started (`make crm-server`, `make prod-local`, the demo);
        a configured CRM_API_URL that does not answer is an outage, which the connector's retries and
        the failed run report."""
        if self.base_url != LOCAL_CRM_URL:
            return None
        try:
            local = urlparse(LOCAL_CRM_URL)
            with socket.create_connection((local.hostname, local.port), timeout=1):
                return None
        except OSError:
            return ("no CRM: CRM_API_URL is not set and the local development CRM is not running on "
                    f"{LOCAL_CRM_URL} (start it with `make crm-server`, or set CRM_API_URL)")

    def connector(self, sync: SyncSettings) -> HubSpotConnector:
        return HubSpotConnector.create(self.base_url, self.token or None,
                                       max_requests=self.max_requests or sync.max_requests,
                                       window_seconds=self.window_seconds or sync.window_seconds,
                                       timeout=self.timeout_seconds, max_attempts=self.max_attempts)


LOCAL_MARKETING_URL = "http://127.0.0.1:8767"


class MarketingToolResource(dg.ConfigurableResource):
    """The marketing-automation tool's API (Brevo v3: CRM_MARKETING_API_URL, key from CRM_MARKETING_API_KEY via
    EnvVar). The default URL is the local development tool (``python -m crm_pipelines.devtools.brevo_server``)."""

    base_url: str = LOCAL_MARKETING_URL
    api_key: str = ""
    timeout_seconds: float = 30.0
    max_attempts: int = 6
    requests_per_second: int = 10

    def unavailable(self) -> str | None:
        """Why there is no tool to talk to, or None (only the unconfigured local default can be missing)."""
        if self.base_url != LOCAL_MARKETING_URL:
            return None
        try:
            local = urlparse(LOCAL_MARKETING_URL)
            with socket.create_connection((local.hostname, local.port), timeout=1):
                return None
        except OSError:
            return ("no marketing tool: CRM_MARKETING_API_URL is not set and the local development tool is not running "
                    f"on {LOCAL_MARKETING_URL} (start it with `make brevo-server`, or set CRM_MARKETING_API_URL)")

    def connector(self) -> BrevoConnector:
        return BrevoConnector.connect(self.base_url, self.api_key or None, timeout=self.timeout_seconds,
                                      max_attempts=self.max_attempts, per_second=self.requests_per_second)


class AlertResource(dg.ConfigurableResource):
    """Where operational alerts go (CRM_ALERT_WEBHOOK_URL: a Slack incoming webhook or a Teams workflow)."""

    webhook_url: str = ""
    kind: str = "slack"

    def send(self, text: str) -> bool:
        if not self.webhook_url:
            return False
        return post_alert(self.webhook_url, text, self.kind)


class PrivacyResource(dg.ConfigurableResource):
    """The salt of the suppression list's hashes: CRM_PRIVACY_SALT through EnvVar, else a salt file the
    first run creates beside the warehouse (only its path is configuration, never the salt)."""

    salt: str = ""
    salt_file: str = ""

    def hasher(self) -> IdentityHasher:
        return IdentityHasher(self.salt or load_or_create_salt(self.salt_file))

    def suppression(self, wh: Warehouse) -> SuppressionList:
        return SuppressionList(wh, self.hasher())


class NotifyResource(dg.ConfigurableResource):
    """Where sales hand-offs are announced: a Slack webhook, a Teams workflow, e-mail to the owner (SMTP);
    and the team leads' channel for SLA escalations. Empty: that channel is not used."""

    slack_url: str = ""
    teams_url: str = ""
    team_lead_url: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_sender: str = "crm-pipelines@localhost"
    crm_web_url: str = ""

    def channels(self) -> Channels:
        return Channels(slack=WebhookChannel(self.slack_url, "slack") if self.slack_url else None,
                        teams=WebhookChannel(self.teams_url, "teams") if self.teams_url else None,
                        email=SmtpChannel(self.smtp_host, self.smtp_port, self.smtp_sender) if self.smtp_host else None)

    def escalate(self, team, msg) -> Delivery:
        if not self.team_lead_url:
            return Delivery(False, 0, "CRM_TEAM_LEAD_WEBHOOK_URL is not set")
        return WebhookChannel(self.team_lead_url, "slack").send(msg)


def _env_or_empty(name: str, present: bool):
    return dg.EnvVar(name) if present else ""


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    url: str | dg.EnvVar = dg.EnvVar("CRM_WAREHOUSE_URL") if settings.warehouse_url else settings.default_warehouse_url
    register_key: str | dg.EnvVar = dg.EnvVar("CRM_REGISTER_API_KEY") if os.environ.get("CRM_REGISTER_API_KEY") else ""
    return {
        "warehouse": WarehouseResource(url=url),
        "landing": LandingZoneResource(root=str(settings.landing_dir.resolve())),
        "register": RegisterResource(base_url=settings.register_url or "", api_key=register_key,
                                     calls_per_hour=settings.register_calls_per_hour),
        "crm": CrmResource(base_url=settings.crm_url or LOCAL_CRM_URL,
                           token=dg.EnvVar("CRM_API_TOKEN") if os.environ.get("CRM_API_TOKEN") else ""),
        "marketing": MarketingToolResource(
            base_url=settings.marketing_url or LOCAL_MARKETING_URL,
            api_key=dg.EnvVar("CRM_MARKETING_API_KEY") if os.environ.get("CRM_MARKETING_API_KEY") else ""),
        "privacy": PrivacyResource(salt=dg.EnvVar("CRM_PRIVACY_SALT") if settings.privacy_salt_set else "",
                                   salt_file=str(settings.salt_file)),
        "notify": NotifyResource(slack_url=_env_or_empty("CRM_SALES_SLACK_WEBHOOK_URL", settings.sales_slack_set),
                                 teams_url=_env_or_empty("CRM_SALES_TEAMS_WEBHOOK_URL", settings.sales_teams_set),
                                 team_lead_url=_env_or_empty("CRM_TEAM_LEAD_WEBHOOK_URL", settings.team_lead_set),
                                 smtp_host=settings.smtp_host or "", smtp_port=settings.smtp_port,
                                 smtp_sender=settings.smtp_sender, crm_web_url=settings.crm_web_url or ""),
        "alerts": AlertResource(webhook_url=dg.EnvVar("CRM_ALERT_WEBHOOK_URL") if os.environ.get("CRM_ALERT_WEBHOOK_URL")
                                else "", kind=settings.alert_webhook_kind),
    }
