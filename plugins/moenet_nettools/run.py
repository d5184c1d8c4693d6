"""Run a diagnostic program with a fixed argv, bounded in time and output.

No shell: :func:`run_bounded` takes the argv as separate strings and starts the
program with :func:`asyncio.create_subprocess_exec`. The caller puts ``--``
before the target (``ping`` and ``traceroute`` both honour it) and passes only
an address it has checked. The program gets a minimal environment
(``PATH``, ``LC_ALL=C``), no stdin, its own session, and is killed when it
runs past ``timeout`` or has written more than ``limit`` bytes; what it wrote
until then is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import attrs

__all__ = ["RunResult", "run_bounded"]

_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@attrs.frozen(kw_only=True)
class RunResult:
    """What the program printed (stdout and stderr together, decoded leniently)."""

    output: str
    returncode: int | None
    """None when the program was killed (``timed_out`` or ``truncated``)."""
    timed_out: bool = False
    truncated: bool = False
    duration: float = 0.0


async def run_bounded(*argv: str, timeout: float, limit: int) -> RunResult:
    """Run ``argv``; kill it after ``timeout`` seconds or past ``limit`` bytes.

    Raises :class:`FileNotFoundError` when the program is not installed.
    """
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_ENV,
        start_new_session=True,
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    truncated = timed_out = eof = False
    deadline = started + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), left)
            except TimeoutError:
                timed_out = True
                break
            if not chunk:
                eof = True
                break
            if size + len(chunk) > limit:
                chunks.append(chunk[: limit - size])
                size = limit
                truncated = True
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        # Killed unless it closed its output itself: past a limit, and when the
        # request is cancelled (the client went away) too.
        if proc.returncode is None and not eof:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            # Output closed: the program is exiting; it gets the rest of the budget
            # (and a killed one exits at once).
            rc = await asyncio.wait_for(proc.wait(), max(deadline - time.monotonic(), 1.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            rc = await proc.wait()
            timed_out = True
    output = b"".join(chunks).decode("utf-8", errors="replace")
    return RunResult(
        output=output,
        returncode=None if (timed_out or truncated) else rc,
        timed_out=timed_out,
        truncated=truncated,
        duration=time.monotonic() - started,
    )
