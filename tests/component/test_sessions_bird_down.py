"""A queued session while BIRD is down, against real BIRD 3, wireguard-go and nftables.

BIRD being unreachable is a failure a retry fixes: the session is not
SETUP_FAILED, keeps its CP status with ``lastError`` saying why, keeps its
tunnel and port, and goes ACTIVE on the first attempt after BIRD is back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.sessions import node, symbol, uid

from moenet_core.models import SessionStatus
from moenet_core.testing import NetNS

pytestmark = pytest.mark.netns


async def test_a_setup_while_bird_is_down_is_retried_not_setup_failed(
    netns: Callable[[], NetNS], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node(netns, tmp_path) as n:
        assert n.daemon is not None
        n.daemon.stop()
        n.cp.set("sessions", [n.session(1)])
        ev = await n.h.agent.scheduler.run_now("sessionSync")
        assert ev.ok, ev.error
        r = ev.result
        assert isinstance(r, dict) and r["retrying"] == [uid(1)], r
        [report] = n.modifies()
        assert report["uuid"] == uid(1) and report["status"] == SessionStatus.QUEUED_FOR_SETUP, report
        assert "BIRD could not be told" in report["lastError"], report
        assert not [e for e in n.events if e.new is SessionStatus.SETUP_FAILED]
        result = n.routing.last_result
        assert result is not None and not result.ok and result.transient, result
        # What was built stays: the tunnel, its port, the checked peer file.
        assert n.link(1) is not None and "21001" in n.ports() and len(n.peer_files(1)) == 1

        # BIRD comes back (on the tree the agent wrote); the backoff's wait has passed.
        n.daemon.start(n.etc / "bird.conf")
        clock = n.h.agent.clock
        later = clock.time() + 120
        monkeypatch.setattr(clock, "time", lambda: later)
        r = await n.sync()
        assert r["failed"] == {} and r["retrying"] == [], r
        assert n.modifies()[-1] == {"uuid": uid(1), "status": int(SessionStatus.ACTIVE)}
        assert symbol(1) in await n.protocols()
