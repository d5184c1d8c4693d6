"""A circuit breaker for control-plane calls.

When the CP is down, every task hammering it with retries only adds load and
log noise; the breaker makes calls fail fast for a while instead, then lets a
single trial call through to find out whether the CP is back.

States: ``closed`` (calls pass; ``failure_threshold`` consecutive failures open
it), ``open`` (calls are refused with :class:`CircuitOpenError` until
``open_duration`` has passed on the clock), ``half_open`` (one trial call at a
time; ``success_threshold`` successes close it, any failure re-opens it and
restarts the timer).

Accounting: the call that finds the open period elapsed is the first half-open
trial and its verdict counts (the Go agent's breaker moved to half-open without
counting that call, yet counted its success). Each admission returns a ticket;
a verdict from a call admitted in an earlier state (a straggler that was already
in flight when the breaker opened) is ignored, so only the trial decides a
half-open breaker.

Only *availability* failures should be recorded as failures (network errors,
timeouts, 5xx, 429). A 4xx or an error envelope means the CP is up: record it as
a success.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

from loguru import logger

from .clock import Clock
from .errors import CircuitOpenError, ControlPlaneRejected, ControlPlaneUnavailable

BreakerState = Literal["closed", "open", "half_open"]

#: Exceptions that :meth:`CircuitBreaker.guard` records as failures.
AVAILABILITY_ERRORS: tuple[type[BaseException], ...] = (ControlPlaneUnavailable, OSError, TimeoutError)


class CircuitBreaker:
    """Counts consecutive availability failures and refuses calls while open.

    Use either ``async with breaker.guard(): ...`` or, when one call needs a
    finer verdict, ``ticket = breaker.before_call()`` followed by exactly one of
    ``record_success(ticket)``, ``record_failure(ticket)`` or ``release(ticket)``
    (the call ended without telling anything about the CP, e.g. it was cancelled).

    ``on_change`` (and every :meth:`subscribe`-d callback) is called with the new
    state name after each transition.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        success_threshold: int = 3,
        open_duration: float = 30.0,
        *,
        clock: Clock,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if success_threshold < 1:
            raise ValueError(f"success_threshold must be >= 1, got {success_threshold!r}")
        if open_duration < 0:
            raise ValueError(f"open_duration must be >= 0, got {open_duration!r}")
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.open_duration = open_duration
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = [on_change] if on_change is not None else []
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive, while closed
        self._successes = 0  # while half-open
        self._opened_at = 0.0
        self._trial_in_flight = False
        # Bumped on every transition; tickets from an older epoch are stale.
        self._epoch = 0

    # -- observation -------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state. Reading it after the open period has elapsed moves
        the breaker to ``half_open`` (and notifies listeners)."""
        self._maybe_half_open()
        return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker admits a trial call (0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.open_duration - self._clock.monotonic())

    @property
    def consecutive_failures(self) -> int:
        """Failures counted toward opening (closed state only)."""
        return self._failures

    @property
    def half_open_successes(self) -> int:
        """Trial successes counted toward closing (half-open state only)."""
        return self._successes

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Also call ``callback(state)`` on every transition (e.g. a metrics gauge)."""
        self._listeners.append(callback)

    # -- admission and verdicts -------------------------------------------

    def before_call(self) -> int:
        """Admit a call or raise :class:`CircuitOpenError`; returns its ticket."""
        state = self.state
        if state == "open":
            wait = self.retry_after
            raise CircuitOpenError(f"circuit breaker open: control plane calls paused, retry in {wait:.1f}s")
        if state == "half_open":
            if self._trial_in_flight:
                raise CircuitOpenError("circuit breaker half-open: a trial call is already in flight")
            self._trial_in_flight = True
        return self._epoch

    def record_success(self, ticket: int | None = None) -> None:
        """The admitted call reached the CP (2xx, 4xx, error envelope)."""
        if not self._current(ticket):
            return
        if self._state == "closed":
            self._failures = 0
        elif self._state == "half_open" and self._trial_in_flight:
            self._trial_in_flight = False
            self._successes += 1
            if self._successes >= self.success_threshold:
                self._transition("closed")

    def record_failure(self, ticket: int | None = None) -> None:
        """The admitted call found the CP unavailable (network, timeout, 5xx, 429)."""
        if not self._current(ticket):
            return
        if self._state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._transition("open")
        elif self._state == "half_open" and self._trial_in_flight:
            self._transition("open")

    def release(self, ticket: int | None = None) -> None:
        """The admitted call ended without a verdict (cancelled): free the trial slot."""
        if self._current(ticket) and self._state == "half_open":
            self._trial_in_flight = False

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the body as one admitted call: a clean exit or a
        :class:`ControlPlaneRejected` is a success, an availability error
        (:data:`AVAILABILITY_ERRORS`) a failure, anything else (cancellation,
        a bug) releases the slot without a verdict."""
        ticket = self.before_call()
        try:
            yield
        except ControlPlaneRejected:
            self.record_success(ticket)
            raise
        except AVAILABILITY_ERRORS:
            self.record_failure(ticket)
            raise
        except BaseException:
            self.release(ticket)
            raise
        else:
            self.record_success(ticket)

    # -- internals --------------------------------------------------------

    def _current(self, ticket: int | None) -> bool:
        self._maybe_half_open()
        return ticket is None or ticket == self._epoch

    def _maybe_half_open(self) -> None:
        if self._state == "open" and self._clock.monotonic() >= self._opened_at + self.open_duration:
            self._transition("half_open")

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._failures = 0
        self._successes = 0
        self._trial_in_flight = False
        if new == "open":
            self._opened_at = self._clock.monotonic()
        log = logger.bind(breaker_from=old, breaker_to=new)
        if new == "open":
            log.warning("control-plane circuit breaker {} -> open for {:.0f}s", old, self.open_duration)
        else:
            log.info("control-plane circuit breaker {} -> {}", old, new)
        for callback in list(self._listeners):
            try:
                callback(new)
            except Exception:
                logger.exception("circuit breaker state listener failed")
