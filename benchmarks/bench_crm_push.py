"""CRM push throughput on realistic mixed data, at HubSpot's real rate limit and real answer times.

100,000 golden contacts (BENCH_PUSH_CONTACTS) of 10,000 companies, as a first push into a portal that
already holds about 60 % of them (the CRM snapshot: sales set their lifecycle stages, most are
linked to their company) and every company (pushed before):

- 60 % existing contacts whose data changed: updates by CRM ID, stage never lowered (the mirror of
  the CRM, ``ops.crm_remote``, is filled by a real pull first, outside the timing), 15 % of them
  not yet linked to their company;
- 40 % new contacts: upserts keyed by golden ID, each linked to its company (association calls,
  1,000 pairs each, from the sender threads); 0.2 % of them are people the CRM has under a record
  the golden layer does not know ("Contact already exists": adopted);
- 0.5 % malformed e-mails: invalid, never sent.

The sync engine (plan, batches of 100 grouped by operation, commits per batch into a SQLite
warehouse) talks through the HubSpot connector and its limiter (190 requests / 10 s) to the local
CRM server in its own process, with the same limit, the portal's custom properties, and:

- ``clean``: answers at once;
- ``latency``: every answer after 0-300 ms (uniform), as HubSpot's API answers;
- ``faults``: the latency plus 5 % of writes answered 500, 1 % of requests 429, 1 % of writes applied
  and then the connection dropped.

The ceiling is 100 records x 19 requests/s = 1,900 records/s; records/s counts the rows that went
out and were accepted (created, updated, adopted). Afterwards the server's own state is counted:
every contact there exactly once (zero lost, zero duplicated), no stage lowered, and the most
requests the server saw in any 10-second window.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from benchmarks.common import ROOT, TreeMemory, figure, log, ready_portal

CEILING = 100 * 190 / 10  # records per second
STAGES = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"]
SCENARIOS = {"clean": [], "latency": ["--latency", "0", "0.3"],
             "faults": ["--latency", "0", "0.3", "--error-rate", "0.05", "--throttle-rate", "0.01",
                        "--drop-rate", "0.01"]}


def world(n: int, seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame, list[dict], list[dict]]:
    """Golden accounts and contacts, and the CRM's companies and contacts before the push."""
    rng = np.random.default_rng(seed)
    companies = max(1, n // 10)
    first = ["Jürgen", "Anna", "Özlem", "Hans-Peter", "Marie", "Łukasz", "Sabine", "Thomas"]
    last = ["Müller", "Schmidt", "Weiß", "Bäcker", "von der Heide", "Kowalczyk", "Groß", "Nguyen"]
    accounts = pd.DataFrame({"golden_id": [f"GA-{i:08d}" for i in range(1, companies + 1)],
                             "company_name": [f"Firma {i} GmbH & Co. KG" for i in range(1, companies + 1)]})
    account_of = rng.integers(1, companies + 1, size=n)
    existing = rng.random(n) < 0.6
    contacts = pd.DataFrame({
        "golden_id": [f"GC-{i:08d}" for i in range(1, n + 1)],
        "email": [f"kontakt{i}@firma{a}.de" for i, a in zip(range(1, n + 1), account_of)],
        "salutation": np.where(rng.random(n) < 0.5, "Frau", "Herr"),
        "first_name": [first[i % len(first)] for i in range(n)],
        "last_name": [last[(i // 8) % len(last)] for i in range(n)],
        "phone": [f"+49351{4700000 + i}" for i in range(n)],
        "job_title": np.where(rng.random(n) < 0.5, "Einkauf", None),
        "company_name": [f"Firma {a} GmbH & Co. KG" for a in account_of],
        "street": "Hauptstraße", "house_number": [str(1 + i % 200) for i in range(n)],
        "postal_code": [f"{1067 + i % 90000:05d}" for i in range(n)], "city": "Dresden", "country": "DE",
        "account_id": [f"GA-{a:08d}" for a in account_of],
        "sources": np.where(rng.random(n) < 0.1, "newsletter_signups", "web_form_leads"),
        "email_consent": np.where(rng.random(n) < 0.7, "granted", "unconfirmed"),
        "crm_contact_id": [str(1_000_000 + i) if e else None for i, e in enumerate(existing)],
    })
    contacts["score_stage"] = rng.choice([None, "mql", "sql"], size=n, p=[0.8, 0.15, 0.05])
    bad = rng.random(n) < 0.005
    contacts.loc[bad, "email"] = contacts.loc[bad, "email"].str.replace("@", " at ", regex=False)
    crm_companies = [{"id": str(500_000 + i), "properties": {"name": f"Firma {i} GmbH & Co. KG", "crm_golden_id":
                                                              f"GA-{i:08d}"}} for i in range(1, companies + 1)]
    linked = rng.random(n) < 0.85
    crm_contacts = [{"id": str(1_000_000 + i), "properties": {
        "email": contacts.at[i, "email"].lower().replace(" at ", "@"), "lastname": "Alt",
        "lifecyclestage": STAGES[int(rng.integers(len(STAGES)))],
        "jobtitle": "Leitung Einkauf" if i % 3 == 0 else None,
        "associatedcompanyid": str(500_000 + int(account_of[i])) if linked[i] else None}}
        for i in np.flatnonzero(existing)]
    # People the CRM has under a record the golden layer does not know (their CRM record was quarantined).
    unknown = np.flatnonzero(~existing & ~bad & (rng.random(n) < 0.002))
    crm_contacts += [{"id": str(3_000_000 + i), "properties": {"email": contacts.at[i, "email"], "lastname": "Alt"}}
                     for i in unknown]
    return accounts, contacts, crm_companies, crm_contacts


def prepare(work: Path, n: int) -> tuple[Path, Path, pd.DataFrame, dict]:
    """The portal's database and a warehouse that pushed the companies and pulled the CRM once."""
    from crm_pipelines.core.crm.changes import pull_changes
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.crm.payloads import build_payload
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.core.platform.schema import CRM_SYNC_STATE
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.sources.mapping import load_mappings
    from crm_pipelines.devtools.crm_server import CrmServer
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    settings = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
    accounts, contacts, crm_companies, crm_contacts = world(n)
    db, wh_file = work / "crm.db", work / "warehouse.db"
    with CrmServer(db, max_requests=100_000, custom_properties=ready_portal()) as crm:
        crm.seed("companies", crm_companies)
        crm.seed("contacts", crm_contacts)
        wh = Warehouse(f"sqlite:///{wh_file}")
        wh.ensure_tables([CRM_SYNC_STATE])
        state = pd.DataFrame({"object_type": "companies", "golden_id": accounts["golden_id"],
                              "crm_id": [c["id"] for c in crm_companies], "payload_hash": None, "last_status": "created",
                              "last_message": None, "last_synced_at": pd.Timestamp("2026-11-01", tz="UTC"),
                              "last_run_id": "earlier", "attempts": 1, "associated_crm_id": None})
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, CRM_SYNC_STATE, state)
        log(f"pulling the CRM once ({len(crm_contacts):,} contacts, {len(crm_companies):,} companies) for the mirror")
        fast = HubSpotConnector.create(crm.url, None, max_requests=100_000)
        pull_changes(wh, fast, settings, load_mappings(DEFAULT_CONFIG_DIR), work / "landing", "2026-12-01", "bench")
        wh.engine.dispose()
    payload = build_payload(contacts, settings.objects["contacts"])
    stages_before = {c["id"]: c["properties"]["lifecyclestage"] for c in crm_contacts
                     if c["properties"].get("lifecyclestage")}
    return db, wh_file, payload, stages_before


def start_server(db: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "crm_pipelines.devtools.crm_server", "--db", str(db), "--port", "0",
                             "--max-requests", "190", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the socket is bound: the server is ready
    return proc, line.split(" on ", 1)[1].split(" ", 1)[0]


def run(label: str, base: Path, db: Path, wh_file: Path, payload: pd.DataFrame, stages_before: dict) -> None:
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.core.crm.sync import push
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.devtools.crm_server import CrmServer
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    settings = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
    work = base / label
    work.mkdir()
    # With their WAL files and, for the warehouse, its layers (SQLite: one attached file per schema).
    for source in (db, wh_file):
        for f in source.parent.glob(source.stem + ".*"):
            shutil.copy(f, work / f.name)
    server, url = start_server(work / "crm.db", *SCENARIOS[label])
    try:
        wh = Warehouse(f"sqlite:///{work / 'warehouse.db'}")
        connector = HubSpotConnector.create(url, None, max_requests=settings.max_requests,
                                            window_seconds=settings.window_seconds, timeout=30, max_attempts=10)
        spec = settings.objects["contacts"]
        log(f"{label}: pushing {len(payload):,} contacts to {url}")
        with TreeMemory(os.getpid()) as mem:
            started = time.monotonic()
            report = push(wh, connector, payload, spec, settings, f"bench-{label}", log=lambda m: log(f"{label}: {m}"))
            seconds = time.monotonic() - started
        stats = requests.get(f"{url}/_stats", timeout=10).json()
        wh.engine.dispose()
    finally:
        server.terminate()
        server.wait(timeout=30)
    with CrmServer(work / "crm.db") as crm:  # the portal's own state, read directly
        stored = crm.objects("contacts")
        lowered = sum(1 for o in stored if o["id"] in stages_before
                      and _rank(o["properties"].get("lifecyclestage")) < _rank(stages_before[o["id"]]))
    accepted = report.created + report.updated
    wanted = set(payload["golden_id"][payload["email"].fillna("").str.contains("@")])
    ext = [o["ext_id"] for o in stored if o["ext_id"]]
    rate = accepted / seconds
    tag = f"push_{len(payload) // 1000}k_mixed_{label}"
    figure(f"{tag}_wall_seconds", seconds, "s")
    figure(f"{tag}_records_per_second", rate, "records/s")
    figure(f"{tag}_ratio_to_ceiling", round(rate / CEILING, 3), f"(ceiling {CEILING:.0f} records/s)")
    figure(f"{tag}_created_updated_adopted", f"{report.created}/{report.updated - report.adopted}/{report.adopted}")
    figure(f"{tag}_invalid_not_sent", report.invalid)
    figure(f"{tag}_associations", report.associated)
    figure(f"{tag}_requests", report.requests)
    figure(f"{tag}_records_per_request", round(accepted / max(report.requests, 1), 1))
    figure(f"{tag}_http_500_answered", stats["counts"].get("500_injected", 0))
    figure(f"{tag}_http_429_answered", stats["counts"].get("429_injected", 0) + stats["counts"].get("429_limit", 0))
    figure(f"{tag}_dropped_after_apply", stats["counts"].get("dropped_after_apply", 0))
    figure(f"{tag}_server_peak_requests_in_window", stats["peak_window"], f"(limit {stats['max_requests']} / "
           f"{stats['window_seconds']:g} s)")
    figure(f"{tag}_lost", len(wanted - set(ext)))
    figure(f"{tag}_duplicated", len(ext) - len(set(ext)))
    figure(f"{tag}_stages_lowered", lowered)
    figure(f"{tag}_rows_not_accepted", report.rejected + report.failed)
    figure(f"{tag}_client_peak_rss_mb", mem.peak_total / 2**20, "MB")


def _rank(stage) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


def main() -> int:
    n = int(os.environ.get("BENCH_PUSH_CONTACTS", "100000"))
    base = Path(tempfile.mkdtemp(prefix="bench-push-"))
    try:
        db, wh_file, payload, stages_before = prepare(base, n)
        for label in SCENARIOS:
            run(label, base, db, wh_file, payload, stages_before)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
