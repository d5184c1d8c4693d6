"""``moenet-agent adopt``'s pieces: the adopted-name map, the BIRD takeover hold, and
the Go-compatible rendering of an adopted session (issue 15, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.render import cp_data, write_tree
from moenet_bird.backend import TAKEOVER_FILE, takeover_hold
from moenet_bird.policy import BgpPeer, parse_bird_config
from moenet_bird.render import MARKER as BIRD_FILE_MARKER
from moenet_bird.render import render_tree
from moenet_sessions import adopt
from moenet_sessions.adopt import Adoptions
from moenet_sessions.desired import NodeSettings, build_desired
from moenet_sessions.model import parse_sessions
from moenet_wireguard import links

from moenet_core import DEFAULT_OWNER, StateStore
from moenet_core.intents import EbgpPeerIntent

BIRD = Path(os.environ.get("MOENET_BIRD_PREFIX", "/opt/moenet-bird3")) / "bin" / "bird"
U1 = "00000000-0000-4000-8000-000000000001"
U2 = "00000000-0000-4000-8000-000000000002"
KEY = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
SETTINGS = NodeSettings(
    private_key_file="/k", link_local="fe80::998:302:1:1", loopback_ipv6="fd00:4242:7777:302:1::1"
)


def item(uuid: str, status: int, **over: Any) -> dict[str, Any]:
    base = {
        "uuid": uuid,
        "asn": 4242420020,
        "status": status,
        "interface": "dn42-peer",
        "endpoint": "192.0.2.2:51822",
        "credential": KEY,
        "ipv6LinkLocal": "fe80::20",
        "port": 51821,
        "extensions": ["mp-bgp", "extended-nexthop"],
    }
    return {**base, **over}


def test_adopted_names_last_while_the_cp_wants_the_session(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    a = Adoptions(store)
    a.save({U1: "dn42_4242420020", U2: "dn42_4242420021"})
    ok, bad = parse_sessions([item(U1, 2), item(U2, 1)], status_scheme="go")  # Enabled, Disabled
    assert a.current(ok, bad) == ((U1, "dn42_4242420020"),)
    assert a.load() == {U1: "dn42_4242420020"}  # the disabled one is released for good
    ok, bad = parse_sessions([item(U1, 2, asn="bad")], status_scheme="go")  # invalid while repaired
    assert ok == [] and a.current(ok, bad) == ((U1, "dn42_4242420020"),)
    assert a.current([], []) == () and a.load() == {}


def test_adopted_map_ignores_junk(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.write_json(adopt.ADOPTED_FILE, {U1: "dn42_1", U2: "x; protocol", "u": 3})
    assert Adoptions(store).load() == {U1: "dn42_1"}
    store.write_json(adopt.ADOPTED_FILE, [1, 2])
    assert Adoptions(store).load() == {}


def test_takeover_hold(tmp_path: Path) -> None:
    now = time.time()
    assert takeover_hold(tmp_path, now) is None
    f = tmp_path / TAKEOVER_FILE
    f.write_text(json.dumps({"owner": "sessions", "protocols": ["dn42_1"], "until": now + 60}))
    assert takeover_hold(tmp_path, now) == ("sessions", ("dn42_1",))
    assert takeover_hold(tmp_path, now + 61) is None  # expired: never holds BIRD forever
    for junk in ("{", "[]", json.dumps({"owner": 3, "protocols": [], "until": now + 60})):
        f.write_text(junk)
        assert takeover_hold(tmp_path, now) is None


def test_adopted_session_keeps_the_go_name_and_session_options(tmp_path: Path) -> None:
    ok, _ = parse_sessions([item(U1, 2)], status_scheme="go")
    plain = build_desired(ok[0], SETTINGS).peer
    legacy = build_desired(ok[0], attrs.evolve(SETTINGS, adopted=((U1, "dn42_4242420020"),))).peer
    assert plain.legacy_protocol == "" and legacy.legacy_protocol == "dn42_4242420020"
    policy, _ = parse_bird_config(cp_data())
    tree = render_tree(policy, [BgpPeer(U1, legacy), BgpPeer(U2, attrs.evolve(plain, asn=4242420021))])
    text = tree["peers/dn42_4242420020.conf"]
    assert "protocol bgp dn42_4242420020 {" in text and "local as OWNAS;" in text
    assert "graceful restart on;" in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for restarting in (
        "enforce first as",
        "source address",
        "import table",
        "from dn42_ebgp",
        "extended messages",
    ):
        assert restarting not in body, restarting
    assert body.count("extended next hop on;") == 1  # IPv4, as the Go template had it
    assert "dn42_ebgp_in(" in body and "receive limit" in body  # our filters and limits at once
    other = next(v for k, v in tree.items() if k.startswith("peers/dn42_4242420021_"))
    assert "enforce first as on;" in other and "from dn42_ebgp" in other  # everyone else unchanged
    if BIRD.exists():
        write_tree(tree, tmp_path)
        res = subprocess.run(
            [str(BIRD), "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True
        )
        assert res.returncode == 0 and res.stderr == "", res.stderr
    else:
        pytest.fail(f"{BIRD} missing: run scripts/install-bird")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"legacy_protocol": "dn42_x"}, "legacy_protocol"),
        ({"legacy_protocol": "bgp1"}, "legacy_protocol"),
        ({"legacy_protocol": "dn42_1", "mp_bgp": False, "neighbor_ipv4": "172.20.0.1"}, "MP-BGP"),
    ],
)
def test_legacy_protocol_is_checked(over: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"asn": 4242420020, "interface": "x", "neighbor_link_local": "fe80::2", **over}
    with pytest.raises((ValueError, TypeError), match=message):
        EbgpPeerIntent(**args)


def test_copied_constants_match_their_owners(tmp_path: Path) -> None:
    """``adopt`` may not import other plugins, so it repeats their markers: pinned
    here to the originals, and checked on what those plugins really produce."""
    assert adopt.MARKER_ALIAS == links.MARKER == links.marker(DEFAULT_OWNER)
    assert adopt.BIRD_MARKER == BIRD_FILE_MARKER
    assert adopt.TAKEOVER_FILE == TAKEOVER_FILE
    # Every file of a rendered tree reads as the agent's to adopt (so adopt never
    # moves the agent's own files aside as the Go agent's).
    policy, _ = parse_bird_config(cp_data())
    ok, _ = parse_sessions([item(U1, 2)], status_scheme="go")
    tree = render_tree(policy, [BgpPeer(U1, build_desired(ok[0], SETTINGS).peer)])
    write_tree(tree, tmp_path)
    assert tree and all(adopt._owned(tmp_path / rel) for rel in tree), sorted(tree)
    files, left = adopt._go_other_files(tmp_path)
    assert (files, left) == ([], [])
    assert adopt._go_peer_files(tmp_path) == {}
