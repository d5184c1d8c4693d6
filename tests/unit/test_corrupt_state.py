"""A corrupt state file never stops the agent starting (issue 14, item 8).

For each plugin and each of its state files, the file holds garbage (not JSON,
JSON nested past the limit, the wrong shape, a newer version) and the agent is
started with the plugin: the agent must start and the plugin must be active.
What the plugin then does with the file (a safe default, or a failed cycle that
names the file) is documented in ``moenet_core/state.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import moenet_ibgp
import moenet_mesh
import moenet_rtt
import moenet_sessions
import pytest

from moenet_core.agent import MAINTENANCE_FILE
from moenet_core.reconcile import ANSWER_FILE, GUARD_FILE
from moenet_core.testing import AgentHarness, FakeBackends, FakeControlPlane, ManualClock

GARBAGE = {
    "not-json": b"{not json",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "wrong-shape": b'{"version": 1, "records": [1, 2], "entries": "x", "answer": 7, "links": 3}',
    "newer": b'{"version": 99}',
    "huge-number": b'{"version": 1, "x": ' + b"9" * 5000 + b"}",
}

#: (plugin name, module, state files of the plugin).
PLUGINS: list[tuple[str, Any, list[str]]] = [
    (
        "sessions",
        moenet_sessions,
        ["answer.json", "state.json", "outbox.json", "applied.json", "latency.json"],
    ),
    ("mesh", moenet_mesh, ["state.json", ANSWER_FILE, GUARD_FILE]),
    ("ibgp", moenet_ibgp, ["nodes.json"]),
    ("rtt", moenet_rtt, ["links.json"]),
]


def _cases() -> list[Any]:
    out = []
    for name, module, files in PLUGINS:
        for file in files:
            for kind in ("not-json", "deep", "wrong-shape", "newer"):
                out.append(pytest.param(name, module, file, kind, id=f"{name}-{file}-{kind}"))
    return out


@pytest.mark.parametrize(("name", "module", "file", "kind"), _cases())
async def test_plugin_starts_with_a_corrupt_state_file(
    tmp_path: Path, name: str, module: Any, file: str, kind: str
) -> None:
    state = tmp_path / "state"
    (state / "plugins" / name).mkdir(parents=True)
    (state / "plugins" / name / file).write_bytes(GARBAGE[kind])
    backends = FakeBackends(kinds=("tunnel", "firewall", "routing"))
    async with FakeControlPlane() as cp:
        cfg: dict[str, Any] = {
            "node": {"name": "hkg1", "id": 3},
            "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
            "backends": backends.config(),
        }
        plugins = [(name, module), ("fakes", backends)]
        async with AgentHarness(cfg, plugins=plugins, state_dir=state, clock=ManualClock()) as h:
            record = h.agent.pm.records[name]
            assert record.status == "active", record.error
            assert h.agent.status()["node"]["name"] == "hkg1"


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_agent_starts_with_a_corrupt_maintenance_file(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / MAINTENANCE_FILE).write_bytes(GARBAGE[kind])
    async with FakeControlPlane() as cp:
        cfg = {"node": {"name": "hkg1"}, "controlPlane": {"url": cp.url, "token": "test-token"}}
        async with AgentHarness(cfg, state_dir=state, clock=ManualClock()) as h:
            assert "maintenance" in h.agent.status()
