"""The core's rtnetlink client without a kernel: requests byte for byte as
pyroute2 sent them, replies and refusals decoded, requests sequenced on one
socket, and no pyroute2 loaded by the agent on the userspace path.

The expected requests were captured from pyroute2 0.9.7 (``AsyncIPRoute``, the
calls the agent used to make, in a throwaway namespace); the replies are what a
6.x kernel answered to this client there. Each request is encoded with the
sequence number and port id pyroute2 had used, so the bytes compare whole.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from moenet_core import rtnl
from moenet_core.rtnl import (
    NetlinkError,
    Request,
    RtAddress,
    RtAddressDetail,
    RtAddressFlag,
    RtLink,
    Rtnl,
    RtRoute,
    RtScope,
)

PID = 0x7F67  # the port id pyroute2 sent from

# ------------------------------------------------------------------ requests

CAPTURED: list[tuple[str, Request, int, str]] = [
    (
        "link add d0 type bridge",
        rtnl.link_add_request("d0", "bridge"),
        0xFF,
        "3800000010000506ff000000677f0000000000000000000000000000000000000700030064300000"
        "100012000b0001006272696467650000",
    ),
    (
        "link add br0 type dummy",
        rtnl.link_add_request("br0", "dummy"),
        0x100,
        "380000001000050600010000677f0000000000000000000000000000000000000800030062723000"
        "100012000a00010064756d6d79000000",
    ),
    (
        "link add x0 type wireguardx",
        rtnl.link_add_request("x0", "wireguardx"),
        0x116,
        "3c0000001000050616010000677f0000000000000000000000000000000000000700030078300000"
        "140012000f000100776972656775617264780000",
    ),
    (
        "link set alias",
        rtnl.link_set_request(2, alias="moenet-agent"),
        0x102,
        "340000001000050002010000677f000000000000020000000000000000000000110014006d6f656e"
        "65742d6167656e7400000000",
    ),
    (
        "link set addrgenmode none",
        rtnl.link_set_request(2, ipv6_addr_gen_mode=1),
        0x103,
        "300000001000050003010000677f00000000000002000000000000000000000010001a000c000a000500080001000000",
    ),
    (
        "link set up",
        rtnl.link_set_request(2, up=True),
        0x104,
        "200000001000050004010000677f000000000000020000000100000001000000",
    ),
    (
        "link set down",
        rtnl.link_set_request(2, up=False),
        0x105,
        "200000001000050005010000677f000000000000020000000000000001000000",
    ),
    (
        "link set mtu",
        rtnl.link_set_request(2, mtu=1420),
        0x106,
        "280000001000050006010000677f000000000000020000000000000000000000080004008c050000",
    ),
    (
        "link set mtu up",
        rtnl.link_set_request(2, mtu=1400, up=True),
        0x107,
        "280000001000050007010000677f0000000000000200000001000000010000000800040078050000",
    ),
    (
        "link del",
        rtnl.link_del_request(2),
        0x113,
        "200000001100050013010000677f000000000000020000000000000000000000",
    ),
    (
        "addr add v4 local=address",
        rtnl.addr_add_request(2, 32, "172.20.0.1", local="172.20.0.1"),
        0x108,
        "280000001400050608010000677f0000022000000200000008000200ac14000108000100ac140001",
    ),
    (
        "addr add v4 local peer",
        rtnl.addr_add_request(2, 32, "172.20.0.4", local="172.20.0.3"),
        0x109,
        "280000001400050609010000677f0000022000000200000008000200ac14000308000100ac140004",
    ),
    (
        "addr add v6",
        rtnl.addr_add_request(2, 64, "fe80::1"),
        0x10A,
        "2c000000140005060a010000677f00000a4000000200000014000100fe800000000000000000000000000001",
    ),
    (
        "addr add v6 nodad",
        rtnl.addr_add_request(2, 128, "fd00::1", flags=2),
        0x10B,
        "34000000140005060b010000677f00000a8000000200000014000100fd00000000000000000000000000"
        "00010800080002000000",
    ),
    (
        "addr add v4 address only",
        rtnl.addr_add_request(2, 32, "172.22.0.1"),
        0x10C,
        "28000000140005060c010000677f0000022000000200000008000100ac16000108000200ac160001",
    ),
    (
        "addr del v4 local=address",
        rtnl.addr_del_request(2, 32, "172.20.0.1", local="172.20.0.1"),
        0x10E,
        "28000000150005000e010000677f0000022000000200000008000200ac14000108000100ac140001",
    ),
    (
        "addr del v6",
        rtnl.addr_del_request(2, 64, "fe80::1"),
        0x10F,
        "2c000000150005000f010000677f00000a4000000200000014000100fe800000000000000000000000000001",
    ),
    (
        "addr del v4 address only",
        rtnl.addr_del_request(2, 32, "172.22.0.1"),
        0x111,
        "280000001500050011010000677f0000022000000200000008000100ac16000108000200ac160001",
    ),
]


@pytest.mark.parametrize(("what", "request_", "seq", "sent"), CAPTURED, ids=[c[0] for c in CAPTURED])
def test_requests_are_byte_for_byte_what_pyroute2_sent(
    what: str, request_: Request, seq: int, sent: str
) -> None:
    assert request_.encode(seq, PID).hex() == sent


def test_reads_ask_for_no_statistics_and_filter_by_index():
    get = rtnl.link_get_request("wg-a")
    assert (get.type, get.flags) == (rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST)
    assert get.encode(1).hex() == (
        "34000000120001000100000000000000"  # header: 52 bytes, RTM_GETLINK, NLM_F_REQUEST, seq 1
        "00000000000000000000000000000000"  # ifinfomsg: all zero
        "08001d0008000000"  # IFLA_EXT_MASK: RTEXT_FILTER_SKIP_STATS
        "0900030077672d6100000000"  # IFLA_IFNAME "wg-a\0", padded
    )
    assert rtnl.link_dump_request().encode(1)[4:8] == struct.pack("=HH", rtnl.RTM_GETLINK, 0x301)
    assert (
        rtnl.addr_dump_request(7).encode(1).hex() == "18000000160001030100000000000000" + "0000000007000000"
    )


# ------------------------------------------------------------------- replies


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _msg(kind: int, body: bytes, seq: int = 1, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def test_link_message_decoded_to_the_fields_used():
    info = _attr(rtnl.IFLA_LINKINFO, _attr(rtnl.IFLA_INFO_KIND, b"tun\0"))
    body = (
        struct.pack("=BxHiII", 0, 65534, 42, 0x1 | 0x40, 0)
        + _attr(rtnl.IFLA_IFNAME, b"wg-a\0")
        + _attr(99, b"\x01\x02\x03")  # unknown attributes are skipped
        + _attr(rtnl.IFLA_MTU, struct.pack("=I", 1420))
        + info
        + _attr(rtnl.IFLA_IFALIAS, b"moenet-agent:mesh\0")
    )
    msg = _msg(rtnl.RTM_NEWLINK, body)
    link = rtnl.parse_link(msg, 0, len(msg))
    assert link == RtLink(42, "wg-a", "tun", "moenet-agent:mesh", 1420, 0x41) and link.up
    down = _msg(
        rtnl.RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 3, 0x1000, 0) + _attr(rtnl.IFLA_IFNAME, b"x\0")
    )
    assert rtnl.parse_link(down, 0, len(down)) == RtLink(3, "x", None, None, 0, 0x1000)
    assert not rtnl.parse_link(down, 0, len(down)).up
    # Another link of the same kind and marker shares those texts (one copy a node).
    other = _msg(rtnl.RTM_NEWLINK, body.replace(b"wg-a\0", b"wg-b\0"))
    again = rtnl.parse_link(other, 0, len(other))
    assert again.name == "wg-b" and again.kind is link.kind and again.alias is link.alias


def test_address_messages_with_and_without_a_peer():
    local = socket.inet_pton(socket.AF_INET, "172.20.0.1")
    peer = socket.inet_pton(socket.AF_INET, "172.21.0.1")
    body = (
        struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 7)
        + _attr(rtnl.IFA_ADDRESS, peer)
        + _attr(rtnl.IFA_LOCAL, local)
    )
    msg = _msg(rtnl.RTM_NEWADDR, body)
    assert rtnl.parse_address(msg, 0, len(msg)) == (7, 32, "172.20.0.1", "172.21.0.1")

    ll = socket.inet_pton(socket.AF_INET6, "fe80::1")
    body6 = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 7) + _attr(rtnl.IFA_ADDRESS, ll)
    msg6 = _msg(rtnl.RTM_NEWADDR, body6)
    assert rtnl.parse_address(msg6, 0, len(msg6)) == (7, 64, "fe80::1", None)


# What the kernel answered in a namespace: the dump of a link's addresses after
# ``addr add 172.20.0.3 peer 172.20.0.4/32`` and ``addr add fd00::1/128 nodad``.
KERNEL_ADDRESSES = [
    "4c000000140022000600000085500000022080000200000008000100ac14000408000200ac140003"
    "0700030064300000080008008000000014000600ffffffffffffffffc36a1400c36a1400",
    "480000001400220006000000855000000a8082000200000014000100fd0000000000000000000000"
    "0000000114000600ffffffffffffffffc36a1400c36a14000800080082000000",
]
# ... and to a second ``link add d0 type bridge`` (sequence number 7).
KERNEL_EEXIST = (
    "4c0000000200000007000000399e81d0efffffff38000000100005060700000000000000000000000000"
    "000000000000000000000700030064300000100012000b0001006272696467650000"
)


def test_kernel_address_replies_decode():
    got = [rtnl.parse_address(m, 0, len(m)) for m in map(bytes.fromhex, KERNEL_ADDRESSES)]
    assert got == [RtAddress(2, 32, "172.20.0.3", "172.20.0.4"), RtAddress(2, 128, "fd00::1", None)]


def test_an_address_of_another_family_is_skipped():
    body = struct.pack("=BBBBI", socket.AF_PACKET, 0, 0, 0, 7) + _attr(rtnl.IFA_ADDRESS, b"\1" * 6)
    msg = _msg(rtnl.RTM_NEWADDR, body)
    assert rtnl.parse_address(msg, 0, len(msg)) is None


def test_the_error_carries_errno_and_pyroute2s_text():
    exc = NetlinkError(errno.EEXIST)
    assert (exc.code, exc.errno, str(exc)) == (17, 17, "(17, 'File exists')")
    assert not isinstance(exc, OSError)  # as pyroute2's: never classified as a transient OSError


# ------------------------------------------------- one socket, a fake kernel


@pytest.fixture
def wired() -> Iterator[tuple[Rtnl, socket.socket]]:
    """An :class:`Rtnl` whose socket is wired to a fake kernel (the other end
    of a datagram socket pair, which the test drives)."""
    rt = Rtnl()
    rt.sock.close()
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    kernel.setblocking(False)
    rt.sock = ours
    try:
        yield rt, kernel
    finally:
        rt.close()
        kernel.close()


async def _received(kernel: socket.socket) -> tuple[int, int, int]:
    """The next request the fake kernel gets: ``(type, flags, seq)``."""
    data = await asyncio.get_running_loop().sock_recv(kernel, 65536)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert length == len(data)
    return kind, flags, seq


def _error(seq: int, code: int) -> bytes:
    return _msg(rtnl.NLMSG_ERROR, struct.pack("=i", -code) + b"\0" * 16, seq=seq)


async def test_a_refusal_raises_the_kernels_errno(wired):
    rt, kernel = wired
    task = asyncio.create_task(rt.link_add("d0", "bridge"))
    _kind, _flags, seq = await _received(kernel)
    kernel.send(bytes.fromhex(KERNEL_EEXIST)[:8] + struct.pack("=I", seq) + bytes.fromhex(KERNEL_EEXIST)[12:])
    with pytest.raises(NetlinkError) as info:
        await task
    assert info.value.code == errno.EEXIST and str(info.value) == "(17, 'File exists')"


async def test_enobufs_is_an_oserror_as_in_pyroute2(wired):
    rt, kernel = wired
    task = asyncio.create_task(rt.link_del(5))
    *_, seq = await _received(kernel)
    kernel.send(_error(seq, errno.ENOBUFS))
    with pytest.raises(OSError) as info:
        await task
    assert info.value.errno == errno.ENOBUFS and not isinstance(info.value, NetlinkError)


async def test_get_link_answers_none_for_enodev(wired):
    rt, kernel = wired
    task = asyncio.create_task(rt.get_link("nope"))
    kind, flags, seq = await _received(kernel)
    assert (kind, flags) == (rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST)
    kernel.send(_error(seq, errno.ENODEV))
    assert await task is None


async def test_a_dump_spans_datagrams_until_done(wired):
    rt, kernel = wired
    task = asyncio.create_task(rt.addresses())
    *_, seq = await _received(kernel)
    first, second = (bytearray(bytes.fromhex(m)) for m in KERNEL_ADDRESSES)
    for m in (first, second):
        struct.pack_into("=I", m, 8, seq)
    kernel.send(bytes(first) + bytes(second))  # two messages in one datagram
    other = _msg(rtnl.RTM_NEWADDR, struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 9), seq=seq)
    kernel.send(other)  # no address attribute: skipped
    kernel.send(_msg(rtnl.NLMSG_DONE, struct.pack("=i", 0), seq=seq))
    assert await task == [RtAddress(2, 32, "172.20.0.3", "172.20.0.4"), RtAddress(2, 128, "fd00::1", None)]


async def test_concurrent_requests_on_one_socket_take_turns(wired):
    """Two writes on one socket: the second is sent only once the first is
    answered, and each gets its own sequence number and outcome."""
    rt, kernel = wired
    first = asyncio.create_task(rt.link_set(3, up=True))
    second = asyncio.create_task(rt.link_del(3))
    kind1, _, seq1 = await _received(kernel)
    assert kind1 == rtnl.RTM_NEWLINK
    with pytest.raises(BlockingIOError):
        kernel.recv(65536)  # the second waits for the first's answer
    kernel.send(_error(seq1, 0))
    await first
    kind2, _, seq2 = await _received(kernel)
    assert kind2 == rtnl.RTM_DELLINK and seq2 != seq1
    kernel.send(_error(seq2, errno.EPERM))
    with pytest.raises(NetlinkError) as info:
        await second
    assert info.value.code == errno.EPERM


async def test_a_late_answer_to_a_cancelled_request_is_skipped(wired):
    rt, kernel = wired
    abandoned = asyncio.create_task(rt.link_add("d0", "bridge"))
    *_, old = await _received(kernel)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    kernel.send(_error(old, errno.EEXIST))  # the answer arrives after all
    task = asyncio.create_task(rt.link_set(3, mtu=1420))
    *_, seq = await _received(kernel)
    assert seq != old
    kernel.send(_error(seq, 0))
    assert await task is None  # acked: the stale refusal was not taken for its answer


# ------------------------------------------- address flags, scopes, routes


def test_the_route_lookup_is_what_the_heartbeat_sent():
    """``ip route get``: the bytes the heartbeat's own netlink code sent (sequence 2)."""
    assert rtnl.route_get_request("1.1.1.1").encode(2).hex() == (
        "240000001a00010002000000000000000220000000000000000000000800010001010101"
    )
    assert rtnl.route_get_request("2606:4700:4700::1111").encode(2).hex() == (
        "300000001a00010002000000000000000a80000000000000000000001400010026064700470000000000000000001111"
    )


# What a 6.18 kernel answered to an address dump in a namespace (veth ``wan``,
# index 3, up with its peer; ``nc0``, index 5, up with its peer down): host and
# link scope, ``81.0.0.3/24 preferred_lft 0`` (deprecated, and secondary: the
# same bit as temporary), ``2a00:2::1/64 nodad preferred_lft 0``, ``2a00:2::2/64
# nodad``, ``2a00:3::1/64`` without carrier (tentative), ``2a00:4::1/64`` also on
# the peer (dadfailed), ``2a00:5::1/64 nodad noprefixroute mngtmpaddr`` (flags
# beyond the header's 8 bits).
KERNEL_ADDRESS_DETAILS = [
    (
        "4c0000001400020001000000fb180000020880fe01000000080001007f000001080002007f000001"
        "070003006c6f0000080008008000000014000600ffffffffffffffffac971e00ac971e00",
        RtAddressDetail(1, 8, "127.0.0.1", None, 0x80, RtScope.HOST),
    ),
    (
        "4c0000001400020001000000fb180000022080fd0300000008000100c000020108000200c0000201"
        "0800030077616e00080008008000000014000600ffffffffffffffffaf971e00af971e00",
        RtAddressDetail(3, 32, "192.0.2.1", None, 0x80, RtScope.LINK),
    ),
    (
        "4c0000001400020001000000fb1800000218800003000000080001005100000208000200510000020800"
        "030077616e00080008008000000014000600ffffffffffffffffae971e00ae971e00",
        RtAddressDetail(3, 24, "81.0.0.2", None, 0x80, RtScope.UNIVERSE),
    ),
    (
        "4c0000001400020001000000fb1800000218a10003000000080001005100000308000200510000030800"
        "030077616e0008000800a100000014000600ffffffffffffffffaf971e00af971e00",
        RtAddressDetail(3, 24, "81.0.0.3", None, 0xA1, RtScope.UNIVERSE),
    ),
    (
        "480000001400020001000000fb1800000a40a20003000000140001002a00000200000000000000000000"
        "00011400060000000000ffffffffaf971e00af971e0008000800a2000000",
        RtAddressDetail(3, 64, "2a00:2::1", None, 0xA2, RtScope.UNIVERSE),
    ),
    (
        "480000001400020001000000fb1800000a40820003000000140001002a00000200000000000000000000"
        "000214000600ffffffffffffffffaf971e00af971e000800080082000000",
        RtAddressDetail(3, 64, "2a00:2::2", None, 0x82, RtScope.UNIVERSE),
    ),
    (
        "480000001400020001000000fb1800000a40c00005000000140001002a00000300000000000000000000"
        "000114000600ffffffffffffffffb0971e00b0971e0008000800c0000000",
        RtAddressDetail(5, 64, "2a00:3::1", None, 0xC0, RtScope.UNIVERSE),
    ),
    (
        "48000000140002000a000000e16f00000a40c80003000000140001002a00000400000000000000000000"
        "000114000600ffffffffffffffff2cb71e002cb71e0008000800c8000000",
        RtAddressDetail(3, 64, "2a00:4::1", None, 0xC8, RtScope.UNIVERSE),
    ),
    (
        "48000000140002000a000000e16f00000a40820003000000140001002a00000500000000000000000000"
        "000114000600ffffffffffffffff2cb71e002cb71e000800080082030000",
        RtAddressDetail(3, 64, "2a00:5::1", None, 0x382, RtScope.UNIVERSE),
    ),
]


def test_kernel_address_details_carry_flags_and_scope():
    got = [
        rtnl.parse_address_detail(m, 0, len(m)) for m in (bytes.fromhex(h) for h, _ in KERNEL_ADDRESS_DETAILS)
    ]
    assert got == [want for _, want in KERNEL_ADDRESS_DETAILS]
    flags = {d.local: RtAddressFlag(d.flags) for d in got if d is not None}
    F = RtAddressFlag
    assert flags["81.0.0.3"] == F.PERMANENT | F.DEPRECATED | F.TEMPORARY  # IPv4: "secondary"
    assert flags["2a00:2::1"] == F.PERMANENT | F.DEPRECATED | F.NODAD
    assert flags["2a00:3::1"] == F.PERMANENT | F.TENTATIVE
    assert flags["2a00:4::1"] == F.PERMANENT | F.TENTATIVE | F.DADFAILED
    # 0x382: the header's byte says 0x82, the 32-bit IFA_FLAGS attribute the rest.
    assert flags["2a00:5::1"] == F.PERMANENT | F.NODAD | F.NOPREFIXROUTE | F.MANAGETEMPADDR
    # The plain reading of the same messages is unchanged: no flags, no scope.
    first = bytes.fromhex(KERNEL_ADDRESS_DETAILS[3][0])
    assert rtnl.parse_address(first, 0, len(first)) == RtAddress(3, 24, "81.0.0.3", None)


def test_without_the_flags_attribute_the_headers_byte_counts():
    """Kernels before 3.14 send no IFA_FLAGS: the 8 bits in the header are all there is."""
    packed = socket.inet_pton(socket.AF_INET6, "2a00:2::9")
    body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0x20, 0, 4) + _attr(rtnl.IFA_ADDRESS, packed)
    msg = _msg(rtnl.RTM_NEWADDR, body)
    assert rtnl.parse_address_detail(msg, 0, len(msg)) == RtAddressDetail(4, 64, "2a00:2::9", None, 0x20, 0)


def test_malformed_address_messages_give_none():
    short = _msg(rtnl.RTM_NEWADDR, struct.pack("=BBBB", socket.AF_INET, 32, 0, 0))  # no ifaddrmsg
    assert rtnl.parse_address_detail(short, 0, len(short)) is None
    body = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 4) + _attr(rtnl.IFA_LOCAL, b"\1" * 16)
    wrong = _msg(rtnl.RTM_NEWADDR, body)  # an IPv6-sized address in an IPv4 message
    assert rtnl.parse_address_detail(wrong, 0, len(wrong)) is None
    assert rtnl.parse_address(wrong, 0, len(wrong)) is None


# ... and to route lookups there: the default route ``via 81.0.0.1 dev wan``,
# ``-6 default via 2a00:2::ff dev wan`` and ``198.18.0.0/15 via inet6 fe80::1 dev wan``.
KERNEL_ROUTES = [
    (
        "700000001800000002000000fb18000002200000fe0000010002000008000f00fe00000008000100010101"
        "01080004000300000008000700510000020800050051000001080019000000000024000c000200000000"
        "000000000000000000000000000000000000000000000000000000",
        RtRoute(3, "81.0.0.2", "81.0.0.1", 1),
    ),
    (
        "b00000001800000003000000fb1800000a808000fe0300010000000008000f00fe000000140001002606"
        "47004700000000000000000011111400020000000000000000000000000000000000140007002a000002"
        "0000000000000000000000020800060000040000140005002a0000020000000000000000000000ff0800"
        "04000300000024000c00020000000000000000000000000000000000000000000000000000000000000005"
        "00140000000000",
        RtRoute(3, "2a00:2::2", "2a00:2::ff", 1),
    ),
    (
        "800000001800000004000000fb18000002200000fe0000010002000008000f00fe00000008000100c612"
        "000108000400030000000800070051000002160012000a00fe8000000000000000000000000000010000"
        "080019000000000024000c000200000000000000000000000000000000000000000000000000000000000000",
        RtRoute(3, "81.0.0.2", "fe80::1", 1),  # RTA_VIA: an IPv6 gateway for an IPv4 route
    ),
]


def test_kernel_route_replies_decode():
    got = [rtnl.parse_route(m, 0, len(m)) for m in (bytes.fromhex(h) for h, _ in KERNEL_ROUTES)]
    assert got == [want for _, want in KERNEL_ROUTES]
    bare = _msg(rtnl.RTM_NEWROUTE, struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 0, 0, 1, 0))
    assert rtnl.parse_route(bare, 0, len(bare)) == RtRoute(0, None, None, 1)  # names nothing


def _reseq(hexmsg: str, seq: int) -> bytes:
    msg = bytearray(bytes.fromhex(hexmsg))
    struct.pack_into("=I", msg, 8, seq)
    return bytes(msg)


async def test_address_details_filter_by_scope_and_index(wired, monkeypatch):
    """Other scopes are skipped before decoding; without strict checking the
    kernel sends every link's addresses and the index filter applies here."""
    rt, kernel = wired
    decoded: list[str] = []
    parse = rtnl.parse_address_detail

    def counting(buf, off, end):
        detail = parse(buf, off, end)
        decoded.append(detail.local if detail else "?")
        return detail

    monkeypatch.setattr(rtnl, "parse_address_detail", counting)

    async def dump(**kw: int) -> list[RtAddressDetail]:
        task = asyncio.create_task(rt.address_details(**kw))
        kind, flags, seq = await _received(kernel)
        assert (kind, flags) == (rtnl.RTM_GETADDR, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP)
        kernel.send(b"".join(_reseq(h, seq) for h, _ in KERNEL_ADDRESS_DETAILS))
        kernel.send(_msg(rtnl.NLMSG_DONE, struct.pack("=i", 0), seq=seq))
        return await task

    everything = [want for _, want in KERNEL_ADDRESS_DETAILS]
    assert await dump() == everything
    decoded.clear()
    universe = await dump(scope=RtScope.UNIVERSE)
    assert universe == [d for d in everything if d.scope == 0] and len(universe) == 7
    assert decoded == [d.local for d in universe]  # host and link scope never decoded
    assert await dump(index=5) == [everything[6]]
    assert await dump(index=3, scope=RtScope.LINK) == [everything[1]]


async def test_route_get_answers_the_route_or_none(wired):
    rt, kernel = wired
    task = asyncio.create_task(rt.route_get("1.1.1.1"))
    kind, flags, seq = await _received(kernel)
    assert (kind, flags) == (rtnl.RTM_GETROUTE, rtnl.NLM_F_REQUEST)
    kernel.send(_reseq(KERNEL_ROUTES[0][0], seq))
    assert await task == RtRoute(3, "81.0.0.2", "81.0.0.1", 1)

    for code in (errno.ENETUNREACH, errno.EHOSTUNREACH):  # no route, an unreachable route
        task = asyncio.create_task(rt.route_get("2606:4700:4700::1111"))
        *_, seq = await _received(kernel)
        kernel.send(_error(seq, code))
        assert await task is None
    task = asyncio.create_task(rt.route_get("203.0.113.1"))
    *_, seq = await _received(kernel)
    kernel.send(_error(seq, errno.EINVAL))  # a blackhole route
    with pytest.raises(NetlinkError) as info:
        await task
    assert info.value.code == errno.EINVAL


# ------------------------------------------------------------- no pyroute2


def test_the_agent_with_every_builtin_plugin_does_not_load_pyroute2():
    """The CLI, every built-in plugin's entry point and the userspace tunnel and
    loopback backends import and construct without pyroute2 (about 7 MB)."""
    code = """
import sys
from importlib.metadata import entry_points
import moenet_core.cli
names = []
for ep in entry_points(group="moenet"):
    ep.load()
    names.append(ep.name)
assert {"wireguard", "loopback", "sessions", "mesh"} <= set(names), names
from moenet_core.state import StateStore
from moenet_loopback import LinkLoopback, LoopbackConfig
from moenet_wireguard import UserspaceTunnelBackend
from moenet_wireguard.config import Settings
from moenet_wireguard.links import Netlink
UserspaceTunnelBackend(Settings())
LinkLoopback(StateStore(sys.argv[1]), LoopbackConfig())
Netlink()
print(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2"))
"""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-c", code, tmp], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
