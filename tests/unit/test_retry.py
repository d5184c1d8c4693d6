"""RetryPolicy: backoff values, cap, jitter bounds, validation."""

from __future__ import annotations

import random

import pytest

from moenet_core.retry import RetryPolicy


def test_defaults_match_the_go_agent() -> None:
    p = RetryPolicy()
    assert (p.max_retries, p.initial_delay, p.max_delay, p.multiplier, p.jitter) == (3, 1.0, 30.0, 2.0, 0.1)
    assert p.max_attempts == 4


def test_exponential_sequence_and_cap() -> None:
    p = RetryPolicy()
    assert [p.delay(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_custom_sequence() -> None:
    p = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=10.0)
    assert [p.base_delay(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_huge_attempt_does_not_overflow() -> None:
    assert RetryPolicy().delay(10_000, random.Random(1)) <= 30.0
    assert RetryPolicy().base_delay(10_000) == 30.0


@pytest.mark.parametrize("attempt", range(7))
def test_jitter_stays_within_bounds(attempt: int) -> None:
    p = RetryPolicy()
    base = p.base_delay(attempt)
    rng = random.Random(attempt)
    samples = [p.delay(attempt, rng) for _ in range(2000)]
    assert all(base * 0.9 - 1e-9 <= s <= min(base * 1.1, p.max_delay) + 1e-9 for s in samples)
    assert all(s <= p.max_delay for s in samples)
    if base < p.max_delay:
        # Jitter really spreads both ways (not a constant offset).
        assert min(samples) < base < max(samples)


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    p = RetryPolicy()
    a = [p.delay(n, random.Random(7)) for n in range(4)]
    b = [p.delay(n, random.Random(7)) for n in range(4)]
    assert a == b


def test_zero_jitter_ignores_rng() -> None:
    p = RetryPolicy(jitter=0.0)
    assert [p.delay(n, random.Random(3)) for n in range(3)] == [1.0, 2.0, 4.0]


def test_negative_attempt_rejected() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"initial_delay": -1.0},
        {"max_delay": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"initial_delay": 10.0, "max_delay": 5.0},
    ],
)
def test_invalid_policies_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RetryPolicy().max_retries = 5  # type: ignore[misc]


def test_zero_retries_means_one_attempt() -> None:
    assert RetryPolicy(max_retries=0).max_attempts == 1
