"""Lead alerts in near real time, and scoring at volume.

1. Latency: a `dagster-daemon` with the sensors on (SQLite instance, the project's dagster.yaml),
   a resolved warehouse of 2,000 generated contacts, the local CRM answering after 0-300 ms (as
   HubSpot's API does) and a local Slack-style webhook; 300 earlier hand-offs are open, a third of
   them due within the SLA window, so the `sla` sensor launches its runs (batch reads of their tasks)
   while the leads arrive. 50 trade-fair leads are dropped into today's landing folder one by one
   (one file each, the next after the previous alert arrived); each is timed from the file landing
   to its alert arriving at the webhook. p50 / p95 / max, and how many SLA runs overlapped.
2. Throughput: 10,000,000 behaviour events over 1,000,000 golden contacts (generated in memory,
   the event mix and URLs of the demo), attributed to contacts and scored by the rules in
   config/scoring.yaml, in one process: wall time of attribution + scoring, and the process's
   peak RSS (events included).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import ROOT, figure, log, ready_portal, run_measured
from benchmarks.daemon import sensor_ticked, small_warehouse, start_daemon, stop_daemon, wait_until

LEADS = int(os.environ.get("BENCH_LEADS", "50"))
EVENTS = int(os.environ.get("BENCH_SCORING_EVENTS", "10000000"))
CONTACTS = int(os.environ.get("BENCH_SCORING_CONTACTS", "1000000"))
HEADER = "Scan-ID;Messe;Scan-Zeitpunkt;Anrede;Titel;Vorname;Nachname;Firma;Position;Straße;PLZ;Ort;Land;Telefon;Mobil;" \
         "E-Mail;Interesse;Notiz;Opt-In\n"


def alert_latency() -> None:
    from crm_pipelines.devtools.crm_server import CrmServer, Faults
    from crm_pipelines.devtools.webhook_sink import WebhookSink

    tmp = Path(tempfile.mkdtemp(prefix="bench-leads-"))
    try:
        landing, _, _ = small_warehouse(tmp, 0)
        # Loaded already: only the benchmark's own leads should land while the daemon watches.
        for source in ("trade_fair_leads", "service_requests", "consent_changes"):
            shutil.rmtree(landing / source, ignore_errors=True)
        # Score once so lead_scores exists (as after a nightly run).
        subprocess.run([sys.executable, "-c", "import sys; from crm_pipelines.core.scoring.leads import build_lead_scores; "
                        "from crm_pipelines.core.scoring.rules import load_scoring_rules; "
                        "from crm_pipelines.core.platform.warehouse import Warehouse; "
                        "from crm_pipelines.settings import DEFAULT_CONFIG_DIR; "
                        "build_lead_scores(Warehouse(sys.argv[1]), load_scoring_rules(DEFAULT_CONFIG_DIR / "
                        "'scoring.yaml'), 'bench')", f"sqlite:///{tmp / 'data' / 'warehouse.db'}"], check=True, cwd=ROOT)
        home = tmp / "home"
        home.mkdir()
        os.environ["DAGSTER_HOME"] = str(home)
        today = datetime.now(timezone.utc).astimezone().strftime("%Y-%m-%d")
        faults = Faults(latency_min=0.0, latency_max=0.3)
        with CrmServer(tmp / "crm.db", custom_properties=ready_portal(), faults=faults) as crm, WebhookSink() as slack:
            _open_hand_offs(f"sqlite:///{tmp / 'data' / 'warehouse.db'}", crm.url, 300)
            env = dict(os.environ, DAGSTER_HOME=str(home), CRM_LANDING_DIR=str(landing),
                       CRM_DATA_DIR=str(tmp / "data"), CRM_API_URL=crm.url, CRM_SALES_SLACK_WEBHOOK_URL=slack.url,
                       GX_ANALYTICS_ENABLED="false", CRM_PARTITION_START="2026-01-01")
            daemon = start_daemon(home, env)
            try:
                wait_until(lambda: sensor_ticked(home), 180, "the daemon's first sensor tick")
                folder = landing / "trade_fair_leads" / today
                folder.mkdir(parents=True, exist_ok=True)
                latencies = []
                timeline: dict[str, tuple[float, float]] = {}   # file name -> (landed, alert arrived)
                for i in range(LEADS):
                    before = len(slack.received)
                    landed = time.time()
                    name = f"Lead{i:03d}"
                    (folder / f"scan_{i:03d}.csv").write_text(
                        "\ufeff" + HEADER + f"TF-B-{i:03d};SPS Nürnberg;{datetime.now():%d.%m.%Y %H:%M};Frau;;Eva;{name};"
                        f"Bench GmbH;Einkauf;Hauptstr. {i + 1};80331;München;Deutschland;;;eva.{i}@bench-gmbh.de;"
                        "Antriebe;;ja\n", encoding="utf-8")
                    wait_until(lambda: any(name in t for t in slack.texts()[before:]), 120, f"the alert of lead {i + 1}")
                    arrived = time.time()
                    latencies.append(arrived - landed)
                    timeline[f"scan_{i:03d}.csv"] = (landed, arrived)
                    if i % 10 == 0 or i == LEADS - 1:
                        log(f"lead {i + 1}/{LEADS}: {arrived - landed:.1f} s from landing to the alert")
            finally:
                stop_daemon(daemon)
            sla_runs = _runs_of(home, "sla_escalation")
            phases = _phases(home, timeline)
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * len(latencies))) - 1)]
        figure("lead_alerts_timed", len(latencies))
        figure("lead_alert_latency_p50_seconds", statistics.median(latencies), "s")
        figure("lead_alert_latency_p95_seconds", p95, "s")
        figure("lead_alert_latency_max_seconds", max(latencies), "s")
        figure("lead_alert_sensor_interval_seconds", 5, "s (new_leads sensor)")
        figure("lead_alert_sla_runs_meanwhile", sla_runs, "sla_escalation runs during the latency run")
        for phase, values in phases.items():
            values.sort()
            figure(f"lead_alert_{phase}_p50_seconds", statistics.median(values), "s")
            figure(f"lead_alert_{phase}_p95_seconds", values[min(len(values) - 1, int(round(0.95 * len(values))) - 1)], "s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_hand_offs(url: str, crm_url: str, n: int) -> None:
    """Earlier hand-offs still open: their CRM tasks exist, a third are due within the SLA window."""
    from datetime import timedelta

    import sqlalchemy as sa

    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.crm.protocol import Task
    from crm_pipelines.core.platform.schema import ALERT_LEDGER
    from crm_pipelines.core.platform.warehouse import Warehouse

    hub = HubSpotConnector.create(crm_url, None)
    now = datetime.now(timezone.utc)
    tasks = [Task(f"lead:bench:{i}", f"Bench {i} anrufen", "", (now + timedelta(hours=1)).isoformat()) for i in range(n)]
    ids = [r.crm_id for k in range(0, n, 100) for r in hub.create_tasks(tasks[k:k + 100])]
    wh = Warehouse(url)
    wh.ensure_tables([ALERT_LEDGER])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(ALERT_LEDGER), [
            {"alert_key": f"lead:bench:{i}", "kind": "trade_fair_lead", "created_at": now - timedelta(hours=2),
             "due_at": now + (timedelta(minutes=5) if i % 3 == 0 else timedelta(hours=1)), "status": "notified",
             "task_crm_id": ids[i], "owner_id": "rep-1", "team": "Süd"} for i in range(n)])
    wh.engine.dispose()


def _phases(home: Path, timeline: dict[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Where each alert's time went, from the runs' records: landing -> run created (the sensor's tick), created ->
    started (launch: queue, a new process loading the code location), started -> the step's start (the executor),
    step start -> the alert arriving (load, match, notify)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    out: dict[str, list[float]] = {"sensor": [], "launch": [], "executor": [], "work": []}
    try:
        for record in instance.get_run_records(filters=dg.RunsFilter(job_name="fast_lead_path")):
            name = (record.dagster_run.tags.get("crm/landing_file") or "").rsplit("/", 1)[-1]
            if name not in timeline or record.start_time is None:
                continue
            landed, arrived = timeline[name]
            steps = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
            step = min((e.timestamp for e in steps), default=record.start_time)
            out["sensor"].append(record.create_timestamp.timestamp() - landed)
            out["launch"].append(record.start_time - record.create_timestamp.timestamp())
            out["executor"].append(step - record.start_time)
            out["work"].append(arrived - step)
    finally:
        instance.dispose()
    return {k: v for k, v in out.items() if v}


def _runs_of(home: Path, job: str) -> int:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return len(instance.get_run_records(filters=dg.RunsFilter(job_name=job)))
    finally:
        instance.dispose()


def scoring_worker() -> None:
    """In its own process: build the events in memory, then time attribution + scoring."""
    import numpy as np
    import pandas as pd

    from crm_pipelines.core.scoring.rules import attribute_events, load_scoring_rules, score_contacts
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    rng = np.random.default_rng(3)
    now = datetime(2026, 11, 20, tzinfo=timezone.utc)
    ids = np.array([f"GC-{i:08d}" for i in range(1, CONTACTS + 1)], dtype=object)
    emails = np.array([f"k{i}@firma{i % 50000}.de" for i in range(CONTACTS)], dtype=object)
    contacts = pd.DataFrame({"golden_id": ids, "email": emails,
                             "job_title": rng.choice(np.array(["Leiter Einkauf", "Konstrukteur", "Geschäftsführer", None],
                                                              dtype=object), CONTACTS),
                             "postal_code": np.char.zfill(rng.integers(1000, 99999, CONTACTS).astype(str), 5),
                             "account_id": np.array([f"GA-{i % 200000:08d}" for i in range(CONTACTS)], dtype=object),
                             "email_consent": None, "erp_customer_number": None})
    accounts = pd.DataFrame({"golden_id": [f"GA-{i:08d}" for i in range(200000)],
                             "industry": rng.choice(["Maschinenbau", "Chemie", "Logistik"], 200000),
                             "employee_count": rng.integers(5, 2000, 200000)})
    kinds = np.array(["page_view", "pricing_page", "demo_video", "whitepaper_download", "webinar_attended", "email_open",
                      "email_click", "unsubscribe"], dtype=object)
    urls = np.array(["https://www.example-maschinenbau.de/produkte/antriebe", "https://www.example-maschinenbau.de/preise",
                     "https://www.example-maschinenbau.de/blog/retrofit", None], dtype=object)
    who = rng.integers(0, CONTACTS, EVENTS)
    identified = rng.random(EVENTS) < 0.5
    events = pd.DataFrame({
        "event_type": pd.Categorical(kinds[rng.choice(len(kinds), EVENTS, p=[.55, .1, .04, .05, .02, .14, .09, .01])]),
        "occurred_at": pd.Timestamp(now) - pd.to_timedelta(rng.integers(0, 180 * 86400, EVENTS), unit="s"),
        "url": pd.Categorical(urls[rng.integers(0, len(urls), EVENTS)]),
        "email": pd.Series(np.where(identified, emails[who], None), dtype=object),
        "crm_contact_id": None,
        "anonymous_id": pd.Series([f"anon-{w:07d}" for w in who], dtype=object),
    })
    rules = load_scoring_rules(DEFAULT_CONFIG_DIR / "scoring.yaml")
    by_email = dict(zip(emails, ids))
    started = time.monotonic()
    events["golden_id"] = attribute_events(events, by_email, {})
    attributed = time.monotonic() - started
    result = score_contacts(events, contacts, accounts, rules, now)
    total = time.monotonic() - started
    print(json.dumps({"seconds": total, "attribution_seconds": attributed,
                      "events_attributed": result.stats["events_attributed"],
                      "by_stage": result.scores["stage"].value_counts().to_dict()}))


def scoring_throughput() -> None:
    log(f"scoring {EVENTS:,} events over {CONTACTS:,} contacts (in its own process)")
    seconds, mem, proc = run_measured([sys.executable, "-m", "benchmarks.bench_leads", "--scoring-worker"],
                                      dict(os.environ))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        raise RuntimeError("the scoring worker failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    tag = f"scoring_{EVENTS // 1_000_000}m_events"
    figure(f"{tag}_seconds", out["seconds"], "s (attribution + scoring)")
    figure(f"{tag}_attribution_seconds", out["attribution_seconds"], "s")
    figure(f"{tag}_per_second", EVENTS / out["seconds"], "events/s")
    figure(f"{tag}_attributed", out["events_attributed"])
    figure(f"{tag}_peak_rss_mb", mem.peak_total / 2**20, "MB (the events in memory included)")
    figure(f"{tag}_process_wall_seconds", seconds, "s (generating the events included)")


def main(argv: list[str]) -> int:
    if "--scoring-worker" in argv:
        scoring_worker()
        return 0
    alert_latency()
    if "--latency-only" not in argv:
        scoring_throughput()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
