"""BIRD config rendering: golden trees, real ``bird -p`` parse checks, validation, string safety.

Every rendered tree is parse-checked by the real BIRD 3 with zero warnings allowed.

Golden files live in ``tests/data/bird_render/<case>/``. To regenerate them after an
intended template change::

    MOENET_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_bird_render.py
    git diff tests/data/bird_render   # review every change
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.render import cp_data
from moenet_bird import communities as C
from moenet_bird.collector import RouteCollector
from moenet_bird.denylist import parse_deny_text
from moenet_bird.names import BIRD_KEYWORDS, BirdConfigError, bird_string, symbol_error
from moenet_bird.policy import BgpPeer, BirdPolicy, RpkiServer, parse_bird_config
from moenet_bird.render import MARKER, render_tree
from moenet_bird.roa import LocalRouting, StaticRoa, parse_roa_text
from moenet_bird.testing import unchecked_intent

from moenet_core.intents import BabelInterfaceIntent, EbgpPeerIntent, IbgpNeighborIntent, IbgpOptionsIntent

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parents[1] / "data" / "bird_render"
PREFIX = Path(os.environ.get("MOENET_BIRD_PREFIX", "/opt/moenet-bird3"))
UPDATE = os.environ.get("MOENET_UPDATE_GOLDEN") == "1"

U1 = "0b5e8a52-3c1e-4e5a-9a51-000000000001"
U2 = "0b5e8a52-3c1e-4e5a-9a51-000000000002"
U3 = "0b5e8a52-3c1e-4e5a-9a51-000000000003"
U4 = "0b5e8a52-3c1e-4e5a-9a51-000000000004"


@pytest.fixture(scope="module")
def bird_bin() -> Path:
    """The installed BIRD 3 (``scripts/install-bird`` is a no-op when present)."""
    res = subprocess.run([str(ROOT / "scripts/install-bird")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"scripts/install-bird failed:\n{res.stdout}\n{res.stderr}"
    return PREFIX / "bin" / "bird"


def policy(data: dict[str, Any] | None = None) -> BirdPolicy:
    bp, _ = parse_bird_config(data or cp_data())
    return bp


def peer(uuid: str, args: dict[str, Any], *, checked: bool = True) -> BgpPeer:
    """The peer the sessions plugin declares under ``uuid``; ``checked=False``
    builds the intent around its own checks (what a hostile plugin could send)."""
    intent = EbgpPeerIntent(**args) if checked else unchecked_intent(EbgpPeerIntent, **args)
    return BgpPeer(uuid, intent)


def ll_peer(uuid: str = U1, asn: int = 4242420002, *, checked: bool = True, **kw: Any) -> BgpPeer:
    """Link-local MP-BGP with extended next hop: the usual DN42 WireGuard peering."""
    args: dict[str, Any] = {
        "asn": asn,
        "crypto": 34,
        "latency": 3,
        "bandwidth": 25,
        "name": "example",
        "interface": f"dn42-{int(asn) % 10000}",
        "neighbor_link_local": "fe80::2",
        "local_link_local": "fe80::1234",
    }
    args.update(kw)
    return peer(uuid, args, checked=checked)


def split_peer(uuid: str = U2, asn: int = 4242420003, **kw: Any) -> BgpPeer:
    """Separate IPv4 and IPv6 sessions (no MP-BGP)."""
    args: dict[str, Any] = {
        "asn": asn,
        "crypto": 34,
        "latency": 5,
        "bandwidth": 24,
        "interface": "wg-split",
        "neighbor_ipv4": "172.20.1.2",
        "neighbor_ipv6": "fd42:1:2::2",
        "local_ipv4": "172.20.42.1",
        "local_ipv6": "fd42:4242:1234::1",
        "mp_bgp": False,
        "extended_nexthop": False,
    }
    args.update(kw)
    return peer(uuid, args)


def _cp_variant(**kw: Any) -> dict[str, Any]:
    data = cp_data()
    for path, value in kw.items():
        section, key = path.split("__")
        data[section][key] = value
    return data


IBGP_PEERS = [
    {
        "nodeId": 4,
        "nodeName": "tyo1",
        "loopbackIpv4": "172.20.42.2",
        "loopbackIpv6": "fd42:4242:1234::2",
        "isRr": True,
    },
    {
        "nodeId": 5,
        "nodeName": "sin1",
        "loopbackIpv4": "172.20.42.3",
        "loopbackIpv6": "fd42:4242:1234::3",
        "isRr": False,
    },
    {"nodeId": 6, "nodeName": "v4only", "loopbackIpv4": "172.20.42.4", "isRr": False},
    {"nodeId": 3, "nodeName": "hkg1", "loopbackIpv6": "fd42:4242:1234::1", "isRr": False},  # self: skipped
]


def neighbor(
    node_id: int, name: str, *, v4: str = "", v6: str = "", checked: bool = True, **kw: Any
) -> IbgpNeighborIntent:
    args = {"node_id": node_id, "node_name": name, "loopback_ipv4": v4, "loopback_ipv6": v6, **kw}
    return IbgpNeighborIntent(**args) if checked else unchecked_intent(IbgpNeighborIntent, **args)


#: What the ibgp owner declares on hkg1 (node 3) as a route reflector: every other
#: node, ``rr client`` towards the non-RRs; its own entry is never rendered.
RR_NEIGHBORS = [
    neighbor(4, "tyo1", v4="172.20.42.2", v6="fd42:4242:1234::2", is_rr=True),
    neighbor(5, "sin1", v4="172.20.42.3", v6="fd42:4242:1234::3", rr_client=True),
    neighbor(6, "v4only", v4="172.20.42.4", rr_client=True),
    neighbor(1234, "big-id.node", v6="fd42:4242:1234::4d2", rr_client=True),
    neighbor(3, "hkg1", v6="fd42:4242:1234::1"),  # this node: skipped
]
#: ... and as a client: only the route reflectors.
CLIENT_NEIGHBORS = [neighbor(4, "tyo1", v4="172.20.42.2", v6="fd42:4242:1234::2", is_rr=True)]
MESH = [
    BabelInterfaceIntent(pattern="wg-int-*"),
    BabelInterfaceIntent(pattern="eth1", type="wired", rxcost=96),
]


def _cases() -> dict[str, dict[str, Any]]:
    two_rpki = cp_data()
    two_rpki["policy"]["rpkiServers"] = [
        {"name": "akae", "host": "rpki.akae.re", "port": 8082},
        {"name": "local-cache", "host": "127.0.0.1", "port": 3323},
        {"name": "v6", "host": "fd42:d42:d42::53", "port": 8082},
    ]
    no_rpki = cp_data()
    no_rpki["policy"]["rpkiServers"] = []
    with_ibgp = cp_data()
    with_ibgp["ibgpPeers"] = copy.deepcopy(IBGP_PEERS)
    return {
        "minimal": {"data": no_rpki, "peers": []},
        "ll_mpbgp_enh": {"peers": [ll_peer()]},
        "ll_mpbgp_no_enh": {"peers": [ll_peer(extended_nexthop=False, local_ipv4="172.20.42.1")]},
        "split_v4_v6": {"peers": [split_peer()]},
        "split_v4_only": {"peers": [split_peer(neighbor_ipv6="", local_ipv6="")]},
        "ula_mpbgp": {"peers": [split_peer(mp_bgp=True, extended_nexthop=True, neighbor_ipv4="")]},
        # WireGuard is crypto 34, with a pre-shared key 35 (the sessions plugin decides).
        "psk_and_no_psk": {
            "peers": [ll_peer(U1, crypto=35), ll_peer(U3, asn=4242420005, crypto=34, latency=6)]
        },
        # Policy knobs: other local preferences, cold potato off, a receive limit
        # default; per-session limits; measured mesh tiers on the iBGP neighbours
        # of a client (add paths rx towards the reflector).
        "exits_limits_latency": {
            "data": _cp_variant(
                policy__ebgpLocalPref=300,
                policy__ebgpDirectBonus=0,
                policy__coldPotato=False,
                policy__ebgpReceiveLimit=5000,
            ),
            "peers": [
                ll_peer(U1, receive_limit=700, import_limit=300, export_limit=200, bandwidth=29),
                ll_peer(U3, asn=4242420005, crypto=36),
            ],
            "ibgp": IbgpOptionsIntent(route_reflector=False),
            "ibgp_peers": [
                neighbor(4, "tyo1", v4="172.20.42.2", v6="fd42:4242:1234::2", is_rr=True, latency=5),
                neighbor(5, "sin1", v6="fd42:4242:1234::3", latency=2),
            ],
        },
        "same_asn_twice": {
            "peers": [
                ll_peer(U1),
                ll_peer(U4, interface="dn42-0002b", neighbor_link_local="fe80::22", latency=7),
            ]
        },
        "region_eu_10g": {
            "data": _cp_variant(
                node__regionCommunity=41,
                node__bandwidthCommunity=26,
                node__continentLc=300,
                node__subregionLc="EU_C",
                node__bandwidth=10000,
                node__countryCommunity=1276,
            ),
            "peers": [ll_peer(bandwidth=26, latency=2)],
        },
        "region_na_w_100m": {
            "data": _cp_variant(
                node__regionCommunity=44,
                node__bandwidthCommunity="DN42_BW_100M_PLUS",
                node__continentLc="NA",
                node__subregionLc="NA_W",
                node__bandwidth="100M",
                node__countryCommunity=None,
            ),
            "peers": [split_peer(bandwidth=23, crypto=33)],
        },
        "rpki_three": {"data": two_rpki, "peers": [ll_peer()]},
        "ibgp_rr": {
            "data": with_ibgp,
            "peers": [ll_peer()],
            "ibgp": IbgpOptionsIntent(route_reflector=True),
            "ibgp_peers": RR_NEIGHBORS,
        },
        "ibgp_client": {
            "data": with_ibgp,
            "peers": [ll_peer()],
            "ibgp": IbgpOptionsIntent(route_reflector=False),
            "ibgp_peers": CLIENT_NEIGHBORS,
        },
        "babel_mesh": {"peers": [ll_peer()], "babel": MESH},
        "maintenance_on": {
            "data": with_ibgp,
            "peers": [ll_peer(), split_peer()],
            "ibgp_peers": RR_NEIGHBORS,
            "babel": MESH,
            "maintenance": True,
        },
        "maintenance_off": {
            "data": with_ibgp,
            "peers": [ll_peer(), split_peer()],
            "ibgp_peers": RR_NEIGHBORS,
            "babel": MESH,
            "maintenance": False,
        },
        "disabled_peer": {"peers": [ll_peer(disabled=True, import_limit=100, export_limit=50)]},
        # Local additions (moenet_bird.roa): loose pinned, a local RTR cache next to the
        # CP's, static ROAs from a file, aggregates withdrawn (isolated node).
        "roa_local_static_isolated": {
            "peers": [ll_peer()],
            "local": LocalRouting(
                roa_mode="loose",
                rpki_servers=(RpkiServer(name="localrtr", host="127.0.0.1", port=8082),),
                rpki_expire=86400,
                static=StaticRoa.of(
                    parse_roa_text(
                        "route 172.20.0.0/14 max 29 as 4242420000;\n"
                        "route 172.20.42.0/27 max 29 as 4242421234;\n"
                        "route fd42:4242:1234::/48 max 64 as 4242421234;\n",
                        "golden",
                    )
                ),
                announce_aggregates=False,
            ),
        },
        # The DN42 Global Route Collector switched on by the CP, on a route reflector
        # (add paths tx to its clients); deny lists from the CP and a local file, merged.
        "grc_denylist": {
            "data": _cp_variant(
                policy__routeCollector=True,
                policy__denyList={
                    "prefixes": ["172.20.66.0/24+", "fd42:dead::/32{48,64}"],
                    "asns": [4242420666, "AS4242420667"],
                },
            ),
            "peers": [ll_peer()],
            "ibgp": IbgpOptionsIntent(route_reflector=True),
            "ibgp_peers": RR_NEIGHBORS,
            "local": LocalRouting(
                deny=parse_deny_text("172.22.0.0/24  # one prefix\nAS4242420668\n", "golden"),
            ),
        },
        # Pinned locally with an IPv4 collector address (source OWNIP) while the CP says off.
        "grc_local_v4": {
            "data": _cp_variant(policy__routeCollector=False),
            "peers": [ll_peer()],
            "local": LocalRouting(collector=RouteCollector(enabled=True, neighbor="172.20.129.4")),
        },
    }


CASES = _cases()


def render_case(case: dict[str, Any], **kw: Any) -> dict[str, str]:
    return render_tree(
        policy(case.get("data")),
        case.get("peers", []),
        ibgp=case.get("ibgp"),
        ibgp_peers=case.get("ibgp_peers", ()),
        babel=case.get("babel", ()),
        maintenance=case.get("maintenance", False),
        local=case.get("local"),
        **kw,
    )


def write_tree(tree: dict[str, str], base: Path) -> None:
    for rel, content in tree.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


PARSE_TIMES: list[float] = []


def parse_check(bird: Path, tree: dict[str, str], base: Path) -> None:
    """``bird -p`` must exit 0 and print nothing: no errors, no warnings."""
    write_tree(tree, base)
    start = time.monotonic()
    res = subprocess.run(
        [str(bird), "-p", "-c", str(base / "bird.conf")], capture_output=True, text=True, timeout=60
    )
    PARSE_TIMES.append(time.monotonic() - start)
    assert res.returncode == 0, f"bird -p failed:\n{res.stderr}"
    assert res.stderr == "" and res.stdout == "", f"bird -p printed warnings:\n{res.stderr}{res.stdout}"


# ------------------------------------------------------------------- golden + parse


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_and_parse(name: str, bird_bin: Path, tmp_path: Path) -> None:
    case = CASES[name]
    tree = render_case(case)
    gdir = GOLDEN / name
    if UPDATE:
        shutil.rmtree(gdir, ignore_errors=True)
        write_tree(tree, gdir)
    expected = {str(p.relative_to(gdir)): p.read_text() for p in sorted(gdir.rglob("*")) if p.is_file()}
    assert sorted(expected) == sorted(tree), (
        f"file set differs for {name} (MOENET_UPDATE_GOLDEN=1 regenerates)"
    )
    for rel, content in tree.items():
        assert content == expected[rel], (
            f"{name}/{rel} differs from golden (MOENET_UPDATE_GOLDEN=1 regenerates)"
        )
    # Every file carries the ownership marker on its first line.
    assert all(c.startswith(MARKER) for c in tree.values())
    # The same tree rendered for the temporary directory parses on the real BIRD.
    parse_check(bird_bin, render_case(case), tmp_path)


def test_parse_timing_report(bird_bin: Path, tmp_path: Path) -> None:
    """Not a speed assertion: records how long one ``bird -p`` takes on the biggest tree."""
    parse_check(bird_bin, render_case(CASES["maintenance_on"]), tmp_path)
    elapsed = PARSE_TIMES[-1]
    print(f"\nbird -p on the maintenance_on tree: {elapsed * 1000:.1f} ms ({len(PARSE_TIMES)} parses so far)")
    assert elapsed < 10


def test_many_peers_parse(bird_bin: Path, tmp_path: Path) -> None:
    """200 sessions (100 ASNs, two sessions each) parse, and names never collide."""
    peers = []
    for i in range(100):
        for j in range(2):
            peers.append(
                ll_peer(
                    f"0b5e8a52-3c1e-4e5a-{j:04d}-{i:012d}",
                    asn=4242420100 + i,
                    interface=f"dn42-{i}-{j}",
                    neighbor_link_local=f"fe80::{i + 1:x}:{j + 1}",
                )
            )
    tree = render_case({"peers": peers})
    assert len([p for p in tree if p.startswith("peers/dn42_")]) == 200
    parse_check(bird_bin, tree, tmp_path)


def test_deterministic() -> None:
    case = CASES["maintenance_on"]
    a = render_case(case)
    b = render_case({**case, "peers": list(reversed(case["peers"]))})
    assert a == b
    assert list(a) == sorted(a)


def test_empty_peer_dirs_exist_and_parse(bird_bin: Path, tmp_path: Path) -> None:
    tree = render_case(CASES["minimal"])
    assert "peers/00_moenet.conf" in tree and "ibgp/00_moenet.conf" in tree
    parse_check(bird_bin, tree, tmp_path)


def _includes(text: str) -> list[str]:
    return [line.split('"')[1] for line in text.splitlines() if line.startswith("include ")]


def test_includes_are_relative_and_only_owned_files() -> None:
    """bird.conf includes only moenet.conf; moenet.conf includes every other owned file."""
    tree = render_case(CASES["ibgp_rr"])
    assert _includes(tree["bird.conf"]) == ["moenet.conf"]
    reached = {"bird.conf", "moenet.conf"}
    for inc in _includes(tree["moenet.conf"]):
        assert not inc.startswith("/"), f"moenet.conf includes {inc}: includes must be relative"
        if "*" in inc:
            matched = {p for p in tree if p.startswith(inc.split("*")[0]) and p.endswith(".conf")}
            assert matched, inc
            reached |= matched
        else:
            assert inc in tree, f"moenet.conf includes {inc}, which the agent does not write"
            reached.add(inc)
    assert reached == set(tree), f"never included: {set(tree) - reached}"
    for path, text in tree.items():
        if path not in ("bird.conf", "moenet.conf"):
            assert not _includes(text), f"{path} includes files; only bird.conf and moenet.conf may"
    assert not any("/etc/bird" in text for text in tree.values()), "the texts must not embed a directory"


#: An operator's hand-written bird.conf: own router id, device and kernel protocols,
#: the agent's aggregator included before anything that uses its symbols.
OPERATOR_CONF = """\
# My own bird.conf (not the agent's).
log syslog all;
router id 172.20.42.1;

protocol device {{
  scan time 5;
}}

include "{aggregator}";

protocol kernel {{
  ipv4 {{
    import none;
    export filter {{
      if source = RTS_STATIC then reject;
      krt_prefsrc = OWNIP;
      accept;
    }};
  }};
}}

protocol kernel {{
  ipv6 {{ import none; export where source != RTS_STATIC; }};
}}
"""


@pytest.mark.parametrize("form", ["absolute", "relative"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_operator_bird_conf_mode_golden_and_parse(
    name: str, form: str, bird_bin: Path, tmp_path: Path
) -> None:
    """Without bird.conf the tree is the golden tree minus bird.conf, and an operator's
    own bird.conf including moenet.conf (absolute or relative) parses with no warnings."""
    tree = render_case(CASES[name], bird_conf=False)
    gdir = GOLDEN / name
    expected = {str(p.relative_to(gdir)): p.read_text() for p in sorted(gdir.rglob("*")) if p.is_file()}
    expected.pop("bird.conf")
    assert tree == expected
    aggregator = str(tmp_path / "moenet.conf") if form == "absolute" else "moenet.conf"
    parse_check(bird_bin, {**tree, "bird.conf": OPERATOR_CONF.format(aggregator=aggregator)}, tmp_path)


def test_operator_bird_conf_from_another_directory_parses(bird_bin: Path, tmp_path: Path) -> None:
    """BIRD started with a bird.conf elsewhere that includes <dir>/moenet.conf absolutely:
    moenet.conf's own relative includes still resolve next to it."""
    agent = tmp_path / "agent"
    write_tree(render_case(CASES["maintenance_on"], bird_conf=False), agent)
    (tmp_path / "op").mkdir()
    conf = tmp_path / "op" / "bird.conf"
    conf.write_text(OPERATOR_CONF.format(aggregator=agent / "moenet.conf"))
    res = subprocess.run(
        [str(bird_bin), "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert res.returncode == 0 and res.stderr == "" and res.stdout == "", res.stderr


def test_an_operator_symbol_clash_is_named_by_bird(bird_bin: Path, tmp_path: Path) -> None:
    """The contract: the operator's bird.conf must not define the agent's symbols."""
    tree = render_case(CASES["minimal"], bird_conf=False)
    clash = OPERATOR_CONF.format(aggregator="moenet.conf").replace(
        "router id 172.20.42.1;", "router id 172.20.42.1;\ndefine OWNAS = 4242420000;"
    )
    write_tree({**tree, "bird.conf": clash}, tmp_path)
    res = subprocess.run(
        [str(bird_bin), "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True
    )
    assert res.returncode != 0 and "Symbol 'OWNAS' already defined" in res.stderr, res.stderr


# ------------------------------------------------------------------- semantics


def test_mpbgp_link_local_renders_one_session_with_enh() -> None:
    tree = render_case({"peers": [ll_peer()]})
    (path,) = [p for p in tree if p.startswith("peers/dn42_")]
    text = tree[path]
    assert text.count("protocol bgp ") == 1
    assert "neighbor fe80::2 as 4242420002;" in text and 'interface "dn42-2";' in text
    assert "source address fe80::1234;" in text
    assert "extended next hop on;" in text
    assert "dn42_ebgp_in(3, 25, 34)" in text and "dn42_ebgp_out(3, 25, 34)" in text
    assert "import limit 9000 action block;" in text


def test_split_renders_two_sessions() -> None:
    tree = render_case({"peers": [split_peer()]})
    (path,) = [p for p in tree if p.startswith("peers/dn42_")]
    text = tree[path]
    assert "_v4 from dn42_ebgp" in text and "_v6 from dn42_ebgp" in text
    assert "neighbor 172.20.1.2 as 4242420003;" in text and "neighbor fd42:1:2::2 as 4242420003;" in text
    assert "extended next hop" not in text


def test_same_asn_sessions_do_not_collide() -> None:
    a, b = ll_peer(U1), ll_peer(U4)
    assert a.symbol != b.symbol and a.file_name != b.file_name
    assert a.symbol.startswith("dn42_4242420002_") and len(a.symbol) <= 64
    assert symbol_error(a.symbol) is None
    # The same UUID in another spelling is the same session.
    assert ll_peer(U1.upper()).symbol == a.symbol


def test_region_and_country_only_on_self_originated() -> None:
    text = render_case({"peers": []})["filters.conf"]
    out = text.split("function dn42_ebgp_out")[1].split("function moenet_ibgp_in")[0]
    static_block = out.split("if source = RTS_STATIC then {")[1].split("}")[0]
    assert "dn42_add_origin();" in static_block
    assert "dn42_add_origin" not in text.split("function dn42_ebgp_out")[0]
    comm = render_case({"peers": []})["moenet_communities.conf"]
    assert "define DN42_REGION = 52;" in comm  # DN42_REGION_AS_E -> Asia-E = 52 (the Go agent sent 50)
    assert "define DN42_COUNTRY = 1344;" in comm  # Hong Kong, ISO 344
    assert "define DN42_NODE_BANDWIDTH = 25;" in comm  # DN42_BW_1G_PLUS -> >= 1000 Mbit = 25


def test_maintenance_flag() -> None:
    on = render_case(CASES["maintenance_on"])
    off = render_case(CASES["maintenance_off"])
    assert "bgp_community.add((65535, 0));" in on["filters.conf"]
    assert "bgp_local_pref = 0;" in on["filters.conf"].split("function moenet_ibgp_out")[1]
    assert "bgp_community.add((65535, 0));" not in off["filters.conf"]
    assert {k for k in on if on[k] != off[k]} == {"filters.conf"}


def test_ibgp_rr_client_flags() -> None:
    rr = render_case(CASES["ibgp_rr"])
    client = render_case(CASES["ibgp_client"])
    assert sorted(p for p in rr if p.startswith("ibgp/")) == [
        "ibgp/00_moenet.conf",
        "ibgp/ibgp_big_id_node_1234.conf",
        "ibgp/ibgp_sin1_5.conf",
        "ibgp/ibgp_tyo1_4.conf",
        "ibgp/ibgp_v4only_6.conf",
    ]  # never a session to ourselves (node 3)
    assert "rr client;" in rr["ibgp/ibgp_sin1_5.conf"] and "rr client;" not in rr["ibgp/ibgp_tyo1_4.conf"]
    assert "rr cluster id OWNIP;" in rr["ibgp/ibgp_sin1_5.conf"]
    assert "protocol bgp ibgp_big_id_node_1234 from dn42_ibgp {" in rr["ibgp/ibgp_big_id_node_1234.conf"]
    assert sorted(p for p in client if p.startswith("ibgp/")) == [
        "ibgp/00_moenet.conf",
        "ibgp/ibgp_tyo1_4.conf",
    ]
    assert not any("rr client;" in v for v in client.values())
    assert "neighbor 172.20.42.4 as OWNAS;" in rr["ibgp/ibgp_v4only_6.conf"]
    assert "source address OWNIP;" in rr["ibgp/ibgp_v4only_6.conf"]
    assert "neighbor fd42:4242:1234::3 as OWNAS;" in rr["ibgp/ibgp_sin1_5.conf"]
    assert "source address OWNIPv6;" in rr["ibgp/ibgp_sin1_5.conf"]


def test_policy_ibgp_peers_are_never_rendered() -> None:
    """The ibgp owner decides the sessions: the policy's ibgpPeers (and node.type) do nothing."""
    data = cp_data(type="rr")
    data["ibgpPeers"] = copy.deepcopy(IBGP_PEERS)
    bp = policy(data)
    assert [p.node_name for p in bp.ibgp_peers] == ["tyo1", "sin1", "v4only", "hkg1"]  # still parsed
    tree = render_tree(bp, [])
    assert [p for p in tree if p.startswith("ibgp/")] == ["ibgp/00_moenet.conf"]
    assert render_tree(bp, [], ibgp_peers=CLIENT_NEIGHBORS) == render_tree(
        policy(), [], ibgp_peers=CLIENT_NEIGHBORS
    )


def test_ibgp_disabled_renders_no_session() -> None:
    tree = render_tree(policy(), [], ibgp=IbgpOptionsIntent(enabled=False), ibgp_peers=RR_NEIGHBORS)
    assert [p for p in tree if p.startswith("ibgp/")] == ["ibgp/00_moenet.conf"]


def test_ibgp_template_has_next_hop_self_limits_and_drain() -> None:
    """next hop self for eBGP-learned routes and the policy's iBGP limits on both
    channels; the drain marks only what enters the network at this node."""
    data = cp_data()
    data["policy"].update(ibgpImportLimit=12345, ibgpExportLimit=6789)
    tree = render_tree(policy(data), [], ibgp_peers=CLIENT_NEIGHBORS)
    template = tree["moenet.conf"].split("template bgp dn42_ibgp {")[1].split("\n}\n")[0]
    for family in ("ipv4", "ipv6"):
        channel = template.split(f"  {family} {{")[1].split("  };")[0]
        assert "next hop self ebgp;" in channel
        assert "import limit 12345 action block;" in channel and "export limit 6789 action warn;" in channel
        assert "import where moenet_ibgp_in();" in channel and "export where moenet_ibgp_out();" in channel
    drained = render_tree(policy(data), [], ibgp_peers=CLIENT_NEIGHBORS, maintenance=True)["filters.conf"]
    out = drained.split("function moenet_ibgp_out")[1]
    assert "if source = RTS_STATIC || (OWNAS, 3, MOENET_NODE_ID) ~ bgp_large_community then {" in out
    # The origin tag the drain relies on is set on every eBGP import.
    assert "moenet_tag_origin();" in drained.split("function dn42_ebgp_in")[1].split("function ")[0]
    assert "bgp_large_community.add((OWNAS, 3, MOENET_NODE_ID));" in tree["moenet_communities.conf"]


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ([neighbor(0, "x", v4="172.20.42.9", checked=False)], "ibgp[0].nodeId: must be 1-4294967295"),
        ([neighbor(9, 'x"; }', v4="172.20.42.9", checked=False)], "ibgp[0].nodeName: must be a node name"),
        ([neighbor(9, "x", checked=False)], "ibgp[0]: needs loopbackIpv6 or loopbackIpv4"),
        ([neighbor(9, "x", v6="fe80::1", checked=False)], "ibgp[0].loopbackIpv6: must not be link-local"),
        ([neighbor(9, "x", v4="fd42::1", checked=False)], "ibgp[0].loopbackIpv4: must be an IPv4 address"),
        ([neighbor(9, "x", v6="fd42::1%eth0", checked=False)], "ibgp[0].loopbackIpv6: not an IPv6 address"),
        ([neighbor("9", "x", v4="172.20.42.9", checked=False)], "ibgp[0].nodeId: must be an integer"),
        ([neighbor(9, "x", v4="172.20.42.9", rr_client="yes", checked=False)], "ibgp[0].rrClient"),
        (
            [neighbor(9, "x", v4="172.20.42.9"), neighbor(9, "y", v4="172.20.42.10")],
            "ibgp[1].nodeId: duplicate nodeId",
        ),
        (
            [neighbor(9, "x", v4="172.20.42.9"), neighbor(10, "X", v4="172.20.42.10")],
            "ibgp[1].nodeName: duplicate nodeName",
        ),
    ],
)
def test_ibgp_neighbor_validation(bad: list[IbgpNeighborIntent], expected: str) -> None:
    """BIRD's own checks refuse what a plugin built around the intent's checks."""
    with pytest.raises(BirdConfigError) as exc:
        render_tree(policy(), [], ibgp_peers=bad)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"node_id": 0}, "node_id"),
        ({"node_name": 'x"; }'}, "node_name"),
        ({"loopback_ipv6": "fe80::1"}, "loopback_ipv6"),
        ({"loopback_ipv4": "fd42::1"}, "loopback_ipv4"),
        ({"loopback_ipv6": "fd42::1%eth0"}, "loopback_ipv6"),
        ({"rr_client": "yes"}, "rr_client"),
    ],
)
def test_ibgp_neighbor_intent_refuses_the_same_where_it_is_built(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        IbgpNeighborIntent(**{"node_id": 9, "node_name": "x", "loopback_ipv4": "172.20.42.9", **kw})


def test_a_node_called_like_the_placeholder_does_not_replace_it() -> None:
    tree = render_tree(policy(), [], ibgp_peers=[neighbor(9, "00_moenet", v4="172.20.42.9")])
    assert tree["ibgp/00_moenet.conf"].count("protocol") == 0
    assert "protocol bgp ibgp_00_moenet_9 " in tree["ibgp/ibgp_00_moenet_9.conf"]


def test_operator_override_replaces_one_template(tmp_path: Path, bird_bin: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "cold_potato.conf.j2").write_text(
        "# operator: no cold potato\nfunction moenet_cold_potato() -> bool {\n  return true;\n}\n"
    )
    base = tmp_path / "etc"
    tree = render_case(CASES["ibgp_rr"], template_dir=tmp_path / "tpl")
    assert tree["cold_potato.conf"].startswith(MARKER)  # the marker is added whatever the template says
    assert "# operator: no cold potato" in tree["cold_potato.conf"]
    default = render_case(CASES["ibgp_rr"])
    assert {k for k in tree if tree[k] != default[k]} == {"cold_potato.conf"}
    parse_check(bird_bin, tree, base)


def test_cached_environment_sees_added_edited_and_removed_overrides(tmp_path: Path) -> None:
    """The jinja2 environment is cached per template dir, yet override changes show at once."""
    from moenet_bird.render import environment

    tpl = tmp_path / "tpl"
    tpl.mkdir()
    default = render_case(CASES["minimal"], template_dir=tpl)
    assert environment(tpl) is environment(tpl)
    (tpl / "cold_potato.conf.j2").write_text("# first override\n")
    assert "# first override" in render_case(CASES["minimal"], template_dir=tpl)["cold_potato.conf"]
    (tpl / "cold_potato.conf.j2").write_text("# second override, edited\n")
    os.utime(tpl / "cold_potato.conf.j2", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert "# second override" in render_case(CASES["minimal"], template_dir=tpl)["cold_potato.conf"]
    (tpl / "cold_potato.conf.j2").unlink()
    assert render_case(CASES["minimal"], template_dir=tpl) == default


# ------------------------------------------------------------------- validation


def _problems(data: Any) -> list[str]:
    with pytest.raises(BirdConfigError) as exc:
        parse_bird_config(data)
    return exc.value.problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["policy"].pop("asPathMaxLen"), "policy.asPathMaxLen: required"),
        (lambda d: d["policy"].update(asPathMaxLen=0), "policy.asPathMaxLen: must be 1-255"),
        (lambda d: d["policy"].update(asPathMaxLen=256), "policy.asPathMaxLen: must be 1-255"),
        (lambda d: d["policy"].update(ebgpImportLimit=0), "policy.ebgpImportLimit: must be greater than 0"),
        (lambda d: d["policy"].update(dn42As=""), "policy.dn42As: must be an AS number"),
        (lambda d: d["policy"].update(dn42As="23456"), "policy.dn42As: must be a usable 32-bit AS number"),
        (
            lambda d: d["policy"].update(dn42Ipv4Prefix="fd00::/8"),
            "policy.dn42Ipv4Prefix: must be an IPv4 network",
        ),
        (
            lambda d: d["policy"].update(dn42Ipv4Prefix="172.20.42.1/27"),
            "policy.dn42Ipv4Prefix: not a network",
        ),
        (
            lambda d: d["policy"].update(dn42Ipv6Prefix="172.20.0.0/14"),
            "policy.dn42Ipv6Prefix: must be an IPv6",
        ),
        (
            lambda d: d["policy"]["rpkiServers"].append({"name": "x", "host": "a b", "port": 1}),
            "policy.rpkiServers[1].host: must be an IP address or a DNS name",
        ),
        (
            lambda d: d["policy"]["rpkiServers"].append({"name": "y", "host": "h.dn42", "port": 70000}),
            "policy.rpkiServers[1].port: must be 1-65535",
        ),
        (
            lambda d: d["policy"]["rpkiServers"].append({"name": "a b", "host": "h.dn42"}),
            "policy.rpkiServers[1].name: must be 1-32",
        ),
        (
            lambda d: d["policy"]["rpkiServers"].append({"name": "AKAE", "host": "h.dn42"}),
            "policy.rpkiServers[1].name: duplicate RPKI server name",
        ),
        (lambda d: d["node"].pop("loopbackIpv4"), "node.loopbackIpv4: required"),
        (lambda d: d["node"].update(loopbackIpv6="fe80::1"), "node.loopbackIpv6: must not be link-local"),
        (lambda d: d["node"].update(regionCommunity=40), "node.regionCommunity: must be a DN42 region 41-70"),
        (lambda d: d["node"].update(regionCommunity=""), "node.regionCommunity: must be a DN42 region"),
        (
            lambda d: d["node"].update(regionCommunity="DN42_REGION_SA"),
            "node.regionCommunity: 'DN42_REGION_SA' is ambiguous",
        ),
        (
            lambda d: d["node"].update(bandwidthCommunity=30),
            "node.bandwidthCommunity: must be a DN42 bandwidth",
        ),
        (lambda d: d["node"].update(countryCommunity=2000), "node.countryCommunity: must be an ISO-3166-1"),
        (lambda d: d["node"].update(continentLc="MARS"), "node.continentLc: must be a MoeNet continent code"),
        (lambda d: d["node"].update(name="hk 1"), "node.name: must be a node name"),
        (lambda d: d["node"].update(name='x"; protocol bgp y {'), "node.name: must be a node name"),
        (lambda d: d["node"].update(id=0), "node.id: must be 1-4294967295"),
        (lambda d: d.update(configHash="a\nb"), "configHash: must be a hash string"),
    ],
)
def test_validation_names_the_field(mutate: Any, expected: str) -> None:
    data = cp_data()
    mutate(data)
    problems = _problems(data)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        ([{"nodeId": 9, "nodeName": "x"}], "ibgpPeers[0]: needs loopbackIpv6 or loopbackIpv4"),
        (
            [{"nodeId": 9, "nodeName": "x/../y", "loopbackIpv4": "172.20.42.9"}],
            "ibgpPeers[0].nodeName: must be a node name",
        ),
        (
            [{"nodeId": 9, "nodeName": "a", "loopbackIpv4": "172.20.42.9"}] * 2,
            "ibgpPeers[1].nodeId: duplicate nodeId",
        ),
        ("not a list", "ibgpPeers: expected a list"),
    ],
)
def test_bad_ibgp_peers_in_the_policy_are_warnings_not_a_refusal(peers: Any, expected: str) -> None:
    """The policy no longer renders ibgpPeers (the ibgp plugin validates its own):
    a bad entry must not cost the node its whole routing policy."""
    data = cp_data()
    data["ibgpPeers"] = peers
    bp, warnings = parse_bird_config(data)
    assert any(
        w.startswith(expected) and w.endswith("(entry ignored by the BIRD policy)") for w in warnings
    ), warnings
    assert bp.policy.asn == 4242421234


def test_all_problems_reported_at_once() -> None:
    data = cp_data()
    data["policy"]["asPathMaxLen"] = 0
    del data["node"]["loopbackIpv4"]
    data["policy"]["rpkiServers"] = [{"name": "x", "host": "bad host"}]
    problems = _problems(data)
    assert len(problems) == 3, problems


def test_symbols_normalised_by_meaning() -> None:
    bp = policy(_cp_variant(node__regionCommunity="ME", node__bandwidthCommunity="DN42_BW_10M_PLUS"))
    assert bp.node.region == 56 and bp.node.bandwidth_dn42 == 23
    assert policy().node.continent == 100 and policy().node.subregion == 101
    assert policy().policy.asn == 4242421234


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"uuid": "not-a-uuid\nprotocol"}, "peers[0]: the key 'not-a-uuid\\nprotocol' must not contain"),
        ({"asn": 64500}, "peers[0].asn: must be a usable"),
        ({"asn": "4242420002"}, "peers[0].asn: must be an integer"),
        ({"mp_bgp": "yes"}, "peers[0].mpBgp: must be true or false"),
        (
            {"local_link_local": "fe80::1", "neighbor_link_local": "", "neighbor_ipv6": "fd42::2"},
            "peers[0].localLinkLocal: only used with",
        ),
        ({"asn": 0}, "peers[0].asn: must be a usable"),
        ({"latency": 0}, "peers[0].latency: must be 1-9"),
        ({"bandwidth": 30}, "peers[0].bandwidth: must be 21-29"),
        ({"crypto": 37}, "peers[0].crypto: must be 31-36"),
        ({"interface": "wg0; reject"}, "peers[0].interface: must be 1-15 characters"),
        ({"interface": "a" * 16}, "peers[0].interface: must be 1-15 characters"),
        ({"interface": '"wg"'}, "peers[0].interface: must be 1-15"),
        ({"interface": ""}, "peers[0].interface: required with a link-local neighbour"),
        ({"neighbor_link_local": "fd00::1"}, "peers[0].neighborLinkLocal: must be a link-local address"),
        ({"neighbor_link_local": "fe80::1%wg0"}, "peers[0].neighborLinkLocal: not an IPv6 address"),
        (
            {"neighbor_link_local": "", "neighbor_ipv4": "172.20.1.1"},
            "peers[0].mpBgp: needs an IPv6 neighbour",
        ),
        ({"extended_nexthop": False}, "peers[0].extendedNexthop: IPv4 over an IPv6 session needs"),
        ({"name": "evil\nprotocol bgp x {"}, "peers[0].name: must not contain control characters"),
        ({"description": "tab\there"}, "peers[0].description: must not contain control characters"),
        ({"description": "x" * 300}, "peers[0].description: must be at most 256 characters"),
        ({"import_limit": 0}, "peers[0].importLimit: must be greater than 0"),
    ],
)
def test_peer_validation_names_the_field(kw: dict[str, Any], expected: str) -> None:
    """BIRD's own checks, on an intent built around the intent's checks."""
    uuid = kw.pop("uuid", U1)
    with pytest.raises(BirdConfigError) as exc:
        render_tree(policy(), [ll_peer(uuid, checked=False, **kw)])
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"asn": 0}, "asn"),
        ({"latency": 0}, "latency"),
        ({"bandwidth": 30}, "bandwidth"),
        ({"crypto": 37}, "crypto"),
        ({"interface": "wg0; reject"}, "interface"),
        ({"interface": ""}, "interface"),
        ({"neighbor_link_local": "fd00::1"}, "neighbor_link_local"),
        ({"neighbor_link_local": "fe80::1%wg0"}, "neighbor_link_local"),
        ({"name": "evil\nprotocol bgp x {"}, "name"),
        ({"description": "x" * 300}, "description"),
        ({"import_limit": 0}, "import_limit"),
        ({"mp_bgp": "yes"}, "mp_bgp"),
    ],
)
def test_the_peer_intent_refuses_most_of_it_where_it_is_built(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        ll_peer(**kw)


def test_duplicate_session_id_rejected() -> None:
    with pytest.raises(BirdConfigError) as exc:
        render_tree(policy(), [ll_peer(U1), ll_peer(U1.upper(), asn=4242420002)])
    assert any("duplicate session id" in p for p in exc.value.problems)


def test_a_non_uuid_key_names_the_peer_by_its_hash() -> None:
    static = BgpPeer("staticpeers/kioubit", ll_peer().intent)
    assert static.symbol.startswith("dn42_4242420002_") and static.symbol != ll_peer().symbol
    text = render_tree(policy(), [static])[static.file_name]
    assert text.startswith(MARKER) and "# eBGP session staticpeers/kioubit with AS4242420002" in text


def test_bad_render_parameters() -> None:
    with pytest.raises(BirdConfigError, match="loopbackInterface"):
        render_tree(policy(), [], loopback_interface="lo0 x")
    with pytest.raises(BirdConfigError, match=r"babel.interfaces\[0\].pattern"):
        render_tree(policy(), [], babel=[unchecked_intent(BabelInterfaceIntent, pattern='wg*"; }')])


# ------------------------------------------------------------------- hostile strings

HOSTILE = [
    'quote " inside',
    "backslash \\ inside",
    "trailing backslash \\",
    '"; }; protocol bgp x { neighbor 1.2.3.4 as 1; }; #',
    "}; protocol bgp x {",
    "bgp",
    "protocol",
    "ünïcødé 漢字 ✓",
    "'single' quotes",
    "#comment",
    "x" * 256,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_rendered_inertly(text: str, bird_bin: Path, tmp_path: Path) -> None:
    peer = ll_peer(name=text, description=text)
    tree = render_tree(policy(), [peer])
    body = tree[peer.file_name]
    desc = next(line for line in body.splitlines() if line.strip().startswith("description "))
    # One string literal: exactly two double quotes on the line, nothing after it.
    assert desc.count('"') == 2 and desc.rstrip().endswith('";')
    assert sum(line.startswith("protocol ") for line in body.splitlines()) == 1
    parse_check(bird_bin, tree, tmp_path)


@pytest.mark.parametrize(
    "text", ["line\nbreak", "cr\rhere", "nul\x00", "esc\x1b[0m", "del\x7f", "sep\u2028x", "c1\x85"]
)
def test_control_characters_refused(text: str) -> None:
    with pytest.raises(BirdConfigError, match=r"peers\[0\]\.name"):
        render_tree(policy(), [ll_peer(name=text, checked=False)])
    with pytest.raises(BirdConfigError):
        bird_string(text)


def test_overlong_and_keyword_names() -> None:
    assert symbol_error("a" * 65) is not None
    assert symbol_error("bgp") is not None and symbol_error("BGP") is not None
    assert symbol_error("1abc") is not None
    assert symbol_error("dn42_4242420002_abcdef") is None
    # RPKI names map to prefixed symbols, so a keyword as a name is harmless.
    data = cp_data()
    data["policy"]["rpkiServers"] = [{"name": "bgp", "host": "rpki.dn42"}]
    tree = render_tree(policy(data), [])
    assert "protocol rpki rpki_bgp {" in tree["moenet.conf"]
    data["policy"]["rpkiServers"] = [{"name": "x" * 33, "host": "rpki.dn42"}]
    assert any(p.startswith("policy.rpkiServers[0].name") for p in _problems(data))


def test_keyword_list_covers_research_list() -> None:
    for word in ("bgp", "peer", "source", "latency", "express", "s", "rr", "table", "filter", "where"):
        assert word in BIRD_KEYWORDS
    for word in ("dn42", "worker", "region", "country", "peers"):
        assert word not in BIRD_KEYWORDS


# ------------------------------------------------------------------- community tables


# DN42 wiki, howto/Bird-communities: the authoritative numbers.
DN42_STANDARD = [
    ("latency", 1, (0, 2.7)),
    ("latency", 2, (2.7, 7.3)),
    ("latency", 3, (7.3, 20)),
    ("latency", 4, (20, 55)),
    ("latency", 5, (55, 148)),
    ("latency", 6, (148, 403)),
    ("latency", 7, (403, 1097)),
    ("latency", 8, (1097, 2981)),
    ("bandwidth", 21, 0.1),
    ("bandwidth", 22, 1),
    ("bandwidth", 23, 10),
    ("bandwidth", 24, 100),
    ("bandwidth", 25, 1000),
    ("bandwidth", 26, 10000),
    ("bandwidth", 27, 100000),
    ("bandwidth", 28, 1000000),
    ("bandwidth", 29, 10000000),
    ("crypto", 31, "not encrypted"),
    ("crypto", 32, "unsafe"),
    ("crypto", 33, "no PFS"),
    ("crypto", 34, "with PFS"),
    ("crypto", 35, "post-quantum resistance"),
    ("crypto", 36, "post-quantum forward secrecy"),
    ("region", 41, "Europe"),
    ("region", 42, "North America-E"),
    ("region", 43, "North America-C"),
    ("region", 44, "North America-W"),
    ("region", 45, "Central America"),
    ("region", 46, "South America-E"),
    ("region", 47, "South America-W"),
    ("region", 48, "Africa-N"),
    ("region", 49, "Africa-S"),
    ("region", 50, "Asia-S"),
    ("region", 51, "Asia-SE"),
    ("region", 52, "Asia-E"),
    ("region", 53, "Pacific"),
    ("region", 54, "Antarctica"),
    ("region", 55, "Asia-N"),
    ("region", 56, "Asia-W"),
    ("region", 57, "Central Asia"),
]


@pytest.mark.parametrize(("kind", "value", "meaning"), DN42_STANDARD)
def test_dn42_tables_match_standard(kind: str, value: int, meaning: Any) -> None:
    if kind == "latency":
        lo, hi = meaning
        assert C.LATENCY_TIERS[value][0] == pytest.approx(lo, rel=0.02)  # the wiki rounds e^x down
        assert C.LATENCY_TIERS[value][1] == pytest.approx(hi, rel=0.02)
    elif kind == "bandwidth":
        assert C.BANDWIDTH_MBIT[value] == pytest.approx(meaning)
        assert C.bandwidth_community(meaning) == value
    elif kind == "crypto":
        assert meaning in C.CRYPTO[value]
    else:
        assert C.REGIONS[value].startswith(meaning)


def test_dn42_table_edges() -> None:
    assert C.bandwidth_community(250) == 24 and C.bandwidth_community(0.01) == 21
    assert C.CRYPTO_WIREGUARD == 34 and C.CRYPTO_WIREGUARD_PSK == 35 and set(C.CRYPTO) == set(C.CRYPTO_RANGE)
    assert set(C.REGIONS) == set(range(41, 58)) and all(
        v in C.REGION_RANGE for v in C.REGION_SYMBOLS.values()
    )
    assert C.REGION_SYMBOLS["AS_E"] == 52 and C.REGION_SYMBOLS["OC"] == 53  # the Go agent had 50 and 51
    assert C.BANDWIDTH_SYMBOLS["1G"] == 25 and C.BANDWIDTH_SYMBOLS["10M"] == 23  # the Go agent had 23 and 25
    assert C.adjacent_continents(C.CONTINENTS["AS"]) == [C.CONTINENTS["OC"]]


def test_rendered_ranges_match_tables() -> None:
    comm = render_case({"peers": []})["moenet_communities.conf"]
    assert "(64511, 1..9)" in comm and "(64511, 21..29)" in comm and "(64511, 31..36)" in comm
    assert "(64511, 41..70)" in comm and "(64511, 1000..1999)" in comm


def test_a_canonical_uuid_key_is_the_peer_id_itself_and_others_are_normalised() -> None:
    from moenet_bird.policy import peer_id

    key = "".join(["8f0c2a1e-4b6d-4e2f-9a3b-", "1c2d3e4f5a6b"])  # built at run time: not a shared constant
    assert peer_id("sessions", key) is key  # no second copy kept per declared peer
    assert peer_id("sessions", key.upper()) == key
    assert peer_id("sessions", "{" + key + "}") == key
    assert peer_id("staticpeers", "kioubit") == "staticpeers/kioubit"
