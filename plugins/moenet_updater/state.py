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

from moenet_core.state import StateError, StateStore

STATE_FILE = "updater.json"
STATE_VERSION = 1


@attrs.define(kw_only=True)
class Pending:
    version: str
    previous: str
    """Absolute path ``current`` pointed to before the switch."""
    target: str
    """Absolute path of the new version's environment."""
    switched_at: float
    deadline: float
    """Wall-clock time by which the new version must be healthy."""
    health_tasks: list[str] = attrs.field(factory=list)
    """Tasks that had succeeded in the old version (see the README)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "previous": self.previous,
            "target": self.target,
            "switchedAt": self.switched_at,
            "deadline": self.deadline,
            "healthTasks": list(self.health_tasks),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Pending:
        if not isinstance(raw, dict):
            raise ValueError("pending: expected an object")
        tasks = raw.get("healthTasks", [])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ValueError("pending.healthTasks: expected a list of task names")
        return cls(
            version=_str(raw, "version"),
            previous=_str(raw, "previous"),
            target=_str(raw, "target"),
            switched_at=_num(raw, "switchedAt"),
            deadline=_num(raw, "deadline"),
            health_tasks=list(tasks),
        )


@attrs.define(kw_only=True)
class UpdaterState:
    pending: Pending | None = None
    bad: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """Version -> ``{"reason": str, "at": epoch}``."""
    last_check: float | None = None
    last_result: str | None = None
    last_update: dict[str, Any] | None = None
    """The last finished update: ``{"from", "to", "at"}``."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "pending": self.pending.to_json() if self.pending else None,
            "bad": {k: dict(v) for k, v in sorted(self.bad.items())},
            "lastCheck": self.last_check,
            "lastResult": self.last_result,
            "lastUpdate": self.last_update,
        }

    @classmethod
    def from_json(cls, raw: Any) -> UpdaterState:
        if not isinstance(raw, dict):
            raise ValueError("expected an object")
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {raw.get('version')!r}")
        bad = raw.get("bad") or {}
        if not isinstance(bad, dict) or not all(isinstance(v, dict) for v in bad.values()):
            raise ValueError("bad: expected an object of objects")
        last_check = raw.get("lastCheck")
        last_result = raw.get("lastResult")
        last_update = raw.get("lastUpdate")
        return cls(
            pending=Pending.from_json(raw["pending"]) if raw.get("pending") is not None else None,
            bad={str(k): dict(v) for k, v in bad.items()},
            last_check=float(last_check) if isinstance(last_check, int | float) else None,
            last_result=last_result if isinstance(last_result, str) else None,
            last_update=last_update if isinstance(last_update, dict) else None,
        )


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"pending.{key}: expected a non-empty string")
    return value


def _num(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"pending.{key}: expected a number")
    return float(value)


def load(store: StateStore) -> UpdaterState:
    """The saved state (empty when there is none); raises StateError if unreadable."""
    raw = store.read_json(STATE_FILE, None)
    if raw is None:
        return UpdaterState()
    try:
        return UpdaterState.from_json(raw)
    except (ValueError, KeyError) as exc:
        raise StateError(
            f"{store.path(STATE_FILE)} is not a valid updater state ({exc}); "
            "fix or remove it (it holds the pending update and the bad versions)"
        ) from None


def save(store: StateStore, state: UpdaterState) -> None:
    store.write_json(STATE_FILE, state.to_json())
