"""A clock tests move by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class ManualClock:
    """Implements :class:`moenet_core.clock.Clock`; time only moves on :meth:`advance`.

    ``sleep`` parks the caller until the clock has been advanced past its
    deadline. ``advance`` wakes sleepers in deadline order and lets the event loop
    run them, so code that sleeps in a loop (a scheduler, a backoff) makes its
    progress before ``advance`` returns.
    """

    def __init__(self, start: float = 1_000_000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._sleep_waiters: list[asyncio.Future[None]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        waiters, self._sleep_waiters = self._sleep_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        await fut

    @property
    def sleepers(self) -> int:
        """Number of coroutines currently parked in :meth:`sleep`."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """The earliest pending sleep deadline, or None."""
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def settle(self, rounds: int = 20) -> None:
        """Let ready callbacks run (no time passes)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline
        falls inside, one deadline at a time, letting the loop run in between."""
        target = self._now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await self.settle()
        self._now = target
        await self.settle()

    async def wait_sleeping(self, count: int = 1) -> None:
        """Return once at least ``count`` coroutines are parked in :meth:`sleep`
        (woken by each new sleep; no polling)."""
        while self.sleepers < count:
            await self._next_sleep()

    def _next_sleep(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleep_waiters.append(fut)
        return fut

    async def drive(
        self,
        awaitable: asyncio.Future[T] | Coroutine[Any, Any, T],
        *,
        max_jump: float | None = None,
        limit: float = 3600.0,
    ) -> T:
        """Await ``awaitable``, moving time to each sleeper's deadline.

        For code that mixes real I/O (a request to a local server) with clock
        sleeps (backoff): when the earliest sleeper is due within ``max_jump``
        seconds (any, if None), time jumps to it; otherwise we wait for the
        awaitable or for a new sleeper. Use ``max_jump`` when longer sleepers,
        such as a run's timeout, are pending while real I/O is in flight, so
        they are not jumped over. Raises TimeoutError after ``limit``
        simulated seconds.
        """
        task = asyncio.ensure_future(awaitable)
        end = self._now + limit
        while not task.done():
            deadline = self.next_deadline()
            if deadline is not None and (max_jump is None or deadline - self._now <= max_jump):
                if deadline > end:
                    task.cancel()
                    raise TimeoutError(f"still waiting after {limit} simulated seconds")
                await self.advance(deadline - self._now)
                continue
            waiter = self._next_sleep()
            try:
                pending: set[asyncio.Future[Any]] = {task, waiter}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return task.result()

    async def run_until_idle(self, limit: float = 3600.0) -> None:
        """Advance to successive deadlines until nobody sleeps or ``limit`` seconds pass."""
        end = self._now + limit
        while (d := self.next_deadline()) is not None and d <= end:
            await self.advance(d - self._now)
