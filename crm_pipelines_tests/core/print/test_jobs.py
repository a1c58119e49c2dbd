"""Single-recipient print jobs: each queued job its own one-recipient list, printed at once under the standing
approval of the campaign's template; dropped with the list's reason, merged when a person is queued twice, rebuilt
when the person or the rules changed while it waited."""

from __future__ import annotations

import csv
import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import PRINT_LISTS, PRINT_QUEUE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.jobs import approve_template, print_jobs, template_proof
from crm_pipelines.core.print.release import PrintSettings, ReleaseRefused
from crm_pipelines.core.print.rules import load_campaign
from crm_pipelines.settings import DEFAULT_CONFIG_DIR
from crm_pipelines_tests.core.activation.world import NOW, add_contacts, gid, remove_contact, set_contact


class Screen:
    """Suppresses the golden IDs it is given (the real screen matches identities; here the test decides)."""

    def __init__(self, *ids):
        self.ids = set(ids)
        self.empty = not self.ids

    def suppressed(self, frame):
        return frame["golden_id"].isin(self.ids).to_numpy() if len(frame) else np.zeros(0, bool)


def queue(wh: Warehouse, jobs: list[tuple[str, int]]) -> None:
    wh.ensure_tables([PRINT_QUEUE])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(PRINT_QUEUE), [{"alert_key": key, "golden_id": gid(i), "campaign": "broschuere",
                                               "queued_at": NOW + timedelta(seconds=n), "status": "queued"}
                                              for n, (key, i) in enumerate(jobs)])


def statuses(wh: Warehouse) -> dict[str, tuple]:
    q = wh.read_select(sa.select(PRINT_QUEUE))
    return {k: (s, r) for k, s, r in zip(q["alert_key"], q["status"], q["reason"])}


@pytest.fixture
def world(sqlite_url, tmp_path):
    wh = Warehouse(sqlite_url)
    # 1, 3, 5: customers (post allowed on the customer relationship); 2: a prospect without postal consent.
    add_contacts(wh, [1, 2, 3, 4, 5], erp={1: "K1", 3: "K3", 4: "K4", 5: "K5"})
    settings = PrintSettings(tmp_path / "outbox", 30, tmp_path / "approvals", None)
    campaign = load_campaign(DEFAULT_CONFIG_DIR / "campaigns" / "broschuere.yaml")
    return wh, settings, campaign, tmp_path / "lists"


def test_each_job_is_printed_for_its_one_person_once_the_template_is_approved(world):
    wh, settings, campaign, root = world
    assert campaign.delivery == "single"
    queue(wh, [("sql:1", 1), ("sql:2", 2), ("journey:hot:3:1", 3), ("sql:3", 3), ("sql:4", 4)])
    remove_contact(wh, 4)      # erased after the job was queued
    first = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-1")
    # No template approval yet: the lists are built and wait; nothing reaches the outbox.
    assert (first.jobs, first.printed, first.waiting, first.merged) == (5, 0, 2, 1)
    assert first.dropped == {"no_postal_consent": 1, "erased": 1} and first.balanced
    assert not settings.outbox.exists()
    proof = first.template_proof
    assert proof.endswith("proof.pdf") and campaign.sha256[:12] in proof
    import pypdfium2
    text = "".join(p.get_textpage().get_text_range() for p in pypdfium2.PdfDocument(proof))
    assert campaign.sha256[:16] in text and "Mustermann" in text   # a specimen, nobody's data
    assert "medizintechnik" in text and "allgemein" in text         # every variant

    with pytest.raises(ReleaseRefused, match="rules changed"):
        approve_template(wh, campaign, "K. Berger", "0" * 16, root)
    approve_template(wh, campaign, "K. Berger", campaign.sha256[:16], root)
    second = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-2")
    assert (second.jobs, second.printed, second.waiting) == (2, 2, 0) and second.balanced
    files = sorted(settings.outbox.glob("*.csv"))
    assert len(files) == 2
    for f in files:
        rows = list(csv.DictReader(f.open(encoding="utf-8"), delimiter=";"))
        assert len(rows) == 1                      # one recipient per print job
    jobs = statuses(wh)
    assert jobs["sql:1"][0] == jobs["journey:hot:3:1"][0] == "printed"
    assert jobs["sql:3"][0] == "merged" and jobs["sql:2"] == ("dropped", "no_postal_consent")
    lists = wh.read_select(sa.select(PRINT_LISTS).where(PRINT_LISTS.c.status == "released"))
    assert lists["approved_by"].str.startswith("K. Berger (Vorlage").all() and (lists["recipients"] == 1).all()
    # The lists were the ones built while waiting: not built twice.
    assert wh.scalar(sa.select(sa.func.count()).select_from(PRINT_LISTS)) == 2
    # A further pass finds nothing to do; the printed jobs are not printed again.
    third = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-3")
    assert third.jobs == 0 and len(list(settings.outbox.glob("*.csv"))) == 2
    # A journey asks for 1's brochure a day later: 1 got it already; merged into the printed one, not printed twice.
    queue(wh, [("journey:hot:1:1", 1)])
    fourth = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-4")
    assert (fourth.printed, fourth.merged) == (0, 1) and statuses(wh)["journey:hot:1:1"][0] == "merged"
    assert len(list(settings.outbox.glob("*.csv"))) == 2


def test_a_waiting_job_is_rebuilt_when_the_person_changed_and_dropped_when_suppressed(world):
    wh, settings, campaign, root = world
    queue(wh, [("sql:1", 1), ("sql:5", 5)])
    waiting = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-1")
    assert waiting.waiting == 2
    before = dict(zip(*wh.read_select(sa.select(PRINT_QUEUE.c.alert_key, PRINT_QUEUE.c.list_id)).T.values))
    set_contact(wh, 1, street="Neue Straße", house_number="7")     # moved while the job waited
    approve_template(wh, campaign, "K. Berger", campaign.sha256, root)
    done = print_jobs(wh, campaign, Screen(gid(5)), set(), settings, root, "pytest", "run-2")
    assert (done.printed, done.dropped) == (1, {"suppressed": 1})
    after = wh.read_select(sa.select(PRINT_QUEUE)).set_index("alert_key")
    assert after.loc["sql:1", "list_id"] != before["sql:1"]     # printed on a list with the new address
    printed = (settings.outbox / next(p.name for p in settings.outbox.glob("*.csv"))).read_text(encoding="utf-8")
    assert "Neue Straße 7" in printed
    lists = wh.read_select(sa.select(PRINT_LISTS)).set_index("list_id")
    assert lists.loc[before["sql:1"], "status"] == lists.loc[before["sql:5"], "status"] == "superseded"


def test_a_changed_template_needs_a_new_approval(world, tmp_path):
    wh, settings, campaign, root = world
    approve_template(wh, campaign, "K. Berger", campaign.sha256, root)
    changed_file = tmp_path / "broschuere.yaml"
    shutil.copy(campaign.path, changed_file)
    changed_file.write_text(changed_file.read_text(encoding="utf-8").replace("wie besprochen", "wie vereinbart"),
                            encoding="utf-8")
    changed = load_campaign(changed_file)
    assert changed.sha256 != campaign.sha256
    queue(wh, [("sql:1", 1)])
    rep = print_jobs(wh, changed, Screen(), set(), settings, root, "pytest", "run-1")
    assert (rep.printed, rep.waiting, rep.template_approved) == (0, 1, False)
    assert template_proof(changed, root) != template_proof(campaign, root)
    approve_template(wh, changed, "K. Berger", changed.sha256, root)
    assert print_jobs(wh, changed, Screen(), set(), settings, root, "pytest", "run-2").printed == 1


def test_a_prospect_waits_without_a_robinson_list(world):
    wh, settings, campaign, root = world
    set_contact(wh, 2, post_consent="granted")
    # Postal consent for a prospect: eligible, but a list addressing a prospect needs the Robinson list.
    from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS
    with wh.engine.begin() as conn:
        conn.execute(sa.update(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id == gid(2))
                     .values(post_consent_basis="consent"))
    approve_template(wh, campaign, "K. Berger", campaign.sha256, root)
    queue(wh, [("sql:2", 2)])
    rep = print_jobs(wh, campaign, Screen(), set(), settings, root, "pytest", "run-1")
    assert (rep.printed, rep.waiting) == (0, 1) and "Robinson" in statuses(wh)["sql:2"][1]
    with_robinson = PrintSettings(settings.outbox, 30, settings.approvals, root / "robinson.csv")
    (root / "robinson.csv").write_text("hash\n" + "0" * 64 + "\n", encoding="utf-8")
    again = print_jobs(wh, campaign, Screen(), {"0" * 64}, with_robinson, root, "pytest", "run-2")
    assert again.printed == 1 and pd.notna(wh.scalar(sa.select(PRINT_QUEUE.c.printed_at)))
