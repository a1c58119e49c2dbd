"""Deals pulled from the local CRM through HubSpot's protocol: a first full pull, then only what changed, each
deal's stage history and links, an unreadable amount quarantined with its field while the deal is kept."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.platform.schema import CRM_DEAL_LINKS, CRM_DEAL_STAGES, CRM_DEALS, QUARANTINE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.reporting.deals import pull_deals
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines_tests.core.crm.test_deals_protocol import TOKEN, deal, iso


def test_deals_are_pulled_incrementally_with_their_stage_history(sqlite_url):
    wh = Warehouse(sqlite_url)
    with CrmServer(token=TOKEN) as crm:
        crm.seed("contacts", [{"id": "101", "properties": {"email": "a@b.de"}}])
        crm.seed("companies", [{"id": "9001", "properties": {"name": "Firma"}}])
        deals = [deal(i, [("appointmentscheduled", iso(i)), ("contractsent", iso(i + 10))], contacts=[101],
                      companies=[9001]) for i in range(1, 121)]
        deals[0]["history"].append(("closedwon", iso(40)))
        deals[1]["properties"]["amount"] = "12k"          # typed into the CRM by hand
        crm.seed_deals(deals)
        hub = HubSpotConnector.create(crm.url, TOKEN)

        first = pull_deals(wh, hub, "run-1")
        assert (first.full, first.read, first.loaded, first.quarantined) == (True, 120, 120, 1)
        assert first.by_stage == {"contractsent": 119, "closedwon": 1}
        rows = wh.read_select(sa.select(CRM_DEALS)).set_index("deal_id")
        won = rows.loc["5001"]
        assert won["is_won"] and won["is_closed"] and won["probability"] == 1.0 and won["amount"] == 1000.0
        assert pd.isna(rows.loc["5002", "amount"]) and rows.loc["5002", "stage"] == "contractsent"   # kept
        bad = wh.read_select(sa.select(QUARANTINE).where(QUARANTINE.c.source == "crm_deals")).iloc[0]
        assert (bad["source_record_id"], bad["fields"], bad["reason"]) == ("5002", "amount", "amount: not a number")
        stages = wh.read_select(sa.select(CRM_DEAL_STAGES).where(CRM_DEAL_STAGES.c.deal_id == "5001"))
        assert sorted(stages["stage"]) == ["appointmentscheduled", "closedwon", "contractsent"]
        assert wh.scalar(sa.select(sa.func.count()).select_from(CRM_DEAL_LINKS)) == 240

        # Nothing changed: nothing read but the search. A rep wins deal 77: only it comes again.
        assert pull_deals(wh, hub, "run-2").loaded == 1     # the newest deal again (the watermark is inclusive)
        crm.move_deal("5077", "closedwon", at="2027-02-01T08:00:00Z", amount="77000")
        before = hub.stats.requests
        third = pull_deals(wh, hub, "run-3")
        # The deal at the watermark comes again (the search is inclusive: nothing at that moment is missed).
        assert (third.full, third.read) == (False, 2) and hub.stats.requests - before <= 5
        row = wh.read_select(sa.select(CRM_DEALS).where(CRM_DEALS.c.deal_id == "5077")).iloc[0]
        assert row["stage"] == "closedwon" and row["amount"] == 77000.0 and row["is_won"]
        history = wh.read_select(sa.select(CRM_DEAL_STAGES).where(CRM_DEAL_STAGES.c.deal_id == "5077"))
        assert len(history) == 3 and wh.scalar(sa.select(sa.func.count()).select_from(CRM_DEALS)) == 120
