"""A one-node demo on this machine: a local control plane and a real agent.

Starts a small control plane on 127.0.0.1 that serves an embedded default node
configuration (bootstrap mode, the seed's recommended mode), runs the installed
``moenet-agent`` against it, and shows what the CP receives (heartbeats) and
what the agent reports (``moenet-agent status``). Ctrl-C stops both and removes
the temporary directory. ``--once`` stops after the first heartbeat (CI).

Everything runs inside a throwaway network namespace (so it needs root): the
agent's link-layer plugins (loopback, firewall) act on the namespace, never on
the host, and the namespace is deleted at the end. (BIRD, WireGuard peerings
and a multi-node lab come with later issues.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from moenet_core.testing import FakeControlPlane, NetNS
from moenet_core.testing.netns import have_root

NODE = "demo1"
TOKEN = "demo-cp-token"  # noqa: S105 - a throwaway token for the local demo CP
DEFAULT_NODE_CONFIG = {
    "node": {
        "id": 1,
        "name": NODE,
        "region": "eu-central",
        "asn": 4242420998,
        "loopbackIpv4": "172.22.188.1",
        "loopbackIpv6": "fd00:4242:7777::1",
    },
    "controlPlane": {"heartbeatInterval": 5},
}
#: This kernel (like many VPS kernels) has no dummy driver; a bridge works everywhere.
LOCAL_SETTINGS = {"loopback": {"kind": "bridge", "interface": "dummy0"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(once: bool) -> int:
    if not have_root():
        print("the demo builds a network namespace and needs root", file=sys.stderr)
        return 1
    ns = NetNS(prefix="moenet-demo")
    try:
        with ns.entered():
            return await run_demo(once, ns.name)
    finally:
        ns.remove()


async def run_demo(once: bool, ns_name: str) -> int:
    agent_bin = shutil.which("moenet-agent") or str(Path(sys.executable).with_name("moenet-agent"))
    work = Path(tempfile.mkdtemp(prefix="moenet-demo-"))
    port = free_port()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeControlPlane(token=TOKEN) as cp:
        cp.set("config", DEFAULT_NODE_CONFIG)
        cp.set("sessions", {"bgpSessions": []})  # no peerings yet: the two-node lab comes with issue 5
        config = work / "config.json"
        config.write_text(
            json.dumps(
                {
                    "bootstrap": {"apiUrl": cp.url, "nodeName": NODE, "token": TOKEN},
                    "server": {"listen": f"127.0.0.1:{port}"},
                    "state": {"directory": str(work / "state")},
                    "logging": {"format": "text"},
                    # BIRD files stay in the demo's directory (no BIRD policy is served yet).
                    "bird": {
                        "configDir": str(work / "bird"),
                        "controlSocket": str(work / "bird.ctl"),
                    },
                    **LOCAL_SETTINGS,
                },
                indent=2,
            )
        )
        print(f"network namespace: {ns_name}   control plane: {cp.url}   agent API: http://127.0.0.1:{port}")
        agent = await asyncio.create_subprocess_exec(
            agent_bin, "run", "-c", str(config), stdin=subprocess.DEVNULL
        )
        try:
            seen = 0
            while not stop.is_set():
                waiter = asyncio.ensure_future(cp.wait_for("heartbeat", seen + 1, timeout=120))
                stopper = asyncio.ensure_future(stop.wait())
                exited = asyncio.ensure_future(agent.wait())
                done, _ = await asyncio.wait({waiter, stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
                for f in (waiter, stopper, exited):
                    if f not in done:
                        f.cancel()
                if exited in done:
                    print(f"agent exited with {agent.returncode}", file=sys.stderr)
                    return 1
                if waiter in done:
                    beat = waiter.result()[-1]
                    seen += 1
                    st = beat.body["status"]
                    print(
                        f"CP <- heartbeat #{seen} from {beat.node}: version {st['version']}, "
                        f"load {st['loadAvg']}, tcp {st['tcp']}, maintenance {st['maintenance']}"
                    )
                    if seen == 1:
                        show = await asyncio.create_subprocess_exec(
                            "ip", "-br", "addr", "show", "dev", "dummy0", stdout=subprocess.PIPE
                        )
                        addrs = (await show.communicate())[0].decode().strip()
                        print(f"loopback in the namespace: {addrs or '(not yet)'}")
                        status = await asyncio.create_subprocess_exec(
                            agent_bin, "status", "--url", f"http://127.0.0.1:{port}"
                        )
                        await status.wait()
                        if once:
                            break
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
                await agent.wait()
            shutil.rmtree(work, ignore_errors=True)
    print("demo stopped; nothing left behind")
    return 0 if agent.returncode == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="stop after the first heartbeat")
    sys.exit(asyncio.run(main(parser.parse_args().once)))
