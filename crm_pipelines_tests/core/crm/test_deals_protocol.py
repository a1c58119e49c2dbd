"""Deals through HubSpot's protocol against the local CRM: the pipeline's stages with probabilities, the incremental
search on the modification stamp, stage histories read at most 50 at a time, associations to contacts and
companies through the v4 batch read; the server refuses what HubSpot refuses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import requests

from crm_pipelines.core.crm.hubspot import HubSpotConnector, epoch_ms
from crm_pipelines.devtools.crm_server import CrmServer

TOKEN = "deals-test-token"


def iso(days: int) -> str:
    return (datetime(2026, 9, 1, 9, tzinfo=timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def deal(i: int, history: list[tuple[str, str]], contacts=(), companies=()) -> dict:
    return {"id": str(5000 + i), "properties": {"dealname": f"Deal {i}", "amount": str(1000 * i), "pipeline": "default",
                                                "deal_currency_code": "EUR", "closedate": history[-1][1]},
            "history": history, "contacts": list(contacts), "companies": list(companies)}


def test_deals_pipelines_history_and_associations_through_the_protocol():
    with CrmServer(token=TOKEN) as crm:
        crm.seed("contacts", [{"id": "101", "properties": {"email": "a@b.de"}},
                              {"id": "102", "properties": {"email": "c@d.de"}}])
        crm.seed("companies", [{"id": "9001", "properties": {"name": "Firma"}}])
        deals = [deal(i, [("appointmentscheduled", iso(i)), ("contractsent", iso(i + 10))], contacts=[101],
                      companies=[9001]) for i in range(1, 61)]
        deals[0]["history"].append(("closedwon", "2026-11-20T10:00:00Z"))
        deals[1]["contacts"] = [101, 102]
        assert crm.seed_deals(deals) == 60
        hub = HubSpotConnector.create(crm.url, TOKEN)

        [pipeline] = hub.pipelines("deals")
        stages = {s["id"]: s["metadata"] for s in pipeline["stages"]}
        assert stages["closedwon"] == {"isClosed": "true", "probability": "1.0"}
        assert stages["closedlost"]["isClosed"] == "true" and float(stages["contractsent"]["probability"]) < 1

        # Incremental: only what changed at or after the watermark.
        since = epoch_ms("2026-10-25T00:00:00Z")
        changed = list(hub.changed_since("deals", since, ["dealname", "dealstage", "amount"]))
        # Deal i last changed on day i + 10 after 1 September: from deal 44 on; deal 1 closed in November.
        assert {o["id"] for o in changed} == {"5001"} | {str(5000 + i) for i in range(44, 61)}
        assert all(epoch_ms(o["properties"]["hs_lastmodifieddate"]) >= since for o in changed)

        # Histories: 60 deals need two reads of at most 50; newest first, every stage with its time.
        before = hub.stats.requests
        read = hub.read_with_history("deals", [d["id"] for d in deals], ["dealname", "amount", "dealstage"],
                                     ["dealstage"])
        assert len(read) == 60 and hub.stats.requests - before == 2
        history = read["5001"]["propertiesWithHistory"]["dealstage"]
        assert [h["value"] for h in history] == ["closedwon", "contractsent", "appointmentscheduled"]
        assert read["5001"]["properties"]["dealstage"] == "closedwon"

        # A rep moves a deal: the search finds it again, its history grows.
        crm.move_deal("5030", "closedlost", at="2026-12-01T08:00:00Z")
        later = list(hub.changed_since("deals", epoch_ms("2026-11-30T00:00:00Z"), ["dealstage"]))
        assert [o["id"] for o in later] == ["5030"]
        again = hub.read_with_history("deals", ["5030"], ["dealstage"], ["dealstage"])
        assert again["5030"]["propertiesWithHistory"]["dealstage"][0]["value"] == "closedlost"

        links = hub.associations("deals", "contacts", ["5001", "5002", "5003"])
        assert links["5002"] == ["101", "102"] and links["5001"] == ["101"]
        assert hub.associations("deals", "companies", ["5001"]) == {"5001": ["9001"]}

        # What HubSpot refuses, the local CRM refuses: 51 records with history in one read.
        refused = requests.post(f"{crm.url}/crm/v3/objects/deals/batch/read", timeout=5,
                                headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"inputs": [{"id": d["id"]} for d in deals[:51]], "properties": ["dealname"],
                                      "propertiesWithHistory": ["dealstage"]})
        assert refused.status_code == 400 and refused.json()["category"] == "VALIDATION_ERROR"


def test_reads_answered_503_are_retried_and_nothing_is_lost():
    with CrmServer(token=TOKEN, seed=4) as crm:
        crm.seed_deals([deal(i, [("appointmentscheduled", iso(i))]) for i in range(1, 121)])
        crm.set_faults(read_error_rate=0.3)
        hub = HubSpotConnector.create(crm.url, TOKEN, max_attempts=12)
        read = hub.read_with_history("deals", [str(5000 + i) for i in range(1, 121)], ["dealname"], ["dealstage"])
        assert len(read) == 120 and crm.stats()["counts"]["503_injected"] > 0
