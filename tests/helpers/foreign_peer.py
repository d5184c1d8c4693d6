"""The rig of ``tests/e2e/test_foreign_peer.py``: a moenet node and a foreign DN42 peer.

Two network namespaces joined by a veth "underlay" (192.0.2.1 node, 192.0.2.77 peer):

- **node**: BIRD 3 and the real agent process (``moenet-agent run -c config.json``, as
  an operator starts it, from the project's virtualenv) with a fake control plane
  listening on 127.0.0.1 inside the namespace; the CP serves one WireGuard session to
  the peer. The agent builds the tunnel (wireguard-go), the nftables port and the BGP
  session itself.
- **peer** (AS4242420077): everything by hand from ``tests/data/foreign_peer``:
  wireguard-go plus ``wg setconf`` with the hand-written ``dn42_moenet.conf`` and ``ip``
  commands for the addresses, and a BIRD started on the hand-written, wiki-style
  ``bird.conf`` straight from the data directory (nothing is rendered or substituted).

:func:`foreign_peer_lab` builds it and tears it down whatever happens: the agent
(SIGTERM, then SIGKILL), both BIRDs, the tunnels and every wireguard-go started for
them, the CP; the namespaces go with the ``netns`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
from moenet_bird.testing import BirdDaemon, sample_bird_config

from helpers.installed import clean_env, free_port
from moenet_core.testing import FakeControlPlane, NetNS, RecordedRequest, veth_pair

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "foreign_peer"
WG_RUN_DIR = Path("/var/run/wireguard")
TOKEN = "foreign-peer-cp-token"  # the throwaway token of the test's CP

STATUS_ACTIVE = 1
STATUS_QUEUED_FOR_SETUP = 4

NODE_NAME = "hkg1"
NODE_ASN = 4242421234
NODE_UNDERLAY = "192.0.2.1"
NODE_LINK_LOCAL = "fe80::1234"
NODE_LISTEN_PORT = 51820
NODE_PREFIX4 = "172.20.42.0/27"
NODE_PREFIX6 = "fd42:4242:1234::/48"

PEER_ASN = 4242420077
PEER_UNDERLAY = "192.0.2.77"
PEER_LINK_LOCAL = "fe80::77"
PEER_LISTEN_PORT = 51877
PEER_PUBLIC_KEY = "m10SQqZgppxXTzN2W9N+TZ/rub2Yp8lck0V5XKdekjo="  # of dn42_moenet.conf's key
PEER_INTERFACE = "dn42_moenet"  # as the hand-written peers/moenet.conf names it
PEER_PROTOCOL = "moenet_hkg1"
SESSION_UUID = "f0e1d2c3-0077-4a6e-9c51-1ab0c0ffee77"


@attrs.define
class ForeignPeerLab:
    """The running rig (see the module docstring)."""

    work: Path
    node_ns: NetNS
    peer_ns: NetNS
    node_bird: BirdDaemon
    peer_bird: BirdDaemon
    cp: FakeControlPlane
    node_interface: str
    api_port: int
    agent: asyncio.subprocess.Process | None = None
    peer_wg: subprocess.Popen[bytes] | None = None
    peer_wg_name: str = ""
    session_status: int = STATUS_QUEUED_FOR_SETUP

    @property
    def agent_log(self) -> Path:
        return self.work / "agent.log"

    @property
    def agent_config_path(self) -> Path:
        return self.work / "config.json"

    # ------------------------------------------------------------ the CP's answers

    def session(self) -> dict[str, Any]:
        """The node's session to the foreign peer, as the CP lists it."""
        return {
            "uuid": SESSION_UUID,
            "asn": PEER_ASN,
            "name": "as77-foreign",
            "status": self.session_status,
            "type": "wireguard",
            "interface": self.node_interface,
            "endpoint": f"{PEER_UNDERLAY}:{PEER_LISTEN_PORT}",
            "credential": {"publicKey": PEER_PUBLIC_KEY, "listenPort": NODE_LISTEN_PORT},
            "ipv6LinkLocal": PEER_LINK_LOCAL,
            "mtu": 1420,
            "extensions": ["mp-bgp", "extended-nexthop"],
        }

    def publish(self) -> None:
        self.cp.set("sessions", {"bgpSessions": [self.session()]})

    def take_report(self, body: Any) -> None:
        """Like a real CP: an accepted report sets the session's status it serves."""
        if (
            isinstance(body, dict)
            and body.get("uuid") == SESSION_UUID
            and isinstance(body.get("status"), int)
        ):
            self.session_status = body["status"]
            self.publish()

    async def wait_reported(self, status: int, timeout: float = 90.0) -> RecordedRequest:
        """The agent's first ``modify`` report of ``status`` for the session (fails
        at once if the agent exits)."""

        def match(r: RecordedRequest) -> bool:
            return (
                isinstance(r.body, dict)
                and r.body.get("uuid") == SESSION_UUID
                and r.body.get("status") == status
            )

        [report, *_] = await self.watch(
            self.cp.wait_for("modify", method="POST", where=match, timeout=timeout)
        )
        return report

    async def watch(self, aw: Any) -> Any:
        """Await ``aw``, failing fast when the agent exits meanwhile."""
        assert self.agent is not None
        main = asyncio.ensure_future(aw)
        exited = asyncio.ensure_future(self.agent.wait())
        try:
            done, _ = await asyncio.wait({main, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if main not in done:
            main.cancel()
            raise AssertionError(f"the agent exited {self.agent.returncode}: {self.log_tail()}")
        return main.result()

    # ------------------------------------------------------------ observations

    async def birdc(self, which: str, *args: str, check: bool = True) -> str:
        """``birdc`` in the node's or the peer's namespace, as an operator types it."""
        ns, bird = (self.node_ns, self.node_bird) if which == "node" else (self.peer_ns, self.peer_bird)
        return await host_cmd(
            "ip", "netns", "exec", ns.name, "birdc", "-s", str(bird.socket), *args, check=check
        )

    async def kernel_routes(self, family: str) -> list[dict[str, Any]]:
        """The node's kernel routes installed by BIRD (``ip -j -<family> route show proto bird``)."""
        out = await host_cmd(
            "ip", "-n", self.node_ns.name, "-j", f"-{family}", "route", "show", "proto", "bird"
        )
        return json.loads(out) if out.strip() else []

    async def poll(self, what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
        """Bounded poll of BIRD or kernel state (no push interface): every 0.25 s."""
        deadline = time.monotonic() + timeout
        while True:
            result = await check()
            if result:
                return result
            if self.agent is not None and self.agent.returncode is not None:
                raise AssertionError(f"the agent exited {self.agent.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.25)

    def leftovers(self) -> list[str]:
        """wireguard-go processes or control sockets of the rig's tunnels still there."""
        names = [n for n in (self.node_interface, self.peer_wg_name) if n]
        left = [str(WG_RUN_DIR / f"{n}.sock") for n in names if (WG_RUN_DIR / f"{n}.sock").exists()]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _comm(int(proc.name)) == "wireguard-go":
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    if any(n.encode() in argv for n in names):
                        left.append(f"wireguard-go pid {proc.name}")
        return left

    def log_tail(self, lines: int = 40) -> str:
        if not self.agent_log.exists():
            return "(no agent log)"
        return "\n".join(self.agent_log.read_text(errors="replace").splitlines()[-lines:])


async def host_cmd(*args: str, check: bool = True, timeout: float = 20.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {text}")
    return text


def node_bird_config() -> dict[str, Any]:
    """The CP's ``bird-config`` for the node: its AS and prefixes, HK, and **no**
    ``roaMode`` and no RTR cache, so the ROA mode is the default (strict) and the only
    ROA source is the local ``bird.roaFiles``."""
    data = sample_bird_config(
        config_hash="foreign-peer",
        node={"id": 3, "name": NODE_NAME, "loopbackIpv4": "172.20.42.1", "loopbackIpv6": "fd42:4242:1234::1"},
        policy={"dn42As": str(NODE_ASN), "dn42Ipv4Prefix": NODE_PREFIX4, "dn42Ipv6Prefix": NODE_PREFIX6},
    )
    del data["policy"]["roaMode"]  # sample_bird_config sends loose for labs without ROAs
    assert data["policy"]["rpkiServers"] == []
    return data


def agent_config(lab: ForeignPeerLab, key_path: Path) -> dict[str, Any]:
    """The node's local ``config.json`` (bootstrap mode): the static ROA files of the
    data directory, no ``bird.roaMode`` (the default applies)."""
    return {
        "bootstrap": {"apiUrl": lab.cp.url, "nodeName": NODE_NAME, "token": TOKEN},
        "server": {"listen": f"127.0.0.1:{lab.api_port}"},
        "state": {"directory": str(lab.work / "state")},
        "logging": {"format": "text", "level": "INFO"},
        "controlPlane": {"syncInterval": 5, "heartbeatInterval": 30},
        "bird": {
            "configDir": str(lab.work / "bird"),
            "controlSocket": str(lab.node_bird.socket),
            "roaFiles": [str(DATA / "dn42_roa4.conf"), str(DATA / "dn42_roa6.conf")],
        },
        "sessions": {"privateKeyPath": str(key_path), "dn42Ipv6LinkLocal": NODE_LINK_LOCAL},
        "wireguard": {"backend": "userspace"},
        # This kernel (like many VPS kernels) has no dummy driver; a bridge works everywhere.
        "loopback": {"kind": "bridge"},
    }


def agent_env() -> dict[str, str]:
    """The agent's environment: no ``MOENET_*`` of the test run, and the virtualenv
    running the tests (``scripts/setup-dev``) first on ``PATH``, so ``moenet-agent``
    is its installed console script."""
    venv_bin = str(Path(sys.executable).parent)
    return clean_env(PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")


async def _peer_wireguard(lab: ForeignPeerLab) -> None:
    """The peer's tunnel, by hand: wireguard-go, ``wg setconf`` with the hand-written
    file, then the interface renamed to the name the peer's BIRD config uses.

    wireguard-go's control socket (``/var/run/wireguard/<name>.sock``) is shared by
    every namespace, so the link starts under a unique name and is renamed inside
    the peer's namespace once configured.
    """
    lab.peer_wg_name = "wgfp" + secrets.token_hex(4)
    with (lab.work / "peer-wireguard-go.log").open("ab") as log:
        lab.peer_wg = subprocess.Popen(
            ["ip", "netns", "exec", lab.peer_ns.name, "wireguard-go", "-f", lab.peer_wg_name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    sock = WG_RUN_DIR / f"{lab.peer_wg_name}.sock"

    async def ready() -> bool:
        assert lab.peer_wg is not None
        if lab.peer_wg.poll() is not None:
            raise AssertionError(f"wireguard-go exited {lab.peer_wg.returncode}")
        return sock.exists()

    await lab.poll(f"wireguard-go's socket {sock}", ready, timeout=20)
    ns = lab.peer_ns.name
    await host_cmd(
        "ip", "netns", "exec", ns, "wg", "setconf", lab.peer_wg_name, str(DATA / "dn42_moenet.conf")
    )
    # The MTU before the rename: wireguard-go looks its link up by the first name
    # (it logs an error for later link events and keeps 1420, its default, too).
    await host_cmd("ip", "-n", ns, "link", "set", lab.peer_wg_name, "mtu", "1420")
    await host_cmd("ip", "-n", ns, "link", "set", lab.peer_wg_name, "name", PEER_INTERFACE)
    await host_cmd("ip", "-n", ns, "addr", "add", f"{PEER_LINK_LOCAL}/64", "dev", PEER_INTERFACE)
    await host_cmd("ip", "-n", ns, "link", "set", PEER_INTERFACE, "up")


async def _stop_process(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def _teardown(lab: ForeignPeerLab) -> None:
    if lab.agent is not None:
        await _stop_process(lab.agent)
    lab.node_bird.stop()
    lab.peer_bird.stop()
    # The agent leaves its tunnel up on purpose (no flap across restarts): delete it,
    # and end the wireguard-go the agent started for it (found in the node's namespace).
    await host_cmd("ip", "-n", lab.node_ns.name, "link", "del", lab.node_interface, check=False)
    node_wg = [p for p in lab.node_ns.pids() if _comm(p) == "wireguard-go"]
    for pid in node_wg:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if lab.peer_wg is not None and lab.peer_wg.poll() is None:
        lab.peer_wg.terminate()
        try:
            lab.peer_wg.wait(10)
        except subprocess.TimeoutExpired:
            lab.peer_wg.kill()
            lab.peer_wg.wait(10)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in node_wg) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # bounded wait for processes to exit (no event to wait on)
    for name in (lab.node_interface, lab.peer_wg_name):
        if name:
            with contextlib.suppress(FileNotFoundError):
                (WG_RUN_DIR / f"{name}.sock").unlink()
    await lab.cp.stop()


@contextlib.asynccontextmanager
async def foreign_peer_lab(netns: Callable[[], NetNS], tmp_path: Path) -> AsyncIterator[ForeignPeerLab]:
    """Build the rig, start the agent, yield; tear everything down on the way out."""
    work = tmp_path / "lab"
    work.mkdir()
    node_ns, peer_ns = netns(), netns()
    veth_pair(node_ns, peer_ns, "underlay", "underlay")
    node_ns.run("ip", "addr", "add", f"{NODE_UNDERLAY}/24", "dev", "underlay")
    peer_ns.run("ip", "addr", "add", f"{PEER_UNDERLAY}/24", "dev", "underlay")
    # The peer's loopbacks (the wiki's OWNIP / OWNIPv6, the kernel protocols' prefsrc).
    peer_ns.run("ip", "addr", "add", "172.20.77.1/32", "dev", "lo")
    peer_ns.run("ip", "addr", "add", "fd42:77::1/128", "dev", "lo")

    lab = ForeignPeerLab(
        work=work,
        node_ns=node_ns,
        peer_ns=peer_ns,
        node_bird=BirdDaemon(node_ns, work / "node-bird"),
        peer_bird=BirdDaemon(peer_ns, work / "peer-bird"),
        cp=FakeControlPlane(token=TOKEN),
        node_interface="dn42-fp" + secrets.token_hex(2)[:3],
        api_port=free_port(),
    )
    try:
        await _peer_wireguard(lab)
        lab.peer_bird.start(DATA / "bird.conf")
        lab.node_bird.start()
        # The CP listens on 127.0.0.1 inside the node's namespace, where the agent asks it.
        with node_ns.entered():
            await lab.cp.start()
        lab.cp.on_post("modify", lab.take_report)
        lab.cp.set(
            "config",
            {
                "node": {
                    "id": 3,
                    "name": NODE_NAME,
                    "asn": NODE_ASN,
                    "loopbackIpv4": "172.20.42.1",
                    "loopbackIpv6": "fd42:4242:1234::1",
                }
            },
        )
        lab.cp.set("bird-config", node_bird_config())
        lab.cp.set("mesh", {"localNodeId": 3, "peers": []})
        lab.publish()
        key = work / "wg-private.key"
        shutil.copy(DATA / "node-wg.key", key)
        key.chmod(0o600)
        lab.agent_config_path.write_text(json.dumps(agent_config(lab, key), indent=2))
        with lab.agent_log.open("ab") as log:
            lab.agent = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", node_ns.name, "moenet-agent", "run", "-c", str(lab.agent_config_path),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=agent_env(),
            )  # fmt: skip
        yield lab
    except BaseException:
        print(f"--- last lines of the agent's log:\n{lab.log_tail()}", file=sys.stderr)
        for bird in (lab.node_bird, lab.peer_bird):
            print(f"--- {bird.dir.name}:\n{bird.read_log()[-4000:]}", file=sys.stderr)
        raise
    finally:
        await _teardown(lab)
