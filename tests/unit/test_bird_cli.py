"""``moenet-agent render``: the BIRD tree from a policy (file, or the configured CP), parse-checked."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from helpers.render import cp_data
from moenet_bird.cli import render_command

from moenet_core.config import build_config

PEER = {
    "uuid": "0b5e8a52-3c1e-4e5a-9a51-000000000001",
    "asn": 4242420002,
    "latency": 3,
    "bandwidth": 25,
    "name": "example",
    "interface": "dn42-2",
    "neighborLinkLocal": "fe80::2",
    "localLinkLocal": "fe80::1234",
}


def args(out: Path, **kw: object) -> argparse.Namespace:
    base = {
        "out": str(out),
        "policy": None,
        "peers": None,
        "ibgp": None,
        "no_bird_conf": False,
        "maintenance": False,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def bird_parse(tree_dir: Path) -> subprocess.CompletedProcess[str]:
    bird = shutil.which("bird") or "/opt/moenet-bird3/bin/bird"
    return subprocess.run(
        [bird, "-p", "-c", str(tree_dir / "bird.conf")], capture_output=True, text=True, check=False
    )


def test_render_from_files_parses(tmp_path, capsys):
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    (tmp_path / "peers.json").write_text(json.dumps([PEER]))
    out = tmp_path / "tree"
    code = render_command(
        args(out, policy=str(tmp_path / "policy.json"), peers=str(tmp_path / "peers.json")), None
    )
    assert code == 0
    written = capsys.readouterr().out.split()
    assert str(out / "bird.conf") in written
    assert any(p.startswith(str(out / "peers" / "dn42_4242420002_")) for p in written)
    res = bird_parse(out)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_render_reports_every_problem(tmp_path, capsys):
    data = cp_data()
    data["policy"]["asPathMaxLen"] = 0
    (tmp_path / "policy.json").write_text(json.dumps(data))
    (tmp_path / "peers.json").write_text(json.dumps([{**PEER, "interface": "bad name!"}]))
    code = render_command(args(tmp_path / "tree", policy=str(tmp_path / "policy.json")), None)
    assert code == 1
    assert "policy.asPathMaxLen" in capsys.readouterr().err
    data["policy"]["asPathMaxLen"] = 32
    (tmp_path / "policy.json").write_text(json.dumps(data))
    code = render_command(
        args(tmp_path / "tree", policy=str(tmp_path / "policy.json"), peers=str(tmp_path / "peers.json")),
        None,
    )
    assert code == 1
    assert "peers[0].interface" in capsys.readouterr().err
    assert not (tmp_path / "tree").exists()  # nothing written when anything is invalid


def test_render_peers_are_intents_named_like_the_backend_names_them(tmp_path, capsys):
    from moenet_bird.policy import BgpPeer, peer_id

    from moenet_core.intents import EbgpPeerIntent, intent_to_json

    static = EbgpPeerIntent(asn=4242420077, neighbor_ipv4="172.20.77.1", mp_bgp=False)
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    (tmp_path / "peers.json").write_text(
        json.dumps([PEER, {**intent_to_json(static), "uuid": "kioubit", "owner": "staticpeers"}])
    )
    out = tmp_path / "tree"
    code = render_command(
        args(out, policy=str(tmp_path / "policy.json"), peers=str(tmp_path / "peers.json")), None
    )
    assert code == 0, capsys.readouterr().err
    symbol = BgpPeer(peer_id("staticpeers", "kioubit"), static).symbol
    assert f"protocol bgp {symbol}_v4 from dn42_ebgp" in (out / "peers" / f"{symbol}.conf").read_text()
    assert bird_parse(out).returncode == 0
    (tmp_path / "peers.json").write_text(json.dumps([{**PEER, "kind": "babelInterface"}, {"asn": 1}]))
    code = render_command(
        args(tmp_path / "t2", policy=str(tmp_path / "policy.json"), peers=str(tmp_path / "peers.json")), None
    )
    err = capsys.readouterr().err
    assert code == 1 and "peers[0].kind: must be 'ebgpPeer'" in err and "peers[1]: needs neighbor" in err


def test_render_takes_the_policy_from_the_configured_source(tmp_path):
    cp_file = tmp_path / "cp.json"
    cp_file.write_text(json.dumps({"bird-config": cp_data()}))
    config, _ = build_config(
        {
            "node": {"name": "hkg1"},
            "controlPlane": {"source": "file", "file": str(cp_file)},
            "state": {"directory": str(tmp_path / "state")},
        },
        env={},
    )
    out = tmp_path / "tree"
    assert render_command(args(out), config) == 0
    assert bird_parse(out).returncode == 0
    assert render_command(args(out, maintenance=True), config) == 0
    assert "65535, 0" in (out / "filters.conf").read_text() + (out / "moenet_communities.conf").read_text()


def test_render_without_bird_conf_is_what_sits_next_to_an_operators_own(tmp_path, capsys):
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    out = tmp_path / "tree"
    assert render_command(args(out, policy=str(tmp_path / "policy.json"), no_bird_conf=True), None) == 0
    assert not (out / "bird.conf").exists() and (out / "moenet.conf").is_file()
    (out / "bird.conf").write_text('router id 192.0.2.1;\nprotocol device {}\ninclude "moenet.conf";\n')
    res = bird_parse(out)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_render_with_ibgp_neighbours_parses(tmp_path, capsys):
    data = cp_data()
    data["ibgpPeers"] = [{"nodeId": 9, "nodeName": "ignored", "loopbackIpv4": "172.20.42.9"}]
    (tmp_path / "policy.json").write_text(json.dumps(data))
    ibgp = [
        {"nodeId": 4, "nodeName": "tyo1", "loopbackIpv6": "fd42:4242:1234::2", "isRr": True},
        {"nodeId": 1005, "nodeName": "sin1", "loopbackIpv4": "172.20.42.3", "rrClient": True},
    ]
    (tmp_path / "ibgp.json").write_text(json.dumps(ibgp))
    out = tmp_path / "tree"
    code = render_command(
        args(out, policy=str(tmp_path / "policy.json"), ibgp=str(tmp_path / "ibgp.json")), None
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "ibgp").iterdir()) == [
        "00_moenet.conf",
        "ibgp_sin1_1005.conf",
        "ibgp_tyo1_4.conf",
    ]  # the policy's ibgpPeers are not rendered
    assert "rr client;" in (out / "ibgp" / "ibgp_sin1_1005.conf").read_text()
    res = bird_parse(out)
    assert res.returncode == 0 and res.stderr == "", res.stderr

    (tmp_path / "ibgp.json").write_text(json.dumps([{**ibgp[0], "nodeName": 'x"; }'}, ibgp[1], ibgp[1]]))
    code = render_command(
        args(tmp_path / "tree2", policy=str(tmp_path / "policy.json"), ibgp=str(tmp_path / "ibgp.json")), None
    )
    err = capsys.readouterr().err
    assert code == 1 and "ibgp[0].nodeName: must be a node name" in err
    assert not (tmp_path / "tree2").exists()


def _local_config(tmp_path: Path, **bird: object) -> object:
    config, _ = build_config(
        {
            "node": {"name": "hkg1"},
            "controlPlane": {"url": "https://cp.example", "token": "0123456789abcdef"},
            "state": {"directory": str(tmp_path / "state")},
            "bird": bird,
        },
        env={},
    )
    return config


def test_render_carries_what_the_local_config_adds(tmp_path, capsys):
    """Static ROA files, deny-list files and the collector pin: the same tree the
    agent renders (its tasks read them into the backend's local additions)."""
    roa = tmp_path / "roa4.conf"
    roa.write_text("route 172.20.0.0/14 max 29 as 4242420000;\n")
    deny = tmp_path / "deny.txt"
    deny.write_text("172.20.66.0/24+  # bad actor\nAS4242420666\n")
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    config = _local_config(
        tmp_path, roaFiles=[str(roa)], denyListFiles=[str(deny)], routeCollector=True, roaMode="loose"
    )
    out = tmp_path / "tree"
    assert render_command(args(out, policy=str(tmp_path / "policy.json")), config) == 0, capsys.readouterr()
    assert "route 172.20.0.0/14 max 29 as 4242420000;" in (out / "moenet_roa4.conf").read_text()
    denylist = (out / "denylist.conf").read_text()
    assert "172.20.66.0/24+" in denylist and "4242420666" in denylist
    collector = (out / "collector.conf").read_text()
    assert "protocol bgp moenet_grc" in collector and "pinned by bird.routeCollector" in collector
    assert "# ROA mode loose" in (out / "moenet.conf").read_text()  # the local pin beats the CP's strict
    res = bird_parse(out)
    assert res.returncode == 0 and res.stderr == "", res.stderr

    # Without the local config the same policy renders none of it.
    bare = tmp_path / "bare"
    assert render_command(args(bare, policy=str(tmp_path / "policy.json")), None) == 0
    assert not (bare / "moenet_roa4.conf").exists()
    assert "4242420666" not in (bare / "denylist.conf").read_text()
    assert "protocol bgp moenet_grc" not in (bare / "collector.conf").read_text()


def test_render_leaves_out_a_bad_local_source_and_says_so(tmp_path, capsys):
    """As the agent does at a start: the source is left out, the rest rendered."""
    good = tmp_path / "good.txt"
    good.write_text("AS4242420666\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("172.20.66.0/24 ; include x\n")
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    config = _local_config(
        tmp_path,
        denyListFiles=[str(good), str(bad)],
        roaFiles=[str(tmp_path / "absent.conf")],
        roaUrls=["https://roa.example/roa.conf"],
    )
    out = tmp_path / "tree"
    assert render_command(args(out, policy=str(tmp_path / "policy.json")), config) == 0
    err = capsys.readouterr().err
    assert f"warning: deny list {bad}: refused: {bad}:1: not a prefix" in err
    assert f"warning: ROA source {tmp_path / 'absent.conf'}: cannot read" in err
    assert "warning: ROA source https://roa.example/roa.conf: no saved download" in err
    denylist = (out / "denylist.conf").read_text()
    assert "4242420666" in denylist and "172.20.66.0" not in denylist
    assert not (out / "moenet_roa4.conf").exists()
    assert bird_parse(out).returncode == 0


def test_render_uses_the_saved_download_of_a_roa_url(tmp_path, capsys):
    """A ``bird.roaUrls`` source renders from the copy the agent saved (as a restarted
    agent does before its first fetch); render itself downloads nothing."""
    from moenet_bird.roa_sources import _cache_name

    url = "https://roa.example/roa6.conf"
    saved = tmp_path / "state" / "plugins" / "bird" / _cache_name(url)
    saved.parent.mkdir(parents=True)
    saved.write_text("route fd42:4242:2601::/48 max 64 as 4242422601;\n")
    (tmp_path / "policy.json").write_text(json.dumps(cp_data()))
    out = tmp_path / "tree"
    config = _local_config(tmp_path, roaUrls=[url])
    assert render_command(args(out, policy=str(tmp_path / "policy.json")), config) == 0
    assert "no saved download" not in capsys.readouterr().err
    assert "route fd42:4242:2601::/48 max 64 as 4242422601;" in (out / "moenet_roa6.conf").read_text()
