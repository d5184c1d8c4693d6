"""The two-node lab (contrib/lab/lab.py, the README's main job) in its --once form:
both sessions ACTIVE, BGP Established both ways, prefixes exchanged, nothing left behind."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "contrib/lab/lab.py"

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _root() -> None:
    # Never skipped: without root the lab cannot run, and that must show as a failure.
    if os.geteuid() != 0:
        pytest.fail("the lab builds network namespaces and needs root")


def _load_lab():
    spec = importlib.util.spec_from_file_location("moenet_lab", LAB)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["moenet_lab"] = mod
    spec.loader.exec_module(mod)
    return mod


def _wireguard_go_of(interfaces: list[str]) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if comm == "wireguard-go" and any(i in cmd for i in interfaces):
            found.append(int(p))
    return found


async def test_lab_two_nodes_establish_and_exchange_routes(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for k in [k for k in os.environ if k.startswith("MOENET_")]:
        monkeypatch.delenv(k)
    lab = _load_lab()
    result = await lab.run(True, timeout=45)
    assert result.error is None, result.error

    nodes = {n.name: n for n in result.nodes}
    n1, n2 = nodes["lab1"], nodes["lab2"]
    for n in (n1, n2):
        # The CP saw {uuid, status: 1} for the node's session.
        reports = [
            r.body for r in result.cp_requests[n.name] if r.resource == "modify" and isinstance(r.body, dict)
        ]
        assert any(b.get("uuid") == n.session_uuid and b.get("status") == 1 for b in reports), reports
        assert n.t_active is not None and n.t_established is not None
        assert n.bgp_protocol, "no Established BGP protocol"
        assert n.agent_rc == 0
    # Each learned the other's IPv4 and IPv6 prefix through its BGP protocol.
    for n, other in ((n1, n2), (n2, n1)):
        assert set(n.learned) == {other.prefix4, other.prefix6}
        for prefix, text in n.learned.items():
            assert prefix in text and n.bgp_protocol in text and f"AS{other.asn}" in text, text
            assert f"via {other.link_local} on {n.interface}" in text, text

    # Nothing left behind.
    assert result.leftovers == []
    assert result.ok
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(n.ns_name in listed for n in (n1, n2))
    ifaces = [n1.interface, n2.interface]
    assert _wireguard_go_of(ifaces) == []
    assert not any(Path(f"/var/run/wireguard/{i}.sock").exists() for i in ifaces)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_lab_script_once_exits_zero(tmp_path):
    """The command-line form (what scripts/lab runs after installing): exit 0 and a summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    env["TMPDIR"] = str(tmp_path)
    res = subprocess.run(
        [sys.executable, str(LAB), "--once", "--timeout", "45"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "QUEUED_FOR_SETUP -> ACTIVE" in res.stdout
    assert res.stdout.count("Established") >= 2
    assert "torn down; nothing left behind" in res.stdout
    assert list(tmp_path.iterdir()) == []
