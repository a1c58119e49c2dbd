"""python -m crm_pipelines.crm: the CRM portal and the two-way flow from the command line.

    setup [--check]      create the property group and every custom property sync.yaml declares
                         (idempotent); --check only reports what is missing
    pull-changes [--day YYYY-MM-DD]
                         read what changed in the CRM since the last pull (edits, deletes, merges)
                         into ops.crm_remote and the landing zone

Uses the same settings as the code location: CRM_API_URL (default: the local development CRM on
127.0.0.1:8766), CRM_API_TOKEN (a private app token with the scopes crm.objects.*.read/write and
crm.schemas.*.read/write), CRM_WAREHOUSE_URL, CRM_LANDING_DIR, CRM_CONFIG_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from ..core.crm.changes import pull_changes
from ..core.platform.http import ServiceUnavailable
from ..core.crm.hubspot import HubSpotConnector
from ..core.crm.properties import setup_portal
from ..core.crm.protocol import CrmAuthError
from ..core.crm.settings import load_sync_settings
from ..core.sources.mapping import load_mappings
from ..settings import Settings, cli_warehouse

LOCAL_CRM_URL = "http://127.0.0.1:8766"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_pipelines.crm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup", help="create the custom properties the push needs in the CRM portal")
    s.add_argument("--check", action="store_true", help="report what is missing, create nothing")
    p = sub.add_parser("pull-changes", help="read the CRM's changes since the last pull")
    p.add_argument("--day", help="landing-zone day folder to write into (default: today, Europe/Berlin)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    sync = load_sync_settings(settings.config_dir / "sync.yaml")
    url = settings.crm_url or LOCAL_CRM_URL
    connector = HubSpotConnector.create(url, os.environ.get("CRM_API_TOKEN") or None, max_requests=sync.max_requests,
                                        window_seconds=sync.window_seconds)
    try:
        if args.command == "setup":
            return _setup(connector, sync, url, args.check)
        wh = cli_warehouse(settings, create=True)  # the first pull may well be the first thing written
        day = args.day or datetime.now(ZoneInfo("Europe/Berlin")).date().isoformat()
        report = pull_changes(wh, connector, sync, load_mappings(settings.config_dir), settings.landing_dir,
                              day, f"cli-{uuid.uuid4().hex[:8]}", log=lambda m: print(m, flush=True))
        print(f"landed {sum(report.landed.values()):,} changed records in {len(report.files)} file(s) for {day}")
        return 0
    except (CrmAuthError, ServiceUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _setup(connector, sync, url: str, check: bool) -> int:
    if check:
        missing = []
        for object_type in sync.objects:
            have = connector.properties(object_type)
            missing += [f"{object_type}.{p.name}" for p in sync.custom(object_type) if p.name not in have]
        print(f"{url}: " + (f"missing {', '.join(missing)}" if missing else "every custom property exists"))
        return 1 if missing else 0
    report = setup_portal(connector, sync, log=lambda m: print(m, flush=True))
    print(f"{url}: {len(report.created)} properties created, {len(report.existing)} already there, "
          f"{len(report.groups_created)} property groups created")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
