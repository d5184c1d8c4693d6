"""Crash recovery (issue 16): kill -9 at any moment converges, and never reports what
is not live.

A real agent (the installed ``moenet-agent``, userspace WireGuard, nftables, a real
BIRD 3, a fake CP; :mod:`helpers.crash`) sets up :data:`~helpers.crash.N` sessions,
or removes them, and is SIGKILLed at a named crash point
(``MOENET_CRASH_AT``, :mod:`moenet_core.crashpoints`) in one of the phases: the
intent written, tunnels (before and after wireguard-go creates the device, before
and after the alias marks it, mid-configuration), the firewall, BIRD (staged,
mid-swap, swapped but not loaded, loaded but not recorded), the declare, the
reports (queued, state saved, sent but not acknowledged). It is started again
without the variable, and after each kill the node must converge to exactly what
the CP asks for (:meth:`~helpers.crash.CrashRig.problems`):

- set up: every session ACTIVE, with exactly one marked tunnel, one wireguard-go,
  one UAPI socket, one BGP protocol, one peer file and one open port;
- removed: none of it left;
- both: no unmarked tunnel, stray daemon or socket, no staging directory,
  temporary file, pending-configure marker or unsettled create intent, no
  SETUP_FAILED report, and no ACTIVE report made while the session's tunnel, port
  or BGP protocol was not live (checked when the report arrives);

and one more full cycle must leave it so.
"""

from __future__ import annotations

import os

import pytest
from helpers.crash import QUEUED_FOR_DELETE, CrashRig

pytestmark = [pytest.mark.netns, pytest.mark.slow]

#: Kill points while setting up the batch (``name:N``: at the N-th time it is reached;
#: ``a > b``: killed at ``a``, then again at ``b`` while recovering). ``warm``: the
#: node ran before (BIRD's base tree loaded, no session), so BIRD's points are in the
#: apply of the sessions' peers; else it is a fresh node, and they are in the first
#: apply (the base tree).
SETUP_POINTS = [
    ("sessions.intent.saved", False),  # the records of what may be built are on disk, nothing else
    ("wireguard.create.intent:1", False),  # the create intent is on disk, no device yet
    ("wireguard.create.launched:2", False),  # wireguard-go launcher running, the agent gone
    ("wireguard.create.made:1", False),  # the TUN device and its daemon exist, no alias yet
    ("wireguard.create.made:9", False),  # the same in the middle of the batch
    ("wireguard.create.made:5 > wireguard.recover.adopted:3", False),  # killed again while adopting
    ("wireguard.create.marked:4", False),  # marked, intent not yet dropped, nothing configured
    ("wireguard.ensure.configured:6", False),  # keys and peer written, link down, no address
    ("wireguard.ensure.done:16", False),  # every tunnel done
    ("sessions.tunnels.done", False),  # tunnels done, firewall not
    ("nftables.sync.applied", False),  # ports opened, not read back
    ("sessions.firewall.synced", False),  # ports open, nothing declared
    ("bird.swap.file:3", False),  # three files of the base tree swapped, the rest not
    ("bird.apply.swapped", False),  # the base tree swapped, BIRD not told
    ("bird.apply.staged", True),  # the peers staged, not checked
    ("bird.swap.file:5", True),  # five of the sixteen peer files swapped
    ("bird.apply.swapped", True),  # every peer file swapped, BIRD not told
    ("bird.apply.configured", True),  # BIRD loaded them, nothing recorded
    ("sessions.routing.declared", False),  # the declare returned, nothing recorded
    ("sessions.report.queued:8", False),  # half the ACTIVE reports queued
    ("sessions.state.saved", False),  # memory saved, applied fragments not
    ("sessions.applied.saved", False),  # everything saved, nothing delivered
    ("sessions.report.sent:5", False),  # five reports accepted by the CP, the fifth not acknowledged
]

#: Kill points while removing the batch: (point, how the CP asks for the removal).
REMOVAL_POINTS = [
    ("sessions.tunnel.removed:1", "delete"),  # one tunnel gone
    ("wireguard.remove.deleted:7", "vanish"),  # a link deleted, its daemon not waited for
    ("sessions.firewall.synced", "delete"),  # every tunnel gone, ports closed
    ("bird.apply.swapped", "vanish"),  # peer files deleted, BIRD not told
    ("sessions.routing.declared", "delete"),  # BIRD dropped the peers, nothing recorded
    ("sessions.state.saved", "delete"),  # forgotten, nothing delivered
    ("sessions.report.sent:3", "delete"),  # three removal reports accepted, not acknowledged
]


#: Setup points run with the ephemeral port range on the sessions' ports
#: (:meth:`~helpers.crash.CrashRig.crowd_ports`): the daemons the killed agent started
#: sit unconfigured on automatic ports across the restart, and must not keep a
#: session from its port (no transient EADDRINUSE on the way to convergence).
CROWDED = {"wireguard.create.launched:2"}


@pytest.fixture
async def rig():
    if os.geteuid() != 0:
        pytest.fail("the crash rig builds a network namespace and needs root")
    async with CrashRig() as r:
        yield r
    assert r.leftovers == []


async def crash(rig: CrashRig, points: str) -> float:
    """Kill the agent at each of ``points`` in turn (``a > b``); returns the seconds run."""
    return sum([await rig.crash_at(p.strip()) for p in points.split(">")])


@pytest.mark.parametrize(
    ("point", "warm"), SETUP_POINTS, ids=[f"{p}{'-warm' if w else ''}" for p, w in SETUP_POINTS]
)
async def test_setup_killed_at(rig, point, warm):
    if warm:
        await rig.start_agent()
        await rig.bird_loaded()  # BIRD's base tree loaded, nothing else
        await rig.converged(removed=True)
        assert await rig.stop_agent() == 0
    if point in CROWDED:
        rig.crowd_ports()
    rig.publish(rig.make_sessions())
    ran = await crash(rig, point)
    await rig.start_agent()
    took = await rig.converged()
    result = await rig.sync()  # one more whole cycle: nothing breaks it
    assert result["ok"], result
    assert await rig.problems() == []
    assert rig.port_in_use_errors() == []
    rig.log(f"setup killed at {point} after {ran:.1f} s; converged {took:.1f} s after the restart")


@pytest.mark.parametrize(("point", "how"), REMOVAL_POINTS)
async def test_removal_killed_at(rig, point, how):
    rig.publish(rig.make_sessions())
    await rig.start_agent()
    await rig.converged()
    assert await rig.stop_agent() == 0
    if how == "delete":
        rig.set_status(QUEUED_FOR_DELETE)
    else:
        rig.publish([])  # the sessions vanish from the answer
    ran = await crash(rig, point)
    await rig.start_agent()
    took = await rig.converged(removed=True)
    result = await rig.sync()
    assert result["ok"], result
    assert await rig.problems(removed=True) == []
    rig.log(f"removal ({how}) killed at {point} after {ran:.1f} s; converged {took:.1f} s after the restart")
