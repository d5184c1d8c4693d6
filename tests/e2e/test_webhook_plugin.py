"""A separately packaged plugin beside the installed agent: ``moenet-plugin-webhook``.

The agent's wheel (``test_installed.py``'s fixture) and the plugin's wheel, both
built by pip as that file does, go non-editable into a fresh virtual environment.
The install downloads nothing: both wheels go in with ``--no-index --no-deps``,
and the dependencies (aiohttp, attrs, pytest...) are this environment's, reached
through a ``.pth`` file as ``--system-site-packages`` would reach them (its own
``moenet*`` entries are left out, so only the installed copies can be imported).

There, ``moenet-agent plugins`` finds ``webhook`` through its entry point;
``validate`` names ``webhook.url`` when it is missing; the plugin's own test
suite passes against the installed packages; and the installed daemon posts a
maintenance change made through its local API to a receiver on 127.0.0.1, or,
with ``plugins.disable: ["webhook"]`` on that node, does not load it and posts
nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers.installed import clean_env, free_port, start_daemon, wheel  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "contrib" / "plugins" / "moenet-plugin-webhook"
SECRET = "webhook-secret-0123456789"
API_TOKEN = "local-api-token"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugin_wheel(tmp_path_factory) -> Path:
    # Built from a copy, so the checkout gets no build/ or *.egg-info.
    src = tmp_path_factory.mktemp("plugin-src") / "moenet-plugin-webhook"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))
    out = tmp_path_factory.mktemp("plugin-wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [whl] = out.glob("moenet_plugin_webhook-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(request, plugin_wheel, tmp_path_factory) -> Path:
    """A fresh venv with both wheels; returns its bin directory."""
    agent_wheel = request.getfixturevalue("wheel")  # the agent's, built by test_installed.py's fixture
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False, clear=True)
    py = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps"]
    subprocess.run([*pip, str(agent_wheel), str(plugin_wheel)], check=True, capture_output=True, timeout=300)
    deps = env_dir / "deps"
    deps.mkdir()
    for site_dir in map(Path, site.getsitepackages()):
        for entry in site_dir.iterdir() if site_dir.is_dir() else ():
            ours = entry.name.startswith(("moenet", "__editable__")) or entry.suffix == ".pth"
            if not ours and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    [theirs] = (env_dir / "lib").glob("python3*/site-packages")
    (theirs / "_test_dependencies.pth").write_text(f"{deps}\n")
    return env_dir / "bin"


def run(bin_dir: Path, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(cwd)),
        cwd=cwd,
        timeout=300,
        check=check,
    )


def test_the_installed_agent_discovers_the_plugin(installed, tmp_path):
    listing = json.loads(run(installed, "moenet-agent", "plugins", "--json", cwd=tmp_path).stdout)
    [hook] = [p for p in listing["plugins"] if p["name"] == "webhook"]
    assert (hook["status"], hook["distribution"], hook["version"], hook["module"]) == (
        "active",
        "moenet-plugin-webhook",
        "0.1.0",
        "moenet_webhook:plugin",
    )
    assert {"moenet_session_status_changed", "moenet_maintenance_changed"} <= set(hook["hooks"])
    where = run(
        installed,
        "python",
        "-c",
        "import moenet_core, moenet_webhook as w; print(w.__file__, moenet_core.__file__)",
        cwd=tmp_path,
    ).stdout
    assert str(ROOT) not in where and where.count(str(installed.parent)) == 2


def test_validate_names_the_missing_url(installed, tmp_path):
    config = write_config(tmp_path, webhook=None)
    res = run(installed, "moenet-agent", "validate", "--json", "-c", str(config), cwd=tmp_path, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "webhook.url: required" in json.loads(res.stdout)["problems"]


def test_the_plugins_own_tests_pass_against_the_installed_packages(installed, tmp_path):
    # A copy of its tests and pytest settings, away from the checkout's sources.
    shutil.copy(PLUGIN / "pyproject.toml", tmp_path)
    shutil.copytree(PLUGIN / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    pytest = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    res = run(installed, *pytest, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # Nothing skipped, no warnings: the summary is only "N passed in S".
    assert re.fullmatch(r"[1-9]\d* passed in [\d.]+s", res.stdout.strip().splitlines()[-1]), res.stdout


# ------------------------------------------------------------------ the daemon


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each POST (headers, JSON body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        self._changed = asyncio.Condition()
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        async with self._changed:
            self.posts.append((dict(request.headers), await request.json()))
            self._changed.notify_all()
        return web.Response()

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.posts) >= count), timeout)


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    rec.server = TestServer(app, host="127.0.0.1")
    await rec.server.start_server()
    yield rec
    await rec.server.close()


def write_config(
    tmp_path: Path, *, webhook: dict[str, Any] | None, disable: tuple[str, ...] = (), port: int = 24368
) -> Path:
    (tmp_path / "cp.json").write_text("{}")
    config = {
        "node": {"name": "de-fra1"},
        "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
        "server": {"listen": f"127.0.0.1:{port}", "token": API_TOKEN},
        "state": {"directory": str(tmp_path / "state")},
        # Only plugins that leave the host's network alone: no netns needed.
        "plugins": {"enable": ["heartbeat", "webhook"], "disable": list(disable)},
        **({"webhook": webhook} if webhook is not None else {}),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


async def run_daemon_with_maintenance(
    installed: Path, tmp_path: Path, rec: Receiver, *, disable: tuple[str, ...]
):
    """Start the installed daemon, start maintenance through its API, and return
    (``/status``, the JSON log lines) after a clean stop."""
    port = free_port()
    hook = {"url": str(rec.server.make_url("/hook")), "secretHeader": "X-Hook-Token", "secret": SECRET}
    daemon = await start_daemon(installed, write_config(tmp_path, webhook=hook, disable=disable, port=port))
    try:
        await daemon.wait_log("started")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
            async with http.post(f"{base}/maintenance/start", json={"reason": "kernel upgrade"}) as resp:
                assert resp.status == 200, await resp.text()
            if not disable:
                await rec.wait_for(1)
            async with http.get(f"{base}/status") as resp:
                status = await resp.json()
    finally:
        # The plugin's moenet_shutdown drains its queue: after a clean stop,
        # whatever it was going to send has been sent.
        assert await daemon.terminate() == 0
    return status, daemon.lines


async def test_the_installed_daemon_posts_a_maintenance_change(installed, tmp_path, receiver):
    status, lines = await run_daemon_with_maintenance(installed, tmp_path, receiver, disable=())
    [(headers, body)] = receiver.posts
    assert headers["X-Hook-Token"] == SECRET
    assert {k: body[k] for k in ("event", "node", "enabled", "reason")} == {
        "event": "maintenance",
        "node": "de-fra1",
        "enabled": True,
        "reason": "kernel upgrade",
    }
    [hook] = [p for p in status["plugins"] if p["name"] == "webhook"]
    assert (hook["status"], hook["distribution"], hook["sections"]) == (
        "active",
        "moenet-plugin-webhook",
        ["webhook"],
    )
    assert SECRET not in json.dumps(lines)


async def test_a_node_that_disables_the_plugin_sends_nothing(installed, tmp_path, receiver):
    status, lines = await run_daemon_with_maintenance(installed, tmp_path, receiver, disable=("webhook",))
    [hook] = [p for p in status["plugins"] if p["name"] == "webhook"]
    assert (hook["status"], hook["error"], hook["hooks"]) == ("blocked", "disabled by configuration", [])
    assert status["maintenance"]["enabled"] is True
    assert receiver.posts == []
    assert not any(line.get("plugin") == "webhook" for line in lines)
