"""Local processes for the development tools, the tests and the benchmarks: free ports, waiting for a
process to come up, process groups started and stopped as one, the Dagster services."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.25) -> None:
    """Until ``condition()`` holds (a process's start-up is not an event we can subscribe to)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s")
        pause.wait(interval)


def start_group(cmd: list[str], env: dict, cwd: Path = ROOT, output=subprocess.DEVNULL) -> subprocess.Popen:
    """A process in its own process group, so stopping it stops what it started too."""
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT if output is not None
                            else None, start_new_session=True)


def stop_groups(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """SIGTERM to every group still running, then wait for its leader; a group that does not end in time is
    killed, and so is what is left of a group once its leader has ended (a process the leader started while
    shutting down). Then every process they had started that is still alive, also one in a session of its own:
    it would live on after the group with the ports, URLs and tokens of a test or a service that is gone, and
    write to whatever listens there next."""
    import psutil

    family: list[psutil.Process] = []
    for p in procs:
        try:
            family += psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # the leader if it did not end in time, and what it started while shutting down: still in its group
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    left = [c for c in family if c.is_running()]
    for c in left:
        try:
            c.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=10)
    for c in alive:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass


def dagster_services(env: dict, port: int, output=subprocess.DEVNULL) -> list[subprocess.Popen]:
    """dagster-daemon and dagster-webserver (127.0.0.1:``port``) on the project's workspace, as two processes.

    The daemon logs warnings and errors only: at its default level it writes two lines per sensor tick
    (the lead sensor ticks every 5 s) even while nothing happens; every tick, skip reason and launched
    run is in the UI (Automation, Runs). Its code servers log errors only: the daemon replaces them every
    minute, and each old one says so with a warning ("No heartbeat received ... shutting down")."""
    workspace = str(ROOT / "workspace.yaml")
    return [start_group([str(BIN / "dagster-daemon"), "run", "-w", workspace, "--log-level", "warning",
                         "--code-server-log-level", "error"], env, output=output),
            start_group([str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)], env,
                        output=output)]
