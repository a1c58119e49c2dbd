"""python -m crm_pipelines.privacy: data-protection requests from the command line.

    erase --email ADDRESS [--crm-contact-id ID] [--by NAME]      Art. 17: erase everywhere (landing files too), suppress, audit
    export --email ADDRESS [--out FILE] [--by NAME]               Art. 15/20: everything held, as JSON
    repermit --email ADDRESS --evidence TEXT --by NAME            lift the e-mail's suppression (documented consent)
    retention [--dry-run]                                         anonymise contacts past the retention period
    prune-landing [--dry-run]                                     remove landing day folders past their retention
    verify-audit                                                  check the audit trail's hash chain

Uses the same settings as the code location (CRM_WAREHOUSE_URL, CRM_API_URL, CRM_API_TOKEN,
CRM_PRIVACY_SALT ...). Nothing personal is printed except where you asked for it (the export file).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import uuid
from pathlib import Path

from ..core.crm.hubspot import HubSpotConnector
from ..core.crm.settings import load_sync_settings
from ..core.platform import audit
from ..core.print.release import ERASURE_COPIES
from ..core.privacy.access import export_person, write_export
from ..core.privacy.erasure import erase
from ..core.privacy.landing import prune_landing
from ..core.privacy.requests import CrmErasureTarget
from ..core.privacy.retention import retire_inactive
from ..core.privacy.settings import load_privacy_settings
from ..core.privacy_screen.identity import IdentityHasher, load_or_create_salt
from ..core.privacy_screen.suppression import SuppressionList, subject_of
from ..core.sources.mapping import load_mappings
from ..settings import Settings, cli_warehouse


LOCAL_CRM_URL = "http://127.0.0.1:8766"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_pipelines.privacy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("erase", help="erase a person everywhere (Art. 17 DSGVO)")
    e.add_argument("--email")
    e.add_argument("--crm-contact-id")
    e.add_argument("--by", default=getpass.getuser(), help="who asked (for the audit trail)")
    e.add_argument("--no-crm", action="store_true", help="do not call the CRM (it is erased there already)")
    x = sub.add_parser("export", help="write everything held about a person as JSON (Art. 15/20 DSGVO)")
    x.add_argument("--email")
    x.add_argument("--crm-contact-id")
    x.add_argument("--out", type=Path, help="file to write (default: <CRM_DATA_DIR>/exports/<request>.json)")
    x.add_argument("--by", default=getpass.getuser())
    r = sub.add_parser("repermit", help="lift the suppression of an e-mail after a documented fresh consent")
    r.add_argument("--email", required=True)
    r.add_argument("--evidence", required=True, help="what proves the consent, e.g. 'signed form 2026-11-20, ticket 4711'")
    r.add_argument("--by", required=True)
    t = sub.add_parser("retention", help="anonymise contacts past the retention period (privacy.yaml)")
    t.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("prune-landing", help="remove landing day folders past landing.retention_days (privacy.yaml)")
    p.add_argument("--dry-run", action="store_true")
    sub.add_parser("verify-audit", help="verify the audit trail's hash chain")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    wh = cli_warehouse(settings)
    hasher = IdentityHasher(os.environ.get("CRM_PRIVACY_SALT") or load_or_create_salt(settings.salt_file))
    mappings = load_mappings(settings.config_dir)
    actor = f"cli:{getattr(args, 'by', None) or getpass.getuser()}"

    if args.command in ("erase", "export") and not (args.email or args.crm_contact_id):
        parser.error(f"{args.command} needs --email or --crm-contact-id")
    if args.command == "erase":
        targets = []
        if not args.no_crm:
            sync = load_sync_settings(settings.config_dir / "sync.yaml")
            targets = [CrmErasureTarget(HubSpotConnector.create(settings.crm_url or LOCAL_CRM_URL,
                                                                os.environ.get("CRM_API_TOKEN") or None,
                                                                max_requests=sync.max_requests,
                                                                window_seconds=sync.window_seconds, max_attempts=3))]
        report = erase(wh, hasher, mappings, copies=ERASURE_COPIES, emails=[args.email] if args.email else [],
                       crm_contact_ids=[args.crm_contact_id] if args.crm_contact_id else [],
                       request_id=f"cli:{uuid.uuid4().hex[:12]}", source="cli", actor=actor, targets=targets,
                       landing_root=settings.landing_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"{report.request_id}: {report.status} for {report.subject}: {sum(report.tables.values())} row(s) in "
              f"{len(report.tables)} table(s), {report.suppression_added} suppression entr(y/ies) added")
        for name, counts in report.targets.items():
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if report.status != "completed":
            print("  a connected system did not confirm: the erasure waits in ops.erasure_outbox and is retried by the "
                  "erasure_requests sensor's next run (or run this command again)")
        return 0 if report.status == "completed" else 3
    if args.command == "export":
        request_id = f"cli:{uuid.uuid4().hex[:12]}"
        doc = export_person(wh, hasher, mappings, emails=[args.email] if args.email else [],
                            crm_contact_ids=[args.crm_contact_id] if args.crm_contact_id else [],
                            request_id=request_id, source="cli", actor=actor)
        out = write_export(doc, args.out or settings.data_dir / "exports" / f"{request_id.replace(':', '_')}.json")
        print(f"{request_id}: {len(doc['data'])} table(s) hold {doc['subject']}; written to {out}")
        return 0
    if args.command == "repermit":
        suppression = SuppressionList(wh, hasher)
        h = hasher.email(args.email)
        if h is None or not suppression.lift("email", h, f"documented consent: {args.evidence}", actor):
            print("that address is not suppressed; nothing to lift", file=sys.stderr)
            return 1
        print(f"suppression of {subject_of(hasher, args.email)} lifted (audited); its other identities stay suppressed")
        return 0
    if args.command == "retention":
        months = load_privacy_settings(settings.config_dir / "privacy.yaml").prospect_months
        rep = retire_inactive(wh, hasher, mappings, months=months, actor=actor, dry_run=args.dry_run)
        print(f"cutoff {rep.cutoff:%Y-%m-%d}: {rep.candidates} old contact(s), {rep.kept_relationship} kept (customers), "
              f"{rep.kept_active} kept (recent activity), {rep.retired} {'would be ' if args.dry_run else ''}anonymised")
        return 0
    if args.command == "prune-landing":
        from datetime import date

        days = load_privacy_settings(settings.config_dir / "privacy.yaml").landing_retention_days
        rep = prune_landing(settings.landing_dir, mappings, days, date.today(), dry_run=args.dry_run)
        print(f"cutoff {rep.cutoff:%Y-%m-%d}: {rep.folders_removed} day folder(s), {rep.files_removed} file(s), "
              f"{rep.bytes_removed:,} bytes {'would be ' if args.dry_run else ''}removed")
        return 0
    result = audit.verify(wh)
    if result.ok:
        print(f"audit trail intact: {result.rows} row(s)")
        return 0
    print(f"audit trail BROKEN at row {result.first_bad_seq}: {result.problem} ({result.rows} row(s) read)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
