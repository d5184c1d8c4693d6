"""The ICMP prober against real ICMP in throwaway network namespaces.

Topology (everything created here and removed after the module)::

    B (vb1)  ==== (va1) A (va2) ====  (vc1) C
    10.71.1.2         10.71.1.1        10.71.2.1        10.71.2.2
    fd71:1::2         fd71:1::1
    fe80::b1          fe80::a1         fe80::a2         fe80::c1
    10.71.9.9 (lo)

The prober runs in A (``with a.entered()``: its raw sockets belong to A). A also
routes 10.71.9.9 towards C, which does not have it: only a probe bound to va1
(towards B, which does) can get an answer.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest
from moenet_rtt import icmp

from moenet_core.testing import NetNS, veth_pair
from moenet_core.testing.netns import have_root

pytestmark = pytest.mark.netns

FAST = {"count": 3, "timeout": 0.5, "interval": 0.05}


class Topology:
    def __init__(self) -> None:
        self.made: list[NetNS] = []
        self.a, self.b, self.c = self.ns(), self.ns(), self.ns()

    def ns(self) -> NetNS:
        ns = NetNS("rtt")
        self.made.append(ns)
        return ns

    def build(self) -> None:
        a, b, c = self.a, self.b, self.c
        veth_pair(a, b, "va1", "vb1")
        veth_pair(a, c, "va2", "vc1")
        for ns, cmds in (
            (
                a,
                [
                    "10.71.1.1/24 dev va1",
                    "fd71:1::1/64 dev va1 nodad",
                    "fe80::a1/64 dev va1 nodad",
                    "10.71.2.1/24 dev va2",
                    "fe80::a2/64 dev va2 nodad",
                ],
            ),
            (b, ["10.71.1.2/24 dev vb1", "fd71:1::2/64 dev vb1 nodad", "fe80::b1/64 dev vb1 nodad"]),
            (c, ["10.71.2.2/24 dev vc1", "fe80::c1/64 dev vc1 nodad"]),
        ):
            for cmd in cmds:
                ns.run("ip", "addr", "add", *cmd.split())
        b.run("ip", "addr", "add", "10.71.9.9/32", "dev", "lo")
        a.run("ip", "route", "add", "10.71.9.9/32", "via", "10.71.2.2", "dev", "va2")
        # The reply from 10.71.9.9 arrives on va1 although the route points at va2.
        a.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.va1.rp_filter=0")

    def remove(self) -> None:
        for ns in self.made:
            ns.remove()


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if not have_root():
        pytest.fail("this test needs root (network namespaces, raw sockets)")
    t = Topology()
    try:
        t.build()
        yield t
    finally:
        t.remove()


# ----------------------------------------------------------------- packets


def test_checksum_rfc1071_example():
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6")) == icmp.checksum(bytes.fromhex("0001f203f4f5f600"))


def test_echo_request_and_reply_parsing():
    payload = b"token123" + bytes(48)
    req = icmp.echo_request(0x1234, 7, payload, v6=False)
    assert req[0] == icmp.ICMP_ECHO_REQUEST and icmp.checksum(req) == 0
    assert icmp.echo_request(0x1234, 7, payload, v6=True)[2:4] == b"\0\0"  # the kernel's job
    # An IPv4 packet as a raw socket reads it: 20-byte header, then the ICMP reply.
    body = struct.pack("!BBHHH", 0, 0, 0, 0x1234, 7) + payload
    reply = struct.pack("!BBHHH", 0, 0, icmp.checksum(body), 0x1234, 7) + payload
    ip = bytes([0x45]) + bytes(19)
    assert icmp.parse_echo_reply(ip + reply, v6=False) == (0x1234, 7, payload)
    corrupt = bytearray(ip + reply)
    corrupt[-1] ^= 0xFF
    assert icmp.parse_echo_reply(bytes(corrupt), v6=False) is None
    assert icmp.parse_echo_reply(ip + req, v6=False) is None  # a request, not a reply
    v6 = struct.pack("!BBHHH", icmp.ICMPV6_ECHO_REPLY, 0, 0, 9, 1) + payload
    assert icmp.parse_echo_reply(v6, v6=True) == (9, 1, payload)
    assert icmp.parse_echo_reply(v6[:5], v6=True) is None


# ------------------------------------------------------------ real probes


async def test_ipv4_ipv6_and_link_local_answer(topo):
    with topo.a.entered():
        results = [await icmp.ping("va1", addr, **FAST) for addr in ("10.71.1.2", "fd71:1::2", "fe80::b1")]
    for r in results:
        assert r.error is None, r
        assert (r.sent, r.received, r.loss) == (3, 3, 0.0), r
        assert r.rtt_ms is not None and 0 < r.rtt_ms < 500


async def test_a_silent_target_is_100_percent_loss(topo):
    with topo.a.entered():
        r = await icmp.ping("va1", "10.71.1.99", **FAST)
        link = await icmp.probe_link("va1", ["fe80::99", "10.71.1.99"], **FAST)
    assert (r.sent, r.received, r.loss, r.rtt_ms) == (3, 0, 100.0, None)
    assert (link.target, link.rtt_ms, link.loss, link.error) == (None, None, 100.0, None)
    assert [s.address for s in link.tried] == ["fe80::99", "10.71.1.99"]


async def test_first_answering_address_in_order_wins(topo):
    with topo.a.entered():
        link = await icmp.probe_link("va1", ["fe80::dead", "fd71:1::2", "10.71.1.2"], **FAST)
        lla = await icmp.probe_link("va1", ["fe80::b1", "fd71:1::2", "10.71.1.2"], **FAST)
    assert link.target == "fd71:1::2" and link.loss == 0.0 and link.rtt_ms is not None
    assert [s.address for s in link.tried] == ["fe80::dead", "fd71:1::2"]  # 10.71.1.2 never probed
    assert lla.target == "fe80::b1" and len(lla.tried) == 1


async def test_link_local_scope_is_the_probed_interface(topo):
    with topo.a.entered():
        right = await icmp.probe_link("va2", ["fe80::c1"], **FAST)
        wrong = await icmp.probe_link("va1", ["fe80::c1"], **FAST)
    assert right.target == "fe80::c1" and right.loss == 0.0
    assert wrong.target is None and wrong.loss == 100.0


async def test_binding_to_the_interface_decides_the_path(topo):
    with topo.a.entered():
        # C's address is only reachable through va2: bound to va1 the probe goes out va1 and dies.
        via_right = await icmp.ping("va2", "10.71.2.2", **FAST)
        via_wrong = await icmp.ping("va1", "10.71.2.2", **FAST)
        # 10.71.9.9 is routed to C (which lacks it); bound to va1 the probe reaches B, which has it.
        bound_b = await icmp.ping("va1", "10.71.9.9", **FAST)
        bound_c = await icmp.ping("va2", "10.71.9.9", **FAST)
        # Unbound (the routing table's choice), for contrast: the route leads to C, no answer.
        unbound = _unbound_ping("10.71.9.9")
    assert via_right.received == 3 and via_wrong.received == 0
    assert bound_b.received == 3 and bound_c.received == 0
    assert unbound is False


def _unbound_ping(address: str) -> bool:
    """One echo request without SO_BINDTODEVICE; True when answered within 0.5 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(0.5)
        s.sendto(icmp.echo_request(4321, 1, b"unbound!", v6=False), (address, 0))
        try:
            while True:
                data = s.recv(2048)
                if icmp.parse_echo_reply(data, v6=False) == (4321, 1, b"unbound!"):
                    return True
        except TimeoutError:
            return False


async def test_concurrent_probes_never_mix(topo):
    with topo.a.entered():
        same_a, same_b, silent, other_if = await asyncio.gather(
            icmp.ping("va1", "10.71.1.2", count=5, timeout=0.5, interval=0.02),
            icmp.ping("va1", "10.71.1.2", count=5, timeout=0.5, interval=0.02),
            icmp.ping("va1", "10.71.1.98", count=5, timeout=0.5, interval=0.02),
            icmp.ping("va2", "fe80::c1", count=5, timeout=0.5, interval=0.02),
        )
    # Every socket on va1 saw all ten replies; each counted exactly its own five.
    assert (same_a.received, same_b.received) == (5, 5)
    assert silent.received == 0 and silent.loss == 100.0
    assert other_if.received == 5
    assert not icmp._live_idents  # every identifier was released


async def test_replies_must_match_identifier_sequence_and_token(topo):
    """B's kernel stops answering; a forger in B answers each request with one
    field wrong. Only the faithful echo counts (and proves the forger works)."""
    loop = asyncio.get_running_loop()
    mode = "token"

    def forge(request: bytes) -> bytes | None:
        ihl = (request[0] & 0x0F) * 4
        kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", request, ihl)
        if kind != icmp.ICMP_ECHO_REQUEST:
            return None
        payload = request[ihl + 8 :]
        if mode == "token":
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        elif mode == "ident":
            ident ^= 0x8000
        elif mode == "seq":
            seq += 100
        body = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + payload
        return struct.pack("!BBHHH", 0, 0, icmp.checksum(body), ident, seq) + payload

    def on_request() -> None:
        data, (source, _port) = forger.recvfrom(2048)
        if (reply := forge(data)) is not None:
            forger.sendto(reply, (source, 0))

    topo.b.run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    with topo.b.entered():
        forger = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    forger.setsockopt(socket.SOL_SOCKET, icmp.SO_BINDTODEVICE, b"vb1")
    forger.setblocking(False)
    loop.add_reader(forger.fileno(), on_request)
    got = {}
    try:
        with topo.a.entered():
            for mode in ("token", "ident", "seq", "echo"):  # forge() reads it
                got[mode] = (
                    await icmp.ping("va1", "10.71.1.2", count=2, timeout=0.3, interval=0.02)
                ).received
    finally:
        loop.remove_reader(forger.fileno())
        forger.close()
        topo.b.run("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0")
    assert got == {"token": 0, "ident": 0, "seq": 0, "echo": 2}


async def test_prober_bounds_concurrency_and_keeps_order(topo, monkeypatch):
    running = peak = 0
    real = icmp.probe_link

    async def counting(*args, **kwargs):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            return await real(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(icmp, "probe_link", counting)
    prober = icmp.Prober(count=2, timeout=0.3, interval=0.02, concurrency=2)
    links = [("va1", ["10.71.1.2"]), ("va2", ["10.71.2.2"]), ("va1", ["10.71.1.97"]), ("va2", ["fe80::c1"])]
    with topo.a.entered():
        results = await prober.probe_all(links)
    assert peak == 2
    assert [r.target for r in results] == ["10.71.1.2", "10.71.2.2", None, "fe80::c1"]


async def test_errors_become_strings_never_exceptions(topo, monkeypatch):
    with topo.a.entered():
        missing = await icmp.probe_link("nonexistent0", ["10.71.1.2"], **FAST)
        bad = await icmp.probe_link("va1", ["not-an-ip", "10.71.1.2"], **FAST)
        empty = await icmp.probe_link("va1", [], **FAST)
    assert missing.target is None and missing.loss == 100.0 and "no such interface" in (missing.error or "")
    assert bad.target == "10.71.1.2" and "not an IP address" in (bad.tried[0].error or "")
    assert empty.loss == 100.0 and empty.error == "no address to probe"

    def denied(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(icmp.socket, "socket", denied)
    with topo.a.entered():
        eperm = await icmp.probe_link("va1", ["10.71.1.2"], **FAST)
    assert eperm.target is None and eperm.loss == 100.0
    assert "EPERM" in (eperm.error or "") and "CAP_NET_RAW" in (eperm.error or ""), eperm.error
    assert not icmp._live_idents
