"""Static ROA files: a strict parser for untrusted input, and what the renderer needs.

The DN42 registry (and mirrors such as burble's) publishes ROAs in BIRD's own
syntax, one ``route <prefix> max <len> as <asn>;`` per line
(``dn42_roa_bird2_4.conf`` / ``_6.conf``). The agent never includes such a file:
it parses it here, refuses it as a whole when anything in it is not exactly
that (so a truncated download or a file with a BIRD directive smuggled in never
reaches BIRD), and renders the validated entries itself
(:func:`render_entries`) into ``moenet_roa4.conf`` / ``moenet_roa6.conf``, read by
the ``moenet_roa4`` / ``moenet_roa6`` static protocols next to the RTR caches.

Which sources exist is local configuration only (``bird.roaFiles``,
``bird.roaUrls``); the control plane never names a file or a URL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable

import attrs

from .collector import RouteCollector
from .denylist import DenyList
from .names import BirdConfigError
from .policy import BirdPolicy, RpkiServer

__all__ = [
    "MAX_BYTES",
    "MAX_ENTRIES",
    "LocalRouting",
    "RoaEntry",
    "RoaFileError",
    "StaticRoa",
    "effective_roa_mode",
    "parse_roa_text",
    "render_entries",
    "rpki_caches",
]

#: A bigger file is refused unread (DN42 has some 1-2 thousand ROAs per family).
MAX_BYTES = 16 * 1024 * 1024
#: More entries than this are refused (a sanity bound, far above DN42's size).
MAX_ENTRIES = 200_000
_MAX_LINE = 512
_ASN_MAX = 4294967294  # 4294967295 is reserved; AS0 ROAs ("never valid") are allowed

_ROUTE = re.compile(
    r"route[ \t]+(?P<prefix>[0-9A-Fa-f:.]+/[0-9]{1,3})[ \t]+max[ \t]+(?P<max>[0-9]{1,3})"
    r"[ \t]+as[ \t]+(?P<asn>[0-9]{1,10})[ \t]*;[ \t]*(?:#[^\n]*)?"
)


class RoaFileError(BirdConfigError):
    """A ROA file that is not exactly BIRD ROA lines; nothing of it is used."""


@attrs.frozen(order=True)
class RoaEntry:
    """One ROA: ``prefix`` may be announced up to ``/max_len`` by ``asn``."""

    version: int
    prefix: str
    max_len: int
    asn: int

    def line(self) -> str:
        return f"route {self.prefix} max {self.max_len} as {self.asn};"


def _entry(m: re.Match[str]) -> RoaEntry | str:
    """The entry of one matched line, or why it is invalid."""
    text = m.group("prefix")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"{text!r} is not a network ({exc})"
    width = 32 if net.version == 4 else 128
    max_len = int(m.group("max"))
    if not net.prefixlen <= max_len <= width:
        return f"max {max_len} must be {net.prefixlen}-{width} for {net}"
    asn = int(m.group("asn"))
    if asn > _ASN_MAX:
        return f"AS{asn} is not a usable AS number"
    return RoaEntry(net.version, str(net), max_len, asn)


def parse_roa_text(text: str | bytes, source: str) -> list[RoaEntry]:
    """Every ROA of one file, sorted and without duplicates.

    Only blank lines, ``#`` comments and ``route <prefix> max <len> as <asn>;``
    (an optional trailing ``#`` comment) are allowed. Raises :class:`RoaFileError`
    naming ``source``, the line and the reason for the first few bad lines, and
    for a file with no entry at all (a truncated or empty download).
    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise RoaFileError([f"{source}: larger than {MAX_BYTES} bytes"], source=source)
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise RoaFileError([f"{source}: not ASCII text (byte {exc.start})"], source=source) from None
    elif len(text) > MAX_BYTES or not text.isascii():
        raise RoaFileError([f"{source}: larger than {MAX_BYTES} bytes or not ASCII text"], source=source)
    problems: list[str] = []
    entries: set[RoaEntry] = set()
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        if len(line) > _MAX_LINE:
            problems.append(f"{source}:{number}: line longer than {_MAX_LINE} characters")
        elif (m := _ROUTE.fullmatch(line)) is None:
            problems.append(f"{source}:{number}: not 'route <prefix> max <len> as <asn>;': {line[:60]!r}")
        elif isinstance(got := _entry(m), str):
            problems.append(f"{source}:{number}: {got}")
        else:
            entries.add(got)
        if len(problems) >= 5:
            problems.append(f"{source}: (stopped after 5 problems)")
            break
        if len(entries) > MAX_ENTRIES:
            problems.append(f"{source}: more than {MAX_ENTRIES} entries")
            break
    if problems:
        raise RoaFileError(problems, source=source)
    if not entries:
        raise RoaFileError([f"{source}: no ROA entry (an empty or truncated file)"], source=source)
    return sorted(entries)


def render_entries(entries: Iterable[RoaEntry], version: int) -> str:
    """BIRD lines for the entries of one family, sorted (deterministic output)."""
    return "".join(e.line() + "\n" for e in sorted(set(entries)) if e.version == version)


@attrs.frozen
class StaticRoa:
    """The validated static ROA entries, rendered once (not at every apply)."""

    roa4: str = ""
    roa6: str = ""
    count4: int = 0
    count6: int = 0

    @classmethod
    def of(cls, entries: Iterable[RoaEntry]) -> StaticRoa:
        unique = sorted(set(entries))
        return cls(
            roa4=render_entries(unique, 4),
            roa6=render_entries(unique, 6),
            count4=sum(1 for e in unique if e.version == 4),
            count6=sum(1 for e in unique if e.version == 6),
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256((self.roa4 + "\0" + self.roa6).encode()).hexdigest()[:16]


@attrs.frozen
class LocalRouting:
    """What the local config and the bird plugin's tasks add to the CP's policy at
    render time: the ROA mode pin, local RTR caches and their expiry, the static ROA
    entries, whether the own aggregates are announced, the local deny lists and the
    route collector session."""

    roa_mode: str = ""
    """``strict`` / ``loose`` pinned locally; empty follows the policy."""
    rpki_servers: tuple[RpkiServer, ...] = ()
    rpki_expire: int = 172800
    static: StaticRoa = StaticRoa()
    announce_aggregates: bool = True
    deny: DenyList = attrs.field(factory=DenyList)
    """The local deny-list files' entries (:mod:`.denylist`), merged with the CP's
    ``policy.denyList`` at render time."""
    collector: RouteCollector = attrs.field(factory=RouteCollector)
    """The Global Route Collector session's local side (:mod:`.collector`)."""


def effective_roa_mode(policy: BirdPolicy, local: LocalRouting) -> str:
    """The local pin, else the CP's ``policy.roaMode``, else strict."""
    return local.roa_mode or policy.policy.roa_mode or "strict"


def rpki_caches(policy: BirdPolicy, local: LocalRouting) -> list[RpkiServer]:
    """Every RTR cache to run, sorted by protocol name: the local ones, then the
    CP's whose names do not clash with a local one."""
    local_names = {s.symbol for s in local.rpki_servers}
    caches = {s.symbol: s for s in policy.policy.rpki_servers if s.symbol not in local_names}
    caches.update((s.symbol, s) for s in local.rpki_servers)
    return [caches[k] for k in sorted(caches)]


def roa_source_problem(policy: BirdPolicy, local: LocalRouting, static_configured: bool) -> str | None:
    """Why ``policy`` cannot be applied with this local config, or None: strict
    mode with no RTR cache at all and no static ROA source configured would reject
    every eBGP route."""
    if effective_roa_mode(policy, local) != "strict" or rpki_caches(policy, local) or static_configured:
        return None
    return (
        "ROA mode is strict (only ROA-valid routes are accepted) but there is no ROA source: "
        "the control plane sent no policy.rpkiServers and the local config names none; set "
        "bird.rpkiServers, bird.roaFiles or bird.roaUrls, or choose loose "
        "(policy.roaMode or bird.roaMode)"
    )
