"""Heartbeat: tell the control plane every 30 s that this node is alive.

``POST /agent/{node}/heartbeat`` with the agent version, kernel, load, uptime,
traffic and socket counts, the maintenance flag, and whatever other plugins add
through ``moenet_heartbeat_fields`` (the mesh plugin's public key, for one).
The payload keeps the Go agent's shape so existing control planes accept it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
from moenet_core.config import AgentConfig

from . import sysinfo


@attrs.define(kw_only=True)
class HeartbeatConfig:
    """Section ``heartbeat``."""

    interfaces: list[str] | None = None
    """Interfaces whose traffic is reported; default: those backed by a device."""
    proc_root: str = "/proc"
    """Where /proc is (tests point it at a fabricated tree)."""


class Heartbeat:
    """The ``heartbeat`` task."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx

    def payload(self) -> dict[str, Any]:
        cfg: HeartbeatConfig = self.ctx.section or HeartbeatConfig()
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
        payload = self.payload()
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
