"""The agent core end to end: a real agent, real HTTP to a fake CP, the real API."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import attrs
import moenet_heartbeat
import pytest

from moenet_core import (
    Backend,
    BackendSpec,
    ConfigSection,
    RouteSpec,
    SessionStatus,
    TaskSpec,
    TunnelBackend,
    hookimpl,
)
from moenet_core.bootstrap import CACHE_FILE, load_config
from moenet_core.descriptors import SessionStatusEvent
from moenet_core.errors import PluginError
from moenet_core.state import StateStore
from moenet_core.testing import AgentHarness, ManualClock

TOKEN = "test-token"
API_TOKEN = "api-token-123"


def node_config(cp_url: str, **extra):
    cfg = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": cp_url, "token": TOKEN},
        "server": {"listen": "127.0.0.1:0"},
    }
    cfg.update(extra)
    return cfg


def api_url(agent) -> str:
    host, port = agent.api.bound[0]
    return f"http://{host}:{port}"


async def test_heartbeat_is_sent_authenticated(fake_cp, agent_harness):
    async with agent_harness(node_config(fake_cp.url), plugins=[("heartbeat", moenet_heartbeat)]):
        [req] = await fake_cp.wait_for("heartbeat")
    assert req.method == "POST" and req.node == "jp1" and req.authorized
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["User-Agent"].startswith("moenet-agent/")
    body = req.body
    assert body["node_id"] == "jp1"
    status = body["status"]
    for key in (
        "version",
        "kernel",
        "loadAvg",
        "uptime",
        "timestamp",
        "tx",
        "rx",
        "tcp",
        "udp",
        "maintenance",
    ):
        assert key in status
    assert status["maintenance"] is False
    assert isinstance(status["tcp"], int) and isinstance(status["uptime"], int)


class MeshKeyPublisher:
    """A plugin that publishes heartbeat fields from a run-time object."""

    class Task:
        def __init__(self, ctx):
            ctx.register_hooks(self)

        @hookimpl
        def moenet_heartbeat_fields(self):
            return {"meshPublicKey": "bWVzaC1wdWJsaWMta2V5LWJhc2U2NC1lbmNvZGVkMDA="}

        async def run_once(self):
            return None

    @hookimpl
    def moenet_tasks(self, config):
        return [TaskSpec(name="meshSync", factory=self.Task, interval=120)]


async def test_heartbeat_carries_fields_from_other_plugins(fake_cp, agent_harness):
    plugins = [("heartbeat", moenet_heartbeat), ("mesh", MeshKeyPublisher())]
    async with agent_harness(node_config(fake_cp.url), plugins=plugins) as h:
        # The mesh task registers its hooks when it is built, before the first heartbeat.
        [req] = await fake_cp.wait_for("heartbeat")
        assert h.agent.pm.records["mesh"].status == "active"
    assert req.body["status"]["meshPublicKey"] == "bWVzaC1wdWJsaWMta2V5LWJhc2U2NC1lbmNvZGVkMDA="


async def test_disabled_heartbeat_is_not_loaded(fake_cp, agent_harness):
    async with agent_harness(
        node_config(fake_cp.url), plugins=[("heartbeat", moenet_heartbeat)], disabled=["heartbeat"]
    ) as h:
        status = h.agent.status()
    assert [p["status"] for p in status["plugins"] if p["name"] == "heartbeat"] == ["blocked"]
    assert status["tasks"] == []
    assert fake_cp.calls("heartbeat") == []


async def test_status_metrics_and_auth_over_http(fake_cp, agent_harness):
    config = node_config(fake_cp.url, server={"listen": "127.0.0.1:0", "token": API_TOKEN})
    async with agent_harness(config, plugins=[("heartbeat", moenet_heartbeat)], api=True) as h:
        await fake_cp.wait_for("heartbeat")
        base = api_url(h.agent)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/status") as resp:
                assert resp.status == 200
                status = await resp.json()
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
            async with http.post(f"{base}/maintenance/start") as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == "unauthorized"
            async with http.post(
                f"{base}/maintenance/start", headers={"Authorization": "Bearer wrong"}
            ) as resp:
                assert resp.status == 401
            assert h.agent.maintenance_state()["enabled"] is False
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            async with http.post(
                f"{base}/maintenance/start", headers=auth, json={"reason": "kernel upgrade"}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["enabled"] is True
            async with http.post(f"{base}/sync", headers=auth) as resp:
                assert resp.status == 202
    assert status["node"] == {"name": "jp1", "id": 1, "mode": "full"}
    assert status["controlPlane"] == {"source": "http", "breaker": "closed"}
    [task] = status["tasks"]
    assert task["name"] == "heartbeat" and task["plugin"] == "heartbeat"
    assert 'moenet_agent_info{version="' in metrics
    assert 'moenet_task_runs_total{result="ok",task="heartbeat"}' in metrics
    assert 'moenet_cp_requests_total{method="POST",resource="heartbeat",result="ok"}' in metrics
    # Maintenance survives a restart of the agent.
    saved = StateStore(h.state_dir).read_json("maintenance.json")
    assert saved["enabled"] is True and saved["reason"] == "kernel upgrade"


async def test_maintenance_restored_and_broadcast(fake_cp, agent_harness, tmp_path):
    """A hook-only plugin gets its own context at startup, and a maintenance state
    restored at start is announced after that (it can already use the context)."""
    seen = []
    order = []

    class Watcher:
        ctx = None

        @hookimpl
        def moenet_startup(self, ctx):
            order.append("startup")
            self.ctx = ctx

        @hookimpl
        def moenet_maintenance_changed(self, event):
            order.append("maintenance")
            seen.append((event, self.ctx.plugin if self.ctx else None))

        @hookimpl
        def moenet_shutdown(self, agent, ctx):
            order.append(f"shutdown {ctx.plugin} {ctx is self.ctx} {agent.maintenance_state()['enabled']}")

    StateStore(tmp_path / "state").write_json(
        "maintenance.json", {"enabled": True, "since": 5.0, "reason": "x"}
    )
    watcher = Watcher()
    async with agent_harness(node_config(fake_cp.url), plugins=[("watch", watcher)]) as h:
        assert h.agent.maintenance_state()["enabled"] is True
        assert watcher.ctx is h.agent.context("watch")  # the same context its tasks would get
        await h.agent.set_maintenance(False, "")
    assert [(e.enabled, e.reason, plugin) for e, plugin in seen] == [
        (True, "restored", "watch"),
        (False, "", "watch"),
    ]
    assert order == ["startup", "maintenance", "maintenance", "shutdown watch True False"]
    assert StateStore(tmp_path / "state").read_json("maintenance.json")["enabled"] is False


async def test_maintenance_file_of_the_previous_version_is_read_and_not_rewritten(
    fake_cp, agent_harness, tmp_path
):
    """maintenance.json without "version" (what the previous agent wrote) is read as it
    is; nothing rewrites it until maintenance changes, which saves version 1."""
    path = tmp_path / "state" / "maintenance.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"enabled": True, "since": 5.0, "reason": "kernel upgrade"}))
    before = (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes())
    async with agent_harness(node_config(fake_cp.url)) as h:
        assert h.agent.maintenance_state() == {"enabled": True, "since": 5.0, "reason": "kernel upgrade"}
        await h.agent.set_maintenance(True, "again")  # already on: nothing changes
        assert (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes()) == before
        await h.agent.set_maintenance(False, "done")
        assert json.loads(path.read_text()) == {
            "version": 1,
            "enabled": False,
            "since": None,
            "reason": "done",
        }
    async with agent_harness(node_config(fake_cp.url)) as h:
        assert h.agent.maintenance_state()["enabled"] is False


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["enabled"]', "expected a JSON object"),
        ('{"enabled": "yes", "reason": "x"}', "enabled"),
        ('{"enabled": true, "since": "yesterday"}', "since"),
        ('{"version": 2, "enabled": true, "since": 5.0, "reason": "x"}', "version 2"),
    ],
)
async def test_a_bad_maintenance_file_does_not_stop_the_start(
    fake_cp, agent_harness, tmp_path, content, problem
):
    """Maintenance starts off (the safe default); the file is kept aside for the operator."""
    from loguru import logger

    path = tmp_path / "state" / "maintenance.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        async with agent_harness(node_config(fake_cp.url)) as h:
            assert h.agent.maintenance_state()["enabled"] is False
            assert not path.exists()
            assert (tmp_path / "state" / "maintenance.json.bad").read_text() == content
            # Maintenance works as usual afterwards.
            await h.agent.set_maintenance(True, "x")
            assert json.loads(path.read_text())["enabled"] is True
    finally:
        logger.remove(sink)
    [warning] = [m for m in seen if "maintenance is off" in m]
    assert str(path) in warning and problem in warning and "maintenance.json.bad" in warning, warning


class Recorder(Backend):
    def __init__(self, name, log):
        self.name, self.log = name, log

    async def start(self):
        self.log.append(("start", self.name))

    async def aclose(self):
        self.log.append(("close", self.name))


class RecorderTunnel(Recorder, TunnelBackend):
    """A do-nothing tunnel backend (the core checks a backend implements its kind)."""

    async def ensure(self, spec):
        return False

    async def remove(self, name):
        return False

    async def list(self):
        return {}

    async def stats(self, name):
        raise KeyError(name)


async def test_graceful_shutdown_waits_for_running_task_then_closes_backends(fake_cp, agent_harness):
    log: list[tuple[str, str]] = []
    release = asyncio.Event()
    running = asyncio.Event()

    class Slow:
        def __init__(self, ctx):
            self.ctx = ctx

        async def run_once(self):
            running.set()
            await release.wait()
            log.append(("task-done", "slow"))
            return "done"

    class Plugin:
        @hookimpl
        def moenet_backends(self, config):
            return [
                BackendSpec(kind="alpha", name="one", factory=lambda ctx: Recorder("alpha", log)),
                BackendSpec(kind="beta", name="two", factory=lambda ctx: Recorder("beta", log)),
            ]

        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="slow", factory=Slow, interval=60, requires=("beta",))]

        @hookimpl
        def moenet_shutdown(self, agent):
            log.append(("shutdown-hook", "plugin"))

    h = agent_harness(node_config(fake_cp.url), plugins=[("p", Plugin())])
    agent = h.build()
    await agent.start()
    await running.wait()
    stopping = asyncio.create_task(agent.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # waits for the in-flight run
    release.set()
    await stopping
    assert log == [
        ("start", "alpha"),
        ("start", "beta"),
        ("task-done", "slow"),
        ("shutdown-hook", "plugin"),
        ("close", "beta"),
        ("close", "alpha"),
    ]


async def test_backend_selection(fake_cp, agent_harness):
    def spec(name, probe, priority=0):
        return BackendSpec(
            kind="tunnel",
            name=name,
            factory=lambda ctx: RecorderTunnel(name, []),
            probe=probe,
            priority=priority,
        )

    class Provider:
        @hookimpl
        def moenet_backends(self, config):
            return [spec("kernel", lambda: False, priority=10), spec("userspace", lambda: True)]

    async with agent_harness(node_config(fake_cp.url), plugins=[("wg", Provider())]) as h:
        assert h.agent.backend("tunnel").name == "userspace"  # auto: kernel probe fails here

    class Chooser:
        @hookimpl
        def moenet_select_backend(self, kind, candidates):
            return "kernel" if kind == "tunnel" else None

    async with agent_harness(node_config(fake_cp.url), plugins=[("wg", Provider()), ("c", Chooser())]) as h:
        assert h.agent.backend("tunnel").name == "kernel"

    # (``wireguard.backend`` is the wireguard plugin's moenet_select_backend: tests/component/test_wireguard_plugin.py)

    cfg = node_config(fake_cp.url, backends={"tunnel": "magic"})
    async with agent_harness(cfg, plugins=[("wg", Provider())]) as h:
        status = h.agent.status()
        with pytest.raises(
            Exception, match="unknown backend 'magic'; choose one of: auto, kernel, userspace"
        ):
            h.agent.backend("tunnel")
    assert status["backends"]["tunnel"]["ok"] is False


async def test_conflicting_tasks_refuse_to_start(fake_cp, agent_harness):
    class Dup:
        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="heartbeat", factory=lambda ctx: None, interval=5)]

    h = agent_harness(node_config(fake_cp.url), plugins=[("heartbeat", moenet_heartbeat), ("dup", Dup())])
    agent = h.build()
    with pytest.raises(PluginError, match="task 'heartbeat' is provided by both") as info:
        await agent.start()
    assert set(info.value.plugins) == {"heartbeat", "dup"}
    await agent.stop()


async def test_failing_plugin_is_isolated_and_agent_keeps_running(fake_cp, agent_harness):
    class Broken:
        @hookimpl
        def moenet_tasks(self, config):
            raise RuntimeError("plugin bug")

    class BadFactory:
        @hookimpl
        def moenet_tasks(self, config):
            def factory(ctx):
                raise OSError("cannot open socket")

            return [TaskSpec(name="bad", factory=factory, interval=5)]

    plugins = [("heartbeat", moenet_heartbeat), ("broken", Broken()), ("badfactory", BadFactory())]
    async with agent_harness(node_config(fake_cp.url), plugins=plugins) as h:
        await fake_cp.wait_for("heartbeat")
        status = h.agent.status()
    states = {p["name"]: (p["status"], p["error"]) for p in status["plugins"]}
    assert states["broken"] == ("failed", "moenet_tasks: RuntimeError: plugin bug")
    assert states["badfactory"][0] == "failed"
    assert status["tasksNotStarted"]["bad"] == "factory failed: OSError: cannot open socket"
    assert states["heartbeat"] == ("active", None)


async def test_plugin_section_structured_and_invalid_section_fails_only_that_plugin(fake_cp, agent_harness):
    @attrs.define
    class WebhookConfig:
        url: str
        retries: int = 3

    got = []

    class Webhook:
        @hookimpl
        def moenet_config_sections(self):
            return [ConfigSection(name="webhook", type=WebhookConfig)]

        @hookimpl
        def moenet_tasks(self, config):
            class T:
                def __init__(self, ctx):
                    got.append(ctx.section)

                async def run_once(self):
                    return None

            return [TaskSpec(name="hook", factory=T, interval=5)]

    cfg = node_config(fake_cp.url, webhook={"url": "http://127.0.0.1:9/x"}, stray={"a": 1})
    async with agent_harness(cfg, plugins=[("webhook", Webhook())]) as h:
        assert got == [WebhookConfig(url="http://127.0.0.1:9/x")]
        assert (
            "stray: unknown section (no active plugin declares it), ignored" in h.agent.status()["warnings"]
        )

    cfg = node_config(fake_cp.url, webhook={"retries": "x"})
    async with agent_harness(cfg, plugins=[("webhook", Webhook()), ("heartbeat", moenet_heartbeat)]) as h:
        rec = h.agent.pm.records["webhook"]
        assert rec.status == "failed"
        assert rec.error == 'config: webhook.url: required; webhook.retries: expected an integer, got "x"'
        assert [t["name"] for t in h.agent.status()["tasks"]] == ["heartbeat"]


async def test_plugin_routes_status_info_and_session_counts(fake_cp, agent_harness):
    from aiohttp import web

    async def hello(request, ctx):
        return web.json_response({"hello": request.match_info.get("who", "?"), "plugin": ctx.plugin})

    class P:
        @hookimpl
        def moenet_api_routes(self, config):
            return [RouteSpec(method="GET", path="/hello/{who}", handler=hello)]

        @hookimpl
        def moenet_status_info(self):
            return {"guard": "ok"}

        @hookimpl
        def moenet_features(self):
            return ["demo"]

    heard = []

    class Listener:
        @hookimpl
        def moenet_session_status_changed(self, event):
            heard.append((event.uuid, event.new, event.removed))

    async with agent_harness(
        node_config(fake_cp.url), plugins=[("demo", P()), ("l", Listener())], api=True
    ) as h:
        ctx = h.agent.context("demo")
        for uuid, st in (
            ("a", SessionStatus.ACTIVE),
            ("b", SessionStatus.ACTIVE),
            ("c", SessionStatus.ERROR),
        ):
            ctx.emit_session_status(
                SessionStatusEvent(uuid=uuid, name=uuid, asn=4242420001, old=None, new=st)
            )
        ctx.emit_session_status(
            SessionStatusEvent(
                uuid="c", name="c", asn=1, old=SessionStatus.ERROR, new=SessionStatus.DISABLED, removed=True
            )
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{api_url(h.agent)}/plugins/demo/hello/world") as resp:
                assert await resp.json() == {"hello": "world", "plugin": "demo"}
            async with http.get(f"{api_url(h.agent)}/status") as resp:
                status = await resp.json()
    assert status["sessions"] == {"ACTIVE": 2}
    assert heard[-1] == ("c", SessionStatus.DISABLED, True) and len(heard) == 4
    assert status["features"] == ["demo"]
    assert [p["info"] for p in status["plugins"] if p["name"] == "demo"] == [{"guard": "ok"}]
    assert h.agent.metrics.registry.get_sample_value("moenet_sessions", {"status": "ACTIVE"}) == 2
    assert h.agent.metrics.registry.get_sample_value("moenet_sessions", {"status": "ERROR"}) == 0


async def test_route_handler_finds_the_plugins_live_objects_through_its_context(fake_cp, agent_harness):
    """One context per (agent, plugin): the route's ctx is the task factory's, so
    ``ctx.task`` and ``ctx.stash`` reach the running objects (no module registries)."""
    from aiohttp import web

    class Counter:
        def __init__(self, ctx):
            self.runs = 0
            ctx.stash["counter"] = self

        async def run_once(self):
            self.runs += 1

    class Other:
        async def run_once(self):
            return None

    async def peek(request, ctx):
        task = ctx.task("countIt", Counter)
        return web.json_response(
            {
                "runs": task.runs if task is not None else None,
                "same": ctx.stash.get("counter") is task,
                "unknown": ctx.task("nope"),
                "foreign": ctx.task("otherTask"),
            }
        )

    class P:
        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="countIt", factory=Counter, interval=3600)]

        @hookimpl
        def moenet_api_routes(self, config):
            return [RouteSpec(method="GET", path="/peek", handler=peek)]

    class Q:
        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="otherTask", factory=lambda ctx: Other(), interval=3600, initial_delay=300)]

    async with agent_harness(node_config(fake_cp.url), plugins=[("demo", P()), ("q", Q())], api=True) as h:
        await h.agent.scheduler.run_now("countIt")
        ctx = h.agent.context("demo")
        assert ctx.stash is h.agent.context("demo").stash and ctx.stash is not h.agent.context("q").stash
        with pytest.raises(TypeError, match="not a Other"):
            ctx.task("countIt", Other)
        async with aiohttp.ClientSession() as http, http.get(f"{api_url(h.agent)}/plugins/demo/peek") as resp:
            body = await resp.json()
    assert body.pop("runs") >= 1
    assert body == {"same": True, "unknown": None, "foreign": None}


async def test_sync_triggers_on_sync_tasks_and_waits(fake_cp, agent_harness):
    runs = []

    class P:
        @hookimpl
        def moenet_tasks(self, config):
            class T:
                def __init__(self, ctx):
                    pass

                async def run_once(self):
                    runs.append(1)
                    return {"changed": 0}

            return [TaskSpec(name="sessionSync", factory=T, interval=60, initial_delay=30, on_sync=True)]

    clock = ManualClock()
    async with agent_harness(node_config(fake_cp.url), plugins=[("s", P())], clock=clock) as h:
        result = await h.agent.sync(None, wait=True)
        assert result["triggered"] == ["sessionSync"]
        assert result["results"]["sessionSync"]["ok"] is True
        with pytest.raises(KeyError):
            await h.agent.sync("nope", wait=False)
    assert runs == [1]


async def test_task_finished_broadcast(fake_cp, agent_harness):
    events = []

    class Obs:
        @hookimpl
        def moenet_task_finished(self, event):
            events.append(event)

    async with agent_harness(
        node_config(fake_cp.url), plugins=[("heartbeat", moenet_heartbeat), ("o", Obs())]
    ) as h:
        await h.agent.scheduler.run_now("heartbeat")
    assert events and events[-1].task == "heartbeat" and events[-1].ok and events[-1].plugin == "heartbeat"


# ------------------------------------------------------------- bootstrap


def bootstrap_file(tmp_path, cp_url):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "bootstrap": {"apiUrl": cp_url, "nodeName": "jp1", "token": TOKEN},
                "server": {"listen": "127.0.0.1:0"},
                "state": {"directory": str(tmp_path / "state")},
            }
        )
    )
    return path


REMOTE = {
    "node": {
        "id": 7,
        "name": "jp1",
        "region": "ap-east",
        "asn": 4242420998,
        "loopbackIpv4": "172.22.68.7",
        "loopbackIpv6": "fd00:4242:7777::7",
    },
    "bird": {"controlSocket": "/run/bird/bird.ctl"},
}


async def test_bootstrap_survives_cp_down_for_the_first_attempts(fake_cp, tmp_path):
    fake_cp.set("config", REMOTE)
    fake_cp.fail("config", times=6, status=503)
    path = bootstrap_file(tmp_path, fake_cp.url)
    clock = ManualClock()
    config, _ = await clock.drive(load_config(str(path), env={}, clock=clock))
    assert config.mode == "bootstrap"
    assert config.node.id == 7 and config.loopback_ipv4 == "172.22.68.7"
    assert config.control_plane.url == fake_cp.url and config.control_plane.token == TOKEN
    assert len(fake_cp.calls("config")) == 7
    assert all(r.authorized for r in fake_cp.calls("config"))
    # The good answer is cached for the next start.
    assert StateStore(tmp_path / "state").read_json(CACHE_FILE) == REMOTE


async def test_bootstrap_uses_cache_when_cp_is_down(fake_cp, tmp_path):
    StateStore(tmp_path / "state").write_json(CACHE_FILE, REMOTE)
    fake_cp.fail("config", times=100, status=502)
    clock = ManualClock()
    config, _ = await clock.drive(
        load_config(str(bootstrap_file(tmp_path, fake_cp.url)), env={}, clock=clock)
    )
    assert config.node.id == 7
    assert len(fake_cp.calls("config")) == 4  # one round of 1 + 3 retries, then the cache


async def test_bootstrap_retries_an_invalid_answer(fake_cp, tmp_path):
    fake_cp.set("config", {"node": {"id": "seven"}})
    clock = ManualClock()
    task = asyncio.ensure_future(
        clock.drive(load_config(str(bootstrap_file(tmp_path, fake_cp.url)), env={}, clock=clock))
    )
    await fake_cp.wait_for("config", 2)
    fake_cp.set("config", REMOTE)
    config, _ = await task
    assert config.node.id == 7


async def test_agent_from_bootstrap_sends_heartbeats(fake_cp, tmp_path):
    fake_cp.set("config", REMOTE)
    config, warnings = await load_config(str(bootstrap_file(tmp_path, fake_cp.url)), env={})
    h = AgentHarness({}, plugins=[("heartbeat", moenet_heartbeat)], state_dir=tmp_path / "state")
    from moenet_core.agent import Agent
    from moenet_core.plugins import AgentPluginManager

    pm = AgentPluginManager()
    pm.register_plugin(moenet_heartbeat, "heartbeat")
    agent = Agent(config, pm, config_warnings=warnings)
    await agent.start()
    try:
        [req] = await fake_cp.wait_for("heartbeat")
    finally:
        await agent.stop()
    assert req.node == "jp1" and req.authorized
    assert h is not None


async def test_standalone_file_source(tmp_path, agent_harness):
    data = tmp_path / "cp.json"
    data.write_text(json.dumps({"sessions": {"bgpSessions": []}}))
    cfg = {"node": {"name": "jp1"}, "controlPlane": {"source": "file", "file": str(data)}}
    async with agent_harness(cfg, plugins=[("heartbeat", moenet_heartbeat)]) as h:
        event = await h.agent.scheduler.run_now("heartbeat")
        assert event.ok, event.error
        assert await h.agent.cp.fetch("sessions") == {"bgpSessions": []}
        assert h.agent.status()["controlPlane"] == {"source": "file", "breaker": "closed"}
    sent = list((tmp_path / "state" / "standalone").iterdir())
    assert sent, "heartbeat recorded in the state directory"


async def test_reload_applies_new_task_interval(fake_cp, tmp_path):
    path = tmp_path / "config.json"
    raw = node_config(fake_cp.url, state={"directory": str(tmp_path / "state")})
    path.write_text(json.dumps(raw))
    config, _ = await load_config(str(path), env={})
    from moenet_core.agent import Agent
    from moenet_core.plugins import AgentPluginManager

    seen = []

    class Obs:
        @hookimpl
        def moenet_config_updated(self, old, new):
            seen.append((old.tasks.get("heartbeat"), new.tasks["heartbeat"].interval))

    pm = AgentPluginManager()
    pm.register_plugin(moenet_heartbeat, "heartbeat")
    pm.register_plugin(Obs(), "obs")
    agent = Agent(config, pm, api=False)
    await agent.start()
    try:
        raw["tasks"] = {"heartbeat": {"interval": 5}}
        path.write_text(json.dumps(raw))
        assert await agent.reload() is True
        [task] = agent.scheduler.status()
        assert task["interval"] == 5
        path.write_text("{broken")
        assert await agent.reload() is False  # the running config stays
        assert agent.config.tasks["heartbeat"].interval == 5
        raw["tasks"] = {"heartbeat": {"interval": 9}}
        raw["heartbeat"] = {"interfaces": "eth0"}  # an invalid plugin section refuses the whole reload
        path.write_text(json.dumps(raw))
        assert await agent.reload() is False
        assert agent.config.tasks["heartbeat"].interval == 5
        assert agent.pm.records["heartbeat"].status == "active"
    finally:
        await agent.stop()
    assert seen == [(None, 5)]


async def test_configure_hook_failure_isolates_the_plugin(fake_cp, agent_harness):
    seen = []

    class Checker:
        @hookimpl
        def moenet_configure(self, config):
            seen.append(config.node.name)

        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="checked", factory=lambda ctx: MeshKeyPublisher.Task(ctx), interval=60)]

    class Picky:
        @hookimpl
        def moenet_configure(self, config):
            raise ValueError("needs node.asn")

        @hookimpl
        def moenet_tasks(self, config):
            return [TaskSpec(name="picky", factory=lambda ctx: MeshKeyPublisher.Task(ctx), interval=60)]

    async with agent_harness(
        node_config(fake_cp.url), plugins=[("checker", Checker()), ("picky", Picky())]
    ) as h:
        names = [t["name"] for t in h.agent.status()["tasks"]]
        assert h.agent.pm.records["picky"].error == "moenet_configure: ValueError: needs node.asn"
    assert seen == ["jp1"]
    assert names == ["checked"]


async def test_restart_is_routed_to_the_owning_plugin(fake_cp, agent_harness):
    calls = []

    class Owner:
        @hookimpl
        def moenet_restart(self, interface):
            if not interface.startswith("dn42-"):
                return None

            async def action():
                calls.append(interface)
                return {"restarted": interface}

            return action

    cfg = node_config(fake_cp.url, server={"listen": "127.0.0.1:0", "token": API_TOKEN})
    async with agent_harness(cfg, plugins=[("sessions", Owner())], api=True) as h:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{api_url(h.agent)}/restart", json={"interface": "dn42-4242420001"}, headers=auth
            ) as resp:
                assert resp.status == 200
                assert await resp.json() == {"plugin": "sessions", "restarted": "dn42-4242420001"}
            async with http.post(
                f"{api_url(h.agent)}/restart", json={"interface": "eth0"}, headers=auth
            ) as resp:
                assert resp.status == 404
                assert (await resp.json())["code"] == "unknown_interface"
            async with http.post(
                f"{api_url(h.agent)}/restart", json={"interface": "dn42-x; reboot"}, headers=auth
            ) as resp:
                assert resp.status == 400
    assert calls == ["dn42-4242420001"]


async def test_sync_completed_event_from_a_task(fake_cp, agent_harness):
    from moenet_core import SyncEvent

    got = []

    class Reconciler:
        @hookimpl
        def moenet_tasks(self, config):
            class T:
                def __init__(self, ctx):
                    self.ctx = ctx

                async def run_once(self):
                    self.ctx.emit_sync_completed(SyncEvent(task="demoSync", ok=True, duration=0.1, changes=2))

            return [TaskSpec(name="demoSync", factory=T, interval=60)]

    class Listener:
        @hookimpl
        def moenet_sync_completed(self, event):
            got.append(event)

    async with agent_harness(node_config(fake_cp.url), plugins=[("r", Reconciler()), ("l", Listener())]) as h:
        await h.agent.scheduler.run_now("demoSync")
    assert got and got[-1].changes == 2 and got[-1].task == "demoSync"


async def test_startup_awaitable_is_awaited_and_failure_marks_plugin(fake_cp, agent_harness):
    order = []

    class Warm:
        @hookimpl
        def moenet_startup(self, agent):
            async def warm():
                order.append(("warm", agent.config.node.name))

            return warm()

    class Cold:
        @hookimpl
        async def moenet_startup(self, agent):
            raise RuntimeError("cache unavailable")

    async with agent_harness(node_config(fake_cp.url), plugins=[("warm", Warm()), ("cold", Cold())]) as h:
        assert order == [("warm", "jp1")]
        assert h.agent.pm.records["cold"].status == "failed"
        assert "cache unavailable" in h.agent.pm.records["cold"].error


async def test_backend_must_implement_its_kind(fake_cp, agent_harness):
    class Sloppy:
        @hookimpl
        def moenet_backends(self, config):
            return [BackendSpec(kind="tunnel", name="fake", factory=lambda ctx: Recorder("x", []))]

    async with agent_harness(node_config(fake_cp.url), plugins=[("sloppy", Sloppy())]) as h:
        backends = h.agent.status()["backends"]
    assert backends["tunnel"]["ok"] is False
    assert "does not implement TunnelBackend" in backends["tunnel"]["error"]


async def test_status_lists_what_each_plugin_provides(fake_cp, agent_harness):
    class Provider:
        @hookimpl
        def moenet_backends(self, config):
            return [
                BackendSpec(kind="tunnel", name="a", factory=lambda ctx: RecorderTunnel("a", [])),
                BackendSpec(kind="tunnel", name="b", factory=lambda ctx: RecorderTunnel("b", [])),
            ]

        @hookimpl
        def moenet_tasks(self, config):
            return [
                TaskSpec(name="needsRouting", factory=lambda ctx: None, interval=60, requires=["routing"])
            ]

        @hookimpl
        def moenet_features(self):
            return ["provider"]

    cfg = node_config(fake_cp.url, backends={"tunnel": "b"})
    async with agent_harness(cfg, plugins=[("p", Provider())]) as h:
        status = h.agent.status()
    [p] = status["plugins"]
    # Provided, whether chosen or started; what runs is in "backends" and "tasks".
    assert p["backends"] == ["tunnel:a", "tunnel:b"] and p["tasks"] == ["needsRouting"]
    assert p["features"] == ["provider"] and p["info"] is None
    assert status["backends"]["tunnel"]["name"] == "b"
    assert "needsRouting" in status["tasksNotStarted"] and status["tasks"] == []
