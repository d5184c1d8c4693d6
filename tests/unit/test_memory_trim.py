"""The agent's memory: freed heap pages go back after task runs, and what it never loads."""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import moenet_heartbeat

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


def test_trims_at_most_once_per_interval() -> None:
    now = [100.0]
    trimmer = MemoryTrimmer(interval=30.0, clock=lambda: now[0])
    trimmer.after_run()
    trimmer.after_run()
    now[0] += 29.9
    trimmer.after_run()
    expected = 1 if malloc_trim() is not None else 0
    assert trimmer.trims == expected
    now[0] += 0.2
    trimmer.after_run()
    assert trimmer.trims == 2 * expected
    MemoryTrimmer(interval=0, clock=lambda: now[0]).after_run()  # 0: never


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


def test_the_cli_process_uses_frozenlists_pure_python_twin() -> None:
    """frozenlist's C++ extension would map libstdc++ (about 1 MB resident); the
    agent's entry point turns it off unless the operator set the variable."""
    import os
    import subprocess
    import sys

    code = (
        "import moenet_core.cli, aiohttp, frozenlist\n"
        "print(frozenlist.FrozenList.__module__, 'libstdc++' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["frozenlist", "False"]
    kept = {**env, "FROZENLIST_NO_EXTENSIONS": ""}  # the operator's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=kept, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["frozenlist._frozenlist", "True"]
