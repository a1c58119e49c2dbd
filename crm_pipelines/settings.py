"""Environment settings with their defaults: the one place that reads ``os.environ``.

Every variable is listed in the README's configuration table. Paths are relative to
the working directory the Makefile runs from (the project folder).
"""

from __future__ import annotations

import os
import sys
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
    marketing_url: str | None = None  # the marketing tool's API (Brevo); None: the local development tool on 127.0.0.1:8767
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
    # Whether the schedules (nightly refresh, hourly behaviour and scoring, ...) start running when the code
    # location loads (CRM_SCHEDULES=running, as `make prod-local` and a deployment set it), or wait to be
    # switched on in the UI (stopped, the default: `make dev` on a laptop runs no nights by itself).
    schedules_running: bool = False

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
            marketing_url=env.get("CRM_MARKETING_API_URL") or None,
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
            schedules_running=_choice(env, "CRM_SCHEDULES", ("running", "stopped"), "stopped") == "running",
        )

    @property
    def salt_file(self) -> Path:
        """Where the first run keeps its generated privacy salt when CRM_PRIVACY_SALT is not set."""
        return self.data_dir.resolve() / "privacy_salt"

    @property
    def default_warehouse_url(self) -> str:
        from .core.platform.warehouse import default_url

        return default_url(self.data_dir.resolve())

    @property
    def effective_warehouse_url(self) -> str:
        """The warehouse the code location uses: CRM_WAREHOUSE_URL, else the SQLite default under CRM_DATA_DIR."""
        return self.warehouse_url or self.default_warehouse_url


class NoWarehouse(SystemExit):
    """A command-line tool was pointed at a warehouse that does not exist."""


def cli_warehouse(settings: Settings, out=None, create: bool = False):
    """The warehouse a command-line tool works on: the code location's (same variables, same default), named
    on stderr before anything is read or written. Without CRM_WAREHOUSE_URL and without the default SQLite
    files, the tool stops instead of creating empty ones: in a deployment that means the variable is
    missing from this shell, and the tool would otherwise answer about a warehouse nobody uses."""
    from .core.platform.warehouse import Warehouse, describe_url

    out = out or sys.stderr
    url = settings.effective_warehouse_url
    if settings.warehouse_url:
        print(f"warehouse: {describe_url(url)} (CRM_WAREHOUSE_URL)", file=out, flush=True)
    else:
        main = Path(url.removeprefix("sqlite:///"))
        print(f"warehouse: {describe_url(url)} (the SQLite default under CRM_DATA_DIR; CRM_WAREHOUSE_URL is not set)",
              file=out, flush=True)
        if not main.is_file() and not create:
            raise NoWarehouse(
                f"error: no warehouse at {main}. CRM_WAREHOUSE_URL is not set in this shell and the default SQLite "
                "warehouse has not been created. Set CRM_WAREHOUSE_URL to the code location's warehouse (`make "
                "prod-local` prints it and writes it to .crm_data/prod/env.sh: `source .crm_data/prod/env.sh`), "
                "or run `make demo` first for the SQLite default.")
    return Warehouse.for_url(url)
