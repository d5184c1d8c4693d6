"""WireGuard plugin logic without a kernel: validation, the diff, both wire encodings."""

from __future__ import annotations

import asyncio
import socket

import pytest
from moenet_wireguard import genl, keys, uapi
from moenet_wireguard.device import ZERO_KEY, DesiredDevice, Device, DeviceUpdate, Peer, PeerUpdate, plan
from moenet_wireguard.endpoints import EndpointBook, canonical, parse_endpoint
from moenet_wireguard.errors import EndpointError, TunnelSpecError, UapiError
from moenet_wireguard.links import MARKER, Link, marker, owner_of
from moenet_wireguard.spec import normalise, validate_ifname, validate_owner
from pyroute2.netlink.generic.wireguard import (
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    wgmsg,
)

from moenet_core import TunnelAddress, TunnelSpec

K1, K2, K3, PRIV, PSK = (bytes([i]) * 32 for i in (1, 2, 3, 4, 5))
DN42 = frozenset({"0.0.0.0/0", "fd00::/8", "fe80::/64"})


def b64(raw: bytes) -> str:
    return keys.bytes_to_b64(raw)


# ----------------------------------------------------------------- spec


@pytest.mark.parametrize("name", ["wg0", "dn42_4242420001", "a", "wg-peer.1", "_x", "abcdefghijklmno"])
def test_valid_interface_names(name):
    assert validate_ifname(name) == name


@pytest.mark.parametrize(
    "name", ["", "-wg0", "abcdefghijklmnop", "wg 0", "wg/0", "wg:0", ".", "..", "wg0\n", "wgé", None, 7]
)
def test_invalid_interface_names(name):
    with pytest.raises(TunnelSpecError, match="interface name"):
        validate_ifname(name)


def spec(**kw) -> TunnelSpec:
    base = {"name": "wg0", "private_key_file": "/k", "listen_port": 51820, "peer_public_key": b64(K2)}
    return TunnelSpec(**(base | kw))


def test_normalise_canonical_forms():
    d = normalise(
        spec(
            endpoint="[2001:db8::1]:51820",
            allowed_ips=("fd00::/8", "0.0.0.0/0", "fe80::1/64", "0.0.0.0/0"),
            addresses=(
                TunnelAddress(local="172.20.0.1", peer="172.20.0.2"),
                TunnelAddress(local="fe80::1"),
                TunnelAddress(local="fd42::1", peer="fd42::2"),
            ),
        ),
        default_keepalive=25,
    )
    assert d.allowed_ips == DN42
    assert {a.to_tunnel_address() for a in d.addresses} == {
        TunnelAddress(local="172.20.0.1/32", peer="172.20.0.2"),
        TunnelAddress(local="fe80::1/64"),
        TunnelAddress(local="fd42::1/128", peer="fd42::2"),
    }
    assert d.keepalive == 25 and d.endpoint is not None and d.endpoint.literal == "[2001:db8::1]:51820"
    assert normalise(spec(keepalive=0), 25).keepalive == 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"listen_port": 0}, "listen_port"),
        ({"listen_port": 70000}, "listen_port"),
        ({"peer_public_key": "short"}, "peer public key"),
        ({"endpoint": "2001:db8::1:51820"}, r"\[address\]:port"),
        ({"endpoint": "host:port"}, "port must be"),
        ({"endpoint": "bad host!:1"}, "not a valid host name"),
        ({"endpoint": "hé.test:1"}, "not a valid host name"),
        ({"endpoint": "peer.test:\u0665\u0661"}, "port must be"),
        ({"mtu": 1000}, "mtu"),
        ({"keepalive": -1}, "keepalive"),
        ({"allowed_ips": ("10.0.0.0/33",)}, "allowed_ips"),
        ({"addresses": (TunnelAddress(local="nope"),)}, "not an IP address"),
        ({"addresses": (TunnelAddress(local="10.0.0.1", peer="fd00::1"),)}, "different families"),
        ({"owner": "Mesh"}, "tunnel owner 'Mesh' is invalid"),
        ({"owner": ""}, "tunnel owner '' is invalid"),
        ({"owner": "mesh:x"}, "tunnel owner 'mesh:x' is invalid"),
        ({"owner": "a" * 33}, "tunnel owner"),
    ],
)
def test_invalid_specs_name_the_field(kw, match):
    with pytest.raises(TunnelSpecError, match=match):
        normalise(spec(**kw), 25)


# ---------------------------------------------------------------- owners


def test_owner_is_validated_and_kept():
    assert normalise(spec(), 25).owner == "sessions"  # TunnelSpec's default
    assert normalise(spec(owner="mesh"), 25).owner == "mesh"
    for good in ("a", "mesh", "ibgp-2", "x_y", "a" * 32):
        assert validate_owner(good) == good
    for bad in ("", "1mesh", "-a", "Mesh", "me sh", "mesh\n", "a" * 33, None, 3):
        with pytest.raises(TunnelSpecError, match="tunnel owner"):
            validate_owner(bad)


def test_owner_alias_round_trip():
    # The default owner keeps the alias every tunnel had before owners existed.
    assert MARKER == "moenet-agent"
    assert marker("sessions") == "moenet-agent" and owner_of("moenet-agent") == "sessions"
    assert marker("mesh") == "moenet-agent:mesh" and owner_of("moenet-agent:mesh") == "mesh"
    assert marker("ibgp_2-x") == "moenet-agent:ibgp_2-x" and owner_of("moenet-agent:ibgp_2-x") == "ibgp_2-x"
    with pytest.raises(TunnelSpecError):
        marker("Mesh")


@pytest.mark.parametrize(
    "alias",
    [
        None,
        "",
        "moenet",
        "moenet-agent:",
        "moenet-agent:sessions",  # not canonical: sessions is plain "moenet-agent"
        "moenet-agent:Mesh",
        "moenet-agent:mesh:x",
        "moenet-agent:" + "a" * 33,
        "moenet-agentx",
        "xmoenet-agent:mesh",
        "moenet-agent:mesh ",
    ],
)
def test_foreign_aliases_are_nobodys(alias):
    assert owner_of(alias) is None
    assert Link(index=1, name="x", kind="tun", alias=alias, mtu=1420, up=True).owned is False


def test_only_wireguard_kinds_are_owned():
    for kind, owner in (("tun", "mesh"), ("wireguard", "mesh"), ("veth", None), (None, None)):
        link = Link(index=1, name="x", kind=kind, alias="moenet-agent:mesh", mtu=1420, up=True)
        assert link.owner == owner and link.owned is (owner is not None)


def test_endpoint_parsing_and_canonical_form():
    assert parse_endpoint("192.0.2.1:51820").literal == "192.0.2.1:51820"
    assert parse_endpoint("[2001:DB8:0::1]:1").literal == "[2001:db8::1]:1"
    host = parse_endpoint("peer.example.net:4242")
    assert host.address is None and (host.host, host.port) == ("peer.example.net", 4242)
    assert canonical("[2001:db8:0:0::1]:5") == "[2001:db8::1]:5"
    assert canonical("(none)") is None and canonical("") is None
    with pytest.raises(EndpointError):
        parse_endpoint("[2001:db8::1]")


async def test_endpoint_book_caches_until_the_spec_changes():
    calls = []

    async def resolver(host, port):
        calls.append(host)
        return [f"192.0.2.{len(calls)}:{port}"]

    book = EndpointBook(resolver)
    rec, changed = await book.lookup("wg0", parse_endpoint("peer.test:1"))
    assert rec.candidates == ("192.0.2.1:1",) and not changed  # first sighting is not a change
    rec, changed = await book.lookup("wg0", parse_endpoint("peer.test:1"))
    assert rec.candidates == ("192.0.2.1:1",) and not changed and calls == ["peer.test"]
    rec, changed = await book.lookup("wg0", parse_endpoint("other.test:1"))
    assert changed and rec.candidates == ("192.0.2.2:1",)
    rec = await book.refresh("wg0")
    assert rec is not None and rec.candidates == ("192.0.2.3:1",)


# ----------------------------------------------------------------- plan


def desired(**kw) -> DesiredDevice:
    base = {
        "private_key": PRIV,
        "listen_port": 51820,
        "peer_public_key": K2,
        "preshared_key": None,
        "endpoints": ("192.0.2.2:51820",),
        "keep_roamed_endpoint": False,
        "keepalive": 25,
        "allowed_ips": DN42,
    }
    return DesiredDevice(**(base | kw))


def device(**peer_kw) -> Device:
    peer = {"public_key": K2, "endpoint": "192.0.2.2:51820", "keepalive": 25, "allowed_ips": DN42} | peer_kw
    return Device(private_key=PRIV, listen_port=51820, peers=(Peer(**peer),))


def test_plan_matching_device_is_nothing():
    assert plan(device(), desired()) is None


def test_plan_new_device_writes_everything_without_replace_peers():
    up = plan(Device(listen_port=40000), desired(preshared_key=PSK))
    assert up == DeviceUpdate(
        private_key=PRIV,
        listen_port=51820,
        replace_peers=False,
        peers=(
            PeerUpdate(
                public_key=K2,
                preshared_key=PSK,
                endpoint="192.0.2.2:51820",
                keepalive=25,
                allowed_ips=tuple(sorted(DN42)),
            ),
        ),
    )


def test_plan_changed_peer_key_replaces_peers():
    up = plan(device(public_key=K3), desired())
    assert up is not None and up.replace_peers and up.private_key is None and up.listen_port is None
    assert [p.public_key for p in up.peers] == [K2] and not up.peers[0].update_only


def test_plan_in_place_updates_only_what_differs():
    up = plan(device(endpoint="192.0.2.9:51820", keepalive=0), desired())
    assert up == DeviceUpdate(
        peers=(PeerUpdate(public_key=K2, update_only=True, endpoint="192.0.2.2:51820", keepalive=25),)
    )
    up = plan(device(allowed_ips=frozenset({"0.0.0.0/0"})), desired())
    assert up is not None and up.peers[0].allowed_ips == tuple(sorted(DN42)) and up.peers[0].endpoint is None
    up = plan(device(preshared_key=PSK), desired())
    assert up is not None and up.peers[0].preshared_key == ZERO_KEY  # clearing a PSK


def test_plan_stale_extra_peers_are_removed_not_replaced():
    dev = Device(private_key=PRIV, listen_port=51820, peers=(*device().peers, Peer(public_key=K3)))
    up = plan(dev, desired())
    assert up == DeviceUpdate(peers=(PeerUpdate(public_key=K3, remove=True),))


def test_plan_leaves_a_roamed_endpoint_alone_only_when_told():
    roamed = device(endpoint="198.51.100.7:40000")
    assert plan(roamed, desired(keep_roamed_endpoint=True)) is None
    assert plan(roamed, desired()) is not None
    # any resolved address of the name counts as matching
    assert (
        plan(device(endpoint="192.0.2.3:51820"), desired(endpoints=("192.0.2.2:51820", "192.0.2.3:51820")))
        is None
    )
    assert plan(device(), desired(endpoints=())) is None  # no endpoint configured: never touched


def test_update_descriptions_never_contain_keys():
    up = plan(Device(), desired(preshared_key=PSK))
    text = up.describe() + repr(up)
    for k in (PRIV, K2, PSK):
        assert k.hex() not in text and b64(k) not in text


# ----------------------------------------------------------------- UAPI


def test_uapi_set_rendering():
    up = DeviceUpdate(
        private_key=PRIV,
        listen_port=51820,
        replace_peers=True,
        peers=(
            PeerUpdate(public_key=K3, remove=True),
            PeerUpdate(
                public_key=K2,
                update_only=True,
                endpoint="[fd00::2]:51820",
                keepalive=0,
                allowed_ips=("fd00::/8",),
            ),
        ),
    )
    assert uapi.render_set(up) == (
        f"set=1\nprivate_key={PRIV.hex()}\nlisten_port=51820\nreplace_peers=true\n"
        f"public_key={K3.hex()}\nremove=true\n"
        f"public_key={K2.hex()}\nupdate_only=true\nendpoint=[fd00::2]:51820\n"
        "persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=fd00::/8\n\n"
    )


GET_REPLY = [
    f"private_key={PRIV.hex()}",
    "listen_port=51820",
    f"public_key={K2.hex()}",
    f"preshared_key={'00' * 32}",
    "protocol_version=1",
    "endpoint=[fd00:0::2]:51820",
    "last_handshake_time_sec=1700000000",
    "last_handshake_time_nsec=500000000",
    "tx_bytes=10",
    "rx_bytes=20",
    "persistent_keepalive_interval=25",
    "allowed_ip=0.0.0.0/0",
    "allowed_ip=fd00::/8",
]


def test_uapi_get_parsing():
    dev = uapi.parse_get(GET_REPLY)
    assert dev.private_key == PRIV and dev.listen_port == 51820
    [p] = dev.peers
    assert p.public_key == K2 and p.preshared_key is None and p.endpoint == "[fd00::2]:51820"
    assert p.last_handshake == 1700000000.5 and (p.rx_bytes, p.tx_bytes) == (20, 10)
    assert p.keepalive == 25 and p.allowed_ips == {"0.0.0.0/0", "fd00::/8"}
    fresh = uapi.parse_get(["listen_port=40000"])
    assert fresh == Device(listen_port=40000)


@pytest.fixture
async def fake_wireguard_go(tmp_path):
    """A UAPI server on a socket in tmp_path: records requests, answers canned replies."""
    requests: list[str] = []
    replies: list[str] = []

    async def handle(reader, writer):
        while True:
            lines = []
            while (line := (await reader.readline()).decode()) not in ("\n", ""):
                lines.append(line)
            if not lines:
                break
            requests.append("".join(lines))
            writer.write(replies.pop(0).encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(tmp_path / "wgx.sock"))
    yield uapi.UapiClient(str(tmp_path), timeout=2), requests, replies
    server.close()
    await server.wait_closed()


async def test_uapi_client_get_and_set(fake_wireguard_go):
    client, requests, replies = fake_wireguard_go
    replies.append("\n".join([*GET_REPLY, "errno=0"]) + "\n\n")
    dev = await client.get("wgx")
    assert requests == ["get=1\n"] and dev.peers[0].endpoint == "[fd00::2]:51820"
    replies.append("errno=0\n\n")
    await client.set("wgx", DeviceUpdate(listen_port=1))
    assert requests[-1] == "set=1\nlisten_port=1\n"


async def test_uapi_negative_errno_is_a_failure_without_key_material(fake_wireguard_go):
    client, requests, replies = fake_wireguard_go
    replies.append("errno=-22\n\n")
    with pytest.raises(UapiError) as info:
        await client.set("wgx", DeviceUpdate(private_key=PRIV))
    assert info.value.errno == 22 and "errno 22" in str(info.value)
    assert PRIV.hex() not in str(info.value) and requests[-1].startswith("set=1\nprivate_key=")


async def test_uapi_missing_socket(tmp_path):
    with pytest.raises(UapiError, match="no wireguard-go is serving nope"):
        await uapi.UapiClient(str(tmp_path)).get("nope")


# -------------------------------------------------------- kernel genl


def roundtrip(msg) -> wgmsg:
    """Encode as it would be sent, then decode what the kernel would receive."""
    msg["header"]["type"] = 0x1234
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def test_genl_set_message_for_a_new_tunnel():
    up = plan(Device(), desired(preshared_key=PSK, endpoints=("[fd00::2]:51820",)))
    msg = roundtrip(genl.build_set_message("wg0", up))
    assert msg["cmd"] == WG_CMD_SET_DEVICE and msg["version"] == 1
    assert msg.get_attr("WGDEVICE_A_IFNAME") == "wg0"
    assert genl._key(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) == PRIV
    assert msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    assert msg.get_attr("WGDEVICE_A_FLAGS") is None  # no peers to replace
    [peer] = msg.get_attr("WGDEVICE_A_PEERS")
    assert genl._key(peer.get_attr("WGPEER_A_PUBLIC_KEY")) == K2
    assert genl._key(peer.get_attr("WGPEER_A_PRESHARED_KEY")) == PSK
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    ep = peer.get_attr("WGPEER_A_ENDPOINT")
    assert (ep["family"], ep["addr"], ep["port"]) == (socket.AF_INET6, "fd00::2", 51820)
    assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert {a["addr"] for a in peer.get_attr("WGPEER_A_ALLOWEDIPS")} == DN42


def test_genl_set_message_in_place_and_replace():
    up = plan(device(endpoint="192.0.2.9:51820"), desired())
    msg = roundtrip(genl.build_set_message("wg0", up))
    assert [name for name, _ in msg["attrs"]] == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_PEERS"]
    [peer] = msg.get_attr("WGDEVICE_A_PEERS")
    assert [name for name, _ in peer["attrs"]] == [
        "WGPEER_A_PUBLIC_KEY",
        "WGPEER_A_FLAGS",
        "WGPEER_A_ENDPOINT",
    ]
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
    assert peer.get_attr("WGPEER_A_ENDPOINT")["addr"] == "192.0.2.2"

    msg = roundtrip(genl.build_set_message("wg0", plan(device(public_key=K3), desired())))
    assert msg.get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS

    dev = Device(private_key=PRIV, listen_port=51820, peers=(*device().peers, Peer(public_key=K3)))
    msg = roundtrip(genl.build_set_message("wg0", plan(dev, desired())))
    [peer] = msg.get_attr("WGDEVICE_A_PEERS")
    assert genl._key(peer.get_attr("WGPEER_A_PUBLIC_KEY")) == K3
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME


def kernel_reply(**peer_attrs) -> wgmsg:
    """A WG_CMD_GET_DEVICE answer as the kernel would send it."""
    msg = wgmsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = 1
    msg["attrs"] = [
        ["WGDEVICE_A_IFINDEX", 7],
        ["WGDEVICE_A_IFNAME", "wg0"],
        ["WGDEVICE_A_PRIVATE_KEY", b64(PRIV)],
        ["WGDEVICE_A_PUBLIC_KEY", b64(keys.public_from_private(PRIV))],
        ["WGDEVICE_A_LISTEN_PORT", 51820],
        ["WGDEVICE_A_PEERS", [{"attrs": [["WGPEER_A_PUBLIC_KEY", b64(K2)], *peer_attrs.values()]}]],
    ]
    return roundtrip(msg)


def test_genl_device_parsing():
    allowed = genl._allowed_ips(tuple(sorted(DN42)))
    msg = kernel_reply(
        psk=["WGPEER_A_PRESHARED_KEY", b64(ZERO_KEY)],
        ep=["WGPEER_A_ENDPOINT", {"addr": "192.0.2.2", "port": 51820}],
        ka=["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
        hs=["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 0}],
        rx=["WGPEER_A_RX_BYTES", 5],
        tx=["WGPEER_A_TX_BYTES", 6],
        ips=["WGPEER_A_ALLOWEDIPS", allowed],
    )
    dev = genl.parse_device([msg])
    assert dev == Device(
        private_key=PRIV,
        listen_port=51820,
        peers=(
            Peer(
                public_key=K2,
                endpoint="192.0.2.2:51820",
                keepalive=25,
                allowed_ips=DN42,
                last_handshake=1700000000.0,
                rx_bytes=5,
                tx_bytes=6,
            ),
        ),
    )
    assert plan(dev, desired()) is None


def test_genl_get_message():
    msg = roundtrip(genl.build_get_message("wg0"))
    assert msg["cmd"] == WG_CMD_GET_DEVICE and msg.get_attr("WGDEVICE_A_IFNAME") == "wg0"


def test_a_listen_port_in_use_is_a_failure_a_retry_may_fix() -> None:
    """EADDRINUSE from wireguard-go (a removed tunnel's daemon still exiting holds
    the port) keeps the session's status and retries; other refusals stay permanent."""
    from moenet_wireguard.errors import UapiBusyError, UapiError

    from moenet_core.reconcile import is_transient

    assert is_transient(UapiBusyError("wireguard-go for wg0 refused the request: errno 98", 98))
    assert not is_transient(UapiError("wireguard-go for wg0 refused the request: errno 22", 22))


async def test_per_tunnel_locks_serialise_and_are_dropped_when_free(tmp_path) -> None:
    """One lock per tunnel name while someone holds or waits for it, none after:
    a lock that was once waited for would otherwise keep its waiter queue forever
    (about 0.7 KB each, most of a megabyte at 1 000 tunnels)."""
    import asyncio

    from moenet_wireguard.config import Settings
    from moenet_wireguard.kernel import KernelTunnelBackend

    backend = KernelTunnelBackend(Settings(), genl=object(), intent_dir=tmp_path / "creating")  # type: ignore[arg-type]
    order: list[str] = []
    gate = asyncio.Event()

    async def hold(tag: str) -> None:
        async with backend._lock("wg0"):
            order.append(f"{tag}+")
            await gate.wait()
            order.append(f"{tag}-")

    first = asyncio.ensure_future(hold("a"))
    second = asyncio.ensure_future(hold("b"))
    while not order:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["a+"] and backend._locked("wg0") and not backend._locked("wg1")
    gate.set()
    await asyncio.gather(first, second)
    assert order == ["a+", "a-", "b+", "b-"]
    assert backend._locks == {} and not backend._locked("wg0")
