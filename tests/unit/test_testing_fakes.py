"""The shared fakes of ``moenet_core.testing``: owners, journal, fault injection,
the in-process CP and the plugin-context factory."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from moenet_wireguard.keys import read_key

from moenet_core import hookimpl
from moenet_core.backends import (
    ApplyResult,
    FirewallBackend,
    ProtocolState,
    RoutingBackend,
    TunnelAddress,
    TunnelBackend,
    TunnelSpec,
    TunnelStats,
)
from moenet_core.descriptors import LinkTarget
from moenet_core.errors import BackendUnavailable, ConfigError, ControlPlaneRejected, ControlPlaneUnavailable
from moenet_core.intents import BabelInterfaceIntent, EbgpPeerIntent
from moenet_core.testing import (
    AgentHarness,
    FakeBackendError,
    FakeBackends,
    FakeControlPlane,
    FakeFirewallBackend,
    FakeLoopbackBackend,
    FakeRoutingBackend,
    FakeTunnelBackend,
    InjectedFault,
    ManualClock,
    StubControlPlane,
    plugin_context,
)

PEER = base64.b64encode(b"\x05" * 32).decode()


@pytest.fixture
def keyfile(tmp_path: Path) -> str:
    path = tmp_path / "private.key"
    path.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    path.chmod(0o600)
    return str(path)


def spec(keyfile: str, name: str = "wg1", **over: Any) -> TunnelSpec:
    fields: dict[str, Any] = {
        "name": name,
        "private_key_file": keyfile,
        "listen_port": 51820,
        "peer_public_key": PEER,
        "endpoint": "192.0.2.1:51820",
        "addresses": (
            TunnelAddress(local="fe80::1"),
            TunnelAddress(local="172.20.0.1/32", peer="172.20.0.2"),
        ),
        **over,
    }
    return TunnelSpec(**fields)


# ------------------------------------------------------------------- tunnel


async def test_tunnel_state_is_canonical_and_an_unchanged_ensure_writes_nothing(keyfile: str) -> None:
    t = FakeTunnelBackend()
    assert isinstance(t, TunnelBackend)
    assert await t.ensure(spec(keyfile, allowed_ips=("fd00:0::/8", "0.0.0.0/0"))) is True
    s = (await t.list())["wg1"]
    assert s.owner == "sessions" and s.up and s.keepalive == 25 and s.listen_port == 51820
    assert [a.local for a in s.addresses] == ["172.20.0.1/32", "fe80::1/64"]
    assert s.allowed_ips == ("0.0.0.0/0", "fd00::/8")
    mark = t.journal.mark()
    assert await t.ensure(spec(keyfile, allowed_ips=("fd00::/8", "0.0.0.0/0"))) is False
    assert t.journal.since(mark) == [] and len(t.writes) == 1
    assert [c.op for c in t.journal.since(mark, writes_only=False)] == ["ensure"]
    # Keepalive 0 reads back as None; a spec change is written in place (same ifindex).
    ifindex = s.ifindex
    assert await t.ensure(spec(keyfile, keepalive=0, mtu=1400)) is True
    s = t.tunnels["wg1"]
    assert (s.keepalive, s.mtu, s.ifindex) == (None, 1400, ifindex)
    assert (await t.stats("wg1")).endpoint == "192.0.2.1:51820"
    assert t.public_key(keyfile) == read_key(keyfile).public_key()


async def test_a_roamed_endpoint_is_kept_until_the_spec_changes(keyfile: str) -> None:
    t = FakeTunnelBackend()
    await t.ensure(spec(keyfile))
    t.tunnels["wg1"] = attrs.evolve(t.tunnels["wg1"], endpoint="198.51.100.7:4000")  # the peer roamed
    assert await t.ensure(spec(keyfile)) is False
    assert t.tunnels["wg1"].endpoint == "198.51.100.7:4000"
    assert await t.ensure(spec(keyfile, endpoint="192.0.2.9:51820")) is True
    assert t.tunnels["wg1"].endpoint == "192.0.2.9:51820"


async def test_tunnels_of_another_owner_and_foreign_interfaces_are_refused(keyfile: str) -> None:
    t = FakeTunnelBackend(foreign=["eth0"])
    await t.ensure(spec(keyfile, owner="mesh"))
    with pytest.raises(FakeBackendError, match="belongs to owner 'mesh', not 'sessions'"):
        await t.ensure(spec(keyfile))
    with pytest.raises(FakeBackendError, match="belongs to owner 'mesh'"):
        await t.remove("wg1", owner="sessions")
    with pytest.raises(FakeBackendError, match="not one of moenet-agent's tunnels"):
        await t.ensure(spec(keyfile, name="eth0"))
    with pytest.raises(FakeBackendError, match="not one of moenet-agent's tunnels"):
        await t.remove("eth0")
    assert t.tunnels["wg1"].owner == "mesh"
    assert set(await t.list("mesh")) == {"wg1"} and await t.list("sessions") == {}
    assert [c.error is not None for c in t.calls_of("remove")] == [True, True]
    assert await t.remove("wg1", owner="mesh") is True and await t.remove("wg1") is False
    assert [c.op for c in t.writes] == ["ensure", "remove"]


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"name": "-bad"}, "interface name"),
        ({"name": "much-too-long-name"}, "interface name"),
        ({"owner": "Mesh"}, "owner"),
        ({"listen_port": 70000}, "listen_port"),
        ({"peer_public_key": "AAAA"}, "peer public key"),
        ({"mtu": 1000}, "mtu"),
        ({"addresses": (TunnelAddress(local="fe80::1/64"), TunnelAddress(local="fe80::1/10"))}, "twice"),
        ({"addresses": (TunnelAddress(local="nope"),)}, "nope"),
        ({"private_key_file": "/nonexistent/key"}, "does not exist"),
    ],
)
async def test_invalid_specs_are_refused(keyfile: str, over: dict[str, Any], problem: str) -> None:
    t = FakeTunnelBackend()
    with pytest.raises(FakeBackendError, match=problem):
        await t.ensure(spec(keyfile, **over))
    assert t.tunnels == {} and t.writes == []


async def test_a_key_file_others_can_read_is_refused(keyfile: str) -> None:
    os.chmod(keyfile, 0o644)
    with pytest.raises(FakeBackendError, match="mode 0644"):
        await FakeTunnelBackend().ensure(spec(keyfile))
    assert await FakeTunnelBackend(check_keys=False).ensure(spec(keyfile)) is True


async def test_tunnel_faults_early_late_named_and_until_healed(keyfile: str) -> None:
    t = FakeTunnelBackend()
    t.fail("ensure", "wg1", OSError("wireguard-go would not start"))
    with pytest.raises(OSError, match="would not start"):
        await t.ensure(spec(keyfile))
    assert t.tunnels == {} and t.calls[-1].error == "wireguard-go would not start"
    assert await t.ensure(spec(keyfile, name="wg2")) is True  # another name: not affected
    assert await t.ensure(spec(keyfile)) is True  # the fault was for the next call only
    # Failed late: the change is made, then the call raises.
    t.fail("ensure", "wg3", "endpoint node.invalid: no address", late=True)
    with pytest.raises(InjectedFault, match="no address"):
        await t.ensure(spec(keyfile, name="wg3"))
    assert "wg3" in t.tunnels and t.writes[-1].key == "wg3" and t.writes[-1].error
    # Until healed; any key.
    t.fail("stats", error=LookupError("gone"), times=None)
    for _ in range(3):
        with pytest.raises(LookupError):
            await t.stats("wg1")
    t.heal("stats")
    assert (await t.stats("wg1")).name == "wg1"
    t.stats_by_name["wg1"] = TunnelStats(
        name="wg1", latest_handshake=5.0, rx_bytes=1, tx_bytes=2, endpoint=None
    )
    t.stats_by_name["wg2"] = OSError("wg2: no such device")
    assert (await t.stats("wg1")).latest_handshake == 5.0
    with pytest.raises(OSError, match="no such device"):
        await t.stats("wg2")
    with pytest.raises(FakeBackendError, match="no such tunnel"):
        await t.stats("wg9")
    with pytest.raises(ValueError, match="no operation 'ensur'"):
        t.fail("ensur")
    t.fail("remove", "wg1", times=2)
    assert t.faults == 1
    t.heal()
    assert t.faults == 0


# ----------------------------------------------------------------- firewall


async def test_firewall_ports_per_owner() -> None:
    f = FakeFirewallBackend()
    assert isinstance(f, FirewallBackend)
    assert await f.sync(frozenset({1, 2})) is True
    assert await f.sync(frozenset({2, 3}), owner="mesh") is True
    assert await f.sync(frozenset({2, 1})) is False
    assert await f.list_ports() == {1, 2, 3} and await f.list_ports("mesh") == {2, 3}
    assert await f.sync(frozenset(), owner="sessions") is True
    assert await f.list_ports() == {2, 3}  # port 2 stays open: mesh has it
    assert f.syncs == [("sessions", {1, 2}), ("mesh", {2, 3}), ("sessions", frozenset())]
    with pytest.raises(FakeBackendError, match="not UDP ports"):
        await f.sync(frozenset({0}))
    with pytest.raises(FakeBackendError, match="owner"):
        await f.sync(frozenset({1}), owner="")
    f.fail("sync", "mesh", "nft: permission denied")
    with pytest.raises(InjectedFault, match="permission denied"):
        await f.sync(frozenset({9}), owner="mesh")
    assert await f.list_ports("mesh") == {2, 3}
    await f.remove_all()
    assert await f.list_ports() == frozenset()


# ----------------------------------------------------------------- loopback


async def test_loopback_addresses() -> None:
    lo = FakeLoopbackBackend()
    assert await lo.ensure(["fd00::1", "172.20.0.1/32"]) is True
    assert await lo.addresses() == ("172.20.0.1/32", "fd00::1/128")
    assert await lo.ensure(["172.20.0.1", "fd00::1/128"]) is False and len(lo.writes) == 1
    with pytest.raises(FakeBackendError, match="/32"):
        await lo.ensure(["172.20.0.0/24"])
    assert await lo.addresses() == ("172.20.0.1/32", "fd00::1/128")


# ------------------------------------------------------------------ routing


def babel(pattern: str) -> BabelInterfaceIntent:
    return BabelInterfaceIntent(pattern=pattern)


async def test_routing_declares_replace_one_owners_intents() -> None:
    r = FakeRoutingBackend()
    assert isinstance(r, RoutingBackend)
    peer = EbgpPeerIntent(asn=4242420001, interface="wg1", neighbor_link_local="fe80::1")
    res = await r.declare("sessions", {"u1": peer})
    assert res == ApplyResult(ok=True, changed=True)
    assert (await r.declare("mesh", {"igp1": babel("igp1")})).changed
    assert (await r.declare("sessions", {"u1": peer})).changed is False
    assert r.fragments == {"sessions": {"u1": peer}, "mesh": {"igp1": babel("igp1")}}
    assert [o for o, _ in r.declares] == ["sessions", "mesh", "sessions"] and len(r.writes) == 2
    # A fragment that is not an intent is rejected alone; the others apply.
    res = await r.declare("mesh", {"igp1": babel("igp1"), "igp2": {"pattern": "igp2"}})  # type: ignore[dict-item]
    assert res.ok and res.rejected == {"igp2": "not a routing intent (dict)"} and not res.changed
    assert set(r.fragments["mesh"]) == {"igp1"}
    lenient = FakeRoutingBackend(allow_mappings=True)
    res = await lenient.declare("mesh", {"igp2": {"pattern": "igp2"}})  # type: ignore[dict-item]
    assert res.rejected == {} and lenient.fragments["mesh"] == {"igp2": {"pattern": "igp2"}}


async def test_routing_faults_rejections_and_results() -> None:
    r = FakeRoutingBackend()
    r.reject("igp2", "bird: syntax error")
    res = await r.declare("mesh", {"igp1": babel("igp1"), "igp2": babel("igp2")})
    assert res.ok and res.rejected == {"igp2": "bird: syntax error"} and set(r.fragments["mesh"]) == {"igp1"}
    res = await r.declare("mesh", {"igp1": babel("igp1"), "igp2": babel("igp2")})
    assert res.rejected == {"igp2": "bird: syntax error"}  # until healed
    r.heal("reject", "igp2")
    res = await r.declare("mesh", {"igp1": babel("igp1"), "igp2": babel("igp2")})
    assert res.rejected == {} and res.changed
    # The daemon refuses the whole config: nothing changes, the result is returned.
    refused = ApplyResult(ok=False, changed=False, error="no BIRD policy from the control plane yet")
    r.fail("declare", "mesh", result=refused, times=None)
    assert await r.declare("mesh", {}) == refused
    assert set(r.fragments["mesh"]) == {"igp1", "igp2"} and r.declares[-1] == ("mesh", {})
    r.heal()
    # Failed late: applied, then raised.
    r.fail("declare", "mesh", TimeoutError("reload did not finish"), late=True)
    with pytest.raises(TimeoutError):
        await r.declare("mesh", {})
    assert r.fragments["mesh"] == {}
    # Protocols and names are scripted; reads are journaled.
    r.states = [ProtocolState(name="dn42_a", proto="BGP", table=None, state="up", since=None, info="")]
    r.protocol_names = {"sessions": {"u1": ("dn42_a",)}}
    assert [p.name for p in await r.protocols()] == ["dn42_a"] and len(r.calls_of("protocols")) == 1
    assert r.fragment_protocols("sessions") == {"u1": ("dn42_a",)} and r.fragment_protocols("x") == {}
    r.fail("protocols", error=ConnectionRefusedError("bird.ctl"), times=None)
    with pytest.raises(ConnectionRefusedError):
        await r.protocols()
    r.heal()
    await r.restart_protocol("dn42_a")
    with pytest.raises(FakeBackendError, match="no protocol"):
        await r.restart_protocol("kernel1")
    assert (await r.set_maintenance(True)).changed and not (await r.set_maintenance(True)).changed


async def test_one_journal_across_the_bundle(keyfile: str) -> None:
    fakes = FakeBackends()
    assert fakes.config() == dict.fromkeys(("tunnel", "firewall", "routing", "loopback"), "fake")
    await fakes.tunnel.ensure(spec(keyfile))
    await fakes.firewall.sync(frozenset({51820}))
    mark = fakes.journal.mark()
    await fakes.tunnel.ensure(spec(keyfile))
    await fakes.firewall.sync(frozenset({51820}))
    await fakes.routing.declare("sessions", {})
    assert fakes.journal.since(mark) == []
    assert [(c.backend, c.op) for c in fakes.writes()] == [("tunnel", "ensure"), ("firewall", "sync")]
    with pytest.raises(ValueError, match="no fake"):
        FakeBackends(kinds=["tunnel", "dns"])


# ------------------------------------------------------------ control plane


async def test_stub_control_plane_answers_records_and_fails() -> None:
    cp = StubControlPlane("hkg1")
    cp.set("mesh", {"peers": []})
    got = await cp.fetch("mesh")
    got["peers"].append(1)  # the caller's copy
    assert await cp.fetch("mesh") == {"peers": []}
    with pytest.raises(ControlPlaneRejected, match="no such resource"):
        await cp.fetch("sessions")
    received: list[Any] = []
    cp.on_post("mesh/status", received.append)
    assert await cp.send("mesh/status", {"a": 1}) is None
    cp.fail("mesh/status", 2)
    for _ in range(2):
        with pytest.raises(ControlPlaneUnavailable):
            await cp.send("mesh/status", {"a": 2})
    cp.fail("mesh", error=ControlPlaneRejected("db down", code=500))
    with pytest.raises(ControlPlaneRejected, match="db down"):
        await cp.fetch("mesh")
    assert received == [{"a": 1}] and cp.breaker_state == "closed"
    assert [c.body for c in cp.calls("mesh/status", "POST")] == [{"a": 1}, {"a": 2}, {"a": 2}]
    assert all(c.node == "hkg1" and c.authorized for c in cp.requests)
    with pytest.raises(ValueError, match="invalid control-plane resource"):
        await cp.fetch("../x")


# ------------------------------------------------------------------ context


@attrs.define
class HelloSection:
    greeting: str = "hi"


class HelloPlugin:
    """A plugin with a section and a link-target hook."""

    @hookimpl
    def moenet_config_sections(self) -> list[Any]:
        from moenet_core.descriptors import ConfigSection

        return [ConfigSection(name="hello", type=HelloSection)]

    @hookimpl
    def moenet_link_targets(self) -> list[LinkTarget]:
        return [LinkTarget(owner="hello", key="k", interface="wg1", addresses=("fe80::1",))]


async def test_plugin_context_without_an_agent_process(tmp_path: Path, keyfile: str) -> None:
    fakes = FakeBackends()
    clock = ManualClock()
    ctx = plugin_context(
        "hello",
        state_dir=tmp_path / "state",
        config={"node": {"name": "hkg1", "id": 3}, "hello": {"greeting": "konnichiwa"}},
        plugins=[("hello", HelloPlugin())],
        backends=fakes,
        clock=clock,
    )
    assert ctx.plugin == "hello" and ctx.node == "hkg1" and ctx.config.node.id == 3
    assert ctx.section == HelloSection(greeting="konnichiwa")
    assert ctx.clock is clock and ctx.maintenance is False
    assert ctx.backend("tunnel", TunnelBackend) is fakes.tunnel
    assert ctx.backend("routing", RoutingBackend) is fakes.routing
    with pytest.raises(BackendUnavailable):
        ctx.backend("tunnel", FirewallBackend)
    # The state store is the plugin's own directory.
    ctx.state.write_json("x.json", {"a": 1})
    assert (tmp_path / "state" / "plugins" / "hello" / "x.json").is_file()
    # Metrics, hooks, events are the agent's own.
    ctx.metrics.counter("greetings_total", "Greetings.").inc()
    assert ctx._agent.registry.get_sample_value("moenet_hello_greetings_total") == 1
    assert [t.key for t in ctx.link_targets()] == ["k"]
    seen: list[Any] = []

    class Listener:
        @hookimpl
        def moenet_link_latency(self, measurements: Any) -> None:
            seen.append(measurements)

    ctx.register_hooks(Listener())
    ctx.emit_link_latency(())
    assert seen == [()]
    ctx.close()
    ctx.emit_link_latency(())
    assert seen == [()]
    # The CP is an in-process stub by default.
    stub = ctx.cp
    assert isinstance(stub, StubControlPlane) and stub.node == "hkg1"
    stub.set("hello", {"ok": True})
    assert await ctx.cp.fetch("hello") == {"ok": True}


async def test_plugin_context_options(tmp_path: Path) -> None:
    section = HelloSection(greeting="given")
    ctx = plugin_context("hello", state_dir=tmp_path / "a", section=section, maintenance=True)
    assert ctx.section is section and ctx.maintenance is True and ctx.node == "test-node"
    with pytest.raises(BackendUnavailable):
        ctx.backend("tunnel")
    # An explicit section wins over the one structured from the config.
    ctx = plugin_context(
        "hello",
        state_dir=tmp_path / "b",
        config={"hello": {"greeting": "from config"}},
        plugins=[("hello", HelloPlugin())],
        section=section,
    )
    assert ctx.section is section
    with pytest.raises(ConfigError, match=r"hello\.greeting"):
        plugin_context(
            "hello",
            state_dir=tmp_path / "c",
            config={"hello": {"greeting": 5}},
            plugins=[("hello", HelloPlugin())],
        )
    from moenet_core.config import build_config

    built, _ = build_config(
        {"node": {"name": "jp1", "id": 2}, "controlPlane": {"url": "http://x.invalid", "token": "t-123456"}},
        env={},
    )
    ctx = plugin_context("x", state_dir=tmp_path / "e", config=built)
    assert ctx.node == "jp1" and ctx.config.state.directory == str(tmp_path / "e")
    assert built.state.directory != str(tmp_path / "e")  # the caller's config is not changed
    with pytest.raises(TypeError, match="not a TunnelBackend"):
        plugin_context("x", state_dir=tmp_path / "d", backends={"tunnel": FakeFirewallBackend()})


async def test_plugin_context_over_the_fake_http_cp(tmp_path: Path, make_plugin_context: Any) -> None:
    async with FakeControlPlane() as cp:
        cp.set("hello", {"n": 1})
        ctx = make_plugin_context("hello", cp=cp, config={"node": {"name": "hkg1", "id": 3}})
        assert await ctx.cp.fetch("hello") == {"n": 1}
        [req] = cp.calls("hello")
        assert req.node == "hkg1" and req.authorized
        cp.fail("hello", 1, status=503)
        with pytest.raises(ControlPlaneUnavailable):  # maxRetries 0: no sleeping on the manual clock
            await ctx.cp.fetch("hello")


async def test_fake_backends_as_a_plugin_of_a_real_agent(tmp_path: Path) -> None:
    fakes = FakeBackends(kinds=("tunnel", "routing"))
    cfg = {
        "node": {"name": "hkg1", "id": 3},
        "controlPlane": {"url": "http://cp.invalid", "token": "test-token"},
        "backends": fakes.config(),
    }
    async with AgentHarness(
        cfg, plugins=[("fakes", fakes)], state_dir=tmp_path / "s", clock=ManualClock()
    ) as h:
        assert h.agent.backend("tunnel") is fakes.tunnel and h.agent.backend("routing") is fakes.routing
        with pytest.raises(BackendUnavailable):
            h.agent.backend("firewall")
