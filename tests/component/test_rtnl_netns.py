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

from moenet_core import NetlinkError, Rtnl
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
