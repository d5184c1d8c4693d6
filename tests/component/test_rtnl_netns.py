"""The core's rtnetlink client against the real kernel, in a throwaway namespace.

Every request runs with the test thread switched into the namespace (checked),
so nothing here can touch the host's interfaces. What the kernel ends up with is
read back with ``ip``, not with the client under test. This kernel has no dummy
driver: links are empty bridges.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import Iterator

import pytest
from moenet_wireguard.config import Settings
from moenet_wireguard.errors import TunnelError
from moenet_wireguard.genl import PyrouteGenl, build_get_message
from moenet_wireguard.kernel import KernelTunnelBackend

from moenet_core import NetlinkError, RtAddressFlag, Rtnl, RtRoute, RtScope
from moenet_core.testing import NetNS

pytestmark = pytest.mark.netns


@contextlib.contextmanager
def inside(ns: NetNS) -> Iterator[None]:
    with ns.entered():
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(f"/run/netns/{ns.name}").st_ino
        yield


def ip_link(ns: NetNS, dev: str) -> dict | None:
    res = ns.run("ip", "-j", "-d", "link", "show", "dev", dev, check=False)
    return json.loads(res.stdout)[0] if res.returncode == 0 else None


def ip_addrs(ns: NetNS, dev: str) -> set[str]:
    info = json.loads(ns.run("ip", "-j", "addr", "show", "dev", dev).stdout)[0]["addr_info"]
    return {
        f"{a['local']}/{a['prefixlen']}" + (f" peer {a['address']}" if "address" in a else "") for a in info
    }


async def test_links_and_addresses_round_trip(netns):
    ns = netns()
    with inside(ns):
        async with Rtnl() as rt:
            await rt.link_add("rt0", "bridge")
            link = await rt.get_link("rt0")
            assert link is not None and link.kind == "bridge" and not link.up
            await rt.link_set(link.ifindex, alias="moenet-agent", ipv6_addr_gen_mode=1)
            await rt.link_set(link.ifindex, mtu=1400, up=True)
            await rt.addr_add(link.ifindex, 32, "172.20.0.4", local="172.20.0.3")
            await rt.addr_add(link.ifindex, 32, "172.22.0.1")
            await rt.addr_add(link.ifindex, 128, "fd00::1", flags=0x02)
            seen = await rt.get_link("rt0")
            assert seen is not None and (seen.alias, seen.mtu, seen.up) == ("moenet-agent", 1400, True)
            assert seen in await rt.links()
        shown = ip_link(ns, "rt0")
        assert shown is not None and shown["ifalias"] == "moenet-agent" and shown["mtu"] == 1400
        assert "UP" in shown["flags"] and shown["inet6_addr_gen_mode"] == "none"
        assert ip_addrs(ns, "rt0") == {"172.20.0.3/32 peer 172.20.0.4", "172.22.0.1/32", "fd00::1/128"}
        nodad = json.loads(ns.run("ip", "-j", "addr", "show", "dev", "rt0", "to", "fd00::1/128").stdout)
        assert nodad[0]["addr_info"][0].get("nodad") is True

        async with Rtnl(strict=True) as rt:
            got = {(a.local, a.prefixlen, a.peer) for a in await rt.addresses(link.ifindex)}
            assert got == {("172.20.0.3", 32, "172.20.0.4"), ("172.22.0.1", 32, None), ("fd00::1", 128, None)}
            await rt.addr_del(link.ifindex, 32, "172.20.0.4", local="172.20.0.3")
            await rt.addr_del(link.ifindex, 32, "172.22.0.1")
            await rt.addr_del(link.ifindex, 128, "fd00::1")
            await rt.link_set(link.ifindex, up=False)
        assert ip_addrs(ns, "rt0") == set()
        assert "UP" not in (ip_link(ns, "rt0") or {"flags": ["UP"]})["flags"]
        async with Rtnl() as rt:
            await rt.link_del(link.ifindex)
        assert ip_link(ns, "rt0") is None


async def test_refusals_carry_the_kernels_errno(netns):
    ns = netns()
    ns.run("ip", "link", "add", "rt0", "type", "bridge")
    with inside(ns):
        async with Rtnl() as rt:
            link = await rt.get_link("rt0")
            assert link is not None
            assert await rt.get_link("nope") is None
            cases = [
                (rt.link_add("rt0", "bridge"), errno.EEXIST),
                (rt.link_add("rt1", "no-such-kind"), errno.EOPNOTSUPP),
                (rt.link_del(link.ifindex + 1000), errno.ENODEV),
                (rt.addr_del(link.ifindex, 32, "172.20.9.9"), errno.EADDRNOTAVAIL),
            ]
            for call, code in cases:
                with pytest.raises(NetlinkError) as info:
                    await call
                assert info.value.code == code, info.value
                assert str(info.value) == str((code, os.strerror(code)))
            await rt.link_set(link.ifindex, up=True)  # the socket still works after refusals
    assert "UP" in (ip_link(ns, "rt0") or {})["flags"]


async def test_sixteen_concurrent_creations_shared_and_separate_sockets(netns):
    """``sessions.tunnelConcurrency`` creations at once: on one shared socket
    (taking turns) and on a socket each; every one lands and is answered."""
    ns = netns()
    with inside(ns):

        async def own(name: str) -> None:
            async with Rtnl() as rt:
                await rt.link_add(name, "bridge")
                link = await rt.get_link(name)
                assert link is not None
                await rt.link_set(link.ifindex, alias=name, up=True)

        async with Rtnl() as shared:

            async def on_shared(name: str) -> None:
                await shared.link_add(name, "bridge")
                link = await shared.get_link(name)
                assert link is not None and link.name == name
                await shared.link_set(link.ifindex, alias=name, up=True)

            await asyncio.gather(
                *(on_shared(f"sh{i}") for i in range(16)), *(own(f"ow{i}") for i in range(16))
            )
            # One refusal among many on the shared socket stays with its caller.
            results = await asyncio.gather(
                *(shared.link_add(f"sh{i}" if i % 4 == 0 else f"nx{i}", "bridge") for i in range(16)),
                return_exceptions=True,
            )
    refused = {i for i, r in enumerate(results) if isinstance(r, NetlinkError) and r.code == errno.EEXIST}
    assert refused == {0, 4, 8, 12} and all(r is None for i, r in enumerate(results) if i not in refused)
    links = {d["ifname"]: d for d in json.loads(ns.run("ip", "-j", "link", "show").stdout)}
    for name in [f"sh{i}" for i in range(16)] + [f"ow{i}" for i in range(16)]:
        assert links[name].get("ifalias") == name and "UP" in links[name]["flags"], name
    assert {f"nx{i}" for i in range(16) if i % 4} <= set(links)


async def test_kernel_backend_genl_refusal_is_the_cores_error(netns, tmp_path):
    """The kernel backend's generic-netlink transport (still pyroute2, loaded
    only there) raises the core's ``NetlinkError``, which the backend reports as
    a ``TunnelError`` with the kernel's errno and text, as before."""
    ns = netns()
    with inside(ns):
        with pytest.raises(NetlinkError) as info:
            await PyrouteGenl().get(build_get_message("wg-none"))
        # No WireGuard module here: the family is missing; with one, the device.
        assert info.value.code in (errno.ENOENT, errno.ENODEV)
        backend = KernelTunnelBackend(Settings(), intent_dir=tmp_path / "creating")
        with pytest.raises(TunnelError) as err:
            await backend._read("wg-none")
    assert str(err.value) == f"tunnel wg-none: reading the WireGuard device failed: {info.value}"


# ------------------------------------------------- address flags, scopes, routes


def ip_flags(ns: NetNS) -> dict[str, tuple[str, int, set[str]]]:
    """Each address as ``ip`` shows it: ``local -> (device, scope, flags)``, the
    flags being the ``IFA_F_*`` names ``ip -j`` prints as true."""
    scopes = {"global": 0, "site": 200, "link": 253, "host": 254}
    names = {"secondary", "temporary", "nodad", "optimistic", "dadfailed", "deprecated", "tentative",
             "mngtmpaddr", "noprefixroute", "autojoin", "stable-privacy"}  # fmt: skip
    out = {}
    for link in json.loads(ns.run("ip", "-j", "addr", "show").stdout):
        for a in link["addr_info"]:
            if "local" in a:
                flags = {k for k, v in a.items() if k in names and v is True}
                out[a["local"]] = (link["ifname"], scopes[a["scope"]], flags)
    return out


def flag_names(flags: int, ipv6: bool) -> set[str]:
    """Our flags in ``ip``'s words (bit 0 is "secondary" on IPv4, "temporary" on IPv6)."""
    F = RtAddressFlag
    words = {
        F.TEMPORARY: "temporary" if ipv6 else "secondary",
        F.NODAD: "nodad",
        F.OPTIMISTIC: "optimistic",
        F.DADFAILED: "dadfailed",
        F.DEPRECATED: "deprecated",
        F.TENTATIVE: "tentative",
        F.MANAGETEMPADDR: "mngtmpaddr",
        F.NOPREFIXROUTE: "noprefixroute",
        F.MCAUTOJOIN: "autojoin",
        F.STABLE_PRIVACY: "stable-privacy",
    }
    return {word for bit, word in words.items() if flags & bit}


async def test_address_flags_and_scopes_read_back(netns):
    """Deprecated (``preferred_lft 0``), nodad, tentative (no carrier: DAD
    waits), dadfailed (the address is already on the peer), flags beyond the
    first 8 bits, and link and host scope: as ``ip`` shows them."""
    ns = netns()
    for name, peer_up in (("wan", True), ("nc0", False)):
        ns.run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        ns.run("ip", "link", "set", name, "up")
        if peer_up:
            ns.run("ip", "link", "set", name + "p", "up")
    for args in (
        ("81.0.0.2/24", "dev", "wan"),
        ("81.0.0.3/24", "dev", "wan", "preferred_lft", "0"),
        ("192.0.2.1/32", "dev", "wan", "scope", "link"),
        ("172.20.0.3", "peer", "172.20.0.4/32", "dev", "wan"),
        ("2a00:2::2/64", "dev", "wan", "nodad"),
        ("2a00:2::1/64", "dev", "wan", "nodad", "preferred_lft", "0"),
        ("2a00:5::1/64", "dev", "wan", "nodad", "noprefixroute", "mngtmpaddr"),
        ("2a00:3::1/64", "dev", "nc0"),
        ("2a00:4::1/64", "dev", "wanp", "nodad"),
        ("2a00:4::1/64", "dev", "wan"),  # DAD meets the peer's: fails
    ):
        ns.run("ip", "addr", "add", *args)
    wan, nc0 = (ip_link(ns, d)["ifindex"] for d in ("wan", "nc0"))  # type: ignore[index]
    F = RtAddressFlag
    with inside(ns):
        async with Rtnl() as rt:
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # DAD answers within about a second
                [dad] = [a for a in await rt.address_details(wan) if a.local == "2a00:4::1"]
                if dad.flags & F.DADFAILED or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            found = await rt.address_details()
            universe = await rt.address_details(scope=RtScope.UNIVERSE)
            on_nc0 = await rt.address_details(nc0)
        async with Rtnl(strict=True) as rt:
            wan_link = await rt.address_details(wan, scope=RtScope.LINK)
    shown = ip_flags(ns)
    by_local = {a.local: a for a in found if a.ifindex in (wan, nc0)}
    assert set(by_local) == {loc for loc, (dev, _, _) in shown.items() if dev in ("wan", "nc0")}
    for local, a in by_local.items():
        dev, scope, flags = shown[local]
        assert (a.ifindex, a.scope, flag_names(a.flags, ":" in local)) == (
            {"wan": wan, "nc0": nc0}[dev],
            scope,
            flags,
        ), local
    # ... and what the heartbeat relies on, spelled out.
    assert by_local["81.0.0.3"].flags & F.DEPRECATED and not by_local["81.0.0.2"].flags & F.DEPRECATED
    assert by_local["2a00:2::1"].flags & F.DEPRECATED and by_local["2a00:2::1"].flags & F.NODAD
    assert by_local["2a00:2::2"].flags & (F.DEPRECATED | F.TENTATIVE | F.DADFAILED) == 0
    assert by_local["2a00:3::1"].flags & F.TENTATIVE and by_local["2a00:3::1"].scope == RtScope.UNIVERSE
    assert by_local["2a00:4::1"].flags & (F.DADFAILED | F.TENTATIVE) == F.DADFAILED | F.TENTATIVE
    assert by_local["2a00:5::1"].flags & F.NOPREFIXROUTE  # beyond the header's 8 bits
    assert (by_local["192.0.2.1"].scope, by_local["172.20.0.3"].peer) == (RtScope.LINK, "172.20.0.4")
    assert {a.scope for a in found if a.local in ("127.0.0.1", "::1")} == {RtScope.HOST}
    # Filters: scope, link (here and, with strict checking, in the kernel).
    assert universe == [a for a in found if a.scope == RtScope.UNIVERSE]
    assert "192.0.2.1" not in {a.local for a in universe} and "2a00:3::1" in {a.local for a in universe}
    assert on_nc0[0].local == "2a00:3::1" and {a.ifindex for a in on_nc0} == {nc0}
    assert {a.local for a in wan_link} == {"192.0.2.1"} | {
        loc for loc, (dev, scope, _) in shown.items() if dev == "wan" and scope == RtScope.LINK
    }


def ip_route_get(ns: NetNS, dst: str) -> tuple[str, str | None, str | None]:
    """``(device, prefsrc, gateway)`` as ``ip route get`` shows them."""
    shown = json.loads(ns.run("ip", "-j", "route", "get", dst).stdout)[0]
    gateway = shown.get("gateway") or shown.get("via", {}).get("host")
    return shown["dev"], shown.get("prefsrc"), gateway


async def test_route_lookups(netns):
    """``ip route get``: interface, source and gateway as ``ip`` shows them; no
    route and unreachable are None; blackhole and prohibit are the kernel's refusals."""
    ns = netns()
    ns.run("ip", "link", "add", "wan", "type", "veth", "peer", "name", "wanp")
    ns.run("ip", "link", "add", "oth", "type", "veth", "peer", "name", "othp")
    for dev in ("wan", "wanp", "oth", "othp"):
        ns.run("ip", "link", "set", dev, "up")
    for addr, dev in (("81.0.0.2/24", "wan"), ("81.0.0.4/24", "wan"), ("1.0.0.7/24", "oth")):
        ns.run("ip", "addr", "add", addr, "dev", dev)
    for addr, dev in (("2a00:2::2/64", "wan"), ("2a00:1::7/64", "oth")):
        ns.run("ip", "addr", "add", addr, "dev", dev, "nodad")
    ns.run("ip", "addr", "add", "2a00:2::1/64", "dev", "wan", "nodad", "preferred_lft", "0")
    ns.run("ip", "route", "add", "default", "via", "81.0.0.1", "dev", "wan")
    ns.run("ip", "-6", "route", "add", "default", "via", "2a00:2::ff", "dev", "wan")
    ns.run("ip", "route", "add", "198.51.100.0/24", "via", "81.0.0.1", "dev", "wan", "src", "81.0.0.4")
    ns.run("ip", "route", "add", "198.18.0.0/15", "via", "inet6", "fe80::1", "dev", "wan")
    ns.run("ip", "route", "add", "9.9.9.0/24", "via", "1.0.0.1", "dev", "oth")
    ns.run("ip", "route", "add", "blackhole", "203.0.113.0/24")
    ns.run("ip", "route", "add", "unreachable", "192.0.2.0/24")
    ns.run("ip", "route", "add", "prohibit", "100.64.0.0/10")
    wan, oth = (ip_link(ns, d)["ifindex"] for d in ("wan", "oth"))  # type: ignore[index]
    lookups = ["1.1.1.1", "2606:4700:4700::1111", "198.51.100.7", "198.18.0.1", "9.9.9.9", "81.0.0.9"]
    with inside(ns):
        async with Rtnl() as rt:
            got = {dst: await rt.route_get(dst) for dst in lookups}
            shown = {dst: ip_route_get(ns, dst) for dst in lookups}
            local = await rt.route_get("81.0.0.2")
            unreachable = await rt.route_get("192.0.2.1")
            refusals = {}
            for dst in ("203.0.113.1", "100.64.0.1"):
                with pytest.raises(NetlinkError) as info:
                    await rt.route_get(dst)
                refusals[dst] = info.value.code
            ns.run("ip", "route", "del", "default")
            ns.run("ip", "-6", "route", "del", "default")
            gone = (await rt.route_get("1.1.1.1"), await rt.route_get("2606:4700:4700::1111"))
    assert got == {
        "1.1.1.1": RtRoute(wan, "81.0.0.2", "81.0.0.1", 1),
        "2606:4700:4700::1111": RtRoute(wan, "2a00:2::2", "2a00:2::ff", 1),  # not the deprecated one
        "198.51.100.7": RtRoute(wan, "81.0.0.4", "81.0.0.1", 1),
        "198.18.0.1": RtRoute(wan, "81.0.0.2", "fe80::1", 1),
        "9.9.9.9": RtRoute(oth, "1.0.0.7", "1.0.0.1", 1),
        "81.0.0.9": RtRoute(wan, "81.0.0.2", None, 1),  # on the link: no gateway
    }
    names = {wan: "wan", oth: "oth"}
    assert {
        dst: (names[r.oif], r.prefsrc, r.gateway) for dst, r in got.items() if r
    } == shown  # as ip sees it
    assert local is not None and (local.oif, local.route_type) == (1, 2)  # lo, RTN_LOCAL
    assert unreachable is None and gone == (None, None)
    assert refusals == {"203.0.113.1": errno.EINVAL, "100.64.0.1": errno.EACCES}
