"""Exits, limits, first AS and bogons as the BIRD backend renders them (root-free).

The golden trees (``test_bird_render``) pin the full text; these pin the rules:
which value wins, what is refused and with which field named."""

from __future__ import annotations

from typing import Any

import pytest
from moenet_bird import communities as C
from moenet_bird.names import BirdConfigError
from moenet_bird.policy import BgpPeer, parse_bird_config, validate_peers
from moenet_bird.render import add_paths, link, peer_limits, render_tree
from moenet_bird.testing import sample_bird_config, unchecked_intent

from moenet_core.intents import EbgpPeerIntent, IbgpNeighborIntent

U1 = "0b5e8a52-3c1e-4e5a-9a51-000000000001"


def peer(**kw: Any) -> BgpPeer:
    fields = {"asn": 4242420002, "interface": "dn42-2", "neighbor_link_local": "fe80::2", **kw}
    return BgpPeer(U1, EbgpPeerIntent(**fields))


def policy(**over: Any) -> Any:
    return parse_bird_config(sample_bird_config(policy=over))[0]


def test_limits_take_the_session_value_over_the_policy() -> None:
    pol = policy(ebgpImportLimit=9000, ebgpExportLimit=8000)
    assert peer_limits(pol, peer()) == {"import_limit": 9000, "export_limit": 8000, "receive_limit": 18000}
    assert peer_limits(policy(ebgpReceiveLimit=12000), peer()) == {
        "import_limit": 9000,
        "export_limit": 9000,
        "receive_limit": 12000,
    }
    own = peer(import_limit=100, export_limit=50, receive_limit=400)
    assert peer_limits(pol, own) == {"import_limit": 100, "export_limit": 50, "receive_limit": 400}
    # Without its own receive limit, a session's receive limit follows its own import limit.
    assert peer_limits(pol, peer(import_limit=100))["receive_limit"] == 200


def test_rendered_limits_and_first_as() -> None:
    tree = render_tree(policy(), [peer(import_limit=100, export_limit=50, receive_limit=400)])
    text = next(v for k, v in tree.items() if k.startswith("peers/dn42_"))
    assert text.count("receive limit 400 action block;") == 2
    assert text.count("import limit 100 action block;") == 2
    assert text.count("export limit 50 action disable;") == 2
    assert "enforce first as on;" in text


def test_link_bandwidth_is_capped_at_the_node_uplink() -> None:
    pol = policy()  # node bandwidthCommunity 1G = 25
    assert link(pol, peer(bandwidth=29, crypto=35, latency=4)) == {
        "latency": 4,
        "bandwidth": 25,
        "crypto": 35,
    }
    assert link(pol, peer(bandwidth=23))["bandwidth"] == 23


@pytest.mark.parametrize("crypto", [31, 34, 35, 36])
def test_every_wiki_crypto_value_renders(crypto: int) -> None:
    tree = render_tree(policy(), [peer(crypto=crypto)])
    text = next(v for k, v in tree.items() if k.startswith("peers/dn42_"))
    assert f"dn42_ebgp_in(1, 24, {crypto});" in text


def test_crypto_37_is_refused_naming_the_field() -> None:
    bad = BgpPeer(U1, unchecked_intent(EbgpPeerIntent, **{**peer().intent.__getstate__(), "crypto": 37}))
    assert validate_peers([bad]) == ["peers[0].crypto: must be 31-36 (got 37)"]


def test_local_preference_defaults_and_knobs_render() -> None:
    filters = render_tree(policy())["filters.conf"]
    assert f"define MOENET_PREF_EBGP = {C.LOCAL_PREF['ebgp']};" in filters
    assert f"define MOENET_PREF_DIRECT = {C.LOCAL_PREF['ebgp'] + C.LOCAL_PREF['direct_bonus']};" in filters
    cold = render_tree(policy())["cold_potato.conf"]
    assert "bgp_local_pref = bgp_local_pref - MOENET_COLD_POTATO_PENALTY;" in cold
    off = render_tree(policy(coldPotato=False, ebgpLocalPref=120, ebgpDirectBonus=5))
    assert "MOENET_COLD_POTATO_PENALTY;" not in off["cold_potato.conf"].split("function", 1)[1]
    assert "define MOENET_PREF_DIRECT = 125;" in off["filters.conf"]


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"coldPotatoPenalty": 200}, "policy.coldPotatoPenalty: must be smaller than policy.ebgpLocalPref"),
        ({"ebgpLocalPref": 0}, "policy.ebgpLocalPref: must be 1-1000000"),
        ({"ebgpDirectBonus": -1}, "policy.ebgpDirectBonus: must be 0-1000000"),
        ({"ebgpReceiveLimit": 0}, "policy.ebgpReceiveLimit: must be greater than 0"),
        ({"coldPotato": "yes"}, "policy.coldPotato"),
    ],
)
def test_bad_knobs_are_refused_naming_the_field(over: dict[str, Any], expected: str) -> None:
    with pytest.raises(BirdConfigError) as exc:
        parse_bird_config(sample_bird_config(policy=over))
    assert expected in str(exc.value)


def test_cold_potato_off_allows_any_penalty() -> None:
    assert parse_bird_config(sample_bird_config(policy={"coldPotato": False, "coldPotatoPenalty": 500}))


@pytest.mark.parametrize(
    ("asn", "bogon"),
    [
        (0, True),
        (23456, True),
        (64496, True),
        (64511, True),
        (65535, True),
        (65551, True),
        (65552, True),
        (100000, True),
        (131071, True),
        (4294967295, True),
        (112, False),  # AS112: special-purpose, but an operating AS
        (64512, False),  # 16-bit private: DN42 uses some
        (65534, False),
        (131072, False),
        (4242420000, False),  # DN42
        (4294967294, False),
    ],
)
def test_bogon_asns(asn: int, bogon: bool) -> None:
    assert C.is_bogon_asn(asn) is bogon
    filters = render_tree(policy())["filters.conf"]
    assert (
        "define BOGON_ASNS = [0, 23456, 64496..64511, 65535, 65536..65551, 65552..131071, 4294967295];"
        in filters
    )


def test_a_reserved_peer_asn_is_refused() -> None:
    bad = BgpPeer(U1, EbgpPeerIntent(asn=100000, interface="dn42-2", neighbor_link_local="fe80::2"))
    assert validate_peers([bad]) == [
        "peers[0].asn: must be a usable 32-bit AS number, not reserved (got 100000)"
    ]


def test_add_paths_only_between_reflector_and_client() -> None:
    def n(**kw: Any) -> IbgpNeighborIntent:
        return IbgpNeighborIntent(node_id=4, node_name="tyo1", loopback_ipv6="fd42::4", **kw)

    assert add_paths(n(rr_client=True), is_rr=True) == "tx"
    assert add_paths(n(is_rr=True), is_rr=False) == "rx"
    assert add_paths(n(is_rr=True), is_rr=True) == ""  # reflector to reflector
    assert add_paths(n(), is_rr=False) == ""  # full mesh
