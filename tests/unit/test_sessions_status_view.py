"""Operators see their sessions (issue 12 item 7), without root.

- ``moenet-agent status`` prints a line per session from the first sync, before
  the metric collector has run once;
- the session counts of ``/status`` and the ``moenet_sessions`` metric survive a
  restart (the sessions plugin re-announces what it knew).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import moenet_sessions
from moenet_sessions.task import SessionSync

from moenet_core import SessionStatus
from moenet_core.cli import render_status
from moenet_core.testing import AgentHarness, FakeBackends, FakeControlPlane, ManualClock

KEY = base64.b64encode(b"\x07" * 32).decode()


def uid(n: int) -> str:
    return f"5e55a000-0000-4000-8000-{n:012d}"


def session(n: int, asn: int | None = None) -> dict[str, Any]:
    return {
        "uuid": uid(n),
        "asn": asn or 4242420000 + n,
        "name": f"peer{n}",
        "status": int(SessionStatus.QUEUED_FOR_SETUP),
        "interface": f"dn42-{n}",
        "endpoint": f"192.0.2.{n}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n}",
        "port": 21000 + n,
    }


def config(cp: FakeControlPlane, backends: FakeBackends, tmp: Path) -> dict[str, Any]:
    return {
        "node": {"name": "hkg1", "id": 3, "asn": 4242429999},
        "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
        "backends": backends.config(),
        "sessions": {"privateKeyPath": str(tmp / "wg.key"), "pskDir": str(tmp / "psk")},
    }


def sessions_info(status: dict[str, Any]) -> dict[str, Any]:
    (plugin,) = [p for p in status["plugins"] if p["name"] == "sessions"]
    info: dict[str, Any] = plugin["info"]
    return info


async def test_status_lists_sessions_after_one_sync_and_counts_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with FakeControlPlane() as cp:
        cp.set("sessions", [session(1), session(2), session(3, asn=4242429999)])
        backends = FakeBackends(kinds=("tunnel", "firewall", "routing"), check_keys=False)
        plugins = [("sessions", moenet_sessions), ("fakes", backends)]
        cfg = config(cp, backends, tmp_path)
        async with AgentHarness(cfg, plugins=plugins, state_dir=state, clock=ManualClock()) as h:
            found = h.agent.scheduler.lookup("sessionSync")
            assert found is not None and isinstance(found[1], SessionSync)
            await found[1].run_once()  # one sync, no metric run
            status = h.agent.status()
            assert status["sessions"] == {"ACTIVE": 2, "ERROR": 1}
            views = {v["name"]: v for v in sessions_info(status)["sessions"]}
            assert views["peer1"]["asn"] == 4242420001
            assert views["peer1"]["interface"] == "dn42-1"
            assert views["peer1"]["status"] == "ACTIVE"
            assert views["peer1"]["bgpState"] is None  # the collector has not run yet
            assert views["peer3"]["status"] == "ERROR"
            assert "that is iBGP" in views["peer3"]["lastError"]
            text = render_status(status)
            line = next(ln for ln in text.splitlines() if ln.startswith("peer1"))
            assert "4242420001" in line and "dn42-1" in line and "ACTIVE" in line
            lines = text.splitlines()
            at = next(i for i, ln in enumerate(lines) if ln.startswith("peer3"))
            assert "ERROR" in lines[at] and "that is iBGP" in lines[at + 1]
            assert "ROUTES IN/OUT" in text

        # A restart: nothing has run yet, the counts are there already.
        backends2 = FakeBackends(kinds=("tunnel", "firewall", "routing"), check_keys=False)
        plugins = [("sessions", moenet_sessions), ("fakes", backends2)]
        cfg = config(cp, backends2, tmp_path)
        async with AgentHarness(cfg, plugins=plugins, state_dir=state, clock=ManualClock()) as h:
            assert h.agent.status()["sessions"] == {"ACTIVE": 2, "ERROR": 1}
            metric = h.agent.metrics.registry.get_sample_value
            assert metric("moenet_sessions", {"status": "ACTIVE"}) == 2
            assert metric("moenet_sessions", {"status": "ERROR"}) == 1
            views = {v["name"]: v for v in sessions_info(h.agent.status())["sessions"]}
            assert views["peer2"]["status"] == "ACTIVE" and views["peer2"]["interface"] == "dn42-2"


def test_render_merges_the_collectors_data() -> None:
    status = {
        "node": {"name": "hkg1", "id": 3, "mode": "full"},
        "tasks": [],
        "plugins": [
            {
                "name": "sessions",
                "status": "active",
                "info": {
                    "sessions": [
                        {
                            "uuid": uid(1),
                            "name": "peer1",
                            "asn": 4242420001,
                            "interface": "dn42-1",
                            "status": "ACTIVE",
                            "lastError": None,
                            "bgpState": "Established",
                            "routesIn": 12,
                            "routesOut": 40,
                            "rttMs": 12.34,
                            "health": "healthy",
                        }
                    ]
                },
            }
        ],
        "sessions": {"ACTIVE": 1},
    }
    line = next(ln for ln in render_status(status).splitlines() if ln.startswith("peer1"))
    for part in ("4242420001", "dn42-1", "ACTIVE", "Established", "12/40", "12.3ms", "healthy"):
        assert part in line
