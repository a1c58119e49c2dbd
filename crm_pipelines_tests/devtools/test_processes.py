"""Stopping a process group stops everything it started: also a process that left the group, and one that stays in
the group after its leader has ended."""

from __future__ import annotations

import os
import sys

import psutil
import pytest

from crm_pipelines.devtools.processes import start_group, stop_groups, wait_until

# The leader starts a child, then waits to be stopped; the child writes its pid once it is ready.
LEADER = """
import subprocess, sys, time
CHILD = '''
import os, signal, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
'''
subprocess.Popen([sys.executable, "-c", CHILD, sys.argv[1], sys.argv[3]], start_new_session=sys.argv[2] == "own")
time.sleep(300)
"""


@pytest.mark.parametrize("session, sigterm", [
    ("own", "default"),    # a session of its own (as a Dagster code server or run worker can be): no group signal
    ("group", "ignore"),   # in the group, but outlives the leader (as a process started while shutting down can)
])
def test_what_a_group_started_is_stopped_with_it(tmp_path, session, sigterm):
    pid_file = tmp_path / "child.pid"
    leader = start_group([sys.executable, "-c", LEADER, str(pid_file), session, sigterm], dict(os.environ))
    child = None
    try:
        wait_until(pid_file.exists, 60, "the leader starting its child")
        child = psutil.Process(int(pid_file.read_text()))
        assert (os.getsid(child.pid) != os.getsid(leader.pid)) == (session == "own")
        stop_groups([leader], timeout=30)
        assert leader.poll() is not None
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:  # whatever failed, nothing of the test outlives it
        if leader.poll() is None:
            leader.kill()
        if child is not None and child.is_running():
            child.kill()
