"""The ``hostCheck`` task: rp_filter and forwarding, fixed or reported.

It runs at start, every 5 minutes, and soon after a reconciler changed
something (a new tunnel is created with ``conf.default.rp_filter``, 2 on Debian
13). What it found last is what ``moenet_health_checks`` reports (``host.rp_filter``,
``host.forwarding``): the hook does no I/O.
"""

from __future__ import annotations

from typing import Any

from moenet_core import BackendUnavailable, HealthCheck, PluginContext, SyncEvent, TunnelBackend, hookimpl

from .config import HostConfig
from .sysctl import IPV4_FORWARD, IPV6_FORWARD, Report, Sysctl, check, command, key_name

TASK_NAME = "hostCheck"
#: At most this many interface names in one health reason.
SHOWN = 5


def _names(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def health_checks(report: Report, managed: bool) -> list[HealthCheck]:
    """``host.rp_filter`` and ``host.forwarding`` from one :class:`Report`."""
    failed = {f.path: f.error for f in report.failures}
    why_not = ""
    if managed and failed:
        path, error = next(iter(failed.items()))
        why_not = f" (the agent could not write {key_name(path)}: {error}; set it on the host)"
    if report.rp_filter:
        worst = max(report.rp_filter.values())
        rp = HealthCheck(
            name="host.rp_filter",
            verdict="degraded",
            reason=f"rp_filter {worst} drops asymmetric DN42 traffic on {_names(sorted(report.rp_filter))}: "
            f"run {command(report.rp_wanted)}{why_not}",
        )
    else:
        rp = HealthCheck(
            name="host.rp_filter", verdict="healthy", reason=f"0 on {len(report.interfaces)} interfaces"
        )
    off = list(report.forwarding_off)
    node_wide = [p for p in off if p in (IPV4_FORWARD, IPV6_FORWARD)]
    if off:
        families = " and ".join(
            f for f, p in (("IPv4", "ipv4"), ("IPv6", "ipv6")) if any(f"/{p}/" in x for x in off)
        )
        what = "the node does not route" if node_wide else "some of the agent's interfaces do not forward"
        fwd = HealthCheck(
            name="host.forwarding",
            verdict="down" if node_wide else "degraded",
            reason=f"{what} {families}: run {command((p, 1) for p in off)}{why_not}",
        )
    else:
        fwd = HealthCheck(name="host.forwarding", verdict="healthy")
    return [rp, fwd]


class HostCheck:
    """Check (and with ``host.manageSysctls``, fix) the host's routing sysctls."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.report: Report | None = None
        self.managed = True
        self._said: set[str] = set()
        ctx.register_hooks(self)

    @hookimpl
    def moenet_health_checks(self) -> list[HealthCheck] | None:
        return None if self.report is None else health_checks(self.report, self.managed)

    @hookimpl
    def moenet_sync_completed(self, event: SyncEvent) -> None:
        """A reconciler changed something (maybe a new tunnel): check soon."""
        if event.changes:
            try:
                self.ctx.trigger(TASK_NAME)
            except (KeyError, RuntimeError) as exc:  # not scheduled (disabled), or no loop
                self.ctx.log.debug("cannot schedule {} after {}: {}", TASK_NAME, event.task, exc)

    async def interfaces(self, cfg: HostConfig, sysctl: Sysctl) -> set[str]:
        """The agent's interfaces: every tunnel it owns, every link a plugin
        measures, and the configured ``host.interfaces``."""
        names = {t.interface for t in self.ctx.link_targets()}
        try:
            tunnels = self.ctx.backend("tunnel", TunnelBackend)
        except BackendUnavailable:
            pass
        else:
            try:
                names |= set(await tunnels.observe())
            except Exception as exc:  # the links a plugin offers still count
                self.ctx.log.debug("cannot list the tunnels: {}", exc)
        if cfg.interfaces:
            names |= {n for n in sysctl.interfaces() if cfg.matches(n)}
        return names

    def _say(self, level: str, message: str) -> None:
        """Log ``message`` once until the finding changes."""
        if message not in self._said:
            self._said.add(message)
            self.ctx.log.log(level, "{}", message)

    async def run_once(self) -> dict[str, Any]:
        cfg: HostConfig = self.ctx.section or HostConfig()
        sysctl = Sysctl(cfg.proc_sys)
        report = check(sysctl, await self.interfaces(cfg, sysctl), fix=cfg.manage_sysctls)
        self.report, self.managed = report, cfg.manage_sysctls
        for c in report.changes:
            self.ctx.log.info("set {} = {} (was {})", key_name(c.path), c.new, c.old)
        if report.accept_ra:
            self.ctx.log.warning(
                "IPv6 forwarding makes the kernel ignore router advertisements on interfaces with "
                "accept_ra=1: set accept_ra=2 on {} so an uplink configured by SLAAC keeps working",
                ", ".join(report.accept_ra),
            )
        said: set[str] = set()
        for check_ in health_checks(report, cfg.manage_sysctls):
            if check_.verdict != "healthy":
                message = f"{check_.name}: {check_.reason}"
                said.add(message)
                self._say("ERROR" if check_.verdict == "down" else "WARNING", message)
        self._said &= said  # a finding that went away is said again if it returns
        return {
            "managed": cfg.manage_sysctls,
            "interfaces": len(report.interfaces),
            "rpFilter": dict(report.rp_filter),
            "forwardingOff": [key_name(p) for p in report.forwarding_off],
            "changed": [f"{key_name(c.path)}={c.new}" for c in report.changes],
            "failed": [f"{key_name(f.path)}: {f.error}" for f in report.failures],
        }
