"""The plugin's error types: every deliberate failure says which tunnel and why.

They derive from :class:`moenet_core.MoenetError` so a reconciler can report the
message as the session's ``lastError``. No message ever contains key material.
"""

from __future__ import annotations

from moenet_core import MoenetError, TransientError


class TunnelError(MoenetError):
    """Base of this plugin's errors."""


class WireguardKeyError(TunnelError, ValueError):
    """A key or key file is unusable (names the file, never the key)."""


class TunnelSpecError(TunnelError, ValueError):
    """A :class:`~moenet_core.TunnelSpec` field is invalid (names the field)."""


class NotOwnedError(TunnelError):
    """The interface exists but is not one of the agent's tunnels."""


class UapiError(TunnelError):
    """wireguard-go's UAPI socket is missing, unreachable, or answered an errno."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class UapiBusyError(UapiError, TransientError):
    """wireguard-go could not bind the listen port (EADDRINUSE) and the backend
    could not take it back (it does so from its own unconfigured daemons, which sit
    on an automatic port): another program or a configured tunnel holds it. A retry
    may fix it, so the session keeps its status and is tried again."""


class DaemonError(TunnelError):
    """wireguard-go could not be started or stopped."""


class EndpointError(TunnelError):
    """An endpoint is malformed or its host name does not resolve."""
