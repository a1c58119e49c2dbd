"""Activation: how fast a segment reacts, with a running daemon, and what an incremental update costs at scale.

1. Latency: a `dagster-daemon` with the sensors on (SQLite instance, the project's dagster.yaml), a resolved
   warehouse of 2,000 generated contacts with their scores, the local Brevo-compatible tool answering after
   0-300 ms with 2 % 500s, one full activation pass done. Behaviour-event files land one every 10 s, each a
   whitepaper download of a consented lead who is in no segment yet (so the segment `nurture_whitepaper`, its
   list and the lead-nurture journey must move); each is timed from the file landing to the first API call
   at the tool that carries the contact's address. p50 / p95 / max.
2. Trigger: pricing-page visits whose 30-minute wait window closes a few seconds after they land (the event is
   back-dated), without a demo request: timed from the window closing to the tool receiving the journey's event
   `journey_quote_abandoned`. p50 / max.
3. Scale: 1,000,000 golden contacts (SQLite) with scores and 3,000,000 behaviour events over 90 days, the
   shipped segments: a full recomputation, then 1,000 new events for 1,000 contacts as the sensor's
   incremental update handles them (which contacts, then only those). Wall time and peak RSS of each.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchmarks.common import ROOT, figure, log, run_measured
from benchmarks.daemon import sensor_ticked, small_warehouse, start_daemon, stop_daemon, wait_until

EVENTS = int(os.environ.get("BENCH_ACTIVATION_EVENTS", "20"))
TRIGGERS = int(os.environ.get("BENCH_ACTIVATION_TRIGGERS", "5"))
SCALE_CONTACTS = int(os.environ.get("BENCH_ACTIVATION_CONTACTS", "1000000"))


def _prepare(url: str) -> None:
    """Scores, and e-mail consent for a fifth of the contacts (what the ledger would say)."""
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.scoring.leads import build_lead_scores
    from crm_pipelines.core.scoring.rules import load_scoring_rules
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    wh = Warehouse(url)
    build_lead_scores(wh, load_scoring_rules(DEFAULT_CONFIG_DIR / "scoring.yaml"), "bench")
    g = GOLDEN_CONTACTS
    with wh.engine.begin() as conn:
        ids = [r[0] for r in conn.execute(sa.select(g.c.golden_id).where(g.c.email.is_not(None)).order_by(g.c.golden_id))]
        conn.execute(sa.update(g).where(g.c.golden_id.in_(ids[::5])).values(email_consent="granted",
                                                                            email_consent_basis="consent"))
    wh.engine.dispose()


def _targets(url: str, n: int) -> list[str]:
    import sqlalchemy as sa

    from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS, LEAD_SCORES, SEGMENT_MEMBERS
    from crm_pipelines.core.platform.warehouse import Warehouse
    wh = Warehouse(url)
    g, s, m = GOLDEN_CONTACTS, LEAD_SCORES, SEGMENT_MEMBERS
    rows = wh.read_select(sa.select(g.c.email).join(s, s.c.golden_id == g.c.golden_id)
                          .where(g.c.email_consent == "granted", s.c.stage == "lead",
                                 g.c.golden_id.not_in(sa.select(m.c.golden_id)))
                          .order_by(g.c.golden_id).limit(n))
    wh.engine.dispose()
    return [e.lower() for e in rows["email"]]


def _event_file(folder: Path, name: str, events: list[dict]) -> None:
    import json
    tmp = folder / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    tmp.replace(folder / name)


def latency() -> None:
    from crm_pipelines.devtools.brevo_server import BrevoServer, Faults
    from crm_pipelines.devtools.crm_server import CrmServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-activation-"))
    landing, url, _ = small_warehouse(tmp, 0)
    for source in ("trade_fair_leads", "service_requests", "consent_changes", "behaviour_events", "email_engagement"):
        subprocess.run(["rm", "-rf", str(landing / source)], check=True)
    _prepare(url)
    home = tmp / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    faults = Faults(latency_min=0.0, latency_max=0.3, error_rate=0.02)
    with BrevoServer(faults=faults, import_delay=0.5, automations={"journey_quote_abandoned": 1}) as brevo, \
            CrmServer(tmp / "crm.db") as crm:
        env = dict(os.environ, DAGSTER_HOME=str(home), CRM_LANDING_DIR=str(landing), CRM_DATA_DIR=str(tmp / "data"),
                   CRM_MARKETING_API_URL=brevo.url, CRM_API_URL=crm.url, GX_ANALYTICS_ENABLED="false",
                   CRM_PARTITION_START="2026-01-01")
        log("one full activation pass (activation_nightly, in-process)")
        subprocess.run([sys.executable, "-c", "from crm_pipelines.definitions import build_defs; import dagster as dg; "
                        "r = build_defs().resolve_job_def('activation_nightly').execute_in_process("
                        "instance=dg.DagsterInstance.get(), raise_on_error=False); "
                        "import sys; sys.exit(0 if r.success else 1)"], check=True, cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL)
        targets = _targets(url, EVENTS + TRIGGERS)
        log(f"{brevo.stats()['contacts']} contacts in the tool after the full pass; {len(targets)} targets")
        daemon = start_daemon(home, env)
        try:
            wait_until(lambda: sensor_ticked(home), 180, "the daemon's first sensor tick")
            today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            folder = landing / "behaviour_events" / today
            folder.mkdir(parents=True, exist_ok=True)
            landed = {}
            for i, email in enumerate(targets[:EVENTS]):
                now = datetime.now(timezone.utc)
                _event_file(folder, f"bench_{i:03d}.jsonl", [{"event_id": f"bench-{i}", "type": "whitepaper_download",
                                                              "ts": int(now.timestamp() * 1000), "email": email,
                                                              "content_id": "wp-bench"}])
                landed[email] = time.time()
                time.sleep(10)   # the arrival pace, not a synchronisation: every file is timed by its own arrival
            wait_until(lambda: all(e in brevo.first_received for e in landed), 300, "every event's API call")
            lat = sorted(brevo.first_received[e] - t for e, t in landed.items())
            figure("event_to_api_call_p50", statistics.median(lat), "s")
            figure("event_to_api_call_p95", lat[max(0, int(round(0.95 * len(lat))) - 1)], "s")
            figure("event_to_api_call_max", lat[-1], "s")
            figure("event_to_api_call_events", len(lat))
            # Abandonment: the visit back-dated so its 30-minute window closes 5 s after it lands.
            closes = {}
            for i, email in enumerate(targets[EVENTS:EVENTS + TRIGGERS]):
                visit = datetime.now(timezone.utc) - timedelta(minutes=30) + timedelta(seconds=5)
                _event_file(folder, f"pricing_{i:03d}.jsonl", [{"event_id": f"bench-p-{i}", "type": "pricing_view",
                                                                "ts": int(visit.timestamp() * 1000), "email": email,
                                                                "page": {"url": "https://www.example-maschinenbau.de/preise"}}])
                closes[email] = visit.timestamp() + 30 * 60
                time.sleep(15)

            def fired() -> dict:
                return {e: t for name, e, t in brevo.event_times if name == "journey_quote_abandoned" and e in closes}
            wait_until(lambda: len(fired()) == len(closes), 300, "every abandonment trigger")
            after = sorted(fired()[e] - closes[e] for e in closes)
            figure("trigger_fired_after_window_p50", statistics.median(after), "s")
            figure("trigger_fired_after_window_max", after[-1], "s")
            stats = brevo.stats()
            figure("tool_injected_500s", stats.get("injected_errors", 0))
            figure("tool_resubscribed", stats.get("resubscribed", 0))
            figure("tool_duplicate_events", stats.get("duplicate_events", 0))
            figure("tool_peak_contacts_requests_per_second", stats["peak_per_second"].get("contacts", 0))
        finally:
            stop_daemon(daemon)


def scale() -> None:
    script = ROOT / "benchmarks" / "activation_scale.py"
    env = dict(os.environ, GX_ANALYTICS_ENABLED="false")
    with tempfile.TemporaryDirectory(prefix="bench-activation-scale-") as tmp:
        build_s, build_mem, proc = run_measured([sys.executable, str(script), "build", tmp, str(SCALE_CONTACTS)], env)
        if proc.returncode:
            raise RuntimeError(proc.stdout[-3000:])
        log(f"warehouse of {SCALE_CONTACTS:,} contacts built in {build_s:.0f} s")
        for mode in ("full", "incremental"):
            secs, mem, proc = run_measured([sys.executable, str(script), mode, tmp, str(SCALE_CONTACTS)], env)
            if proc.returncode:
                raise RuntimeError(proc.stdout[-3000:])
            inner = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.startswith("inner_"))
            figure(f"segments_{mode}_seconds", float(inner["inner_seconds"]), "s")
            figure(f"segments_{mode}_contacts_evaluated", int(inner["inner_evaluated"]))
            figure(f"segments_{mode}_peak_rss", mem.peak_total / 2**30, "GB")


if __name__ == "__main__":
    latency()
    scale()
