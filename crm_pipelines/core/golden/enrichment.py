"""Company-register enrichment: legal form, register court and number by name and city.

The Handelsregister has no official API and forbids more than 60 queries an hour;
commercial registers offer a name + city search. The client talks to any REST endpoint
of this shape::

    GET {base_url}/companies/search?name=Musterfirma%20GmbH&city=Dresden
    200 {"results": [{"name": ..., "legal_form": ..., "register_court": ..., "register_number": ...,
                      "street": ..., "postal_code": ..., "city": ...}]}

It rate-limits with a sliding one-hour window kept in the warehouse (``ops.register_calls``),
so the limit holds across runs and processes; caches every answer (``ops.register_cache``);
times out, retries server errors with backoff, honours ``Retry-After`` on 429; and when the
register is down it stops asking, so the run succeeds with fewer accounts enriched.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import pandas as pd
import requests
import sqlalchemy as sa
from rapidfuzz import fuzz

from ..cleaning.addresses import street_key
from ..cleaning.companies import parse_company_name
from ..platform.schema import REGISTER_CACHE, metadata
from ..platform.warehouse import Warehouse

REGISTER_CALLS = sa.Table(
    "register_calls", metadata,
    sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    schema="ops", comment="Every request sent to the company register: the sliding window of the rate limit.",
)


class RegisterUnavailable(Exception):
    """The register did not answer usefully after the retries (outage, timeouts, errors)."""


@dataclass
class RegisterClient:
    base_url: str
    api_key: str | None = None
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5
    session: requests.Session = field(default_factory=requests.Session)
    sleep: Callable[[float], None] = time.sleep
    max_retry_after: float = 30.0

    def search(self, name: str, city: str | None) -> list[dict]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        params = {"name": name}
        if city:
            params["city"] = city
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.get(f"{self.base_url.rstrip('/')}/companies/search", params=params, headers=headers,
                                        timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"{type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        return list(resp.json().get("results", []))
                    except (ValueError, AttributeError):
                        last_error = "invalid JSON"
                elif resp.status_code == 429:
                    wait = _retry_after(resp.headers.get("Retry-After"))
                    if wait is None or wait > self.max_retry_after:
                        raise RegisterUnavailable(f"rate limited by the register (Retry-After {resp.headers.get('Retry-After')})")
                    self.sleep(wait)
                    continue
                elif 400 <= resp.status_code < 500:
                    # A request the register rejects will not get better by asking again.
                    raise ValueError(f"register rejected the query: HTTP {resp.status_code}")
                else:
                    last_error = f"HTTP {resp.status_code}"
            if attempt < self.retries:
                self.sleep(self.backoff * (2 ** attempt) * (0.5 + random.random()))
        raise RegisterUnavailable(f"register unavailable after {self.retries + 1} attempts: {last_error}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


@dataclass
class EnrichmentReport:
    candidates: int = 0
    cached: int = 0
    queried: int = 0
    found: int = 0
    not_found: int = 0
    deferred: int = 0          # not asked this run: the hourly budget was used up
    not_enriched_outage: int = 0
    outage: str | None = None


def calls_in_last_hour(wh: Warehouse, at: datetime) -> int:
    wh.ensure_tables([REGISTER_CALLS])
    return int(wh.scalar(sa.select(sa.func.count()).select_from(REGISTER_CALLS)
                         .where(REGISTER_CALLS.c.called_at > at - timedelta(hours=1))) or 0)


def _log_call(wh: Warehouse, status: str) -> None:
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(REGISTER_CALLS).values(called_at=datetime.now(timezone.utc), status=status))


def best_candidate(company_key: str, city_key: str | None, results: list[dict]) -> dict | None:
    """The register entry for this name and town, if one is close enough to be the same company."""
    best, best_score = None, 0.0
    for r in results:
        parsed = parse_company_name(r.get("name"))
        score = fuzz.token_set_ratio(company_key, parsed.key) / 100.0
        if city_key and street_key(r.get("city")) != city_key:
            score -= 0.5
        if score > best_score:
            best, best_score = r, score
    return best if best_score >= 0.9 else None


def enrich(wh: Warehouse, accounts: pd.DataFrame, client: RegisterClient | None, calls_per_hour: int = 60,
           log: Callable[[str], None] | None = None) -> EnrichmentReport:
    """Looks up (name, town) pairs of accounts without a register number that the cache does not know yet.

    Bigger companies (more records) first; at most what the hourly window still allows.
    """
    log = log or (lambda _m: None)
    wh.ensure_tables([REGISTER_CACHE, REGISTER_CALLS])
    report = EnrichmentReport()
    todo = accounts[accounts["register_number"].isna() & accounts["company_key"].notna() & accounts["city_key"].notna()]
    todo = (todo.groupby(["company_key", "city_key"]).agg(records=("record_key", "size"), name=("company_name", "first"),
                                                           city=("city", "first"))
                .reset_index().sort_values(["records", "company_key"], ascending=[False, True]))
    report.candidates = len(todo)
    cached = wh.read_frame(sa.select(REGISTER_CACHE.c.company_key, REGISTER_CACHE.c.city_key))
    known = set(zip(cached["company_key"], cached["city_key"]))
    todo = todo[[(k, c) not in known for k, c in zip(todo["company_key"], todo["city_key"])]]
    report.cached = report.candidates - len(todo)
    if client is None or todo.empty:
        report.deferred = len(todo)
        return report
    budget = max(calls_per_hour - calls_in_last_hour(wh, datetime.now(timezone.utc)), 0)
    rows = []
    for i, item in enumerate(todo.itertuples(index=False)):
        if report.queried >= budget:
            report.deferred = len(todo) - i
            break
        try:
            results = client.search(item.name, item.city)
        except RegisterUnavailable as exc:
            _log_call(wh, "unavailable")
            report.outage = str(exc)
            report.not_enriched_outage = len(todo) - i
            log(f"register unavailable, {report.not_enriched_outage} lookups left for a later run: {exc}")
            break
        except ValueError as exc:
            _log_call(wh, "rejected")
            report.queried += 1
            log(f"register rejected a query: {exc}")
            continue
        _log_call(wh, "ok")
        report.queried += 1
        hit = best_candidate(item.company_key, item.city_key, results)
        rows.append({
            "company_key": item.company_key, "city_key": item.city_key, "status": "found" if hit else "not_found",
            "register_court": hit.get("register_court") if hit else None,
            "register_number": hit.get("register_number") if hit else None,
            "legal_form": hit.get("legal_form") if hit else None, "name": hit.get("name") if hit else None,
            "street": hit.get("street") if hit else None, "postal_code": hit.get("postal_code") if hit else None,
            "city": hit.get("city") if hit else None, "fetched_at": pd.Timestamp(datetime.now(timezone.utc)),
        })
        if hit:
            report.found += 1
        else:
            report.not_found += 1
    if rows:
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, REGISTER_CACHE, pd.DataFrame(rows))
    return report
