"""The heartbeat's public addresses read from real interfaces, in a namespace.

The namespace has two uplink-like veth pairs: ``oth`` (made first, so the kernel
lists it first) and ``wan`` (the default routes), with public, DN42, private,
CGNAT, ULA and deprecated addresses added by the test. Nothing leaves the
namespace: the addresses are never used to send anything but the echo service's
HTTPS, which runs inside it too.
"""

from __future__ import annotations

import json

import moenet_heartbeat
import pytest
from helpers.echo import EchoServer
from helpers.tls import TestCert
from moenet_heartbeat import public

from moenet_core.testing import AgentHarness, FakeControlPlane

pytestmark = pytest.mark.netns

TOKEN = "test-token"


def build(ns) -> None:
    for name in ("oth", "wan"):
        ns.run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        ns.run("ip", "link", "set", name, "up")
        ns.run("ip", "link", "set", name + "p", "up")
    add = [
        ("oth", "1.0.0.7/24"),
        ("oth", "172.20.1.1/32"),  # DN42
        ("oth", "2a00:1::7/64"),
        ("oth", "fd42:1::1/64"),  # DN42 (ULA)
        ("wan", "100.64.0.2/10"),  # CGNAT
        ("wan", "10.0.0.2/24"),
        ("wan", "81.0.0.2/24"),
        ("wan", "fd00:e::2/64"),
        ("wan", "2a00:2::2/64"),
    ]
    for dev, a in add:
        ns.run("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
    # Deprecated: never preferred (and the kernel does not pick it as a source either).
    ns.run("ip", "addr", "add", "2a00:2::1/64", "dev", "wan", "nodad", "preferred_lft", "0")
    ns.run("ip", "route", "add", "default", "via", "81.0.0.1", "dev", "wan")
    ns.run("ip", "-6", "route", "add", "default", "via", "2a00:2::ff", "dev", "wan")


async def test_interfaces_the_default_route_and_the_fallbacks(netns):
    ns = netns()
    build(ns)
    with ns.entered():
        found = await public.read_addresses()
        hint4, hint6 = await public.route_hint(4), await public.route_hint(6)
        picked = await public.interface_addresses()
    wan, oth = (
        json.loads(ns.run("ip", "-j", "link", "show", d).stdout)[0]["ifindex"] for d in ("wan", "oth")
    )
    assert oth < wan
    seen = {(a.index, str(a.address)) for a in found}
    assert {(oth, "1.0.0.7"), (oth, "172.20.1.1"), (wan, "81.0.0.2"), (wan, "2a00:2::2")} <= seen
    assert not any(a.address.is_link_local or a.address.is_loopback for a in found)  # scope filtered
    [deprecated] = [a for a in found if str(a.address) == "2a00:2::1"]
    assert deprecated.flags & public.IFA_F_DEPRECATED
    assert hint4 is not None and (hint4.index, str(hint4.source)) == (wan, "81.0.0.2")
    assert hint6 is not None and hint6.index == wan
    assert picked == {4: "81.0.0.2", 6: "2a00:2::2"}

    # No default route: the first public address the kernel lists (oth's).
    ns.run("ip", "route", "del", "default")
    ns.run("ip", "-6", "route", "del", "default")
    with ns.entered():
        assert await public.route_hint(4) is None and await public.route_hint(6) is None
        assert await public.interface_addresses() == {4: "1.0.0.7", 6: "2a00:1::7"}

    # Only DN42, private, CGNAT and ULA addresses left: nothing to report.
    for dev, a in (("oth", "1.0.0.7/24"), ("oth", "2a00:1::7/64"), ("wan", "81.0.0.2/24")):
        ns.run("ip", "addr", "del", a, "dev", dev)
    ns.run("ip", "addr", "del", "2a00:2::2/64", "dev", "wan")
    ns.run("ip", "addr", "del", "2a00:2::1/64", "dev", "wan")
    with ns.entered():
        assert await public.interface_addresses() == {4: None, 6: None}


async def test_the_heartbeat_with_and_without_an_echo_service(netns, tmp_path, monkeypatch):
    ns = netns()
    build(ns)
    cert = TestCert(tmp_path / "tls", ["10.0.0.2", "fd00:e::2"])
    monkeypatch.setattr(public, "default_ssl_context", cert.client_context)
    with ns.entered():
        async with (
            FakeControlPlane(token=TOKEN) as cp,
            EchoServer(cert, ["10.0.0.2", "fd00:e::2"]) as echo,
        ):
            # The "NAT": what the outside would see for each family.
            echo.answers = {4: "81.0.0.99", 6: "2a00:2::99"}
            base = {"node": {"name": "jp1", "id": 1}, "controlPlane": {"url": cp.url, "token": TOKEN}}
            plugins = [("heartbeat", moenet_heartbeat)]

            # Without a URL: the interfaces only, and the echo service is never asked.
            async with AgentHarness(base, plugins=plugins, state_dir=tmp_path / "s1"):
                [plain] = await cp.wait_for("heartbeat")
            assert echo.requests == []

            cfg = {
                **base,
                "heartbeat": {
                    "publicIpv4Url": echo.url("10.0.0.2", "/v4"),
                    "publicIpv6Url": echo.url("fd00:e::2", "/v6"),
                },
            }
            async with AgentHarness(cfg, plugins=plugins, state_dir=tmp_path / "s2") as h:
                echoed = (await cp.wait_for("heartbeat", 2))[1]
                again = await h.agent.scheduler.run_now("heartbeat")
                # A broken service later does not break the heartbeat (and is not asked
                # again before the TTL anyway).
                echo.mode = "error"
                third = await h.agent.scheduler.run_now("heartbeat")
    assert (plain.body["status"]["publicIpv4"], plain.body["status"]["publicIpv6"]) == (
        "81.0.0.2",
        "2a00:2::2",
    )
    status = echoed.body["status"]
    assert (status["publicIpv4"], status["publicIpv6"]) == ("81.0.0.99", "2a00:2::99")
    # Each URL asked once, over its own family (the client's source is the namespace's).
    assert sorted(echo.requests) == [("/v4", "10.0.0.2"), ("/v6", "fd00:e::2")]
    assert again.ok and third.ok, (again.error, third.error)
    last = cp.calls("heartbeat")[-1].body["status"]
    assert (last["publicIpv4"], last["publicIpv6"]) == ("81.0.0.99", "2a00:2::99")
