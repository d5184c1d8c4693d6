"""Shared test helpers (moved from ``test_installed``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [whl] = out.glob("moenet_agent-*.whl")
    return whl


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """The installed agent as a child process; its JSON log lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict] = []

    async def wait_log(self, text: str, timeout: float = 60) -> dict:
        async def read() -> dict:
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"agent exited before logging {text!r}: {self.lines[-5:]}")
                line = json.loads(raw)
                self.lines.append(line)
                if text in line["msg"]:
                    return line

        return await asyncio.wait_for(read(), timeout)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        await self.wait_log("moenet-agent stopped")
        return await asyncio.wait_for(self.proc.wait(), 60)


async def start_daemon(bin_dir: Path, config: Path, **env: str) -> Daemon:
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir / "moenet-agent"),
        "run",
        "-c",
        str(config),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(**env),
    )
    return Daemon(proc)
