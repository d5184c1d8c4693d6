"""Run one coroutine per item with a bound on how many run at once.

``asyncio.gather`` over 1 000 items behind a semaphore still creates 1 000 tasks
(each with its coroutine frame) before the first one finishes: at 1 000 sessions
that is megabytes of heap for a moment, and the heap stays that big afterwards.
:func:`map_bounded` starts ``limit`` workers that take the items one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["map_bounded"]

T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(func: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int) -> list[R]:
    """``[await func(x) for x in items]`` with at most ``limit`` calls in flight,
    results in the items' order. The first exception cancels the other calls and
    is raised (as ``gather`` without ``return_exceptions`` would, minus stragglers)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    todo = list(enumerate(items))
    results: list[R | None] = [None] * len(todo)
    pending = iter(todo)

    async def worker() -> None:
        for index, item in pending:
            results[index] = await func(item)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(todo)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return results  # type: ignore[return-value]  # every slot was filled
