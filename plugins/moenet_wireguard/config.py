"""Configuration: the core's ``wireguard`` section plus this plugin's ``tunnel``.

Keys, keepalive and the backend choice stay where operators of the Go agent have
them (``wireguard.privateKeyPath``, ``wireguard.persistentKeepaliveInterval``,
``wireguard.backend: auto|kernel|userspace``; ``backends.tunnel`` overrides the
latter). The ``tunnel`` section only holds knobs the Go agent never had::

    "tunnel": {
        "wireguardGo": "wireguard-go",   # binary: a name on PATH or an absolute path
        "startTimeout": 10,              # seconds for wireguard-go to create its device
        "uapiTimeout": 5,                # seconds for one UAPI request
        "staleHandshake": 180            # handshake age after which endpoints are re-resolved
    }
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core.config import check, positive

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig
    from moenet_core.context import PluginContext

SECTION = "tunnel"


def _binary(v: str) -> str | None:
    if not v or re.search(r"\s", v):
        return "must be a program name or an absolute path, without spaces"
    if "/" in v and not os.path.isabs(v):
        return "must be a program name on PATH or an absolute path"
    return None


@attrs.define(kw_only=True)
class TunnelSection:
    """Section ``tunnel`` (optional)."""

    wireguard_go: str = attrs.field(default="wireguard-go", metadata=check(_binary))
    """The ``wireguard-go`` binary of the ``userspace`` backend: a name looked up on
    PATH or an absolute path. The backend counts as available only when it is found."""
    start_timeout: float = attrs.field(default=10.0, metadata=check(positive))
    """Seconds ``wireguard-go`` may take to create its device; also how long a
    removed tunnel's daemon may take to exit before it is killed."""
    uapi_timeout: float = attrs.field(default=5.0, metadata=check(positive))
    """Seconds one request on a ``wireguard-go`` control (UAPI) socket may take."""
    stale_handshake: float = attrs.field(default=180.0, metadata=check(positive))
    """Seconds: a tunnel whose latest handshake is older (or that never had one)
    has its endpoint's host name resolved again, and its peer moved back to the
    configured address if it roamed away; a fresher one is left alone."""


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a backend reads from the config, in one value (re-read per call,
    so a reload takes effect without restarting the backend)."""

    node_key_path: str = "/etc/wireguard/private.key"
    public_key_path: str = ""
    default_keepalive: int = 25
    wireguard_go: str = "wireguard-go"
    start_timeout: float = 10.0
    uapi_timeout: float = 5.0
    stale_handshake: float = 180.0

    @classmethod
    def from_config(cls, config: AgentConfig, section: TunnelSection | None) -> Settings:
        sec = section or TunnelSection()
        wg = config.wireguard
        return cls(
            node_key_path=wg.private_key_path,
            public_key_path=wg.public_key_path,
            default_keepalive=wg.persistent_keepalive_interval,
            wireguard_go=sec.wireguard_go,
            start_timeout=sec.start_timeout,
            uapi_timeout=sec.uapi_timeout,
            stale_handshake=sec.stale_handshake,
        )

    @classmethod
    def from_context(cls, ctx: PluginContext) -> Settings:
        section = ctx.section if isinstance(ctx.section, TunnelSection) else None
        return cls.from_config(ctx.config, section)


def raw_wireguard_go(config: AgentConfig) -> str:
    """The binary named in the raw ``tunnel`` section (probes run before sections
    reach a context)."""
    raw: Any = config.plugin_sections.get(SECTION)
    value = raw.get("wireguardGo") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and value else "wireguard-go"


def wireguard_go_available(binary: str) -> bool:
    """The userspace backend's probe: the binary exists and is executable."""
    return shutil.which(binary) is not None
