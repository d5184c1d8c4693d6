"""The ``rtt`` config section: how links are probed and how tiers move.

The probe counts default to the Go agent's ``metric`` section (``pingCount``,
``pingTimeout`` in seconds, ``pingWorkers``), so an existing config keeps its
meaning; ``rtt.count`` / ``rtt.timeoutMs`` / ``rtt.concurrency`` override them.

Each check is attached twice with the core's ``checked(fn)``: as metadata the
core's structurer runs, so an error lands on the field's own path (``rtt.count:
must be an integer from 1 to 100``), and as an attrs validator, so an object
built in code is held to the same rules.
"""

from __future__ import annotations

import attrs

from moenet_core.config import MetricConfig, checked


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_count(value: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        return f"must be an integer from 1 to 100 (probes per target; got {value!r})"
    return None


def check_timeout_ms(value: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 10 <= value <= 60_000:
        return f"must be an integer from 10 to 60000 (milliseconds per probe; got {value!r})"
    return None


def check_concurrency(value: int | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 256:
        return f"must be an integer from 1 to 256 (links probed at once; got {value!r})"
    return None


def check_hysteresis(value: float) -> str | None:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        return (
            f"must be a number from 0 up to (not including) 1, a share of the tier boundary (got {value!r})"
        )
    return None


def check_confirm_rounds(value: int) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        return f"must be an integer from 1 to 100 (rounds a tier change must persist; got {value!r})"
    return None


def check_ewma_alpha(value: float) -> str | None:
    if not _is_number(value) or not 0.0 < value <= 1.0:
        return f"must be a number greater than 0 and at most 1 (weight of the newest round; got {value!r})"
    return None


@attrs.define(kw_only=True)
class RttConfig:
    """Section ``rtt``: every key has a default, so the section is optional."""

    count: int | None = attrs.field(default=None, **checked(check_count))
    """ICMP echo requests sent to one address per round (default: ``metric.pingCount``, 4)."""
    timeout_ms: int | None = attrs.field(default=None, **checked(check_timeout_ms))
    """How long one probe waits for its reply, in milliseconds (default: ``metric.pingTimeout``,
    5 s)."""
    concurrency: int | None = attrs.field(default=None, **checked(check_concurrency))
    """Links probed at the same time (default: ``metric.pingWorkers``, 32)."""
    hysteresis: float = attrs.field(default=0.2, **checked(check_hysteresis))
    """Margin around the current tier's band, as a share of each boundary (0.2 = 20 %)."""
    confirm_rounds: int = attrs.field(default=2, **checked(check_confirm_rounds))
    """Consecutive rounds that must point at the same new tier before it is taken."""
    ewma_alpha: float = attrs.field(default=0.3, **checked(check_ewma_alpha))
    """Weight of the newest round in the smoothed RTT (1 = no smoothing)."""

    def probe_settings(self, metric: MetricConfig) -> tuple[int, float, int]:
        """(count, timeout in seconds, concurrency): this section's, else ``metric``'s."""
        return (
            self.count if self.count is not None else metric.ping_count,
            self.timeout_ms / 1000.0 if self.timeout_ms is not None else metric.ping_timeout,
            self.concurrency if self.concurrency is not None else metric.ping_workers,
        )
