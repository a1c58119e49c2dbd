"""Segments back into the CRM as HubSpot lists: membership follows the segment, only what we added is
removed, suppressed contacts and contacts the CRM does not know stay off."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crm_pipelines.core.activation.crm_lists import sync_crm_lists
from crm_pipelines.core.activation.membership import update_segments
from crm_pipelines.core.activation.segments import load_segment
from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.platform.schema import CRM_SYNC_STATE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.devtools.crm_server import CrmServer

from .world import HASHER, NOW, add_contacts, email, gid, set_contact

TOKEN = "lists-token"


def _members(crm: CrmServer, name: str) -> set[str]:
    lid = crm.db.execute("SELECT id FROM lists WHERE name = ?", (name,)).fetchone()[0]
    return {str(r) for (r,) in crm.db.execute("SELECT record_id FROM list_members WHERE list_id = ?", (lid,))}


def test_hot_segment_as_a_crm_list(tmp_path: Path, sqlite_url):
    wh = Warehouse(sqlite_url)
    add_contacts(wh, list(range(1, 11)))
    seg_file = tmp_path / "hot.yaml"
    seg_file.write_text("name: hot\ndescription: t\nconditions:\n  - {field: lead.stage, in: [sql]}\n"
                        "destinations:\n  crm: {list: 'crm_pipelines: Heiße Leads'}\n", encoding="utf-8")
    segments = {"hot": load_segment(seg_file)}
    with CrmServer(token=TOKEN) as crm:
        # Contacts 1..8 are in the CRM (pushed earlier); 9 and 10 are not.
        crm.seed("contacts", [{"id": 100 + i, "properties": {"email": email(i)}} for i in range(1, 9)])
        wh.ensure_tables([CRM_SYNC_STATE])
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, CRM_SYNC_STATE, pd.DataFrame({
                "object_type": "contacts", "golden_id": [gid(i) for i in range(1, 9)],
                "crm_id": [str(100 + i) for i in range(1, 9)], "last_status": "updated", "last_synced_at": NOW,
                "last_run_id": "r", "attempts": 1}))
        connector = HubSpotConnector.create(crm.url, TOKEN)
        for i in (1, 2, 3, 9):
            set_contact(wh, i, stage="sql")
        update_segments(wh, segments, "r1", now=NOW)
        SuppressionList(wh, HASHER).add([("email", HASHER.email(email(3)))], subject="s", reason="objection", request_id="q")
        screen = SuppressionList(wh, HASHER).screen()
        [res] = sync_crm_lists(wh, connector, segments, screen, HASHER)
        assert (res.wanted, res.suppressed, res.not_in_crm, res.added) == (4, 1, 1, 2)
        assert _members(crm, "crm_pipelines: Heiße Leads") == {"101", "102"}
        # A rep adds contact 5 by hand; 1 leaves the segment, 4 enters.
        lid = crm.db.execute("SELECT id FROM lists").fetchone()[0]
        crm.change_members(str(lid), ["105"], add=True)
        set_contact(wh, 1, stage="mql")
        set_contact(wh, 4, stage="sql")
        update_segments(wh, segments, "r2", now=NOW)
        [res] = sync_crm_lists(wh, connector, segments, screen, HASHER)
        assert (res.added, res.removed) == (1, 1)
        assert _members(crm, "crm_pipelines: Heiße Leads") == {"102", "104", "105"}
        # Re-entry; and nothing changes when nothing changed.
        set_contact(wh, 1, stage="sql")
        update_segments(wh, segments, "r3", now=NOW)
        sync_crm_lists(wh, connector, segments, screen, HASHER)
        assert _members(crm, "crm_pipelines: Heiße Leads") == {"101", "102", "104", "105"}
        before = crm.stats()["counts"].get("list_adds", 0)
        [res] = sync_crm_lists(wh, connector, segments, screen, HASHER)
        assert (res.added, res.removed) == (0, 0) and crm.stats()["counts"].get("list_adds", 0) == before
        assert connector.list_members(str(lid)) == ["101", "102", "104", "105"]
