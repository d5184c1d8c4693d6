"""The node's identity from one source: its AS, id and loopbacks.

Three places say who this node is: the local config file (``node.*``), the
CP's bootstrap ``config`` answer (merged under the file), and the CP's
``bird-config`` (``node`` and ``policy.dn42As``). They must agree.

- The file and the bootstrap answer are compared when the config is built
  (:func:`node_sources`): a key both set to different values is a config
  problem naming both values and where each came from (in bootstrap mode the
  answer is then refused like an outage: retried, the cached one used).
- Anything published at run time (the ``bird`` plugin's ``birdConfigSync``
  publishes the policy it applied, as source ``bird-config``) is checked
  against the config and every other publisher by :class:`IdentityBook`. A
  mismatch is an :class:`IdentityConflict` naming both values and both
  sources; the publisher keeps its last good input (the bird plugin does not
  apply that policy, and its ``/status`` says why).

The *effective* identity (:class:`NodeIdentity`) takes each key from the config
when it sets it, else from the first publisher that did. Plugins read it with
``ctx.identity`` (read-only) and publish with ``ctx.publish_identity``; no
plugin imports another for it. The sessions plugin's own-AS check uses
``ctx.identity.asn``, so a node whose file has no ``node.asn`` still refuses a
session with its own AS once the bird-config is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import MoenetError

if TYPE_CHECKING:
    from .config import AgentConfig

__all__ = ["FIELDS", "IdentityBook", "IdentityConflict", "NodeIdentity", "node_sources"]

#: Identity keys: attribute -> how the config spells it.
FIELDS: dict[str, str] = {
    "asn": "node.asn",
    "id": "node.id",
    "loopback_ipv4": "node.loopbackIpv4",
    "loopback_ipv6": "node.loopbackIpv6",
}
_CAMEL = {"asn": "asn", "id": "id", "loopback_ipv4": "loopbackIpv4", "loopback_ipv6": "loopbackIpv6"}
_LEGACY = {"loopback_ipv4": "dn42Ipv4", "loopback_ipv6": "dn42Ipv6"}

LOCAL = "the local config"
REMOTE = "the control plane's config answer"


class IdentityConflict(MoenetError):
    """Two sources disagree about who this node is; ``problems`` names each
    mismatch with both values and their sources."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("node identity mismatch: " + "; ".join(problems))


@attrs.frozen(kw_only=True)
class NodeIdentity:
    """The effective identity: each key and the source it came from (None: nobody set it)."""

    asn: int | None = None
    id: int | None = None
    loopback_ipv4: str | None = None
    """Bare address (no prefix length)."""
    loopback_ipv6: str | None = None
    sources: Mapping[str, str] = attrs.field(factory=dict)
    """Attribute -> where its value came from (``the local config (/etc/...)``,
    ``the control plane's config answer``, ``bird-config``...)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "asn": self.asn,
            "id": self.id,
            "loopbackIpv4": self.loopback_ipv4,
            "loopbackIpv6": self.loopback_ipv6,
            "sources": {_CAMEL[k]: v for k, v in sorted(self.sources.items())},
        }


def normalise(key: str, value: Any) -> Any:
    """A comparable form of ``value`` (None for unset or unusable)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if key in ("asn", "id"):
        if isinstance(value, str) and value.upper().startswith("AS"):
            value = value[2:]
        try:
            n = int(value)
        except (TypeError, ValueError):
            return None
        return n if n > 0 else None
    try:
        return str(ipaddress.ip_interface(str(value).strip()).ip)
    except ValueError:
        return None


def _lookup(section: Any, name: str) -> Any:
    if not isinstance(section, Mapping):
        return None
    for k, v in section.items():
        if str(k).lower() == name.lower():
            return v
    return None


def _raw_values(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Identity keys a raw config (or overlay) sets, normalised (``wireguard.dn42Ipv4/6`` too)."""
    out: dict[str, Any] = {}
    if not raw:
        return out
    node = _lookup(raw, "node")
    wg = _lookup(raw, "wireguard")
    for key, camel in _CAMEL.items():
        value = normalise(key, _lookup(node, camel))
        if value is None and key in _LEGACY:
            value = normalise(key, _lookup(wg, _LEGACY[key]))
        if value is not None:
            out[key] = value
    return out


def node_sources(
    local: Mapping[str, Any], remote: Mapping[str, Any] | None, source: str | None, problems: list[str]
) -> dict[str, str]:
    """Where each identity key of the merged config comes from; a key the local
    file (or its ``MOENET_*`` override) and the CP's bootstrap answer both set
    to different values is appended to ``problems`` with both values."""
    local_name = f"{LOCAL} ({source})" if source else LOCAL
    mine, theirs = _raw_values(local), _raw_values(remote)
    out: dict[str, str] = {}
    for key in FIELDS:
        if key in mine:
            out[key] = local_name
            if key in theirs and theirs[key] != mine[key]:
                problems.append(
                    f"{FIELDS[key]}: {local_name} says {mine[key]}, {REMOTE} says {theirs[key]}; "
                    "they must agree (fix one of them)"
                )
        elif key in theirs:
            out[key] = REMOTE
    return out


class IdentityBook:
    """The agent's record of who the node is (see the module doc)."""

    def __init__(self, config: Callable[[], AgentConfig]) -> None:
        self._config = config
        self._published: dict[str, dict[str, Any]] = {}
        """Source -> the identity keys it published last (normalised)."""

    def _configured(self) -> dict[str, tuple[Any, str]]:
        cfg = self._config()
        sources: Mapping[str, str] = getattr(cfg, "node_sources", {}) or {}
        fallback = f"{LOCAL} ({cfg.source})" if cfg.source else LOCAL
        out: dict[str, tuple[Any, str]] = {}
        for key in FIELDS:
            value = normalise(key, getattr(cfg.node, key, None))
            if value is not None:
                out[key] = (value, sources.get(key, fallback))
        return out

    def effective(self) -> NodeIdentity:
        """Each key from the config, else from the first publisher that set it."""
        values = self._configured()
        for source, published in self._published.items():
            for key, value in published.items():
                values.setdefault(key, (value, source))
        return NodeIdentity(
            **{k: v for k, (v, _) in values.items()},
            sources={k: s for k, (_, s) in values.items()},
        )

    def check(self, source: str, **values: Any) -> list[str]:
        """The mismatches between ``values`` and what the config and the other
        publishers say (each naming both values and sources); empty: they agree."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown identity keys: {', '.join(sorted(unknown))}")
        others: dict[str, list[tuple[Any, str]]] = {}
        for key, (value, where) in self._configured().items():
            others.setdefault(key, []).append((value, where))
        for other, published in self._published.items():
            if other != source:
                for key, value in published.items():
                    others.setdefault(key, []).append((value, other))
        problems: list[str] = []
        for key, raw in values.items():
            value = normalise(key, raw)
            if value is None:
                continue
            for theirs, where in others.get(key, ()):
                if theirs != value:
                    problems.append(f"{FIELDS[key]}: {source} says {value}, {where} says {theirs}")
        return problems

    def publish(self, source: str, **values: Any) -> NodeIdentity:
        """Record what ``source`` says (replacing its previous word) and return
        the effective identity; :class:`IdentityConflict` and nothing recorded
        when it disagrees with the config or another publisher."""
        problems = self.check(source, **values)
        if problems:
            raise IdentityConflict(problems)
        self._published[source] = {k: n for k, v in values.items() if (n := normalise(k, v)) is not None}
        return self.effective()
