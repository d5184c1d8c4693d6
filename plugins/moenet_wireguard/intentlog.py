"""Tunnels about to be created: written before the create, dropped once marked.

Creating a tunnel takes several steps: ``wireguard-go <name>`` creates the TUN
device and forks its daemon (or netlink adds a ``wireguard`` link), and only then
does the alias mark it as an owner's (:mod:`.links`). A crash between the two
leaves a link without the marker, which every later ``ensure`` refuses as
foreign: the session it was for could never be set up again.

So before creating ``name`` the backend records a :class:`CreateIntent` (name,
owner, link kind, when; one small file per interface, written atomically: a
temporary file renamed into place), and for wireguard-go also the launcher it
started (pid and start time) as soon as it runs.

The entries are not fsync'd, on purpose: what they protect against is the agent
process dying (SIGKILL, the OOM killer, a crash), after which the kernel still
holds every write the agent made. A kernel crash or power loss reboots the
machine, and no tunnel or wireguard-go survives a reboot: an entry from an earlier
boot is dropped unread (:func:`boot_id`). An fsync per create would cost a disk
flush per tunnel (about 1.5 ms here, on the event loop) and protect nothing.

The entry is dropped once the link carries its owner's alias, or once a failed
create has cleaned up after itself. What a crash leaves
is settled when the backend starts (:meth:`~.base.WireguardBackend.recover`),
before any reconciler observes a tunnel:

- an entry from an earlier boot or another network namespace: dropped (nothing
  of it can be here);
- a launcher of ours still starting: waited for (killed after ``startTimeout``);
- no link: whatever the create left (a stale socket) is cleaned up, the entry
  dropped;
- the link carries an owner's alias: the create had completed; dropped;
- an unmarked link of the recorded kind that is ours (for wireguard-go: served by
  a daemon started after our launcher): **adopted**, marked with the recorded
  owner (the next ``ensure`` configures it); one with no daemon left is dead and
  removed;
- anything else under that name (another kind, another alias, a daemon that is
  older than our intent): not ours, left alone, the entry dropped.

An ``ensure`` that meets an unmarked link with an entry still pending (a create
of this process whose cleanup failed) settles it the same way first.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from moenet_core import sweep_partial_writes

from .spec import IFNAME_RE, OWNER_RE

DIRECTORY = "creating"
"""The log's directory in the plugin's state directory."""
VERSION = 1


@functools.cache
def boot_id() -> str:
    """This boot's id (an entry from an earlier boot describes nothing that exists)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def boot_seconds() -> float:
    """Seconds since boot (``CLOCK_BOOTTIME``: the clock of ``/proc/<pid>/stat``'s start time)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def netns_id() -> tuple[int, int] | None:
    try:
        st = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


@attrs.frozen(kw_only=True)
class CreateIntent:
    """One tunnel about to be created (see the module doc)."""

    name: str
    owner: str
    kind: str
    """``IFLA_INFO_KIND`` of the link to create (``tun`` or ``wireguard``)."""
    boot: str
    since: float
    """:func:`boot_seconds` when the intent was recorded."""
    netns: tuple[int, int] | None = None
    launcher: tuple[int, int] | None = None
    """(pid, start ticks) of the ``wireguard-go`` launcher started for it."""

    @classmethod
    def now(cls, name: str, owner: str, kind: str) -> CreateIntent:
        return cls(name=name, owner=owner, kind=kind, boot=boot_id(), since=boot_seconds(), netns=netns_id())

    @property
    def since_ticks(self) -> int:
        """The earliest start time (ticks) a process started for this create can have."""
        if self.launcher is not None:
            return self.launcher[1]
        return int(self.since * CLOCK_TICKS) - 1

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "name": self.name,
            "owner": self.owner,
            "kind": self.kind,
            "boot": self.boot,
            "since": self.since,
            "netns": list(self.netns) if self.netns is not None else None,
            "launcher": list(self.launcher) if self.launcher is not None else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> CreateIntent:
        """Raises ValueError for anything that is not an entry this version wrote."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("not a version-1 create intent")
        name, owner, kind = data.get("name"), data.get("owner"), data.get("kind")
        if not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"bad interface name {name!r}")
        if not isinstance(owner, str) or not OWNER_RE.fullmatch(owner):
            raise ValueError(f"bad owner {owner!r}")
        if kind not in ("tun", "wireguard"):
            raise ValueError(f"bad link kind {kind!r}")
        boot, since = data.get("boot"), data.get("since")
        if not isinstance(boot, str) or isinstance(since, bool) or not isinstance(since, int | float):
            raise ValueError("bad boot id or time")
        return cls(
            name=name,
            owner=owner,
            kind=kind,
            boot=boot,
            since=float(since),
            netns=_pair(data.get("netns")),
            launcher=_pair(data.get("launcher")),
        )


def _pair(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"bad pair {value!r}")


class IntentLog:
    """The entries, one file per interface in ``directory`` (None: kept in memory
    only, as for a backend built without a state directory)."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._pending: dict[str, CreateIntent] = {}

    def _path(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{name}.json"

    def pending(self, name: str) -> CreateIntent | None:
        """The entry of ``name`` not settled yet (recorded by this process, or loaded)."""
        return self._pending.get(name)

    def names(self) -> list[str]:
        return sorted(self._pending)

    def load(self) -> list[CreateIntent]:
        """Every entry on disk (and in memory); an unreadable file is removed with a
        warning (only a hand edit makes one: the writes are atomic)."""
        if self.directory is not None:
            for leftover in sweep_partial_writes(self.directory):
                logger.info("tunnel intents: removed {} (an interrupted write)", leftover)
            try:
                files = sorted(p for p in self.directory.iterdir() if p.suffix == ".json")
            except FileNotFoundError:
                files = []
            for path in files:
                try:
                    entry = CreateIntent.from_json(json.loads(path.read_bytes()))
                    if entry.name != path.stem:
                        raise ValueError(f"names {entry.name!r}")
                except (OSError, ValueError) as exc:
                    logger.warning("tunnel intents: removing unreadable {}: {}", path, exc)
                    path.unlink(missing_ok=True)
                    continue
                self._pending[entry.name] = entry
        return [self._pending[n] for n in sorted(self._pending)]

    def record(self, entry: CreateIntent) -> None:
        """Write ``entry`` (atomically: a reader sees the old entry or the new one)
        before anything of it is created."""
        self._pending[entry.name] = entry
        if self.directory is None:
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(entry.to_json(), sort_keys=True).encode() + b"\n"
        target = self._path(entry.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def launched(self, name: str, pid: int) -> CreateIntent | None:
        """Add the launcher started for ``name`` to its entry."""
        entry = self._pending.get(name)
        start = process_start(pid)
        if entry is None or start is None:
            return entry
        entry = attrs.evolve(entry, launcher=(pid, start))
        self.record(entry)
        return entry

    def drop(self, name: str) -> None:
        """The create is settled (marked, or cleaned up). Not fsync'd: an entry that
        comes back after a crash finds its link marked and is dropped again."""
        if self._pending.pop(name, None) is None and self.directory is None:
            return
        if self.directory is not None:
            self._path(name).unlink(missing_ok=True)
