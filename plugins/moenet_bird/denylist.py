"""Deny lists: prefixes and AS numbers refused on import, from local files and the CP.

The Go agent's ``bird.conf`` included a ``blacklist.conf`` that nothing wrote
(so BIRD could not even parse its config on a fresh node) and defined an unused
``LC_REJECT_BLACKLIST``. Here a deny list has two sources, merged:

- local files (``bird.denyListFiles``), read by the ``birdDenyList`` task
  (:class:`DenyListSources`), parsed strictly (:func:`parse_deny_text`): a file
  with any bad line is refused as a whole and its last good entries stay;
- the control plane's ``policy.denyList`` (``{"prefixes": [...], "asns": [...]}``),
  validated as strictly (:func:`deny_list_from_policy`): a bad entry refuses the
  whole policy (the last good one stays), like every other policy field.

One entry per line in a file, a ``#`` starts a comment::

    172.20.66.0/24          # exactly this prefix
    172.20.66.0/24+         # it and every more specific one
    fd42:dead::/32{48,64}   # the more specifics of lengths 48..64 inside it
    AS4242420666            # any route whose AS path contains this AS (also: 4242420666)

What is refused: a route whose prefix matches a prefix entry (BIRD prefix-set
semantics), or whose AS path contains a denied AS anywhere (not only as the
origin: "no routes through AS X" is what an operator means by denying it; a
denied neighbour's own AS is first on everything it sends). Checked on eBGP
import (``dn42_ebgp_in``) and on iBGP import (``moenet_ibgp_in``), so a node
refuses a denied route that another node (with an older or no list) passes on.

Rendered into ``denylist.conf`` (:data:`DENYLIST_FILE`), included by
``moenet.conf`` before ``filters.conf``: a changed list changes only that file, and BIRD's
``configure`` re-runs the import filters (from the Adj-RIB-In of eBGP channels,
``import table on``; by a route refresh on iBGP) without resetting a session.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import MoenetError

from .local_sources import LocalSources, OfflineContext, bird_section
from .names import BirdConfigError

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = [
    "DENYLIST_FILE",
    "MAX_BYTES",
    "MAX_ENTRIES",
    "TASK_NAME",
    "DenyList",
    "DenyListError",
    "DenyListSources",
    "DenyPrefix",
    "deny_list_from_policy",
    "parse_deny_entry",
    "parse_deny_text",
]

#: The rendered file (top level of ``bird.configDir``), included by ``moenet.conf``.
DENYLIST_FILE = "denylist.conf"
TASK_NAME = "birdDenyList"
#: A bigger file is refused unread.
MAX_BYTES = 4 * 1024 * 1024
#: More entries than this in one source are refused (a deny list is short).
MAX_ENTRIES = 50_000
_MAX_LINE = 256
_ASN_MAX = 4294967294

_PREFIX = re.compile(
    r"(?P<net>[0-9A-Fa-f:.]{2,39}/[0-9]{1,3})(?:(?P<plus>\+)|\{(?P<lo>[0-9]{1,3}),(?P<hi>[0-9]{1,3})\})?"
)
_ASN = re.compile(r"(?:AS)?(?P<asn>[0-9]{1,10})", re.IGNORECASE)


class DenyListError(BirdConfigError):
    """A deny list (file or policy field) that is not exactly deny entries; nothing of it is used."""


@attrs.frozen(order=True)
class DenyPrefix:
    """Routes for ``network`` with a prefix length from ``lo`` to ``hi`` (a BIRD prefix pattern)."""

    version: int
    network: str
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return 32 if self.version == 4 else 128

    def pattern(self) -> str:
        """The BIRD prefix-set item: ``net``, ``net+`` or ``net{lo,hi}``."""
        plen = int(self.network.rsplit("/", 1)[1])
        if self.lo == self.hi == plen:
            return self.network
        if self.lo == plen and self.hi == self.width:
            return self.network + "+"
        return f"{self.network}{{{self.lo},{self.hi}}}"

    def __str__(self) -> str:
        return self.pattern()


def parse_deny_entry(text: str) -> DenyPrefix | int | str:
    """One entry: a :class:`DenyPrefix`, an AS number, or why ``text`` is neither."""
    if (m := _ASN.fullmatch(text)) is not None:
        asn = int(m.group("asn"))
        if not 1 <= asn <= _ASN_MAX:
            return f"AS{asn} is not a usable AS number (1-{_ASN_MAX})"
        return asn
    if (m := _PREFIX.fullmatch(text)) is None:
        return f"not a prefix (net, net+, net{{lo,hi}}) or an AS number (AS<n>): {text[:60]!r}"
    try:
        net = ipaddress.ip_network(m.group("net"), strict=True)
    except ValueError as exc:
        return f"{m.group('net')!r} is not a network ({exc})"
    width = 32 if net.version == 4 else 128
    if m.group("plus"):
        lo, hi = net.prefixlen, width
    elif m.group("lo") is not None:
        lo, hi = int(m.group("lo")), int(m.group("hi"))
        if not net.prefixlen <= lo <= hi <= width:
            return f"{{{lo},{hi}}} must satisfy {net.prefixlen} <= lo <= hi <= {width} for {net}"
    else:
        lo = hi = net.prefixlen
    return DenyPrefix(net.version, str(net), lo, hi)


@attrs.frozen
class DenyList:
    """Validated deny entries: prefixes (sorted, unique) and AS numbers (sorted, unique)."""

    prefixes: tuple[DenyPrefix, ...] = ()
    asns: tuple[int, ...] = ()

    @classmethod
    def of(cls, prefixes: Iterable[DenyPrefix] = (), asns: Iterable[int] = ()) -> DenyList:
        return cls(tuple(sorted(set(prefixes))), tuple(sorted(set(asns))))

    @classmethod
    def merged(cls, *lists: DenyList) -> DenyList:
        return cls.of(
            (p for d in lists for p in d.prefixes),
            (a for d in lists for a in d.asns),
        )

    def patterns(self, version: int) -> list[str]:
        return [p.pattern() for p in self.prefixes if p.version == version]

    def __bool__(self) -> bool:
        return bool(self.prefixes or self.asns)

    def __len__(self) -> int:
        return len(self.prefixes) + len(self.asns)


def parse_deny_text(text: str | bytes, source: str) -> DenyList:
    """Every entry of one deny-list file. Blank lines and ``#`` comments are allowed;
    an empty file is a valid, empty list. Raises :class:`DenyListError` naming
    ``source:line`` and the reason for the first few bad lines."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise DenyListError([f"{source}: larger than {MAX_BYTES} bytes"], source=source)
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise DenyListError([f"{source}: not ASCII text (byte {exc.start})"], source=source) from None
    elif len(text) > MAX_BYTES or not text.isascii():
        raise DenyListError([f"{source}: larger than {MAX_BYTES} bytes or not ASCII text"], source=source)
    problems: list[str] = []
    prefixes: list[DenyPrefix] = []
    asns: list[int] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0].strip(" \t\r")
        if not line:
            continue
        if len(line) > _MAX_LINE:
            problems.append(f"{source}:{number}: line longer than {_MAX_LINE} characters")
        elif isinstance(got := parse_deny_entry(line), str):
            problems.append(f"{source}:{number}: {got}")
        elif isinstance(got, DenyPrefix):
            prefixes.append(got)
        else:
            asns.append(got)
        if len(problems) >= 5:
            problems.append(f"{source}: (stopped after 5 problems)")
            break
        if len(prefixes) + len(asns) > MAX_ENTRIES:
            problems.append(f"{source}: more than {MAX_ENTRIES} entries")
            break
    if problems:
        raise DenyListError(problems, source=source)
    return DenyList.of(prefixes, asns)


def deny_list_from_policy(raw: Any, path: str = "policy.denyList") -> tuple[DenyList, list[str]]:
    """The CP's ``policy.denyList`` (absent or null: empty) and every problem,
    each naming its field (``policy.denyList.prefixes[2]: ...``)."""
    if raw is None:
        return DenyList(), []
    if not isinstance(raw, dict):
        return DenyList(), [f"{path}: expected an object {{prefixes, asns}}"]
    problems = [
        f"{path}.{k}: unknown key (expected prefixes, asns)" for k in raw if k not in ("prefixes", "asns")
    ]
    prefixes: list[DenyPrefix] = []
    asns: list[int] = []
    for key in ("prefixes", "asns"):
        items = raw.get(key) or []
        if not isinstance(items, list):
            problems.append(f"{path}.{key}: expected a list")
            continue
        if len(items) > MAX_ENTRIES:
            problems.append(f"{path}.{key}: more than {MAX_ENTRIES} entries")
            continue
        for i, item in enumerate(items):
            where = f"{path}.{key}[{i}]"
            if key == "asns" and isinstance(item, int) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str) or len(item) > _MAX_LINE:
                problems.append(f"{where}: expected a string" + (" or a number" if key == "asns" else ""))
                continue
            got = parse_deny_entry(item.strip())
            if isinstance(got, str):
                problems.append(f"{where}: {got}")
            elif key == "prefixes" and isinstance(got, DenyPrefix):
                prefixes.append(got)
            elif key == "asns" and isinstance(got, int):
                asns.append(got)
            else:
                wrong = (
                    "an AS number belongs in asns" if key == "prefixes" else "a prefix belongs in prefixes"
                )
                problems.append(f"{where}: {wrong}")
            if len(problems) >= 20:
                break
    return DenyList.of(prefixes, asns), problems


# ------------------------------------------------------------------ the task


class DenyListSourcesError(MoenetError):
    """Some deny-list file could not be read or was refused (its last good entries stay)."""


class DenyListSources(LocalSources[DenyList, DenyList]):
    """The ``birdDenyList`` task: read ``bird.denyListFiles``, keep each file's last
    good entries, hand their union to the backend when it changed (one apply; an
    unchanged file costs a ``stat``). The bookkeeping is :class:`.LocalSources`'."""

    what = "deny list"
    field = "deny"
    applied_what = "deny list"
    error_type = DenyListSourcesError
    max_bytes = MAX_BYTES
    entries_metric = ("deny_list_entries", "Entries of each local deny-list file last read successfully.")
    errors_metric = ("deny_list_errors_total", "Local deny-list files refused (malformed) or not read.")

    def __init__(self, ctx: PluginContext | OfflineContext) -> None:
        super().__init__(ctx, bird_section(ctx).deny_list_files)

    @property
    def deny(self) -> DenyList:
        """The union of every file's last good entries."""
        return self.value

    def _parse(self, data: bytes, source: str) -> DenyList:
        return parse_deny_text(data, source)

    def _combine(self, entries: list[DenyList]) -> DenyList:
        return DenyList.merged(*entries)

    def _describe(self, entries: DenyList) -> str:
        return f"{len(entries.prefixes)} prefixes, {len(entries.asns)} AS numbers"

    def _result(self, value: DenyList, applied: bool | None) -> dict[str, Any]:
        return {"prefixes": len(value.prefixes), "asns": len(value.asns), "applied": applied}
