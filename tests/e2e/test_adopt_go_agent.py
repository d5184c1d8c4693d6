"""Migration from the Go agent (issue 15, item 6): ``moenet-agent adopt`` takes over a
node the Go agent built, and BGP stays Established throughout.

The node is laid out exactly as the Go agent leaves it (:mod:`helpers.goagent`:
its tunnel, BIRD files and iptables rules), with an Established eBGP session to a
peer namespace. The CP speaks the Go numbering (``controlPlane.statusScheme: go``,
the session is 2 Enabled). Then:

1. ``adopt`` (dry run) lists the takeover and changes nothing (alias, files,
   iptables, state);
2. ``adopt --apply`` is refused while a Go agent process runs;
3. ``adopt --apply`` marks the tunnel, records the protocol name and moves the Go
   BIRD files aside; BIRD is not touched;
4. the agent starts and loads its own BIRD tree, opens its nftables port; a second
   ``adopt --apply`` then removes the Go iptables rules;
5. all along, a watcher samples the peer's view of the session: always
   Established with the same ``since``, the peer's BIRD logs no notification, and
   the routes stay on both sides; the wireguard-go daemon and the interface are
   the same ones;
6. the agent reports the session ``up`` with status 2 (Go's Enabled), and manages
   it: the CP queues it for delete (5), the agent removes it and reports 0 (Deleted).

And the way back: after a takeover, the rollback of docs/migration.md (its shell
lines, run as written) gives BIRD the Go agent's files again with the session
still Established with the same ``since``, and a later ``adopt`` starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.goagent import (
    BIRDC,
    NODE_ASN,
    NODE_LOOPBACK4,
    NODE_LOOPBACK6,
    NODE_PORT,
    NODE_PREFIX4,
    NODE_PREFIX6,
    PEER_ASN,
    PEER_LL,
    PEER_PORT,
    PEER_PREFIX4,
    PEER_PREFIX6,
    PEER_PROTOCOL,
    PROTOCOL,
    GoNode,
)
from moenet_bird.testing import sample_bird_config

from moenet_core.testing import FakeControlPlane

pytestmark = [pytest.mark.netns, pytest.mark.slow]

TOKEN = "go-adopt-token"
UUID = "6b1d0f9e-0a0d-4a6e-9c51-1ab0c0ffee0a"
AGENT = str(Path(sys.executable).with_name("moenet-agent"))
MIGRATION_DOC = Path(__file__).resolve().parents[2] / "docs" / "migration.md"


def session(rig: GoNode, status: int) -> dict[str, Any]:
    """The session as the Go agent's CP serves it (credential a JSON string, snake_case)."""
    return {
        "uuid": UUID,
        "asn": PEER_ASN,
        "name": "lab peer",
        "description": "",
        "status": status,
        "type": "wireguard",
        "interface": rig.iface,
        "endpoint": f"192.0.2.2:{PEER_PORT}",
        "credential": json.dumps({"public_key": rig.peer_key.public_key(), "listen_port": NODE_PORT}),
        "ipv4": "",
        "ipv6": "",
        "ipv6LinkLocal": PEER_LL,
        "mtu": 1420,
        "port": NODE_PORT,
        "localPort": 0,
        "extensions": ["mp-bgp", "extended-nexthop"],
        "policy": "",
        "lastError": "",
    }


def agent_config(rig: GoNode, cp_url: str, api_port: int) -> dict[str, Any]:
    return {
        "node": {
            "name": "gonode",
            "id": 1,
            "asn": NODE_ASN,
            "loopbackIpv4": NODE_LOOPBACK4,
            "loopbackIpv6": NODE_LOOPBACK6,
        },
        "controlPlane": {
            "url": cp_url,
            "token": TOKEN,
            "statusScheme": "go",
            "syncInterval": 2,
            "metricInterval": 2,
            "heartbeatInterval": 30,
        },
        "server": {"listen": f"127.0.0.1:{api_port}"},
        "state": {"directory": str(rig.work / "state")},
        "logging": {"format": "text", "level": "INFO"},
        "plugins": {"disable": ["mesh", "ibgp", "rtt", "heartbeat", "updater"]},
        "tasks": {"birdConfigSync": {"interval": 5}},
        "bird": {
            "configDir": str(rig.bird_dir),
            "controlSocket": str(rig.work / "bird-run" / "bird.ctl"),
        },
        "wireguard": {"backend": "userspace"},
        # No dn42Ipv6LinkLocal: derived from the loopback, as the Go agent did.
        "sessions": {"privateKeyPath": str(rig.key_file)},
        "loopback": {"kind": "bridge"},
    }


def adopt(rig: GoNode, *args: str) -> subprocess.CompletedProcess[str]:
    assert rig.node is not None
    return subprocess.run(
        ["ip", "netns", "exec", rig.node.name, AGENT, "adopt", "-c", str(rig.work / "config.json"), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


class Watcher:
    """Samples the peer's view of the session until stopped: every sample must be
    Established with one ``since``."""

    def __init__(self, rig: GoNode) -> None:
        self.rig = rig
        self.samples: list[tuple[str, str, str] | None] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        assert self.rig.peer_bird is not None
        while not self._stop.is_set():
            self.samples.append(await asyncio.to_thread(GoNode.protocol, self.rig.peer_bird, PEER_PROTOCOL))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[tuple[str, str, str] | None]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.samples


def serve_cp(rig: GoNode, cp: FakeControlPlane) -> None:
    """The Go agent's CP: the session Enabled (2), the BIRD policy, no mesh; and the
    agent's config pointing at it."""
    cp.set("sessions", {"bgpSessions": [session(rig, 2)]})  # Go: 2 Enabled
    cp.set(
        "bird-config",
        sample_bird_config(
            config_hash="go-adopt",
            node={"id": 1, "name": "gonode", "loopbackIpv4": NODE_LOOPBACK4, "loopbackIpv6": NODE_LOOPBACK6},
            policy={"dn42As": str(NODE_ASN), "dn42Ipv4Prefix": NODE_PREFIX4, "dn42Ipv6Prefix": NODE_PREFIX6},
        ),
    )
    cp.set("mesh", {"localNodeId": 1, "peers": []})
    api_port = 24390 + int(rig.suffix, 16) % 500
    (rig.work / "config.json").write_text(json.dumps(agent_config(rig, cp.url, api_port), indent=2))


async def converged(rig: GoNode) -> None:
    """The Go agent's node as it runs: Established, routes both ways."""
    assert rig.node_bird is not None and rig.peer_bird is not None
    node_bird, peer_bird = rig.node_bird, rig.peer_bird

    def established() -> tuple[str, str, str] | None:
        p = GoNode.protocol(node_bird, PROTOCOL)
        return p if p is not None and p[2] == "Established" else None

    await asyncio.to_thread(rig.wait, "the Go agent's BGP session", established, 60)
    for bird, prefixes in (
        (node_bird, (PEER_PREFIX4, PEER_PREFIX6)),
        (peer_bird, (NODE_PREFIX4, NODE_PREFIX6)),
    ):
        for prefix in prefixes:
            await asyncio.to_thread(
                rig.wait, f"route {prefix}", lambda b=bird, p=prefix: GoNode.has_route(b, p), 30
            )


def routes_both_ways(rig: GoNode) -> None:
    assert rig.node_bird is not None and rig.peer_bird is not None
    for bird, prefixes in (
        (rig.node_bird, (PEER_PREFIX4, PEER_PREFIX6)),
        (rig.peer_bird, (NODE_PREFIX4, NODE_PREFIX6)),
    ):
        for prefix in prefixes:
            assert GoNode.has_route(bird, prefix), prefix


async def start_agent(rig: GoNode, log_path: Path) -> asyncio.subprocess.Process:
    assert rig.node is not None
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", rig.node.name, AGENT, "run", "-c", str(rig.work / "config.json"),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip


async def stop_agent(agent: asyncio.subprocess.Process | None) -> None:
    if agent is None or agent.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(agent.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(agent.wait(), 30)
    except TimeoutError:
        os.killpg(agent.pid, signal.SIGKILL)
        await agent.wait()


async def taken_over(rig: GoNode, cp: FakeControlPlane) -> None:
    """The agent runs its own BIRD tree (hold released), holds the port open in
    nftables and reports the session up under the Go agent's protocol name (no
    status: the CP already holds 2 Enabled)."""
    assert rig.node is not None and rig.node_bird is not None
    node, node_bird = rig.node, rig.node_bird

    def ours_loaded() -> bool:
        peer_file = rig.bird_dir / "peers" / f"{PROTOCOL}.conf"
        live = GoNode.birdc(node_bird, "show", "protocols")
        return (
            peer_file.exists()
            and peer_file.read_text().startswith("# Generated by moenet-agent")
            and "moenet_lo" in live  # a protocol only our tree has: BIRD runs it
        )

    await asyncio.to_thread(rig.wait, "the agent's BIRD tree loaded", ours_loaded, 90)
    hold_file = rig.bird_dir / ".moenet-takeover.json"
    await asyncio.to_thread(rig.wait, "the takeover hold released", lambda: not hold_file.exists(), 30)

    def nft_open() -> bool:
        out = node.run("nft", "-j", "list", "set", "inet", "moenet_agent", "udp_ports", check=False).stdout
        return f"{NODE_PORT}" in out

    await asyncio.to_thread(rig.wait, "our nftables port", nft_open, 60)
    got = await cp.wait_for(
        "report",
        method="POST",
        where=lambda r: any(
            s.get("uuid") == UUID
            and s.get("state") == "up"
            and s.get("bgpState") == "Established"
            and [p["name"] for p in s.get("protocols", [])] == [PROTOCOL]
            and s.get("status") in (None, 2)
            for s in (r.body or {}).get("sessions", [])
        ),
        timeout=60,
    )
    assert got


def documented_rollback(rig: GoNode) -> str:
    """The shell lines of docs/migration.md's rollback, for this node's BIRD
    directory and control socket instead of ``/etc/bird`` and the default one."""
    text = MIGRATION_DOC.read_text()
    section = text[text.index("\n## Rollback\n") :]
    m = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert m is not None, "the rollback section has no sh block"
    script = m.group(1)
    assert "cd /etc/bird" in script and "birdc configure" in script, script
    sock = rig.work / "bird-run" / "bird.ctl"
    return script.replace("cd /etc/bird", f"cd {shlex.quote(str(rig.bird_dir))}").replace(
        "birdc configure", f"{shlex.quote(BIRDC)} -s {shlex.quote(str(sock))} configure"
    )


def protocol_names(rig: GoNode) -> list[str]:
    assert rig.node_bird is not None
    out = GoNode.birdc(rig.node_bird, "show", "protocols")
    return sorted(line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line[0].isdigit())


@pytest.fixture
async def rig(tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith("MOENET_")]:
        monkeypatch.delenv(k)  # the agent and adopt run as installed: plugins autoloaded
    if os.geteuid() != 0:
        pytest.fail("needs root: namespaces, wireguard-go, BIRD")
    for tool in ("wireguard-go", "wg", "iptables", "ip6tables", "nft"):
        assert shutil.which(tool), f"{tool} missing: run scripts/install-system-deps"
    r = GoNode(tmp_path)
    try:
        await asyncio.to_thread(r.up)
        yield r
    finally:
        await asyncio.to_thread(r.down)


async def test_adopt_go_agent_node_without_a_flap(rig: GoNode, tmp_path: Path) -> None:
    assert rig.node is not None and rig.node_bird is not None and rig.peer_bird is not None
    node_bird, peer_bird = rig.node_bird, rig.peer_bird

    # The Go agent's node, converged: Established, routes both ways.
    await converged(rig)
    node_since = GoNode.protocol(node_bird, PROTOCOL)
    peer_before = GoNode.protocol(peer_bird, PEER_PROTOCOL)
    assert node_since is not None and peer_before is not None and peer_before[2] == "Established"
    peer_log = Path(rig.work / "peer-bird" / "bird.log")
    log_mark = len(peer_log.read_text())
    daemon_pids, ifindex = rig.daemons(), rig.ifindex()
    assert len(daemon_pids) == 1 and ifindex is not None

    watcher = Watcher(rig)
    watcher.start()

    cp = FakeControlPlane(token=TOKEN)
    with rig.node.entered():
        await cp.start()
    reports: list[Any] = []
    cp.on_post("modify", reports.append)
    serve_cp(rig, cp)
    agent: asyncio.subprocess.Process | None = None
    log_path = rig.work / "agent.log"
    try:
        # 1. Dry run: says what it would do, changes nothing.
        files_before, rules_before = rig.files(), rig.iptables_rules()
        assert len(rules_before) == 3
        dry = await asyncio.to_thread(adopt, rig)
        assert dry.returncode == 0, dry.stderr
        assert f"would adopt {UUID} AS{PEER_ASN}: tunnel {rig.iface} (BIRD {PROTOCOL})" in dry.stdout
        for name in (
            "bird.conf",
            "filters.conf",
            "maintenance.conf",
            "blacklist.conf",
            f"peers/{PROTOCOL}.conf",
        ):
            assert f"would move the Go agent's BIRD file {name} " in dry.stdout, dry.stdout
        assert f"iptables rule moenet-dn42-{NODE_PORT}: removed once nftables has the port open" in dry.stdout
        assert "dry run: nothing changed" in dry.stdout
        # What belongs to no CP session is listed and left alone.
        assert f"left alone (no CP session): WireGuard interface {rig.orphan_iface}" in dry.stdout
        assert "left alone (no CP session): iptables rule moenet-dn42-40000" in dry.stdout
        assert rig.alias() is None
        assert rig.files() == files_before and rig.iptables_rules() == rules_before
        assert not (rig.work / "state" / "plugins" / "sessions" / "adopted.json").exists()

        # 2. Refused while the Go agent runs (a non-Python process called moenet-agent).
        fake_go = tmp_path / "moenet-agent"
        shutil.copy("/usr/bin/sleep", fake_go)
        go_proc = subprocess.Popen([str(fake_go), "600"])
        try:
            refused = await asyncio.to_thread(adopt, rig, "--apply")
            assert refused.returncode == 3, refused.stdout + refused.stderr
            assert f"the Go agent still runs (pid {go_proc.pid})" in refused.stderr
            assert rig.alias() is None and rig.files() == files_before
        finally:
            go_proc.kill()
            go_proc.wait()

        # 3. Apply: tunnel marked, protocol name kept, the Go files aside; BIRD untouched.
        applied = await asyncio.to_thread(adopt, rig, "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"done: marked {rig.iface} as the agent's" in applied.stdout
        assert rig.alias() == "moenet-agent"
        adopted = json.loads((rig.work / "state" / "plugins" / "sessions" / "adopted.json").read_text())
        assert adopted == {UUID: PROTOCOL}
        assert not (rig.bird_dir / "bird.conf").exists()
        assert (rig.bird_dir / "go-agent-backup" / "peers" / f"{PROTOCOL}.conf").read_text() == files_before[
            f"peers/{PROTOCOL}.conf"
        ]
        assert rig.iptables_rules() == rules_before  # nftables has not opened the port yet
        hold = json.loads((rig.bird_dir / ".moenet-takeover.json").read_text())
        assert hold["owner"] == "sessions" and hold["protocols"] == [PROTOCOL]
        assert GoNode.protocol(node_bird, PROTOCOL) == node_since

        # 4. The agent takes over.
        agent = await start_agent(rig, log_path)
        await taken_over(rig, cp)
        again = await asyncio.to_thread(adopt, rig, "--apply")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"adopted {UUID} AS{PEER_ASN}: tunnel {rig.iface} (BIRD {PROTOCOL})" in again.stdout
        remaining = rig.iptables_rules()
        assert len(remaining) == 1 and "moenet-dn42-40000" in remaining[0]  # not a CP session's
        orphan = rig.node.run("ip", "-o", "link", "show", "dev", rig.orphan_iface).stdout
        assert "alias" not in orphan  # untouched: neither marked nor removed
        # The session kept through all of it.
        node_after = GoNode.protocol(node_bird, PROTOCOL)
        assert node_after == node_since, (node_since, node_after)
        samples = await watcher.stop()
        assert len(samples) >= 10
        assert all(s == peer_before for s in samples), sorted({str(s) for s in samples})
        assert "Received:" not in peer_log.read_text()[log_mark:]
        routes_both_ways(rig)
        assert rig.daemons() == daemon_pids and rig.ifindex() == ifindex  # the same tunnel
        assert reports == []  # the CP already holds Enabled: nothing to say

        # 5. The agent manages it: the CP queues it for delete (Go 5).
        cp.set("sessions", {"bgpSessions": [session(rig, 5)]})
        await cp.wait_for("modify", method="POST", timeout=60)
        assert reports[0] == {"uuid": UUID, "status": 0}  # Go's Deleted
        await asyncio.to_thread(
            rig.wait, "the protocol gone", lambda: GoNode.protocol(node_bird, PROTOCOL) is None, 30
        )
        gone = rig.node.run("ip", "link", "show", "dev", rig.iface, check=False)
        assert gone.returncode != 0
        assert not json.loads((rig.work / "state" / "plugins" / "sessions" / "adopted.json").read_text())
    except BaseException:
        print("--- CP reports:", json.dumps([r.body for r in cp.calls("report")][-2:])[:3000])
        print("--- peer's view:", sorted({str(x) for x in watcher.samples}))
        if log_path.exists():
            print("--- agent log:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-60:]))
        raise
    finally:
        if not watcher._stop.is_set():
            await watcher.stop()
        await stop_agent(agent)
        await cp.stop()


async def test_documented_rollback_gives_the_node_back_to_the_go_agent(rig: GoNode) -> None:
    """docs/migration.md "Rollback", after a full takeover: stop the agent, run the
    doc's shell lines as written, drop the agent's nftables table. BIRD then runs
    the Go agent's files again (byte for byte, its protocols and no others), the
    session stays Established with the same ``since`` on both sides and no BGP
    notification, the tunnel is the same device, and ``adopt`` later starts over.

    Not covered: the Go agent's own restart (no Go binary here). Its part of the
    doc, re-adding its iptables rules on its first cycle, is its ``SyncPorts``
    (research/go-agent.md §14)."""
    assert rig.node is not None and rig.node_bird is not None and rig.peer_bird is not None
    node, node_bird, peer_bird = rig.node, rig.node_bird, rig.peer_bird
    await converged(rig)
    node_since = GoNode.protocol(node_bird, PROTOCOL)
    peer_before = GoNode.protocol(peer_bird, PEER_PROTOCOL)
    assert node_since is not None and peer_before is not None and peer_before[2] == "Established"
    go_files = {rel: text for rel, text in rig.files().items() if rel.endswith(".conf")}  # not bird.log
    go_protocols = protocol_names(rig)
    assert len(go_files) == 5, sorted(go_files)
    assert PROTOCOL in go_protocols and "moenet_lo" not in go_protocols
    peer_log = Path(rig.work / "peer-bird" / "bird.log")
    log_mark = len(peer_log.read_text())
    daemon_pids, ifindex = rig.daemons(), rig.ifindex()

    watcher = Watcher(rig)
    watcher.start()
    cp = FakeControlPlane(token=TOKEN)
    with node.entered():
        await cp.start()
    serve_cp(rig, cp)
    agent: asyncio.subprocess.Process | None = None
    log_path = rig.work / "agent.log"
    try:
        # The migration, as far as it goes: adopt, the agent's first sync, adopt again.
        applied = await asyncio.to_thread(adopt, rig, "--apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        agent = await start_agent(rig, log_path)
        await taken_over(rig, cp)
        again = await asyncio.to_thread(adopt, rig, "--apply")
        assert again.returncode == 0, again.stdout + again.stderr
        assert not [r for r in rig.iptables_rules() if f"moenet-dn42-{NODE_PORT}" in r]  # nftables has it
        assert "moenet_lo" in protocol_names(rig)

        # Rollback 1: stop the agent; tunnel and BIRD keep running.
        await stop_agent(agent)
        assert agent.returncode == 0, log_path.read_text(errors="replace")[-3000:]
        assert GoNode.protocol(node_bird, PROTOCOL) == node_since
        # Rollback 2: the doc's lines, as written.
        res = node.run("sh", "-c", documented_rollback(rig), check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        # BIRD 3 says "Reconfiguration in progress" (or "Reconfigured"), never an error.
        assert re.search(r"^Reconfigur(ed|ation in progress)$", res.stdout, re.M), res.stdout + res.stderr
        # Rollback 3 (the agent's part of it): its firewall table goes.
        node.run("nft", "delete", "table", "inet", "moenet_agent")

        # The Go agent's files are back, and nothing of the agent's is included.
        now = rig.files()
        assert {rel: now.get(rel) for rel in go_files} == go_files
        assert sorted(p.name for p in (rig.bird_dir / "peers").iterdir()) == [f"{PROTOCOL}.conf"]
        assert not [
            rel
            for rel, text in now.items()
            if "/" not in rel and rel.endswith(".conf") and text.startswith("# Generated by moenet-agent")
        ]
        # BIRD runs them: the Go agent's protocols and no others (the agent's are
        # shut down), the session with the Go file's description and filters.
        await asyncio.to_thread(
            rig.wait, "BIRD on the Go files", lambda: protocol_names(rig) == go_protocols, 30
        )
        detail = GoNode.birdc(node_bird, "show", "protocols", "all", PROTOCOL)
        assert re.search(r"^\s*Description:\s+lab peer$", detail, re.M), detail
        # Both channels (ipv4, ipv6) on the Go agent's filters again.
        assert len(re.findall(r"^\s*Input filter:\s+dn42_import_filter$", detail, re.M)) == 2, detail
        assert len(re.findall(r"^\s*Output filter:\s+dn42_export_filter$", detail, re.M)) == 2, detail
        # The session never restarted, in either direction.
        assert GoNode.protocol(node_bird, PROTOCOL) == node_since
        samples = await watcher.stop()
        assert len(samples) >= 10
        assert all(s == peer_before for s in samples), sorted({str(s) for s in samples})
        assert "Received:" not in peer_log.read_text()[log_mark:]
        routes_both_ways(rig)
        assert rig.daemons() == daemon_pids and rig.ifindex() == ifindex
        wg = node.run("wg", "show", rig.iface, "peers").stdout.split()
        assert wg == [rig.peer_key.public_key()]
        assert node.run("nft", "list", "table", "inet", "moenet_agent", check=False).returncode != 0

        # Migrating again starts over: the tunnel is checked again and the Go
        # files are to be moved (the old adoption is not taken as done).
        dry = await asyncio.to_thread(adopt, rig)
        assert dry.returncode == 0, dry.stderr
        assert f"would adopt {UUID} AS{PEER_ASN}: tunnel {rig.iface} (BIRD {PROTOCOL})" in dry.stdout, (
            dry.stdout
        )
        assert f"would move the Go agent's BIRD file peers/{PROTOCOL}.conf " in dry.stdout, dry.stdout
    except BaseException:
        print("--- peer's view:", sorted({str(x) for x in watcher.samples}))
        if log_path.exists():
            print("--- agent log:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-60:]))
        raise
    finally:
        if not watcher._stop.is_set():
            await watcher.stop()
        await stop_agent(agent)
        await cp.stop()
