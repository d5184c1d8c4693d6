"""The ``birdRoaHealth`` task and the ``bird.roa`` health check.

Every run reads from BIRD how many ROAs each table holds (``show route table
dn42_roa count``) and which RTR caches are up (the ``RPKI`` protocols of ``show
protocols``), and exports them (``moenet_bird_roa_entries{table}``,
``moenet_bird_rpki_cache_up{cache}``). The health hook reports from that last
observation only (no I/O in the hook):

- ``healthy`` with a note when the mode is loose and no source exists at all
  (origin validation is off by choice: nothing to watch);
- ``degraded`` when a ROA table is empty (in strict mode no eBGP route is then
  accepted; in loose mode nothing is validated), when every RTR cache is down
  and no static ROA source is fresh, when a static source is refused or older
  than ``bird.roaMaxAge``, or when BIRD could not be asked;
- ``healthy`` otherwise.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from moenet_core import BackendUnavailable, HealthCheck, MoenetError, RoutingBackend, hookimpl

from .backend import BirdRoutingBackend
from .config import BirdConfig
from .protocol import BirdClientError
from .roa import effective_roa_mode
from .roa_sources import TASK_NAME as SOURCES_TASK
from .roa_sources import RoaSources

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["CHECK_NAME", "TABLES", "TASK_NAME", "RoaHealth", "parse_route_count"]

TASK_NAME = "birdRoaHealth"
CHECK_NAME = "bird.roa"
TABLES = ("dn42_roa", "dn42_roa_v6")
_COUNT = re.compile(r"(\d+) of (\d+) routes for (\d+) networks in table (\S+)")


def parse_route_count(lines: list[str], table: str) -> int | None:
    """The number of networks in ``table`` from ``show route table T count``."""
    for line in lines:
        m = _COUNT.search(line)
        if m and m.group(4) == table:
            return int(m.group(3))
    return None


class RoaHealth:
    """Observe the ROA tables and RTR caches; report ``bird.roa`` (module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.section = ctx.section if isinstance(ctx.section, BirdConfig) else BirdConfig()
        self.entries: dict[str, int] | None = None
        """ROAs per table at the last observation; None before one."""
        self.caches: dict[str, bool] = {}
        self.read_error: str | None = None
        self.observed_at: float | None = None
        self._m_entries = ctx.metrics.gauge(
            "roa_entries", "ROAs in each ROA table (RTR caches and static files together).", ["table"]
        )
        self._m_cache_up = ctx.metrics.gauge(
            "rpki_cache_up", "1 while the RTR cache's rpki protocol is up (Established), else 0.", ["cache"]
        )
        ctx.register_hooks(self)

    def _client(self) -> Any:
        backend = self.ctx.backend("routing", RoutingBackend)
        if not isinstance(backend, BirdRoutingBackend):
            raise BackendUnavailable("the routing backend is not moenet_bird's")
        return backend.client

    async def run_once(self) -> dict[str, Any]:
        try:
            client = self._client()
            entries: dict[str, int] = {}
            for table in TABLES:
                reply = await client.command(f"show route table {table} count")
                count = parse_route_count(list(reply.texts()), table)
                entries[table] = count or 0
            rpki = await client.protocols_named("rpki_*")  # RpkiServer.symbol: not the eBGP sessions
            caches = {p.name: p.state == "up" for p in rpki if p.proto == "RPKI"}
        except (BirdClientError, OSError, TimeoutError, BackendUnavailable) as exc:
            self.read_error = f"cannot read the ROA tables from BIRD: {exc}"
            raise MoenetError(self.read_error) from None
        self.read_error = None
        self.entries, self.caches, self.observed_at = entries, caches, time.time()
        for table, n in entries.items():
            self._m_entries.labels(table=table).set(n)
        for name, up in caches.items():
            self._m_cache_up.labels(cache=name).set(1 if up else 0)
        return {"entries": entries, "caches": caches}

    def _mode(self) -> str:
        """The ROA mode the live policy renders with (strict before any policy)."""
        try:
            backend = self.ctx.backend("routing", RoutingBackend)
        except BackendUnavailable:
            return "strict"
        if not isinstance(backend, BirdRoutingBackend) or backend.policy is None:
            return "strict"
        return effective_roa_mode(backend.policy, backend.local)

    def _sources(self) -> RoaSources | None:
        return self.ctx.task(SOURCES_TASK, RoaSources)

    def verdict(self, now: float | None = None) -> HealthCheck | None:
        """The check from the last observation, or None before the first one."""
        now = time.time() if now is None else now
        if self.read_error is not None and self.entries is None:
            return HealthCheck(name=CHECK_NAME, verdict="degraded", reason=self.read_error)
        if self.entries is None:
            return None
        reasons: list[str] = []
        sources = self._sources()
        configured = bool(self.caches) or (sources is not None and sources.configured)
        if not configured and self._mode() == "loose":
            # An explicit choice (loose, and no source anywhere): nothing to watch.
            return HealthCheck(
                name=CHECK_NAME,
                verdict="healthy",
                reason="no ROA source and ROA mode loose: origin validation is off",
            )
        empty = [t for t, n in self.entries.items() if n == 0]
        if empty:
            reasons.append(
                f"ROA table {', '.join(empty)} empty: no RTR cache answered and no static ROA file "
                "fed it (check policy.rpkiServers / bird.rpkiServers, bird.roaFiles, bird.roaUrls)"
            )
        fresh_static = False
        if sources is not None:
            for src in sources.sources.values():
                if src.error:
                    reasons.append(f"ROA source {src.name}: {src.error}")
                age = None if src.good_at is None else now - src.good_at
                if age is not None and age > self.section.roa_max_age:
                    reasons.append(
                        f"ROA source {src.name} is {int(age // 3600)} h old (bird.roaMaxAge "
                        f"{int(self.section.roa_max_age)} s)"
                    )
                elif src.entries:
                    fresh_static = True
        down = sorted(n for n, up in self.caches.items() if not up)
        if self.caches and len(down) == len(self.caches) and not fresh_static:
            reasons.append(f"every RTR cache is down ({', '.join(down)}); the ROA tables will expire")
        if self.read_error is not None:
            reasons.append(self.read_error)
        if reasons:
            return HealthCheck(name=CHECK_NAME, verdict="degraded", reason="; ".join(reasons))
        n4, n6 = (self.entries.get(t, 0) for t in TABLES)
        up = len(self.caches) - len(down)
        note = f"{n4} IPv4 / {n6} IPv6 ROAs, {up} of {len(self.caches)} RTR caches up"
        return HealthCheck(name=CHECK_NAME, verdict="healthy", reason=note)

    @hookimpl
    def moenet_health_checks(self) -> list[HealthCheck]:
        check = self.verdict()
        return [] if check is None else [check]
