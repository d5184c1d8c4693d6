"""Exception types shared by the core and plugins.

Every error the agent raises on purpose derives from :class:`MoenetError`, so a
caller can tell "the agent refused this, with a reason" from a programming error.
"""

from __future__ import annotations

from collections.abc import Iterable


class MoenetError(Exception):
    """Base class of every deliberate agent error."""


class ConfigError(MoenetError):
    """Configuration is invalid; carries every problem found, each with its path.

    ``problems`` are strings of the form ``"controlPlane.token: required"``.
    """

    def __init__(self, problems: Iterable[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


class PluginError(MoenetError):
    """A plugin broke the hook contract (bad return value, name conflict, async hook...)."""

    def __init__(self, message: str, plugins: Iterable[str] = ()) -> None:
        self.plugins = tuple(plugins)
        super().__init__(message)


class BackendUnavailable(MoenetError):
    """No backend of the requested kind is running (none provided, or it failed to start)."""


class ControlPlaneError(MoenetError):
    """A control-plane call failed. Subclasses say how."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The CP could not be reached, timed out or answered 5xx/429 after all retries."""


class CircuitOpenError(ControlPlaneUnavailable):
    """The circuit breaker is open: the call was not attempted."""


class ControlPlaneRejected(ControlPlaneError):
    """The CP answered, but with an error: a 4xx, a non-zero envelope ``code``,
    or a body that is not the JSON we expect. Never treated as empty data."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
