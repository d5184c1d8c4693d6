"""What the updater remembers across restarts: ``<state>/plugins/updater/updater.json``.

``pending`` is written *before* the ``current`` link is switched and cleared once
the new version is healthy or rolled back, so a crash at any point leaves a
record of what to check. ``bad`` versions are never offered again (``moenet-agent
updater forget VERSION`` clears one). A file that cannot be read is an error, not
an empty state: forgetting a pending update or the bad list could reinstall a
broken release.
"""

from __future__ import annotations

from typing import Any

import attrs

from moenet_core import STATE_CONVERTER, StateError, StateStore, from_document, to_document
from moenet_core.config import checked

STATE_FILE = "updater.json"
STATE_VERSION = 1


def _non_empty(v: str) -> str | None:
    return None if v else "expected a non-empty string"


@attrs.define(kw_only=True)
class Pending:
    version: str = attrs.field(**checked(_non_empty))
    previous: str = attrs.field(**checked(_non_empty))
    """Absolute path ``current`` pointed to before the switch."""
    target: str = attrs.field(**checked(_non_empty))
    """Absolute path of the new version's environment."""
    switched_at: float
    deadline: float
    """Wall-clock time by which the new version must be healthy."""
    health_tasks: list[str] = attrs.field(factory=list)
    """Tasks that had succeeded in the old version (see the README)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = STATE_CONVERTER.unstructure(self)
        return out


@attrs.define(kw_only=True)
class UpdaterState:
    """``updater.json`` (a state document, version :data:`STATE_VERSION`)."""

    pending: Pending | None = None
    bad: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Version -> ``{"reason": str, "at": epoch}``."""
    last_check: float | None = None
    last_result: str | None = None
    last_update: dict[str, Any] | None = None
    """The last finished update: ``{"from", "to", "at"}``."""

    def to_json(self) -> dict[str, Any]:
        """The file's content: ``{"version": 1, "pending": ..., "bad": ..., ...}``."""
        return to_document(self, version=STATE_VERSION)

    @classmethod
    def from_json(cls, raw: Any, where: str = "updater state") -> UpdaterState:
        """Inverse of :meth:`to_json`; raises :class:`StateError` naming every problem."""
        return from_document(cls, raw, version=STATE_VERSION, where=where)


def load(store: StateStore) -> UpdaterState:
    """The saved state (empty when there is none); raises StateError if unreadable."""
    try:
        return store.load(STATE_FILE, UpdaterState, version=STATE_VERSION, default=UpdaterState())
    except StateError as exc:
        raise StateError(
            f"{exc}; fix or remove it (it holds the pending update and the bad versions)"
        ) from None


def save(store: StateStore, state: UpdaterState) -> None:
    store.save(STATE_FILE, state, version=STATE_VERSION)
