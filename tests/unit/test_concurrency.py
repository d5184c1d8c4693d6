"""moenet_core.map_bounded: one call per item, a bound on calls in flight."""

from __future__ import annotations

import asyncio

import pytest

from moenet_core import map_bounded


async def test_results_in_order_and_never_more_than_the_limit_in_flight() -> None:
    in_flight = most = 0
    release = asyncio.Event()

    async def call(x: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if x < 3:
            await release.wait()  # the first calls hold their slots until released
        await asyncio.sleep(0)
        in_flight -= 1
        return x * 10

    task = asyncio.ensure_future(map_bounded(call, range(50), 3))
    while in_flight < 3:
        await asyncio.sleep(0)
    assert most == 3 and not task.done()  # 3 slots held: nobody else started
    release.set()
    assert await task == [x * 10 for x in range(50)]
    assert most == 3


async def test_the_first_error_cancels_the_rest_and_is_raised() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def call(x: int) -> int:
        started.append(x)
        if x == 1:
            raise RuntimeError("boom")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    with pytest.raises(RuntimeError, match="boom"):
        await map_bounded(call, range(10), 2)
    assert started == [0, 1] and cancelled == [0]


async def test_nothing_to_do_and_a_bad_limit() -> None:
    async def call(x: int) -> int:
        return x

    assert await map_bounded(call, [], 4) == []
    with pytest.raises(ValueError):
        await map_bounded(call, [1], 0)
