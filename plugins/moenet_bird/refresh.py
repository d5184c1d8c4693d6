"""The ``birdRouteRefresh`` task: a periodic route refresh against ghost routes.

The DN42 wiki asks operators to refresh their peers' routes now and then (at
most once a day) so that a route a peer withdrew but BIRD never heard of (a
"ghost route") does not live forever. Each run sends ``reload bgp in <name>``
(a route-refresh request: the peer sends its routes again) to every agent-owned
eBGP protocol (``dn42_*``) that is Established, spread evenly over
``bird.routeRefreshSpread`` seconds so that a node with 1 000 sessions does not
ask them all at once. ``in`` and ``out`` are separate commands: a bare
``reload bgp NAME`` answers twice and would desynchronise the control socket.

Interval: ``tasks.birdRouteRefresh.interval`` (default 86 400 s); off:
``tasks.birdRouteRefresh.enabled: false``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moenet_core import BackendUnavailable, MoenetError, RoutingBackend

from .backend import BirdRoutingBackend
from .config import BirdConfig
from .protocol import BirdClientError

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["DEFAULT_INTERVAL", "TASK_NAME", "RouteRefresh"]

TASK_NAME = "birdRouteRefresh"
DEFAULT_INTERVAL = 86400.0
#: The agent's eBGP protocols (``dn42_<asn>_<hash>[_v4|_v6]``).
EBGP_PREFIX = "dn42_"


class RouteRefresh:
    """Ask every Established eBGP peer to resend its routes (module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        section = ctx.section if isinstance(ctx.section, BirdConfig) else BirdConfig()
        self.spread = section.route_refresh_spread
        self._m_refreshes = ctx.metrics.counter(
            "route_refreshes_total",
            "Route refreshes (reload bgp in) sent to eBGP peers by result: sent, failed.",
            ["result"],
        )

    def _backend(self) -> BirdRoutingBackend:
        backend = self.ctx.backend("routing", RoutingBackend)
        if not isinstance(backend, BirdRoutingBackend):
            raise BackendUnavailable("the routing backend is not moenet_bird's")
        return backend

    async def run_once(self) -> dict[str, Any]:
        client = self._backend().client
        try:
            protocols = await client.protocols()
        except (BirdClientError, OSError, TimeoutError) as exc:
            raise MoenetError(f"route refresh: cannot list BIRD's protocols: {exc}") from None
        names = sorted(
            p.name
            for p in protocols
            if p.proto == "BGP" and p.name.startswith(EBGP_PREFIX) and p.bgp_state == "Established"
        )
        gap = self.spread / len(names) if names else 0.0
        sent: list[str] = []
        failed: dict[str, str] = {}
        for i, name in enumerate(names):
            if i and gap > 0:
                await self.ctx.clock.sleep(gap)
            try:
                reply = await client.command(f"reload bgp in {name}", check=False)
            except (BirdClientError, OSError, TimeoutError) as exc:
                failed[name] = str(exc)
                self._m_refreshes.labels(result="failed").inc()
                continue
            errors = [line.text for line in reply.lines if line.code >= 8000]
            if errors:
                # "not up" when the session dropped since the listing: nothing to refresh.
                failed[name] = "; ".join(errors)
                self._m_refreshes.labels(result="failed").inc()
            else:
                sent.append(name)
                self._m_refreshes.labels(result="sent").inc()
        self.ctx.log.info(
            "route refresh: {} eBGP sessions asked to resend their routes, {} failed{}",
            len(sent),
            len(failed),
            "".join(f"; {k}: {v}" for k, v in sorted(failed.items())[:5]),
        )
        return {"refreshed": len(sent), "failed": failed}
