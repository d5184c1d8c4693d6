"""WireGuard backends against the real kernel and wireguard-go, in throwaway namespaces.

Two namespaces joined by a veth pair, each running the userspace backend with its
own interface name (wireguard-go's socket directory is shared by all namespaces).
Every daemon, link and socket a test creates is removed by the fixtures, also
when the test fails; nothing touches the host's interfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import attrs
import pytest
from helpers.wireguard import RecordingKernel, TunKernelBackend
from loguru import logger
from moenet_wireguard import daemon, genl, keys
from moenet_wireguard.config import Settings
from moenet_wireguard.errors import DaemonError, EndpointError, NotOwnedError, UapiBusyError
from moenet_wireguard.links import MARKER, Netlink
from moenet_wireguard.uapi import socket_path
from moenet_wireguard.userspace import UserspaceTunnelBackend
from pyroute2.netlink.generic.wireguard import (
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
)

from moenet_core import TunnelAddress, TunnelSpec
from moenet_core.testing import NetNS, veth_pair

pytestmark = pytest.mark.netns

DN42 = ("0.0.0.0/0", "fd00::/8", "fe80::/64")
HANDSHAKE_TIMEOUT = 15.0


@attrs.define
class Side:
    ns: NetNS
    name: str
    key_file: str
    key: keys.SecretKey
    veth_v4: str
    veth_v6: str
    tun_v4: str
    tun_ll: str
    tun_ula: str
    backend: UserspaceTunnelBackend

    @property
    def public(self) -> str:
        return self.key.public_key()


@attrs.define
class Pair:
    a: Side
    b: Side
    settings: Settings
    names: list[str]

    def spec(self, side: Side, **kw) -> TunnelSpec:
        peer = self.b if side is self.a else self.a
        base = {
            "name": side.name,
            "private_key_file": side.key_file,
            "listen_port": 51820,
            "peer_public_key": peer.public,
            "endpoint": f"{peer.veth_v4}:51820",
            "keepalive": 0,  # no spontaneous traffic: only the test's pings start handshakes
            "addresses": (
                TunnelAddress(local=side.tun_v4, peer=peer.tun_v4),
                TunnelAddress(local=f"{side.tun_ll}/64"),
                TunnelAddress(local=side.tun_ula, peer=peer.tun_ula),
            ),
        }
        return TunnelSpec(**(base | kw))


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def kill_everything_in(ns: NetNS) -> None:
    for pid in ns.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def forget_sockets(names: list[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            socket_path(name).unlink()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(node_key_path=str(tmp_path / "node.key"), default_keepalive=0)


@pytest.fixture
def pair(netns, tmp_path, settings):
    a_ns, b_ns = netns(), netns()
    veth_pair(a_ns, b_ns, "va", "vb")
    names: list[str] = []
    sides = []
    for ns, dev, i, tag in ((a_ns, "va", 1, "a"), (b_ns, "vb", 2, "b")):
        ns.run("ip", "addr", "add", f"10.99.0.{i}/24", "dev", dev)
        ns.run("ip", "addr", "add", f"fd99::{i}/64", "dev", dev, "nodad")
        key = keys.generate_private_key()
        key_file = str(tmp_path / f"{tag}.key")
        keys.write_key_file(key_file, key)
        name = unique(f"wgt-{tag}")
        names.append(name)
        sides.append(
            Side(
                ns=ns,
                name=name,
                key_file=key_file,
                key=key,
                veth_v4=f"10.99.0.{i}",
                veth_v6=f"fd99::{i}",
                tun_v4=f"172.20.0.{i}",
                tun_ll=f"fe80::{i}",
                tun_ula=f"fd42::{i}",
                backend=UserspaceTunnelBackend(settings),
            )
        )
    p = Pair(a=sides[0], b=sides[1], settings=settings, names=names)
    try:
        yield p
    finally:
        for side in sides:  # also when the test failed half-way
            kill_everything_in(side.ns)
        forget_sockets(p.names)


async def ensure(side: Side, spec: TunnelSpec, backend: UserspaceTunnelBackend | None = None) -> bool:
    with side.ns.entered():
        return await (backend or side.backend).ensure(spec)


async def stats(side: Side):
    with side.ns.entered():
        return await side.backend.stats(side.name)


async def listed(side: Side, backend=None):
    with side.ns.entered():
        return await (backend or side.backend).list()


async def wait_handshake(side: Side):
    """Poll the real daemon's stats until a handshake is recorded. There is no
    event to wait on, so this polls with short real sleeps, bounded by 15 s."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    while True:
        st = await stats(side)
        if st.latest_handshake is not None:
            return st
        assert time.monotonic() < deadline, f"no handshake on {side.name} within {HANDSHAKE_TIMEOUT} s"
        await asyncio.sleep(0.1)


def ping(side: Side, target: str) -> None:
    res = side.ns.run("ping", "-c", "1", "-W", "5", target, check=False)
    assert res.returncode == 0, f"ping {target} from {side.ns.name} failed: {res.stdout}{res.stderr}"


def wg_dump(side: Side, name: str | None = None) -> dict:
    """`wg show <if> dump`: an independent reader of the daemon's state."""
    lines = side.ns.run("wg", "show", name or side.name, "dump").stdout.splitlines()
    _priv, pub, port, _fwmark = lines[0].split("\t")
    peers = []
    for line in lines[1:]:
        key, psk, endpoint, allowed, _hs, _rx, _tx, keepalive = line.split("\t")
        peers.append(
            {
                "key": key,
                "psk": psk,
                "endpoint": endpoint,
                "allowed": set(allowed.split(",")),
                "keepalive": keepalive,
            }
        )
    return {"public": pub, "port": port, "peers": peers}


async def bring_up(pair: Pair) -> None:
    assert await ensure(pair.a, pair.spec(pair.a))
    assert await ensure(pair.b, pair.spec(pair.b))
    ping(pair.a, pair.b.tun_v4)
    await wait_handshake(pair.a)
    await wait_handshake(pair.b)


# ------------------------------------------------------------------ tests


async def test_tunnel_pair_handshakes_and_carries_ipv4_and_link_local(pair):
    a, b = pair.a, pair.b
    assert await ensure(a, pair.spec(a))
    assert a.backend.writes == Counter(
        daemon_start=1, link_alias=1, sysctl=4, uapi_set=1, addr_add=3, link_up=1
    )
    assert await ensure(b, pair.spec(b))
    ping(a, b.tun_v4)
    ping(a, f"{b.tun_ll}%{a.name}")
    ping(b, a.tun_ula)
    for side, peer in ((a, b), (b, a)):
        st = await wait_handshake(side)
        assert st.rx_bytes > 0 and st.tx_bytes > 0
        assert st.endpoint == f"{peer.veth_v4}:51820"

    dump = wg_dump(a)
    assert dump["public"] == a.public  # wireguard-go derives the same public key we do
    assert dump["port"] == "51820"
    [peer] = dump["peers"]
    assert peer["key"] == b.public and peer["endpoint"] == "10.99.0.2:51820"
    assert peer["allowed"] == set(DN42) and peer["keepalive"] == "off" and peer["psk"] == "(none)"

    conf = f"/proc/sys/net/ipv6/conf/{a.name}"
    for key, want in (("addr_gen_mode", "1"), ("accept_ra", "0"), ("autoconf", "0"), ("accept_dad", "0")):
        assert a.ns.run("cat", f"{conf}/{key}").stdout.strip() == want, key
    v6 = a.ns.run("ip", "-6", "-o", "addr", "show", "dev", a.name).stdout
    assert sorted(line.split()[3] for line in v6.splitlines()) == ["fd42::1", "fe80::1/64"]  # no automatic LL

    states = await listed(a)
    assert list(states) == [a.name]
    st = states[a.name]
    assert st.peer_public_key == b.public and st.listen_port == 51820 and st.up and st.mtu == 1420
    assert st.endpoint == "10.99.0.2:51820" and st.allowed_ips == tuple(sorted(DN42)) and st.keepalive is None
    assert set(st.addresses) == {
        TunnelAddress(local="172.20.0.1/32", peer="172.20.0.2"),
        TunnelAddress(local="fe80::1/64"),
        TunnelAddress(local="fd42::1/128", peer="fd42::2"),
    }

    before = Counter(a.backend.writes)
    assert await ensure(a, pair.spec(a)) is False
    assert a.backend.writes == before  # an unchanged spec writes nothing at all


async def test_endpoint_keepalive_and_address_changes_are_applied_in_place(pair):
    a, b = pair.a, pair.b
    await bring_up(pair)
    index_a = (await listed(a))[a.name].ifindex
    index_b = (await listed(b))[b.name].ifindex
    with a.ns.entered():
        pids = daemon.find_daemons(a.name)
    handshake = (await stats(a)).latest_handshake
    before = Counter(a.backend.writes)

    a.tun_v4 = "172.20.0.11"  # the address changes on both ends
    spec_a = pair.spec(a, endpoint="[fd99::2]:51820", keepalive=25)
    assert await ensure(a, spec_a)
    assert a.backend.writes - before == Counter(uapi_set=1, addr_del=1, addr_add=1)
    assert await ensure(b, pair.spec(b))
    ping(a, b.tun_v4)
    ping(a, f"{b.tun_ll}%{a.name}")

    state = (await listed(a))[a.name]
    assert state.ifindex == index_a and (await listed(b))[b.name].ifindex == index_b
    assert state.endpoint == "[fd99::2]:51820" and state.keepalive == 25
    assert TunnelAddress(local="172.20.0.11/32", peer="172.20.0.2") in state.addresses
    assert TunnelAddress(local="172.20.0.1/32", peer="172.20.0.2") not in state.addresses
    [peer] = wg_dump(a)["peers"]
    assert peer["endpoint"] == "[fd99::2]:51820" and peer["keepalive"] == "25"
    with a.ns.entered():
        assert daemon.find_daemons(a.name) == pids  # same daemon
    assert (await stats(a)).latest_handshake == handshake  # same session: no new handshake

    # B now sees A at its IPv6 address (WireGuard roaming). B's spec did not
    # change and the session is alive, so B's ensure must not fight that.
    assert (await stats(b)).endpoint == "[fd99::1]:51820"
    before_b = Counter(b.backend.writes)
    assert await ensure(b, pair.spec(b)) is False
    assert b.backend.writes == before_b

    before = Counter(a.backend.writes)
    assert await ensure(a, spec_a) is False
    assert a.backend.writes == before


async def test_remove_cleans_up_process_socket_and_link(pair):
    a = pair.a
    assert await ensure(a, pair.spec(a))
    with a.ns.entered():
        [pid] = daemon.find_daemons(a.name)
    assert socket_path(a.name).is_socket()
    with a.ns.entered():
        assert await a.backend.remove(a.name) is True
    assert a.ns.run("ip", "link", "show", a.name, check=False).returncode != 0
    assert not socket_path(a.name).exists()
    assert not daemon._alive(pid)
    with a.ns.entered():
        assert daemon.find_daemons(a.name) == []
        assert await a.backend.remove(a.name) is False
        assert await a.backend.list() == {}


async def kill_daemon(side: Side) -> None:
    with side.ns.entered():
        [pid] = daemon.find_daemons(side.name)
        os.kill(pid, signal.SIGKILL)
        assert await daemon._wait_pidfd(pid, 5.0)
    assert socket_path(side.name).is_socket()  # SIGKILL: wireguard-go could not clean up


async def test_a_killed_daemon_is_replaced_and_leaves_nothing_behind(pair):
    a = pair.a
    assert await ensure(a, pair.spec(a))
    await kill_daemon(a)
    # Whether or not the kernel has finished removing the dead TUN device yet,
    # ensure brings the tunnel back with a new daemon.
    before = Counter(a.backend.writes)
    assert await ensure(a, pair.spec(a))
    assert (a.backend.writes - before)["daemon_start"] == 1
    with a.ns.entered():
        assert len(daemon.find_daemons(a.name)) == 1
        assert list(await a.backend.list()) == [a.name]

    await kill_daemon(a)
    with a.ns.entered():
        await a.backend.remove(a.name)  # True or False: the device may already be gone
        assert daemon.find_daemons(a.name) == [] and await a.backend.list() == {}
    assert not socket_path(a.name).exists()  # the stale socket was removed
    assert a.ns.run("ip", "link", "show", a.name, check=False).returncode != 0


def start_unconfigured_daemon(side: Side, name: str, *, mark: bool) -> int:
    """``wireguard-go <name>`` started by hand and never configured: it sits on the
    automatic (random) UDP port it bound as it started. ``mark``: with the agent's
    alias, as a tunnel adopted after an agent was killed mid-create. Returns that port."""
    side.ns.run("wireguard-go", name)
    if mark:
        side.ns.run("ip", "link", "set", "dev", name, "alias", MARKER)
    port = int(side.ns.run("wg", "show", name, "listen-port").stdout)
    assert port != 0
    return port


async def test_a_listen_port_on_an_unconfigured_daemons_automatic_port_is_taken_back(pair):
    """wireguard-go binds a random port the moment it starts, before anyone
    configures it; it can be the listen port another tunnel wants (a batch being
    created, or the daemons an agent killed mid-create left). ensure moves that
    daemon to a new automatic port instead of failing with EADDRINUSE."""
    a = pair.a
    other = unique("wgt-o")
    pair.names.append(other)
    port = start_unconfigured_daemon(a, other, mark=True)
    before = Counter(a.backend.writes)
    assert await ensure(a, pair.spec(a, listen_port=port))
    assert (a.backend.writes - before)["port_reclaim"] == 1
    assert wg_dump(a)["port"] == str(port)
    moved = int(a.ns.run("wg", "show", other, "listen-port").stdout)
    assert moved not in (0, port)


async def test_a_listen_port_held_by_a_foreign_daemon_is_a_transient_failure(pair):
    """Someone else's wireguard-go (no agent alias) on the port is never moved: the
    ensure fails with the transient UapiBusyError, to be retried."""
    a = pair.a
    other = unique("wgt-f")
    pair.names.append(other)
    port = start_unconfigured_daemon(a, other, mark=False)
    with pytest.raises(UapiBusyError, match="errno 98"):
        await ensure(a, pair.spec(a, listen_port=port))
    assert a.backend.writes["port_reclaim"] == 0
    assert int(a.ns.run("wg", "show", other, "listen-port").stdout) == port


async def test_foreign_interfaces_are_neither_listed_nor_touched(pair):
    a = pair.a
    assert await ensure(a, pair.spec(a))
    foreign = unique("wgt-f")
    pair.names.append(foreign)
    a.ns.run("wireguard-go", foreign)  # a WireGuard interface the agent did not create
    with a.ns.entered():
        assert list(await a.backend.list()) == [a.name]
        for name in (foreign, "va", "lo"):
            with pytest.raises(NotOwnedError, match=f"{name} is not one of moenet-agent's tunnels"):
                await a.backend.remove(name)
        with pytest.raises(NotOwnedError, match="refusing to touch it"):
            await a.backend.ensure(pair.spec(a, name=foreign))
    assert a.ns.run("ip", "link", "show", foreign, check=False).returncode == 0
    assert daemon.socket_is_live(socket_path(foreign))
    assert "alias" not in a.ns.run("ip", "-d", "link", "show", foreign).stdout
    assert a.ns.run("ip", "link", "show", "va", check=False).returncode == 0
    a.ns.run("ip", "link", "del", foreign)


async def test_an_interface_name_in_use_in_another_namespace_is_refused(pair):
    """wireguard-go's socket directory is shared by every namespace: the second
    user of a name must fail, and must not disturb the first one's socket."""
    a, b = pair.a, pair.b
    assert await ensure(a, pair.spec(a))
    with b.ns.entered(), pytest.raises(DaemonError, match="unix socket in use"):
        await b.backend.ensure(pair.spec(b, name=a.name))
    assert daemon.socket_is_live(socket_path(a.name))
    with b.ns.entered():
        assert await b.backend.list() == {}
    with a.ns.entered():
        assert list(await a.backend.list()) == [a.name]


async def test_a_launcher_that_hangs_is_killed_and_its_device_removed(pair, tmp_path):
    """A wireguard-go that creates its device and then never returns: the start
    times out, the launcher is killed, and the unmarked device it left (which the
    agent would otherwise refuse as foreign forever) is taken down."""
    a = pair.a
    launcher = tmp_path / "slow-wireguard-go"
    launcher.write_text('#!/bin/sh\nwireguard-go "$@" || exit 1\necho $$ > "$0.pid"\nexec sleep 60\n')
    launcher.chmod(0o755)
    backend = UserspaceTunnelBackend(
        attrs.evolve(pair.settings, wireguard_go=str(launcher), start_timeout=1.0)
    )
    with a.ns.entered(), pytest.raises(DaemonError, match="did not finish starting within 1 s"):
        await backend.ensure(pair.spec(a))
    assert not daemon._alive(int(Path(f"{launcher}.pid").read_text()))
    with a.ns.entered():
        assert daemon.find_daemons(a.name) == []
    assert a.ns.run("ip", "link", "show", a.name, check=False).returncode != 0
    assert not socket_path(a.name).exists()


async def test_a_restarted_agent_adopts_running_tunnels(pair, settings):
    a = pair.a
    assert await ensure(a, pair.spec(a))
    with a.ns.entered():
        [pid] = daemon.find_daemons(a.name)
        await a.backend.aclose()  # the agent stops: tunnels stay up on purpose
        assert daemon.find_daemons(a.name) == [pid]
    fresh = UserspaceTunnelBackend(settings)  # the next agent
    assert list(await listed(a, fresh)) == [a.name]
    assert await ensure(a, pair.spec(a), fresh) is False
    assert fresh.writes == Counter()
    with a.ns.entered():
        assert daemon.find_daemons(a.name) == [pid]


async def test_host_name_endpoint_is_re_resolved_when_the_handshake_is_stale(pair, settings):
    a, b = pair.a, pair.b
    dns = {"peer-b.test": ["10.99.0.2:51820"]}
    now = [time.time()]

    async def resolver(host, port):
        return list(dns[host])

    a.backend = UserspaceTunnelBackend(settings, resolver=resolver, clock=lambda: now[0])
    spec_a = pair.spec(a, endpoint="peer-b.test:51820")
    assert await ensure(a, spec_a)
    assert await ensure(b, pair.spec(b))
    ping(a, b.tun_v4)
    await wait_handshake(a)

    dns["peer-b.test"] = ["[fd99::2]:51820"]  # the peer moved
    with a.ns.entered():
        assert await a.backend.refresh_endpoints() == []  # handshake fresh: nothing to do
    assert (await stats(a)).endpoint == "10.99.0.2:51820"

    now[0] += 1000  # the handshake is now stale
    before = Counter(a.backend.writes)
    with a.ns.entered():
        assert await a.backend.refresh_endpoints(owner="mesh") == []  # not the mesh's tunnel
        assert a.backend.writes == before
        assert await a.backend.refresh_endpoints(owner="sessions") == [a.name]
    assert a.backend.writes - before == Counter(uapi_set=1)
    assert (await stats(a)).endpoint == "[fd99::2]:51820"
    ping(a, b.tun_v4)

    before = Counter(a.backend.writes)
    with a.ns.entered():
        assert await a.backend.refresh_endpoints() == []  # already there
    assert await ensure(a, spec_a) is False
    assert a.backend.writes == before


async def test_an_address_endpoint_without_handshake_is_not_read_every_cycle(pair, settings):
    """Nothing to re-resolve for an address: after one look, a stale tunnel (a peer
    that never answered, the usual state of a new session) is left alone until a
    handshake could have gone stale again, so 1 000 such tunnels cost no device
    read per cycle."""
    a = pair.a
    now = [time.time()]
    a.backend = UserspaceTunnelBackend(settings, clock=lambda: now[0])
    assert await ensure(a, pair.spec(a))  # an IP endpoint; the peer is not configured
    reads: list[str] = []
    real = a.backend._read

    async def counted(name):
        reads.append(name)
        return await real(name)

    a.backend._read = counted
    with a.ns.entered():
        assert await a.backend.refresh_endpoints() == []
        assert reads == [a.name]  # looked once: the endpoint is the configured address
        assert await a.backend.refresh_endpoints() == []
        assert reads == [a.name]  # the next cycle reads nothing
        now[0] += settings.stale_handshake + 1
        assert await a.backend.refresh_endpoints() == []
        assert reads == [a.name, a.name]  # looked again once it could have gone stale


async def test_unresolvable_endpoint_still_configures_the_rest(pair, settings):
    """A host name that does not resolve yet gives a tunnel without an endpoint
    (ensure succeeds, the name is logged); refresh_endpoints fills it in later."""
    a = pair.a
    answers: dict[str, list[str]] = {}

    async def resolver(host, port):
        if host not in answers:
            raise EndpointError(f"endpoint host {host!r} does not resolve: Name or service not known")
        return answers[host]

    backend = UserspaceTunnelBackend(settings, resolver=resolver)
    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(str(m)), level="WARNING")
    try:
        with a.ns.entered():
            assert await backend.ensure(pair.spec(a, endpoint="nx.test:51820")) is True
    finally:
        logger.remove(sink)
    assert any(a.name in line and "nx.test" in line for line in logged)
    state = (await listed(a, backend))[a.name]
    assert state.peer_public_key == pair.b.public and state.endpoint is None and state.up

    with a.ns.entered():
        assert await backend.refresh_endpoints() == []  # still no address: nothing to write
        answers["nx.test"] = [f"{pair.b.veth_v4}:51820"]
        assert await backend.refresh_endpoints() == [a.name]
        assert (await backend.observe())[a.name].endpoint == f"{pair.b.veth_v4}:51820"
    assert (await listed(a, backend))[a.name].endpoint == f"{pair.b.veth_v4}:51820"


# ------------------------------------------------------------ kernel backend


def test_kernel_probe_matches_what_the_kernel_can_do(netns):
    ns = netns()
    truth = ns.run("ip", "link", "add", "wgprobe0", "type", "wireguard", check=False).returncode == 0
    with ns.entered():
        assert genl.kernel_supports_wireguard() is truth
    if not Path("/sys/module/wireguard").exists():
        assert truth is False  # this machine: the userspace backend is the only way


async def test_kernel_backend_sends_only_the_differences(netns, tmp_path, settings):
    ns = netns()
    key = keys.generate_private_key()
    keys.write_key_file(tmp_path / "k", key)
    k2, k3 = (keys.generate_private_key().public_key() for _ in range(2))
    kernel = RecordingKernel()
    backend = TunKernelBackend(settings, genl=kernel)
    spec = TunnelSpec(
        name="wgk0",
        private_key_file=str(tmp_path / "k"),
        listen_port=51820,
        peer_public_key=k2,
        endpoint="192.0.2.2:51820",
        keepalive=25,
        addresses=(TunnelAddress(local="172.20.0.1", peer="172.20.0.2"), TunnelAddress(local="fe80::1/64")),
    )
    with ns.entered():
        assert await backend.ensure(spec)
        [msg] = kernel.sets
        assert msg.get_attr("WGDEVICE_A_IFNAME") == "wgk0" and msg.get_attr("WGDEVICE_A_FLAGS") is None
        assert genl._key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) == key.raw
        assert msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
        [peer] = msg.get_attr("WGDEVICE_A_PEERS")
        assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
        assert peer.get_attr("WGPEER_A_ENDPOINT")["addr"] == "192.0.2.2"
        assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
        assert len(peer.get_attr("WGPEER_A_ALLOWEDIPS")) == 3
        link = await Netlink().__aenter__()
        try:
            created = await link.get_link("wgk0")
        finally:
            await link.__aexit__(None, None, None)
        assert created is not None and created.alias == MARKER and created.up

        writes = Counter(backend.writes)
        assert await backend.ensure(spec) is False
        assert len(kernel.sets) == 1 and backend.writes == writes

        assert await backend.ensure(attrs.evolve(spec, endpoint="[2001:db8::2]:51820"))
        peer = kernel.sets[-1].get_attr("WGDEVICE_A_PEERS")[0]
        assert [n for n, _ in kernel.sets[-1]["attrs"]] == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_PEERS"]
        assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
        assert peer.get_attr("WGPEER_A_ENDPOINT")["addr"] == "2001:db8::2"

        assert await backend.ensure(attrs.evolve(spec, endpoint="[2001:db8::2]:51820", peer_public_key=k3))
        assert kernel.sets[-1].get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS

        state = (await backend.list())["wgk0"]
        assert (
            state.peer_public_key == k3 and state.endpoint == "[2001:db8::2]:51820" and state.keepalive == 25
        )
        assert await backend.remove("wgk0") is True
        assert await backend.list() == {}
