"""``daemon.wait_exited``: processes that exit in time are left be, those still
running after the timeout are SIGKILLed, unless the ``spare`` predicate says to
leave them (a wireguard-go launcher that has meanwhile become the daemon). The
processes are our own ``sleep`` children; no root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from moenet_wireguard import daemon


@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(seconds: float) -> subprocess.Popen[bytes]:
        code = f"import time; time.sleep({seconds})"
        proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_a_process_that_exits_in_time_is_not_killed(spawn) -> None:
    quick = spawn(0)
    assert await daemon.wait_exited([quick.pid], timeout=10) == []
    assert quick.wait(timeout=5) == 0


async def test_a_process_still_running_after_the_timeout_is_killed(spawn) -> None:
    stuck = spawn(60)
    assert await daemon.wait_exited([stuck.pid], timeout=0.2) == [stuck.pid]
    assert stuck.wait(timeout=5) == -signal.SIGKILL


async def test_spare_leaves_the_processes_it_names_running(spawn) -> None:
    """The predicate is asked only about processes still running at the timeout;
    those it spares are neither killed nor reported."""
    spared, stuck, quick = spawn(60), spawn(60), spawn(0)
    os.waitid(os.P_PID, quick.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    asked: list[int] = []

    def spare(pid: int) -> bool:
        asked.append(pid)
        return pid == spared.pid

    pids = [spared.pid, stuck.pid, quick.pid]
    assert await daemon.wait_exited(pids, timeout=0.2, spare=spare) == [stuck.pid]
    assert stuck.wait(timeout=5) == -signal.SIGKILL
    assert spared.poll() is None  # still running
    assert quick.wait(timeout=5) == 0
    assert asked == [spared.pid, stuck.pid]
