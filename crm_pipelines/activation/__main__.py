"""python -m crm_pipelines.activation webhook | setup

    webhook  serve the endpoint Brevo's marketing webhooks call (POST /brevo?token=...), writing each request
             as a landing file of email_engagement (token from CRM_MARKETING_WEBHOOK_TOKEN)
    setup    create the attributes and our lists in the tool and register the webhook (--webhook-url)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.activation.brevo import BrevoConnector
from ..core.activation.protocol import ToolAuthError, ToolRejected
from ..core.activation.segments import load_segments
from ..core.activation.settings import load_activation_settings, load_journeys
from ..core.platform.http import ServiceUnavailable
from ..defs.resources import LOCAL_MARKETING_URL
from ..settings import Settings
from .receiver import WebhookReceiver

ENGAGEMENT_EVENTS = ["delivered", "opened", "click", "unsubscribed", "hardBounce", "spam", "listAddition"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crm_pipelines.activation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("webhook", help="serve the webhook endpoint")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8768)
    s = sub.add_parser("setup", help="attributes, lists and the webhook in the tool")
    s.add_argument("--webhook-url", default="", help="public URL of the endpoint, with ?token=... (omit: no webhook)")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "webhook":
        token = os.environ.get("CRM_MARKETING_WEBHOOK_TOKEN", "")
        if not token:
            print("set CRM_MARKETING_WEBHOOK_TOKEN: Brevo's webhooks are unsigned, the token is what protects them",
                  file=sys.stderr)
            return 2
        receiver = WebhookReceiver(settings.landing_dir, token, port=args.port, host=args.host)
        print(f"webhook endpoint on http://{args.host}:{receiver.port}/brevo?token=***, landing in "
              f"{Path(settings.landing_dir) / 'email_engagement'}; Ctrl-C stops", flush=True)
        try:
            receiver.httpd.serve_forever()
        except KeyboardInterrupt:
            receiver.httpd.server_close()
        return 0
    cfg = settings.config_dir
    activation = load_activation_settings(cfg / "activation.yaml")
    segments = load_segments(cfg / "segments")
    journeys = load_journeys(cfg / "journeys", set(segments))
    tool = BrevoConnector.connect(settings.marketing_url or LOCAL_MARKETING_URL,
                                  os.environ.get("CRM_MARKETING_API_KEY") or None)
    try:
        created = tool.ensure_attributes(activation.attribute_types())
        names = [activation.all_contacts_list, activation.doi_list,
                 *[s.destinations["brevo"] for s in segments.values() if "brevo" in s.destinations],
                 *[j.list_name for j in journeys.values() if j.list_name]]
        lists = {n: tool.ensure_list(n, activation.folder) for n in dict.fromkeys(names)}
        if args.webhook_url:
            tool.register_webhook(args.webhook_url, ENGAGEMENT_EVENTS)
    except (ToolAuthError, ToolRejected, ServiceUnavailable) as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 1
    print(f"attributes created: {', '.join(created) or 'none (all there)'}; lists in folder {activation.folder!r}: "
          + ", ".join(f"{n} ({i})" for n, i in lists.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
