"""Per-host limits the userspace backend needs room in.

Every wireguard-go daemon takes one inotify instance (and a watch), counted per
user across the whole host: ``fs.inotify.max_user_instances`` is 128 on Debian,
so the 120-odd-th tunnel's daemon dies at start (``Connection reset by peer``,
``No such device``, ``exited 0 but created no TUN device``). These sysctls are
global, not per network namespace: the backend only ever *raises* them, to what
its daemons need plus headroom for everything else root runs, and logs it; when
it cannot write them (a container, a read-only ``/proc/sys``) it says which
number is needed. The agent itself keeps no file descriptor per tunnel, so
``RLIMIT_NOFILE`` only needs room for the concurrent operations (the systemd
unit sets ``LimitNOFILE=65536``; the daemons inherit it).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path

from .errors import DaemonError

INOTIFY = Path("/proc/sys/fs/inotify")
OTHERS = 128
"""Instances left for everything else running as root (the kernel default)."""
BATCH = 128
"""Extra instances asked for at once, so the limit is written once per 128 tunnels."""
WATCHES_PER_DAEMON = 4
MIN_WATCHES_HEADROOM = 8192
MIN_NOFILE = 4096


def count_daemons(exes: frozenset[str], proc: Path = Path("/proc")) -> int:
    """Processes of the wireguard-go binary on the host (any namespace, any user):
    one ``readlink`` per process."""
    n = 0
    for e in proc.iterdir():
        if e.name.isdigit():
            try:
                if os.readlink(e / "exe").removesuffix(" (deleted)") in exes:
                    n += 1
            except OSError:
                continue
    return n


def _read(path: Path) -> int:
    return int(path.read_text().strip())


class InotifyRoom:
    """Keeps ``max_user_instances`` (and ``max_user_watches``) above what the
    daemons need. :meth:`reserve` is cheap while earlier room lasts; it recounts
    the daemons and raises the limits only when it runs out."""

    def __init__(
        self,
        exes: Callable[[], frozenset[str]],
        log: Callable[..., None],
        *,
        root: Path = INOTIFY,
        proc: Path = Path("/proc"),
    ) -> None:
        self._exes = exes
        self._log = log
        self.root = root
        self.proc = proc
        self.room = 0

    def needed(self, daemons: int, new: int) -> int:
        return daemons + new + OTHERS

    def reserve(self, new: int = 1) -> None:
        """Make room for ``new`` more daemons; raises :class:`DaemonError`
        naming the number needed when the limit is too low and cannot be raised."""
        if self.room >= new:
            self.room -= new
            return
        daemons = count_daemons(self._exes(), self.proc)
        need = self.needed(daemons, new)
        limit = self._raise("max_user_instances", need, need + BATCH)
        self._raise(
            "max_user_watches",
            (daemons + new) * WATCHES_PER_DAEMON + MIN_WATCHES_HEADROOM,
            (daemons + new + BATCH) * WATCHES_PER_DAEMON + MIN_WATCHES_HEADROOM,
        )
        self.room = max(0, limit - need)

    def _raise(self, key: str, need: int, target: int) -> int:
        """The limit after making it at least ``need`` (written as ``target``)."""
        path = self.root / key
        try:
            current = _read(path)
        except (OSError, ValueError):
            return need  # no inotify sysctls here: nothing to manage
        if current >= need:
            return current
        try:
            path.write_text(f"{target}\n")
        except OSError as exc:
            raise DaemonError(
                f"fs.inotify.{key} is {current} and the wireguard-go daemons need at least {need} "
                f"(one inotify instance each); cannot raise it ({exc.strerror or exc}): "
                f"run sysctl -w fs.inotify.{key}={target}"
            ) from None
        self._log(
            "raised fs.inotify.{} from {} to {} for the wireguard-go daemons (host-wide, never lowered)",
            key,
            current,
            target,
        )
        return target


def check_nofile(log: Callable[..., None], need: int = MIN_NOFILE) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``need`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log("raised the open-file limit from {} to {} (LimitNOFILE=65536 in the unit)", soft, target)
        if target < need:
            log("open-file limit {} is low for many tunnels; set LimitNOFILE=65536", target)
