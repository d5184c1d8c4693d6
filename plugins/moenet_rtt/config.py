"""The ``rtt`` config section: how links are probed and how tiers move.

The probe settings absorbed the Go agent's ``metric`` section, which is still
read as a deprecated alias: ``metric.pingCount`` is ``rtt.count``,
``metric.pingTimeout`` (seconds) is ``rtt.timeoutMs`` (milliseconds) and
``metric.pingWorkers`` is ``rtt.concurrency``; the ``rtt`` key wins when both
are set.

Each check is attached twice with the core's ``checked(fn)``: as metadata the
core's structurer runs, so an error lands on the field's own path (``rtt.count:
must be an integer from 1 to 100``), and as an attrs validator, so an object
built in code is held to the same rules.
"""

from __future__ import annotations

from typing import Any

import attrs

from moenet_core import ConfigSection, SectionAlias
from moenet_core.config import checked

#: Probe defaults (the Go agent's ``metric`` defaults).
DEFAULT_COUNT = 4
DEFAULT_TIMEOUT_MS = 5000
DEFAULT_CONCURRENCY = 32


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

    count: int | None = attrs.field(default=None, **checked(check_count, cp=True))
    """ICMP echo requests sent to one address per round. Null: 4. The Go agent's
    ``metric.pingCount``."""
    timeout_ms: int | None = attrs.field(default=None, **checked(check_timeout_ms, cp=True))
    """How long one probe waits for its reply, in milliseconds. Null: 5000. The Go
    agent's ``metric.pingTimeout`` (in seconds)."""
    concurrency: int | None = attrs.field(default=None, **checked(check_concurrency, cp=True))
    """Links probed at the same time. Null: 32. The Go agent's ``metric.pingWorkers``."""
    hysteresis: float = attrs.field(default=0.2, **checked(check_hysteresis))
    """Margin around the current tier's band, as a share of each boundary (0.2 = 20 %)."""
    confirm_rounds: int = attrs.field(default=2, **checked(check_confirm_rounds))
    """Consecutive rounds that must point at the same new tier before it is taken."""
    ewma_alpha: float = attrs.field(default=0.3, **checked(check_ewma_alpha))
    """Weight of the newest round in the smoothed RTT (1 = no smoothing)."""

    def probe_settings(self) -> tuple[int, float, int]:
        """(count, timeout in seconds, concurrency), the defaults filled in."""
        return (
            self.count if self.count is not None else DEFAULT_COUNT,
            (self.timeout_ms if self.timeout_ms is not None else DEFAULT_TIMEOUT_MS) / 1000.0,
            self.concurrency if self.concurrency is not None else DEFAULT_CONCURRENCY,
        )


def seconds_to_ms(value: Any) -> Any:
    """``metric.pingTimeout`` (seconds) as ``rtt.timeoutMs``; anything but a number
    is passed on for the structurer to report."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * 1000)
    return value


SECTION = ConfigSection(
    name="rtt",
    type=RttConfig,
    aliases=(
        SectionAlias(
            section="metric",
            keys={"pingCount": "count", "pingTimeout": "timeoutMs", "pingWorkers": "concurrency"},
            convert={"pingTimeout": seconds_to_ms},
        ),
    ),
    description="RTT probes (count, timeoutMs, concurrency) and latency-tier hysteresis",
)
