"""The wheel, installed non-editable into a fresh virtual environment, run as a daemon.

This is the issue's "done when": ``pip install .`` gives a working
``moenet-agent``; ``moenet-agent plugins`` lists ``heartbeat`` from its entry
point; an agent started from a bootstrap config against a CP sends
authenticated heartbeats, serves ``/status`` and ``/metrics``, refuses
unauthenticated mutating calls, shuts down cleanly on SIGTERM, and runs
without ``heartbeat`` when ``MOENET_DISABLE_PLUGINS=heartbeat``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import venv
import zipfile
from pathlib import Path

import aiohttp
import helpers.installed
import pytest
from helpers.installed import clean_env, free_port, start_daemon

from moenet_core import __version__
from moenet_core.testing import FakeControlPlane

wheel = helpers.installed.wheel  # a fixture

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.netns]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed; returns its bin dir."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True, clear=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=600
    )
    return env_dir / "bin"


def test_wheel_contains_every_package_in_the_tree(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for pkg_dir, top in (
        (ROOT / "moenet_core", "moenet_core"),
        *((p, p.name) for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists()),
    ):
        for init in pkg_dir.rglob("__init__.py"):
            rel = init.relative_to(pkg_dir)
            assert f"{top}/{rel.as_posix()}" in names, f"{top}/{rel} missing: add it to pyproject packages"
    assert "moenet_core/py.typed" in names
    assert "moenet_templates/README.md" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    section = text.split("[moenet]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {
        "bird = moenet_bird",
        "heartbeat = moenet_heartbeat",
        "loopback = moenet_loopback",
        "nftables = moenet_nftables",
        "wireguard = moenet_wireguard",
    } <= set(section)
    assert "moenet_templates/bird/bird.conf.j2" in names


def test_installed_plugins_command(installed, tmp_path):
    res = subprocess.run(
        [str(installed / "moenet-agent"), "plugins", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(tmp_path)),
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    [hb] = [p for p in json.loads(res.stdout)["plugins"] if p["name"] == "heartbeat"]
    assert (hb["status"], hb["distribution"], hb["version"]) == ("active", "moenet-agent", __version__)
    # It really is the installed copy, not the checkout.
    where = subprocess.run(
        [str(installed / "python"), "-c", "import moenet_heartbeat; print(moenet_heartbeat.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert str(ROOT) not in where


def write_bootstrap(tmp_path: Path, cp_url: str, port: int) -> Path:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "bootstrap": {"apiUrl": cp_url, "nodeName": "de-fra1", "token": "test-token"},
                "server": {"listen": f"127.0.0.1:{port}", "token": "local-api-token"},
                "state": {"directory": str(tmp_path / "state")},
                "bird": {
                    "configDir": str(tmp_path / "bird"),
                    "controlSocket": str(tmp_path / "bird.ctl"),
                },
            }
        )
    )
    return path


async def test_installed_agent_bootstrap_heartbeat_status_metrics_auth(installed, tmp_path, netns):
    # The daemon, its CP and our HTTP calls all live in a throwaway network
    # namespace: the agent's link-layer plugins must never touch the host.
    with netns().entered():
        await _bootstrap_heartbeat_status_metrics_auth(installed, tmp_path)


async def _bootstrap_heartbeat_status_metrics_auth(installed, tmp_path):
    port = free_port()
    async with FakeControlPlane() as cp:
        cp.set(
            "config",
            {
                "node": {"id": 12, "name": "de-fra1", "loopbackIpv4": "172.22.68.12"},
                "controlPlane": {"heartbeatInterval": 30},
            },
        )
        cp.fail("config", times=2, status=503)  # the CP is briefly down at start
        daemon = await start_daemon(installed, write_bootstrap(tmp_path, cp.url, port))
        try:
            [beat] = await cp.wait_for("heartbeat", timeout=60)
            await daemon.wait_log("started")
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/status") as resp:
                    status = await resp.json()
                async with http.get(f"{base}/metrics") as resp:
                    metrics = await resp.text()
                async with http.post(f"{base}/maintenance/start") as resp:
                    unauth = (resp.status, await resp.json())
                async with http.post(
                    f"{base}/sync?wait=1", headers={"Authorization": "Bearer local-api-token"}
                ) as resp:
                    assert resp.status == 200
                # SIGHUP re-reads the file: a new heartbeat interval applies without a restart.
                config = json.loads((tmp_path / "config.json").read_text())
                config["tasks"] = {"heartbeat": {"interval": 7}}
                (tmp_path / "config.json").write_text(json.dumps(config))
                daemon.proc.send_signal(signal.SIGHUP)
                await daemon.wait_log("configuration reloaded")
                async with http.get(f"{base}/status") as resp:
                    reloaded = await resp.json()
        finally:
            code = await daemon.terminate()
    assert [t["interval"] for t in reloaded["tasks"] if t["name"] == "heartbeat"] == [7]
    assert code == 0
    assert beat.authorized and beat.node == "de-fra1"
    assert beat.body["status"]["version"] == __version__
    assert status["node"] == {"name": "de-fra1", "id": 12, "mode": "bootstrap"}
    assert "heartbeat" in [t["name"] for t in status["tasks"]]
    assert 'moenet_task_runs_total{result="ok",task="heartbeat"}' in metrics
    assert unauth[0] == 401 and unauth[1]["code"] == "unauthorized"
    assert len(cp.calls("config")) == 3
    # Neither token appears anywhere in the log.
    log_text = json.dumps(daemon.lines)
    assert "test-token" not in log_text and "local-api-token" not in log_text


async def test_installed_agent_without_heartbeat(installed, tmp_path, netns):
    with netns().entered():
        await _without_heartbeat(installed, tmp_path)


async def _without_heartbeat(installed, tmp_path):
    port = free_port()
    async with FakeControlPlane() as cp:
        cp.set("config", {"node": {"id": 12}})
        daemon = await start_daemon(
            installed, write_bootstrap(tmp_path, cp.url, port), MOENET_DISABLE_PLUGINS="heartbeat"
        )
        try:
            await daemon.wait_log("started")
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as resp:
                status = await resp.json()
        finally:
            assert await daemon.terminate() == 0
        assert cp.calls("heartbeat") == []
    [hb] = [p for p in status["plugins"] if p["name"] == "heartbeat"]
    assert hb["status"] == "blocked"
    assert "heartbeat" not in [t["name"] for t in status["tasks"]]
