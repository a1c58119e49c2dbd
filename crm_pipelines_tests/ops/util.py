"""Helpers for tests that run Dagster's own processes: free ports, waiting for a server, GraphQL."""

from __future__ import annotations

import socket
import threading
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    """Until ``condition()`` holds (a process's start-up is not an event we can subscribe to)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        pause.wait(0.25)


def wait_http(url: str, timeout: float) -> None:
    """Until the server answers (a server process's start-up is not an event we can subscribe to)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        pause.wait(0.25)


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    resp = requests.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body["errors"]
    return body["data"]
