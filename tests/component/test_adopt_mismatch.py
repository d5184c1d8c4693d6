"""``moenet-agent adopt`` refuses a Go agent tunnel that is not what the agent would
configure: it is reported with the reason and never marked (issue 15, item 6)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.goagent import GO_FILTERS, NODE_LL, go_bird_conf, go_peer_file
from moenet_wireguard import keys

from moenet_core.testing import NetNS

pytestmark = [pytest.mark.netns]

AGENT = str(Path(sys.executable).with_name("moenet-agent"))
UUID = "6b1d0f9e-0a0d-4a6e-9c51-1ab0c0ffee0b"


@pytest.fixture
def ns(monkeypatch):
    for k in [k for k in os.environ if k.startswith("MOENET_")]:
        monkeypatch.delenv(k)
    if os.geteuid() != 0:
        pytest.fail("needs root: a namespace and wireguard-go")
    n = NetNS(prefix="moenet-adm")
    try:
        yield n
    finally:
        n.remove()


def test_mismatching_tunnel_is_reported_and_left_alone(ns: NetNS, tmp_path: Path) -> None:
    iface = f"dn42-mm{os.urandom(2).hex()[:3]}"
    key, peer = keys.generate_private_key(), keys.generate_private_key()
    key_file = tmp_path / "wg.key"
    keys.write_key_file(key_file, key)
    os.chmod(key_file, 0o600)
    ns.run("wireguard-go", iface)
    try:
        # The Go agent's tunnel, but on another listen port than the CP's session says.
        ns.run("wg", "set", iface, "private-key", str(key_file), "listen-port", "51999")
        ns.run("wg", "set", iface, "peer", peer.public_key(), "allowed-ips", "fd00::/8")
        ns.run("ip", "addr", "add", f"{NODE_LL}/64", "dev", iface)
        bird = tmp_path / "bird"
        (bird / "peers").mkdir(parents=True)
        (bird / "bird.conf").write_text(go_bird_conf(bird))
        (bird / "filters.conf").write_text(GO_FILTERS)
        (bird / "peers" / "dn42_4242420020.conf").write_text(go_peer_file(iface))
        files = {p: p.read_text() for p in bird.rglob("*") if p.is_file()}
        session = {
            "uuid": UUID, "asn": 4242420020, "status": 2, "type": "wireguard", "interface": iface,
            "endpoint": "192.0.2.2:51822", "ipv6LinkLocal": "fe80::20", "port": 51821,
            "credential": json.dumps({"public_key": peer.public_key(), "listen_port": 51821}),
            "extensions": ["mp-bgp", "extended-nexthop"],
        }  # fmt: skip
        (tmp_path / "cp.json").write_text(json.dumps({"sessions": {"bgpSessions": [session]}}))
        config = {
            "node": {"name": "mm", "id": 1, "asn": 4242420998, "loopbackIpv4": "172.22.188.1",
                     "loopbackIpv6": "fd00:4242:7777:302:1::1"},
            "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json"), "statusScheme": "go"},
            "state": {"directory": str(tmp_path / "state")},
            "bird": {"configDir": str(bird)},
            "sessions": {"privateKeyPath": str(key_file)},
        }  # fmt: skip
        (tmp_path / "config.json").write_text(json.dumps(config))

        def adopt(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ip", "netns", "exec", ns.name, AGENT, "adopt", "-c", str(tmp_path / "config.json"), *args],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip

        dry = adopt()
        assert dry.returncode == 0, dry.stderr
        assert f"MISMATCH {UUID} AS4242420020 ({iface}): not adopted" in dry.stdout
        assert f"{iface}: listen port 51999, we would use 51821" in dry.stdout
        refused = adopt("--apply")
        assert refused.returncode == 3
        assert f"refused: session {UUID} mismatches (or --force)" in refused.stderr
        assert "alias" not in ns.run("ip", "-o", "link", "show", "dev", iface).stdout
        assert {p: p.read_text() for p in bird.rglob("*") if p.is_file()} == files
        assert not (tmp_path / "state" / "plugins" / "sessions" / "adopted.json").exists()
        # --force goes on without it: the tunnel stays unmarked, no protocol name is kept.
        forced = adopt("--apply", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "alias" not in ns.run("ip", "-o", "link", "show", "dev", iface).stdout
        assert not (tmp_path / "state" / "plugins" / "sessions" / "adopted.json").exists()
    finally:
        ns.run("ip", "link", "del", iface, check=False)
        with contextlib.suppress(FileNotFoundError):
            Path(f"/var/run/wireguard/{iface}.sock").unlink()
