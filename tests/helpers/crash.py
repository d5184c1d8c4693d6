"""A one-node rig for crash tests: a real agent process killed at named crash points.

One network namespace holding a real BIRD 3 (:class:`moenet_bird.testing.BirdDaemon`),
a :class:`~moenet_core.testing.FakeControlPlane` (listening inside the namespace) and
the installed ``moenet-agent`` with the userspace (wireguard-go) tunnel backend and
nftables. The CP serves :data:`N` eBGP sessions to peers that do not exist: each
gets a tunnel, an open port and a BGP protocol in BIRD (which never reaches
Established; a session is ACTIVE when its tunnel, port and protocol are live).

The agent is started with ``MOENET_CRASH_AT=<point>`` (:mod:`moenet_core.crashpoints`)
and must die by SIGKILL there; it is then started again without it, and
:meth:`CrashRig.converged` polls (bounded) until the node holds exactly what the CP
asks for, then :meth:`CrashRig.problems` lists every invariant that does not hold.

Like a real CP, an accepted ``modify`` report changes the session's status at once.
Every ``ACTIVE`` report is checked *when it arrives* (inside the CP's handler):
its tunnel must exist and be marked, its port open and its BGP protocol run by
BIRD, otherwise it is recorded in :attr:`CrashRig.violations`.

The node is the two-node lab's first (contrib/lab/lab.py, loaded by
:mod:`helpers.lab`): its plan, the CP's ``config`` and ``bird-config`` answers, its
agent config (with what a crash test changes) and the lab's agent starter and stopper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import attrs
from moenet_bird.testing import BirdDaemon
from moenet_wireguard import keys

from helpers.installed import clean_env
from helpers.lab import load_lab
from moenet_core.testing import FakeControlPlane, NetNS

_lab = load_lab()  # contrib/lab/lab.py
WG_RUN_DIR = Path("/var/run/wireguard")
MARKER = "moenet-agent"
N = 16
"""Sessions per rig."""
PEER_ASN = 4242421000
PORT_BASE = 52000
SYNC_INTERVAL = 2

DISABLED, ACTIVE, QUEUED_FOR_SETUP, QUEUED_FOR_DELETE, SETUP_FAILED = 0, 1, 4, 5, 6


class CrashRig:
    """See the module doc. ``async with CrashRig() as rig`` builds and tears it down."""

    def __init__(self, n: int = N) -> None:
        self.n = n
        self.work = Path(tempfile.mkdtemp(prefix="moenet-crash-"))
        self.suffix = os.urandom(2).hex()[:3]
        self.prefix = f"cr{self.suffix}-"
        self.ns: NetNS | None = None
        self.bird: BirdDaemon | None = None
        self.cp: FakeControlPlane | None = None
        self.agent: asyncio.subprocess.Process | None = None
        self.api_port = 24400 + int(self.suffix, 16) % 500
        self.node = attrs.evolve(
            _lab.plan_nodes(self.suffix)[0], name="crash1", api_port=self.api_port, dir=self.work
        )
        self.sessions: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.leftovers: list[str] = []
        self.t0 = time.monotonic()

    # ------------------------------------------------------------- paths

    @property
    def log_path(self) -> Path:
        return self.node.log_path

    @property
    def bird_dir(self) -> Path:
        return self.node.bird_dir

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    def ifname(self, k: int) -> str:
        return f"{self.prefix}{k}"

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {msg}", flush=True)

    # ------------------------------------------------------------- set-up

    async def __aenter__(self) -> CrashRig:
        try:
            await self.up()
        except BaseException:
            await self.down()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.dump_log()
        await self.down()

    async def up(self) -> None:
        self.ns = NetNS(prefix="moenet-crash")
        self.node.ns = self.ns
        key = keys.generate_private_key()
        keys.write_key_file(self.node.private_key_path, key)
        os.chmod(self.node.private_key_path, 0o600)
        (self.work / "templates").mkdir()
        self.bird = BirdDaemon(self.ns, self.work / "bird-run").start()
        cp = FakeControlPlane(token=_lab.TOKEN)
        with self.ns.entered():
            await cp.start()
        self.cp = cp
        cp.on_post("modify", self._on_report)
        cp.set("config", _lab.node_config(self.node))
        cp.set("bird-config", _lab.bird_config(self.node))
        cp.set("mesh", {"localNodeId": 1, "peers": []})
        self.publish([])
        self.node.config_path.write_text(json.dumps(self.agent_config(cp.url), indent=2))

    def agent_config(self, cp_url: str) -> dict[str, Any]:
        """The lab's config for the node, sessions only and syncing every
        :data:`SYNC_INTERVAL` seconds."""
        cfg: dict[str, Any] = _lab.agent_config(self.node, cp_url)
        # The lab writes the session keys under wireguard (the Go agent's place): here
        # they are where the sessions plugin reads them.
        wireguard = cfg["wireguard"]
        cfg["wireguard"] = {"backend": wireguard.pop("backend")}
        cfg["sessions"] = {
            **wireguard,
            # Whole batches are set up and removed at once here: no guard in the way.
            "guardMaxShare": 1.0,
            "guardWindow": 0,
        }
        cfg["plugins"] = {"disable": ["mesh", "ibgp", "rtt", "heartbeat", "updater"]}
        cfg["controlPlane"]["syncInterval"] = SYNC_INTERVAL
        return cfg

    # ------------------------------------------------------------- the CP

    def make_sessions(self, status: int = QUEUED_FOR_SETUP) -> list[dict[str, Any]]:
        """A fresh batch of :attr:`n` sessions (new uuids, the same interfaces and ports)."""
        out = []
        for k in range(1, self.n + 1):
            out.append(
                {
                    "uuid": str(uuidlib.uuid4()),
                    "asn": PEER_ASN + k,
                    "name": f"crash-peer-{k}",
                    "status": status,
                    "type": "wireguard",
                    "interface": self.ifname(k),
                    "endpoint": f"192.0.2.{100 + k}:51820",
                    "credential": {
                        "publicKey": keys.generate_private_key().public_key(),
                        "listenPort": PORT_BASE + k,
                    },
                    "ipv6LinkLocal": f"fe80::e:{k:x}",
                    "mtu": 1420,
                    "extensions": ["mp-bgp", "extended-nexthop"],
                }
            )
        return out

    def publish(self, sessions: list[dict[str, Any]]) -> None:
        """Serve ``sessions`` from now on (they are the rig's current batch)."""
        assert self.cp is not None
        self.sessions = sessions
        self.cp.set("sessions", {"bgpSessions": [dict(s) for s in sessions]})

    def set_status(self, status: int) -> None:
        for s in self.sessions:
            s["status"] = status
            s.pop("lastError", None)
        self.publish(self.sessions)

    def crowd_ports(self) -> None:
        """Narrow the namespace's ephemeral port range onto the sessions' listen ports
        (:data:`PORT_BASE` + 1 .. + 3 :attr:`n`): the automatic port a wireguard-go
        daemon binds as it starts, before it is configured, then lands on another
        session's port about every third time instead of about once in 1 800 (the
        default range is 32768-60999), so a test sees that collision every run."""
        assert self.ns is not None
        self.ns.run(
            "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={PORT_BASE + 1} {PORT_BASE + 3 * self.n}"
        )

    def port_in_use_errors(self) -> list[str]:
        """Every report ``lastError`` and agent log line about a listen port in use
        (EADDRINUSE from wireguard-go): the backend takes such ports back from its own
        unconfigured daemons, so a crash test must see none."""
        errors = [str(r["lastError"]) for r in self.reports() if "errno 98" in str(r.get("lastError") or "")]
        if self.log_path.exists():
            errors += [
                ln for ln in self.log_path.read_text(errors="replace").splitlines() if "errno 98" in ln
            ]
        return errors

    def statuses(self) -> dict[str, int]:
        return {s["uuid"]: s["status"] for s in self.sessions}

    def reports(self) -> list[dict[str, Any]]:
        assert self.cp is not None
        return [r.body for r in self.cp.calls("modify") if isinstance(r.body, dict)]

    def _on_report(self, body: Any) -> None:
        """The CP's side of an accepted report: checked, then applied to the answer."""
        if not isinstance(body, dict):
            return
        by_uuid = {s["uuid"]: s for s in self.sessions}
        s = by_uuid.get(body.get("uuid"))
        if s is None:
            return
        if body.get("status") == ACTIVE:
            for problem in self._live_problems(s):
                self.violations.append(f"ACTIVE reported for {s['interface']} ({s['uuid']}): {problem}")
        s["status"] = body.get("status")
        if body.get("lastError"):
            s["lastError"] = body["lastError"]
        else:
            s.pop("lastError", None)
        self.publish(self.sessions)

    def _live_problems(self, s: dict[str, Any]) -> list[str]:
        """What is not live for session ``s`` right now (synchronous: the CP's handler)."""
        assert self.ns is not None
        out: list[str] = []
        name, port, asn = s["interface"], s["credential"]["listenPort"], s["asn"]
        res = self.ns.run("ip", "-j", "-d", "link", "show", "dev", name, check=False)
        links = json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []
        if not links:
            out.append(f"no tunnel {name}")
        elif links[0].get("ifalias") != MARKER:
            out.append(f"tunnel {name} not marked ({links[0].get('ifalias')!r})")
        nft = self.ns.run("nft", "-j", "list", "ruleset", check=False)
        if port not in parse_udp_set(nft.stdout, "udp_ports"):
            out.append(f"port {port} not open")
        protocols = bird_bgp_protocols(self.bird_socket)
        if not any(p.startswith(f"dn42_{asn}_") for p in protocols):
            out.append(f"BIRD runs no BGP protocol for AS{asn}")
        return out

    @property
    def bird_socket(self) -> Path:
        assert self.bird is not None
        return self.bird.socket

    # ------------------------------------------------------------- the agent

    def _env(self, crash_at: str | None) -> dict[str, str]:
        # The venv's programs first, as for the agent (a console script of .venv).
        env = clean_env(PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        if crash_at:
            env["MOENET_CRASH_AT"] = crash_at
        return env

    async def start_agent(self, crash_at: str | None = None) -> asyncio.subprocess.Process:
        assert self.ns is not None
        assert self.agent is None or self.agent.returncode is not None, "the agent is running"
        with self.log_path.open("ab") as log:
            log.write(f"===== start (crash at {crash_at or 'nothing'}) =====\n".encode())
        self.agent = await _lab.spawn_agent(self.node, _lab.agent_binary(), env=self._env(crash_at))
        return self.agent

    async def stop_agent(self, timeout: float = 30.0) -> int:
        assert self.agent is not None
        try:
            rc: int = await _lab.stop_process(self.agent, timeout=timeout)
        except TimeoutError:
            self.agent.kill()
            await self.agent.wait()
            raise AssertionError("the agent did not stop on SIGTERM") from None
        return rc

    async def crash_at(self, point: str, timeout: float = 60.0) -> float:
        """Start the agent with ``MOENET_CRASH_AT=point`` and wait for it to die there;
        returns how long it ran."""
        t = time.monotonic()
        proc = await self.start_agent(point)
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await self.stop_agent()
            raise AssertionError(
                f"crash point {point} was not reached within {timeout:g} s\n{self.log_tail()}"
            ) from None
        name = point.rpartition(":")[0] or point
        assert rc == -signal.SIGKILL, f"the agent exited {rc}, not by SIGKILL at {point}"
        assert f"crash point {name} " in self.log_path.read_text(errors="replace"), (
            f"the agent was killed, but not by crash point {point}"
        )
        return time.monotonic() - t

    async def sync(self) -> dict[str, Any]:
        """One ``sessionSync`` run that starts after now (``POST /sync`` with ``wait``)."""
        assert self.ns is not None
        body = json.dumps({"task": "sessionSync", "wait": True})
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns.name, "curl", "-sf", "-m", "60", "-X", "POST",
            "-H", "Content-Type: application/json", "-d", body, f"http://127.0.0.1:{self.api_port}/sync",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"POST /sync failed ({proc.returncode}): {err.decode(errors='replace')}"
        result: dict[str, Any] = json.loads(out)["results"]["sessionSync"]
        return result

    # ------------------------------------------------------------- observing

    async def snapshot(self) -> dict[str, Any]:
        """The node as the system has it: tunnels, daemons, sockets, ports, BIRD."""
        assert self.ns is not None
        links = json.loads(self.ns.run("ip", "-j", "-d", "link", "show").stdout)
        tunnels = {
            lk["ifname"]: lk.get("ifalias")
            for lk in links
            if (lk.get("linkinfo") or {}).get("info_kind") in ("tun", "wireguard")
        }
        daemons: dict[str, list[int]] = {}
        for pid in self.ns.pids():
            if _comm(pid) == "wireguard-go":
                args = _cmdline(pid)
                daemons.setdefault(args[-1] if args else "?", []).append(pid)
        sockets = sorted(p.name.removesuffix(".sock") for p in WG_RUN_DIR.glob(f"{self.prefix}*.sock"))
        nft = self.ns.run("nft", "-j", "list", "ruleset", check=False)
        ports = parse_udp_set(nft.stdout, "udp_ports")
        peers = self.bird_dir / "peers"
        return {
            "tunnels": tunnels,
            "daemons": daemons,
            "sockets": sockets,
            "ports": ports,
            "bgp": bird_bgp_protocols(self.bird_socket),
            "peerFiles": sorted(p.name for p in peers.glob("*.conf") if not p.name.startswith("00_"))
            if peers.is_dir()
            else [],
        }

    def litter(self) -> list[str]:
        """What an interrupted agent may leave and a recovered one must have removed."""
        out: list[str] = []
        if self.bird_dir.is_dir():
            for p in _tree(self.bird_dir):
                rel = p.relative_to(self.bird_dir)
                if p.name.startswith(".moenet-staging-") or p.name.endswith(".tmp"):
                    out.append(f"bird/{rel}")
                elif p.name == ".moenet-pending-configure":
                    out.append(f"bird/{rel} (BIRD behind its files)")
        if self.state_dir.is_dir():
            for p in _tree(self.state_dir):
                if p.name.endswith(".tmp"):
                    out.append(f"state/{p.relative_to(self.state_dir)}")
            creating = self.state_dir / "plugins" / "wireguard" / "creating"
            with contextlib.suppress(FileNotFoundError):
                out += [f"unsettled create intent {p.name}" for p in creating.iterdir()]
        return out

    async def problems(self, *, removed: bool = False) -> list[str]:
        """Every invariant that does not hold now (empty: converged). Set up
        (``removed=False``): each session ACTIVE with exactly one marked tunnel, one
        wireguard-go, one BGP protocol, one open port, one peer file; removed: none
        of it. Both: nothing unowned or unsettled left, no SETUP_FAILED, no ACTIVE
        report for something that was not live."""
        snap = await self.snapshot()
        out: list[str] = []
        names = {s["interface"] for s in self.sessions}
        want_names = set() if removed else names
        want_ports = set() if removed else {s["credential"]["listenPort"] for s in self.sessions}
        want_asns = set() if removed else {s["asn"] for s in self.sessions}
        tunnels: dict[str, str | None] = snap["tunnels"]
        if set(tunnels) != want_names:
            out.append(
                f"tunnels: missing {sorted(want_names - set(tunnels))}, extra {sorted(set(tunnels) - want_names)}"
            )
        unmarked = sorted(n for n, alias in tunnels.items() if alias != MARKER)
        if unmarked:
            out.append(f"tunnels without the {MARKER!r} alias: {unmarked}")
        daemons: dict[str, list[int]] = snap["daemons"]
        if {n: len(p) for n, p in daemons.items()} != dict.fromkeys(want_names, 1):
            out.append(f"wireguard-go per interface: {dict(sorted(daemons.items()))}")
        if set(snap["sockets"]) != want_names:
            out.append(f"UAPI sockets: {snap['sockets']}")
        if snap["ports"] != want_ports:
            out.append(
                f"ports: missing {sorted(want_ports - snap['ports'])}, extra {sorted(snap['ports'] - want_ports)}"
            )
        bgp: list[str] = snap["bgp"]
        per_asn = {a: [p for p in bgp if p.startswith(f"dn42_{a}_")] for a in want_asns}
        if any(len(v) != 1 for v in per_asn.values()) or len(bgp) != len(want_asns):
            out.append(f"BGP protocols: {bgp}")
        if len(snap["peerFiles"]) != len(want_asns):
            out.append(f"peer files: {snap['peerFiles']}")
        statuses = self.statuses()
        want_status = {DISABLED} if removed else {ACTIVE}
        wrong = {u: st for u, st in statuses.items() if st not in want_status}
        if wrong:
            out.append(f"CP statuses: {wrong}")
        failed = [r for r in self.reports() if r.get("status") == SETUP_FAILED]
        if failed:
            out.append(f"SETUP_FAILED reported: {failed}")
        out += self.violations
        out += self.litter()
        return out

    async def bird_loaded(self, timeout: float = 60.0) -> None:
        """Wait until BIRD runs the agent's tree (its ``kernel4`` protocol) and no
        configure is pending: what a node that ran before has."""
        deadline = time.monotonic() + timeout
        while not (
            any(name == "kernel4" for name, _ in bird_protocols(self.bird_socket))
            and not (self.bird_dir / ".moenet-pending-configure").exists()
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"BIRD did not load the agent's tree within {timeout:g} s")
            await asyncio.sleep(0.2)

    async def converged(self, *, removed: bool = False, timeout: float = 60.0) -> float:
        """Poll (bounded) until :meth:`problems` is empty; returns the seconds it took."""
        t = time.monotonic()
        deadline = t + timeout
        while True:
            found = await self.problems(removed=removed)
            if not found:
                return time.monotonic() - t
            if self.agent is not None and self.agent.returncode is not None:
                raise AssertionError(
                    f"the agent exited {self.agent.returncode}; still wrong: {found}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not converged after {timeout:g} s: " + "; ".join(found) + "\n" + self.log_tail()
                )
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------- teardown

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no agent log)"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "--- last lines of the agent's log:\n" + "\n".join(tail)

    def dump_log(self, lines: int = 60) -> None:
        print(self.log_tail(lines), file=sys.stderr)

    async def down(self) -> None:
        keep = os.environ.get("CRASH_RIG_KEEP_LOGS")
        if keep and self.log_path.exists():
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, Path(keep) / f"agent-{self.suffix}.log")
        if self.agent is not None and self.agent.returncode is None:
            with contextlib.suppress(Exception):
                await self.stop_agent()
        if self.bird is not None:
            self.bird.stop()
        names = [self.ifname(k) for k in range(1, self.n + 1)]
        if self.ns is not None:
            for name in names:  # the agent leaves tunnels running on purpose
                self.ns.run("ip", "link", "del", name, check=False)
            wg = [p for p in self.ns.pids() if _comm(p) == "wireguard-go"]
            for pid in wg:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while any(_comm(p) for p in wg) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.ns.remove()
        if self.cp is not None:
            await self.cp.stop()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (WG_RUN_DIR / f"{name}.sock").unlink()
        shutil.rmtree(self.work, ignore_errors=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        if self.ns is not None and self.ns.name in listed:
            self.leftovers.append(f"namespace {self.ns.name}")
        self.leftovers += [str(p) for p in WG_RUN_DIR.glob(f"{self.prefix}*.sock")]


def parse_udp_set(nft_json: str, set_name: str) -> set[int]:
    """Elements of the agent's nftables set ``set_name`` (empty when absent, or when
    ``nft`` printed nothing)."""
    return _lab.parse_udp_set(nft_json, set_name) if nft_json.strip() else set()


def bird_bgp_protocols(sock: Path, timeout: float = 10.0) -> list[str]:
    """The BGP protocols BIRD runs (:func:`bird_protocols`)."""
    return sorted(name for name, proto in bird_protocols(sock, timeout) if proto == "BGP")


def bird_protocols(sock: Path, timeout: float = 10.0) -> list[tuple[str, str]]:
    """(name, protocol) of every protocol BIRD runs, from ``show protocols`` on its
    control socket (synchronous: the CP's report handler calls it). The socket is
    a path, not bound to a namespace."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        data = b""
        while not re.search(rb"(^|\n)0001 [^\n]*\n", data):  # the greeting
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError(f"BIRD closed {sock} before its greeting")
            data += chunk
        s.sendall(b"show protocols\n")
        data = b""
        while not re.search(rb"(^|\n)\d{4} [^\n]*\n$", data):  # the reply's last line
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"BIRD closed {sock} mid-reply")
            data += chunk
    out = []
    code = ""
    for line in data.decode(errors="replace").splitlines():
        if re.match(r"^\d{4}[- ]", line):
            code, text = line[:4], line[5:]
        else:
            text = line[1:]  # continues the previous code
        cols = text.split()
        if code == "1002" and len(cols) >= 2:
            out.append((cols[0], cols[1]))
    return out


def _tree(root: Path) -> list[Path]:
    """Everything under ``root``, read while the agent changes it: a directory that
    vanishes mid-walk (a staging directory being removed) is skipped, where
    ``Path.rglob`` raises FileNotFoundError."""
    out: list[Path] = []
    for top, dirs, files in os.walk(root):
        out += [Path(top) / n for n in (*dirs, *files)]
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
