"""The command line, run as a subprocess the way an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moenet_core import __version__
from moenet_core.cli import _translate_go_flags, render_status

GOOD = {
    "node": {"name": "jp1", "id": 1},
    "controlPlane": {"url": "https://cp.example/api/v1", "token": "tok-123456"},
}


def run(*args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "moenet_core", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_version():
    res = run("version")
    assert res.returncode == 0
    assert res.stdout.splitlines()[0] == f"moenet-agent {__version__}"
    assert run("-v").stdout == res.stdout  # Go agent's flag


@pytest.mark.parametrize("cmd", ["run", "validate", "plugins", "status", "plan", "version"])
def test_help_for_every_command(cmd):
    res = run(cmd, "--help")
    assert res.returncode == 0 and "usage: moenet-agent" in res.stdout


def test_validate_ok_and_go_style_flag(tmp_path):
    path = write(tmp_path, GOOD)
    res = run("validate", "-c", path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"OK: {path} (full mode; plugins: ")
    assert "heartbeat" in res.stdout.split("plugins: ")[1]
    res = run("-validate", "-config", path)
    assert res.returncode == 0 and res.stdout.startswith("OK:")


def test_validate_reports_every_problem(tmp_path):
    bad = {
        "node": {"name": "bad name"},
        "controlPlane": {"url": "ftp://x", "token": 5},
        "heartbeat": {"interfaces": "eth0"},
    }
    res = run("validate", "-c", write(tmp_path, bad))
    assert res.returncode == 1
    assert "node.name: must be 1-63 characters" in res.stderr
    assert "controlPlane.url: must be an http:// or https:// URL" in res.stderr
    assert "controlPlane.token: expected a string, got 5" in res.stderr


def test_validate_checks_plugin_sections(tmp_path):
    res = run("validate", "-c", write(tmp_path, {**GOOD, "heartbeat": {"interfaces": "eth0"}}))
    assert res.returncode == 1
    assert "heartbeat.interfaces: expected" in res.stderr


def test_validate_json_and_warnings(tmp_path):
    res = run("validate", "--json", "-c", write(tmp_path, {**GOOD, "server": {"lisen": 1}, "nosuch": {}}))
    out = json.loads(res.stdout)
    assert out["ok"] is True and out["mode"] == "full"
    assert "server.lisen: unknown key, ignored" in out["warnings"]
    assert "nosuch: unknown section (no active plugin declares it), ignored" in out["warnings"]


def test_validate_bootstrap_file_offline(tmp_path):
    path = write(
        tmp_path,
        {
            "bootstrap": {"apiUrl": "http://127.0.0.1:9", "nodeName": "jp1", "token": "t0k3n-123"},
            "server": {"listen": ":24368", "token": "api-token-0123456789"},
        },
    )
    res = run("validate", "-c", path)
    assert res.returncode == 0, res.stderr
    assert "(bootstrap mode;" in res.stdout


def test_validate_syntax_error_and_missing_file(tmp_path):
    res = run("validate", "-c", write(tmp_path, "{oops"))
    assert res.returncode == 1 and "line 1 column 2" in res.stderr
    res = run("validate", "-c", str(tmp_path / "nope.json"))
    assert res.returncode == 1 and "no such file" in res.stderr


def test_plugins_lists_heartbeat_from_its_entry_point(tmp_path):
    res = run("plugins", "-c", write(tmp_path, GOOD))
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("heartbeat"))
    assert line.split()[:4] == ["heartbeat", "active", "moenet-agent", __version__]
    assert "heartbeat" in line.split()[4]  # the task it provides
    data = json.loads(run("plugins", "--json", "-c", write(tmp_path, GOOD)).stdout)
    [hb] = [p for p in data["plugins"] if p["name"] == "heartbeat"]
    assert hb["status"] == "active" and hb["tasks"] == ["heartbeat"] and hb["module"] == "moenet_heartbeat"
    assert "moenet_tasks" in hb["hooks"]


def test_plugins_blocked_by_env_and_config(tmp_path):
    res = run("plugins", "--json", "-c", write(tmp_path, GOOD), env={"MOENET_DISABLE_PLUGINS": "heartbeat"})
    [hb] = [p for p in json.loads(res.stdout)["plugins"] if p["name"] == "heartbeat"]
    assert hb["status"] == "blocked" and hb["hooks"] == []
    cfg = {**GOOD, "plugins": {"disable": ["heartbeat"]}}
    res = run("plugins", "--json", "-c", write(tmp_path, cfg))
    [hb] = [p for p in json.loads(res.stdout)["plugins"] if p["name"] == "heartbeat"]
    assert hb["status"] == "blocked"


def test_plugins_without_config_file(tmp_path):
    res = run("plugins", cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert res.returncode == 0
    assert "(no config file" in res.stdout and "heartbeat" in res.stdout


def test_status_unreachable():
    res = run("status", "--url", "http://127.0.0.1:9")
    assert res.returncode == 3 and "cannot reach the agent" in res.stderr


def test_plan_asks_the_plugins_route_and_prints_its_lines():
    import http.server
    import threading

    seen: list[str] = []
    body = {"answer": "saved", "problem": "cp down", "empty": False, "lines": ["node 7 igp7: create"]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            ok = self.path == "/plugins/mesh/plan"
            data = json.dumps(body if ok else {"error": "meshSync is not running"}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        res = run("plan", "mesh", "--url", url)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [
            "answer: saved (cp down)",
            "  node 7 igp7: create",
            "changes pending",
        ]
        res = run("plan", "ibgp", "--url", url, "--json")
        assert res.returncode == 1 and "meshSync is not running" in res.stderr
        assert seen == ["/plugins/mesh/plan", "/plugins/ibgp/plan"]
        res = run("plan", "../status", "--url", url)
        assert res.returncode == 2 and "not a plugin name" in res.stderr and len(seen) == 2
    finally:
        server.shutdown()
        thread.join()


def test_go_flag_translation():
    assert _translate_go_flags(["-c", "x.json"]) == ["run", "-c", "x.json"]
    assert _translate_go_flags(["-validate", "-config", "x.json"]) == ["validate", "-c", "x.json"]
    assert _translate_go_flags(["status", "--json"]) == ["status", "--json"]


def test_render_status_table():
    text = render_status(
        {
            "version": "0.1.0",
            "uptime": 61.5,
            "node": {"name": "jp1", "id": 1, "mode": "bootstrap"},
            "controlPlane": {"source": "http", "breaker": "open"},
            "maintenance": {"enabled": False},
            "tasks": [
                {
                    "name": "heartbeat",
                    "plugin": "heartbeat",
                    "interval": 30,
                    "runs": 3,
                    "failures": 1,
                    "running": False,
                    "last": {"ok": False, "error": "ControlPlaneUnavailable: 503"},
                }
            ],
            "tasksNotStarted": {"sessionSync": "needs backend routing"},
            "plugins": [{"name": "heartbeat", "status": "active"}],
            "sessions": {"ACTIVE": 2},
        }
    )
    assert "node jp1 (id 1, bootstrap mode)" in text
    assert "breaker open" in text
    assert "heartbeat" in text and "ControlPlaneUnavailable: 503" in text
    assert "sessionSync" in text and "not started: needs backend routing" in text
    assert "SESSIONS ACTIVE=2" in text


def test_go_flags_do_not_swallow_commands():
    assert _translate_go_flags([]) == ["run"]
    assert _translate_go_flags(["-c", "x.json", "status"]) == ["-c", "x.json", "status"]
    assert _translate_go_flags(["render", "--out", "d"]) == ["render", "--out", "d"]


CLI_PLUGIN = """
from moenet_core import hookimpl

@hookimpl
def moenet_cli_commands(register):
    def hello(args, config):
        node = config.node.name if config else "(no config)"
        print(f"hello {args.name} from {node}")
        return 7

    p = register("hello", "say hello", hello)
    p.add_argument("--name", default="world")

    def hi(args, cmd):
        print(f"hi from {cmd.plugin} on {cmd.config.node.name}, state {cmd.state.path('x.json')}")
        return 0

    register("hi", "say hi", hi)
"""

CLASHING = """
from moenet_core import hookimpl

@hookimpl
def moenet_cli_commands(register):
    register("status", "shadow the core", lambda args, config: 0)
"""


def test_plugin_cli_commands(tmp_path):
    from helpers.plugins import write_dist

    site = tmp_path / "site"
    site.mkdir()
    write_dist(site, "moenet-hello", "1.0", {"hello": "fake_cli_hello"}, {"fake_cli_hello": CLI_PLUGIN})
    write_dist(site, "moenet-clash", "1.0", {"clash": "fake_cli_clash"}, {"fake_cli_clash": CLASHING})
    env = {"PYTHONPATH": str(site)}
    cfg = write(tmp_path, GOOD)
    res = run("hello", "--name", "dn42", "-c", cfg, env=env)
    assert res.returncode == 7, res.stderr
    assert res.stdout.strip() == "hello dn42 from jp1"  # handler(args, config): deprecated, still works
    res = run("hi", "-c", cfg, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hi from hello on jp1, state /var/lib/moenet-agent/plugins/hello/x.json"
    assert (
        "plugin 'clash' could not add its commands: command 'status' of plugin 'clash' is already provided by the core"
        in res.stderr
    )
    helptext = run("--help", env=env).stdout
    assert "hello" in helptext and "say hello [hello]" in helptext
    # Blocked plugins add no commands.
    res = run("hello", "-c", cfg, env={**env, "MOENET_DISABLE_PLUGINS": "hello"})
    assert res.returncode == 2 and "invalid choice: 'hello'" in res.stderr


FLEET_PLUGIN = """
import attrs

from moenet_core import Backend, BackendSpec, ConfigSection, TaskSpec, hookimpl


@attrs.define(kw_only=True)
class Section:
    greeting: str = "hi"


class Probe(Backend):
    pass


class Idle:
    async def run_once(self):
        return None


@hookimpl
def moenet_config_sections():
    return [ConfigSection(name="fleet", type=Section)]


@hookimpl
def moenet_backends(config):
    return [
        BackendSpec(kind="probe", name="null", factory=lambda ctx: Probe()),
        BackendSpec(kind="probe", name="other", factory=lambda ctx: Probe(), probe=lambda: False),
    ]


@hookimpl
def moenet_tasks(config):
    return [TaskSpec(name="fleetIdle", factory=lambda ctx: Idle(), interval=3600, initial_delay=3000)]


@hookimpl
def moenet_features():
    return ["fleet"]
"""


async def test_plugins_json_and_status_list_plugins_in_one_shape(tmp_path, monkeypatch):
    """Fleet tooling reads `moenet-agent plugins --json` and `GET /status` alike."""
    import aiohttp
    from helpers.plugins import write_dist

    from moenet_core.agent import Agent
    from moenet_core.cli import disabled_plugins
    from moenet_core.config import build_config
    from moenet_core.plugins import DESCRIPTION_KEYS, AgentPluginManager
    from moenet_core.testing import ManualClock

    site = tmp_path / "site"
    site.mkdir()
    write_dist(site, "moenet-fleet", "2.0", {"fleet": "fake_fleet"}, {"fake_fleet": FLEET_PLUGIN})
    (tmp_path / "cp.json").write_text(json.dumps({"sessions": [], "bird-config": {}}))
    cfg = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
        "server": {"listen": "127.0.0.1:0"},
        "state": {"directory": str(tmp_path / "state")},
        # Built-in plugins that touch nothing on the host, plus the fake one; the
        # others show up as blocked in both listings.
        "plugins": {"enable": ["fleet", "heartbeat", "sessions", "rtt", "updater"]},
        "fleet": {"greeting": "hello"},
    }
    path = write(tmp_path, cfg)

    res = run("plugins", "--json", "-c", path, env={"PYTHONPATH": str(site)})
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert (answer["version"], answer["hookApiVersion"]) == (__version__, 1)
    cli = answer["plugins"]

    monkeypatch.syspath_prepend(str(site))
    try:
        config, _ = build_config(cfg, env={}, source=path)
        pm = AgentPluginManager()
        disabled, enabled = disabled_plugins(config, {})
        pm.load_entrypoints(disabled=disabled, enabled=enabled)
        agent = Agent(config, pm, clock=ManualClock())
        await agent.start()
        try:
            host, port = agent.api.bound[0]
            async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/status") as resp:
                status = (await resp.json())["plugins"]
        finally:
            await agent.stop()
    finally:
        sys.modules.pop("fake_fleet", None)

    assert [p["name"] for p in cli] == [p["name"] for p in status]
    for entry in (*cli, *status):
        assert tuple(entry) == DESCRIPTION_KEYS
    # Same plugins, same facts; only a running agent has status info.
    assert [{**p, "info": None} for p in status] == cli
    assert all(p["info"] is None for p in cli)
    assert isinstance(next(p for p in status if p["name"] == "rtt")["info"], dict)

    by_name = {p["name"]: p for p in cli}
    assert by_name["fleet"] == {
        "name": "fleet",
        "status": "active",
        "error": None,
        "distribution": "moenet-fleet",
        "version": "2.0",
        "module": "fake_fleet",
        "hooks": ["moenet_backends", "moenet_config_sections", "moenet_features", "moenet_tasks"],
        "tasks": ["fleetIdle"],
        "backends": ["probe:null", "probe:other"],
        "sections": ["fleet"],
        "features": ["fleet"],
        "runtimeErrors": 0,
        "lastRuntimeError": None,
        "info": None,
    }
    # Tasks are what a plugin provides, started or not (sessionSync needs backends).
    assert by_name["sessions"]["tasks"] == ["metricCollector", "sessionSync"]
    assert by_name["sessions"]["sections"] == ["sessions"]
    assert (by_name["wireguard"]["status"], by_name["wireguard"]["error"]) == (
        "blocked",
        "not in plugins.enable",
    )


def test_command_context_builds_the_agents_cp_and_state(tmp_path):
    from moenet_core import CommandContext, ConfigError
    from moenet_core.config import build_config

    (tmp_path / "cp.json").write_text(json.dumps({"sessions": [{"uuid": "u1"}]}))
    config, _ = build_config(
        {
            "node": {"name": "jp1", "id": 1},
            "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
            "state": {"directory": str(tmp_path / "state")},
        }
    )
    cmd = CommandContext(config, plugin="demo")
    assert cmd.run(cmd.cp.fetch("sessions")) == [{"uuid": "u1"}]
    assert cmd.state.path("x.json") == tmp_path / "state" / "plugins" / "demo" / "x.json"
    bare = CommandContext(None, plugin="demo")
    for attr in ("cp", "state"):
        with pytest.raises(ConfigError, match="no config file found"):
            getattr(bare, attr)
