"""The metrics a running agent exports: promtool accepts them, docs/metrics.md lists them.

One agent runs with every built-in plugin (from this distribution's entry
points) and its local API on a free port; ``/metrics`` is scraped over HTTP.
Backends are do-nothing fakes chosen through ``backends.<kind>``, so every task
is built (and creates its metrics) without touching the host; the real backends
of the built-in plugins are then constructed too (not started), which registers
their metrics on the same registry, exactly as when the agent selects them.
``autoUpdate`` is on so the updater's task exists.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from moenet_core import (
    ApplyResult,
    BackendSpec,
    FirewallBackend,
    LoopbackBackend,
    RoutingBackend,
    TunnelBackend,
    hookimpl,
)
from moenet_core.testing import AgentHarness, ManualClock

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"
KINDS = ("tunnel", "firewall", "loopback", "routing")


class _Tunnel(TunnelBackend):
    async def ensure(self, spec):
        return False

    async def remove(self, name, *, owner=None):
        return False

    async def list(self, owner=None):
        return {}

    async def stats(self, name):
        raise KeyError(name)


class _Firewall(FirewallBackend):
    async def sync(self, ports, *, owner="sessions"):
        return False

    async def list_ports(self, owner=None):
        return frozenset()


class _Loopback(LoopbackBackend):
    async def ensure(self, addresses):
        return False

    async def addresses(self):
        return ()


class _Routing(RoutingBackend):
    async def declare(self, owner, fragments):
        return ApplyResult(ok=True, changed=False)

    async def protocols(self):
        return ()


class FakeBackends:
    """A test plugin: one do-nothing backend named ``fake`` per built-in kind."""

    @hookimpl
    def moenet_backends(self, config):
        classes = {"tunnel": _Tunnel, "firewall": _Firewall, "loopback": _Loopback, "routing": _Routing}
        return [BackendSpec(kind=k, name="fake", factory=lambda ctx, c=c: c()) for k, c in classes.items()]


def builtin_plugins() -> list[tuple[str, object]]:
    dist = importlib.metadata.distribution("moenet-agent")
    return sorted((ep.name, ep.load()) for ep in dist.entry_points if ep.group == "moenet")


async def scrape(tmp: Path) -> str:
    (tmp / "cp.json").write_text(json.dumps({"sessions": [], "mesh": {"peers": []}, "bird-config": {}}))
    config = {
        "node": {"name": "metrics1", "id": 1},
        "controlPlane": {"source": "file", "file": str(tmp / "cp.json")},
        "server": {"listen": "127.0.0.1:0"},
        "backends": dict.fromkeys(KINDS, "fake"),
        "autoUpdate": {"enabled": True},
        "lg": {"enabled": True, "listen": "127.0.0.1:0"},
        "updater": {"publicKey": base64.b64encode(bytes(32)).decode(), "venvRoot": str(tmp / "venvs")},
    }
    harness = AgentHarness(
        config,
        plugins=[*builtin_plugins(), ("fakes", FakeBackends())],
        state_dir=tmp / "state",
        clock=ManualClock(),
        api=True,
    )
    async with harness:
        agent = harness.agent
        assert agent.status()["tasksNotStarted"] == {}, "every built-in task must be built"
        built: set[str] = set()
        for plugin, specs in agent.pm.collect("moenet_backends", config=agent.config):
            for spec in specs:
                if spec.name != "fake" and spec.kind not in built:
                    built.add(spec.kind)  # one per kind, as the agent selects one
                    spec.factory(agent.context(plugin))
        assert built == set(KINDS)
        host, port = agent.api.bound[0]
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory) -> str:
    return asyncio.run(scrape(tmp_path_factory.mktemp("live-metrics")))


def families(text: str) -> dict[str, str]:
    """Metric family -> type, from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def exported_names(text: str) -> set[str]:
    """The names an operator queries: every family except prometheus_client's ``*_created``."""
    return {n for n in families(text) if not n.endswith("_created")}


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(moenet_[a-z0-9_]+)` \|", METRICS_DOC.read_text(), re.MULTILINE))


def with_a_sample_each(text: str) -> str:
    """promtool lints only families that have samples: give every family without
    one a zero sample (no labels), so each name, type and help text is checked."""
    have = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE)}
    out = []
    for line in text.splitlines():
        out.append(line)
        m = re.match(r"^# TYPE (\S+) (\S+)$", line)
        if not m:
            continue
        name, kind = m.groups()
        if kind in ("histogram", "summary"):
            if not {f"{name}_count", f"{name}_sum"} & have:
                if kind == "histogram":
                    out.append(f'{name}_bucket{{le="+Inf"}} 0')
                out += [f"{name}_count 0", f"{name}_sum 0"]
        elif name not in have:
            out.append(f"{name} 0")
    return "\n".join(out) + "\n"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found (Debian package prometheus; scripts/install-system-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )


def test_live_metrics_cover_every_plugin(live_metrics):
    names = exported_names(live_metrics)
    for prefix in ("agent", "cp", "task", "sessions", "rtt", "bird", "mesh", "ibgp", "wireguard", "nftables"):
        assert any(n.startswith(f"moenet_{prefix}_") for n in names), prefix
    assert "moenet_updater_pending" in names and "moenet_sessions" in names


def test_promtool_accepts_the_live_metrics(live_metrics):
    filled = with_a_sample_each(live_metrics)
    assert set(families(filled)) == set(families(live_metrics))
    for text in (live_metrics, filled):
        res = check_metrics(text)
        problems = (res.stdout + res.stderr).strip()
        assert res.returncode == 0 and not problems, f"promtool check metrics:\n{problems}"


def test_promtool_catches_a_bad_name():
    """The check above is live: promtool does report what it should."""
    res = check_metrics("# HELP bad_milliseconds x\n# TYPE bad_milliseconds counter\nbad_milliseconds 1\n")
    assert res.returncode != 0 and "_total" in res.stdout + res.stderr


def test_every_exported_metric_is_documented(live_metrics):
    missing = sorted(exported_names(live_metrics) - documented_names())
    assert not missing, f"add to docs/metrics.md: {missing}"


def test_every_documented_metric_is_exported(live_metrics):
    phantom = sorted(documented_names() - exported_names(live_metrics))
    assert not phantom, f"docs/metrics.md lists metrics the agent does not export: {phantom}"


def test_documented_types_match(live_metrics):
    types = families(live_metrics)
    rows = re.findall(r"^\| `(moenet_[a-z0-9_]+)` \| (\w+) \|", METRICS_DOC.read_text(), re.MULTILINE)
    wrong = [(n, t, types.get(n)) for n, t in rows if types.get(n) != t]
    assert not wrong, f"(name, documented type, exported type): {wrong}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every panel expression parses (promtool checks them as recording rules)."""
    from helpers.docs import dashboard_exprs

    exprs = dashboard_exprs()
    assert exprs
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-rules.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
