"""``meshSync`` observes its tunnels cheaply every cycle and deeply on a cadence.

The deep read (``TunnelBackend.list``) runs on the first cycle after a start and
every ``mesh.deepCheckInterval`` seconds (0: every cycle); the other cycles use
``TunnelBackend.observe``. The fakes' journal shows which read a cycle made.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from helpers.mesh import mesh_answer, node, peer


def reads(calls: list) -> list[str]:  # type: ignore[type-arg]
    return [c.op for c in calls if c.backend == "tunnel" and c.op in ("list", "observe")]


async def test_a_no_op_cycle_observes_and_the_deep_check_repairs_drift(tmp_path: Path) -> None:
    async with node(tmp_path) as n:
        n.cp.set("mesh", mesh_answer(*(peer(i) for i in (1, 2, 4, 5, 6))))
        mark = n.b.journal.mark()
        r = await n.sync()
        assert r["deepCheck"] is True and r["configured"] == 5
        assert reads(n.b.journal.since(mark, writes_only=False))[0] == "list"

        mark = n.b.journal.mark()
        r = await n.sync()
        calls = n.b.journal.since(mark, writes_only=False)
        assert r["deepCheck"] is False and reads(calls) == ["observe"]
        assert [c for c in calls if c.wrote] == []

        # Drift on the system; the deep check after mesh.deepCheckInterval repairs it.
        t = n.b.tunnel.tunnels
        t["igp2"] = attrs.evolve(t["igp2"], mtu=1280)
        mark = n.b.journal.mark()
        await n.clock.advance(600)  # (the scheduler's own run may take it: either one repairs)
        await n.sync()
        assert "list" in reads(n.b.journal.since(mark, writes_only=False))
        assert t["igp2"].mtu == 1420
        assert [c.key for c in n.b.journal.since(mark) if c.backend == "tunnel"] == ["igp2"]


async def test_a_deep_check_interval_of_zero_reads_deeply_every_cycle(tmp_path: Path) -> None:
    async with node(tmp_path, config={"mesh": {"deepCheckInterval": 0}}) as n:
        n.cp.set("mesh", mesh_answer(peer(1)))
        await n.sync()
        mark = n.b.journal.mark()
        r = await n.sync()
        assert r["deepCheck"] is True and reads(n.b.journal.since(mark, writes_only=False)) == ["list"]
