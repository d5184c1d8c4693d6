"""The mesh addressing plan: names, ports and link-locals derived from node ids."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from moenet_mesh.addressing import (
    MAX_NODE_ID,
    AddressingError,
    interface_name,
    link_local,
    link_local_interface,
    listen_port,
    max_node_id,
    parse_interface,
)
from moenet_mesh.config import MeshSyncConfig
from moenet_sessions.model import IFNAME_RE, derive_interface

IDS = [
    1,
    2,
    7,
    9,
    10,
    99,
    999,
    1000,
    1001,
    4242,
    13715,
    65535,
    65536,
    10**6,
    2**31,
    MAX_NODE_ID - 1,
    MAX_NODE_ID,
]


@pytest.mark.parametrize("node_id", IDS)
def test_interface_names_fit_for_every_id(node_id: int) -> None:
    for prefix in ("igp", "m", "abcde"):
        name = interface_name(node_id, prefix)
        assert len(name) <= 15, name
        assert IFNAME_RE.fullmatch(name), name  # what every plugin and BIRD accept
        assert parse_interface(name, prefix) == node_id


def test_interface_name_examples_and_the_go_agent_overflow() -> None:
    assert interface_name(7) == "igp7"
    assert interface_name(1000) == "igp1000"  # dn42-wg-igp-1000 was 16 characters
    assert interface_name(MAX_NODE_ID) == "igp4294967295"
    assert len(interface_name(MAX_NODE_ID, "abcde")) == 15
    with pytest.raises(AddressingError):
        interface_name(1, "toolong")
    with pytest.raises(AddressingError):
        interface_name(1, "igp-")


def test_names_are_distinct_and_never_look_like_session_names() -> None:
    names = [interface_name(i) for i in range(1, 20001)] + [interface_name(i) for i in IDS]
    assert len(set(names)) == len(set(range(1, 20001)) | set(IDS))
    # The sessions plugin's derived names, and the usual CP-given ones.
    for asn, uuid in itertools.product((4242420001, 4242421234, 64512), ("a", "b", "c")):
        derived = derive_interface(asn, uuid)
        assert parse_interface(derived, "igp") is None and not derived.startswith("igp")
    for other in ("dn42-1000", "dn42_as1", "wg0", "igp", "igp0", "igp007", "igp4294967296", "igpx1"):
        assert parse_interface(other, "igp") is None, other


@pytest.mark.parametrize("node_id", [-1, 0, MAX_NODE_ID + 1, True, 1.0, "7", None])
def test_bad_node_ids_are_refused(node_id: object) -> None:
    with pytest.raises(AddressingError):
        interface_name(node_id, "igp")  # type: ignore[arg-type]
    with pytest.raises(AddressingError):
        link_local(node_id)  # type: ignore[arg-type]


def test_listen_ports_are_the_go_agents_rule_and_collision_free() -> None:
    assert listen_port(1) == 51821 and listen_port(1000) == 52820
    base = 51820
    ports = [listen_port(i, base) for i in range(1, max_node_id(base) + 1)]
    assert len(ports) == len(set(ports)) and max(ports) == 65535
    # Both ends compute the same numbers: A's tunnel to B listens on base+B; B reaches it there.
    a, b = 3, 1000
    assert listen_port(b, base) == base + b and listen_port(a, base) == base + a


@pytest.mark.parametrize("node_id", [13716, 65535, 10**6, MAX_NODE_ID])
def test_ids_that_do_not_fit_the_port_range_are_refused(node_id: int) -> None:
    with pytest.raises(AddressingError, match="does not fit the mesh port range"):
        listen_port(node_id, 51820)


def test_a_lower_base_fits_bigger_ids() -> None:
    assert listen_port(60000, 2000) == 62000
    assert listen_port(65534, 1) == 65535
    with pytest.raises(AddressingError):
        listen_port(65535, 1)


@pytest.mark.parametrize("node_id", IDS)
def test_link_locals_are_unique_link_local_and_stable(node_id: int) -> None:
    ll = ipaddress.IPv6Address(link_local(node_id))
    assert ll.is_link_local and ll in ipaddress.IPv6Network("fe80::/64")
    assert int(ll) & 0xFFFFFFFF == node_id
    assert link_local_interface(node_id) == f"{ll}/64"
    assert link_local(node_id) == link_local(node_id)


def test_link_local_examples_and_uniqueness() -> None:
    assert link_local(7) == "fe80::1:0:7"
    assert link_local(1000) == "fe80::1:0:3e8"
    assert link_local(65536) == "fe80::1:1:0"
    assert link_local(MAX_NODE_ID) == "fe80::1:ffff:ffff"
    sample = list(range(1, 70000)) + IDS
    assert len({link_local(i) for i in sample}) == len(set(sample))


def test_config_defaults_and_checks() -> None:
    c = MeshSyncConfig()
    assert (c.port_base, c.interface_prefix) == (51820, "igp")
    assert c.networks() == ("10.0.0.0/8", "172.20.0.0/14", "172.31.0.0/16", "fd00::/8")
    assert MeshSyncConfig(allowed_ips=["fd42:4242:1234::/48", "172.20.42.0/27"]).networks() == (
        "172.20.42.0/27",
        "fd42:4242:1234::/48",
    )
    for bad in (
        {"port_base": 0},
        {"port_base": 65535},
        {"interface_prefix": "IGP"},
        {"interface_prefix": "sixsix"},
        {"allowed_ips": ["172.20.42.1/27"]},
        {"allowed_ips": ["nope"]},
        {"rtt_min_ms": 200, "rtt_max_ms": 100},
        {"guard_max_share": 1.5},
        {"status_repeat": -1},
    ):
        with pytest.raises(ValueError):
            MeshSyncConfig(**bad)  # type: ignore[arg-type]
