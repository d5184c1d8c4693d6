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
