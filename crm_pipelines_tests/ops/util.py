"""Helpers for tests that run Dagster's own processes: waiting for a server, GraphQL (free ports and
waiting in general: crm_pipelines.devtools.processes)."""

from __future__ import annotations

import requests

from crm_pipelines.devtools.processes import wait_until


def wait_http(url: str, timeout: float) -> None:
    """Until the server answers (a server process's start-up is not an event we can subscribe to)."""

    def answers() -> bool:
        try:
            return requests.get(url, timeout=5).status_code < 500
        except requests.ConnectionError:
            return False

    wait_until(answers, timeout, f"{url} answering")


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    resp = requests.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def launch_run(base: str, job: str, asset_selection: list[list[str]] | None = None, tags: dict | None = None) -> str:
    """Launches a job the way the UI's "Materialize" button does (queued, then started by the daemon)."""
    from crm_pipelines.nightly.__main__ import Dagster

    return Dagster(base).launch(job, tags or {}, asset_selection)


class Browser:
    """Headless Chromium driven through the DevTools protocol (a websocket; the ``websockets`` package comes with
    dagster-webserver's uvicorn), for what a page only shows after a click: Dagster's "[Show Markdown]"."""

    def __init__(self, chromium: str, profile, port: int):
        import json
        import subprocess
        from contextlib import ExitStack

        from websockets.sync.client import connect

        self._json = json
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                      "--disable-sync", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                                      "--window-size=1600,1000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pages: list = []

        def listening() -> bool:
            try:
                pages[:] = [p for p in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                            if p.get("type") == "page"]
            except requests.ConnectionError:
                return False
            return bool(pages)

        wait_until(listening, 60, "Chromium's DevTools endpoint")
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None))
        self.n = 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(self._json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = self._json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def markdown_image(self, url: str, key: str, timeout: float = 90) -> dict:
        """Opens ``url`` (an asset page), clicks "[Show Markdown]" in the metadata row ``key`` and waits until the
        image in it is decoded; returns its alt text and natural size."""
        self.call("Page.navigate", url=url)
        script = """(() => {
          const cell = [...document.querySelectorAll('td')].find(td => td.innerText.trim() === %s);
          const row = cell && cell.closest('tr');
          const button = row && [...row.querySelectorAll('*')].find(
            e => e.childElementCount === 0 && e.textContent.trim() === '[Show Markdown]');
          if (!button) return null;
          if (window.__shown !== %s) { button.click(); window.__shown = %s; }
          const img = [...document.querySelectorAll('img')].find(
            i => i.src.startsWith('data:image/png') && i.complete && i.naturalWidth > 0);
          return img ? {alt: img.alt, width: img.naturalWidth, height: img.naturalHeight} : null;
        })()""" % ((self._json.dumps(key),) * 3)
        found: list = []

        def shown() -> bool:
            found[:] = [self.evaluate(script)]
            return bool(found[0])

        wait_until(shown, timeout, f"the image of {key} on {url}", interval=0.5)
        return found[0]

    def screenshot(self, path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)
