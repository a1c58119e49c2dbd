"""Attribution at volume: every model over 10,000,000 touchpoints and 100,000 won deals; and the deal pull.

1,000,000 journeys (``BENCH_JOURNEYS``) with 10 touches on average (``BENCH_TOUCHPOINTS`` in all, a geometric
number per journey: many short journeys, a few long ones) over 180 days on the channels the project knows, with
the mix of a B2B company (web visits most, sales and print few), 60 campaigns; 10 % of the journeys won
(``BENCH_DEALS``: 100,000) with a log-normal revenue, a lead date and a deal date between their touches, the rest
not converted (they count for the Markov chain). Generated in memory in the worker process, then timed: all models
by channel, then all models by channel and campaign. Peak RSS of the process (the touchpoints included).

The deal pull: the local HubSpot-compatible CRM (its own process, answering after 0-300 ms, 2 % of reads 503, 1 % of
requests 429, HubSpot's 190 requests per 10 s and 5 searches per second) holding ``BENCH_CRM_DEALS`` (20,000) deals with a stage history of two to
four stages and a contact and a company each; the first pull (every deal, its history 50 a time, its links), then
reps move 1,000 deals and the incremental pull reads them: seconds and requests of each.
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchmarks.common import figure, log, run_measured

TOUCHPOINTS = int(os.environ.get("BENCH_TOUCHPOINTS", "10000000"))
JOURNEYS = int(os.environ.get("BENCH_JOURNEYS", "1000000"))
DEALS = int(os.environ.get("BENCH_DEALS", "100000"))
CRM_DEALS = int(os.environ.get("BENCH_CRM_DEALS", "20000"))
MOVED = int(os.environ.get("BENCH_CRM_MOVED", "1000"))
LOOP_CONTACTS = int(os.environ.get("BENCH_LOOP_CONTACTS", "1000000"))
CHANNELS = {"web": 0.42, "email": 0.2, "newsletter": 0.12, "web_form": 0.06, "trade_fair": 0.05, "print": 0.04,
            "service": 0.04, "sales": 0.05, "webinar": 0.02}


def worker() -> None:
    import numpy as np
    import pandas as pd

    from crm_pipelines.core.reporting.attribution import attribute

    rng = np.random.default_rng(22)
    started = time.monotonic()
    # Touches per journey: geometric around the mean, adjusted to the total.
    per = rng.geometric(JOURNEYS / TOUCHPOINTS, JOURNEYS)
    per = np.maximum(1, np.round(per * TOUCHPOINTS / per.sum()).astype(np.int64))
    journey = np.repeat(np.arange(JOURNEYS, dtype=np.int64), per)[:TOUCHPOINTS]
    n = len(journey)
    names = np.array(list(CHANNELS), dtype=object)
    p = np.array(list(CHANNELS.values()))
    channel = pd.Categorical.from_codes(rng.choice(len(names), n, p=p / p.sum()), categories=names)
    campaign = pd.Categorical.from_codes(rng.integers(0, 60, n), categories=[f"k{i:02d}" for i in range(60)])
    t0 = pd.Timestamp("2026-06-01", tz="UTC").value // 10**9
    at = pd.to_datetime(t0 + rng.integers(0, 180 * 86400, n), unit="s", utc=True)
    touches = pd.DataFrame({"journey": journey, "channel": channel, "campaign": campaign, "at": at})
    won = rng.choice(JOURNEYS, DEALS, replace=False)
    closed = pd.to_datetime(t0 + 180 * 86400 - rng.integers(0, 20 * 86400, DEALS), unit="s", utc=True)
    lead = closed - pd.to_timedelta(rng.integers(30, 150, DEALS), unit="D")
    deal = closed - pd.to_timedelta(rng.integers(5, 30, DEALS), unit="D")
    outcomes = pd.DataFrame({"journey": won, "revenue": np.round(rng.lognormal(9.5, 1.0, DEALS), 2),
                             "closed_at": closed, "lead_at": lead, "deal_at": deal})
    generated = time.monotonic() - started
    print(f"# generated {n:,} touchpoints of {JOURNEYS:,} journeys, {DEALS:,} won, in {generated:.1f} s",
          file=sys.stderr, flush=True)

    started = time.monotonic()
    by_channel = attribute(touches, outcomes)
    channel_seconds = time.monotonic() - started
    print(f"# all models by channel in {channel_seconds:.1f} s", file=sys.stderr, flush=True)
    started = time.monotonic()
    by_campaign = attribute(touches, outcomes, by=("channel", "campaign"))
    campaign_seconds = time.monotonic() - started
    sums = {m: float(by_channel.credits[m].sum()) for m in by_channel.credits.columns if m != "channel"}
    print(json.dumps({
        "touchpoints": n, "journeys": JOURNEYS, "won": DEALS, "credited_touches": by_channel.touches,
        "revenue": by_channel.revenue, "unattributed": by_channel.unattributed,
        "by_channel_seconds": channel_seconds, "by_channel_campaign_seconds": campaign_seconds,
        "groups": len(by_campaign.credits), "max_sum_error": max(abs(v - by_channel.revenue) for v in sums.values()),
        "markov_conversion_probability": by_channel.conversion_probability,
        "markov_print_share": float(by_channel.credits.set_index("channel").loc["print", "markov"] / by_channel.revenue),
    }))


def closed_loop() -> None:
    """The reporting group's own steps at company scale: journeys (deals, repeat orders, the rest), all models by
    channel and campaign, the campaign economics, on ``LOOP_CONTACTS`` contacts in eight per account, ten touches
    each, a deal for one account in ten (a quarter won), three repeat orders per account in the half year."""
    import numpy as np
    import pandas as pd

    from crm_pipelines.core.reporting.economics import economics, journeys, run_attribution
    from crm_pipelines.core.reporting.revenue import Deals
    from crm_pipelines.core.reporting.settings import load_reporting_settings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    settings = load_reporting_settings(DEFAULT_CONFIG_DIR / "reporting.yaml")
    rng = np.random.default_rng(23)
    n = LOOP_CONTACTS
    accounts = max(1, n // 8)
    t0 = pd.Timestamp("2026-06-01", tz="UTC").value // 10**9
    started = time.monotonic()
    gid = pd.Index([f"GC-{i:08d}" for i in range(n)])
    account_of = rng.integers(0, accounts, n)
    acc = pd.Index([f"GA-{i:08d}" for i in range(accounts)])
    contacts = pd.DataFrame({"golden_id": gid, "account_id": acc[account_of],
                             "lead_at": pd.to_datetime(t0 - rng.integers(0, 400 * 86400, n), unit="s", utc=True)})
    m = n * 10
    who = rng.integers(0, n, m)
    names = np.array(list(CHANNELS), dtype=object)
    p = np.array(list(CHANNELS.values()))
    touches = pd.DataFrame({"touch_key": np.arange(m).astype(str), "golden_id": gid[who],
                            "channel": names[rng.choice(len(names), m, p=p / p.sum())],
                            "campaign": np.array([f"k{i:02d}" for i in range(60)], dtype=object)[rng.integers(0, 60, m)],
                            "at": pd.to_datetime(t0 + rng.integers(0, 180 * 86400, m), unit="s", utc=True)})
    k = max(1, accounts // 10)
    deal_accounts = rng.choice(accounts, k, replace=False)
    created = t0 + rng.integers(0, 150 * 86400, k)
    won = rng.random(k) < 0.25
    deal_ids = np.array([f"D{i}" for i in range(k)], dtype=object)
    deals = pd.DataFrame({"deal_id": deal_ids, "is_closed": True, "is_won": won,
                          "created_at": pd.to_datetime(created, unit="s", utc=True),
                          "close_date": pd.to_datetime(created + rng.integers(10, 60, k) * 86400, unit="s", utc=True),
                          "account_id": acc[deal_accounts], "amount": np.round(rng.lognormal(9.8, 0.9, k), 2)})
    by_account = pd.DataFrame({"account_id": acc[account_of], "golden_id": gid}).groupby("account_id")["golden_id"].first()
    links = pd.DataFrame({"deal_id": deal_ids, "golden_id": by_account.reindex(acc[deal_accounts]).to_numpy()}).dropna()
    orders = accounts * 3
    lines = pd.concat([
        pd.DataFrame({"kind": "deal", "deal_id": deal_ids[won], "order_id": None, "account_id": acc[deal_accounts][won],
                      "booked_at": deals["close_date"][won].to_numpy(), "net": deals["amount"][won].to_numpy()}),
        pd.DataFrame({"kind": "order", "deal_id": None, "order_id": np.arange(orders).astype(str),
                      "account_id": acc[rng.integers(0, accounts, orders)],
                      "booked_at": pd.to_datetime(t0 + rng.integers(0, 180 * 86400, orders), unit="s", utc=True),
                      "net": np.round(rng.lognormal(7.5, 1.0, orders), 2)})], ignore_index=True)
    segments = pd.DataFrame({"golden_id": gid[rng.random(n) < 0.3]})
    segments["segment"] = np.array(["churn_risk", "hot_leads", "inactive", "nurture", "new"], dtype=object)[
        rng.integers(0, 5, len(segments))]
    costs = pd.DataFrame({"campaign": [f"k{i:02d}" for i in range(60)], "channel": "web", "period": "2026-09",
                          "amount": 5000.0, "currency": "EUR", "note": "", "cost": 5000.0})
    generated = time.monotonic() - started
    started = time.monotonic()
    j = journeys(touches, Deals(deals, links), lines, contacts, settings)
    journey_seconds = time.monotonic() - started
    started = time.monotonic()
    result = run_attribution(j, settings, by=("channel", "campaign"))
    attribution_seconds = time.monotonic() - started
    started = time.monotonic()
    e = economics(j, costs, settings, segments)
    economics_seconds = time.monotonic() - started
    print(json.dumps({"contacts": n, "touches": m, "deals": k, "won": int(won.sum()), "orders": orders,
                      "journey_touches": len(j.touches), "outcomes": len(j.outcomes), "generated_seconds": generated,
                      "journeys_seconds": journey_seconds, "attribution_seconds": attribution_seconds,
                      "economics_seconds": economics_seconds, "revenue": result.revenue,
                      "campaigns": len(e.campaigns)}))


def deal_pull() -> None:
    import random
    import subprocess
    import tempfile
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    import requests

    from benchmarks.common import ROOT
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.platform.warehouse import Warehouse
    from crm_pipelines.core.reporting.deals import pull_deals
    from crm_pipelines.devtools.crm_server import CrmServer
    from crm_pipelines.devtools.crm_server.deals import STAGES
    from crm_pipelines.devtools.processes import free_port, wait_until

    rng = random.Random(5)
    start = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    with tempfile.TemporaryDirectory(prefix="bench-deals-") as tmp:
        db = Path(tmp) / "crm.db"
        log(f"seeding {CRM_DEALS:,} deals into the local CRM")
        seeder = CrmServer(db)
        open_stages = [s[0] for s in STAGES if not s[3]]
        deals = []
        for i in range(CRM_DEALS):
            t = start + timedelta(hours=rng.randint(0, 300 * 24))
            steps = rng.randint(1, 3)
            history = [(open_stages[k], iso(t + timedelta(days=6 * k))) for k in range(steps)]
            if rng.random() < 0.4:
                history.append((rng.choice(("closedwon", "closedlost")), iso(t + timedelta(days=6 * steps + 3))))
            deals.append({"id": str(1_000_000 + i), "history": history, "contacts": [100_000 + i % 50_000],
                          "companies": [9_000_000 + i % 8_000],
                          "properties": {"dealname": f"Deal {i}", "amount": str(rng.randint(5, 400) * 500),
                                         "pipeline": "default", "deal_currency_code": "EUR",
                                         "closedate": history[-1][1]}})
        seeder.seed_deals(deals)
        seeder.db.close()
        seeder.httpd.server_close()
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "crm_pipelines.devtools.crm_server", "--db", str(db), "--port",
                                   str(port), "--latency", "0", "0.3", "--read-error-rate", "0.02",
                                   "--throttle-rate", "0.01"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            def up() -> bool:
                try:
                    return requests.get(url + "/_stats", timeout=2).ok
                except requests.RequestException:
                    return False

            wait_until(up, 60, "the local CRM")
            hub = HubSpotConnector.create(url, None)
            wh = Warehouse(f"sqlite:///{Path(tmp) / 'warehouse.db'}")
            started = time.monotonic()
            first = pull_deals(wh, hub, "bench-full")
            full_seconds, full_requests = time.monotonic() - started, hub.stats.requests
            figure("deal_pull_full_deals", first.loaded)
            figure("deal_pull_full_seconds", full_seconds, "s")
            figure("deal_pull_full_requests", full_requests)
            figure("deal_pull_full_stage_changes", first.stage_changes)
            # Reps move deals: stage changes a day after the newest seeded change.
            moved = rng.sample(range(CRM_DEALS), MOVED)
            later = start + timedelta(days=400)
            for n, i in enumerate(moved):
                requests.post(f"{url}/_move_deal", json={"id": str(1_000_000 + i), "stage": "closedwon",
                                                        "at": iso(later + timedelta(seconds=n))}, timeout=10)
            before = hub.stats.requests
            started = time.monotonic()
            again = pull_deals(wh, hub, "bench-incremental")
            figure("deal_pull_incremental_read", again.read, f"({MOVED:,} moved, plus the deal at the watermark)")
            figure("deal_pull_incremental_seconds", time.monotonic() - started, "s")
            figure("deal_pull_incremental_requests", hub.stats.requests - before)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _measured(flag: str):
    """This module run with ``flag`` in a process of its own: wall seconds, memory, and its last line's JSON."""
    seconds, mem, proc = run_measured([sys.executable, "-m", "benchmarks.bench_attribution", flag], dict(os.environ))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], file=sys.stderr)
        raise RuntimeError(f"the {flag} worker failed")
    for line in proc.stdout.splitlines():
        if line.startswith("#"):
            print(line, file=sys.stderr)
    return seconds, mem, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if "--worker" in argv:
        worker()
        return 0
    if "--closed-loop" in argv:
        closed_loop()
        return 0
    if "--deals-only" in argv:
        deal_pull()
        return 0
    log(f"attribution over {TOUCHPOINTS:,} touchpoints, {DEALS:,} won journeys (in its own process)")
    seconds, mem, out = _measured("--worker")
    figure("attribution_touchpoints", out["touchpoints"])
    figure("attribution_won_journeys", out["won"])
    figure("attribution_credited_touches", out["credited_touches"], "(touches of won journeys up to their close)")
    figure("attribution_all_models_by_channel_seconds", out["by_channel_seconds"], "s (8 models)")
    figure("attribution_all_models_by_channel_and_campaign_seconds", out["by_channel_campaign_seconds"],
           f"s ({out['groups']} groups)")
    figure("attribution_peak_rss_mb", mem.peak_total / 2**20, "MB (the touchpoints in memory included)")
    figure("attribution_process_wall_seconds", seconds, "s (generating the touchpoints included)")
    figure("attribution_credit_sum_max_error", out["max_sum_error"], "EUR (each model's credits against the revenue)")
    figure("attribution_markov_conversion_probability", out["markov_conversion_probability"])
    deal_pull()
    log(f"the reporting group's steps over {LOOP_CONTACTS:,} contacts (in its own process)")
    _, mem, loop = _measured("--closed-loop")
    figure("closed_loop_contacts", loop["contacts"], f"({loop['touches']:,} touches, {loop['deals']:,} closed deals, "
                                                     f"{loop['won']:,} won, {loop['orders']:,} repeat orders)")
    figure("closed_loop_journey_touches", loop["journey_touches"], f"({loop['outcomes']:,} outcomes)")
    figure("closed_loop_journeys_seconds", loop["journeys_seconds"], "s")
    figure("closed_loop_attribution_seconds", loop["attribution_seconds"], "s (8 models, channel and campaign)")
    figure("closed_loop_economics_seconds", loop["economics_seconds"], "s")
    figure("closed_loop_peak_rss_mb", mem.peak_total / 2**20, "MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
