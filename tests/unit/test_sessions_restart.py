"""``/restart`` with a tunnel backend that cannot bounce (the fakes): the tunnel is
removed and re-created, then its BGP protocols restart. The real bounce (link
down and up, same ifindex) runs against wireguard-go in
``tests/component/test_sessions_links.py``."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import moenet_sessions
from moenet_sessions.task import SessionSync

from moenet_core import SessionStatus
from moenet_core.testing import FakeBackends, StubControlPlane, plugin_context

KEY = base64.b64encode(b"\x07" * 32).decode()


def uid(n: int) -> str:
    return f"5e55a000-0000-4000-8000-{n:012d}"


def session(n: int) -> dict[str, Any]:
    return {
        "uuid": uid(n),
        "asn": 4242420000 + n,
        "name": f"peer{n}",
        "status": int(SessionStatus.QUEUED_FOR_SETUP),
        "interface": f"dn42-{n}",
        "endpoint": f"192.0.2.{n}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n}",
        "port": 21000 + n,
    }


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
