"""python -m crm_pipelines.devtools.brevo_server: the local marketing tool on a port (see the package docstring)."""

from __future__ import annotations

import argparse
import json

from . import Behaviour, BrevoServer, Faults
from . import __doc__ as DESCRIPTION


def main() -> None:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8767)
    p.add_argument("--api-key", default=None, help="require the 'api-key' header")
    p.add_argument("--state", default=None, help="JSON file holding the account between runs")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--throttle-rate", type=float, default=0.0)
    p.add_argument("--latency", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.0, 0.0))
    p.add_argument("--automations", default="{}", help='JSON {event name or list ID: e-mails sent}')
    p.add_argument("--open-rate", type=float, default=0.35)
    p.add_argument("--click-rate", type=float, default=0.2)
    p.add_argument("--unsubscribe-rate", type=float, default=0.01)
    p.add_argument("--hard-bounce-rate", type=float, default=0.01)
    args = p.parse_args()
    server = BrevoServer(port=args.port, api_key=args.api_key,
                         faults=Faults(error_rate=args.error_rate, throttle_rate=args.throttle_rate,
                                       latency_min=args.latency[0], latency_max=args.latency[1]),
                         behaviour=Behaviour(open_rate=args.open_rate, click_rate=args.click_rate,
                                             unsubscribe_rate=args.unsubscribe_rate, hard_bounce_rate=args.hard_bounce_rate),
                         automations=json.loads(args.automations), state_file=args.state)
    print(f"local Brevo on {server.url}; Ctrl-C stops", flush=True)
    try:
        server.start()
        server._threads[0].join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
