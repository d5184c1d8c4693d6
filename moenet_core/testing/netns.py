"""Throwaway network namespaces for tests that run real daemons (root only).

Tests never touch the host's interfaces: every link, address, nftables table and
daemon lives in a namespace the test creates and removes.

Two ways to use one:

- ``with ns.entered():`` switches the *calling thread* into the namespace
  (pyroute2 ``pushns``/``popns``). Sockets opened and subprocesses started
  inside the block belong to it; asyncio code on the main thread works. Code
  that hops to other threads (``asyncio.to_thread``) would not follow.
- ``ns.run("ip", "link")`` runs a command inside it (``ip netns exec``).

``/var/run/wireguard`` is not per namespace: two tunnels in two namespaces must
use different interface names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

from pyroute2 import netns as _netns


def have_root() -> bool:
    return os.geteuid() == 0


class NetNS:
    """One network namespace, ``mt-<random>``; removed by :meth:`remove`."""

    def __init__(self, prefix: str = "mt") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(
        self, *cmd: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace; raises with its stderr on failure."""
        res = subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True, input=input, check=False
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} in {self.name} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res

    @contextlib.contextmanager
    def entered(self) -> Iterator[NetNS]:
        """Switch the calling thread into the namespace for the block."""
        _netns.pushns(self.name)
        try:
            yield self
        finally:
            _netns.popns()

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False)
        return [int(p) for p in res.stdout.split()]

    def remove(self) -> None:
        """Kill what still runs inside, then delete the namespace."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def veth_pair(a: NetNS, b: NetNS, a_if: str = "veth-a", b_if: str = "veth-b") -> None:
    """Join two namespaces with a veth pair (links up, no addresses)."""
    tmp = f"vt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p"], check=True)
    subprocess.run(["ip", "link", "set", tmp, "netns", a.name, "name", a_if], check=True)
    subprocess.run(["ip", "link", "set", tmp + "p", "netns", b.name, "name", b_if], check=True)
    a.run("ip", "link", "set", a_if, "up")
    b.run("ip", "link", "set", b_if, "up")
