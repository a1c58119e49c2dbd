"""A Redis broker and dagster-celery workers on 127.0.0.1, for the equivalence test and the scale
benchmark (`make celery-worker` starts a worker the same way for trying it by hand)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .processes import ROOT, free_port, start_group, stop_groups, wait_until


class RedisServer:
    """Debian's redis-server on a free port, no persistence; ``url`` is redis://127.0.0.1:<port>."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "RedisServer":
        import redis

        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (make system-deps)")
        port = free_port()
        self.proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                      "no", "--dir", str(self.work_dir)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited"
                return False

        wait_until(answers, 30, "redis-server answering PING")
        self.url = f"redis://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


class CeleryWorkers:
    """``n`` `dagster-celery worker` processes (names ``<prefix>0`` …) on the broker in ``env``
    (CRM_CELERY_BROKER / CRM_CELERY_BACKEND); entering waits until all of them answer a ping."""

    def __init__(self, env: dict, n: int, prefix: str = "crm", log_dir: Path | None = None):
        self.env, self.n, self.prefix, self.log_dir = env, n, prefix, log_dir
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "CeleryWorkers":
        from celery import Celery

        try:
            for i in range(self.n):
                output = (self.log_dir / f"worker{i}.log").open("w") if self.log_dir else subprocess.DEVNULL
                # One task at a time per worker, and a fresh child process per task: n workers, n steps at once,
                # and a large step's memory goes back to the system when it ends. The worker imports the code
                # location once (-i), so each forked child starts with it loaded instead of importing it again.
                self.procs.append(start_group(
                    [sys.executable, "-m", "dagster_celery.cli", "worker", "start", "-A", "dagster_celery.app",
                     "-y", str(ROOT / "celery_worker.yaml"), "-i", "crm_pipelines.definitions",
                     "--name", f"{self.prefix}{i}", "--", "--concurrency=1", "--max-tasks-per-child=1"],
                    self.env, output=output))
            app = Celery(broker=self.env["CRM_CELERY_BROKER"], backend=self.env["CRM_CELERY_BACKEND"])

            def all_up() -> bool:
                assert all(p.poll() is None for p in self.procs), self._last_log()
                return len(app.control.ping(timeout=1.0)) == self.n

            wait_until(all_up, 120, f"{self.n} Celery workers answering")
        except BaseException:
            stop_groups(self.procs)
            raise
        return self

    def _last_log(self) -> str:
        if self.log_dir is None:
            return "a Celery worker exited"
        return (self.log_dir / "worker0.log").read_text()[-3000:]

    def __exit__(self, *exc) -> None:
        stop_groups(self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]
