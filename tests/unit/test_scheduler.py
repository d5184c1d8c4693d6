"""Scheduler tests, all on a ManualClock.

Time only moves on ``clock.advance``; a run is held open by an ``asyncio.Event``
inside the fake task, never by sleeping, so every test is deterministic.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from loguru import logger

from moenet_core.descriptors import TaskRunEvent, TaskSpec
from moenet_core.metrics import AgentMetrics
from moenet_core.scheduler import CANCELLED_ERROR, PAUSED_ERROR, STOPPED_ERROR, Scheduler
from moenet_core.testing import ManualClock


class FakeTask:
    """Records when each run starts (seconds since the test's t=0).

    ``gate``: while set to an Event, each run waits for it (holds the run open).
    ``fail``: run indexes that raise ``RuntimeError("boom")``.
    """

    def __init__(self, clock: ManualClock, *, fail: set[int] | None = None, hold: bool = False) -> None:
        self.clock = clock
        self.t0 = clock.monotonic()
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.cancelled = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail = fail or set()
        self.gate: asyncio.Event | None = asyncio.Event() if hold else None
        self.closed = 0

    def now(self) -> float:
        return self.clock.monotonic() - self.t0

    def release(self, *, hold_next: bool = False) -> None:
        """Let the held run finish; ``hold_next`` keeps holding later runs."""
        gate, self.gate = self.gate, (asyncio.Event() if hold_next else None)
        assert gate is not None
        gate.set()

    async def run_once(self) -> object:
        index = len(self.starts)
        self.starts.append(self.now())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            logger.info("run {}", index)
            if self.gate is not None:
                await self.gate.wait()
            if index in self.fail:
                raise RuntimeError("boom")
            self.ends.append(self.now())
            return {"run": index}
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


class ClosingTask(FakeTask):
    async def aclose(self) -> None:
        self.closed += 1


class BadCloseTask(FakeTask):
    async def aclose(self) -> None:
        self.closed += 1
        raise OSError("close failed")


def make_spec(name: str = "t", interval: float = 60.0, **kw: Any) -> TaskSpec:
    kw.setdefault("jitter", 0.0)
    kw.setdefault("plugin", "testplug")
    return TaskSpec(name=name, factory=lambda _ctx: None, interval=interval, **kw)  # type: ignore[arg-type,return-value]


def runs(metrics: AgentMetrics, task: str, result: str) -> float | None:
    return metrics.registry.get_sample_value("moenet_task_runs_total", {"task": task, "result": result})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def metrics() -> AgentMetrics:
    return AgentMetrics()


@pytest.fixture
def events() -> list[TaskRunEvent]:
    return []


@pytest.fixture
def logs() -> Iterator[list[Any]]:
    records: list[Any] = []
    handler = logger.add(lambda m: records.append(m.record), level="DEBUG")
    yield records
    logger.remove(handler)


def others() -> set[asyncio.Task[Any]]:
    """Tasks other than the one running the test."""
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def stop_on_clock(sched: Scheduler, clock: ManualClock, timeout: float = 30.0) -> None:
    """Run ``stop`` while moving the clock past its grace period."""
    stopper = asyncio.create_task(sched.stop(timeout))
    await clock.advance(timeout + 1)
    await stopper


@pytest.fixture
async def sched(
    clock: ManualClock, metrics: AgentMetrics, events: list[TaskRunEvent]
) -> AsyncIterator[Scheduler]:
    s = Scheduler(clock=clock, metrics=metrics, on_finished=events.append, rng=random.Random(1))
    yield s
    await stop_on_clock(s, clock)
    assert not others(), "scheduler left tasks behind"


# ---------------------------------------------------------------- schedule


async def test_initial_run_at_start(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(), t)
    await sched.start()
    await clock.settle()
    assert t.starts == [0.0]


async def test_initial_delay(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(initial_delay=10.0), t)
    await sched.start()
    await clock.advance(9.5)
    assert t.starts == []
    await clock.advance(0.5)
    assert t.starts == [10.0]
    await clock.advance(60)
    assert t.starts == [10.0, 70.0]


async def test_interval_spacing(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(interval=60.0), t)
    await sched.start()
    await clock.advance(120)
    assert t.starts == pytest.approx([0.0, 60.0, 120.0])
    # Only the wait for t=180 sleeps: each run's timeout timer was cancelled.
    assert clock.sleepers == 1
    assert clock.next_deadline() == pytest.approx(t.t0 + 180)


async def test_jitter_stays_within_bounds(clock: ManualClock) -> None:
    sched = Scheduler(clock=clock, rng=random.Random(42))
    t = FakeTask(clock)
    sched.add(make_spec(interval=100.0, jitter=0.5), t)
    await sched.start()
    await clock.advance(5000)
    gaps = [b - a for a, b in zip(t.starts, t.starts[1:], strict=False)]
    assert len(gaps) >= 30
    assert all(100.0 <= g <= 150.0 + 1e-9 for g in gaps)
    assert max(gaps) - min(gaps) > 10  # jitter is actually applied
    await stop_on_clock(sched, clock)


async def test_no_overlap_when_run_outlasts_interval(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock, hold=True)
    sched.add(make_spec(interval=60.0), t, timeout=1000.0)
    await sched.start()
    await clock.advance(200)
    assert t.starts == [0.0]
    assert t.in_flight == 1
    t.release()
    await clock.settle()
    # One run right after the late one, no catch-up burst.
    assert t.starts == [0.0, 200.0]
    assert t.max_in_flight == 1
    await clock.advance(59)
    assert len(t.starts) == 2
    await clock.advance(1)
    assert t.starts == [0.0, 200.0, 260.0]


async def test_timeout_cancels_run_and_schedule_continues(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, events: list[TaskRunEvent]
) -> None:
    t = FakeTask(clock, hold=True)
    sched.add(make_spec(interval=60.0), t, timeout=5.0)
    await sched.start()
    await clock.advance(4.9)
    assert t.cancelled == 0
    await clock.advance(0.1)
    assert t.cancelled == 1
    assert runs(metrics, "t", "timeout") == 1.0
    assert events[-1].ok is False
    assert events[-1].error == "timed out after 5s"
    assert events[-1].duration == pytest.approx(5.0)
    t.gate = None
    await clock.advance(55)
    assert t.starts == [0.0, 60.0]
    assert runs(metrics, "t", "ok") == 1.0


async def test_default_timeout_is_the_interval(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics
) -> None:
    t = FakeTask(clock, hold=True)
    sched.add(make_spec(interval=60.0), t)
    await sched.start()
    await clock.advance(60)
    assert t.cancelled == 1
    assert runs(metrics, "t", "timeout") == 1.0


async def test_exception_counts_as_error_and_loop_continues(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, logs: list[Any]
) -> None:
    t = FakeTask(clock, fail={0})
    sched.add(make_spec(), t)
    await sched.start()
    await clock.settle()
    assert runs(metrics, "t", "error") == 1.0
    await clock.advance(60)
    assert t.starts == [0.0, 60.0]
    assert runs(metrics, "t", "ok") == 1.0
    failures = [r for r in logs if r["level"].name == "ERROR"]
    assert len(failures) == 1
    assert failures[0]["extra"]["task"] == "t"
    assert failures[0]["extra"]["plugin"] == "testplug"
    assert failures[0]["exception"] is not None
    assert isinstance(failures[0]["exception"].value, RuntimeError)


async def test_task_logs_carry_task_name(sched: Scheduler, clock: ManualClock, logs: list[Any]) -> None:
    sched.add(make_spec(name="sessionSync"), FakeTask(clock))
    await sched.start()
    await clock.settle()
    own = [r for r in logs if r["message"] == "run 0"]
    assert len(own) == 1
    assert own[0]["extra"]["task"] == "sessionSync"


async def test_base_exception_is_not_swallowed(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, logs: list[Any]
) -> None:
    class Fatal(BaseException):
        pass

    class FatalTask(FakeTask):
        async def run_once(self) -> object:
            self.starts.append(self.now())
            raise Fatal

    t = FatalTask(clock)
    sched.add(make_spec(), t)
    await sched.start()
    await clock.settle()
    # Not counted as an error: it ends the loop, which is logged loudly.
    assert runs(metrics, "t", "error") == 0.0
    assert any(r["level"].name == "CRITICAL" and isinstance(r["exception"].value, Fatal) for r in logs)
    await clock.advance(120)
    assert t.starts == [0.0]


# ---------------------------------------------------------------- triggers


async def test_trigger_runs_immediately_and_resets_schedule(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(interval=60.0), t)
    await sched.start()
    await clock.advance(20)
    fut = sched.trigger("t")
    await clock.settle()
    assert t.starts == [0.0, 20.0]
    assert fut.done()
    assert fut.result().ok is True
    assert fut.result().result == {"run": 1}
    await clock.advance(59)
    assert len(t.starts) == 2  # t=60 was replaced by t=80
    await clock.advance(1)
    assert t.starts == [0.0, 20.0, 80.0]
    assert clock.sleepers == 1  # the losing sleep was cancelled


async def test_trigger_during_initial_delay(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(initial_delay=30.0), t)
    await sched.start()
    await clock.advance(5)
    event = await sched.run_now("t")
    assert event.ok
    assert t.starts == [5.0]


async def test_triggers_during_run_coalesce_into_one_extra_run(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock, hold=True)
    sched.add(make_spec(interval=60.0), t)
    await sched.start()
    await clock.advance(10)
    futs = [sched.trigger("t") for _ in range(3)]
    await clock.advance(5)
    assert not any(f.done() for f in futs)
    assert t.starts == [0.0]
    t.release(hold_next=True)
    await clock.settle()
    # The extra run started right after the held one ended.
    assert t.starts == [0.0, 15.0]
    assert not any(f.done() for f in futs)
    await clock.advance(3)
    t.release()
    await clock.settle()
    results = [f.result() for f in futs]
    assert all(r is results[0] for r in results)
    assert results[0].ok and results[0].result == {"run": 1}
    assert results[0].duration == pytest.approx(3.0)
    # Exactly one extra run; the schedule restarts from its start (t=15).
    await clock.advance(56)
    assert t.starts == [0.0, 15.0]
    await clock.advance(1)
    assert t.starts == [0.0, 15.0, 75.0]


async def test_run_now_returns_the_event(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(), t)
    await sched.start()
    await clock.advance(30)
    event = await sched.run_now("t")
    assert event.task == "t"
    assert event.plugin == "testplug"
    assert event.ok is True
    assert event.error is None
    assert event.result == {"run": 1}
    assert event.started == clock.time()


async def test_cancelled_run_now_does_not_cancel_coalesced_triggers(
    sched: Scheduler, clock: ManualClock
) -> None:
    t = FakeTask(clock, hold=True)
    sched.add(make_spec(), t, timeout=1000.0)
    await sched.start()
    await clock.settle()
    waiter = asyncio.create_task(sched.run_now("t"))
    other = sched.trigger("t")
    await clock.settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    t.release()
    await clock.settle()
    assert other.result().ok
    assert len(t.starts) == 2


async def test_trigger_before_start_runs_at_start(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(initial_delay=100.0), t)
    fut = sched.trigger("t")
    await sched.start()
    await clock.settle()
    assert fut.result().ok
    assert t.starts == [0.0]


# ---------------------------------------------------------------- pause


async def test_pause_skips_runs_and_triggers(clock: ManualClock, metrics: AgentMetrics) -> None:
    maintenance = {"on": True}
    events: list[TaskRunEvent] = []
    sched = Scheduler(
        clock=clock,
        metrics=metrics,
        on_finished=events.append,
        is_paused=lambda spec: maintenance["on"] and spec.skip_in_maintenance,
    )
    paused = FakeTask(clock)
    free = FakeTask(clock)
    sched.add(make_spec(name="sync", skip_in_maintenance=True), paused)
    sched.add(make_spec(name="heartbeat"), free)
    await sched.start()
    await clock.advance(60)
    assert paused.starts == []
    assert free.starts == [0.0, 60.0]
    status = {s["name"]: s for s in sched.status()}
    assert status["sync"]["paused"] is True
    assert status["heartbeat"]["paused"] is False

    event = await sched.run_now("sync")
    assert event.ok is False
    assert event.error == PAUSED_ERROR
    assert paused.starts == []
    assert runs(metrics, "sync", "ok") == runs(metrics, "sync", "error") == 0.0
    assert {e.task for e in events} == {"heartbeat"}
    assert sched.status()[0]["runs"] == 0
    assert sched.status()[0]["failures"] == 0

    maintenance["on"] = False
    await clock.advance(60)  # the next due time after the trigger-time skip
    assert paused.starts == [120.0]
    assert sched.status()[0]["paused"] is False
    await stop_on_clock(sched, clock)


# ---------------------------------------------------------------- config


async def test_set_interval_takes_effect_on_next_wait(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock)
    sched.add(make_spec(interval=60.0), t)
    await sched.start()
    await clock.settle()
    sched.set_interval("t", 10.0)
    await clock.advance(59)
    assert t.starts == [0.0]  # the wait in progress keeps its deadline
    await clock.advance(1)
    assert t.starts == [0.0, 60.0]
    await clock.advance(10)
    assert t.starts == [0.0, 60.0, 70.0]
    status = sched.status()[0]
    assert status["interval"] == 10.0
    assert status["timeout"] == 10.0  # the default timeout follows the interval


async def test_add_overrides_and_validation(sched: Scheduler, clock: ManualClock) -> None:
    sched.add(make_spec(name="a", interval=60.0, timeout=20.0), FakeTask(clock), interval=30.0)
    sched.add(make_spec(name="b", interval=60.0, timeout=20.0), FakeTask(clock), timeout=7.0)
    status = {s["name"]: s for s in sched.status()}
    assert (status["a"]["interval"], status["a"]["timeout"]) == (30.0, 20.0)
    assert (status["b"]["interval"], status["b"]["timeout"]) == (60.0, 7.0)
    with pytest.raises(ValueError, match="duplicate"):
        sched.add(make_spec(name="a"), FakeTask(clock))
    with pytest.raises(ValueError):
        sched.add(make_spec(name="c"), FakeTask(clock), interval=0)
    with pytest.raises(ValueError):
        sched.set_interval("a", -1)
    assert sched.names() == ["a", "b"]


async def test_unknown_name_raises_key_error(sched: Scheduler) -> None:
    with pytest.raises(KeyError):
        sched.trigger("nope")
    with pytest.raises(KeyError):
        await sched.run_now("nope")
    with pytest.raises(KeyError):
        sched.set_interval("nope", 10)


async def test_task_added_after_start_starts(sched: Scheduler, clock: ManualClock) -> None:
    await sched.start()
    t = FakeTask(clock)
    sched.add(make_spec(), t)
    await clock.settle()
    assert t.starts == [0.0]


# ---------------------------------------------------------------- status & metrics


async def test_status_fields(sched: Scheduler, clock: ManualClock) -> None:
    t = FakeTask(clock, fail={0}, hold=True)
    sched.add(make_spec(description="does things"), t)
    before = sched.status()[0]
    assert before["last"] is None
    assert before["next_run"] is None
    await sched.start()
    await clock.advance(2)
    s = sched.status()[0]
    assert s["running"] is True
    assert s["next_run"] is None
    t.release()
    await clock.settle()
    s = sched.status()[0]
    assert s == {
        "name": "t",
        "plugin": "testplug",
        "description": "does things",
        "interval": 60.0,
        "timeout": 60.0,
        "running": False,
        "runs": 1,
        "failures": 1,
        "last": {
            "started": 1_700_000_000.0,
            "duration": pytest.approx(2.0),
            "ok": False,
            "error": "RuntimeError: boom",
            "result": None,
        },
        "next_run": pytest.approx(1_700_000_060.0),
        "paused": False,
    }
    await clock.advance(60)
    s = sched.status()[0]
    assert s["runs"] == 2
    assert s["failures"] == 1
    assert s["last"]["ok"] is True
    assert s["last"]["result"] == {"run": 1}
    assert s["next_run"] == pytest.approx(1_700_000_120.0)


async def test_metrics(sched: Scheduler, clock: ManualClock, metrics: AgentMetrics) -> None:
    t = FakeTask(clock, fail={1}, hold=True)
    sched.add(make_spec(), t, timeout=10.0)
    assert runs(metrics, "t", "ok") == 0.0  # series exist before the first run
    await sched.start()
    await clock.advance(3)
    t.release()  # run 0: ok after 3 s
    await clock.advance(57)  # run 1 at t=60: error
    t.gate = asyncio.Event()
    await clock.advance(60)  # run 2 at t=120: held, times out at t=130
    await clock.advance(10)
    assert runs(metrics, "t", "ok") == 1.0
    assert runs(metrics, "t", "error") == 1.0
    assert runs(metrics, "t", "timeout") == 1.0
    reg = metrics.registry
    assert reg.get_sample_value("moenet_task_duration_seconds_count", {"task": "t"}) == 3.0
    assert reg.get_sample_value("moenet_task_duration_seconds_sum", {"task": "t"}) == pytest.approx(13.0)
    assert reg.get_sample_value("moenet_task_last_success_timestamp_seconds", {"task": "t"}) == pytest.approx(
        1_700_000_003.0
    )


async def test_on_finished_receives_events_and_errors_do_not_stop_task(
    clock: ManualClock, logs: list[Any]
) -> None:
    seen: list[TaskRunEvent] = []

    def callback(event: TaskRunEvent) -> None:
        seen.append(event)
        raise ValueError("observer bug")

    sched = Scheduler(clock=clock, on_finished=callback)
    t = FakeTask(clock, fail={1})
    sched.add(make_spec(), t)
    await sched.start()
    await clock.advance(120)
    assert [e.ok for e in seen] == [True, False, True]
    assert [e.started for e in seen] == [1_700_000_000.0, 1_700_000_060.0, 1_700_000_120.0]
    assert seen[1].error == "RuntimeError: boom"
    assert len([r for r in logs if "on_finished" in r["message"]]) == 3
    await stop_on_clock(sched, clock)


# ---------------------------------------------------------------- stop


async def test_stop_waits_for_inflight_run(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, events: list[TaskRunEvent]
) -> None:
    t = ClosingTask(clock, hold=True)
    sched.add(make_spec(), t)
    await sched.start()
    await clock.settle()
    stopper = asyncio.create_task(sched.stop())
    await clock.advance(10)
    assert not stopper.done()
    assert t.closed == 0
    t.release()
    await clock.settle()
    assert stopper.done()
    await stopper
    assert t.cancelled == 0
    assert t.ends == [10.0]
    assert runs(metrics, "t", "ok") == 1.0
    assert events[-1].ok
    assert t.closed == 1
    assert not others()
    # No further runs once stopped, and late triggers get a "stopped" event.
    await clock.advance(600)
    assert t.starts == [0.0]
    assert sched.trigger("t").result().error == STOPPED_ERROR


async def test_stop_cancels_run_that_outlasts_grace_period(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, logs: list[Any]
) -> None:
    t = ClosingTask(clock, hold=True)
    sched.add(make_spec(initial_delay=5.0), t, timeout=1000.0)
    await sched.start()
    await clock.settle()
    served = sched.trigger("t")  # claimed by the run that gets cancelled
    await clock.settle()
    later = sched.trigger("t")  # waits for an extra run that never comes
    stopper = asyncio.create_task(sched.stop(30.0))
    await clock.advance(29.5)
    assert not stopper.done()
    await clock.advance(1)
    assert stopper.done()
    await stopper
    assert t.cancelled == 1
    assert served.result().error == CANCELLED_ERROR
    assert later.result().error == STOPPED_ERROR
    # A run cancelled by shutdown is neither a success nor a failure.
    assert runs(metrics, "t", "ok") == runs(metrics, "t", "error") == runs(metrics, "t", "timeout") == 0.0
    assert t.closed == 1
    assert any(r["level"].name == "WARNING" and r["message"].endswith("after stop: t") for r in logs)
    assert not others()


async def test_stop_awaits_every_aclose_even_if_one_fails(
    sched: Scheduler, clock: ManualClock, logs: list[Any]
) -> None:
    bad = BadCloseTask(clock)
    good = ClosingTask(clock)
    plain = FakeTask(clock)  # no aclose at all
    sched.add(make_spec(name="bad"), bad)
    sched.add(make_spec(name="good"), good)
    sched.add(make_spec(name="plain"), plain)
    await sched.start()
    await clock.settle()
    await sched.stop()
    assert (bad.closed, good.closed) == (1, 1)
    assert any(r["extra"].get("task") == "bad" and r["exception"] is not None for r in logs)
    assert not others()
    await sched.stop()  # idempotent
    assert good.closed == 1


async def test_stop_before_start(clock: ManualClock) -> None:
    sched = Scheduler(clock=clock)
    t = ClosingTask(clock)
    sched.add(make_spec(), t)
    fut = sched.trigger("t")
    await sched.stop()
    assert fut.result().error == STOPPED_ERROR
    assert t.closed == 1
    with pytest.raises(RuntimeError):
        await sched.start()
    with pytest.raises(RuntimeError):
        sched.add(make_spec(name="late"), FakeTask(clock))


async def test_deliberate_errors_log_one_line_without_traceback(
    sched: Scheduler, clock: ManualClock, metrics: AgentMetrics, logs: list[Any]
) -> None:
    from moenet_core.errors import ControlPlaneUnavailable

    class Unavailable:
        async def run_once(self) -> None:
            raise ControlPlaneUnavailable("control plane unavailable after 4 attempt(s): HTTP 503")

    sched.add(make_spec(), Unavailable())
    await sched.start()
    await clock.settle()
    assert runs(metrics, "t", "error") == 1.0
    [failure] = [r for r in logs if r["level"].name == "ERROR"]
    assert failure["exception"] is None
    assert failure["message"] == (
        "task t failed: ControlPlaneUnavailable: control plane unavailable after 4 attempt(s): HTTP 503"
    )
