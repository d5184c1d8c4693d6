"""Configuration: the ``wireguard`` section (the tunnel backends).

The section holds what is the tunnel plugin's concern: the backend choice
(``backend: auto|kernel|userspace``, which ``backends.tunnel`` overrides; the
plugin answers ``moenet_select_backend`` with it), the Go agent's unused
``configDir``, and the knobs of the former ``tunnel`` section (``wireguardGo``,
``startTimeout``, ``uapiTimeout``, ``staleHandshake``), which is still read as a
deprecated alias. The Go agent's ``wireguard`` section mixed concerns; its other
keys are read by their owners, with a deprecation warning:

- ``privateKeyPath``, ``publicKeyPath``, ``persistentKeepaliveInterval``,
  ``dn42Ipv6LinkLocal``: the ``sessions`` section (the eBGP session tunnels' key,
  keepalive and link-local; ``persistentKeepaliveInterval`` is also the default
  ``mesh.keepalive``);
- ``dn42Ipv4``, ``dn42Ipv6``: the core's ``node.loopbackIpv4/6``.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TYPE_CHECKING

import attrs

from moenet_core import ConfigSection
from moenet_core.config import check, one_of, positive

if TYPE_CHECKING:
    from moenet_core import PluginContext
    from moenet_core.config import AgentConfig


def _binary(v: str) -> str | None:
    if not v or re.search(r"\s", v):
        return "must be a program name or an absolute path, without spaces"
    if "/" in v and not os.path.isabs(v):
        return "must be a program name on PATH or an absolute path"
    return None


@attrs.define(kw_only=True)
class WireguardConfig:
    """Section ``wireguard``: the WireGuard tunnel backends (optional)."""

    backend: str = attrs.field(default="auto", metadata=check(one_of("auto", "kernel", "userspace")))
    """The tunnel backend: ``kernel`` (the kernel's WireGuard), ``userspace``
    (``wireguard-go``) or ``auto`` (the available one with the highest priority).
    ``backends.tunnel`` overrides it."""
    config_dir: str = "/etc/wireguard"
    """Accepted for compatibility with the Go agent's files; not used (tunnels are
    configured over netlink and UAPI, without files)."""
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


#: Deprecated: the old name of this class (the ``tunnel`` section's).
TunnelSection = WireguardConfig

SECTION = ConfigSection(
    name="wireguard",
    type=WireguardConfig,
    aliases=("tunnel",),
    description="WireGuard tunnel backends: backend choice, wireguard-go binary, timeouts, "
    "stale-handshake age",
)


def section_of(config: AgentConfig) -> WireguardConfig:
    """The ``wireguard`` section of ``config`` (defaults when it is invalid), for
    hooks that get only the config."""
    section = SECTION.of(config)
    return section if isinstance(section, WireguardConfig) else WireguardConfig()


@attrs.frozen(kw_only=True)
class Settings:
    """Everything a backend reads from the config, in one value (re-read per call,
    so a reload takes effect without restarting the backend).

    ``node_key_path``: a missing private key file at that path is generated
    where a tunnel names it. The key files are their owners' (the ``sessions``
    section has the session tunnels' and publishes the public key), so the
    config leaves it empty; backends built in code (tests, the lab) may set it.
    ``default_keepalive`` applies to a spec without one.
    """

    node_key_path: str = ""
    default_keepalive: int = 25
    wireguard_go: str = "wireguard-go"
    start_timeout: float = 10.0
    uapi_timeout: float = 5.0
    stale_handshake: float = 180.0

    @classmethod
    def from_config(cls, config: AgentConfig, section: WireguardConfig | None = None) -> Settings:
        sec = section or section_of(config)
        return cls(
            wireguard_go=sec.wireguard_go,
            start_timeout=sec.start_timeout,
            uapi_timeout=sec.uapi_timeout,
            stale_handshake=sec.stale_handshake,
        )

    @classmethod
    def from_context(cls, ctx: PluginContext) -> Settings:
        section = ctx.section if isinstance(ctx.section, WireguardConfig) else None
        return cls.from_config(ctx.config, section)


def raw_wireguard_go(config: AgentConfig) -> str:
    """The ``wireguard-go`` binary the config names (probes run before sections
    reach a context)."""
    return section_of(config).wireguard_go


def wireguard_go_available(binary: str) -> bool:
    """The userspace backend's probe: the binary exists and is executable."""
    return shutil.which(binary) is not None
