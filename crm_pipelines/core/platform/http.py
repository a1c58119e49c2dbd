"""HTTP plumbing shared by the connectors (CRM, marketing tool): a rate limiter, retries with
backoff, Retry-After, the vendor's rate-limit headers.

Rules, from the vendors' documentation and reverse-ETL practice:
- never more than ``max_requests`` in any rolling ``window_seconds`` (HubSpot counts a rolling
  10-second window; a classic token bucket that starts full could send twice the limit inside
  one window, so the limiter keeps the times of the last window's requests instead, each from its
  sending until its answer, since the server counted it somewhere in between);
- 429: wait ``Retry-After``, or, where the vendor sends none (Brevo), the reset its rate-limit
  headers announce (``x-sib-ratelimit-reset``: seconds until the window resets), then try again;
- an answer saying the window has no request left (``X-HubSpot-RateLimit-Remaining: 0``,
  ``x-sib-ratelimit-remaining: 0``; the budget may be shared with other integrations): hold back
  until the announced reset or until our oldest request leaves the window, instead of running into 429s;
- 5xx, timeouts and dropped connections: exponential backoff with full jitter, then again;
- any other 4xx is a validation error of *this* request: never retried, handed back to be recorded;
- the token goes into the Authorization header and nowhere else (not in errors, not in logs).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests
from http.server import ThreadingHTTPServer

RETRYABLE_STATUS = {500, 502, 503, 504}


@dataclass(frozen=True)
class RateLimitHeaders:
    """Where a vendor announces its rate-limit state. ``reset`` counts seconds until the window resets;
    ``interval_ms`` is the window's length in milliseconds (HubSpot)."""

    remaining: str
    reset: str | None = None
    interval_ms: str | None = None


HUBSPOT_HEADERS = RateLimitHeaders("X-HubSpot-RateLimit-Remaining", interval_ms="X-HubSpot-RateLimit-Interval-Milliseconds")
BREVO_HEADERS = RateLimitHeaders("x-sib-ratelimit-remaining", reset="x-sib-ratelimit-reset")


class ServiceUnavailable(Exception):
    """The service did not answer usefully after every retry (outage, timeouts, server errors)."""


@dataclass
class RateLimiter:
    """At most ``max_requests`` in any rolling window of ``window_seconds`` (thread-safe).

    The server counts a request when it arrives, which is some time after we decided to send it and
    before its answer came back. So a request holds its place in our window from the moment it is
    sent until ``window_seconds`` after its answer (:meth:`done`): a conservative count whatever the
    network and the server's queue do, at the price of one round trip per slot, instead of 429s that
    stop every sender for a second.
    """

    max_requests: int = 190
    window_seconds: float = 10.0
    # Server and client clocks see a request at slightly different moments; a small margin keeps
    # the server's window from ever counting one request more than ours.
    margin_seconds: float = 0.02
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _sent: list = field(default_factory=list, init=False, repr=False)   # [time] per request still in the window
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    waited_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.window_seconds <= 0:
            raise ValueError("a rate limit needs max_requests >= 1 and window_seconds > 0")

    def acquire(self) -> list:
        """Waits for a place in the window; returns it, for :meth:`done` when the answer arrived."""
        with self._lock:
            while True:
                now = self.clock()
                horizon = now - self.window_seconds - self.margin_seconds
                self._sent = [e for e in self._sent if e[0] > horizon]
                if len(self._sent) < self.max_requests:
                    entry = [now]
                    self._sent.append(entry)
                    return entry
                # A hair more than needed: a wake-up exactly at the boundary may not have passed it yet.
                wait = min(e[0] for e in self._sent) - horizon + 1e-4
                self.waited_seconds += wait
                self.sleep(wait)

    def done(self, entry: list) -> None:
        """The answer arrived: the server has counted the request by now, so its place lasts from here.
        Without the lock: a sender waiting for a place holds it while it sleeps, and an answer must not
        wait for that (only this thread writes this entry; the item assignment is atomic)."""
        entry[0] = max(entry[0], self.clock())

    def pause(self, seconds: float) -> None:
        """The server asked us to wait (429): nobody sends until then."""
        with self._lock:
            self.waited_seconds += seconds
            self.sleep(seconds)

    def exhausted(self) -> None:
        """The server says its window is used up (``X-HubSpot-RateLimit-Remaining: 0``), perhaps by
        other clients of the same app: nobody sends until the oldest of our requests has left the
        window, which is when the server's window frees a slot at the earliest we can know of."""
        with self._lock:
            now = self.clock()
            # The oldest of ours the server still counts: sent within its window (ours is a margin longer).
            counted = min((e[0] for e in self._sent if e[0] > now - self.window_seconds), default=None)
            wait = (counted + self.window_seconds + self.margin_seconds - now) if counted is not None else self.window_seconds
            if wait > 0:
                self.waited_seconds += wait
                self.sleep(wait)


@dataclass
class CallStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0          # 429 answers
    server_errors: int = 0      # 5xx answers
    connection_errors: int = 0  # timeouts and dropped connections
    client_errors: int = 0      # 4xx other than 429: recorded, never retried
    window_exhausted: int = 0   # answers saying the server's window has no request left
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str) -> None:
        """Counts one event; several sender threads share one CallStats."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class HttpTransport:
    base_url: str
    token: str | None = None
    limiter: RateLimiter = field(default_factory=RateLimiter)
    timeout: float = 30.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 120.0
    # requests.Session is not documented as thread-safe: each sender thread gets its own.
    _sessions: threading.local = field(default_factory=threading.local, init=False, repr=False)
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    stats: CallStats = field(default_factory=CallStats)
    headers: RateLimitHeaders = HUBSPOT_HEADERS
    # HubSpot takes "Authorization: Bearer <token>"; Brevo an "api-key: <key>" header.
    auth_header: str = "Authorization"
    auth_prefix: str = "Bearer "

    def __repr__(self) -> str:  # never show the token
        return f"HttpTransport(base_url={self.base_url!r})"

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                also: RateLimiter | tuple[RateLimiter, ...] | None = None) -> Response:
        """Sends with rate limiting and retries; returns the final answer (2xx or a non-retryable 4xx).
        ``also`` is an endpoint's own limit (or limits) on top of the general one (HubSpot's search: per
        second; Brevo's contacts and events: per second and per hour).

        Raises :class:`ServiceUnavailable` when every attempt met a 5xx, a timeout or a dropped connection.
        """
        url = f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"
        headers = {"Accept": "application/json"}
        if self.token:
            headers[self.auth_header] = f"{self.auth_prefix}{self.token}"
        last = "no attempt"
        extras = () if also is None else (also,) if isinstance(also, RateLimiter) else tuple(also)
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.bump("retries")
            extra = [(lim, lim.acquire()) for lim in extras]
            slot = self.limiter.acquire()
            self.stats.bump("requests")
            try:
                resp = self._session().request(method, url, json=json, params=params, headers=headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._done(slot, extra)
                self.stats.bump("connection_errors")
                last = type(exc).__name__
                self.sleep(self._backoff(attempt))
                continue
            self._done(slot, extra)
            if resp.status_code == 429:
                self.stats.bump("throttled")
                last = "429 Too Many Requests"
                self.limiter.pause(self._retry_after(resp, attempt))
                continue
            if resp.status_code in RETRYABLE_STATUS:
                self.stats.bump("server_errors")
                last = f"HTTP {resp.status_code}"
                self.sleep(self._backoff(attempt))
                continue
            if 400 <= resp.status_code < 500:
                self.stats.bump("client_errors")
            if resp.headers.get(self.headers.remaining) == "0":
                self.stats.bump("window_exhausted")
                reset = self._header_seconds(resp, self.headers.reset)
                if reset is not None:
                    self.limiter.pause(reset)
                else:
                    self.limiter.exhausted()
            return Response(resp.status_code, _json(resp), dict(resp.headers))
        raise ServiceUnavailable(f"{method} {path}: no usable answer after {self.max_attempts} attempts (last: {last})")

    def _done(self, slot: list, extra: list[tuple[RateLimiter, list]]) -> None:
        self.limiter.done(slot)
        for lim, entry in extra:
            lim.done(entry)

    def _session(self) -> requests.Session:
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
        return session

    def _backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))

    def _retry_after(self, resp: requests.Response, attempt: int) -> float:
        value = resp.headers.get("Retry-After")
        if value is not None:
            try:
                return min(max(float(value), 0.0), self.max_retry_after)
            except ValueError:
                pass
        reset = self._header_seconds(resp, self.headers.reset)
        if reset is not None:
            return reset
        interval = resp.headers.get(self.headers.interval_ms) if self.headers.interval_ms else None
        if interval and interval.isdigit():
            return min(int(interval) / 1000.0, self.max_retry_after)
        return self._backoff(attempt) + 1.0

    def _header_seconds(self, resp: requests.Response, name: str | None) -> float | None:
        """A header counting seconds, capped; None when absent or unreadable."""
        value = resp.headers.get(name) if name else None
        try:
            return min(max(float(value), 0.0), self.max_retry_after) if value is not None else None
        except ValueError:
            return None


def _json(resp: requests.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return {"message": resp.text[:500]}


class LocalHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server of our own endpoints (the webhook receiver, the local vendor servers): a client
    that hangs up before its answer (its timeout, a test that is done) is normal for a server; it is not printed
    as a traceback on stderr like a bug in a handler, which still is."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)
