"""Environment settings with their defaults: the one place that reads ``os.environ``.

Every variable is listed in the README's configuration table. Paths are relative to
the working directory the Makefile runs from (the project folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = PACKAGE_DIR / "config"


EXECUTORS = ("multiprocess", "in_process", "celery")


def _choice(env, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise ValueError(f"environment variable {name}={value!r}: allowed are {', '.join(allowed)}")
    return value


def _positive(env, name: str, default: int) -> int:
    raw = (env.get(name) or "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"environment variable {name}={env.get(name)!r}: must be a whole number of at least 1")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    landing_dir: Path
    data_dir: Path
    warehouse_url: str | None  # None: the SQLite default under data_dir
    partition_start: str
    timezone: str = "Europe/Berlin"
    register_url: str | None = None  # company register REST endpoint; None: no enrichment
    register_calls_per_hour: int = 60
    crm_url: str | None = None  # the CRM's API; None: the local development CRM on 127.0.0.1:8766
    alert_webhook_kind: str = "slack"       # slack | teams
    privacy_salt_set: bool = False  # CRM_PRIVACY_SALT is set (read through EnvVar); else a local salt file
    # Sales notifications (each read through EnvVar when set; the URLs are secrets)
    sales_slack_set: bool = False       # CRM_SALES_SLACK_WEBHOOK_URL
    sales_teams_set: bool = False       # CRM_SALES_TEAMS_WEBHOOK_URL
    team_lead_set: bool = False         # CRM_TEAM_LEAD_WEBHOOK_URL (SLA escalations)
    smtp_host: str | None = None        # CRM_SMTP_HOST: e-mail to the lead's owner
    smtp_port: int = 25                 # CRM_SMTP_PORT
    smtp_sender: str = "crm-pipelines@localhost"  # CRM_SMTP_SENDER
    crm_web_url: str | None = None      # CRM_WEB_URL: links in alerts, e.g. https://app.hubspot.com/contacts/4711/record/0-1
    # How a run's steps are executed: multiprocess (one process per step, the default), in_process, or
    # celery (steps queued on CRM_CELERY_BROKER for `dagster-celery worker` processes; docs/operations.md).
    executor: str = "multiprocess"      # CRM_EXECUTOR
    # Records the record builders read, clean and write at a time (CRM_SLICE_RECORDS): their memory is
    # that of one slice, however long a source grows (docs/operations.md, Sizing).
    slice_records: int = 500_000

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(
            config_dir=Path(env.get("CRM_CONFIG_DIR") or DEFAULT_CONFIG_DIR),
            landing_dir=Path(env.get("CRM_LANDING_DIR") or "data/landing"),
            data_dir=Path(env.get("CRM_DATA_DIR") or ".crm_data"),
            warehouse_url=env.get("CRM_WAREHOUSE_URL") or None,
            partition_start=env.get("CRM_PARTITION_START") or "2026-01-01",
            register_url=env.get("CRM_REGISTER_URL") or None,
            register_calls_per_hour=int(env.get("CRM_REGISTER_CALLS_PER_HOUR") or 60),
            crm_url=env.get("CRM_API_URL") or None,
            alert_webhook_kind=env.get("CRM_ALERT_WEBHOOK_KIND") or "slack",
            privacy_salt_set=bool(env.get("CRM_PRIVACY_SALT")),
            sales_slack_set=bool(env.get("CRM_SALES_SLACK_WEBHOOK_URL")),
            sales_teams_set=bool(env.get("CRM_SALES_TEAMS_WEBHOOK_URL")),
            team_lead_set=bool(env.get("CRM_TEAM_LEAD_WEBHOOK_URL")),
            smtp_host=env.get("CRM_SMTP_HOST") or None,
            smtp_port=int(env.get("CRM_SMTP_PORT") or 25),
            smtp_sender=env.get("CRM_SMTP_SENDER") or "crm-pipelines@localhost",
            crm_web_url=env.get("CRM_WEB_URL") or None,
            executor=_choice(env, "CRM_EXECUTOR", EXECUTORS, "multiprocess"),
            slice_records=_positive(env, "CRM_SLICE_RECORDS", 500_000),
        )

    @property
    def salt_file(self) -> Path:
        """Where the first run keeps its generated privacy salt when CRM_PRIVACY_SALT is not set."""
        return self.data_dir.resolve() / "privacy_salt"

    @property
    def default_warehouse_url(self) -> str:
        from .core.warehouse import default_url

        return default_url(self.data_dir.resolve())
