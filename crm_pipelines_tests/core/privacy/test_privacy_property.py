"""Property: whatever order ingests, erasures, replays and backfills come in, no suppressed identity
ever reaches an outgoing dataset (the CRM contact payload), nor a golden contact or person record."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm_pipelines.core.crm.payloads import build_payload
from crm_pipelines.core.crm.settings import load_sync_settings
from crm_pipelines.core.golden.build import ensure_golden_tables, resolve_accounts, resolve_contacts
from crm_pipelines.core.golden.matching.settings import load_matching_config
from crm_pipelines.core.golden.staging import build_account_records, build_person_records
from crm_pipelines.core.platform.schema import GOLDEN_CONTACTS, PERSON_RECORDS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.release import ERASURE_COPIES
from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy.ledger import build_consent_events
from crm_pipelines.core.privacy_screen.identity import IdentityHasher
from crm_pipelines.core.privacy_screen.suppression import SuppressionList
from crm_pipelines.core.sources.ingest import ingest_partition
from crm_pipelines.core.sources.roles import PERSON_SOURCES
from crm_pipelines.defs.crm import drop_suppressed, payload_identities
from crm_pipelines.settings import DEFAULT_CONFIG_DIR


HASHER = IdentityHasher("property-test-salt-0123456789")
SOURCES = (*PERSON_SOURCES, "erp_customers")
SYNC = load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml")
MATCHING = load_matching_config(DEFAULT_CONFIG_DIR / "matching.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small landing zone (120 people, 3 days) and some of its people's addresses."""
    from crm_pipelines.demo.generator import GeneratorConfig, generate

    root = tmp_path_factory.mktemp("world")
    manifest = generate(GeneratorConfig(contacts=120, seed=21, out=root, days=3))
    emails = sorted({line.split('"email": "')[1].split('"')[0]
                     for f in (root / "web_form_leads").rglob("*.jsonl") for line in f.read_text().splitlines()
                     if '"email": "' in line})[:12]
    return root, manifest["partitions"], emails


steps = st.lists(st.one_of(
    st.tuples(st.just("ingest"), st.integers(0, 2)),
    st.tuples(st.just("erase"), st.integers(0, 11)),
    st.tuples(st.just("replay"), st.integers(0, 2)),
    st.tuples(st.just("backfill"), st.just(0)),
    st.tuples(st.just("golden"), st.just(0)),
), min_size=2, max_size=7)


def _outgoing(wh: Warehouse) -> pd.DataFrame:
    """The CRM contact payload exactly as the payload asset builds it."""
    golden = wh.read_frame(sa.select(GOLDEN_CONTACTS))
    kept = drop_suppressed(golden, SuppressionList(wh, HASHER).screen())
    return build_payload(kept, SYNC.objects["contacts"])


@settings(max_examples=18, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=steps)
def test_no_suppressed_identity_ever_reaches_an_outgoing_dataset(world, mappings, plan):
    root, days, emails = world
    with tempfile.TemporaryDirectory() as tmp:
        landing = Path(tmp) / "landing"
        shutil.copytree(root, landing)
        wh = Warehouse(f"sqlite:///{Path(tmp) / 'wh' / 'warehouse.db'}")
        suppression = SuppressionList(wh, HASHER)
        ensure_golden_tables(wh)
        replays = 0

        def ingest(day: str) -> None:
            for source in SOURCES:
                ingest_partition(mappings[source], day, landing, wh, "prop", suppression=suppression)

        def build() -> None:
            build_person_records(wh, suppression.screen())
            build_account_records(wh)
            build_consent_events(wh, HASHER)
            resolve_accounts(wh, MATCHING, "prop")
            resolve_contacts(wh, MATCHING, "prop")

        erased: set[str] = set()
        for op, arg in [*plan, ("golden", 0)]:
            if op == "ingest":
                ingest(days[arg])
            elif op == "erase":
                erase(wh, HASHER, mappings,
                      copies=ERASURE_COPIES, emails=[emails[arg]], request_id=f"r{arg}", source="property",
                      actor="hypothesis")
                erased.add(emails[arg])
            elif op == "replay":
                # An old web-form file delivered again on a later day under another name.
                replays += 1
                day = f"2026-12-{replays:02d}"
                folder = landing / "web_form_leads" / day
                folder.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(sorted((landing / "web_form_leads" / days[arg]).glob("*.jsonl"))):
                    shutil.copy(f, folder / f"replay_{i}.jsonl")
                ingest_partition(mappings["web_form_leads"], day, landing, wh, "prop", suppression=suppression)
            elif op == "backfill":
                for day in days:
                    ingest(day)
            else:
                build()

            screen = suppression.screen()
            if wh.scalar("SELECT count(*) FROM golden.contacts"):
                payload = _outgoing(wh)
                assert not screen.suppressed(payload_identities(payload)).any()
                assert not set(payload["email"].dropna()) & erased
            persons = wh.read_frame(sa.select(PERSON_RECORDS))
            assert not screen.suppressed(persons).any()
            golden = wh.read_frame(sa.select(GOLDEN_CONTACTS))
            assert not screen.suppressed(golden).any()
            assert not set(golden["email"].dropna()) & erased
        Warehouse.dispose_all()
