"""Privacy building blocks without Dagster: identities, suppression at the door, re-permission,
consent precedence, the audit chain, the inventory, export and retention."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_pipelines.core.golden.build import ensure_golden_tables, resolve_accounts, resolve_contacts
from crm_pipelines.core.golden.review import build_review_queue
from crm_pipelines.core.golden.staging import build_account_records, build_person_records
from crm_pipelines.core.model import ENTITIES
from crm_pipelines.core.platform import audit
from crm_pipelines.core.platform.schema import (AUDIT_LOG, GOLDEN_CONTACTS, QUARANTINE, RETIRED_CONTACTS, metadata,
                                                raw_table)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.release import ERASURE_COPIES
from crm_pipelines.core.privacy.access import export_person
from crm_pipelines.core.privacy.consent import CHANNELS, allows, current, verdict
from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy.inventory import NOT_PERSONAL, build_inventory
from crm_pipelines.core.privacy.ledger import build_consent_events
from crm_pipelines.core.privacy.retention import retire_inactive
from crm_pipelines.core.privacy_screen.identity import IdentityHasher, family_name_of, postal_value
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.core.sources.ingest import ingest_partition, partition_balance
from crm_pipelines_tests.conftest import READY_PORTAL, put


HASHER = IdentityHasher("test-salt-0123456789abcdef")


def test_identities_survive_spelling_and_never_hold_the_value():
    assert HASHER.email(" Max.Mueller@Firma.DE ") == HASHER.email("mailto:max.mueller@firma.de")
    assert HASHER.email("max.mueller@firma.de") != IdentityHasher("another-salt-0123456789").email("max.mueller@firma.de")
    assert "firma" not in HASHER.email("max.mueller@firma.de")
    assert postal_value("Müller", "Hauptstr. 12", None, "1067") == postal_value("MUELLER", "Hauptstraße", "12", "01067")
    assert postal_value("Müller", "Hauptstraße", None, "01067") is None  # no house number: no partial identity
    assert family_name_of("Frau Dr. von der Heide") == "von der Heide"
    assert HASHER.postal("Heide", "Am Markt", "3", "04109") != HASHER.postal("Heide", "Am Markt", "4", "04109")
    with pytest.raises(ValueError, match="at least 16"):
        IdentityHasher("short")


WEB = ('{"lead_id": "WF-1", "submitted_at": "2026-11-02T09:00:00Z", "form": "kontakt", "first_name": "Jürgen", '
       '"last_name": "Weiß", "email": "j.weiss@beispiel-gmbh.de", "company_name": "Beispiel GmbH", "zip": "01067", '
       '"city": "Dresden", "country": "DE", "newsletter_opt_in": true}\n'
       '{"lead_id": "WF-2", "submitted_at": "2026-11-02T10:00:00Z", "form": "kontakt", "first_name": "Anna", '
       '"last_name": "Roth", "email": "a.roth@beispiel-gmbh.de", "company_name": "Beispiel GmbH", "zip": "01067", '
       '"city": "Dresden", "country": "DE", "newsletter_opt_in": false}\n'
       '{"lead_id": "WF-3", "submitted_at": "kaputt", "form": "kontakt", "first_name": "Jürgen", "last_name": "Weiß", '
       '"email": "j.weiss@beispiel-gmbh.de"}\n')


def test_suppressed_people_are_counted_at_the_door_and_stored_nowhere(tmp_path, mappings, sqlite_url, landing):
    wh = Warehouse(sqlite_url)
    put(landing, "web_form_leads", "2026-11-02", "leads.jsonl", WEB)
    suppression = SuppressionList(wh, HASHER)
    suppression.add({("email", HASHER.email("j.weiss@beispiel-gmbh.de"))}, "P-1", "erasure", "r1")
    rep = ingest_partition(mappings["web_form_leads"], "2026-11-02", landing, wh, "run", suppression=suppression)
    assert (rep.rows_read, rep.rows_loaded, rep.rows_quarantined, rep.rows_suppressed) == (3, 1, 0, 2)
    raw = wh.read_frame(sa.select(raw_table("web_form_leads", ENTITIES["contact"])))
    assert raw["email"].tolist() == ["a.roth@beispiel-gmbh.de"]
    # The malformed record of the same person is not kept in the quarantine either.
    assert wh.read_frame(sa.select(QUARANTINE)).empty
    balance = partition_balance(wh, mappings["web_form_leads"], ["2026-11-02"])["2026-11-02"]
    assert balance == {"read": 3, "loaded": 1, "quarantined": 0, "suppressed": 2}


def test_an_erp_record_keeps_the_company_and_loses_the_suppressed_ansprechpartner(mappings, sqlite_url, demo_landing):
    root, manifest = demo_landing
    wh = Warehouse(sqlite_url)
    mapping = mappings["erp_customers"]
    day = manifest["partitions"][0]
    ingest_partition(mapping, day, root, wh, "run")
    t = raw_table("erp_customers", ENTITIES["account"])
    row = wh.read_frame(sa.select(t).where(t.c.contact_person.is_not(None), t.c.street.is_not(None)).limit(1)).iloc[0]
    family = family_name_of(row["contact_person"])
    suppression = SuppressionList(wh, HASHER)
    suppression.add({("postal", HASHER.postal(family, row["street"], None, row["postal_code"], row["country"]))},
                    "P-2", "erasure", "r2")
    rep = ingest_partition(mapping, day, root, wh, "run-2", suppression=suppression)
    assert rep.fields_anonymised >= 1 and rep.rows_suppressed == 0
    again = wh.read_frame(sa.select(t).where(t.c.source_record_id == row["source_record_id"])).iloc[0]
    assert again["contact_person"] is None and again["company_name"] == row["company_name"]


NEWSLETTER = ("subscriber_id,email,first_name,last_name,event_at,double_opt_in_at,source,list,status\n"
              "NL-1,j.weiss@beispiel-gmbh.de,Jürgen,Weiß,{at},{doi},footer,news,subscribed\n")


def test_only_a_fresh_double_opt_in_lifts_a_suppression_and_only_for_that_address(mappings, sqlite_url, landing):
    wh = Warehouse(sqlite_url)
    suppression = SuppressionList(wh, HASHER)
    suppression.add({("email", HASHER.email("j.weiss@beispiel-gmbh.de")), ("crm_contact", HASHER.crm_contact("4711"))},
                    "P-3", "erasure", "r3", at=datetime(2026, 11, 10, tzinfo=timezone.utc))
    nl = mappings["newsletter_signups"]
    # A replayed sign-up from before the erasure: still suppressed.
    put(landing, "newsletter_signups", "2026-11-05", "nl.csv", NEWSLETTER.format(at="2026-11-05 08:00:00",
                                                                                  doi="2026-11-05 08:10:00"))
    old = ingest_partition(nl, "2026-11-05", landing, wh, "run", suppression=suppression)
    assert (old.rows_loaded, old.rows_suppressed) == (0, 1)
    # A fresh sign-up without confirmation: still suppressed.
    put(landing, "newsletter_signups", "2026-11-12", "nl.csv", NEWSLETTER.format(at="2026-11-12 08:00:00", doi=""))
    assert ingest_partition(nl, "2026-11-12", landing, wh, "run", suppression=suppression).rows_suppressed == 1
    # Confirmed after the erasure: a re-permission, loaded, lifted and audited.
    put(landing, "newsletter_signups", "2026-11-13", "nl.csv", NEWSLETTER.format(at="2026-11-13 08:00:00",
                                                                                  doi="2026-11-13 08:05:00"))
    fresh = ingest_partition(nl, "2026-11-13", landing, wh, "run", suppression=suppression)
    assert (fresh.rows_loaded, fresh.rows_suppressed, len(fresh.repermissions)) == (1, 0, 1)
    assert not suppression.contains_email("j.weiss@beispiel-gmbh.de")
    screen = suppression.screen()
    assert HASHER.crm_contact("4711") in screen.active["crm_contact"]  # the old CRM record stays out
    actions = wh.read_frame(sa.select(AUDIT_LOG.c.action, AUDIT_LOG.c.details))
    lifted = actions[actions["action"] == "suppression.lifted"]
    assert len(lifted) == 1 and "newsletter_signups:NL-1" in lifted["details"].iloc[0]


def _events(*rows):
    return pd.DataFrame([{"status": s, "legal_basis": b, "channel": c, "double_opt_in_at": d}
                         for s, b, c, d in rows])


DOI = pd.Timestamp("2026-01-01", tz="UTC")


def test_consent_precedence():
    # The latest event wins.
    assert verdict(_events(("granted", "consent", "email", DOI), ("withdrawn", "consent", "email", None))) == \
        ("withdrawn", "consent")
    assert verdict(_events(("withdrawn", "consent", "email", None), ("granted", "consent", "email", DOI))) == \
        ("granted", "consent")
    # An objection beats legitimate interest and contract, later or not ...
    assert verdict(_events(("objected", "legitimate_interest", "post", None),
                           ("granted", "legitimate_interest", "post", None)))[0] == "objected"
    assert verdict(_events(("objected", None, "post", None), ("granted", "contract", "post", None)))[0] == "objected"
    # ... a withdrawal after it leaves it objected; only a fresh explicit consent lifts it.
    assert verdict(_events(("objected", None, "phone", None), ("withdrawn", "consent", "phone", None)))[0] == "objected"
    assert verdict(_events(("objected", None, "phone", None), ("granted", "consent", "phone", None)))[0] == "granted"
    # E-mail consent needs its double opt-in.
    assert verdict(_events(("granted", "consent", "email", None)))[0] == "unconfirmed"
    assert not allows("email", "unconfirmed", "consent", True)
    assert allows("post", None, None, is_customer=True) and not allows("post", None, None, is_customer=False)
    assert not allows("post", "objected", None, is_customer=True)
    assert not allows("phone", None, None, is_customer=True)


_EVENT = st.tuples(st.sampled_from(["granted", "withdrawn", "objected", "bounced"]),
                   st.sampled_from(["consent", "legitimate_interest", "contract", None]),
                   st.sampled_from(list(CHANNELS)), st.booleans(), st.integers(0, 5), st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENT, max_size=25))
def test_current_gives_each_cluster_and_channel_the_verdict_of_its_events(rows):
    """The verdicts of every cluster at once agree with verdict() walked over each group's events
    (time ties included: the stricter event last), and events of unknown records count for nobody."""
    # Object columns with None for a missing basis, as the ledger is read from the warehouse.
    events = pd.DataFrame({"person_record_key": [f"r{r[5]}" for r in rows], "status": [r[0] for r in rows],
                           "legal_basis": [r[1] for r in rows], "channel": [r[2] for r in rows]}, dtype=object)
    events["double_opt_in_at"] = pd.to_datetime([DOI if r[3] else pd.NaT for r in rows], utc=True)
    events["occurred_at"] = pd.to_datetime([pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=r[4])
                                            for r in rows], utc=True)
    record_cluster = {"r0": 0, "r1": 1, "r2": 0}  # r3: a record no golden contact holds
    got = current(events, pd.Series(record_cluster), 2)
    rank = {"granted": 0, "withdrawn": 1, "objected": 2}
    for cluster in (0, 1):
        for ch in CHANNELS:
            mine = events[events["person_record_key"].map(record_cluster).eq(cluster) & events["channel"].eq(ch)]
            mine = mine.assign(_r=mine["status"].map(rank).fillna(0)).sort_values(["occurred_at", "_r"], kind="stable")
            assert (got.at[cluster, f"{ch}_consent"], got.at[cluster, f"{ch}_consent_basis"]) == verdict(mine), \
                (cluster, ch, mine[["status", "legal_basis", "double_opt_in_at", "occurred_at"]].to_dict("records"))
    assert got.equals(current(events, record_cluster, 2))  # a dict maps records as a Series does


def test_the_audit_chain_detects_an_altered_or_removed_row(warehouse_url):
    wh = Warehouse(warehouse_url)
    audit.append(wh, [audit.AuditEntry(f"test.{i}", "pytest", f"P-{i}", {"n": i}) for i in range(5)])
    audit.append(wh, [audit.AuditEntry("test.more", "pytest", None, None)])
    assert audit.verify(wh).ok and audit.verify(wh).rows == 6
    if wh.is_postgres:
        # The application cannot change history: the table refuses UPDATE and DELETE for every role.
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with wh.engine.begin() as conn:
                conn.execute(sa.update(AUDIT_LOG).where(AUDIT_LOG.c.seq == 3).values(details='{"n": 99}'))
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with wh.engine.begin() as conn:
                conn.execute(sa.delete(AUDIT_LOG).where(AUDIT_LOG.c.seq == 3))
        # A superuser who switches the trigger off still leaves a trace in the chain.
        with wh.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE ops.audit_log DISABLE TRIGGER audit_log_no_update")
            conn.execute(sa.update(AUDIT_LOG).where(AUDIT_LOG.c.seq == 3).values(details='{"n": 99}'))
            conn.exec_driver_sql("ALTER TABLE ops.audit_log ENABLE TRIGGER audit_log_no_update")
    else:
        with wh.engine.begin() as conn:
            conn.execute(sa.update(AUDIT_LOG).where(AUDIT_LOG.c.seq == 3).values(details='{"n": 99}'))
    broken = audit.verify(wh)
    assert (broken.ok, broken.first_bad_seq) == (False, 3) and "altered" in broken.problem


def test_the_audit_chain_detects_a_deleted_row(sqlite_url):
    wh = Warehouse(sqlite_url)
    audit.append(wh, [audit.AuditEntry(f"test.{i}", "pytest") for i in range(4)])
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(AUDIT_LOG).where(AUDIT_LOG.c.seq == 2))
    broken = audit.verify(wh)
    assert (broken.ok, broken.first_bad_seq) == (False, 3) and "missing" in broken.problem


def test_every_table_that_can_hold_a_person_has_a_locator(mappings):
    covered = {loc.name for loc in build_inventory(mappings)}
    for table in metadata.tables.values():
        if table.fullname in NOT_PERSONAL:
            continue
        assert table.fullname in covered, f"{table.fullname} has no locator in core/privacy/inventory.py"


@pytest.fixture
def golden_wh(tmp_path, warehouse_templates, demo_landing, mappings):
    """A warehouse with the demo landing zone loaded and resolved (no Dagster); built once per test
    process, each test gets its own copy."""
    from crm_pipelines.core.golden.matching.settings import load_matching_config
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR

    root, manifest = demo_landing
    cfg = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")

    def build(wh: Warehouse) -> None:
        for mapping in mappings.values():
            for day in manifest["partitions"]:
                ingest_partition(mapping, day, root, wh, "load")
        ensure_golden_tables(wh)
        build_person_records(wh)
        build_account_records(wh)
        build_consent_events(wh, HASHER)
        resolve_accounts(wh, cfg, "golden")
        resolve_contacts(wh, cfg, "golden")
        build_review_queue(wh)

    yield Warehouse(warehouse_templates.sqlite("golden", build, tmp_path / "wh")), cfg
    Warehouse.dispose_all()


def test_the_consent_ledger_looks_up_person_records_a_slice_at_a_time(golden_wh, monkeypatch):
    from crm_pipelines.core.platform.schema import PERSON_RECORDS
    from crm_pipelines.core.privacy import ledger

    wh, _ = golden_wh
    whole = ledger.build_consent_events(wh, HASHER)
    monkeypatch.setattr(ledger, "PERSON_SLICE", 7)
    sliced = ledger.build_consent_events(wh, HASHER)
    pd.testing.assert_frame_equal(whole, sliced)
    changes = whole[whole["source"] == "consent_changes"]
    assert changes["person_record_key"].notna().sum() > len(changes) / 2  # (some name nobody the CRM knows)
    # The lookup itself: only what is asked for; a CRM contact ID names the CRM's record, an e-mail the first
    # record with it in record-key order, whichever slice holds it.
    pr = wh.read_select(sa.select(PERSON_RECORDS.c.record_key, PERSON_RECORDS.c.source, PERSON_RECORDS.c.crm_contact_id,
                                  PERSON_RECORDS.c.email_norm))
    shared = pr[pr["email_norm"].notna()].groupby("email_norm")["record_key"].agg(["count", "min"])
    email = shared[shared["count"] >= 2].index[0]
    crm = pr[(pr["source"] == "crm_contacts") & pr["crm_contact_id"].notna()].iloc[0]
    for size in (1, 3, 10**6):
        by_crm, by_email = ledger.person_keys(wh, {str(crm["crm_contact_id"]), "no such id"},
                                              {email, "nobody@example.org"}, slice_records=size)
        assert by_crm == {str(crm["crm_contact_id"]): crm["record_key"]}
        assert by_email == {email: shared.loc[email, "min"]}


def _a_person_with_many_records(wh) -> tuple[str, str]:
    g = GOLDEN_CONTACTS
    row = wh.execute_first(sa.select(g.c.golden_id, g.c.email).where(g.c.email.is_not(None), g.c.record_count >= 3)
                           .order_by(g.c.golden_id))
    return row.golden_id, row.email


def test_export_lists_every_table_that_holds_the_person(golden_wh, mappings):
    wh, _ = golden_wh
    gid, email = _a_person_with_many_records(wh)
    doc = export_person(wh, HASHER, mappings, emails=[email], request_id="x1", source="test", actor="pytest")
    assert doc["identifiers"]["golden_ids"] == [gid]
    # Independently of the inventory: every table whose text holds the address must be in the export.
    holding = set()
    with wh.engine.connect() as conn:
        for table in metadata.tables.values():
            if not sa.inspect(conn).has_table(table.name, schema=table.schema):
                continue
            text_cols = [c for c in table.c if isinstance(c.type, sa.Text)]
            if text_cols and conn.execute(sa.select(sa.func.count()).select_from(table).where(
                    sa.or_(*[sa.func.lower(c).contains(email) for c in text_cols]))).scalar():
                holding.add(table.fullname)
    assert holding and holding <= set(doc["data"]), holding - set(doc["data"])
    assert "golden.contacts" in doc["data"] and "staging.person_records" in doc["data"]
    assert doc["tables_searched"] and json.dumps(doc, default=str)
    # The export itself is audited, under the pseudonym.
    assert wh.scalar(sa.select(sa.func.count()).select_from(AUDIT_LOG).where(
        AUDIT_LOG.c.action == "access.exported", AUDIT_LOG.c.subject == doc["subject"])) == 1


def test_erasure_removes_the_person_from_every_table_and_keeps_only_hashes(golden_wh, mappings):
    wh, _ = golden_wh
    gid, email = _a_person_with_many_records(wh)
    report = erase(wh, HASHER, mappings,
                   copies=ERASURE_COPIES, emails=[email], request_id="e1", source="test", actor="pytest")
    assert report.status == "completed" and report.golden_ids == 1 and report.record_keys >= 3
    with wh.engine.connect() as conn:
        for table in metadata.tables.values():
            if not sa.inspect(conn).has_table(table.name, schema=table.schema):
                continue
            text_cols = [c for c in table.c if isinstance(c.type, sa.Text)]
            hits = conn.execute(sa.select(sa.func.count()).select_from(table).where(
                sa.or_(*[sa.func.lower(c).contains(email) for c in text_cols]))).scalar() if text_cols else 0
            assert hits == 0, f"{table.fullname} still holds the address"
    assert wh.scalar(sa.select(sa.func.count()).select_from(GOLDEN_CONTACTS).where(GOLDEN_CONTACTS.c.golden_id == gid)) == 0
    assert SuppressionList(wh, HASHER).contains_email(email)
    actions = set(wh.read_frame(sa.select(AUDIT_LOG.c.action).where(AUDIT_LOG.c.subject == report.subject))["action"])
    assert {"erasure.received", "erasure.suppressed", "erasure.warehouse", "erasure.completed"} <= actions
    assert audit.verify(wh).ok
    # Idempotent: a second request finds nothing left.
    again = erase(wh, HASHER, mappings,
                  copies=ERASURE_COPIES, emails=[email], request_id="e2", source="test", actor="pytest")
    assert again.tables == {} and again.suppression_added == 0


def test_retention_anonymises_inactive_prospects_and_keeps_customers_and_the_active(golden_wh, mappings):
    wh, _ = golden_wh
    g = GOLDEN_CONTACTS
    contacts = wh.read_frame(sa.select(g.c.golden_id, g.c.erp_customer_number, g.c.last_seen_at, g.c.email))
    # Pretend three years passed without anything new.
    later = pd.to_datetime(contacts["last_seen_at"], utc=True).max().to_pydatetime() + timedelta(days=3 * 365)
    dry = retire_inactive(wh, HASHER, mappings, months=24, actor="pytest", now=later, dry_run=True)
    assert dry.retired > 0 and dry.kept_relationship > 0 and dry.tables == {}
    assert wh.scalar(sa.select(sa.func.count()).select_from(g)) == len(contacts)
    report = retire_inactive(wh, HASHER, mappings, months=24, actor="pytest", now=later)
    assert report.retired == dry.retired
    left = wh.read_frame(sa.select(g.c.golden_id, g.c.erp_customer_number))
    assert len(left) == len(contacts) - report.retired
    retired = wh.read_frame(sa.select(RETIRED_CONTACTS))
    assert len(retired) == report.retired and not set(retired["golden_id"]) & set(left["golden_id"])
    assert "email" not in retired.columns and retired["anonymised_at"].notna().all()
    # Their data is gone from the sources too, and they are suppressed (reason retention) so that no
    # backfill brings them back; a re-permission would lift it (test_zombies).
    gone = contacts[contacts["golden_id"].isin(retired["golden_id"]) & contacts["email"].notna()]["email"].iloc[0]
    web = raw_table("web_form_leads", ENTITIES["contact"])
    assert wh.scalar(sa.select(sa.func.count()).select_from(web).where(web.c.email == gone)) == 0
    assert SuppressionList(wh, HASHER).contains_email(gone) and report.suppressed > 0
    # A month later, nothing more is old enough: nobody else retires.
    assert retire_inactive(wh, HASHER, mappings, months=24, actor="pytest", now=later).retired == 0


def test_a_crm_outage_leaves_the_erasure_pending_and_a_retry_completes_it(golden_wh, mappings):
    from crm_pipelines.core.crm.hubspot import HubSpotConnector
    from crm_pipelines.core.platform.schema import ERASURE_OUTBOX, PRIVACY_REQUESTS
    from crm_pipelines.core.privacy.requests import CrmErasureTarget, retry_pending
    from crm_pipelines.devtools.crm_server import CrmServer, Faults

    wh, _ = golden_wh
    _, email = _a_person_with_many_records(wh)
    with CrmServer(custom_properties=READY_PORTAL, faults=Faults(error_rate=1.0)) as crm:
        target = CrmErasureTarget(HubSpotConnector.create(crm.url, None, max_attempts=2, backoff_base=0.001))
        report = erase(wh, HASHER, mappings,
                       copies=ERASURE_COPIES, emails=[email], request_id="down-1", source="test", actor="pytest",
                       targets=[target])
        assert report.status == "pending" and report.targets["crm"]["failed"] >= 1
        assert report.tables  # the warehouse part is done regardless
        waiting = wh.read_frame(sa.select(ERASURE_OUTBOX))
        assert email in set(waiting["identifier"]) and (waiting["attempts"] == 1).all()
        status = wh.scalar(sa.select(PRIVACY_REQUESTS.c.status).where(PRIVACY_REQUESTS.c.request_id == "down-1"))
        assert status == "pending"

        crm.set_faults(error_rate=0.0)
        done = retry_pending(wh, [target], actor="pytest")
        assert done["down-1"].get("failed", 0) == 0
        assert [k for _, k in crm.gdpr_calls if k == email]
        assert wh.read_frame(sa.select(ERASURE_OUTBOX)).empty
        assert wh.scalar(sa.select(PRIVACY_REQUESTS.c.status).where(PRIVACY_REQUESTS.c.request_id == "down-1")) == \
            "completed"
    assert audit.verify(wh).ok
