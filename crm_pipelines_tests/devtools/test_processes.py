"""Stopping a process group stops everything it started, also a process that left the group."""

from __future__ import annotations

import os
import sys

import psutil

from crm_pipelines.devtools.processes import start_group, stop_groups, wait_until

# The leader starts a child in a session of its own (as a Dagster code server or run worker can be started),
# writes its pid, then waits to be stopped.
LEADER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1] + ".tmp", "w").write(str(child.pid))
__import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def test_a_child_in_a_session_of_its_own_is_stopped_with_its_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    leader = start_group([sys.executable, "-c", LEADER, str(pid_file)], dict(os.environ))
    child = None
    try:
        wait_until(pid_file.exists, 60, "the leader starting its child")
        child = psutil.Process(int(pid_file.read_text()))
        assert os.getsid(child.pid) != os.getsid(leader.pid)  # a group signal does not reach it
        stop_groups([leader], timeout=30)
        assert leader.poll() is not None
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:  # whatever failed, nothing of the test outlives it
        for p in [psutil.Process(leader.pid)] if leader.poll() is None else []:
            p.kill()
        if child is not None and child.is_running():
            child.kill()
