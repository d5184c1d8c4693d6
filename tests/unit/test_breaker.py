"""CircuitBreaker state machine, driven by a ManualClock."""

from __future__ import annotations

import asyncio

import pytest

from moenet_core.breaker import CircuitBreaker
from moenet_core.errors import CircuitOpenError, ControlPlaneRejected, ControlPlaneUnavailable
from moenet_core.testing import ManualClock


def make(clock: ManualClock, changes: list[str] | None = None) -> CircuitBreaker:
    return CircuitBreaker(clock=clock, on_change=changes.append if changes is not None else None)


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.record_failure(b.before_call())


def succeed(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.record_success(b.before_call())


async def opened(clock: ManualClock, changes: list[str] | None = None) -> CircuitBreaker:
    b = make(clock, changes)
    fail(b, 5)
    assert b.state == "open"
    return b


def test_starts_closed() -> None:
    b = make(ManualClock())
    assert b.state == "closed"
    assert b.retry_after == 0.0


def test_opens_after_five_consecutive_failures() -> None:
    changes: list[str] = []
    b = make(ManualClock(), changes)
    fail(b, 4)
    assert b.state == "closed"
    assert b.consecutive_failures == 4
    fail(b)
    assert b.state == "open"
    assert changes == ["open"]


def test_success_resets_the_failure_count() -> None:
    b = make(ManualClock())
    fail(b, 4)
    succeed(b)
    fail(b, 4)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"


async def test_refuses_while_open_with_time_until_retry() -> None:
    clock = ManualClock()
    b = await opened(clock)
    with pytest.raises(CircuitOpenError, match=r"retry in 30\.0s"):
        b.before_call()
    await clock.advance(12)
    assert b.retry_after == pytest.approx(18.0)
    with pytest.raises(CircuitOpenError, match=r"retry in 18\.0s"):
        b.before_call()
    await clock.advance(17.9)
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        b.before_call()


async def test_circuit_open_error_is_an_unavailable_error() -> None:
    b = await opened(ManualClock())
    with pytest.raises(ControlPlaneUnavailable):
        b.before_call()


async def test_half_open_after_open_duration_admits_one_trial() -> None:
    clock = ManualClock()
    changes: list[str] = []
    b = await opened(clock, changes)
    await clock.advance(30)
    ticket = b.before_call()  # the call that flips open -> half-open is the trial
    assert b.state == "half_open"
    assert changes == ["open", "half_open"]
    with pytest.raises(CircuitOpenError, match="trial"):
        b.before_call()
    b.record_success(ticket)
    # The trial is done: the next one may go.
    b.record_success(b.before_call())
    assert b.half_open_successes == 2


async def test_state_property_moves_to_half_open_on_its_own() -> None:
    clock = ManualClock()
    changes: list[str] = []
    b = await opened(clock, changes)
    await clock.advance(30)
    assert b.state == "half_open"
    assert changes == ["open", "half_open"]
    assert b.retry_after == 0.0


async def test_three_successes_close_counting_the_flipping_call() -> None:
    """The Go breaker did not count the call that flipped open -> half-open."""
    clock = ManualClock()
    changes: list[str] = []
    b = await opened(clock, changes)
    await clock.advance(30)
    succeed(b)  # this one flips the state; it must count
    assert b.half_open_successes == 1
    succeed(b)
    assert b.state == "half_open"
    succeed(b)
    assert b.state == "closed"
    assert changes == ["open", "half_open", "closed"]
    # Closed again with a clean slate: it takes five new failures to reopen.
    fail(b, 4)
    assert b.state == "closed"


async def test_failure_in_half_open_reopens_and_restarts_timer() -> None:
    clock = ManualClock()
    changes: list[str] = []
    b = await opened(clock, changes)
    await clock.advance(30)
    succeed(b, 2)
    fail(b)
    assert b.state == "open"
    assert b.retry_after == pytest.approx(30.0)
    await clock.advance(29)
    with pytest.raises(CircuitOpenError):
        b.before_call()
    await clock.advance(1)
    # Successes from the previous half-open period do not carry over.
    succeed(b, 2)
    assert b.state == "half_open"
    succeed(b)
    assert b.state == "closed"
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


async def test_stale_verdicts_are_ignored() -> None:
    """A call admitted while closed that reports after the breaker moved on must
    not decide the half-open trial."""
    clock = ManualClock()
    b = make(clock)
    straggler = b.before_call()
    fail(b, 5)
    await clock.advance(30)
    trial = b.before_call()
    b.record_success(straggler)
    b.record_failure(straggler)
    assert b.state == "half_open"
    assert b.half_open_successes == 0
    b.record_success(trial)
    assert b.half_open_successes == 1


async def test_release_frees_the_trial_slot_without_a_verdict() -> None:
    clock = ManualClock()
    b = await opened(clock)
    await clock.advance(30)
    ticket = b.before_call()
    b.release(ticket)
    assert b.state == "half_open"
    assert b.half_open_successes == 0
    b.before_call()  # admitted: the slot is free


async def test_guard_classifies_outcomes() -> None:
    clock = ManualClock()
    b = make(clock)
    for _ in range(4):
        with pytest.raises(ControlPlaneUnavailable):
            async with b.guard():
                raise ControlPlaneUnavailable("down")
    # A rejection means the CP answered: it resets the count.
    with pytest.raises(ControlPlaneRejected):
        async with b.guard():
            raise ControlPlaneRejected("bad request", status=400)
    assert b.consecutive_failures == 0
    for _ in range(5):
        with pytest.raises(OSError):
            async with b.guard():
                raise ConnectionRefusedError
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        async with b.guard():
            pytest.fail("body must not run while open")


async def test_guard_cancellation_releases_trial() -> None:
    clock = ManualClock()
    b = await opened(clock)
    await clock.advance(30)
    started = asyncio.Event()

    async def trial() -> None:
        async with b.guard():
            started.set()
            await clock.sleep(100)

    task = asyncio.create_task(trial())
    await started.wait()
    with pytest.raises(CircuitOpenError):
        b.before_call()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half_open"
    async with b.guard():
        pass
    assert b.half_open_successes == 1


def test_listener_errors_do_not_break_the_breaker() -> None:
    def boom(_state: str) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    b = CircuitBreaker(clock=ManualClock(), on_change=boom)
    b.subscribe(seen.append)
    fail(b, 5)
    assert b.state == "open"
    assert seen == ["open"]


def test_custom_thresholds() -> None:
    b = CircuitBreaker(failure_threshold=1, success_threshold=1, open_duration=0, clock=ManualClock())
    fail(b)
    # open_duration 0: the very next call is the trial.
    succeed(b)
    assert b.state == "closed"


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"success_threshold": 0}, {"open_duration": -1.0}]
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(clock=ManualClock(), **kwargs)  # type: ignore[arg-type]
