"""The WireGuard plugin through the core: backend selection, its config section,
and a backend built from the agent's own context."""

from __future__ import annotations

import contextlib
import json
import stat
import sys
import uuid
from pathlib import Path

import pytest

try:
    import moenet_wireguard
except ImportError:  # until pyproject lists the package (see the plugin's report)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
    import moenet_wireguard

from moenet_wireguard import keys
from moenet_wireguard.genl import kernel_supports_wireguard
from moenet_wireguard.kernel import KernelTunnelBackend
from moenet_wireguard.uapi import socket_path
from moenet_wireguard.userspace import UserspaceTunnelBackend

from moenet_core import BackendUnavailable, TunnelAddress, TunnelBackend, TunnelSpec

PLUGINS = [("wireguard", moenet_wireguard)]


def standalone(tmp_path: Path, **extra) -> dict:
    """A node that needs no control plane (so it also runs inside a namespace)."""
    data = tmp_path / "cp.json"
    data.write_text(json.dumps({}))
    cfg = {
        "node": {"name": "jp1"},
        "controlPlane": {"source": "file", "file": str(data)},
    }
    cfg.update(extra)
    return cfg


async def test_auto_picks_the_backend_the_kernel_supports(tmp_path, agent_harness):
    async with agent_harness(standalone(tmp_path), plugins=PLUGINS) as h:
        backend = h.agent.backend("tunnel")
        status = h.agent.status()["backends"]["tunnel"]
    if kernel_supports_wireguard():
        assert isinstance(backend, KernelTunnelBackend) and status["name"] == "kernel"
    else:  # this machine: no WireGuard module, so wireguard-go
        assert isinstance(backend, UserspaceTunnelBackend) and status["name"] == "userspace"
    assert isinstance(backend, TunnelBackend) and status["plugin"] == "wireguard"


@pytest.mark.parametrize("where", ["backends", "wireguard"])
async def test_explicit_kernel_choice(tmp_path, agent_harness, where):
    cfg = standalone(tmp_path)
    if where == "backends":
        cfg["backends"] = {"tunnel": "kernel"}
    else:
        cfg["wireguard"] = {"backend": "kernel"}
    async with agent_harness(cfg, plugins=PLUGINS) as h:
        status = h.agent.status()["backends"]["tunnel"]
        if kernel_supports_wireguard():
            assert isinstance(h.agent.backend("tunnel"), KernelTunnelBackend)
            return
        # Not a crash: the agent runs, and says why there is no tunnel backend.
        assert status["ok"] is False
        assert "kernel" in status["error"] and "no WireGuard support" in status["error"]
        with pytest.raises(BackendUnavailable, match=r"no WireGuard support.*userspace"):
            h.agent.backend("tunnel")


async def test_explicit_userspace_choice(tmp_path, agent_harness):
    cfg = standalone(tmp_path, wireguard={"backend": "userspace"})
    async with agent_harness(cfg, plugins=PLUGINS) as h:
        assert isinstance(h.agent.backend("tunnel"), UserspaceTunnelBackend)


async def test_missing_wireguard_go_is_reported(tmp_path, agent_harness):
    cfg = standalone(
        tmp_path, backends={"tunnel": "userspace"}, tunnel={"wireguardGo": "/nonexistent/wireguard-go"}
    )
    async with agent_harness(cfg, plugins=PLUGINS) as h:
        status = h.agent.status()["backends"]["tunnel"]
    assert status["ok"] is False and "wireguard-go not found" in status["error"]


async def test_wireguard_section_errors_name_the_field(tmp_path, agent_harness):
    cfg = standalone(
        tmp_path,
        wireguard={"startTimeout": 0, "wireguardGo": "bin/wg go", "staleHandshake": "x"},
        tunnel={"uapiTimeout": 0},  # the deprecated name of the section
    )
    async with agent_harness(cfg, plugins=PLUGINS) as h:
        record = h.agent.pm.records["wireguard"]
    assert record.status == "failed"
    assert "wireguard.startTimeout: must be greater than 0" in record.error
    assert "wireguard.wireguardGo: must be a program name" in record.error
    assert "wireguard.staleHandshake: expected a number" in record.error
    assert "tunnel.uapiTimeout (as wireguard.uapiTimeout): must be greater than 0" in record.error


@pytest.mark.netns
async def test_backend_from_the_agent_generates_a_missing_key(tmp_path, agent_harness, netns):
    """Built by the core: the key a tunnel names is generated when missing, writes
    counted in the agent's metrics. (Publishing its public half at
    ``publicKeyPath`` is the sessions plugin's, whose key it is.)"""
    ns = netns()
    name = f"wgt-h{uuid.uuid4().hex[:6]}"
    key_path = tmp_path / "wg" / "private.key"
    pub_path = tmp_path / "wg" / "public.key"
    cfg = standalone(
        tmp_path,
        backends={"tunnel": "userspace"},
    )
    peer = keys.generate_private_key().public_key()
    spec = TunnelSpec(
        name=name,
        private_key_file=str(key_path),
        listen_port=51999,
        peer_public_key=peer,
        endpoint="192.0.2.1:51820",
        addresses=(TunnelAddress(local="172.20.9.1", peer="172.20.9.2"),),
    )
    try:
        with ns.entered():
            async with agent_harness(cfg, plugins=PLUGINS) as h:
                backend = h.agent.backend("tunnel")
                assert await backend.ensure(spec)
                assert await backend.ensure(spec) is False
                assert await backend.remove(name)
                registry = h.agent.metrics.registry
                uapi_sets = registry.get_sample_value(
                    "moenet_wireguard_tunnel_writes_total", {"op": "uapi_set"}
                )
                generated = registry.get_sample_value(
                    "moenet_wireguard_tunnel_writes_total", {"op": "key_generate"}
                )
    finally:
        with contextlib.suppress(FileNotFoundError):
            socket_path(name).unlink()
    assert uapi_sets == 1 and generated == 1
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert not pub_path.exists()


@pytest.mark.netns
async def test_a_spec_without_keepalive_gets_the_default(tmp_path, agent_harness, netns):
    """Owners give their keepalive in the spec (``sessions.persistentKeepaliveInterval``,
    ``mesh.keepalive``); a spec without one gets 25 s."""
    ns = netns()
    name = f"wgt-k{uuid.uuid4().hex[:6]}"
    cfg = standalone(tmp_path, backends={"tunnel": "userspace"})
    spec = TunnelSpec(
        name=name,
        private_key_file=str(tmp_path / "k"),
        listen_port=None,
        peer_public_key=keys.generate_private_key().public_key(),
        endpoint="192.0.2.1:51820",
    )
    try:
        with ns.entered():
            async with agent_harness(cfg, plugins=PLUGINS) as h:
                backend = h.agent.backend("tunnel")
                await backend.ensure(spec)
                state = (await backend.list())[name]
                await backend.remove(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            socket_path(name).unlink()
    assert state.keepalive == 25 and state.endpoint == "192.0.2.1:51820"
