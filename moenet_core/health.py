"""Node health: the worst of every plugin's :class:`HealthCheck`.

Sessions have their own per-session verdicts; this is the node's: things that
make the node route worse without any one session failing (no ROA data, a host
setting that drops tunnel traffic). Plugins report through
``moenet_health_checks``; the core and the heartbeat show the same summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loguru import logger

from .descriptors import HEALTH_VERDICTS, HealthCheck

__all__ = ["gather_health", "health_summary"]


def gather_health(results: Iterable[tuple[str, Any]]) -> list[HealthCheck]:
    """The checks from ``moenet_health_checks`` results (``(plugin, result)``
    pairs), stamped with their plugin, sorted by name. Non-checks and repeated
    names are dropped with a warning naming the plugin."""
    seen: dict[str, HealthCheck] = {}
    for plugin, result in results:
        items = [result] if isinstance(result, HealthCheck) else result
        try:
            items = list(items)
        except TypeError:
            logger.warning("plugin {} returned {} from moenet_health_checks", plugin, type(result).__name__)
            continue
        for item in items:
            if not isinstance(item, HealthCheck):
                logger.warning("plugin {} returned a {} health check", plugin, type(item).__name__)
                continue
            if item.name in seen:
                logger.warning(
                    "health check {!r} reported by both {} and {}; kept the first",
                    item.name,
                    seen[item.name].plugin,
                    plugin,
                )
                continue
            seen[item.name] = HealthCheck(
                name=item.name, verdict=item.verdict, reason=item.reason, plugin=plugin
            )
    return [seen[k] for k in sorted(seen)]


def health_summary(checks: Iterable[HealthCheck]) -> dict[str, Any]:
    """``{"verdict": worst, "reasons": [...], "checks": [...]}`` (healthy with
    no checks)."""
    items = list(checks)
    worst = max((HEALTH_VERDICTS.index(c.verdict) for c in items), default=0)
    return {
        "verdict": HEALTH_VERDICTS[worst],
        "reasons": [f"{c.name}: {c.reason}" for c in items if c.verdict != "healthy" and c.reason],
        "checks": [c.to_json() for c in items],
    }
