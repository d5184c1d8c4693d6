"""``moenet_core.backends.tunnel_drift``: what a reconciler compares before touching a tunnel."""

from __future__ import annotations

import attrs

from moenet_core.backends import TunnelAddress, TunnelSpec, TunnelState, tunnel_drift

SPEC = TunnelSpec(
    name="wg1",
    private_key_file="/k",
    listen_port=21001,
    peer_public_key="K" * 43 + "=",
    endpoint="peer.example:51820",
    allowed_ips=("0.0.0.0/0", "fd00::/8", "fe80::/64"),
    keepalive=25,
    addresses=(TunnelAddress(local="fe80::1/64"), TunnelAddress(local="172.20.0.1/32", peer="172.20.9.9")),
)
STATE = TunnelState(
    name="wg1",
    ifindex=7,
    listen_port=21001,
    peer_public_key="K" * 43 + "=",
    endpoint="198.51.100.9:40000",  # roamed: never drift
    allowed_ips=("fd00:0::/8", "0.0.0.0/0", "fe80::/64"),  # another spelling, another order
    keepalive=25,
    mtu=1420,
    addresses=(TunnelAddress(local="172.20.0.1/32", peer="172.20.9.9"), TunnelAddress(local="fe80::1")),
    up=True,
)


def test_equal_in_substance_is_no_drift() -> None:
    assert tunnel_drift(SPEC, STATE) == []
    assert tunnel_drift(attrs.evolve(SPEC, listen_port=None), attrs.evolve(STATE, listen_port=5)) == []


def test_each_difference_is_one_line() -> None:
    state = attrs.evolve(
        STATE,
        listen_port=1,
        peer_public_key=None,
        allowed_ips=("0.0.0.0/0",),
        addresses=(TunnelAddress(local="fe80::2/64"),),
        keepalive=None,
        mtu=1280,
        up=False,
    )
    assert tunnel_drift(SPEC, state) == [
        "listen port is 1, want 21001",
        "peer public key differs",
        "allowed IPs differ",
        "addresses differ",
        "keepalive is None, want 25",
        "mtu is 1280, want 1420",
        "interface is down",
    ]


def test_an_unreadable_address_is_drift_not_a_crash() -> None:
    state = attrs.evolve(STATE, addresses=(TunnelAddress(local="not-an-address"),))
    [line] = tunnel_drift(SPEC, state)
    assert line.startswith("unreadable address on the tunnel:")
