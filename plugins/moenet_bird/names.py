"""String safety for everything that reaches a BIRD file.

The CP is not trusted to be well-formed (DESIGN.md §6), so every string is either
matched against a strict pattern here or made inert inside a BIRD string literal.

BIRD's lexer has *no escapes* in string literals (verified on 3.3.2: a string is
``"[^"\\n]*"``; ``"a\\"b"`` ends after the backslash). A backslash is therefore
already inert, a double quote cannot be represented and is replaced by ``'``, and
control characters (newlines above all) are refused.
"""

from __future__ import annotations

import hashlib
import re

from moenet_core import ConfigError

#: BIRD 3.2 keywords a generator could plausibly reach for (bird3.md §1.6). A
#: symbol spelled like one is an error in 3.2 and a warning in 3.3.
BIRD_KEYWORDS: frozenset[str] = frozenset(
    """
    as by from to in id s ms us ao rr rx tx on off yes no peer neighbor local remote source path link
    latency tunnel wired wireless rtt cost metric type name key port time hold hop route via dev table
    tables filter function define limit action block interface import export static kernel device
    direct babel bgp ospf rip rpki roa aspa pipe bfd mrt bmp radv l3vpn thread threads group default
    express mode next self keep check gateway igp preference description disabled debug password error
    events packets states routes protocols channels interfaces multihop security ttl graceful restart
    long lived stale min max
    int bool ip prefix pair quad ec lc rd string set enum clist eclist lclist bgppath bgpmask net proto
    dest gw ifname ifindex weight onlink scope if then else case for do return print accept reject empty
    add delete where defined unset true false all none ipv4 ipv6 roa4 roa6 template include log
    router protocol
    """.split()  # noqa: SIM905 - a word list reads better than 150 quoted strings
)

SYMBOL_MAX = 64
SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Linux interface names: IFNAMSIZ-1 = 15 bytes; we allow the usual safe set only.
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
#: A Babel interface pattern: an interface name, optionally ending in ``*``.
IFPATTERN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,13}\*?$")
#: DNS host name (RFC 1123 labels), for RPKI caches.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
#: A short name from the CP that becomes part of a symbol (RPKI server names).
SHORT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
#: Node names (same rule as the core's NODE_NAME_RE).
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

STRING_MAX = 256


class BirdConfigError(ConfigError):
    """CP data or peer intent that cannot be rendered; ``problems`` name each field."""

    def __init__(self, problems: list[str] | str, source: str = "bird-config") -> None:
        super().__init__([problems] if isinstance(problems, str) else problems, source)


def symbol_error(name: str) -> str | None:
    """Why ``name`` is not a safe BIRD symbol, or None."""
    if not SYMBOL_RE.match(name):
        return "must be letters, digits and '_' and not start with a digit"
    if len(name) > SYMBOL_MAX:
        return f"must be at most {SYMBOL_MAX} characters"
    if name.lower() in BIRD_KEYWORDS:
        return f"{name!r} is a BIRD keyword"
    if re.fullmatch(r"[0-9A-Fa-f_]{32,}", name):
        return "must not look like a byte string"
    return None


def symbol(name: str, field: str = "name") -> str:
    """Return ``name`` if it is a safe BIRD symbol, else raise ConfigError naming ``field``."""
    if err := symbol_error(name):
        raise BirdConfigError(f"{field}: {err}")
    return name


def ifname_error(v: str) -> str | None:
    """Why ``v`` is not a safe interface name, or None."""
    if not IFNAME_RE.match(v) or v in {".", ".."}:
        return "must be 1-15 characters of letters, digits, '_', '.' or '-' starting with a letter or digit"
    return None


def text_error(v: str, max_len: int = STRING_MAX) -> str | None:
    """Why free text cannot go into a BIRD string literal, or None."""
    if len(v) > max_len:
        return f"must be at most {max_len} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0 for c in v):
        return "must not contain control characters (newlines, tabs, ...)"
    if any(c in "\u2028\u2029\u0085" for c in v):
        return "must not contain line separators"
    return None


def bird_string(v: str, field: str = "value") -> str:
    """``v`` as an inert BIRD string literal, quotes included.

    BIRD strings have no escapes: ``"`` becomes ``'``, a backslash stays literal
    (it has no meaning to BIRD), control characters are refused.
    """
    if err := text_error(v):
        raise BirdConfigError(f"{field}: {err}")
    return '"' + v.replace('"', "'") + '"'


def short_hash(text: str, length: int = 6) -> str:
    """A short, stable hex digest: what tells two sessions with one ASN apart."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sanitise_symbol_part(text: str) -> str:
    """Lower-case, non-symbol characters replaced by ``_`` (for readable names)."""
    return re.sub(r"[^a-z0-9_]", "_", text.lower())
