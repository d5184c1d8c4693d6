"""The agent's table as data: the script that creates it, the form ``nft -j``
lists it in, and the comparison between the two.

Pure functions without I/O, so what decides "is there anything to do" is unit
tested without a kernel. The desired table is always written whole; the
comparison therefore only has to answer "identical or not", and the details it
reports are for the log.

Owners: every owner (``sessions``, ``mesh``) has its own set and accept rule.
The default owner's are the ones the table had before owners existed
(``udp_ports``, comment ``moenet-agent: open ports``), so a table written by an
older agent is read as the sessions owner's, unchanged; any other owner's set is
``udp_ports_<owner>``, present while it holds ports, its accept rule after the
default owner's and before the managed-range drop rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from moenet_core import DEFAULT_OWNER

SET_NAME = "udp_ports"
"""The default owner's set (the only set before owners existed)."""
OWNER_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
CHAIN_NAME = "input"
TABLE_COMMENT = "managed by moenet-agent: hand edits are overwritten on its next sync"
SET_COMMENT = "moenet-agent: UDP ports open for tunnels"
CHAIN_COMMENT = "moenet-agent: tunnel ports (priority before the usual filter chain)"
ACCEPT_COMMENT = "moenet-agent: open ports"
DROP_COMMENT = "moenet-agent: closed ports of the managed range"

Obj = dict[str, Any]
"""One listed object, ``{"set": {...}}``, normalised (no handles, no counter values)."""


class ListingError(ValueError):
    """``nft -j`` printed something that is not a ruleset listing."""


def validate_ports(ports: Iterable[object]) -> frozenset[int]:
    """The ports as a frozenset; raises ValueError naming every bad one.

    Runs before any nft call: a bad port must never reach a transaction.
    """
    if isinstance(ports, str | bytes | Mapping):
        raise ValueError(f"ports must be a set of port numbers, not {type(ports).__name__}")
    bad = [p for p in ports if type(p) is not int or not 1 <= p <= 65535]
    if bad:
        shown = ", ".join(repr(p) for p in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(f"invalid UDP ports (must be integers 1-65535): {shown}")
    return frozenset(p for p in ports if isinstance(p, int))


def validate_owner(owner: object) -> str:
    """An owner name (``sessions``, ``mesh``): 1-32 of ``[a-z0-9_-]``, starting with
    a letter; raises ValueError. It becomes part of a set name in an nft script."""
    if not isinstance(owner, str) or not OWNER_RE.fullmatch(owner):
        raise ValueError(
            f"firewall owner {owner!r} is invalid: use 1-32 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter"
        )
    return owner


def set_name(owner: str) -> str:
    """``udp_ports`` for the default owner, ``udp_ports_<owner>`` for the others."""
    return SET_NAME if validate_owner(owner) == DEFAULT_OWNER else f"{SET_NAME}_{owner}"


def owner_of_set(name: object) -> str | None:
    """The owner whose set ``name`` is; None for any other name (including the
    non-canonical ``udp_ports_sessions``)."""
    if name == SET_NAME:
        return DEFAULT_OWNER
    if not isinstance(name, str) or not name.startswith(f"{SET_NAME}_"):
        return None
    owner = name[len(SET_NAME) + 1 :]
    return owner if owner != DEFAULT_OWNER and OWNER_RE.fullmatch(owner) else None


def set_comment(owner: str) -> str:
    return SET_COMMENT if owner == DEFAULT_OWNER else f"{SET_COMMENT} of {owner}"


def accept_comment(owner: str) -> str:
    return ACCEPT_COMMENT if owner == DEFAULT_OWNER else f"{ACCEPT_COMMENT} of {owner}"


OwnerSets = tuple[tuple[str, frozenset[int]], ...]


def canonical_sets(value: Mapping[str, Iterable[int]] | Iterable[tuple[str, Iterable[int]]]) -> OwnerSets:
    """Canonical form: the default owner first (always, even empty), then the other
    owners that hold ports, by name."""
    items = value.items() if isinstance(value, Mapping) else value
    sets = {validate_owner(owner): frozenset(ports) for owner, ports in items}
    default = sets.pop(DEFAULT_OWNER, frozenset())
    return ((DEFAULT_OWNER, default), *sorted((o, p) for o, p in sets.items() if p))


@attrs.frozen(kw_only=True)
class Desired:
    """Everything the table's content depends on. ``sets`` maps each owner to its
    ports (a mapping is accepted; kept as a canonical tuple, see :func:`canonical_sets`)."""

    table: str
    sets: OwnerSets = attrs.field(converter=canonical_sets)
    priority: int
    managed_range: tuple[int, int] | None = None

    @property
    def ports(self) -> frozenset[int]:
        """Every owner's ports: what is open."""
        return frozenset().union(*(ports for _owner, ports in self.sets))

    def owner_ports(self, owner: str) -> frozenset[int]:
        return dict(self.sets).get(owner, frozenset())


def _dport(value: object) -> Obj:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": value}}


def _range_text(bounds: tuple[int, int]) -> str:
    lo, hi = bounds
    return str(lo) if lo == hi else f"{lo}-{hi}"


def render(want: Desired) -> str:
    """The ``nft -f`` script that replaces the table with ``want`` in one transaction.

    ``table T {}`` + ``delete table T`` first makes the script valid whether or
    not the table exists (and whatever was hand-added to it); the kernel applies
    the file as one batch, so packets see the old table or the new one, never
    a half-built one.
    """
    t = want.table
    lines = [
        f"table inet {t} {{}}",
        f"delete table inet {t}",
        f"table inet {t} {{",
        f'\tcomment "{TABLE_COMMENT}"',
    ]
    for owner, ports in want.sets:
        lines += [
            f"\tset {set_name(owner)} {{",
            "\t\ttype inet_service",
            f'\t\tcomment "{set_comment(owner)}"',
        ]
        if ports:
            lines.append("\t\telements = { " + ", ".join(str(p) for p in sorted(ports)) + " }")
        lines.append("\t}")
    lines += [
        f"\tchain {CHAIN_NAME} {{",
        f'\t\tcomment "{CHAIN_COMMENT}"',
        f"\t\ttype filter hook input priority {want.priority}; policy accept;",
    ]
    for owner, _ports in want.sets:
        lines.append(f'\t\tudp dport @{set_name(owner)} counter accept comment "{accept_comment(owner)}"')
    if want.managed_range is not None:
        rng = _range_text(want.managed_range)
        lines.append(f'\t\tudp dport {rng} counter drop comment "{DROP_COMMENT}"')
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def render_delete(table: str) -> str:
    """Delete the table; valid (and a no-op) when it is already gone."""
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def expected(want: Desired) -> list[Obj]:
    """The normalised listing the kernel gives for ``want`` (nft 1.0.6 JSON)."""
    t = want.table
    base = {"family": "inet", "table": t}
    objs: list[Obj] = [{"table": {"family": "inet", "name": t}}]
    for owner, ports in want.sets:
        name = set_name(owner)
        nft_set: Obj = {**base, "name": name, "type": "inet_service", "comment": set_comment(owner)}
        if ports:
            nft_set["elem"] = sorted(ports)
        objs.append({"set": nft_set})
    objs.append(
        {
            "chain": {
                **base,
                "name": CHAIN_NAME,
                "type": "filter",
                "hook": "input",
                "prio": want.priority,
                "policy": "accept",
            }
        }
    )
    objs += [
        {
            "rule": {
                **base,
                "chain": CHAIN_NAME,
                "comment": accept_comment(owner),
                "expr": [_dport(f"@{set_name(owner)}"), {"counter": None}, {"accept": None}],
            }
        }
        for owner, _ports in want.sets
    ]
    if want.managed_range is not None:
        lo, hi = want.managed_range
        right: object = lo if lo == hi else {"range": [lo, hi]}
        objs.append(
            {
                "rule": {
                    **base,
                    "chain": CHAIN_NAME,
                    "comment": DROP_COMMENT,
                    "expr": [_dport(right), {"counter": None}, {"drop": None}],
                }
            }
        )
    return objs


def _elem_key(elem: object) -> tuple[int, int, str]:
    if isinstance(elem, int):
        return (0, elem, "")
    return (1, 0, json.dumps(elem, sort_keys=True))


def _normalise(kind: str, body: Mapping[str, Any]) -> Obj:
    out = {k: v for k, v in body.items() if k != "handle"}
    if kind in ("table", "chain"):
        # Table and chain comments are cosmetic, and nft 1.0.6 does not list
        # them in JSON while later versions do: never compare them.
        out.pop("comment", None)
    if kind == "set" and isinstance(out.get("elem"), list):
        out["elem"] = sorted(out["elem"], key=_elem_key)
    if kind == "rule" and isinstance(out.get("expr"), list):
        out["expr"] = [
            {"counter": None} if isinstance(e, dict) and "counter" in e else e for e in out["expr"]
        ]
    return {kind: out}


def parse_listing(text: str) -> list[Obj]:
    """Normalise ``nft -j list table ...`` output: handles dropped, counter
    values zeroed (they change with traffic, not with configuration), set
    elements sorted; the metainfo object is skipped."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ListingError(f"nft printed invalid JSON: {exc}") from exc
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ListingError("nft printed JSON without an 'nftables' list")
    objs: list[Obj] = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise ListingError(f"unexpected object in nft listing: {str(item)[:120]}")
        [(kind, body)] = item.items()
        if kind == "metainfo":
            continue
        if not isinstance(body, dict):
            raise ListingError(f"unexpected {kind} in nft listing: {str(body)[:120]}")
        objs.append(_normalise(kind, body))
    return objs


def owner_sets(objs: Iterable[Obj]) -> dict[str, frozenset[int]]:
    """Each owner's ports, as listed: every owner set present (empty ones too);
    sets of other names are not any owner's."""
    out: dict[str, frozenset[int]] = {}
    for obj in objs:
        body = obj.get("set")
        if isinstance(body, dict) and (owner := owner_of_set(body.get("name"))) is not None:
            out[owner] = _elements(body)
    return out


def ports_in(objs: Iterable[Obj], owner: str | None = None) -> frozenset[int]:
    """The ports in the agent's sets as listed: every owner's, or only ``owner``'s."""
    sets = owner_sets(objs)
    if owner is not None:
        return sets.get(owner, frozenset())
    return frozenset().union(*sets.values())


def _elements(body: Mapping[str, Any]) -> frozenset[int]:
    """The ports of one listed set (single ports, element objects, ranges)."""
    ports: set[int] = set()
    for elem in body.get("elem", []):
        if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
            elem = elem["elem"].get("val")
        if isinstance(elem, int):
            ports.add(elem)
        elif isinstance(elem, dict) and isinstance(elem.get("range"), list) and len(elem["range"]) == 2:
            lo, hi = elem["range"]
            if isinstance(lo, int) and isinstance(hi, int):
                ports.update(range(max(lo, 1), min(hi, 65535) + 1))
    return frozenset(ports)


def _without_elements(objs: Iterable[Obj]) -> list[Obj]:
    out = []
    for obj in objs:
        if "set" in obj:
            obj = {"set": {k: v for k, v in obj["set"].items() if k != "elem"}}
        out.append(obj)
    return out


def _summary(obj: Obj) -> str:
    [(kind, body)] = obj.items()
    if kind == "rule":
        text = json.dumps(body.get("expr"), sort_keys=True)
        return f"rule in {body.get('chain')}: {text[:160]}"
    return f"{kind} {body.get('name', '?')}: {json.dumps(body, sort_keys=True)[:160]}"


def describe(current: list[Obj] | None, want: Desired, want_objs: list[Obj]) -> list[str]:
    """Human-readable reasons why ``current`` (None: no table) is not ``want``.

    Empty when they are identical. Anything other than opening or closing
    ports is drift: someone changed the agent's table by hand.
    """
    if current is None:
        return [f"create table inet {want.table} with {len(want.ports)} open ports"]
    if current == want_objs:
        return []
    have = owner_sets(current)
    wanted = dict(want.sets)
    reasons = []
    for owner in sorted(have.keys() | wanted.keys(), key=lambda o: (o != DEFAULT_OWNER, o)):
        have_ports, want_ports = have.get(owner, frozenset()), wanted.get(owner, frozenset())
        if opened := sorted(want_ports - have_ports):
            reasons.append(f"{owner}: open " + ", ".join(map(str, opened)))
        if closed := sorted(have_ports - want_ports):
            reasons.append(f"{owner}: close " + ", ".join(map(str, closed)))
    # Compared with the current ports, so an owner's set (and rule) coming or
    # going with its first or last port is not reported as drift.
    drift = drift_of(current, expected(attrs.evolve(want, sets=have)))
    if not drift and current != want_objs and not reasons:
        drift = ["set elements differ in form (element options added by hand)"]
    return reasons + drift


def drift_of(current: list[Obj], want_objs: list[Obj]) -> list[str]:
    """Differences other than the set's elements (hand edits, or a changed
    priority or managed range)."""
    have, want = _without_elements(current), _without_elements(want_objs)
    if have == want:
        return []
    out = [f"missing {_summary(o)}" for o in want if o not in have]
    out += [f"unexpected {_summary(o)}" for o in have if o not in want]
    return out or ["objects in a different order"]
