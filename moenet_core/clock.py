"""Time as a dependency.

Everything in the core that waits or measures (scheduler, retry backoff, circuit
breaker, bootstrap) takes a :class:`Clock`, so tests can drive time by hand
(:class:`moenet_core.testing.ManualClock`) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """The three things the agent asks of time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and timeouts)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps sent to the CP)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; cancellable."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time`, :func:`asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
