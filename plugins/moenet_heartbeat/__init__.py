"""Heartbeat: tell the control plane every 30 s that this node is alive.

``POST /agent/{node}/heartbeat`` with the agent version, kernel, load, uptime,
traffic and socket counts, the maintenance flag, the node's public addresses
(:mod:`.public`), and whatever other plugins add through
``moenet_heartbeat_fields`` (the mesh plugin's public key, for one).
The payload keeps the Go agent's shape so existing control planes accept it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from moenet_core import (
    ConfigSection,
    PluginContext,
    TaskSpec,
    __version__,
    gather_health,
    health_summary,
    hookimpl,
)
from moenet_core.config import AgentConfig, checked

from . import public, sysinfo


def _seconds(lo: float, hi: float) -> Callable[[float], str | None]:
    def check(v: float) -> str | None:
        return None if lo <= v <= hi else f"must be {lo:g}-{hi:g} seconds"

    return check


@attrs.define(kw_only=True)
class HeartbeatConfig:
    """Section ``heartbeat``."""

    interfaces: list[str] | None = None
    """Interfaces whose traffic is reported; default: those backed by a device."""
    proc_root: str = "/proc"
    """Where /proc is (tests point it at a fabricated tree)."""
    public_addresses: bool = True
    """Report the node's public addresses (``publicIpv4``, ``publicIpv6``); false
    sends both as null."""
    public_address_refresh: float = attrs.field(default=300.0, **checked(_seconds(1, 86400)))
    """How often the public addresses are read again from the interfaces, in seconds
    (a netlink address dump and a route lookup; a failed echo ask is retried after
    this too)."""
    public_ipv4_url: str | None = attrs.field(default=None, **checked(public.check_echo_url))
    """An echo service that answers our IPv4 address as seen from outside (for a node
    behind NAT), e.g. ``https://api4.ipify.org``: https only, asked over IPv4, its
    answer must be one public IPv4 address. Unset: the interfaces' address only.
    Local config only: the control plane cannot set it."""
    public_ipv6_url: str | None = attrs.field(default=None, **checked(public.check_echo_url))
    """The same for IPv6 (e.g. ``https://api6.ipify.org``), asked over IPv6."""
    public_ip_url_ttl: float = attrs.field(default=3600.0, **checked(_seconds(60, 604800)))
    """How long an echo service's answer is used before it is asked again, in seconds."""
    public_ip_url_timeout: float = attrs.field(default=5.0, **checked(_seconds(0.5, 30)))
    """The most an echo service may take to answer, in seconds (one ask; the answer
    is also limited to 64 bytes)."""


class Heartbeat:
    """The ``heartbeat`` task."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.public = public.PublicAddresses(monotonic=ctx.clock.monotonic, warn=ctx.log.warning)

    @property
    def config(self) -> HeartbeatConfig:
        cfg: HeartbeatConfig = self.ctx.section or HeartbeatConfig()
        return cfg

    async def public_addresses(self) -> dict[str, str | None]:
        """``publicIpv4`` and ``publicIpv6`` (cached; see :mod:`.public`)."""
        cfg = self.config
        return await self.public.current(
            enabled=cfg.public_addresses,
            refresh=cfg.public_address_refresh,
            urls={4: cfg.public_ipv4_url, 6: cfg.public_ipv6_url},
            ttl=cfg.public_ip_url_ttl,
            timeout=cfg.public_ip_url_timeout,
        )

    def payload(self, addresses: Mapping[str, str | None] | None = None) -> dict[str, Any]:
        """The heartbeat body; ``addresses``: :meth:`public_addresses` (null without)."""
        cfg = self.config
        proc = Path(cfg.proc_root)
        ifaces = cfg.interfaces if cfg.interfaces is not None else sysinfo.physical_interfaces()
        tx, rx = sysinfo.traffic(proc, ifaces or None)
        tcp, udp = sysinfo.socket_counts(proc)
        status: dict[str, Any] = {
            "version": __version__,
            "kernel": sysinfo.kernel(proc),
            "loadAvg": sysinfo.load_average(proc),
            "uptime": sysinfo.uptime(proc),
            "timestamp": int(self.ctx.clock.time()),
            "tx": tx,
            "rx": rx,
            "tcp": tcp,
            "udp": udp,
            "maintenance": self.ctx.maintenance,
            "health": health_summary(gather_health(self.ctx.call_hook("moenet_health_checks"))),
            "publicIpv4": (addresses or {}).get("publicIpv4"),
            "publicIpv6": (addresses or {}).get("publicIpv6"),
        }
        offered: dict[str, str] = {}
        for plugin, fields in self.ctx.call_hook("moenet_heartbeat_fields"):
            if not isinstance(fields, Mapping):
                self.ctx.log.warning(
                    "plugin {} returned {} from moenet_heartbeat_fields", plugin, type(fields)
                )
                continue
            for key, value in fields.items():
                if not isinstance(key, str):
                    # A tuple key would make the whole POST fail to serialise.
                    self.ctx.log.warning("plugin {} offered a non-string heartbeat key {!r}", plugin, key)
                    continue
                if key in status and key not in offered:
                    self.ctx.log.warning("plugin {} may not override heartbeat field {!r}", plugin, key)
                    continue
                if key in offered:
                    self.ctx.log.warning(
                        "heartbeat field {!r} offered by both {} and {}; dropped", key, offered[key], plugin
                    )
                    status.pop(key, None)
                    continue
                try:
                    # allow_nan=False: NaN/Infinity are not JSON; a strict CP would reject the POST.
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError):
                    self.ctx.log.warning("plugin {} offered a non-JSON value for {!r}", plugin, key)
                    continue
                offered[key] = plugin
                status[key] = value
        return {"node_id": self.ctx.node, "agent_version": __version__, "status": status}

    async def run_once(self) -> dict[str, Any]:
        payload = self.payload(await self.public_addresses())
        await self.ctx.cp.send("heartbeat", payload)
        return {"sent": True, "fields": sorted(payload["status"])}


@hookimpl
def moenet_config_sections() -> list[ConfigSection]:
    return [ConfigSection(name="heartbeat", type=HeartbeatConfig, description="Heartbeat payload options")]


@hookimpl
def moenet_tasks(config: AgentConfig) -> list[TaskSpec]:
    return [
        TaskSpec(
            name="heartbeat",
            factory=Heartbeat,
            interval=config.control_plane.heartbeat_interval,
            jitter=0.1,
            timeout=max(5.0, min(config.control_plane.heartbeat_interval, 60.0)),
            description="POST /agent/{node}/heartbeat with health and system facts",
        )
    ]
