"""Backoff timing for control-plane retries.

The policy is pure arithmetic (no sleeping, no global random state) so the
retry loop can be tested with a manual clock and a seeded RNG, and so the same
numbers drive every caller. Defaults match the Go agent's retry client: up to 3
retries, 1 s doubling to at most 30 s, ±10 % jitter against thundering herds.
"""

from __future__ import annotations

import math
import random

import attrs


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How often and how long to wait between attempts.

    ``max_retries`` counts retries, not attempts: a call makes at most
    ``max_retries + 1`` requests. ``jitter`` is a fraction of the delay
    (0.1 means ±10 %).
    """

    max_retries: int = attrs.field(default=3)
    initial_delay: float = attrs.field(default=1.0, validator=_non_negative)
    max_delay: float = attrs.field(default=30.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)

    @max_retries.validator
    def _check_max_retries(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be a fraction between 0 and 1, got {self.jitter!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"max_delay ({self.max_delay!r}) must not be below initial_delay ({self.initial_delay!r})"
            )

    @property
    def max_attempts(self) -> int:
        """Requests a call may make in total (first try plus retries)."""
        return self.max_retries + 1

    def base_delay(self, attempt: int) -> float:
        """The un-jittered wait before retry number ``attempt`` (0 = first retry):
        ``initial_delay * multiplier**attempt``, capped at ``max_delay``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt!r}")
        try:
            raw = self.initial_delay * self.multiplier**attempt
        except OverflowError:
            return self.max_delay
        return min(raw, self.max_delay)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt`` (0 = first retry).

        The jitter is drawn from ``rng`` (uniform in ±``jitter`` of the base) and
        the result is clamped to ``[0, max_delay]``, so ``max_delay`` is a hard
        bound even at the cap. ``rng=None`` gives the un-jittered value, which
        keeps the function deterministic for callers that want that.
        """
        base = self.base_delay(attempt)
        if rng is None or self.jitter == 0:
            return base
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return min(max(0.0, base * factor), self.max_delay)
