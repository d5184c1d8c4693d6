"""The ``birdAggregates`` task: withdraw the own aggregates while the node is isolated.

Every node originates the network's aggregates (``own4`` / ``own6``). A node of
a multi-node network that reaches no other node would keep attracting traffic
for addresses behind the others and black-hole it. The signal is BIRD's own:
the node's iBGP sessions (the ``ibgp_*`` BGP protocols of ``show protocols``).

- no iBGP session at all (a single-node network, or iBGP disabled): announce;
- at least one Established: announce (at once, when they were withdrawn);
- some, none Established for ``bird.isolationHoldDown`` seconds in a row:
  withdraw (``own4`` / ``own6`` rendered ``disabled``), so a blip or a restart of
  the iBGP side does not flap the aggregates;
- BIRD not answering: no change.

``bird.withdrawIsolated: false`` always announces. While withdrawn the node's
health carries ``bird.isolated`` (degraded) and
``moenet_bird_aggregates_announced`` is 0. The hold-down starts at the first
observation, so an agent restarted while isolated announces until it has
passed once more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import BackendUnavailable, HealthCheck, MoenetError, RoutingBackend, hookimpl

from .backend import BirdRoutingBackend
from .config import BirdConfig
from .protocol import BirdClientError

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["CHECK_NAME", "IBGP_PREFIX", "TASK_NAME", "Aggregates", "AggregatesError"]

TASK_NAME = "birdAggregates"
CHECK_NAME = "bird.isolated"
#: The agent's iBGP protocols (``ibgp_<name>_<node id>``).
IBGP_PREFIX = "ibgp_"


class AggregatesError(MoenetError):
    """BIRD could not be asked, or the new aggregate state was not applied."""


class Aggregates:
    """Decide and apply whether the own aggregates are announced (module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        section = ctx.section if isinstance(ctx.section, BirdConfig) else BirdConfig()
        self.enabled = section.withdraw_isolated
        self.hold_down = section.isolation_hold_down
        self.down_since: float | None = None
        """Monotonic time since which no iBGP session was Established (None: one is, or none exist)."""
        self.sessions: dict[str, str] = {}
        self._m_announced = ctx.metrics.gauge(
            "aggregates_announced", "1 while the own aggregates are announced, 0 while withdrawn (isolated)."
        )
        self._m_withdrawals = ctx.metrics.counter(
            "aggregate_withdrawals_total",
            "Times the own aggregates were withdrawn because the node was isolated.",
        )
        self._m_announced.set(1)
        ctx.register_hooks(self)

    def _backend(self) -> BirdRoutingBackend:
        backend = self.ctx.backend("routing", RoutingBackend)
        if not isinstance(backend, BirdRoutingBackend):
            raise BackendUnavailable("the routing backend is not moenet_bird's")
        return backend

    def decide(self, sessions: dict[str, str], now: float) -> bool:
        """Whether to announce, given each iBGP protocol's BGP state, at monotonic ``now``."""
        self.sessions = sessions
        if not self.enabled or not sessions or "Established" in sessions.values():
            self.down_since = None
            return True
        if self.down_since is None:
            self.down_since = now
        return now - self.down_since < self.hold_down

    async def run_once(self) -> dict[str, Any]:
        backend = self._backend()
        try:
            protocols = await backend.client.protocols_named(IBGP_PREFIX + "*")
        except (BirdClientError, OSError, TimeoutError) as exc:
            raise AggregatesError(f"cannot read the iBGP sessions from BIRD: {exc}; no change") from None
        sessions = {
            p.name: p.bgp_state or p.state
            for p in protocols
            if p.proto == "BGP" and p.name.startswith(IBGP_PREFIX)
        }
        announce = self.decide(sessions, self.ctx.clock.monotonic())
        if announce != backend.local.announce_aggregates:
            if announce:
                self.ctx.log.warning("an iBGP session is Established again: announcing the own aggregates")
            else:
                self._m_withdrawals.inc()
                self.ctx.log.warning(
                    "no iBGP session Established for {:.0f} s ({}): withdrawing the own aggregates",
                    self.hold_down,
                    ", ".join(f"{k} {v}" for k, v in sorted(sessions.items())),
                )
            result = await backend.set_local(attrs.evolve(backend.local, announce_aggregates=announce))
            if result is not None and not result.ok:
                raise AggregatesError(
                    f"aggregates {'announce' if announce else 'withdraw'} not applied: {result.error}"
                )
        self._m_announced.set(1 if backend.local.announce_aggregates else 0)
        return {"announced": backend.local.announce_aggregates, "ibgpSessions": len(sessions)}

    @hookimpl
    def moenet_health_checks(self) -> list[HealthCheck]:
        try:
            announced = self._backend().local.announce_aggregates
        except BackendUnavailable:
            return []
        if announced:
            return []
        return [
            HealthCheck(
                name=CHECK_NAME,
                verdict="degraded",
                reason="no iBGP session Established: this node reaches no other node, so its own "
                "aggregates are withdrawn (bird.withdrawIsolated)",
            )
        ]
