"""Company-register enrichment against a real HTTP server on 127.0.0.1, with faults injected."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import requests
import sqlalchemy as sa

from crm_pipelines.core.golden.enrichment import (REGISTER_CALLS, RegisterClient, RegisterUnavailable, best_candidate,
                                                  enrich)
from crm_pipelines.core.platform.schema import REGISTER_CACHE
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.devtools.register_server import Faults, RegisterServer

COMPANIES = [
    {"name": "Musterfirma GmbH & Co. KG", "legal_form": "GmbH & Co. KG", "register_court": "Amtsgericht Dresden",
     "register_number": "HRA 4711", "street": "Hauptstraße 1", "postal_code": "01067", "city": "Dresden"},
    {"name": "Musterfirma GmbH", "legal_form": "GmbH", "register_court": "Amtsgericht München",
     "register_number": "HRB 815", "street": "Ring 2", "postal_code": "80331", "city": "München"},
    {"name": "Zettelmann Hydraulik AG", "legal_form": "AG", "register_court": "Amtsgericht Leipzig",
     "register_number": "HRB 999", "street": "Weg 3", "postal_code": "04109", "city": "Leipzig"},
]


def accounts(*rows):
    return pd.DataFrame([{"record_key": f"r{i}", "company_name": n, "company_key": k, "city": c, "city_key": ck,
                          "register_number": None} for i, (n, k, c, ck) in enumerate(rows)])


ACCOUNTS = accounts(("Musterfirma GmbH", "musterfirma", "Dresden", "dresden"),
                    ("MUSTERFIRMA G.m.b.H.", "musterfirma", "Dresden", "dresden"),
                    ("Musterfirma GmbH", "musterfirma", "München", "muenchen"),
                    ("Zettelmann Hydraulik AG", "zettelmann hydraulik", "Leipzig", "leipzig"),
                    ("Unbekannt KG", "unbekannt", "Jena", "jena"))


@pytest.fixture
def server():
    with RegisterServer(COMPANIES) as s:
        yield s


@pytest.fixture
def wh(tmp_path):
    w = Warehouse(f"sqlite:///{tmp_path / 'wh.db'}")
    yield w
    w.engine.dispose()


def fast_client(url, **kw):
    return RegisterClient(url, timeout=2, backoff=0.0, sleep=lambda s: None, **kw)


def cache(wh):
    df = wh.read_frame(sa.select(REGISTER_CACHE).order_by(REGISTER_CACHE.c.company_key, REGISTER_CACHE.c.city_key))
    return df.astype(object).where(df.notna(), None)


def test_search_finds_by_name_and_town(server):
    results = fast_client(server.url).search("Musterfirma GmbH & Co. KG", "Dresden")
    assert [r["register_number"] for r in results] == ["HRA 4711"]
    hit = best_candidate("musterfirma", "dresden", results)
    assert hit["register_court"] == "Amtsgericht Dresden"
    assert best_candidate("musterfirma", "muenchen", results) is None  # other town, other company


def test_enrichment_fills_the_cache_and_asks_once(server, wh):
    report = enrich(wh, ACCOUNTS, fast_client(server.url), calls_per_hour=60)
    # Two spellings of the Dresden company are one (name, town) lookup.
    assert (report.candidates, report.queried, report.found, report.not_found) == (4, 4, 3, 1)
    got = cache(wh)
    assert dict(zip(got["city_key"], got["register_number"])) == {"dresden": "HRA 4711", "muenchen": "HRB 815",
                                                                  "leipzig": "HRB 999", "jena": None}
    requests_before = server.requests
    again = enrich(wh, ACCOUNTS, fast_client(server.url), calls_per_hour=60)
    assert (again.cached, again.queried) == (4, 0) and server.requests == requests_before


def test_hourly_limit_holds_across_runs(server, wh):
    first = enrich(wh, ACCOUNTS, fast_client(server.url), calls_per_hour=2)
    assert (first.queried, first.deferred) == (2, 2)
    second = enrich(wh, ACCOUNTS, fast_client(server.url), calls_per_hour=2)
    assert (second.queried, second.deferred) == (0, 2)  # the window still holds two calls from the last run
    with wh.engine.begin() as conn:  # an hour later
        conn.execute(sa.update(REGISTER_CALLS).values(called_at=datetime.now(timezone.utc) - timedelta(hours=2)))
    third = enrich(wh, ACCOUNTS, fast_client(server.url), calls_per_hour=2)
    assert third.queried == 2 and len(cache(wh)) == 4


def test_server_errors_are_retried_then_succeed(server):
    server.faults = Faults(fail_next=2)
    client = fast_client(server.url, retries=3)
    assert client.search("Zettelmann Hydraulik AG", "Leipzig")[0]["register_number"] == "HRB 999"
    assert server.requests == 3


def test_outage_degrades_gracefully(server, wh):
    server.faults = Faults(fail_next=100)
    report = enrich(wh, ACCOUNTS, fast_client(server.url, retries=2), calls_per_hour=60)
    assert report.queried == 0 and report.not_enriched_outage == 4
    assert "register unavailable after 3 attempts: HTTP 503" in report.outage
    assert cache(wh).empty  # nothing half-known is cached


def test_dropped_connections_and_timeouts(server):
    server.faults = Faults(drop_next=1)
    assert fast_client(server.url, retries=1).search("Musterfirma GmbH", "München")
    server.faults = Faults(slow_seconds=0.5)
    with pytest.raises(RegisterUnavailable, match="Timeout"):
        RegisterClient(server.url, timeout=0.1, retries=1, backoff=0.0, sleep=lambda s: None).search("Musterfirma GmbH", "München")


def test_429_with_retry_after_is_honoured(server):
    server.faults = Faults(limit_per_hour=1, retry_after=1)
    waits = []
    client = RegisterClient(server.url, timeout=2, retries=0, sleep=waits.append, max_retry_after=0.5)
    client.search("Musterfirma GmbH", "München")
    with pytest.raises(RegisterUnavailable, match="rate limited"):
        client.search("Musterfirma GmbH", "München")  # Retry-After 1 s is longer than this client waits
    server.faults = Faults(limit_per_hour=0)
    client = RegisterClient(server.url, timeout=2, retries=0, sleep=waits.append, max_retry_after=5)
    assert client.search("Musterfirma GmbH", "München")


def test_validation_errors_are_not_retried(server):
    client = fast_client(server.url, retries=3)
    with pytest.raises(ValueError, match="HTTP 400"):
        client.search("", None)
    assert server.requests == 1


def test_no_register_configured_defers_everything(wh):
    report = enrich(wh, ACCOUNTS, None)
    assert report.queried == 0 and report.deferred == 4


def test_fault_endpoint(server):
    r = requests.post(f"{server.url}/_faults", json={"fail_next": 1}, timeout=2)
    assert r.json()["fail_next"] == 1
    assert requests.get(f"{server.url}/companies/search", params={"name": "X"}, timeout=2).status_code == 503
