"""The ``sessions`` config section: the mass-removal guard and where keys go.

Everything has a default, so a node without the section behaves as issue 5 asks
(refuse removing more than half, and more than 2, of the node's sessions at once).
"""

from __future__ import annotations

from typing import Any

import attrs


def _share(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name}: must be within 0..1, got {value!r}")


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attr.name}: must be >= 0, got {value!r}")


@attrs.define(kw_only=True)
class SessionsConfig:
    """Section ``sessions``."""

    guard_max_share: float = attrs.field(default=0.5, validator=_share)
    """Refuse an answer removing more than this share of the configured sessions ..."""
    guard_min_count: int = attrs.field(default=2, validator=_non_negative)
    """... and more than this many (both must be exceeded)."""
    allow_removal: str = ""
    """An operator override: the guard digest (shown in ``/status``) of the one
    removal set to let through. It never matches a different, later mass removal."""
    psk_dir: str = ""
    """Where preshared keys are written (0600, one file per interface); default
    ``<state.directory>/psk``."""
