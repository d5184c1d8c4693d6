"""The host sysctls a DN42 router needs, read and fixed through ``/proc/sys``.

Pure file I/O on a root directory (``/proc/sys``, or a fabricated tree in
tests); ``/proc/sys/net`` shows the network namespace of the calling thread.

- **rp_filter** (IPv4 only; IPv6 has no such sysctl): DN42 routing is
  asymmetric, so reverse-path filtering drops legitimate traffic on tunnels
  (the wiki's "first rule of dn42"). The kernel filters on an interface with
  ``max(conf.all.rp_filter, conf.<if>.rp_filter)``, so both must be 0 for the
  agent's interfaces. When ``all`` is lowered, every other interface whose own
  value is below the old ``all`` is raised to it first: their effective value
  (and the host's protection on its uplinks) stays what it was.
- **forwarding**: ``net.ipv4.ip_forward`` and ``net.ipv6.conf.all.forwarding``
  (writing them sets every interface's too), and each agent interface's own
  ``forwarding`` in both families. Turning IPv6 forwarding on makes the kernel
  ignore router advertisements on interfaces with ``accept_ra=1``; those are set
  to ``accept_ra=2`` (accept them even when forwarding) at the same time, so a
  host whose IPv6 uplink comes from SLAAC keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

#: A name that is safe as one path component under ``conf/`` (no ``/``, no ``..``).
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}$")
_SPECIAL = frozenset({"all", "default", ".", ".."})

IPV4_FORWARD = "net/ipv4/ip_forward"
IPV6_FORWARD = "net/ipv6/conf/all/forwarding"
RP_ALL = "net/ipv4/conf/all/rp_filter"


def key_name(path: str) -> str:
    """The ``sysctl`` key of a path below ``/proc/sys``: dotted, or slash-separated
    when a component has a dot (``net/ipv4/conf/eth0.100/rp_filter``), which
    sysctl(8) would otherwise split."""
    parts = path.split("/")
    return path if any("." in p for p in parts) else ".".join(parts)


def command(settings: Iterable[tuple[str, int]]) -> str:
    """``sysctl -w k=v ...`` for ``(path, value)`` pairs."""
    return "sysctl -w " + " ".join(f"{key_name(p)}={v}" for p, v in settings)


@attrs.frozen
class Change:
    """One sysctl written (``old`` None: it could not be read)."""

    path: str
    old: int | None
    new: int


@attrs.frozen
class Failure:
    """One sysctl that should be written and could not be."""

    path: str
    value: int
    error: str


@attrs.frozen(kw_only=True)
class Report:
    """What one check found (after fixing, when allowed)."""

    interfaces: tuple[str, ...] = ()
    """The agent's interfaces that exist (others are not there yet)."""
    rp_filter: dict[str, int] = attrs.field(factory=dict)
    """Effective rp_filter per agent interface that is not 0."""
    rp_wanted: tuple[tuple[str, int], ...] = ()
    """The writes that would make them 0 (what to tell the operator)."""
    forwarding_off: tuple[str, ...] = ()
    """Forwarding sysctls that are 0 (the node-wide two first)."""
    changes: tuple[Change, ...] = ()
    failures: tuple[Failure, ...] = ()
    accept_ra: tuple[str, ...] = ()
    """Interfaces whose ``accept_ra`` went from 1 to 2 with IPv6 forwarding."""
    ipv6: bool = True
    """False when the kernel has no IPv6 (nothing IPv6 to check)."""


class Sysctl:
    """``/proc/sys`` (or a tree like it) at ``root``."""

    def __init__(self, root: str | Path = "/proc/sys") -> None:
        self.root = Path(root)

    def read(self, path: str) -> int | None:
        """The integer value, or None when missing or not an integer."""
        try:
            return int((self.root / path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def write(self, path: str, value: int) -> None:
        (self.root / path).write_text(f"{value}\n")

    def exists(self, path: str) -> bool:
        return (self.root / path).exists()

    def interfaces(self, family: str = "ipv4") -> list[str]:
        """Every interface the kernel has a ``conf`` directory for."""
        try:
            names = [p.name for p in (self.root / "net" / family / "conf").iterdir()]
        except OSError:
            return []
        return sorted(n for n in names if n not in _SPECIAL)


def usable(name: str) -> bool:
    """Whether ``name`` may be used as a path component under ``conf/``."""
    return bool(_IFNAME.match(name)) and name not in _SPECIAL


def check(sysctl: Sysctl, wanted: Iterable[str], *, fix: bool) -> Report:
    """Read (and with ``fix``, correct) rp_filter and forwarding for the agent's
    interfaces ``wanted``; names that do not exist (yet) are skipped."""
    present = set(sysctl.interfaces("ipv4"))
    ifaces = tuple(sorted({n for n in wanted if usable(n) and n in present}))
    ipv6 = sysctl.exists(IPV6_FORWARD)
    changes: list[Change] = []
    failures: list[Failure] = []

    def put(path: str, value: int) -> bool:
        old = sysctl.read(path)
        if old == value:
            return True
        try:
            sysctl.write(path, value)
        except OSError as exc:
            failures.append(Failure(path, value, exc.strerror or str(exc)))
            return False
        changes.append(Change(path, old, value))
        return True

    accept_ra: list[str] = []
    if fix:
        _fix_rp_filter(sysctl, ifaces, present, put)
        if ipv6 and sysctl.read(IPV6_FORWARD) == 0:
            for name in sysctl.interfaces("ipv6"):
                ra = f"net/ipv6/conf/{name}/accept_ra"
                if name not in ifaces and sysctl.read(ra) == 1 and put(ra, 2):
                    accept_ra.append(name)
        for path in _forwarding_paths(ifaces, ipv6):
            if sysctl.read(path) == 0:
                put(path, 1)

    all_rp = sysctl.read(RP_ALL) or 0
    rp: dict[str, int] = {}
    wanted_writes: list[tuple[str, int]] = []
    for name in ifaces:
        own = sysctl.read(f"net/ipv4/conf/{name}/rp_filter") or 0
        if max(all_rp, own):
            rp[name] = max(all_rp, own)
            if own:
                wanted_writes.append((f"net/ipv4/conf/{name}/rp_filter", 0))
    if rp and all_rp:
        wanted_writes.insert(0, (RP_ALL, 0))
    off = tuple(p for p in _forwarding_paths(ifaces, ipv6) if sysctl.read(p) == 0)
    return Report(
        interfaces=ifaces,
        rp_filter=rp,
        rp_wanted=tuple(wanted_writes),
        forwarding_off=off,
        changes=tuple(changes),
        failures=tuple(failures),
        accept_ra=tuple(accept_ra),
        ipv6=ipv6,
    )


def _forwarding_paths(ifaces: Iterable[str], ipv6: bool) -> list[str]:
    paths = [IPV4_FORWARD, *(f"net/ipv4/conf/{n}/forwarding" for n in ifaces)]
    if ipv6:
        paths[1:1] = [IPV6_FORWARD]
        paths += [f"net/ipv6/conf/{n}/forwarding" for n in ifaces]
    return paths


def _fix_rp_filter(
    sysctl: Sysctl, ifaces: tuple[str, ...], present: set[str], put: Callable[[str, int], bool]
) -> None:
    """Own values of the agent's interfaces to 0; ``all`` to 0 when needed, the
    other interfaces keeping their effective value."""
    for name in ifaces:
        put(f"net/ipv4/conf/{name}/rp_filter", 0)
    old_all = sysctl.read(RP_ALL) or 0
    if not ifaces or not old_all:
        return
    for name in sorted(present - set(ifaces)):
        own = f"net/ipv4/conf/{name}/rp_filter"
        value = sysctl.read(own)
        if value is not None and value < old_all and not put(own, old_all):
            return  # never lower ``all`` while another interface would lose its filter
    put(RP_ALL, 0)
