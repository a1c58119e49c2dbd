"""python -m crm_pipelines.devtools.crm_server: the local CRM on a port (see the package docstring)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CrmServer, Faults
from . import __doc__ as DESCRIPTION


def main() -> None:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=".crm_data/crm_server.db", help="SQLite file for the CRM's state")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    p.add_argument("--max-requests", type=int, default=190, help="requests per window (HubSpot Pro: 190 / 10 s)")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--read-error-rate", type=float, default=0.0, help="share of reads answered 503")
    p.add_argument("--throttle-rate", type=float, default=0.0)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--slow-seconds", type=float, default=0.0)
    p.add_argument("--latency", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.0, 0.0),
                   help="answer after a delay drawn uniformly from [MIN, MAX] seconds")
    p.add_argument("--custom-properties", type=Path, default=None,
                   help="JSON {object type: [property definitions]} created at start (a portal already set up)")
    args = p.parse_args()
    faults = Faults(error_rate=args.error_rate, read_error_rate=args.read_error_rate, throttle_rate=args.throttle_rate,
                    drop_rate=args.drop_rate, slow_seconds=args.slow_seconds, latency_min=args.latency[0], latency_max=args.latency[1])
    custom = json.loads(args.custom_properties.read_text(encoding="utf-8")) if args.custom_properties else None
    server = CrmServer(args.db, port=args.port, token=args.token, max_requests=args.max_requests, faults=faults,
                       custom_properties=custom)
    print(f"local CRM on {server.url} (state in {args.db}); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
