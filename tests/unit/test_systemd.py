"""systemd integration: the notify protocol against a real socket, and the unit file."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from moenet_core import TaskSpec, hookimpl, systemd

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


async def receive(sock: socket.socket, timeout: float = 10) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)).decode()


def test_notify_is_a_noop_outside_systemd():
    assert systemd.notify("READY=1", env={}) is False
    assert systemd.watchdog_interval({}) is None


async def test_notify_sends_one_datagram(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=hi") is True
    assert await receive(notify_socket) == "READY=1\nSTATUS=hi"


def test_watchdog_interval():
    pid = str(os.getpid())
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": pid}) == 30.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "nope"}) is None


async def test_agent_is_ready_after_first_sync_and_says_stopping(
    notify_socket, agent_harness, fake_cp, monkeypatch
):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    release = asyncio.Event()

    class Sync:
        def __init__(self, ctx):
            pass

        async def run_once(self):
            await release.wait()

    class P:
        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="sessionSync", factory=Sync, interval=60, on_sync=True)]

    cfg = {"node": {"name": "jp1"}, "controlPlane": {"url": fake_cp.url, "token": "test-token"}}
    agent = agent_harness(cfg, plugins=[("s", P())]).build()
    running = asyncio.create_task(agent.run())
    assert await receive(notify_socket) == "WATCHDOG=1"  # the watchdog pings as soon as the loop runs
    assert agent.scheduler.status()[0]["running"]  # not ready while the first sync runs
    release.set()  # the first sync finishes: now the agent is ready
    message = await receive(notify_socket)
    while message == "WATCHDOG=1":
        message = await receive(notify_socket)
    assert message.startswith("READY=1\nSTATUS=running: 1 tasks")
    agent.request_stop()
    messages = []
    while "STOPPING=1" not in messages:
        messages.append(await receive(notify_socket))
    assert await running == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    unit = (ROOT / "contrib/systemd/moenet-agent.service").read_text()
    exe = shutil.which("moenet-agent") or str(Path(os.sys.executable).with_name("moenet-agent"))
    (tmp_path / "moenet-agent.service").write_text(
        unit.replace("/opt/moenet-agent/current/bin/moenet-agent", exe)
    )
    res = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "moenet-agent.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "Type=notify" in unit and "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    assert "CAP_NET_ADMIN" in unit and "KillMode=process" in unit
    assert "LimitNOFILE=65536" in unit.splitlines()  # FDs for ~1000 tunnels plus the API


def unit_values(text: str, section: str) -> dict[str, list[str]]:
    """``key -> [values]`` of one section of a unit file."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_a_crash_loop_ends_in_the_rollback_unit(tmp_path):
    """A release that cannot start is not restarted forever: the start limit is
    reached (also by a start that hangs until TimeoutStartSec) and OnFailure=
    runs the shipped rollback unit, with the previous version's binary."""
    agent = (ROOT / "contrib/systemd/moenet-agent.service").read_text()
    rollback = (ROOT / "contrib/systemd/moenet-agent-rollback.service").read_text()
    unit, service = unit_values(agent, "Unit"), unit_values(agent, "Service")
    assert unit["OnFailure"] == ["moenet-agent-rollback.service"]
    interval, burst = seconds(unit["StartLimitIntervalSec"][0]), int(unit["StartLimitBurst"][0])
    assert 2 <= burst <= 10
    hang = seconds(service["TimeoutStartSec"][0]) + seconds(service["RestartSec"][0])
    assert burst * hang < interval, "a start that hangs until its timeout must still trip the limit"

    roll = unit_values(rollback, "Service")
    assert roll["Type"] == ["oneshot"]
    [start] = roll["ExecStart"]
    assert start.startswith("/opt/moenet-agent/previous/bin/moenet-agent updater rollback --require-pending ")
    assert roll["ExecStartPost"] == [
        "/bin/systemctl reset-failed moenet-agent.service",
        "/bin/systemctl --no-block start moenet-agent.service",
    ]

    exe = shutil.which("moenet-agent") or str(Path(os.sys.executable).with_name("moenet-agent"))
    (tmp_path / "moenet-agent.service").write_text(
        agent.replace("/opt/moenet-agent/current/bin/moenet-agent", exe)
    )
    (tmp_path / "moenet-agent-rollback.service").write_text(
        rollback.replace("/opt/moenet-agent/previous/bin/moenet-agent", exe)
    )
    res = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "moenet-agent" not in res.stderr, res.stderr  # no unknown key, no bad value in either unit
