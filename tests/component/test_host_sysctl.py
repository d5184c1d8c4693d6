"""The host plugin's sysctl check against a real kernel, inside namespaces the
test creates (``/proc/sys/net`` is per network namespace; the host's own is
only read, to prove it is untouched).

The second test is the reason the plugin exists: strict reverse-path filtering
(RHEL's default, ``rp_filter=1``) drops asymmetric traffic on a tunnel, and
after the check the same traffic flows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from moenet_host import Sysctl, check, health_checks

from moenet_core.testing import NetNS, veth_pair

HOST_KEYS = ("net/ipv4/conf/all/rp_filter", "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def sysctl(ns: NetNS, key: str) -> int:
    """Read a key inside ``ns`` with sysctl(8): an independent reader."""
    return int(ns.run("sysctl", "-n", key).stdout.strip())


def set_sysctls(ns: NetNS, **values: int) -> None:
    ns.run("sysctl", "-q", "-w", *(f"{k.replace('__', '/')}={v}" for k, v in values.items()))


def host_values() -> dict[str, str]:
    return {k: (Path("/proc/sys") / k).read_text() for k in HOST_KEYS}


@pytest.mark.netns
def test_fixes_rp_filter_and_forwarding_inside_the_namespace_only(netns: Callable[[], NetNS]) -> None:
    host_before = host_values()
    ns, other = netns(), netns()
    veth_pair(ns, other, "tun1", "peer1")
    other_keys = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.peer1.rp_filter", "net.ipv4.ip_forward")
    other_before = [sysctl(other, k) for k in other_keys]
    ns.run("ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")
    # Debian 13 style: loose filtering everywhere, no forwarding; RAs on the uplink.
    set_sysctls(
        ns,
        **{
            "net/ipv4/conf/all/rp_filter": 2,
            "net/ipv4/conf/tun1/rp_filter": 2,
            "net/ipv4/conf/eth9/rp_filter": 0,
            "net/ipv4/ip_forward": 0,
            "net/ipv6/conf/all/forwarding": 0,
            "net/ipv6/conf/eth9/accept_ra": 1,
        },
    )
    with ns.entered():
        before = check(Sysctl(), {"tun1"}, fix=False)
        report = check(Sysctl(), {"tun1", "missing0"}, fix=True)
    assert before.rp_filter == {"tun1": 2} and "net/ipv4/ip_forward" in before.forwarding_off
    assert report.interfaces == ("tun1",) and report.failures == ()
    assert sysctl(ns, "net.ipv4.conf.tun1.rp_filter") == 0
    assert sysctl(ns, "net.ipv4.conf.all.rp_filter") == 0
    assert sysctl(ns, "net.ipv4.conf.eth9.rp_filter") == 2  # keeps its effective filter
    assert sysctl(ns, "net.ipv4.ip_forward") == 1 and sysctl(ns, "net.ipv6.conf.all.forwarding") == 1
    assert (
        sysctl(ns, "net.ipv4.conf.tun1.forwarding") == 1 and sysctl(ns, "net.ipv6.conf.tun1.forwarding") == 1
    )
    assert sysctl(ns, "net.ipv6.conf.eth9.accept_ra") == 2 and "eth9" in report.accept_ra
    with ns.entered():
        after = check(Sysctl(), {"tun1"}, fix=True)
    assert after.changes == () and [c.verdict for c in health_checks(after, True)] == ["healthy", "healthy"]
    # The other namespace and the host were never written.
    assert [sysctl(other, k) for k in other_keys] == other_before
    assert host_values() == host_before


def ping(ns: NetNS, src: str, dst: str, count: int, wait: int) -> bool:
    res = ns.run("ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-I", src, dst, check=False)
    return res.returncode == 0


@pytest.mark.netns
def test_asymmetric_traffic_flows_once_strict_rp_filter_is_off(netns: Callable[[], NetNS]) -> None:
    """Node A receives a DN42 packet on ``tun0`` whose source it routes out of
    ``tun1`` (asymmetric, as DN42 often is): strict rp_filter drops it; after the
    check the packet is answered (out of tun1)."""
    a, b = netns(), netns()
    veth_pair(a, b, "tun0", "b0")
    veth_pair(a, b, "tun1", "b1")
    a.run("ip", "addr", "add", "10.0.0.1/30", "dev", "tun0")
    a.run("ip", "addr", "add", "10.0.1.1/30", "dev", "tun1")
    a.run("ip", "route", "add", "10.9.9.9/32", "via", "10.0.1.2", "dev", "tun1")
    b.run("ip", "addr", "add", "10.0.0.2/30", "dev", "b0")
    b.run("ip", "addr", "add", "10.0.1.2/30", "dev", "b1")
    b.run("ip", "addr", "add", "10.9.9.9/32", "dev", "lo")
    set_sysctls(b, **{"net/ipv4/conf/all/rp_filter": 0, "net/ipv4/conf/b0/rp_filter": 0})
    set_sysctls(b, **{"net/ipv4/conf/b1/rp_filter": 0})
    set_sysctls(a, **{"net/ipv4/conf/all/rp_filter": 1, "net/ipv4/conf/tun0/rp_filter": 1})
    set_sysctls(a, **{"net/ipv4/conf/tun1/rp_filter": 1})

    assert not ping(b, "10.9.9.9", "10.0.0.1", 1, 1), "strict rp_filter should drop the asymmetric packet"
    with a.entered():
        report = check(Sysctl(), {"tun0"}, fix=True)
    assert report.rp_filter == {}
    assert sysctl(a, "net.ipv4.conf.tun1.rp_filter") == 1  # not the agent's: kept as it was
    assert ping(b, "10.9.9.9", "10.0.0.1", 3, 2), "the asymmetric packet is answered once rp_filter is 0"
