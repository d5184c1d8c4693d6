"""The DN42 Global Route Collector session: who switches it on (local pin, then the
CP, else off), the local keys' validation, the rendered protocol (parsed by the real
BIRD) and the CP field's strictness. Root-free: the live session is in
``tests/component/test_bird_grc_netns.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.bird import cp_data
from helpers.render import write_tree
from moenet_bird.apply import default_bird_binary
from moenet_bird.collector import (
    COLLECTOR_FILE,
    GRC_ASN,
    GRC_NEIGHBOR,
    PROTOCOL,
    RouteCollector,
    effective_collector,
)
from moenet_bird.config import BirdConfig
from moenet_bird.names import BirdConfigError
from moenet_bird.policy import parse_bird_config
from moenet_bird.render import render_tree
from moenet_bird.roa import LocalRouting

from moenet_core.config import structure


def _policy(route_collector: Any = "absent") -> Any:
    data = cp_data()
    if route_collector != "absent":
        data["policy"]["routeCollector"] = route_collector
    return parse_bird_config(data)[0]


def _render(cp: Any = "absent", local: RouteCollector | None = None) -> str:
    return render_tree(_policy(cp), local=LocalRouting(collector=local or RouteCollector()))[COLLECTOR_FILE]


@pytest.mark.parametrize(
    ("pin", "cp", "on"),
    [
        (None, None, False),  # nobody says anything: off
        (None, False, False),
        (None, True, True),  # the CP switches it on
        (False, True, False),  # a local false wins
        (True, None, True),  # a local true needs no CP
        (True, False, True),
    ],
)
def test_local_pin_wins_then_the_cp_then_off(pin: bool | None, cp: bool | None, on: bool) -> None:
    assert (effective_collector(RouteCollector(enabled=pin), cp) is not None) is on
    conf = _render(cp, RouteCollector(enabled=pin))
    assert (f"protocol bgp {PROTOCOL}" in conf) is on
    if not on:
        assert "Global Route Collector: off" in conf


def test_the_wiki_session() -> None:
    """Multihop from the loopback, add paths tx, import none, the wiki's neighbour."""
    conf = _render(True)
    assert f"neighbor {GRC_NEIGHBOR} as {GRC_ASN};" in conf
    assert GRC_NEIGHBOR == "fd42:4242:2601:ac12::1" and GRC_ASN == 4242422602
    for line in ("local as OWNAS;", "source address OWNIPv6;", "multihop;"):
        assert f"  {line}" in conf
    assert conf.count("add paths tx;") == 2 and conf.count("import none;") == 2
    assert conf.count("export where moenet_grc_out();") == 2
    assert "next hop address OWNIP;" in conf  # IPv4 routes over the IPv6 session
    assert "add paths rx" not in conf and "import all" not in conf and "import where" not in conf
    out = conf.split("function moenet_grc_out()")[1].split("}")[0]
    assert "is_valid_network()" in out and "source !~ [RTS_STATIC, RTS_BGP]" in out
    assert "!is_self_net()" in out and "moenet_strip_internal();" in out
    assert "On: policy.routeCollector." in conf


def test_an_ipv4_collector_is_reached_from_the_ipv4_loopback() -> None:
    conf = _render(None, RouteCollector(enabled=True, neighbor="172.20.129.4"))
    assert "source address OWNIP;" in conf and "next hop address OWNIPv6;" in conf
    assert "next hop address OWNIP;" not in conf
    assert "pinned by bird.routeCollector" in conf


def test_a_collector_in_our_own_as_is_not_rendered() -> None:
    conf = _render(None, RouteCollector(enabled=True, asn=4242421234))
    assert f"protocol bgp {PROTOCOL}" not in conf
    assert "not rendered: bird.routeCollectorAs 4242421234 is this network's own AS" in conf


@pytest.mark.parametrize(
    ("collector", "field"),
    [
        (RouteCollector(enabled=True, neighbor="fe80::1"), "bird.routeCollectorNeighbor"),
        (RouteCollector(enabled=True, neighbor='fd42::1"; }'), "bird.routeCollectorNeighbor"),
        (RouteCollector(enabled=True, asn=0), "bird.routeCollectorAs"),
    ],
)
def test_a_bad_collector_built_in_code_is_refused_at_render(collector: RouteCollector, field: str) -> None:
    with pytest.raises(BirdConfigError) as exc:
        _render(None, collector)
    assert any(p.startswith(field) for p in exc.value.problems), exc.value.problems


def test_only_collector_conf_changes_when_it_is_switched() -> None:
    pol = _policy()
    off = render_tree(pol)
    on = render_tree(pol, local=LocalRouting(collector=RouteCollector(enabled=True)))
    assert {k for k in off if off[k] != on[k]} == {COLLECTOR_FILE}
    assert 'include "collector.conf";' in off["moenet.conf"]


@pytest.mark.parametrize(
    "collector",
    [RouteCollector(), RouteCollector(enabled=True), RouteCollector(enabled=True, neighbor="172.20.129.4")],
)
def test_every_shape_parses_in_bird(collector: RouteCollector, tmp_path: Path) -> None:
    tree = render_tree(_policy(), local=LocalRouting(collector=collector))
    conf = write_tree(tree, tmp_path)
    bird = default_bird_binary()
    assert bird is not None, "no bird binary (scripts/install-bird)"
    res = subprocess.run([bird, "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize("value", ["yes", 1, "true", [], {}])
def test_the_cp_field_is_a_strict_boolean(value: Any) -> None:
    data = cp_data()
    data["policy"]["routeCollector"] = value
    with pytest.raises(BirdConfigError) as exc:
        parse_bird_config(data)
    assert any(p.startswith("policy.routeCollector") for p in exc.value.problems), exc.value.problems


def test_the_cp_cannot_name_the_collector() -> None:
    """Only on/off comes from the CP: an address or AS in its answer is not used."""
    data = cp_data()
    data["policy"]["routeCollectorNeighbor"] = "fd42:bad::1"
    policy, warnings = parse_bird_config(data)
    assert any("routeCollectorNeighbor: unknown key" in w for w in warnings), warnings
    conf = render_tree(policy, local=LocalRouting(collector=RouteCollector(enabled=True)))[COLLECTOR_FILE]
    assert "fd42:bad::1" not in conf


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"routeCollector": "on"}, "bird.routeCollector"),
        ({"routeCollectorNeighbor": "collector.dn42"}, "bird.routeCollectorNeighbor"),
        ({"routeCollectorNeighbor": "fe80::1"}, "bird.routeCollectorNeighbor"),
        ({"routeCollectorNeighbor": "fd42::1%eth0"}, "bird.routeCollectorNeighbor"),
        ({"routeCollectorNeighbor": "ff02::1"}, "bird.routeCollectorNeighbor"),
        ({"routeCollectorAs": 0}, "bird.routeCollectorAs"),
        ({"routeCollectorAs": 4294967295}, "bird.routeCollectorAs"),
        ({"routeCollectorAs": "4242422602"}, "bird.routeCollectorAs"),
    ],
)
def test_bad_local_keys_name_the_field(raw: dict[str, Any], field: str) -> None:
    section, problems = structure(BirdConfig, raw, "bird", [])
    assert section is None and any(p.startswith(field) for p in problems), problems


def test_good_local_keys_become_the_collector() -> None:
    section, problems = structure(
        BirdConfig,
        {"routeCollector": True, "routeCollectorNeighbor": "172.20.129.4", "routeCollectorAs": 4242422602},
        "bird",
        [],
    )
    assert problems == [] and section is not None
    assert section.collector == RouteCollector(enabled=True, neighbor="172.20.129.4", asn=4242422602)
    assert BirdConfig().collector == RouteCollector()
    assert attrs.evolve(BirdConfig(), route_collector=False).collector.enabled is False


def test_restartable_protocols_include_the_local_additions(tmp_path: Path) -> None:
    """``/restart`` may restart what the local config adds: the collector session,
    local RTR caches and the static ROA protocols (and nothing else unknown)."""
    from moenet_bird.backend import BirdRoutingBackend
    from moenet_bird.client import BirdClient
    from moenet_bird.policy import RpkiServer
    from moenet_bird.roa import LocalRouting

    backend = BirdRoutingBackend(BirdClient(str(tmp_path / "no.ctl")), str(tmp_path / "etc"))
    cache = RpkiServer(name="local-rtr", host="127.0.0.1", port=8282)
    backend.local = LocalRouting(rpki_servers=(cache,))
    names = backend.agent_protocols()
    assert {"moenet_grc", "moenet_roa4", "moenet_roa6", cache.symbol} <= names
    assert "kernel4" in names and "device1" not in names
