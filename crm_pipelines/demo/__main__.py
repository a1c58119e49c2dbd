"""``python -m crm_pipelines.demo``: generate a landing zone, or run the whole demo.

    python -m crm_pipelines.demo generate --contacts 100000 --seed 7 --out data/landing
    python -m crm_pipelines.demo run            # what `make demo` calls
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from .generator import GeneratorConfig, Progress, generate
from .world import DEFAULT_START


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _add_generator_args(p: argparse.ArgumentParser, contacts_default: int) -> None:
    p.add_argument("--contacts", type=_positive, default=contacts_default, help="number of people (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed; same seed, same files (default %(default)s)")
    p.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START, help="first delivery day (default %(default)s)")
    p.add_argument("--days", type=_positive, default=14, help="number of delivery days (default %(default)s)")
    p.add_argument("--malformed-rate", type=float, default=0.002, help="share of records broken on purpose (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crm_pipelines.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a demo landing zone with ground truth")
    _add_generator_args(gen, 3000)
    gen.add_argument("--out", type=Path, required=True, help="landing-zone folder to write")
    run = sub.add_parser("run", help="generate (if needed) and materialise the whole asset graph, then print a summary")
    _add_generator_args(run, 3000)
    run.add_argument("--regenerate", action="store_true", help="write the landing zone even if one exists")
    args = parser.parse_args(argv)

    cfg = GeneratorConfig(contacts=args.contacts, seed=args.seed, start=args.start, days=args.days,
                          malformed_rate=args.malformed_rate)
    progress = Progress(enabled=not args.quiet)
    if args.command == "generate":
        cfg.out = args.out
        manifest = generate(cfg, progress)
        print(json.dumps({s: v["records"] for s, v in manifest["sources"].items()}, indent=2))
        return 0

    from .runner import run_demo

    return run_demo(cfg, regenerate=args.regenerate, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
