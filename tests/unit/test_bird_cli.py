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
