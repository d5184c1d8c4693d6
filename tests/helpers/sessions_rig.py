"""A ``sessionSync`` task on the shared fakes, without root: the rig of the
root-free sessions tests (apply, transient faults, guard, orphans, restart)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import moenet_sessions
from moenet_sessions.task import SessionSync

from moenet_core import SessionStatus
from moenet_core.testing import FakeBackends, ManualClock, StubControlPlane, plugin_context

KEY = base64.b64encode(b"\x07" * 32).decode()
NODE_ASN = 4242429999
"""The rig node's own AS (no test session has it)."""


def uid(n: int) -> str:
    return f"5e55a000-0000-4000-8000-{n:012d}"


def session(n: int, status: int = SessionStatus.QUEUED_FOR_SETUP, **over: Any) -> dict[str, Any]:
    """Session ``n`` as the CP lists it: interface ``dn42-<n>``, port ``21000 + n``."""
    return {
        "uuid": uid(n),
        "asn": 4242420000 + n,
        "name": f"peer{n}",
        "status": int(status),
        "interface": f"dn42-{n}",
        "endpoint": f"192.0.2.{n % 250 + 1}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n % 65000 + 1:x}",
        "port": 21000 + n % 40000,
        **over,
    }


class SessionsRig:
    """Fakes, a stub CP, a manual clock and the task; ``sessions`` are extra keys of
    the ``sessions`` section."""

    def __init__(self, tmp: Path, clock: ManualClock | None = None, **sessions: Any) -> None:
        self.tmp = tmp
        self.clock = clock or ManualClock()
        self.fakes = FakeBackends(check_keys=False)
        self.cp = StubControlPlane("test-node")
        self.config: dict[str, Any] = {
            "node": {"name": "test-node", "id": 1, "asn": NODE_ASN},
            "sessions": {"privateKeyPath": str(tmp / "wg.key"), "pskDir": str(tmp / "psk"), **sessions},
        }
        self.task = self.build()

    def build(self) -> SessionSync:
        ctx = plugin_context(
            "sessions",
            state_dir=self.tmp / "state",
            config=self.config,
            plugins=[("sessions", moenet_sessions)],
            backends=self.fakes,
            cp=self.cp,
            clock=self.clock,
        )
        return SessionSync(ctx)

    @property
    def ctx(self) -> Any:
        return self.task.ctx

    def restart(self) -> None:
        """A new task on the same state and system (an agent restart)."""
        self.task = self.build()

    async def sync(self, *sessions: dict[str, Any]) -> dict[str, Any]:
        self.cp.set("sessions", list(sessions))
        return await self.task.run_once()

    def reports(self) -> dict[str, tuple[int, str | None]]:
        """uuid -> (status, lastError) of the last report per session."""
        out: dict[str, tuple[int, str | None]] = {}
        for call in self.cp.calls("modify", "POST"):
            out[call.body["uuid"]] = (call.body["status"], call.body.get("lastError"))
        return out

    def report_count(self, uuid: str) -> int:
        return sum(1 for c in self.cp.calls("modify", "POST") if c.body["uuid"] == uuid)

    @property
    def tunnels(self) -> set[str]:
        return set(self.fakes.tunnel.tunnels)

    @property
    def ports(self) -> set[int]:
        return set(self.fakes.firewall.ports.get("sessions", set()))

    @property
    def fragments(self) -> set[str]:
        return set(self.fakes.routing.fragments.get("sessions", {}))
