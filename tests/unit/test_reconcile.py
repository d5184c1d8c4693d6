"""The core reconciler skeleton, driven through a toy plugin in a real agent core.

The toy reconciler makes a dict (its "system") match the CP's ``toy`` answer: a
list of names. It uses only the public API, like a third-party plugin would.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import generate_latest

from moenet_core import (
    ControlPlaneUnavailable,
    GuardPolicy,
    GuardVerdict,
    MoenetError,
    PluginContext,
    SyncEvent,
    TaskSpec,
    evaluate,
    hookimpl,
)
from moenet_core.reconcile import Answer, Failure, Reconciler, TransientError, is_transient, plan_route
from moenet_core.testing import AgentHarness, FakeControlPlane

TASK = "toySync"


class ToyError(MoenetError):
    pass


class ToyPayloadError(ValueError):
    pass


class ToySync(Reconciler[list[str], set[str], dict[str, Any], int]):
    task_name = TASK
    resource = "toy"
    payload_errors = (ToyPayloadError,)
    error = ToyError
    allow_removal_key = "toy.allowRemoval"

    def __init__(self, ctx: PluginContext) -> None:
        self.system: set[str] = set()
        self.unanswered: list[str] = []
        super().__init__(ctx)

    def parse(self, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ToyPayloadError("expected a list of names")
        return list(raw)

    async def observe(self, desired: list[str]) -> set[str]:
        return set(self.system)

    def plan(self, answer: Answer[list[str]], observed: set[str]) -> dict[str, Any]:
        want = set(answer.value)
        verdict = evaluate(
            sorted(observed - want), sorted(observed), GuardPolicy(max_share=0.5, min_count=2), noun="names"
        )
        remove = set() if verdict.refused else observed - want
        return {"add": want - observed, "remove": remove, "verdict": verdict}

    def verdict(self, plan: dict[str, Any]) -> GuardVerdict:
        verdict: GuardVerdict = plan["verdict"]
        return verdict

    async def apply(self, plan: dict[str, Any], observed: set[str]) -> int:
        self.system |= plan["add"]
        self.system -= plan["remove"]
        return len(plan["add"]) + len(plan["remove"])

    async def report(self, answer: Answer[list[str]], plan: dict[str, Any], outcome: int) -> dict[str, Any]:
        return {"writes": outcome, "names": sorted(self.system)}

    def changes(self, summary: Any) -> int:
        return int(summary["writes"])

    def plan_json(
        self, answer: Answer[list[str]], plan: dict[str, Any], observed: set[str]
    ) -> dict[str, Any]:
        lines = [f"add {n}" for n in sorted(plan["add"])] + [f"remove {n}" for n in sorted(plan["remove"])]
        return {"empty": not lines, "lines": lines}

    async def without_answer(self, problem: str) -> str:
        self.unanswered.append(problem)
        return "the toy system kept"


class ToyPlugin:
    def __init__(self) -> None:
        self.events: list[SyncEvent] = []

    @hookimpl
    def moenet_tasks(self, config: Any) -> list[TaskSpec]:
        return [TaskSpec(name=TASK, factory=ToySync, interval=3600, initial_delay=3600)]

    @hookimpl
    def moenet_sync_completed(self, event: SyncEvent) -> None:
        self.events.append(event)


def _config(cp: FakeControlPlane, tmp: Path) -> dict[str, Any]:
    return {
        "node": {"name": "toy1"},
        "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
        "state": {"directory": str(tmp / "state")},
    }


async def _run(h: AgentHarness) -> Any:
    return await h.agent.scheduler.run_now(TASK)


def _task(h: AgentHarness) -> ToySync:
    task = h.agent.context("toy").stash[TASK]
    assert isinstance(task, ToySync)
    return task


async def test_a_cycle_applies_persists_and_announces(fake_cp: FakeControlPlane, tmp_path: Path) -> None:
    plugin = ToyPlugin()
    fake_cp.set("toy", ["a", "b"])
    async with AgentHarness(_config(fake_cp, tmp_path), plugins=[("toy", plugin)], state_dir=tmp_path) as h:
        ev = await _run(h)
        assert ev.ok, ev.error
        assert ev.result["answer"] == "controlPlane" and ev.result["names"] == ["a", "b"]
        task = _task(h)
        assert task.last is not None and task.last["problem"] is None and task.last_error is None
        saved = h.agent.context("toy").state.read_json("answer.json")
        assert saved == {"version": 1, "answer": ["a", "b"]}
        assert [(e.task, e.ok, e.changes) for e in plugin.events] == [(TASK, True, 2)]

        # Unchanged: nothing written, still announced.
        ev = await _run(h)
        assert ev.ok and ev.result["writes"] == 0
        assert plugin.events[-1].changes == 0 and len(plugin.events) == 2


async def test_unreachable_cp_serves_the_last_answer_and_succeeds(
    fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    plugin = ToyPlugin()
    fake_cp.set("toy", ["a", "b"])
    async with AgentHarness(_config(fake_cp, tmp_path), plugins=[("toy", plugin)], state_dir=tmp_path) as h:
        assert (await _run(h)).ok
        fake_cp.fail("toy", times=5, status=503)
        ev = await _run(h)
        assert ev.ok, ev.error
        assert ev.result["answer"] == "saved"
        assert (
            "unreachable" in ev.result["problem"] and "serving the last valid answer" in ev.result["problem"]
        )
        assert _task(h).system == {"a", "b"}  # never "nothing desired"
        assert plugin.events[-1].ok


async def test_a_refused_or_invalid_answer_fails_the_run_but_serves_the_saved_one(
    fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    plugin = ToyPlugin()
    fake_cp.set("toy", ["a", "b"])
    async with AgentHarness(_config(fake_cp, tmp_path), plugins=[("toy", plugin)], state_dir=tmp_path) as h:
        assert (await _run(h)).ok
        fake_cp.set("toy", {"not": "a list"})
        ev = await _run(h)
        assert not ev.ok and "invalid toy answer" in str(ev.error)
        task = _task(h)
        assert task.system == {"a", "b"}
        assert task.last is not None and task.last["answer"] == "saved"
        assert task.last_error is not None and "invalid toy answer" in task.last_error
        event = plugin.events[-1]
        assert not event.ok and not event.transient and "invalid toy answer" in str(event.error)
        # The saved answer is still the last valid one.
        assert h.agent.context("toy").state.read_json("answer.json")["answer"] == ["a", "b"]

        # A good answer clears the error.
        fake_cp.set("toy", ["a", "b", "c"])
        assert (await _run(h)).ok
        assert task.last_error is None and task.system == {"a", "b", "c"}


async def test_without_any_answer_nothing_changes(fake_cp: FakeControlPlane, tmp_path: Path) -> None:
    plugin = ToyPlugin()
    fake_cp.fail("toy", times=5, status=503)
    async with AgentHarness(_config(fake_cp, tmp_path), plugins=[("toy", plugin)], state_dir=tmp_path) as h:
        ev = await _run(h)
        assert not ev.ok
        assert "no saved answer to serve, the toy system kept" in str(ev.error)
        task = _task(h)
        assert task.unanswered and "unreachable" in task.unanswered[0]
        assert task.system == set()
        assert not plugin.events[-1].ok and plugin.events[-1].transient is False


async def test_guard_refusal_is_kept_logged_once_and_exported(
    fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    fake_cp.set("toy", ["a", "b", "c", "d"])
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        async with AgentHarness(
            _config(fake_cp, tmp_path), plugins=[("toy", ToyPlugin())], state_dir=tmp_path
        ) as h:
            assert (await _run(h)).ok
            fake_cp.set("toy", [])
            task = _task(h)
            for _ in range(3):
                assert (await _run(h)).ok
                assert task.system == {"a", "b", "c", "d"}
            assert task.guard is not None and task.guard.refused
            assert task.status_info()["guardRefused"] is True
            scrape = generate_latest(h.agent.metrics.registry).decode()
            assert "moenet_toy_guard_refused 1.0" in scrape
    finally:
        logger.remove(sink)
    refusals = [line for line in lines if line.startswith("toy guard:")]
    assert len(refusals) == 1 and "toy.allowRemoval" in refusals[0]


async def test_preview_plans_without_persisting_or_applying(
    fake_cp: FakeControlPlane, tmp_path: Path
) -> None:
    fake_cp.set("toy", ["a"])
    async with AgentHarness(
        _config(fake_cp, tmp_path), plugins=[("toy", ToyPlugin())], state_dir=tmp_path
    ) as h:
        task = _task(h)
        preview = await task.preview()
        assert preview == {"answer": "controlPlane", "problem": None, "empty": False, "lines": ["add a"]}
        assert task.system == set()
        assert h.agent.context("toy").state.read_json("answer.json") is None
        route = plan_route(TASK)
        assert route.method == "GET" and route.path == "/plan"


def test_transient_failures_are_told_apart() -> None:
    assert is_transient(ControlPlaneUnavailable("down"))
    assert is_transient(TransientError("restarting"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(OSError(errno.ENOENT, "no socket"))
    assert is_transient(socket.gaierror(socket.EAI_NONAME, "not known"))
    assert not is_transient(ValueError("bad asn"))
    assert not is_transient(OSError(errno.EPERM, "not permitted"))
    assert not is_transient(MoenetError("BIRD rejected the file"))
    f = Failure.of("tunnel dn42x", OSError(errno.ECONNRESET, "reset"))
    assert f.transient and str(f) == "tunnel dn42x: [Errno 104] reset"
    assert not Failure.of("routing", ValueError("syntax error")).transient
