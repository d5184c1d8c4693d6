"""The ``ibgp`` owner of the ``routing`` backend against a real BIRD 3 in a namespace.

The same set-up as ``test_bird_apply`` (its ``env`` fixture): BIRD on a bootstrap
file, the agent's tree in ``tmp_path/etc``, configures counted on the client.
The last test runs two agent-rendered nodes and an external peer live: iBGP
between loopbacks, next hop self, route reflection and the maintenance drain,
read from BIRD's own routes (polled: BIRD converges on its own time).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import U1, U2, Env, cp_data, env, policy, protocol_names, session, symbol
from helpers.bird_nodes import V6, ibgp_pair, two_nodes, until
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.testing import unchecked_intent

from moenet_core.intents import IbgpNeighborIntent, IbgpOptionsIntent

__all__ = ["env"]  # the fixture, imported for pytest


def nb(
    node_id: int, name: str, *, v4: str = "", v6: str = "", checked: bool = True, **kw: Any
) -> IbgpNeighborIntent:
    """One iBGP neighbour as the ibgp plugin declares it; ``checked=False`` builds
    it around the intent's own checks (what a hostile plugin could send)."""
    args = {"node_id": node_id, "node_name": name, "loopback_ipv4": v4, "loopback_ipv6": v6, **kw}
    return IbgpNeighborIntent(**args) if checked else unchecked_intent(IbgpNeighborIntent, **args)


#: hkg1 (node 3 in cp_data) as a route reflector.
RR: dict[str, Any] = {
    "options": IbgpOptionsIntent(enabled=True, route_reflector=True),
    "4": nb(4, "tyo1", v6=V6 + "2", is_rr=True),
    "1005": nb(1005, "sin1", v6=V6 + "3", rr_client=True),
    "6": nb(6, "v4only", v4="172.20.42.4", rr_client=True),
    "3": nb(3, "hkg1", v6=V6 + "1"),  # this node: never a session
}


async def ready(env: Env) -> BirdRoutingBackend:
    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    return b


def ibgp_files(env: Env) -> dict[str, str]:
    return {k: v.decode() for k, v in env.files().items() if k.startswith("ibgp/") and "00_moenet" not in k}


@pytest.mark.netns
async def test_declared_neighbours_render_pass_bird_and_run(env: Env) -> None:
    b = await ready(env)
    before = env.configures
    r = await b.declare("ibgp", RR)
    assert (r.ok, r.changed, dict(r.rejected)) == (True, True, {}), r
    assert env.configures == before + 1
    files = ibgp_files(env)
    assert sorted(files) == ["ibgp/ibgp_sin1_1005.conf", "ibgp/ibgp_tyo1_4.conf", "ibgp/ibgp_v4only_6.conf"]
    assert (
        "rr client;" in files["ibgp/ibgp_sin1_1005.conf"] and "rr client;" in files["ibgp/ibgp_v4only_6.conf"]
    )
    assert "rr client;" not in files["ibgp/ibgp_tyo1_4.conf"]  # RR to RR: plain iBGP

    expected = {"4": ("ibgp_tyo1_4",), "1005": ("ibgp_sin1_1005",), "6": ("ibgp_v4only_6",)}
    assert dict(b.fragment_protocols("ibgp")) == expected
    running = {p.name: p for p in await b.protocols()}
    for (name,) in expected.values():
        assert running[name].proto == "BGP", running[name]
    assert running["ibgp_sin1_1005"].neighbor == V6 + "3"
    assert running["ibgp_v4only_6"].neighbor == "172.20.42.4"
    assert not any(n.startswith("ibgp_hkg1") for n in running)
    assert "ibgp_tyo1_4" in b.agent_protocols()
    info = b.status_info()
    assert info["owners"]["ibgp"] == 4 and info["ibgp"] == {"enabled": True, "routeReflector": True}

    # The same declare again: nothing written, no configure.
    inodes = env.inodes()
    r = await b.declare("ibgp", dict(RR))
    assert (r.ok, r.changed) == (True, False) and env.inodes() == inodes
    assert env.configures == before + 1

    # The same node as a client: only the route reflector, no rr client anywhere.
    r = await b.declare("ibgp", {"options": IbgpOptionsIntent(route_reflector=False), "4": RR["4"]})
    assert r.ok and r.changed
    assert sorted(ibgp_files(env)) == ["ibgp/ibgp_tyo1_4.conf"]
    names = await protocol_names(b)
    assert "ibgp_tyo1_4" in names and "ibgp_sin1_1005" not in names and "ibgp_v4only_6" not in names
    assert dict(b.fragment_protocols("ibgp")) == {"4": ("ibgp_tyo1_4",)}


@pytest.mark.netns
async def test_hostile_neighbours_are_rejected_and_the_rest_apply(env: Env) -> None:
    b = await ready(env)
    # Built around the intent's checks (which refuse each of them where they are
    # built): the backend's own rules still refuse them.
    hostile: dict[str, Any] = {
        "options": IbgpOptionsIntent(enabled=True),
        "4": RR["4"],
        "quote": nb(7, 'evil"; } protocol bgp x {', v6=V6 + "7", checked=False),
        "newline": nb(8, "a\nb", v6=V6 + "8", checked=False),
        "scope": nb(9, "scoped", v6="fd42::9%eth0", checked=False),
        "linklocal": nb(10, "ll", v6="fe80::10", checked=False),
        "prefix": nb(11, "pfx", v4="172.20.42.11/32", checked=False),
        "noloop": nb(12, "nothing", checked=False),
        "zero": nb(0, "zero", v6=V6 + "13", checked=False),
        "strid": nb("14", "strid", v6=V6 + "14", checked=False),  # type: ignore[arg-type]
        "boolrr": nb(15, "boolrr", v6=V6 + "15", rr_client="yes", checked=False),
        "notobj": "tyo1",
        "samename": nb(16, "TYO1", v6=V6 + "16"),
        "sameid": nb(4, "other", v6=V6 + "17"),
    }
    for key, n in hostile.items():
        if isinstance(n, IbgpNeighborIntent) and key not in ("4", "samename", "sameid"):
            with pytest.raises(ValueError):
                IbgpNeighborIntent(**attrs.asdict(n))
    r = await b.declare("ibgp", hostile)
    assert r.ok and r.changed, r
    assert set(r.rejected) == set(hostile) - {"options", "4"}, r.rejected
    assert "ibgp[quote].nodeName: must be a node name" in r.rejected["quote"]
    assert "ibgp[scope].loopbackIpv6" in r.rejected["scope"]
    assert "ibgp[noloop]: needs loopbackIpv6 or loopbackIpv4" in r.rejected["noloop"]
    assert "already declared" in r.rejected["samename"] and "already declared" in r.rejected["sameid"]
    assert "ibgp[notobj]: str is not a routing intent" in r.rejected["notobj"]
    assert "ibgp[boolrr].rrClient: must be true or false" in r.rejected["boolrr"]
    assert sorted(ibgp_files(env)) == ["ibgp/ibgp_tyo1_4.conf"]
    text = "".join(v.decode() for v in env.files().values())
    assert "evil" not in text and "scoped" not in text
    assert dict(b.fragment_protocols("ibgp")) == {"4": ("ibgp_tyo1_4",)}
    assert b.status_info()["rejected"]["ibgp"].keys() == r.rejected.keys()

    # A bad options fragment is rejected alone; iBGP stays enabled with the defaults.
    r = await b.declare("ibgp", {"options": unchecked_intent(IbgpOptionsIntent, enabled="yes"), "4": RR["4"]})
    assert set(r.rejected) == {"options"} and r.ok
    assert "ibgp_tyo1_4" in await protocol_names(b)


@pytest.mark.netns
async def test_a_removed_neighbour_leaves_in_the_same_reconfigure_as_a_session_change(env: Env) -> None:
    b = await ready(env)
    assert (await b.declare("sessions", {U1: session()})).ok
    assert (await b.declare("ibgp", RR)).ok
    assert {"ibgp_sin1_1005", "ibgp_tyo1_4", symbol(U1, 4242420002)} <= await protocol_names(b)
    before = env.configures
    without_sin1 = {k: v for k, v in RR.items() if k != "1005"}
    results = await asyncio.gather(
        b.declare("sessions", {U1: session(), U2: session(4242420003, 3)}),
        b.declare("ibgp", without_sin1),
    )
    assert all(r.ok and r.changed for r in results), results
    assert env.configures == before + 1, "one coalesced reconfigure for both owners"
    names = await protocol_names(b)
    assert "ibgp_sin1_1005" not in names and "ibgp_tyo1_4" in names
    assert symbol(U2, 4242420003) in names
    assert "ibgp/ibgp_sin1_1005.conf" not in env.files()
    assert "1005" not in b.fragment_protocols("ibgp")


@pytest.mark.netns
async def test_disabled_ibgp_removes_every_session(env: Env) -> None:
    b = await ready(env)
    assert (await b.declare("ibgp", RR)).ok
    r = await b.declare("ibgp", {**RR, "options": IbgpOptionsIntent(enabled=False)})
    assert r.ok and r.changed
    assert ibgp_files(env) == {}
    assert not any(n.startswith("ibgp_") for n in await protocol_names(b))
    assert dict(b.fragment_protocols("ibgp")) == {}


@pytest.mark.netns
async def test_neighbours_survive_a_restart_without_a_reconfigure(env: Env) -> None:
    b = await ready(env)
    assert (await b.declare("ibgp", RR)).ok
    configures = env.configures
    await b.aclose()
    b2 = await env.backend()  # restores the persisted policy and fragments
    assert dict(b2.fragment_protocols("ibgp")) == {
        "4": ("ibgp_tyo1_4",),
        "1005": ("ibgp_sin1_1005",),
        "6": ("ibgp_v4only_6",),
    }
    r = await b2.declare("ibgp", RR)
    assert (r.ok, r.changed) == (True, False)
    assert env.configures == configures
    await b2.restart_protocol("ibgp_sin1_1005")  # the agent's own: allowed


@pytest.mark.netns
async def test_a_neighbour_bird_rejects_is_left_out_and_the_rest_apply(env: Env, tmp_path: Path) -> None:
    """BIRD names one neighbour's file (an operator's broken template override for
    one node): that neighbour is rejected with BIRD's message, everything else goes live."""
    override = tmp_path / "tpl"
    override.mkdir()
    shipped = (Path(__file__).resolve().parents[2] / "templates/bird/ibgp.conf.j2").read_text()
    (override / "ibgp.conf.j2").write_text(
        shipped + "{% if peer.node_id == 1005 %}\nthis is not bird syntax;\n{% endif %}\n"
    )
    b = await env.backend(template_dir=str(override))
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    r = await b.declare("ibgp", RR)
    assert r.ok and r.changed, r
    assert set(r.rejected) == {"1005"} and "ibgp/ibgp_sin1_1005.conf" in r.rejected["1005"], r.rejected
    names = await protocol_names(b)
    assert {"ibgp_tyo1_4", "ibgp_v4only_6"} <= names and "ibgp_sin1_1005" not in names
    assert "1005" not in b.fragment_protocols("ibgp")
    assert b.status_info()["rejected"]["ibgp"] == {"1005": r.rejected["1005"]}


# ------------------------------------------------------------------ two nodes, live

LOCAL_PREF_0 = re.compile(r"bgp_local_pref: 0$", re.MULTILINE)


@pytest.mark.netns
async def test_two_nodes_run_ibgp_with_next_hop_self_rr_and_drain(netns: Any, tmp_path: Path) -> None:
    """Node A (hkg1, a route reflector) learns 172.20.1.0/27 and fd42:1::/48 over eBGP
    and passes them over iBGP between the loopbacks to node B (tyo1, its client):
    B sees A's loopback as the next hop (next hop self), A's session is a
    route-reflector one, and A's maintenance reaches B as GRACEFUL_SHUTDOWN and
    local preference 0."""
    # X, the external network on A's eBGP link, announces the two prefixes.
    async with two_nodes(netns, tmp_path, "172.20.1.0/27", "fd42:1::/48") as rig:
        a, b = rig.a, rig.b
        sx = session(4242420002, 2, interface="ex-a")
        assert (await a.declare("sessions", {U1: sx})).ok
        await ibgp_pair(a, b, reflector=True)

        async def established() -> Any:
            pa = {p.name: p for p in await a.client.protocols()}
            pb = {p.name: p for p in await b.client.protocols()}
            up = [pa["ibgp_tyo1_4"], pb["ibgp_hkg1_3"], pa[symbol(U1, 4242420002)]]
            return all(p.bgp_state == "Established" for p in up) and pa

        pa = await until("the eBGP and iBGP sessions", established)
        assert "route-reflector" in pa["ibgp_tyo1_4"].details["Session"], pa["ibgp_tyo1_4"].details

        async def route(prefix: str) -> str:
            reply = await b.client.command(f"show route {prefix} all", check=False)
            return "\n".join(reply.texts())

        for prefix in ("172.20.1.0/27", "fd42:1::/48"):
            text = await until(f"{prefix} on B", lambda p=prefix: _has(route(p), "bgp_next_hop"))
            assert "ibgp_hkg1_3" in text
            # next hop self: A's loopback, never X's link-local address.
            assert f"bgp_next_hop: {V6}1" in text and "fe80::2" not in text, text
            assert not LOCAL_PREF_0.search(text) and "(65535,0)" not in text

        # A drains: B sees GRACEFUL_SHUTDOWN and local preference 0 on what A passes on.
        assert (await a.set_maintenance(True)).ok
        for prefix in ("172.20.1.0/27", "fd42:1::/48"):
            text = await until(f"drained {prefix} on B", lambda p=prefix: _has(route(p), "(65535,0)"))
            assert LOCAL_PREF_0.search(text), text
        assert (await a.set_maintenance(False)).ok
        await until("the drain lifted on B", lambda: _lacks(route("172.20.1.0/27"), "(65535,0)"))

        # B removes A (a departing neighbour): its session is gone, and so is the route.
        assert (await b.declare("ibgp", {"options": IbgpOptionsIntent()})).ok
        assert "ibgp_hkg1_3" not in {p.name for p in await b.protocols()}
        await until("the route gone from B", lambda: _lacks(route("172.20.1.0/27"), "ibgp_hkg1_3"))


async def _has(text: Any, needle: str) -> str | None:
    t = await text
    return t if needle in t else None


async def _lacks(text: Any, needle: str) -> bool:
    return needle not in await text
