"""The sessions' links as RTT targets, and the latency tiers measured on them.

The RTT plugin (``rttMeasurement``) knows nothing about sessions: it probes the
``LinkTarget`` objects plugins offer (``moenet_link_targets``) and announces the
results (``moenet_link_latency``). :class:`LinkBook` is the sessions plugin's side
of that contract:

- **targets**: one per configured session, from what the agent put on the node
  (``Previous.configured``): the tunnel interface and the peer's addresses in the
  order DN42 operators expect a probe to use them (IPv6 link-local, IPv6, IPv4).
- **latency**: the latest measurement per session (for the metric report and
  ``/status``) and the tier per session, persisted (``latency.json``) so that a
  restarted agent renders the same peer files at once, with no reconfigure and
  no community change, before the first new measurement.

A tier change is not applied here: the reconciler reads :meth:`LinkBook.tiers`
when it plans, so all tier changes of one RTT round land in the next cycle's one
``declare`` (one coalesced BIRD reconfigure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from moenet_core import LinkLatency, LinkTarget, StateStore

from .records import ConfiguredSession

OWNER = "sessions"
LATENCY_FILE = "latency.json"
LATENCY_VERSION = 1


@attrs.frozen(kw_only=True)
class LatencyDoc:
    """``latency.json``: the measured tier per session uuid. Entries that are not a
    tier 1-9 are skipped when read (a damaged entry costs only its own tier)."""

    tiers: dict[str, Any] = attrs.field(factory=dict)


def link_target(uuid: str, configured: ConfiguredSession) -> LinkTarget | None:
    """The RTT target of one configured session, or None without a usable address."""
    peer = configured.peer
    addresses = tuple(a for a in (peer.neighbor_link_local, peer.neighbor_ipv6, peer.neighbor_ipv4) if a)
    if not addresses or not configured.interface:
        return None
    labels = {"asn": str(peer.asn)}
    return LinkTarget(
        owner=OWNER, key=uuid, interface=configured.interface, addresses=addresses, labels=labels
    )


class LinkBook:
    """Latest RTT results and persisted tiers of the sessions' links."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._latest: dict[str, LinkLatency] = {}
        self._tiers: dict[str, int] | None = None

    def targets(self, configured: Mapping[str, ConfiguredSession]) -> list[LinkTarget]:
        return [t for u, c in sorted(configured.items()) if (t := link_target(u, c)) is not None]

    def tiers(self) -> dict[str, int]:
        """Measured tier per session uuid (sessions never measured are absent)."""
        if self._tiers is None:
            doc = self._state.load(LATENCY_FILE, LatencyDoc, version=LATENCY_VERSION, default=LatencyDoc())
            self._tiers = {
                str(k): v
                for k, v in doc.tiers.items()
                if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 9
            }
        return dict(self._tiers)

    def latest(self, uuid: str) -> LinkLatency | None:
        return self._latest.get(uuid)

    def update(self, measurements: Iterable[LinkLatency]) -> dict[str, tuple[int | None, int]]:
        """Take one RTT round; returns the sessions whose tier changed (uuid -> (old, new))."""
        tiers = self.tiers()
        changed: dict[str, tuple[int | None, int]] = {}
        for m in measurements:
            if m.owner != OWNER:
                continue
            self._latest[m.key] = m
            if m.tier is not None and 1 <= m.tier <= 9 and tiers.get(m.key) != m.tier:
                changed[m.key] = (tiers.get(m.key), m.tier)
                tiers[m.key] = m.tier
        if changed:
            self._save(tiers)
        return changed

    def forget(self, keep: Iterable[str]) -> None:
        """Drop sessions no longer configured (their tier must not outlive them)."""
        keep = set(keep)
        self._latest = {k: v for k, v in self._latest.items() if k in keep}
        tiers = self.tiers()
        if set(tiers) - keep:
            self._save({k: v for k, v in tiers.items() if k in keep})

    def _save(self, tiers: dict[str, int]) -> None:
        self._tiers = dict(tiers)
        self._state.save(LATENCY_FILE, LatencyDoc(tiers=dict(sorted(tiers.items()))), version=LATENCY_VERSION)
