"""``/restart`` with a tunnel backend that cannot bounce (the fakes): the tunnel is
removed and re-created, then its BGP protocols restart. The real bounce (link
down and up, same ifindex) runs against wireguard-go in
``tests/component/test_sessions_links.py``."""

from __future__ import annotations

from pathlib import Path

import moenet_sessions
from helpers.sessions_rig import session, uid
from moenet_sessions.task import SessionSync

from moenet_core.testing import FakeBackends, StubControlPlane, plugin_context


async def test_restart_without_bounce_support_recreates_the_tunnel(tmp_path: Path) -> None:
    fakes = FakeBackends(check_keys=False)
    cp = StubControlPlane("test-node")
    ctx = plugin_context(
        "sessions",
        state_dir=tmp_path / "state",
        config={"sessions": {"privateKeyPath": str(tmp_path / "wg.key"), "pskDir": str(tmp_path / "psk")}},
        plugins=[("sessions", moenet_sessions)],
        backends=fakes,
        cp=cp,
    )
    task = SessionSync(ctx)
    cp.set("sessions", [session(1)])
    await task.run_once()
    action = task.moenet_restart("dn42-1")
    assert action is not None and task.moenet_restart("lo") is None
    mark = fakes.journal.mark()
    result = await action()
    assert result["session"] == uid(1) and result["tunnelBounced"] == "removed and re-created"
    assert result["tunnelRepaired"] is False
    assert "dn42-1" in fakes.tunnel.tunnels
    ops = [(c.backend, c.op, c.key) for c in fakes.journal.since(mark)]
    assert ops[:2] == [("tunnel", "remove", "dn42-1"), ("tunnel", "ensure", "dn42-1")], ops
    assert result["protocols"] == list(fakes.routing.fragment_protocols("sessions").get(uid(1), ()))
