"""python -m crm_pipelines.matching: try matching rules on any extract, and steward tooling.

    dedupe INPUT.csv --mapping MAPPING.yaml --out CLUSTERS.csv [--region AU]
    decide --entity persons --a RECORD_KEY --b RECORD_KEY --decision same|different --by NAME [--note ...]
    explain --entity persons GOLDEN_ID
    accept-match-rate --entity persons     (a jump in the match rate was legitimate)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.golden.matching.settings import load_matching_config
from ..settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_pipelines.matching", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dedupe", help="cluster the records of a CSV (record id -> cluster id)")
    d.add_argument("input", type=Path)
    d.add_argument("--mapping", type=Path, required=True, help="field mapping (entity: person) for the CSV")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--region", default="DE", help="default country for phone numbers and postcodes (DE, AT, CH, AU, GB, US ...)")
    d.add_argument("--settings", type=Path, help="matching.yaml to use (default: the configured one)")
    s = sub.add_parser("decide", help="record a data steward's decision about a pair")
    s.add_argument("--entity", choices=("persons", "accounts"), required=True)
    s.add_argument("--a", required=True, help="record key, e.g. crm_contacts:100234")
    s.add_argument("--b", required=True)
    s.add_argument("--decision", choices=("same", "different"), required=True)
    s.add_argument("--by", required=True, help="who decided")
    s.add_argument("--note")
    a = sub.add_parser("accept-match-rate", help="accept the last run's match rate as the new reference")
    a.add_argument("--entity", choices=("persons", "accounts"), required=True)
    e = sub.add_parser("explain", help="why the records of a golden ID were merged (masked)")
    e.add_argument("--entity", choices=("persons", "accounts"), required=True)
    e.add_argument("golden_id")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.command == "dedupe":
        from .generic import dedupe

        cfg = load_matching_config(args.settings or settings.config_dir / "matching.yaml")
        if cfg.generic_persons is None:
            parser.error("the matching settings have no generic_persons section")
        if not args.input.is_file():
            parser.error(f"{args.input}: no such file")
        clusters, _res, rejected = dedupe(args.input, args.mapping, cfg.generic_persons, args.region)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        clusters.to_csv(args.out, index=False)
        for where, reason in rejected[:20]:
            print(f"{args.input.name}: line {where}: {reason}", file=sys.stderr)
        print(f"wrote {len(clusters):,} rows to {args.out}")
        return 0

    from ..core.golden.build import accept_match_rate
    from ..core.golden.explain import explain
    from ..core.golden.review import record_decision
    from ..settings import cli_warehouse

    wh = cli_warehouse(settings)
    if args.command == "accept-match-rate":
        rate = accept_match_rate(wh, args.entity)
        if rate is None:
            print(f"no matching run with records for {args.entity} in this warehouse: nothing to accept", file=sys.stderr)
            return 1
        print(f"accepted match rate {rate} for {args.entity}")
        return 0
    if args.command == "decide":
        record_decision(wh, args.entity, args.a, args.b, args.decision, args.by, args.note)
        print(f"recorded: {args.entity} {args.a} / {args.b} -> {args.decision}; applied on the next golden run")
        return 0
    print(json.dumps(explain(wh, args.entity, args.golden_id), indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
