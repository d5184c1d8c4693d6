"""The agent's memory: freed heap pages go back after task runs, and generated source is dropped."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import moenet_heartbeat
from helpers.polling import until

from moenet_core.memory import MemoryTrimmer, forget_generated_sources, malloc_trim


def rss_kb() -> int:
    found = re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found.group(1))


def test_a_trim_gives_freed_heap_back() -> None:
    """Blocks below glibc's mmap threshold live on its heap and stay resident after
    free (the last one keeps the heap's top in place); a trim returns their pages."""
    assert platform.libc_ver()[0] == "glibc"  # Debian: the system we run on
    blocks = [bytearray(100_000) for _ in range(400)]  # 40 MB on the heap (< mmap threshold)
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # touch every page
    keep = blocks[-1]
    del blocks
    before = rss_kb()
    assert malloc_trim() is True
    assert rss_kb() < before - 10_000, "the trim gave back less than 10 MB of 40 MB freed"
    assert keep[0] == ord("x")


def test_a_burst_of_runs_is_trimmed_once_at_once_and_once_after_the_gap() -> None:
    now = [100.0]
    scheduled: list[tuple[float, Any]] = []
    trimmer = MemoryTrimmer(gap=1.0, clock=lambda: now[0], later=lambda d, f: scheduled.append((d, f)))
    per_trim = 1 if malloc_trim() is not None else 0
    trimmer.after_run()  # the first run: trimmed at once
    assert (trimmer.trims, scheduled) == (per_trim, [])
    now[0] += 0.25
    trimmer.after_run()  # inside the gap: one trim when it has passed...
    now[0] += 0.25
    trimmer.after_run()  # ...for every run of the burst
    assert trimmer.trims == per_trim
    assert [round(d, 6) for d, _ in scheduled] == [0.75]
    now[0] += 0.5
    scheduled[0][1]()  # the gap passed: the burst's last run is trimmed too
    assert trimmer.trims == 2 * per_trim
    now[0] += 0.5
    trimmer.after_run()  # 0.5 s after that trim: deferred again
    assert len(scheduled) == 2 and round(scheduled[1][0], 6) == 0.5
    now[0] += 0.5
    scheduled[1][1]()
    now[0] += 5
    trimmer.after_run()  # long after the last trim: at once
    assert trimmer.trims == 4 * per_trim and len(scheduled) == 2
    never = MemoryTrimmer(gap=0, clock=lambda: now[0], later=lambda d, f: scheduled.append((d, f)))
    never.after_run()
    assert never.trims == 0 and len(scheduled) == 2


async def test_without_a_given_timer_the_running_loop_defers_the_trim() -> None:
    now = [0.0]
    trimmer = MemoryTrimmer(gap=0.05, clock=lambda: now[0])
    trimmer.after_run()
    first = trimmer.trims
    trimmer.after_run()
    assert trimmer.trims == first
    now[0] += 0.05
    await until("the deferred trim", lambda: trimmer.trims == 2 * first)


async def test_the_agent_trims_after_a_task_run(fake_cp: Any, agent_harness: Any, tmp_path: Path) -> None:
    cfg = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": fake_cp.url, "token": "t" * 32},
        "state": {"directory": str(tmp_path)},
    }
    async with agent_harness(cfg, plugins=[("heartbeat", moenet_heartbeat)]) as h:
        await fake_cp.wait_for("heartbeat")
        await h.agent.scheduler.run_now("heartbeat")
        assert h.agent.memory.trims >= 1


def test_generated_sources_are_forgotten_and_classes_still_work() -> None:
    import linecache

    import attrs

    @attrs.frozen
    class Probe:
        x: int

    assert any(name.startswith("<attrs generated") for name in linecache.cache)
    assert forget_generated_sources() >= 1
    assert not any(name.startswith("<attrs generated") for name in linecache.cache)
    assert Probe(1) == Probe(1) and repr(Probe(2)) == "Probe(x=2)"
    assert forget_generated_sources() == 0


async def test_the_started_agent_holds_no_generated_source(
    fake_cp: Any, agent_harness: Any, tmp_path: Path
) -> None:
    import linecache

    import attrs

    attrs.make_class("Probe", ["x"])  # a class made before the start, like a plugin's
    assert any(n.startswith("<attrs generated") for n in linecache.cache)
    cfg = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": fake_cp.url, "token": "t" * 32},
        "state": {"directory": str(tmp_path)},
    }
    async with agent_harness(cfg, plugins=[("heartbeat", moenet_heartbeat)]):
        assert [n for n in linecache.cache if n.startswith("<attrs generated")] == []
