"""The HubSpot connector and its HTTP plumbing against the local CRM server on 127.0.0.1."""

from __future__ import annotations

import pytest
import requests

from crm_pipelines_tests.conftest import READY_PORTAL
from crm_pipelines.core.platform.http import ServiceUnavailable, HttpTransport, RateLimiter
from crm_pipelines.core.crm.hubspot import HubSpotConnector
from crm_pipelines.core.crm.protocol import CREATED, FAILED, REJECTED, UPDATED, CrmAuthError, Task, UpsertInput
from crm_pipelines.devtools.crm_server import CrmServer, Faults

TOKEN = "test-token-7f3a"


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def connector(server: CrmServer, max_requests: int = 190, window: float = 10.0, **kw) -> HubSpotConnector:
    kw.setdefault("backoff_base", 0.01)
    return HubSpotConnector.create(server.url, TOKEN, max_requests=max_requests, window_seconds=window, timeout=5,
                                   **kw)


def contact(key: str, email: str | None = None, **props) -> UpsertInput:
    return UpsertInput(key, {"email": email or f"{key.lower()}@example.de", "lastname": "Müller", **props})


@pytest.fixture
def crm():
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, max_requests=190, window_seconds=10.0) as server:
        yield server


def test_rate_limiter_never_exceeds_the_limit_in_any_rolling_window():
    clock = FakeClock()
    limiter = RateLimiter(max_requests=5, window_seconds=10.0, margin_seconds=0.0, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(23):
        limiter.acquire()
        sent.append(clock.now)
        clock.now += 0.1  # each request takes 100 ms
    for i, t in enumerate(sent):
        assert sum(1 for u in sent if t <= u < t + 10.0) <= 5, f"window starting at request {i}"
    # ...and it is not slower than it must be: 23 requests at 5 per 10 s need four full windows.
    assert 40.0 <= sent[-1] < 41.0


def test_upsert_creates_then_updates_by_golden_id_and_reads_back_paged(crm):
    hub = connector(crm)
    first = hub.upsert("contacts", "crm_golden_id", [contact("GC-1"), contact("GC-2")])
    assert [r.status for r in first] == [CREATED, CREATED] and all(r.crm_id for r in first)
    again = hub.upsert("contacts", "crm_golden_id", [contact("GC-1", jobtitle="Einkauf")])
    assert again[0].status == UPDATED and again[0].crm_id == first[0].crm_id
    hub.page_size = 1
    read = list(hub.read_objects("contacts", ["email", "jobtitle"]))
    assert [r["id"] for r in read] == [first[0].crm_id, first[1].crm_id]
    assert read[0]["properties"]["jobtitle"] == "Einkauf"
    assert len(crm.objects("contacts")) == 2


def test_207_multi_status_gives_each_row_its_own_outcome(crm):
    hub = connector(crm)
    results = hub.upsert("contacts", "crm_golden_id", [contact("GC-1"), contact("GC-2", email="kaputt@"),
                                                        contact("GC-3", email="gc-1@example.de")])
    assert [r.status for r in results] == [CREATED, REJECTED, REJECTED]
    assert "INVALID_EMAIL" in results[1].message
    assert f"Contact already exists. Existing ID: {results[0].crm_id}" in results[2].message
    assert [o["ext_id"] for o in crm.objects("contacts")] == ["GC-1"]


def test_an_invalid_option_or_unknown_property_refuses_the_whole_batch_as_hubspot_does(crm):
    hub = connector(crm)
    for bad in ({"lifecyclestage": "hot"}, {"lead_temperature": "warm"}, {"hs_object_id": "5"}):
        results = hub.upsert("contacts", "crm_golden_id", [contact("GC-1"), contact("GC-2", **bad)])
        assert [r.status for r in results] == [REJECTED, REJECTED]
        assert "VALIDATION_ERROR" in results[0].message
        code = {"lifecyclestage": "INVALID_OPTION", "lead_temperature": "PROPERTY_DOESNT_EXIST",
                "hs_object_id": "READ_ONLY_VALUE"}[next(iter(bad))]
        assert code in results[1].message
    assert crm.objects("contacts") == []


def test_validation_errors_are_recorded_and_never_retried(crm):
    hub = connector(crm)
    results = hub.upsert("contacts", "crm_golden_id", [contact("GC-1", shoe_size="44")])
    assert results[0].status == REJECTED and "PROPERTY_DOESNT_EXIST" in results[0].message
    assert hub.stats.requests == 1 and hub.stats.retries == 0 and hub.stats.client_errors == 1
    with pytest.raises(ValueError, match="at most 100"):
        hub.upsert("contacts", "crm_golden_id", [contact(f"GC-{i}") for i in range(101)])


def test_server_errors_and_dropped_connections_are_retried_with_backoff(crm):
    crm.set_faults(fail_next=2)
    hub = connector(crm)
    assert hub.upsert("contacts", "crm_golden_id", [contact("GC-1")])[0].status == CREATED
    assert hub.stats.server_errors == 2 and hub.stats.retries == 2
    # The change is applied, the answer lost: the retry must update, not create a second contact.
    crm.set_faults(drop_rate=1.0)
    hub2 = connector(crm, max_attempts=3)
    results = hub2.upsert("contacts", "crm_golden_id", [contact("GC-2")])
    assert results[0].status == FAILED and "no usable answer" in results[0].message
    crm.set_faults(drop_rate=0.0)
    assert hub2.upsert("contacts", "crm_golden_id", [contact("GC-2")])[0].status == UPDATED
    assert sorted(o["ext_id"] for o in crm.objects("contacts")) == ["GC-1", "GC-2"]


def test_a_429_storm_is_survived_without_exceeding_the_servers_limit():
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, max_requests=8, window_seconds=0.5, faults=Faults(throttle_rate=0.3, retry_after=0.05),
                   seed=3) as server:
        # The client believes it may send 12 per window: the server's 429s and Retry-After must hold it back.
        hub = connector(server, max_requests=12, window=0.5, max_attempts=30)
        for i in range(30):
            assert hub.upsert("contacts", "crm_golden_id", [contact(f"GC-{i}")])[0].status == CREATED
        stats = server.stats()
        assert stats["counts"]["429_injected"] > 0
        assert stats["peak_window"] <= 8
        assert hub.stats.throttled == stats["counts"]["429_injected"] + stats["counts"].get("429_limit", 0)
        assert len(server.objects("contacts")) == 30


def test_the_remaining_header_holds_the_client_back_before_the_server_must_refuse():
    # Another integration shares the app's budget: the server allows 8 per window, the client thinks 12.
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, max_requests=8, window_seconds=0.5) as server:
        hub = connector(server, max_requests=12, window=0.5, max_attempts=30)
        for i in range(40):
            assert hub.upsert("contacts", "crm_golden_id", [contact(f"GC-{i}")])[0].status == CREATED
        stats = server.stats()
        assert hub.stats.window_exhausted >= 4 and stats["peak_window"] <= 8
        # Without heeding X-HubSpot-RateLimit-Remaining the client would run into the limit about four
        # times a window; a refusal or two may still slip through when a thread is scheduled late.
        assert stats["counts"].get("429_limit", 0) <= 2


def test_the_client_limiter_alone_keeps_under_the_limit():
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL, max_requests=10, window_seconds=0.5) as server:
        hub = connector(server, max_requests=10, window=0.5)
        for i in range(35):
            hub.upsert("contacts", "crm_golden_id", [contact(f"GC-{i}")])
        assert server.stats()["counts"].get("429_limit", 0) == 0 and hub.stats.throttled == 0
        assert server.stats()["peak_window"] <= 10


def test_wrong_token_stops_with_an_auth_error_that_does_not_leak_the_token(crm):
    hub = HubSpotConnector.create(crm.url, "wrong-secret-token")
    with pytest.raises(CrmAuthError) as err:
        hub.upsert("contacts", "crm_golden_id", [contact("GC-1")])
    assert "wrong-secret-token" not in str(err.value) and "wrong-secret-token" not in repr(hub)
    assert "HTTP 401" in str(err.value)


def test_an_unreachable_crm_is_reported_after_the_retries():
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    transport = HttpTransport(f"http://127.0.0.1:{port}", TOKEN, max_attempts=3, backoff_base=0.001, timeout=1)
    with pytest.raises(ServiceUnavailable, match="after 3 attempts"):
        transport.request("GET", "/crm/v3/objects/contacts")
    assert transport.stats.connection_errors == 3


def test_associations_tasks_archive_and_gdpr_delete(crm):
    hub = connector(crm)
    company = hub.upsert("companies", "crm_golden_id", [UpsertInput("GA-1", {"name": "Musterfirma GmbH"})])[0]
    person = hub.upsert("contacts", "crm_golden_id", [contact("GC-1", email="j.mueller@musterfirma.de")])[0]
    linked = hub.associate("contacts", "companies", [("GC-1", person.crm_id, company.crm_id)])
    assert linked[0].status == UPDATED
    assert ("contacts", person.crm_id, "companies", company.crm_id) in crm.associations()
    task = hub.create_tasks([Task("lead-1", "Heißer Lead: anrufen", "Score 87", "2026-11-25T10:00:00Z", person.crm_id)])
    assert task[0].status == CREATED
    assert hub.archive("companies", [("GA-1", company.crm_id)])[0].status == "archived"
    assert crm.objects("companies") == []
    assert hub.gdpr_delete("j.mueller@musterfirma.de").status == "deleted"
    assert hub.gdpr_delete("j.mueller@musterfirma.de").status == "absent"
    # A GDPR delete blocklists the address: a stale sync cannot bring the person back.
    back = hub.upsert("contacts", "crm_golden_id", [contact("GC-9", email="j.mueller@musterfirma.de")])[0]
    assert back.status == REJECTED and "BLOCKLISTED" in back.message


def test_requests_without_a_token_are_refused_by_the_server(crm):
    resp = requests.get(f"{crm.url}/crm/v3/objects/contacts", timeout=5)
    assert resp.status_code == 401


def test_associations_fall_back_to_the_batch_size_a_stricter_server_takes(crm, monkeypatch):
    from crm_pipelines.devtools.crm_server import writes as crm_server_writes
    hub = connector(crm)
    company = hub.upsert("companies", "crm_golden_id", [UpsertInput("GA-1", {"name": "Musterfirma GmbH"})])[0]
    people = hub.upsert("contacts", "crm_golden_id", [contact(f"GC-{i}") for i in range(60)])
    monkeypatch.setattr(crm_server_writes, "MAX_ASSOCIATION_BATCH", 25)  # this server takes 25 pairs per call
    linked = hub.associate("contacts", "companies", [(p.key, p.crm_id, company.crm_id) for p in people])
    assert [r.status for r in linked] == [UPDATED] * 60 and hub.max_association_batch == 25
    assert sum(1 for a in crm.associations() if a[0] == "contacts") == 60


def test_a_batch_the_server_fails_on_leaves_no_transaction_open():
    """A write that breaks the local CRM's own unique index (the external ID of another object, as a CRM
    kept from an earlier warehouse can get) fails that request alone: the next one is answered."""
    import sqlite3

    with CrmServer(custom_properties=READY_PORTAL) as server:
        server.seed("contacts", [{"id": "1", "properties": {"crm_golden_id": "GC-1", "email": "a@beispiel.de"}},
                                 {"id": "2", "properties": {"crm_golden_id": "GC-2", "email": "b@beispiel.de"}}])
        with pytest.raises(sqlite3.IntegrityError):
            server.update("contacts", {"inputs": [{"id": "1", "properties": {"crm_golden_id": "GC-2"}}]})
        status, body = server.update("contacts", {"inputs": [{"id": "1", "properties": {"firstname": "Anna"}}]})
        assert status == 200 and body["results"][0]["properties"]["firstname"] == "Anna"
        assert server.objects("contacts")[0]["properties"]["crm_golden_id"] == "GC-1"
