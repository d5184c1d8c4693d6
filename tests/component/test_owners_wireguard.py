"""Tunnel owners against the real wireguard-go, in throwaway network namespaces.

The ``sessions`` and ``mesh`` plugins share the tunnel backend; each tunnel's
owner is recorded on the system in its interface alias (``moenet-agent`` for
``sessions``, ``moenet-agent:<owner>`` for the others), so it survives an agent
restart. These tests prove that neither owner can list, change or remove the
other's tunnels, and that tunnels marked by the previous version (plain
``moenet-agent``) belong to ``sessions``. Assertions read the system with ``ip``
and ``wg`` as well as through the backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections import Counter

import attrs
import pytest
from helpers.wireguard import RecordingKernel, TunKernelBackend
from moenet_wireguard import daemon, keys
from moenet_wireguard.config import Settings
from moenet_wireguard.errors import NotOwnedError, TunnelSpecError
from moenet_wireguard.uapi import socket_path
from moenet_wireguard.userspace import UserspaceTunnelBackend

from moenet_core import TunnelAddress, TunnelSpec
from moenet_core.testing import NetNS

pytestmark = pytest.mark.netns


@attrs.define
class Node:
    ns: NetNS
    key_file: str
    settings: Settings
    backend: UserspaceTunnelBackend
    names: list[str]

    def name(self, tag: str) -> str:
        """A fresh interface name (the wireguard-go socket directory is global)."""
        name = f"wgo-{tag}{uuid.uuid4().hex[:6]}"
        self.names.append(name)
        return name

    def spec(self, name: str, port: int, **kw: object) -> TunnelSpec:
        base: dict[str, object] = {
            "name": name,
            "private_key_file": self.key_file,
            "listen_port": port,
            "peer_public_key": keys.generate_private_key().public_key(),
            "keepalive": 0,
            "addresses": (TunnelAddress(local="fe80::1/64"),),
        }
        return TunnelSpec(**(base | kw))  # type: ignore[arg-type]

    def alias(self, name: str) -> str | None:
        """The interface alias as ``ip`` shows it (None: no alias)."""
        [link] = json.loads(self.ns.run("ip", "-j", "-d", "link", "show", "dev", name).stdout)
        alias = link.get("ifalias")
        return str(alias) if alias is not None else None

    def listen_port(self, name: str) -> str:
        return self.ns.run("wg", "show", name, "listen-port").stdout.strip()

    def exists(self, name: str) -> bool:
        return self.ns.run("ip", "link", "show", "dev", name, check=False).returncode == 0

    def daemons(self, name: str) -> list[int]:
        with self.ns.entered():
            return daemon.find_daemons(name)


@pytest.fixture
def node(netns, tmp_path):
    ns = netns()
    key_file = str(tmp_path / "node.key")
    keys.write_key_file(key_file, keys.generate_private_key())
    settings = Settings(node_key_path=str(tmp_path / "node.key"), default_keepalive=0)
    n = Node(ns=ns, key_file=key_file, settings=settings, backend=UserspaceTunnelBackend(settings), names=[])
    try:
        yield n
    finally:  # also when the test failed half-way
        for pid in ns.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in n.names:
            with contextlib.suppress(FileNotFoundError):
                socket_path(name).unlink()


async def test_sessions_and_mesh_tunnels_coexist_and_are_listed_apart(node):
    s, m = node.name("s"), node.name("m")
    s_spec, m_spec = node.spec(s, 51901), node.spec(m, 51902, owner="mesh")
    with node.ns.entered():
        assert await node.backend.ensure(s_spec)  # owner: the default, sessions
        assert await node.backend.ensure(m_spec)
    assert node.alias(s) == "moenet-agent"  # what every tunnel carried before owners existed
    assert node.alias(m) == "moenet-agent:mesh"
    assert (node.listen_port(s), node.listen_port(m)) == ("51901", "51902")

    with node.ns.entered():
        everything = await node.backend.list()
        sessions = await node.backend.list(owner="sessions")
        mesh = await node.backend.list(owner="mesh")
        assert await node.backend.list(owner="ibgp") == {}
        with pytest.raises(TunnelSpecError, match="tunnel owner 'Mesh' is invalid"):
            await node.backend.list(owner="Mesh")
        assert (await node.backend.stats(m)).name == m  # stats: any of the agent's tunnels

        before = Counter(node.backend.writes)
        assert not await node.backend.ensure(s_spec)  # each owner's own tunnel: adopted as it is
        assert not await node.backend.ensure(m_spec)
        assert node.backend.writes == before
    assert sorted(everything) == sorted([s, m])
    assert everything[s].owner == "sessions" and everything[m].owner == "mesh"
    assert list(sessions) == [s] and list(mesh) == [m]
    assert sessions[s] == everything[s] and mesh[m] == everything[m]
    assert mesh[m].listen_port == 51902 and sessions[s].listen_port == 51901


async def test_an_owner_can_neither_change_nor_remove_another_owners_tunnel(node):
    s, m = node.name("s"), node.name("m")
    mesh_spec = node.spec(m, 51912, owner="mesh")
    with node.ns.entered():
        await node.backend.ensure(node.spec(s, 51911))
        await node.backend.ensure(mesh_spec)
        state = (await node.backend.list(owner="mesh"))[m]
    [pid] = node.daemons(m)
    before = Counter(node.backend.writes)

    with node.ns.entered():
        with pytest.raises(NotOwnedError, match=f"tunnel {m} belongs to owner 'mesh'.*refusing to remove"):
            await node.backend.remove(m, owner="sessions")
        with pytest.raises(NotOwnedError, match=f"tunnel {m} belongs to owner 'mesh'.*refusing to touch"):
            await node.backend.ensure(node.spec(m, 51999))  # a sessions spec with the mesh tunnel's name
        with pytest.raises(NotOwnedError, match=f"tunnel {s} belongs to owner 'sessions'"):
            await node.backend.ensure(node.spec(s, 51998, owner="mesh"))
        with pytest.raises(NotOwnedError, match=f"tunnel {s} belongs to owner 'sessions'"):
            await node.backend.remove(s, owner="mesh")
        after = await node.backend.list()

    assert node.backend.writes == before  # refused before anything was written
    assert node.alias(m) == "moenet-agent:mesh" and node.alias(s) == "moenet-agent"  # never re-labelled
    assert node.listen_port(m) == "51912" and node.listen_port(s) == "51911"
    assert node.daemons(m) == [pid]
    assert after[m] == state and after[s].owner == "sessions"

    with node.ns.entered():
        assert await node.backend.remove(m, owner="mesh") is True
        assert list(await node.backend.list()) == [s]
        assert await node.backend.remove(m, owner="sessions") is False  # gone: nothing to refuse
        assert await node.backend.remove(s) is True  # no owner named: any of the agent's tunnels
        assert await node.backend.list() == {}
    assert not node.exists(m) and not node.exists(s)


async def test_a_tunnel_marked_by_the_previous_version_belongs_to_sessions(node):
    """A tunnel as the version before owners left it: a wireguard-go device with
    the plain alias. The upgraded agent lists it as the sessions owner's, adopts it
    in place (same daemon, alias untouched), and refuses it to the mesh."""
    old = node.name("o")
    node.ns.run("wireguard-go", old)
    node.ns.run("ip", "link", "set", "dev", old, "alias", "moenet-agent")
    [pid] = node.daemons(old)
    fresh = UserspaceTunnelBackend(node.settings)  # the upgraded agent: nothing remembered
    with node.ns.entered():
        assert [(n, st.owner) for n, st in (await fresh.list()).items()] == [(old, "sessions")]
        assert list(await fresh.list(owner="sessions")) == [old]
        assert await fresh.list(owner="mesh") == {}
        with pytest.raises(NotOwnedError, match="belongs to owner 'sessions'"):
            await fresh.ensure(node.spec(old, 51921, owner="mesh"))
        with pytest.raises(NotOwnedError, match="belongs to owner 'sessions'"):
            await fresh.remove(old, owner="mesh")
        assert fresh.writes == Counter()
        assert await fresh.ensure(node.spec(old, 51921))  # the sessions owner adopts it
    assert fresh.writes["daemon_start"] == 0 and fresh.writes["link_alias"] == 0
    assert node.daemons(old) == [pid] and node.alias(old) == "moenet-agent"
    assert node.listen_port(old) == "51921"
    with node.ns.entered():
        assert await fresh.remove(old, owner="sessions") is True
    assert not node.exists(old)


async def test_ownership_survives_an_agent_restart(node):
    """Nothing is remembered: a new backend object reads each owner from the aliases."""
    s, m = node.name("s"), node.name("m")
    mesh_spec = node.spec(m, 51932, owner="mesh")
    with node.ns.entered():
        await node.backend.ensure(node.spec(s, 51931))
        await node.backend.ensure(mesh_spec)
        await node.backend.aclose()
    restarted = UserspaceTunnelBackend(node.settings)
    with node.ns.entered():
        assert list(await restarted.list(owner="mesh")) == [m]
        assert list(await restarted.list(owner="sessions")) == [s]
        assert await restarted.ensure(mesh_spec) is False  # adopted, nothing written
        with pytest.raises(NotOwnedError):
            await restarted.remove(m, owner="sessions")
    assert restarted.writes == Counter()
    assert node.exists(m)


@pytest.mark.parametrize(
    "alias", ["moenet-agent:sessions", "moenet-agent:Mesh", "moenet-agent:", "moenet-agentx", "other-tool"]
)
async def test_unknown_aliases_stay_foreign_for_every_owner(node, alias):
    foreign = node.name("f")
    node.ns.run("wireguard-go", foreign)
    node.ns.run("ip", "link", "set", "dev", foreign, "alias", alias)
    with node.ns.entered():
        assert await node.backend.list() == {}
        for owner in ("sessions", "mesh"):
            assert await node.backend.list(owner=owner) == {}
            with pytest.raises(NotOwnedError, match="is not one of moenet-agent's tunnels"):
                await node.backend.remove(foreign, owner=owner)
            with pytest.raises(NotOwnedError, match="refusing to touch it"):
                await node.backend.ensure(node.spec(foreign, 51941, owner=owner))
        with pytest.raises(NotOwnedError):
            await node.backend.remove(foreign)
    assert node.backend.writes == Counter()
    assert node.alias(foreign) == alias and node.exists(foreign)


async def test_an_invalid_owner_is_refused_before_anything_is_created(node):
    bad = node.name("b")
    with node.ns.entered():
        with pytest.raises(TunnelSpecError, match=f"{bad}: tunnel owner 'Mesh' is invalid"):
            await node.backend.ensure(node.spec(bad, 51951, owner="Mesh"))
        with pytest.raises(TunnelSpecError, match="tunnel owner"):
            await node.backend.remove(bad, owner="no spaces")
    assert node.backend.writes == Counter() and not node.exists(bad)


async def test_the_kernel_backend_marks_and_checks_owners_too(node):
    """The kernel backend's own creation path (a TUN stands in for the link kind
    this kernel lacks, a recording stand-in for the WireGuard netlink family)."""
    m = node.name("k")
    backend = TunKernelBackend(node.settings, genl=RecordingKernel())
    spec = node.spec(m, 51961, owner="mesh")
    with node.ns.entered():
        assert await backend.ensure(spec)
        assert node.alias(m) == "moenet-agent:mesh"
        assert [(n, st.owner) for n, st in (await backend.list(owner="mesh")).items()] == [(m, "mesh")]
        assert await backend.list(owner="sessions") == {}
        with pytest.raises(NotOwnedError, match="belongs to owner 'mesh'"):
            await backend.ensure(attrs.evolve(spec, owner="sessions"))
        with pytest.raises(NotOwnedError, match="belongs to owner 'mesh'"):
            await backend.remove(m, owner="sessions")
        assert node.alias(m) == "moenet-agent:mesh"
        assert await backend.remove(m, owner="mesh") is True
    assert not node.exists(m)
