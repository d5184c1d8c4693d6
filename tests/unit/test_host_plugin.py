"""The host plugin (``moenet_host``) on a fabricated ``/proc/sys`` tree: what it
reads, what it writes (and never writes), and what the node health says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import moenet_host
import pytest
from loguru import logger
from moenet_host import HostCheck, HostConfig, Sysctl, check, health_checks
from moenet_host.sysctl import command, key_name

from moenet_core import HealthCheck, LinkTarget, SyncEvent, hookimpl
from moenet_core.backends import TunnelState
from moenet_core.config import structure
from moenet_core.testing import FakeTunnelBackend

#: What Debian 13 boots with (systemd's 50-default.conf): rp_filter 2 everywhere,
#: no forwarding, RAs accepted on the uplink.
DEBIAN13: dict[str, int] = {
    "net/ipv4/ip_forward": 0,
    "net/ipv4/conf/all/rp_filter": 2,
    "net/ipv4/conf/default/rp_filter": 2,
    "net/ipv6/conf/all/forwarding": 0,
    "net/ipv6/conf/default/accept_ra": 1,
}
IFACES = {"lo": 0, "eth0": 2, "docker0": 0, "wg1": 2, "igp7": 2, "eth0.100": 1}


def tree(root: Path, values: dict[str, int] | None = None, ifaces: dict[str, int] | None = None) -> Path:
    """A ``/proc/sys`` look-alike: ``values``, and per interface its rp_filter,
    forwarding 0 (as the kernel has them while ip_forward is 0) and accept_ra."""
    files = dict(DEBIAN13 if values is None else values)
    for name, rp in (IFACES if ifaces is None else ifaces).items():
        files[f"net/ipv4/conf/{name}/rp_filter"] = rp
        files[f"net/ipv4/conf/{name}/forwarding"] = 0
        if "net/ipv6/conf/all/forwarding" in files:
            files[f"net/ipv6/conf/{name}/forwarding"] = 0
            files[f"net/ipv6/conf/{name}/accept_ra"] = 0 if name.startswith(("wg", "igp")) else 1
    for rel, value in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return root


def values(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): int(p.read_text()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_debian_defaults_are_fixed_for_the_agents_interfaces_only(tmp_path: Path) -> None:
    root = tree(tmp_path)
    report = check(Sysctl(root), {"wg1", "igp7", "gone0"}, fix=True)
    v = values(root)
    assert report.interfaces == ("igp7", "wg1")  # gone0 does not exist (yet): skipped
    # The agent's interfaces: 0, and conf.all 0 so the effective max() is 0 ...
    assert v["net/ipv4/conf/wg1/rp_filter"] == v["net/ipv4/conf/igp7/rp_filter"] == 0
    assert v["net/ipv4/conf/all/rp_filter"] == 0
    # ... while every other interface keeps its effective filter (raised to the old all).
    assert v["net/ipv4/conf/eth0/rp_filter"] == 2
    assert v["net/ipv4/conf/docker0/rp_filter"] == 2 and v["net/ipv4/conf/lo/rp_filter"] == 2
    assert v["net/ipv4/conf/eth0.100/rp_filter"] == 2
    assert v["net/ipv4/conf/default/rp_filter"] == 2  # new interfaces: untouched
    # Forwarding on, node-wide and on the agent's interfaces.
    assert v["net/ipv4/ip_forward"] == v["net/ipv6/conf/all/forwarding"] == 1
    assert v["net/ipv4/conf/wg1/forwarding"] == v["net/ipv6/conf/igp7/forwarding"] == 1
    # RAs keep working where they did (accept_ra 1 -> 2), the tunnels keep 0.
    assert report.accept_ra == ("docker0", "eth0", "eth0.100", "lo")
    assert v["net/ipv6/conf/eth0/accept_ra"] == 2 and v["net/ipv6/conf/wg1/accept_ra"] == 0
    assert report.rp_filter == {} and report.forwarding_off == () and report.failures == ()
    assert {c.path for c in report.changes} >= {"net/ipv4/conf/all/rp_filter", "net/ipv4/ip_forward"}
    checks = {c.name: c for c in health_checks(report, managed=True)}
    assert checks["host.rp_filter"].verdict == checks["host.forwarding"].verdict == "healthy"

    # A second run finds nothing to do.
    again = check(Sysctl(root), {"wg1", "igp7"}, fix=True)
    assert again.changes == () and values(root) == v


def test_check_only_writes_nothing_and_says_which_sysctl_to_change(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = values(root)
    report = check(Sysctl(root), {"wg1"}, fix=False)
    assert values(root) == before and report.changes == ()
    assert report.rp_filter == {"wg1": 2}
    checks = {c.name: c for c in health_checks(report, managed=False)}
    rp, fwd = checks["host.rp_filter"], checks["host.forwarding"]
    assert rp.verdict == "degraded"
    assert rp.reason == (
        "rp_filter 2 drops asymmetric DN42 traffic on wg1: "
        "run sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.wg1.rp_filter=0"
    )
    assert fwd.verdict == "down"
    assert fwd.reason.startswith(
        "the node does not route IPv4 and IPv6: run sysctl -w net.ipv4.ip_forward=1 "
    )
    assert "net.ipv6.conf.all.forwarding=1" in fwd.reason and "net.ipv4.conf.wg1.forwarding=1" in fwd.reason


def test_effective_value_is_the_max_of_all_and_the_interface(tmp_path: Path) -> None:
    """``all`` 1 with the interface at 0 still filters (loose mode), and the
    interface at 2 with ``all`` 0 does too; only the needed writes are named."""
    root = tree(tmp_path, {**DEBIAN13, "net/ipv4/conf/all/rp_filter": 1}, {"wg1": 0, "wg2": 2, "wg3": 0})
    report = check(Sysctl(root), {"wg1", "wg2"}, fix=False)
    assert report.rp_filter == {"wg1": 1, "wg2": 2}
    assert report.rp_wanted == (("net/ipv4/conf/all/rp_filter", 0), ("net/ipv4/conf/wg2/rp_filter", 0))
    root2 = tree(tmp_path / "b", {**DEBIAN13, "net/ipv4/conf/all/rp_filter": 0}, {"wg1": 0, "wg2": 2})
    report = check(Sysctl(root2), {"wg1", "wg2"}, fix=False)
    assert report.rp_filter == {"wg2": 2} and report.rp_wanted == (("net/ipv4/conf/wg2/rp_filter", 0),)


def test_interfaces_with_a_dot_use_the_slash_form_sysctl_understands(tmp_path: Path) -> None:
    assert key_name("net/ipv4/conf/eth0.100/rp_filter") == "net/ipv4/conf/eth0.100/rp_filter"
    assert key_name("net/ipv4/conf/wg1/rp_filter") == "net.ipv4.conf.wg1.rp_filter"
    assert command([("net/ipv4/ip_forward", 1)]) == "sysctl -w net.ipv4.ip_forward=1"
    root = tree(tmp_path)
    report = check(Sysctl(root), {"eth0.100"}, fix=False)
    assert "net/ipv4/conf/eth0.100/rp_filter=0" in health_checks(report, False)[0].reason


def test_names_that_are_not_one_interface_are_ignored(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = values(root)
    report = check(Sysctl(root), {"../ipv4", "all", "default", "..", "wg1/../eth0", ""}, fix=True)
    assert report.interfaces == ()
    # Nothing of an interface was written; conf.all stays (no agent interface needs it).
    after = values(root)
    assert {k for k in after if after[k] != before[k]} <= {
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        *(f"net/ipv6/conf/{n}/accept_ra" for n in IFACES),
    }
    assert after["net/ipv4/conf/all/rp_filter"] == 2


def test_a_kernel_without_ipv6_is_checked_for_ipv4_only(tmp_path: Path) -> None:
    root = tree(tmp_path, {k: v for k, v in DEBIAN13.items() if "ipv6" not in k})
    report = check(Sysctl(root), {"wg1"}, fix=False)
    assert report.ipv6 is False
    assert report.forwarding_off == ("net/ipv4/ip_forward", "net/ipv4/conf/wg1/forwarding")
    assert "IPv6" not in health_checks(report, False)[1].reason
    assert check(Sysctl(root), {"wg1"}, fix=True).forwarding_off == ()


class ReadOnly(Sysctl):
    """A /proc/sys where some keys cannot be written (a container's read-only /proc/sys/net)."""

    def __init__(self, root: Path, refused: set[str]) -> None:
        super().__init__(root)
        self.refused = refused

    def write(self, path: str, value: int) -> None:
        if path in self.refused:
            raise OSError(30, "Read-only file system")
        super().write(path, value)


def test_a_failed_write_is_reported_with_the_command_and_the_error(tmp_path: Path) -> None:
    root = tree(tmp_path)
    report = check(ReadOnly(root, {"net/ipv4/conf/all/rp_filter", "net/ipv4/ip_forward"}), {"wg1"}, fix=True)
    assert [f.path for f in report.failures] == ["net/ipv4/conf/all/rp_filter", "net/ipv4/ip_forward"]
    assert report.rp_filter == {"wg1": 2}  # wg1's own is 0 now, all still 2
    rp, fwd = health_checks(report, managed=True)
    assert rp.verdict == "degraded" and "sysctl -w net.ipv4.conf.all.rp_filter=0" in rp.reason
    assert "could not write net.ipv4.conf.all.rp_filter: Read-only file system" in rp.reason
    assert fwd.verdict == "down" and "net.ipv4.ip_forward=1" in fwd.reason


def test_all_is_not_lowered_while_another_interface_would_lose_its_filter(tmp_path: Path) -> None:
    root = tree(tmp_path)
    report = check(ReadOnly(root, {"net/ipv4/conf/docker0/rp_filter"}), {"wg1"}, fix=True)
    v = values(root)
    assert v["net/ipv4/conf/all/rp_filter"] == 2 and v["net/ipv4/conf/docker0/rp_filter"] == 0
    assert report.rp_filter == {"wg1": 2} and report.failures[0].path == "net/ipv4/conf/docker0/rp_filter"


def test_many_interfaces_are_summarised(tmp_path: Path) -> None:
    names = {f"wg{i}": 2 for i in range(12)}
    root = tree(tmp_path, ifaces=names)
    reason = health_checks(check(Sysctl(root), set(names), fix=False), False)[0].reason
    assert "wg0, wg1, wg10, wg11, wg2 and 7 more:" in reason


def test_config_section() -> None:
    cfg, problems = structure(HostConfig, {"manageSysctls": False, "interfaces": ["dn42-*"]}, "host", [])
    assert cfg is not None and problems == [] and cfg.matches("dn42-x") and not cfg.matches("eth0")
    for bad in ({"interfaces": ["a/b"]}, {"interfaces": "dn42-*"}, {"procSys": "proc"}):
        cfg, problems = structure(HostConfig, bad, "host", [])
        assert cfg is None and problems, bad


# ------------------------------------------------------------------ the task


class Links:
    """A plugin offering one measured link (as sessions and mesh do)."""

    @hookimpl
    def moenet_link_targets(self) -> list[LinkTarget]:
        return [LinkTarget(owner="sessions", key="u1", interface="wg1", addresses=("fe80::1",))]


def tunnel_state(name: str) -> TunnelState:
    return TunnelState(
        name=name,
        ifindex=9,
        listen_port=None,
        peer_public_key=None,
        endpoint=None,
        allowed_ips=(),
        keepalive=None,
        mtu=1420,
        addresses=(),
        up=True,
    )


async def test_the_task_fixes_the_agents_tunnels_and_reports_health(
    make_plugin_context: Any, tmp_path: Path
) -> None:
    root = tree(tmp_path / "sys", ifaces={"wg1": 2, "igp7": 2, "ext9": 2, "eth0": 2})
    tunnels = FakeTunnelBackend()
    tunnels.tunnels["igp7"] = tunnel_state("igp7")
    ctx = make_plugin_context(
        "host",
        section=HostConfig(proc_sys=str(root), interfaces=["ext*"]),
        backends={"tunnel": tunnels},
        plugins=[("links", Links())],
    )
    task = HostCheck(ctx)
    assert task.moenet_health_checks() is None  # nothing known before the first run: no I/O in the hook
    result = await task.run_once()
    v = values(root)
    # From the link targets (wg1), the tunnel backend (igp7) and host.interfaces (ext9).
    assert [v[f"net/ipv4/conf/{n}/rp_filter"] for n in ("wg1", "igp7", "ext9", "eth0")] == [0, 0, 0, 2]
    assert result["interfaces"] == 3 and result["managed"] is True
    assert "net.ipv4.conf.all.rp_filter=0" in result["changed"]
    checks = task.moenet_health_checks()
    assert checks is not None and [(c.name, c.verdict) for c in checks] == [
        ("host.rp_filter", "healthy"),
        ("host.forwarding", "healthy"),
    ]
    # Someone turns forwarding off and rp_filter on again: the next run repairs it.
    (root / "net/ipv4/ip_forward").write_text("0\n")
    (root / "net/ipv4/conf/wg1/rp_filter").write_text("1\n")
    await task.run_once()
    assert values(root)["net/ipv4/ip_forward"] == 1 and values(root)["net/ipv4/conf/wg1/rp_filter"] == 0


async def test_the_task_without_management_reports_and_logs(make_plugin_context: Any, tmp_path: Path) -> None:
    root = tree(tmp_path / "sys", ifaces={"wg1": 2})
    ctx = make_plugin_context(
        "host", section=HostConfig(proc_sys=str(root), manage_sysctls=False), plugins=[("links", Links())]
    )
    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(m.record["message"]), level="WARNING")
    try:
        task = HostCheck(ctx)
        before = values(root)
        await task.run_once()
        await task.run_once()
    finally:
        logger.remove(sink)
    assert values(root) == before
    checks = {c.name: c for c in task.moenet_health_checks() or []}
    assert checks["host.rp_filter"].verdict == "degraded" and checks["host.forwarding"].verdict == "down"
    # Said once, not every run.
    assert sum("host.rp_filter:" in m for m in logged) == 1
    assert sum("host.forwarding:" in m and "net.ipv4.ip_forward=1" in m for m in logged) == 1


async def test_a_sync_with_changes_triggers_a_check(make_plugin_context: Any, tmp_path: Path) -> None:
    ctx = make_plugin_context("host", section=HostConfig(proc_sys=str(tree(tmp_path))))
    task = HostCheck(ctx)
    triggered: list[str] = []
    ctx.trigger = triggered.append  # type: ignore[method-assign,assignment]
    task.moenet_sync_completed(SyncEvent(task="sessionSync", ok=True, duration=0.1, changes=0))
    task.moenet_sync_completed(SyncEvent(task="sessionSync", ok=True, duration=0.1, changes=2))
    assert triggered == ["hostCheck"]


def test_the_plugin_registers_its_section_and_task() -> None:
    [section] = moenet_host.moenet_config_sections()
    assert section.name == "host" and section.type is HostConfig
    [spec] = moenet_host.moenet_tasks(config=None)  # type: ignore[arg-type]
    assert spec.name == "hostCheck" and spec.initial_delay == 0 and spec.interval == 300


@pytest.mark.parametrize("verdict", ["degraded", "down"])
def test_health_checks_are_valid_checks(tmp_path: Path, verdict: str) -> None:
    root = tree(tmp_path, {**DEBIAN13, "net/ipv4/ip_forward": 1 if verdict == "degraded" else 0})
    (root / "net/ipv6/conf/all/forwarding").write_text("1\n")
    checks = health_checks(check(Sysctl(root), {"wg1"}, fix=False), False)
    assert all(isinstance(c, HealthCheck) for c in checks)
    assert checks[1].verdict == verdict
