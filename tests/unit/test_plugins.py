"""The plugin manager: discovery from entry points, blocking, isolation, conflicts."""

from __future__ import annotations

import sys

import pytest
from helpers.plugins import write_dist

from moenet_core import BackendSpec, TaskSpec, hookimpl
from moenet_core.errors import PluginError
from moenet_core.plugins import AgentPluginManager

GOOD = """
    from moenet_core import hookimpl, TaskSpec

    class T:
        async def run_once(self):
            return None

    @hookimpl
    def moenet_tasks(config):
        return [TaskSpec(name="goodTask", factory=lambda ctx: T(), interval=10)]
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[mod]


def test_entry_point_discovery_records_distribution(site):
    write_dist(site, "moenet-good", "1.2.3", {"good": "fake_good"}, {"fake_good": GOOD})
    pm = AgentPluginManager()
    pm.load_entrypoints()
    rec = pm.records["good"]
    assert (rec.status, rec.distribution, rec.version, rec.module) == (
        "active",
        "moenet-good",
        "1.2.3",
        "fake_good",
    )
    assert rec.hooks == ["moenet_tasks"]
    assert pm.get_plugin("good") is sys.modules["fake_good"]


def test_blocked_plugin_is_never_imported(site):
    write_dist(
        site, "moenet-bomb", "0.1", {"bomb": "fake_bomb"}, {"fake_bomb": "raise SystemExit('imported!')"}
    )
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=["bomb"])
    assert pm.records["bomb"].status == "blocked"
    assert pm.records["bomb"].error == "disabled by configuration"
    assert "fake_bomb" not in sys.modules


def test_allow_list_blocks_everything_else(site):
    write_dist(site, "moenet-good", "1", {"good": "fake_good"}, {"fake_good": GOOD})
    write_dist(site, "moenet-other", "1", {"other": "fake_other"}, {"fake_other": "X = 1"})
    pm = AgentPluginManager()
    pm.load_entrypoints(enabled=["good"])
    assert pm.records["good"].status == "active"
    assert pm.records["other"].status == "blocked"
    assert pm.records["other"].error == "not in plugins.enable"
    assert "fake_other" not in sys.modules


def test_import_failure_is_isolated(site):
    write_dist(
        site, "moenet-broken", "0.1", {"broken": "fake_broken"}, {"fake_broken": "import does_not_exist_xyz"}
    )
    write_dist(site, "moenet-good", "1", {"good": "fake_good"}, {"fake_good": GOOD})
    pm = AgentPluginManager()
    pm.load_entrypoints()
    assert pm.records["broken"].status == "failed"
    assert (
        pm.records["broken"].error
        == "import failed: ModuleNotFoundError: No module named 'does_not_exist_xyz'"
    )
    assert pm.records["good"].status == "active"


def test_plugin_implementing_unknown_hook_is_incompatible(site):
    src = """
        from moenet_core import hookimpl
        @hookimpl
        def moenet_from_the_future(x):
            return 1
    """
    write_dist(site, "moenet-future", "9", {"future": "fake_future"}, {"fake_future": src})
    pm = AgentPluginManager()
    pm.load_entrypoints()
    assert pm.records["future"].status == "incompatible"
    assert pm.records["future"].error == "implements unknown hooks: moenet_from_the_future"
    assert pm.get_plugin("future") is None


def test_plugin_with_wrong_hook_arguments_is_incompatible():
    class Wrong:
        @hookimpl
        def moenet_tasks(self, config, nonsense):
            return []

    pm = AgentPluginManager()
    rec = pm.register_plugin(Wrong(), "wrong")
    assert rec.status == "incompatible"
    assert "nonsense" in rec.error


def test_optional_hook_of_another_plugin_is_fine():
    class Plugin:
        @hookimpl(optionalhook=True)
        def moenet_bird_snippets(self):
            return []

    pm = AgentPluginManager()
    assert pm.register_plugin(Plugin(), "p").status == "active"


def test_addhooks_lets_a_plugin_declare_hooks_for_others():
    import types

    from moenet_core import hookspec

    specs = types.SimpleNamespace()

    @hookspec
    def moenet_extra_thing(value):
        """A hook declared by a plugin."""

    specs.moenet_extra_thing = moenet_extra_thing

    class Declarer:
        @hookimpl
        def moenet_addhooks(self, pluginmanager):
            pluginmanager.add_hookspecs(specs)

    class User:
        @hookimpl
        def moenet_extra_thing(self, value):
            return value * 2

    pm = AgentPluginManager()
    pm.register_plugin(Declarer(), "declarer")
    assert pm.register_plugin(User(), "user").status == "active"
    assert pm.collect("moenet_extra_thing", value=21) == [("user", 42)]


def test_collect_isolates_a_raising_plugin():
    class Bad:
        @hookimpl
        def moenet_features(self):
            raise RuntimeError("boom")

    class Good:
        @hookimpl
        def moenet_features(self):
            return ["mesh"]

    pm = AgentPluginManager()
    pm.register_plugin(Bad(), "bad")
    pm.register_plugin(Good(), "good")
    assert pm.collect("moenet_features") == [("good", ["mesh"])]
    assert pm.records["bad"].status == "failed"
    assert pm.records["bad"].error == "moenet_features: RuntimeError: boom"
    # A failed plugin's hooks are not called any more.
    assert pm.collect("moenet_features") == [("good", ["mesh"])]


def test_broadcast_errors_are_counted_not_fatal():
    class Flaky:
        @hookimpl
        def moenet_sync_completed(self, event):
            raise ValueError("observer bug")

    pm = AgentPluginManager()
    pm.register_plugin(Flaky(), "flaky")
    pm.broadcast("moenet_sync_completed", event=object())
    rec = pm.records["flaky"]
    assert rec.status == "active"
    assert rec.runtime_errors == 1
    assert rec.last_runtime_error == "moenet_sync_completed: ValueError: observer bug"


def test_async_hook_is_rejected_naming_the_plugin():
    class AsyncPlugin:
        @hookimpl
        async def moenet_tasks(self, config):
            return []

    pm = AgentPluginManager()
    pm.register_plugin(AsyncPlugin(), "asyncy")
    assert pm.collect("moenet_tasks", config=None) == []
    rec = pm.records["asyncy"]
    assert rec.status == "failed"
    assert "plugin 'asyncy': hook moenet_tasks returned an awaitable" in rec.error


def test_startup_may_return_an_awaitable():
    class Starter:
        @hookimpl
        async def moenet_startup(self, agent):
            return None

    pm = AgentPluginManager()
    pm.register_plugin(Starter(), "starter")
    [(name, result)] = pm.collect("moenet_startup", agent=None)
    assert name == "starter"
    result.close()
    assert pm.records["starter"].status == "active"


def _task(name):
    return TaskSpec(name=name, factory=lambda ctx: None, interval=1)


def test_duplicate_task_names_are_an_error_naming_both():
    class A:
        @hookimpl
        def moenet_tasks(self, config):
            return [_task("sync")]

    class B:
        @hookimpl
        def moenet_tasks(self, config):
            return [_task("sync")]

    pm = AgentPluginManager()
    pm.register_plugin(A(), "alpha")
    pm.register_plugin(B(), "beta")
    with pytest.raises(PluginError) as info:
        pm.collect_descriptors(
            "moenet_tasks", TaskSpec, key=lambda s: s.name, describe=lambda k: f"task {k!r}", config=None
        )
    assert "task 'sync' is provided by both" in str(info.value)
    assert set(info.value.plugins) == {"alpha", "beta"}


def test_duplicate_backends_conflict_and_descriptors_are_stamped():
    def spec(kind, name):
        return BackendSpec(kind=kind, name=name, factory=lambda ctx: None)

    class A:
        @hookimpl
        def moenet_backends(self, config):
            return [spec("Tunnel", "Kernel")]

    class B:
        @hookimpl
        def moenet_backends(self, config):
            return [spec("tunnel", "kernel"), spec("firewall", "nftables")]

    pm = AgentPluginManager()
    pm.register_plugin(A(), "a")
    found = pm.collect_descriptors(
        "moenet_backends", BackendSpec, key=lambda s: (s.kind, s.name), describe=str, config=None
    )
    assert found[("tunnel", "kernel")].plugin == "a"  # names normalised, provenance stamped
    pm.register_plugin(B(), "b")
    with pytest.raises(PluginError, match="provided by both"):
        pm.collect_descriptors(
            "moenet_backends", BackendSpec, key=lambda s: (s.kind, s.name), describe=str, config=None
        )


def test_wrong_descriptor_type_fails_the_plugin():
    class Sloppy:
        @hookimpl
        def moenet_tasks(self, config):
            return [{"name": "x"}]

    pm = AgentPluginManager()
    pm.register_plugin(Sloppy(), "sloppy")
    assert (
        pm.collect_descriptors("moenet_tasks", TaskSpec, key=lambda s: s.name, describe=str, config=None)
        == {}
    )
    assert pm.records["sloppy"].status == "failed"
    assert "expected TaskSpec items, got dict" in pm.records["sloppy"].error


def test_call_order_is_lifo_and_first_result_isolated():
    class Early:
        @hookimpl(trylast=True)
        def moenet_select_backend(self, kind, candidates, config):
            return "default"

    class Late:
        @hookimpl
        def moenet_select_backend(self, kind, candidates, config):
            return None

    class Broken:
        @hookimpl
        def moenet_select_backend(self, kind, candidates, config):
            raise RuntimeError("x")

    pm = AgentPluginManager()
    pm.register_plugin(Early(), "early")
    pm.register_plugin(Late(), "late")
    pm.register_plugin(Broken(), "broken")
    assert pm.first_result("moenet_select_backend", kind="tunnel", candidates={}, config=None) == (
        "early",
        "default",
    )
    assert pm.records["broken"].runtime_errors == 1


def test_runtime_objects_belong_to_their_plugin():
    class Publisher:
        @hookimpl
        def moenet_heartbeat_fields(self):
            return {"meshPublicKey": "abc"}

    pm = AgentPluginManager()
    pm.register_plugin(object(), "mesh")
    reg = pm.register_runtime("mesh", Publisher())
    assert pm.collect("moenet_heartbeat_fields", setup=False) == [("mesh", {"meshPublicKey": "abc"})]
    pm.unregister_runtime(reg)
    assert pm.collect("moenet_heartbeat_fields", setup=False) == []


def test_blocked_explicit_registration():
    pm = AgentPluginManager()
    pm.set_blocked("heartbeat")
    rec = pm.register_plugin(object(), "heartbeat")
    assert rec.status == "blocked"
    assert pm.get_plugin("heartbeat") is None


def test_describe_plugin_is_the_listing_shape():
    from moenet_core.plugins import DESCRIPTION_KEYS, PluginRecord, describe_plugin

    record = PluginRecord(
        name="p",
        distribution="moenet-p",
        version="1.0",
        module="moenet_p",
        hooks=["moenet_tasks", "moenet_backends"],
        tasks=["b", "a", "a"],
        backends=["tunnel:x"],
        sections=["p"],
    )
    out = describe_plugin(record, features=["z", "y"], info={"k": 1})
    assert tuple(out) == DESCRIPTION_KEYS
    assert out["hooks"] == ["moenet_backends", "moenet_tasks"]
    assert out["tasks"] == ["a", "b"] and out["features"] == ["y", "z"] and out["info"] == {"k": 1}
    assert describe_plugin(record)["info"] is None and describe_plugin(record)["features"] == []


def test_listing_attributes_features_and_info_to_each_plugin():
    class A:
        @hookimpl
        def moenet_features(self):
            return ["mesh"]

    class B:
        @hookimpl
        def moenet_features(self):
            return ["rtt", "tiers"]

    class Late:
        @hookimpl
        def moenet_features(self):
            return ["late"]

    class Broken:
        @hookimpl
        def moenet_features(self):
            return 5  # not iterable: recorded against the plugin, the others still count

    pm = AgentPluginManager()
    pm.register_plugin(A(), "a")
    pm.register_plugin(B(), "b")
    pm.register_plugin(Broken(), "broken")
    pm.register_runtime("a", Late())  # a run-time object's features belong to its plugin
    listing = {p["name"]: p for p in pm.listing(info={"b": {"ok": True}})}
    assert listing["a"]["features"] == ["late", "mesh"]
    assert listing["b"]["features"] == ["rtt", "tiers"] and listing["b"]["info"] == {"ok": True}
    assert listing["a"]["info"] is None
    assert listing["broken"]["features"] == [] and listing["broken"]["runtimeErrors"] == 1
    assert listing["broken"]["status"] == "active"
