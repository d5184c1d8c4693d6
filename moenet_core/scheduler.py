"""The core's task runner: one asyncio loop per periodic task.

Plugins do not write their own ``while True: sleep`` loops. They hand the core a
:class:`~moenet_core.descriptors.TaskSpec` and the core runs the resulting
:class:`~moenet_core.descriptors.Task` here, so the rules every task needs are
written once and are the same for all of them:

* **Schedule.** The first run happens ``spec.initial_delay`` seconds after
  :meth:`Scheduler.start` (0: right away). Later runs are spaced ``interval``
  seconds start-to-start, plus a random jitter in ``[0, jitter * interval]``
  drawn per wait, so several nodes started together do not hit the control plane
  in lockstep. A task never overlaps itself: when a run outlasts its interval the
  next run starts right after it ends, once, with no burst of catch-up runs.
* **Timeout.** A run is bounded by the ``timeout`` override, else
  ``spec.timeout``, else the interval. A run that exceeds it is cancelled,
  counted as ``timeout``, and the task keeps its schedule.
* **Failure isolation.** An exception in a run is logged (with the task and
  plugin bound), counted as ``error``, and the loop goes on. A non-``Exception``
  ``BaseException`` (``CancelledError`` from :meth:`Scheduler.stop`,
  ``KeyboardInterrupt``) is never swallowed.
* **Manual triggers** (``/sync``, ``ctx.trigger``): :meth:`Scheduler.trigger`
  wakes the task from its wait. If a run is in progress, the trigger is served by
  *one* extra run right after it, because the current run may have started before
  whatever caused the trigger; every trigger that arrives meanwhile coalesces into
  that same extra run and all their futures get the same event. The regular
  schedule then restarts from the triggered run's start.
* **Pause** (maintenance): when ``is_paused(spec)`` is true, a due run is skipped
  (not counted as a run or a failure, no metrics, no ``on_finished``), and so is a
  triggered one: its future resolves with ``ok=False, error="paused
  (maintenance)"``. The task keeps waking on its schedule, so it resumes by
  itself at the next due time once the pause ends.
* **Observability.** Every finished run updates the metrics and is passed to
  ``on_finished`` (the core forwards it to the ``moenet_task_finished`` hook); a
  raising callback is logged and never stops the task. :meth:`Scheduler.status`
  feeds ``/status``.
* **Shutdown.** :meth:`Scheduler.stop` stops scheduling, gives in-flight runs a
  grace period, cancels what remains, then awaits each task's ``aclose()``.

All waiting and timing goes through a :class:`~moenet_core.clock.Clock`
(``monotonic`` for durations and deadlines, ``time`` for the epoch timestamps in
events, ``sleep`` for every wait, including the timeouts), never through the
loop's real time, so tests drive it with
:class:`~moenet_core.testing.ManualClock`.

A task must honour cancellation (let ``CancelledError`` propagate, or at least
return soon after it): the scheduler waits for a cancelled run to actually end
so that no run outlives its loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from loguru import logger

from .clock import Clock
from .descriptors import Task, TaskRunEvent, TaskSpec
from .errors import MoenetError
from .metrics import AgentMetrics

__all__ = ["CANCELLED_ERROR", "PAUSED_ERROR", "STOPPED_ERROR", "Scheduler"]

PAUSED_ERROR = "paused (maintenance)"
"""``error`` of the event a trigger gets when the task is paused."""

STOPPED_ERROR = "scheduler stopped"
"""``error`` of the event a trigger gets when the scheduler stops before serving it."""

CANCELLED_ERROR = "cancelled: scheduler stopped"
"""``error`` of the event a trigger gets when its run is cancelled by :meth:`Scheduler.stop`."""

_RESULTS = ("ok", "error", "timeout")


def _positive(what: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resolve(futures: Iterable[asyncio.Future[TaskRunEvent]], event: TaskRunEvent) -> None:
    # A caller that gave up (its run_now was cancelled) cancelled its own future.
    for fut in futures:
        if not fut.done():
            fut.set_result(event)


async def _reap(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` (a no-op for finished ones) and wait until they have ended.

    Waiting matters: a cancelled task is only gone once it has run its cleanup,
    and :meth:`Scheduler.stop` promises that nothing it created is left pending.
    ``return_exceptions`` also retrieves every exception, so asyncio never logs
    "exception was never retrieved" for them.
    """
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@attrs.define(eq=False)
class _Entry:
    """One task's configuration and live state."""

    spec: TaskSpec
    task: Task
    interval: float
    timeout_override: float | None
    # Futures of triggers not yet served by a run; the next run claims them all.
    pending: list[asyncio.Future[TaskRunEvent]] = attrs.field(factory=list)
    # Set while the loop waits; resolving it wakes the loop early (trigger, stop).
    wake: asyncio.Future[None] | None = None
    loop: asyncio.Task[None] | None = None
    running: bool = False
    next_due: float | None = None  # monotonic, while waiting
    runs: int = 0
    failures: int = 0
    last: TaskRunEvent | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def timeout(self) -> float:
        if self.timeout_override is not None:
            return self.timeout_override
        if self.spec.timeout is not None:
            return self.spec.timeout
        return self.interval


class Scheduler:
    """Runs periodic tasks on a :class:`Clock`; see the module docstring for the rules.

    ``metrics`` receives ``task_runs{task,result}``, ``task_duration{task}`` and
    ``task_last_success{task}``. ``on_finished`` is called with each finished
    run's :class:`TaskRunEvent`. ``is_paused(spec)`` is asked before every run
    (the core answers true for ``skip_in_maintenance`` tasks while in
    maintenance). ``rng`` draws the jitter; pass a seeded one for reproducible
    tests.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        metrics: AgentMetrics | None = None,
        on_finished: Callable[[TaskRunEvent], None] | None = None,
        is_paused: Callable[[TaskSpec], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._on_finished = on_finished
        self._is_paused = is_paused
        self._rng = rng if rng is not None else random.Random()
        self._entries: dict[str, _Entry] = {}
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------ setup

    def add(
        self, spec: TaskSpec, task: Task, *, interval: float | None = None, timeout: float | None = None
    ) -> None:
        """Register ``task`` under ``spec.name``.

        ``interval`` and ``timeout`` are the config overrides
        (``tasks.<name>.interval`` ...); None keeps the spec's values. Names are
        unique because triggers, ``/status`` and metrics address tasks by name.
        A task added after :meth:`start` starts at once.
        """
        if spec.name in self._entries:
            raise ValueError(f"duplicate task name {spec.name!r} (plugin {spec.plugin!r})")
        if self._stopping:
            raise RuntimeError("scheduler is stopped")
        _positive("interval", interval)
        _positive("timeout", timeout)
        entry = _Entry(
            spec=spec,
            task=task,
            interval=spec.interval if interval is None else interval,
            timeout_override=timeout,
        )
        self._entries[spec.name] = entry
        if self._metrics is not None:
            # Create the series at zero so "never failed" reads 0, not "no data".
            for result in _RESULTS:
                self._metrics.task_runs.labels(task=spec.name, result=result)
        if self._started:
            self._spawn(entry)

    def names(self) -> list[str]:
        """Task names in the order they were added."""
        return list(self._entries)

    def lookup(self, name: str) -> tuple[TaskSpec, Task] | None:
        """The spec and the live object of task ``name``, or None when not added."""
        entry = self._entries.get(name)
        return None if entry is None else (entry.spec, entry.task)

    async def start(self) -> None:
        """Start one loop per task. Runs with ``initial_delay`` 0 begin as soon as
        the caller next yields to the event loop."""
        if self._started:
            raise RuntimeError("scheduler already started")
        if self._stopping:
            raise RuntimeError("scheduler is stopped")
        self._started = True
        for entry in self._entries.values():
            self._spawn(entry)

    def _spawn(self, entry: _Entry) -> None:
        entry.loop = asyncio.create_task(self._loop(entry), name=f"moenet-task:{entry.name}")
        entry.loop.add_done_callback(self._loop_done)

    @staticmethod
    def _loop_done(loop: asyncio.Task[None]) -> None:
        # The loop only ends by itself on stop; anything else is a bug or a
        # BaseException from a task, which must not vanish silently.
        if loop.cancelled():
            return
        exc = loop.exception()
        if exc is not None:
            logger.opt(exception=exc).critical("scheduler loop {} died", loop.get_name())

    # ------------------------------------------------------------ control

    def trigger(self, name: str) -> asyncio.Future[TaskRunEvent]:
        """Ask for a run of ``name`` as soon as possible; the future resolves with
        the event of the run that serves it (see the module docstring for
        coalescing). Raises :class:`KeyError` for an unknown name.

        Each call gets its own future, so a caller that cancels its wait does not
        cancel the wait of others coalesced into the same run.
        """
        entry = self._entry(name)
        fut: asyncio.Future[TaskRunEvent] = asyncio.get_running_loop().create_future()
        if self._stopping:
            fut.set_result(self._stub_event(entry, STOPPED_ERROR))
            return fut
        entry.pending.append(fut)
        self._wake(entry)
        return fut

    async def run_now(self, name: str) -> TaskRunEvent:
        """:meth:`trigger` and wait for the run that serves it."""
        return await self.trigger(name)

    def set_interval(self, name: str, interval: float) -> None:
        """Change the interval (config reload). The wait in progress keeps its
        deadline; the new interval applies from the next wait, and to the default
        timeout of runs started from then on."""
        _positive("interval", interval)
        self._entry(name).interval = interval

    def status(self) -> list[dict[str, Any]]:
        """One JSON-able dict per task, for ``/status``.

        ``next_run`` is the epoch time of the next scheduled run while the task
        waits, else None (not started, running, stopped). ``failures`` counts
        errors and timeouts; ``runs`` counts every finished run.
        """
        now_mono = self._clock.monotonic()
        now_wall = self._clock.time()
        out: list[dict[str, Any]] = []
        for entry in self._entries.values():
            last = entry.last
            out.append(
                {
                    "name": entry.name,
                    "plugin": entry.spec.plugin,
                    "description": entry.spec.description,
                    "interval": entry.interval,
                    "timeout": entry.timeout,
                    "running": entry.running,
                    "runs": entry.runs,
                    "failures": entry.failures,
                    "last": None
                    if last is None
                    else {
                        "started": last.started,
                        "duration": last.duration,
                        "ok": last.ok,
                        "error": last.error,
                        "result": last.result,
                    },
                    "next_run": None if entry.next_due is None else now_wall + (entry.next_due - now_mono),
                    "paused": self._paused(entry),
                }
            )
        return out

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling and shut down.

        Waiting loops end at once; a run in progress gets up to ``timeout``
        seconds (on the clock) to finish and is counted normally if it does;
        whatever is still running then is cancelled. Unserved triggers resolve
        with ``error="scheduler stopped"``. Finally each task's ``aclose()``, if
        it has one, is awaited; its errors are logged, not raised, so one task
        cannot prevent the others from closing. When this returns, no asyncio task
        created by the scheduler is left. Calling it again waits for the first
        call to finish.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            for entry in self._entries.values():
                self._wake(entry)
            loops = [e.loop for e in self._entries.values() if e.loop is not None]
            await self._wait_all(loops, timeout)
            stragglers = sorted(e.name for e in self._entries.values() if e.loop and not e.loop.done())
            if stragglers:
                logger.warning(
                    "cancelling tasks still running {:g}s after stop: {}", timeout, ", ".join(stragglers)
                )
            await _reap(*loops)
            for entry in self._entries.values():
                pending, entry.pending = entry.pending, []
                _resolve(pending, self._stub_event(entry, STOPPED_ERROR))
            for entry in self._entries.values():
                await self._aclose(entry)
        finally:
            self._stopped.set()

    async def _aclose(self, entry: _Entry) -> None:
        closer = getattr(entry.task, "aclose", None)
        if not callable(closer):
            return
        try:
            await closer()
        except Exception:
            logger.bind(task=entry.name, plugin=entry.spec.plugin).exception(
                "task {} failed to close", entry.name
            )

    # ------------------------------------------------------------ the loop

    async def _loop(self, entry: _Entry) -> None:
        """Wait, run, repeat, until :meth:`stop`."""
        waiters: list[asyncio.Future[TaskRunEvent]] = []
        try:
            due = self._clock.monotonic() + entry.spec.initial_delay
            while not self._stopping:
                await self._wait_until(entry, due)
                if self._stop_requested():  # a method: mypy would keep the narrowed attribute
                    break
                started = self._clock.monotonic()
                # Claim every trigger so far: this run serves them all. Triggers
                # arriving during the run wait for the next one.
                waiters, entry.pending = entry.pending, []
                if self._paused(entry):
                    logger.bind(task=entry.name, plugin=entry.spec.plugin).debug(
                        "task {} skipped: paused", entry.name
                    )
                    _resolve(waiters, self._stub_event(entry, PAUSED_ERROR))
                else:
                    _resolve(waiters, await self._run_one(entry))
                waiters = []
                due = started + self._next_delay(entry)
        finally:
            # Only non-empty when a triggered run did not finish: stop() cancelled
            # it, or a BaseException ended the loop. Never leave a caller hanging.
            _resolve(waiters, self._stub_event(entry, CANCELLED_ERROR))

    async def _wait_until(self, entry: _Entry, due: float) -> None:
        """Sleep until ``due`` (monotonic) unless a trigger or stop comes first.

        The sleep runs as its own task raced against the wake future; the loser
        is cancelled and awaited so no sleeper outlives the wait.
        """
        if entry.pending or self._stopping:
            return
        delay = due - self._clock.monotonic()
        if delay <= 0:
            return  # the last run outlasted the interval: run again right away
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = asyncio.create_task(self._clock.sleep(delay), name=f"moenet-sleep:{entry.name}")
        entry.wake, entry.next_due = wake, due
        try:
            await asyncio.wait((sleeper, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            entry.wake, entry.next_due = None, None
            wake.cancel()
            await _reap(sleeper)

    async def _run_one(self, entry: _Entry) -> TaskRunEvent:
        """One run with its timeout; returns the event after metrics and callback."""
        spec = entry.spec
        log = logger.bind(task=entry.name, plugin=spec.plugin)
        timeout = entry.timeout
        started_wall = self._clock.time()
        t0 = self._clock.monotonic()
        # The body runs as a separate task so the timeout (a clock sleep) can
        # cancel it without cancelling the loop.
        body = asyncio.create_task(self._body(entry), name=f"moenet-run:{entry.name}")
        entry.running = True
        try:
            await self._wait_all([body], timeout)
            timed_out = not body.done()
        finally:
            # Cancels the body on timeout, or when stop() cancels this loop.
            await _reap(body)
            entry.running = False
        duration = self._clock.monotonic() - t0

        value: object = None
        error: str | None
        if timed_out:
            ok, result, error = False, "timeout", f"timed out after {timeout:g}s"
            log.warning("task {} {}; cancelled", entry.name, error)
        elif body.cancelled():
            # Not cancelled by us: the task's own code let a CancelledError out.
            ok, result, error = False, "error", "run was cancelled"
            log.error("task {} failed: {}", entry.name, error)
        else:
            # Re-raises a BaseException (not Exception) from the body: it must
            # end the loop, not be counted.
            ok, value, error = body.result()
            result = "ok" if ok else "error"

        event = TaskRunEvent(
            task=entry.name,
            plugin=spec.plugin,
            ok=ok,
            started=started_wall,
            duration=duration,
            error=error,
            result=value,
        )
        entry.runs += 1
        if not ok:
            entry.failures += 1
        entry.last = event
        if self._metrics is not None:
            self._metrics.task_runs.labels(task=entry.name, result=result).inc()
            self._metrics.task_duration.labels(task=entry.name).observe(duration)
            if ok:
                self._metrics.task_last_success.labels(task=entry.name).set(self._clock.time())
        if self._on_finished is not None:
            try:
                self._on_finished(event)
            except Exception:
                log.exception("on_finished callback failed for task {}", entry.name)
        return event

    async def _body(self, entry: _Entry) -> tuple[bool, object, str | None]:
        """Call ``run_once``; an ``Exception`` becomes ``(False, None, error)``.

        Runs inside ``logger.contextualize`` so every log line the task emits
        carries its name.
        """
        with logger.contextualize(task=entry.name):
            try:
                value = await entry.task.run_once()
            except MoenetError as exc:
                # A deliberate error that already says what went wrong (CP down,
                # BIRD rejected a file): one line, no traceback.
                logger.bind(task=entry.name, plugin=entry.spec.plugin).error(
                    "task {} failed: {}", entry.name, _describe(exc)
                )
                return False, None, _describe(exc)
            except Exception as exc:
                logger.bind(task=entry.name, plugin=entry.spec.plugin).exception("task {} failed", entry.name)
                return False, None, _describe(exc)
            return True, value, None

    # ------------------------------------------------------------ helpers

    async def _wait_all(self, tasks: Iterable[asyncio.Future[Any]], seconds: float) -> None:
        """Wait until every task is done or ``seconds`` pass on the clock.

        ``asyncio.wait(timeout=...)`` would use the loop's real time, which a
        :class:`ManualClock` does not control, hence the clock-sleep timer.
        """
        remaining: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
        if not remaining:
            return
        timer = asyncio.create_task(self._clock.sleep(seconds), name="moenet-timer")
        try:
            while remaining and not timer.done():
                done, _ = await asyncio.wait({*remaining, timer}, return_when=asyncio.FIRST_COMPLETED)
                remaining -= done
        finally:
            await _reap(timer)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown task {name!r}") from None

    def _stop_requested(self) -> bool:
        return self._stopping

    def _wake(self, entry: _Entry) -> None:
        if entry.wake is not None and not entry.wake.done():
            entry.wake.set_result(None)

    def _paused(self, entry: _Entry) -> bool:
        if self._is_paused is None:
            return False
        try:
            return bool(self._is_paused(entry.spec))
        except Exception:
            # A broken pause check must not stop the task; running is the safer
            # default because maintenance is the exception, not the rule.
            logger.bind(task=entry.name, plugin=entry.spec.plugin).exception("is_paused failed")
            return False

    def _next_delay(self, entry: _Entry) -> float:
        spread = entry.spec.jitter * entry.interval
        return entry.interval + (self._rng.uniform(0.0, spread) if spread > 0 else 0.0)

    def _stub_event(self, entry: _Entry, error: str) -> TaskRunEvent:
        """An ``ok=False`` event for a trigger that got no real run."""
        return TaskRunEvent(
            task=entry.name,
            plugin=entry.spec.plugin,
            ok=False,
            started=self._clock.time(),
            duration=0.0,
            error=error,
        )
