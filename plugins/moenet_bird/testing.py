"""A real BIRD 3 daemon in a network namespace, for tests and the lab.

``BirdDaemon(ns, workdir).start(config)`` runs ``bird -f -c CFG -s SOCK -P PID``
inside ``ns`` (a :class:`moenet_core.testing.NetNS`) with its socket, pid file
and stderr in ``workdir``; ``stop()`` ends it. With ``user=``/``group=`` BIRD
drops to them after start (``-u``/``-g``, as Debian's ``bird3`` runs it):
``workdir`` is then given to that user, and every file BIRD reads later
(configure, configure check) must be readable by it. ``config`` may live anywhere (the
agent configures its tree by explicit path, so a throwaway bootstrap file works).

:func:`unchecked_intent` builds a routing intent around its own checks: what a
buggy or hostile plugin could hand the backend, which must refuse it itself.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from moenet_core.intents import RoutingIntent
from moenet_core.testing import NetNS

from .apply import default_bird_binary

__all__ = ["BOOTSTRAP", "BirdDaemon", "sample_bird_config", "unchecked_intent"]

IntentT = TypeVar("IntentT", bound=RoutingIntent)


def unchecked_intent(cls: type[IntentT], **fields: Any) -> IntentT:
    """A ``cls`` intent holding ``fields`` (defaults for the rest) without running
    its validators or cross-field checks."""
    obj = object.__new__(cls)
    for f in attrs.fields(cls):
        value = fields.pop(f.name, f.default)
        if value is attrs.NOTHING:
            raise TypeError(f"{cls.__name__}: {f.name} is required")
        object.__setattr__(obj, f.name, value)
    if fields:
        raise TypeError(f"{cls.__name__}: no field {', '.join(sorted(fields))}")
    return obj


#: A minimal config BIRD can start with before the agent has written its tree.
BOOTSTRAP = """\
log "{log}" all;
router id 192.0.2.254;
protocol device {{}}
"""


class BirdDaemon:
    """One BIRD process inside ``ns``; files in ``workdir``."""

    def __init__(
        self,
        ns: NetNS,
        workdir: str | os.PathLike[str],
        *,
        binary: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> None:
        self.ns = ns
        self.user = user
        self.group = group
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        found = binary or default_bird_binary()
        if found is None:
            raise RuntimeError("no bird binary (run scripts/install-bird)")
        self.binary = found
        self.socket = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"
        self.stderr = self.dir / "bird.stderr"
        self.log = self.dir / "bird.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def bootstrap(self) -> Path:
        """Write :data:`BOOTSTRAP` (logging to :attr:`log`) and return its path."""
        path = self.dir / "bootstrap.conf"
        path.write_text(BOOTSTRAP.format(log=self.log))
        return path

    def start(self, config: str | os.PathLike[str] | None = None, *, timeout: float = 20.0) -> BirdDaemon:
        """Start BIRD on ``config`` (default: the bootstrap file) and wait for its socket."""
        cfg = str(config) if config is not None else str(self.bootstrap())
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        cmd = [self.binary, "-f", "-c", cfg, "-s", str(self.socket), "-P", str(self.pidfile)]
        if self.user or self.group:
            # BIRD writes its pid file and log after dropping privileges.
            uid = pwd.getpwnam(self.user).pw_uid if self.user else -1
            gid = grp.getgrnam(self.group).gr_gid if self.group else -1
            for path in (self.dir, self.log, self.pidfile):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, uid, gid)
            cmd += [*(["-u", self.user] if self.user else []), *(["-g", self.group] if self.group else [])]
        with self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *cmd], stdout=subprocess.DEVNULL, stderr=err
            )
        # Waiting on an external process: BIRD opens its socket once the config is
        # loaded. Bounded poll; "ready" means a connection receives the 0001 greeting.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bird exited {self.proc.returncode}: {self.stderr.read_text()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                if s.recv(64).startswith(b"0001 "):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bird did not open {self.socket} within {timeout:g} s")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def read_log(self) -> str:
        """BIRD's log file (while the bootstrap config is live) plus its stderr."""
        parts = [p.read_text(errors="replace") for p in (self.log, self.stderr) if p.exists()]
        return "".join(parts)

    def __enter__(self) -> BirdDaemon:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def sample_bird_config(
    *,
    config_hash: str = "3f2a9c",
    node: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid CP ``bird-config`` answer (as a Go-agent-era CP sends it, symbol names
    included) for tests and the lab; ``node`` and ``policy`` override its fields.
    No RPKI server by default (a namespace has no DNS to resolve one), hence ROA
    mode ``loose``: strict would reject every route and needs a ROA source."""
    return {
        "configHash": config_hash,
        "node": {
            "id": 3,
            "name": "hkg1",
            "type": "edge",
            "bandwidth": "1G",
            "regionCode": "HK",
            "loopbackIpv4": "172.20.42.1",
            "loopbackIpv6": "fd42:4242:1234::1",
            "continentLc": "LC_ORIGIN_AS",
            "subregionLc": "AS_E",
            "regionCommunity": "DN42_REGION_AS_E",
            "bandwidthCommunity": "DN42_BW_1G_PLUS",
            "countryCommunity": 344,
            **(node or {}),
        },
        "policy": {
            "dn42As": "4242421234",
            "dn42Ipv4Prefix": "172.20.42.0/27",
            "dn42Ipv6Prefix": "fd42:4242:1234::/48",
            "rpkiServers": [],
            "roaMode": "loose",
            "ebgpImportLimit": 9000,
            "ebgpExportLimit": 9000,
            "ibgpImportLimit": 20000,
            "ibgpExportLimit": 20000,
            "asPathMaxLen": 32,
            "communities": {},
            "largeCommunities": {},
            **(policy or {}),
        },
        "ibgpPeers": [],
    }
