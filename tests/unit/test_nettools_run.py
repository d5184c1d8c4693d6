"""run_bounded: a program is killed past its time or output limit, and when the
request waiting for it is cancelled; what it printed until then is kept."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from moenet_nettools.run import run_bounded


def _running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if marker in argv:
                    return True
            except OSError:
                continue
    return False


async def _wait_until(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_finishes_normally() -> None:
    res = await run_bounded("sh", "-c", "echo one; echo two >&2; exit 3", timeout=10, limit=1000)
    assert (res.output, res.returncode, res.timed_out, res.truncated) == ("one\ntwo\n", 3, False, False)


async def test_output_limit_kills() -> None:
    res = await run_bounded("sh", "-c", "while :; do echo yyyyyyyy; done", timeout=10, limit=1000)
    assert res.truncated and not res.timed_out and res.returncode is None
    assert len(res.output) == 1000 and set(res.output) <= {"y", "\n"}


async def test_timeout_kills_and_keeps_the_output() -> None:
    marker = str(uuid.uuid4().int % 10**6).zfill(6)
    started = time.monotonic()
    task = asyncio.create_task(
        run_bounded("sh", "-c", f"echo start; exec sleep 30.{marker}", timeout=1.0, limit=1000)
    )
    await _wait_until(lambda: _running(f"sleep 30.{marker}"), "the program never started")
    res = await task
    assert time.monotonic() - started < 5
    assert res.timed_out and res.returncode is None and res.output == "start\n"
    assert not _running(f"sleep 30.{marker}")


async def test_cancelled_request_kills_the_program() -> None:
    marker = str(uuid.uuid4().int % 10**6).zfill(6)
    task = asyncio.create_task(run_bounded("sh", "-c", f"exec sleep 31.{marker}", timeout=60, limit=1000))
    await _wait_until(lambda: _running(f"sleep 31.{marker}"), "the program never started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_until(lambda: not _running(f"sleep 31.{marker}"), "the program outlived its request")


async def test_a_missing_program_raises() -> None:
    missing = "moenet-no-such-program"
    with pytest.raises(FileNotFoundError):
        await run_bounded(missing, timeout=1, limit=10)
