"""A two-node DN42 lab on this machine: two namespaces, two BIRDs, two agents, WireGuard between them.

Builds two network namespaces joined by a veth pair (the "underlay",
192.0.2.1/24 and 192.0.2.2/24). In each runs a real BIRD 3
(:class:`moenet_bird.testing.BirdDaemon`), the installed ``moenet-agent`` and a
small test control plane (:class:`moenet_core.testing.FakeControlPlane`, one per
node, listening on 127.0.0.1 *inside* that node's namespace). Each CP serves its
node a config, a BIRD policy (eBGP: different ASNs) and one WireGuard session to
the other node in ``QUEUED_FOR_SETUP``.

The lab then shows progress: each session reported ``ACTIVE`` to the CP (which
then holds the session as ACTIVE, like a real CP would), BGP ``Established`` in
both BIRDs, and each node's IPv4 and IPv6 prefix learned by the other over BGP;
it prints a summary with the times from start. ``--once`` tears everything down
after the checks; otherwise it runs until Ctrl-C. Teardown: agents SIGTERM,
BIRDs stopped, the tunnels deleted (the agent leaves tunnels running on purpose),
any wireguard-go left killed, namespaces and the work directory removed, and
then verified: nothing is left behind.

For tests (``tests/e2e/test_lab*.py``) the :class:`Lab` also changes what a node's CP
answers (:meth:`Lab.set_session_status`, extra sessions to peers that do not exist
with :meth:`Lab.extra_session` / :meth:`Lab.set_extra_sessions`, or any raw list
with :meth:`Lab.set_sessions`) and observes a node (its links, nftables ports, BIRD
files and protocols, wireguard-go processes, the agent's ``/status``). Teardown
removes the extra sessions' tunnels too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_wireguard import keys

from moenet_core.testing import FakeControlPlane, NetNS, RecordedRequest, veth_pair
from moenet_core.testing.netns import have_root

TOKEN = "lab-cp-token"  # noqa: S105 - a throwaway token for the local lab CPs
WG_RUN_DIR = Path("/var/run/wireguard")
STATUS_QUEUED_FOR_SETUP = 4
STATUS_ACTIVE = 1
#: What the agent accepts as an interface name (moenet_sessions.model.IFNAME_RE): only
#: such names are ever used in teardown paths (``/var/run/wireguard/<name>.sock``).
SAFE_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


@attrs.define
class Node:
    """One lab node's fixed plan and, once running, its processes."""

    index: int
    name: str
    asn: int
    underlay: str
    loopback4: str
    loopback6: str
    prefix4: str
    prefix6: str
    link_local: str
    interface: str
    listen_port: int
    api_port: int
    session_uuid: str
    # runtime
    dir: Path = Path()
    ns: NetNS | None = None
    bird: BirdDaemon | None = None
    cp: FakeControlPlane | None = None
    agent: asyncio.subprocess.Process | None = None
    agent_rc: int | None = None
    public_key: str = ""
    t_active: float | None = None
    t_established: float | None = None
    bgp_protocol: str = ""
    learned: dict[str, str] = attrs.field(factory=dict)
    status: int = STATUS_QUEUED_FOR_SETUP
    """The status the CP serves the node's own session with."""
    last_error: str | None = None
    """The ``lastError`` the CP serves with the node's own session (None: the key is absent)."""
    extras: list[Any] = attrs.field(factory=list)
    """Extra sessions the CP serves after the node's own (see :meth:`Lab.set_extra_sessions`);
    normally session dicts, but anything JSON-able is served as it is."""
    extra_interfaces: list[str] = attrs.field(factory=list)
    """Every (safe) interface name an extra session was given: teardown deletes them."""

    @property
    def ns_name(self) -> str:
        assert self.ns is not None
        return self.ns.name

    @property
    def private_key_path(self) -> Path:
        return self.dir / "wg-private.key"

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    @property
    def bird_dir(self) -> Path:
        """The agent's ``bird.configDir`` (``peers/`` holds one file per session)."""
        return self.dir / "bird"

    @property
    def config_path(self) -> Path:
        """The agent's local config file (:func:`agent_config`)."""
        return self.dir / "config.json"

    @property
    def interfaces(self) -> list[str]:
        """The node's own tunnel name and every extra session's."""
        return [self.interface, *self.extra_interfaces]


def plan_nodes(suffix: str) -> list[Node]:
    """The two nodes. ``suffix`` keeps interface names unique if two labs run at once."""
    return [
        Node(
            index=1,
            name="lab1",
            asn=4242420010,
            underlay="192.0.2.1",
            loopback4="172.20.10.1",
            loopback6="fd42:10::1",
            prefix4="172.20.10.0/27",
            prefix6="fd42:10::/48",
            link_local="fe80::10",
            interface=f"dn42-n1{suffix}",
            listen_port=51821,
            api_port=24371,
            session_uuid="6b1d0f9e-0001-4a6e-9c51-1ab0c0ffee01",
        ),
        Node(
            index=2,
            name="lab2",
            asn=4242420020,
            underlay="192.0.2.2",
            loopback4="172.20.20.1",
            loopback6="fd42:20::1",
            prefix4="172.20.20.0/27",
            prefix6="fd42:20::/48",
            link_local="fe80::20",
            interface=f"dn42-n2{suffix}",
            listen_port=51822,
            api_port=24372,
            session_uuid="6b1d0f9e-0002-4a6e-9c51-1ab0c0ffee02",
        ),
    ]


# ------------------------------------------------------------------ CP answers


def node_config(n: Node) -> dict[str, Any]:
    """The CP's ``config`` answer (bootstrap mode merges it under the local file)."""
    return {
        "node": {
            "id": n.index,
            "name": n.name,
            "region": "eu-central",
            "asn": n.asn,
            "loopbackIpv4": n.loopback4,
            "loopbackIpv6": n.loopback6,
        },
    }


def bird_config(n: Node) -> dict[str, Any]:
    """The CP's ``bird-config`` answer for node ``n``."""
    return sample_bird_config(
        config_hash=f"lab-{n.name}",
        node={
            "id": n.index,
            "name": n.name,
            "regionCode": "EU",
            "loopbackIpv4": n.loopback4,
            "loopbackIpv6": n.loopback6,
            "continentLc": "LC_ORIGIN_EU",
            "subregionLc": "EU_W",
            "regionCommunity": "DN42_REGION_EU",
            "countryCommunity": 276,
        },
        policy={"dn42As": str(n.asn), "dn42Ipv4Prefix": n.prefix4, "dn42Ipv6Prefix": n.prefix6},
    )


def session_for(n: Node, other: Node, status: int) -> dict[str, Any]:
    """``n``'s session to ``other``: WireGuard over the underlay, MP-BGP over link-local."""
    session = {
        "uuid": n.session_uuid,
        "asn": other.asn,
        "name": f"lab-{other.name}",
        "status": status,
        "type": "wireguard",
        "interface": n.interface,
        "endpoint": f"{other.underlay}:{other.listen_port}",
        "credential": {"publicKey": other.public_key, "listenPort": n.listen_port},
        "ipv6LinkLocal": other.link_local,
        "mtu": 1420,
        "extensions": ["mp-bgp", "extended-nexthop"],
    }
    if n.last_error is not None:
        session["lastError"] = n.last_error
    return session


def agent_config(n: Node, cp_url: str) -> dict[str, Any]:
    """The node's local ``config.json`` (bootstrap mode; local settings win over the CP's)."""
    bird_dir = n.bird_dir
    return {
        "bootstrap": {"apiUrl": cp_url, "nodeName": n.name, "token": TOKEN},
        "server": {"listen": f"127.0.0.1:{n.api_port}"},
        "state": {"directory": str(n.dir / "state")},
        "logging": {"format": "text", "level": "INFO"},
        "controlPlane": {"syncInterval": 5, "heartbeatInterval": 30},
        "tasks": {"birdConfigSync": {"interval": 5}},
        "bird": {
            "configDir": str(bird_dir),
            "controlSocket": str(n.dir / "bird-run" / "bird.ctl"),
            # Empty: the packaged templates apply. Tests drop overrides here (fault injection).
            "templateDir": str(n.dir / "templates"),
        },
        "wireguard": {
            "backend": "userspace",
            "privateKeyPath": str(n.private_key_path),
            "dn42Ipv6LinkLocal": n.link_local,
        },
        # This kernel (like many VPS kernels) has no dummy driver; a bridge works everywhere.
        "loopback": {"kind": "bridge"},
    }


# ------------------------------------------------------------------ the agent process


def agent_binary() -> str:
    """The installed agent: the one next to this Python (the venv's), else the one on PATH."""
    sibling = Path(sys.executable).with_name("moenet-agent")
    return str(sibling) if sibling.exists() else (shutil.which("moenet-agent") or "moenet-agent")


async def spawn_agent(
    n: Node, agent_bin: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start ``agent_bin run -c`` ``n``'s config in ``n``'s namespace, appending to its log
    (``env``: the agent's environment; None, this process's)."""
    with n.log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, agent_bin, "run", "-c", str(n.config_path),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
        )  # fmt: skip


async def stop_process(
    proc: asyncio.subprocess.Process, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0
) -> int:
    """Send ``sig`` to ``proc`` (unless it exited) and wait for it to exit; its exit code
    (:class:`TimeoutError` after ``timeout``, the process left running)."""
    if proc.returncode is None:
        proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), timeout)


# ------------------------------------------------------------------ the lab


def say(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.2f}s] {msg}", flush=True)


class Lab:
    def __init__(self, *, timeout: float = 90.0, keep_logs: Path | None = None) -> None:
        self.timeout = timeout
        self.keep_logs = keep_logs
        self.work = Path(tempfile.mkdtemp(prefix="moenet-lab-"))
        self.suffix = os.urandom(2).hex()[:3]
        self.nodes = plan_nodes(self.suffix)
        self._extras = 0
        self.t0 = time.monotonic()
        self.agent_bin = agent_binary()
        self.birdc_bin = shutil.which("birdc") or "/opt/moenet-bird3/bin/birdc"
        self.ns_names: list[str] = []
        self.leftovers: list[str] = []

    def log(self, msg: str) -> None:
        say(msg, self.t0)

    # -------------------------------------------------------------- setup

    async def up(self) -> None:
        n1, n2 = self.nodes
        for n in self.nodes:
            n.dir = self.work / n.name
            n.dir.mkdir(parents=True)
            (n.dir / "templates").mkdir()
            n.ns = NetNS(prefix="moenet-lab")
            self.ns_names.append(n.ns.name)
            key = keys.generate_private_key()
            keys.write_key_file(n.private_key_path, key)
            os.chmod(n.private_key_path, 0o600)
            n.public_key = key.public_key()
        assert n1.ns is not None and n2.ns is not None
        veth_pair(n1.ns, n2.ns, "veth-lab", "veth-lab")
        for n in self.nodes:
            assert n.ns is not None
            n.ns.run("ip", "addr", "add", f"{n.underlay}/24", "dev", "veth-lab")
        self.log(
            f"namespaces {n1.ns_name} ({n1.underlay}) <-> {n2.ns_name} ({n2.underlay}), work dir {self.work}"
        )
        for n in self.nodes:
            assert n.ns is not None
            n.bird = BirdDaemon(n.ns, n.dir / "bird-run").start()
            cp = FakeControlPlane(token=TOKEN)
            # The CP's listening socket is created while this thread is in the node's
            # namespace, so it serves 127.0.0.1 *there*; the event loop serves it from anywhere.
            with n.ns.entered():
                await cp.start()
            n.cp = cp
            # Like a real CP, an accepted report changes the session's status at once.
            cp.on_post("modify", lambda body, n=n: self.apply_report(n, body))
            cp.set("config", node_config(n))
            cp.set("bird-config", bird_config(n))
            # Each lab node is a one-node network of its own: no mesh peers.
            cp.set("mesh", {"localNodeId": n.index, "peers": []})
            n.status = STATUS_QUEUED_FOR_SETUP
            self.publish(n)
            n.config_path.write_text(json.dumps(agent_config(n, cp.url), indent=2))
        self.log(
            "BIRDs running; control planes serving config, bird-config and one QUEUED_FOR_SETUP session each"
        )
        self.t0 = time.monotonic()  # times are measured from the agents' start
        for n in self.nodes:
            await self.start_agent(n)
            self.log(
                f"{n.name}: agent pid {n.agent.pid} (AS{n.asn}, {n.prefix4} + {n.prefix6}, "
                f"tunnel {n.interface} :{n.listen_port}, log {n.log_path})"
            )

    async def start_agent(self, n: Node) -> asyncio.subprocess.Process:
        """Start ``n``'s agent (again) in its namespace, appending to its log."""
        assert n.agent is None or n.agent.returncode is not None, f"{n.name}'s agent is running"
        n.agent = await spawn_agent(n, self.agent_bin)
        return n.agent

    async def stop_agent(self, n: Node, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` to ``n``'s agent and wait for it to exit; returns its exit code."""
        assert n.agent is not None
        rc = await stop_process(n.agent, sig, timeout)
        self.log(f"{n.name}: agent exited {rc} after {sig.name}")
        return rc

    # -------------------------------------------------------------- the CP's answers

    def other(self, n: Node) -> Node:
        return next(x for x in self.nodes if x is not n)

    def session_list(self, n: Node) -> list[dict[str, Any]]:
        """What ``n``'s CP serves: its own session (with ``n.status``), then ``n.extras``."""
        return [session_for(n, self.other(n), n.status), *n.extras]

    def publish(self, n: Node) -> None:
        """Serve :meth:`session_list` from ``n``'s CP from now on."""
        self.set_sessions(n, self.session_list(n))

    def set_sessions(self, n: Node, sessions: list[Any]) -> None:
        """Serve exactly ``sessions`` (raw, anything JSON-able) until the next :meth:`publish`."""
        assert n.cp is not None
        n.cp.set("sessions", {"bgpSessions": sessions})

    def set_session_status(self, n: Node, status: int) -> None:
        """Make ``n``'s CP answer its session with ``status`` from now on."""
        n.status = status
        self.publish(n)

    def set_extra_sessions(self, n: Node, extras: list[Any]) -> None:
        """Serve ``extras`` after ``n``'s own session from now on (``[]``: none)."""
        n.extras = list(extras)
        self.publish(n)

    def set_extra_status(self, n: Node, uuid: str, status: int, last_error: str | None = None) -> None:
        """Serve one extra session with ``status`` (and ``lastError``, removed when None)."""
        found = [s for s in n.extras if isinstance(s, dict) and s.get("uuid") == uuid]
        assert found, f"no extra session {uuid} on {n.name}"
        for s in found:
            s["status"] = status
            if last_error is None:
                s.pop("lastError", None)
            else:
                s["lastError"] = last_error
        self.publish(n)

    def apply_report(self, n: Node, body: Any) -> None:
        """The CP's side of an accepted ``modify`` (see ``FakeControlPlane.on_post``):
        a report for a session the CP serves sets its status and ``lastError``;
        anything else (a removed or hand-set session, a malformed body) is ignored."""
        if not isinstance(body, dict) or not isinstance(body.get("uuid"), str):
            return
        if body["uuid"] == n.session_uuid or any(
            isinstance(s, dict) and s.get("uuid") == body["uuid"] for s in n.extras
        ):
            self.accept_report(n, body)

    def accept_report(self, n: Node, report: dict[str, Any]) -> None:
        """Take one of the agent's ``modify`` bodies like a real CP: from now on the
        session is served with the reported ``status`` and ``lastError``.

        The lab's CPs do this on every accepted report (:meth:`apply_report`); tests
        call it again harmlessly. (An agent whose report the CP accepts but does not
        reflect in its answer sends it again, with growing pauses.)
        """
        uuid, status, last_error = report["uuid"], report["status"], report.get("lastError")
        if uuid == n.session_uuid:
            n.status, n.last_error = status, last_error
            self.publish(n)
        else:
            self.set_extra_status(n, uuid, status, last_error)

    def extra_session(self, n: Node, status: int = STATUS_QUEUED_FOR_SETUP, **fields: Any) -> dict[str, Any]:
        """A fresh, valid session of ``n`` to a peer that does not exist (not served yet).

        Its own uuid, a new public key, interface ``dn42-e<k><suffix>``, listen port
        ``51900 + k``, an endpoint on the underlay nobody answers, link-local
        ``fe80::e:<k>`` and AS ``4242420100 + k``; ``fields`` replace top-level keys
        (the result is a plain dict: a test may change or delete anything). The tunnel
        and BIRD protocol come up, BGP never reaches Established.
        """
        self._extras += 1
        k = self._extras
        interface = f"dn42-e{k}{self.suffix}"
        session: dict[str, Any] = {
            "uuid": str(uuidlib.uuid4()),
            "asn": 4242420100 + k,
            "name": f"lab-extra-{k}",
            "status": status,
            "type": "wireguard",
            "interface": interface,
            "endpoint": f"192.0.2.{100 + k % 150}:51820",
            "credential": {"publicKey": keys.generate_private_key().public_key(), "listenPort": 51900 + k},
            "ipv6LinkLocal": f"fe80::e:{k:x}",
            "mtu": 1420,
            "extensions": ["mp-bgp", "extended-nexthop"],
        }
        session.update(fields)
        for name in (interface, session.get("interface")):
            if isinstance(name, str) and SAFE_IFNAME.fullmatch(name) and name not in n.extra_interfaces:
                n.extra_interfaces.append(name)
        return session

    # -------------------------------------------------------------- checks

    async def wait_active(self, n: Node, other: Node) -> None:
        assert n.cp is not None

        def active(r: RecordedRequest) -> bool:
            b = r.body
            return (
                isinstance(b, dict) and b.get("uuid") == n.session_uuid and b.get("status") == STATUS_ACTIVE
            )

        await self._watch(n, n.cp.wait_for("modify", where=active, timeout=self.timeout))
        n.t_active = time.monotonic() - self.t0
        # Like a real CP: the session now is ACTIVE.
        n.status, n.last_error = STATUS_ACTIVE, None
        self.publish(n)
        self.log(f"{n.name}: session {n.session_uuid[:8]} QUEUED_FOR_SETUP -> ACTIVE (CP updated)")

    async def _watch(self, n: Node, aw: Any) -> Any:
        """Await ``aw`` but fail fast if an agent exits."""
        main = asyncio.ensure_future(aw)
        exits = [asyncio.ensure_future(x.agent.wait()) for x in self.nodes if x.agent is not None]
        try:
            done, _ = await asyncio.wait({main, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in exits:
                f.cancel()
        if main not in done:
            main.cancel()
            dead = [(x.name, x.agent.returncode) for x in self.nodes if x.agent is not None]
            name, rc = next(((nm, rc) for nm, rc in dead if rc is not None), ("?", None))
            raise LabError(f"agent of {name} exited {rc}")
        return main.result()

    async def birdc(self, n: Node, *args: str) -> str:
        assert n.bird is not None
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, self.birdc_bin, "-s", str(n.bird.socket), *args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        return out.decode(errors="replace")

    async def links(self, n: Node) -> list[dict[str, Any]]:
        """``ip -j -d link show`` in ``n``'s namespace."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "-n", n.ns_name, "-j", "-d", "link", "show",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        if proc.returncode != 0:
            raise LabError(f"ip link show in {n.ns_name} failed: {err.decode(errors='replace')}")
        links: list[dict[str, Any]] = json.loads(out)
        return links

    async def open_ports(self, n: Node) -> set[int]:
        """The agent's nftables UDP port set in ``n`` (empty when the table or set is absent)."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, "nft", "-j", "list", "ruleset",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        if proc.returncode != 0:
            raise LabError(f"nft list ruleset in {n.ns_name} failed: {err.decode(errors='replace')}")
        return parse_udp_set(out.decode(), SESSIONS_SET)

    def bird_files(self, n: Node) -> list[Path]:
        """Every file under ``n``'s BIRD config directory."""
        if not n.bird_dir.exists():
            return []
        return sorted(p for p in n.bird_dir.rglob("*") if p.is_file())

    def peer_files(self, n: Node) -> list[Path]:
        """Per-session peer files (``00_moenet.conf`` is the routing backend's placeholder)."""
        d = n.bird_dir / "peers"
        if not d.exists():
            return []
        return sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("00_"))

    async def bgp_protocols(self, n: Node) -> dict[str, dict[str, str]]:
        """BIRD's ``show protocols``: BGP protocol name -> {state, since, info}."""
        out: dict[str, dict[str, str]] = {}
        for line in (await self.birdc(n, "show", "protocols")).splitlines():
            cols = line.split()
            if len(cols) >= 5 and cols[1] == "BGP":
                # Name Proto Table State Since... Info (since may be "date time")
                out[cols[0]] = {"state": cols[3], "since": " ".join(cols[4:-1]), "info": cols[-1]}
        return out

    def wireguard_go(self, n: Node, interface: str | None = None) -> list[int]:
        """wireguard-go processes serving ``interface`` (default: any of ``n``'s)."""
        names = [interface] if interface else n.interfaces
        return [
            p
            for p in _all_pids()
            if _comm(p) == "wireguard-go" and any(i in _cmdline(p).split() for i in names)
        ]

    async def agent_status(self, n: Node) -> dict[str, Any]:
        """The agent's ``GET /status``."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, "curl", "-sf", f"http://127.0.0.1:{n.api_port}/status",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        if proc.returncode != 0:
            raise LabError(
                f"GET /status of {n.name} failed ({proc.returncode}): {err.decode(errors='replace')}"
            )
        status: dict[str, Any] = json.loads(out)
        return status

    async def sync(self, n: Node, task: str = "sessionSync") -> dict[str, Any]:
        """``POST /sync {task, wait: true}`` to ``n``'s agent: one run of ``task`` that
        *starts after this call* (a run in progress is followed by a fresh one), awaited;
        returns that run's ``{ok, duration, error}``."""
        body = json.dumps({"task": task, "wait": True})
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", n.ns_name, "curl", "-sf", "-m", str(int(self.timeout)), "-X", "POST",
            "-H", "Content-Type: application/json", "-d", body, f"http://127.0.0.1:{n.api_port}/sync",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await self._watch(n, proc.communicate())
        if proc.returncode != 0:
            raise LabError(
                f"POST /sync to {n.name} failed ({proc.returncode}): {err.decode(errors='replace')}"
            )
        result: dict[str, Any] = json.loads(out)["results"][task]
        return result

    async def poll(self, what: str, check: Callable[[], Any]) -> Any:
        """Bounded poll (BIRD has no push interface): every 0.25 s until ``check`` is truthy."""
        deadline = time.monotonic() + self.timeout
        while True:
            result = await check()
            if result:
                return result
            for x in self.nodes:
                if x.agent is not None and x.agent.returncode is not None:
                    raise LabError(f"agent of {x.name} exited {x.agent.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {self.timeout:g} s waiting for {what}")
            await asyncio.sleep(0.25)

    async def wait_established(self, n: Node) -> None:
        async def check() -> str | None:
            for line in (await self.birdc(n, "show", "protocols")).splitlines():
                cols = line.split()
                if len(cols) >= 6 and cols[1] == "BGP" and cols[3] == "up" and "Established" in line:
                    return cols[0]
            return None

        n.bgp_protocol = await self.poll(f"BGP Established on {n.name}", check)
        n.t_established = time.monotonic() - self.t0
        self.log(f"{n.name}: BGP protocol {n.bgp_protocol} Established")

    async def wait_routes(self, n: Node, other: Node) -> None:
        async def check() -> bool:
            out = await self.birdc(n, "show", "route", "protocol", n.bgp_protocol)
            got = all(p in out for p in (other.prefix4, other.prefix6))
            if got:
                for p in (other.prefix4, other.prefix6):
                    n.learned[p] = (await self.birdc(n, "show", "route", "for", p.split("/")[0])).strip()
            return got

        await self.poll(f"{n.name} to learn {other.prefix4} and {other.prefix6}", check)
        self.log(
            f"{n.name}: learned {other.prefix4} and {other.prefix6} from {other.name} via {n.bgp_protocol}"
        )

    async def checks(self) -> None:
        n1, n2 = self.nodes
        await asyncio.gather(self.wait_active(n1, n2), self.wait_active(n2, n1))
        await asyncio.gather(self.wait_established(n1), self.wait_established(n2))
        await asyncio.gather(self.wait_routes(n1, n2), self.wait_routes(n2, n1))
        for n in self.nodes:
            for p, text in n.learned.items():
                print(f"--- {n.name}: birdc show route for {p.split('/')[0]}")
                print(text)

    def summary(self) -> str:
        lines = ["", "summary (seconds from agent start):"]
        for n in self.nodes:
            lines.append(
                f"  {n.name} AS{n.asn}: ACTIVE {n.t_active if n.t_active is None else round(n.t_active, 2)}, "
                f"Established {n.t_established if n.t_established is None else round(n.t_established, 2)}, "
                f"learned {', '.join(n.learned) or '-'}"
            )
        return "\n".join(lines)

    # -------------------------------------------------------------- teardown

    async def down(self) -> None:
        for n in self.nodes:
            if n.agent is not None and n.agent.returncode is None:
                n.agent.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.agent is not None:
                try:
                    n.agent_rc = await asyncio.wait_for(n.agent.wait(), 30)
                except TimeoutError:
                    n.agent.kill()
                    n.agent_rc = await n.agent.wait()
                self.log(f"{n.name}: agent exited {n.agent_rc}")
        for n in self.nodes:
            if self.keep_logs is not None and n.dir.exists():
                dest = self.keep_logs / n.name
                dest.mkdir(parents=True, exist_ok=True)
                for f in (n.log_path, n.dir / "bird-run" / "bird.stderr", n.dir / "bird-run" / "bird.log"):
                    if f.exists():
                        shutil.copy(f, dest / f.name)
            if n.bird is not None:
                n.bird.stop()
            if n.ns is not None:
                # The agent leaves tunnels up on purpose (no flap across restarts): delete them.
                for name in n.interfaces:
                    deleter = await asyncio.create_subprocess_exec(
                        "ip", "-n", n.ns_name, "link", "del", name,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    await deleter.wait()
                wg = [p for p in n.ns.pids() if _comm(p) == "wireguard-go"]
                for pid in wg:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                await _wait_gone(wg, 5)
                n.ns.remove()
            if n.cp is not None:
                await n.cp.stop()
            for name in n.interfaces:
                with contextlib.suppress(FileNotFoundError):
                    (WG_RUN_DIR / f"{name}.sock").unlink()
                    self.log(f"{n.name}: removed a stale {WG_RUN_DIR}/{name}.sock")
        shutil.rmtree(self.work, ignore_errors=True)
        self.leftovers = self.find_leftovers()
        if self.leftovers:
            self.log("LEFT BEHIND: " + "; ".join(self.leftovers))
        else:
            self.log("torn down; nothing left behind")

    def find_leftovers(self) -> list[str]:
        left: list[str] = []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        left += [f"namespace {name}" for name in self.ns_names if name in listed]
        names = [name for n in self.nodes for name in n.interfaces]
        for name in names:
            if (WG_RUN_DIR / f"{name}.sock").exists():
                left.append(f"{WG_RUN_DIR}/{name}.sock")
        for pid in _all_pids():
            if _comm(pid) == "wireguard-go" and any(name in _cmdline(pid) for name in names):
                left.append(f"wireguard-go pid {pid}")
        if self.work.exists():
            left.append(str(self.work))
        return left


#: The nftables port set of the sessions owner (moenet_nftables: one set per owner).
SESSIONS_SET = "udp_ports"


def parse_udp_set(nft_json: str, set_name: str) -> set[int]:
    """Elements of the agent's nftables port set ``set_name`` in an ``nft -j list
    ruleset`` listing (empty when the table or set is absent)."""
    ports: set[int] = set()
    for obj in json.loads(nft_json).get("nftables", []):
        s = obj.get("set")
        if s and s.get("table") == "moenet_agent" and s.get("name") == set_name:
            for e in s.get("elem", []):
                if isinstance(e, int):
                    ports.add(e)
                elif isinstance(e, dict) and "range" in e:
                    lo, hi = e["range"]
                    ports.update(range(lo, hi + 1))
    return ports


class LabError(Exception):
    pass


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return True
    return False


async def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@attrs.define
class Result:
    ok: bool
    error: str | None
    nodes: list[Node]
    leftovers: list[str]
    cp_requests: dict[str, list[RecordedRequest]]


async def run(once: bool, *, timeout: float = 90.0, keep_logs: Path | None = None) -> Result:
    """Bring the lab up, check, and tear it down (at once with ``once``, else on Ctrl-C)."""
    if not have_root():
        raise LabError("the lab builds network namespaces and needs root")
    lab = Lab(timeout=timeout, keep_logs=keep_logs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if not once:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    error: str | None = None
    try:
        await lab.up()
        checks = asyncio.ensure_future(lab.checks())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({checks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not checks.done():
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
            error = "interrupted"
        else:
            checks.result()
            print(lab.summary(), flush=True)
            if not once:
                print("lab running; Ctrl-C tears it down", flush=True)
                await stop.wait()
        stopper.cancel()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        lab.log(f"FAILED: {error}")
        for n in lab.nodes:
            if n.log_path.exists():
                tail = n.log_path.read_text(errors="replace").splitlines()[-25:]
                print(f"--- last lines of {n.name}'s agent log:\n" + "\n".join(tail), file=sys.stderr)
            if n.bird is not None and n.bgp_protocol == "" and n.bird.running:
                with contextlib.suppress(Exception):
                    print(
                        f"--- {n.name} birdc show protocols all:\n"
                        + await lab.birdc(n, "show", "protocols", "all"),
                        file=sys.stderr,
                    )
        print(lab.summary(), flush=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await lab.down()
    cp_requests = {n.name: list(n.cp.requests) if n.cp is not None else [] for n in lab.nodes}
    ok = error is None and not lab.leftovers and all(n.agent_rc == 0 for n in lab.nodes)
    return Result(ok=ok, error=error, nodes=lab.nodes, leftovers=lab.leftovers, cp_requests=cp_requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--once", action="store_true", help="tear down right after the checks")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each step")
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy agent/BIRD logs here before teardown"
    )
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args.once, timeout=args.timeout, keep_logs=args.keep_logs))
    except LabError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not result.ok:
        print(
            f"lab failed: {result.error or 'agents did not exit 0 or something was left behind'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
