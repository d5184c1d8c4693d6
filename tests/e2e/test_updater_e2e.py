"""The updater end to end: a real agent core, a local release server, real wheels and venvs.

A release server on 127.0.0.1 (aiohttp) serves a GitHub-style releases feed and
the artefacts; wheels of a fake ``moenet-agent`` (and of a dependency it pins by
hash) are built in the test as real wheel files, and signed with
``scripts/sign-release``. The venv root is a temporary directory laid out as in
production (``versions/0.1.0`` with ``current`` pointing at it); the restart
command is a script that records its calls. "Processes" are agent harnesses
sharing one state directory: the old version updates, a new harness plays the
restarted agent (its running version and prefix are injected). Time only moves
through a :class:`ManualClock`. Nothing leaves 127.0.0.1: pip runs with
``--no-index``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import moenet_updater
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers.release import sign_release
from moenet_updater.install import MARKER, Layout, switch_link
from moenet_updater.state import STATE_FILE, Pending, UpdaterState
from moenet_updater.task import Updater

from moenet_core import TaskSpec, hookimpl
from moenet_core.testing import AgentHarness, ManualClock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "0.1.0", "0.2.0"
START = ManualClock().time()


# ------------------------------------------------------------------- wheels


def build_wheel(
    out: Path,
    name: str,
    version: str,
    files: dict[str, str],
    *,
    scripts: dict[str, str] | None = None,
    requires: tuple[str, ...] = (),
) -> Path:
    """A real (pure Python) wheel, written by hand: pip installs it like any other."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = "".join(
        [
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    entries[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if scripts:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items()
        )
    record = []
    for path, text in entries.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}\n")
    entries[f"{info}/RECORD"] = "".join(record) + f"{info}/RECORD,,\n"
    whl = out / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return whl


FAKE_AGENT = """\
import sys

def main():
    if sys.argv[1:2] == ["version"]:
        print("moenet-agent {version}")
        print("hook API 1")
    return 0
"""


def agent_wheel(out: Path, version: str, *, prints: str | None = None) -> Path:
    """A fake moenet-agent release whose ``moenet-agent version`` prints ``prints``."""
    return build_wheel(
        out,
        "moenet-agent",
        version,
        {"fake_moenet_agent/__init__.py": FAKE_AGENT.format(version=prints or version)},
        scripts={"moenet-agent": "fake_moenet_agent:main"},
        requires=("moenet-fake-dep==1.0",),
    )


# ----------------------------------------------------------- release server


class ReleaseServer:
    """GitHub's releases API, in miniature: ``GET /releases`` and ``/assets/<tag>/<name>``."""

    def __init__(self) -> None:
        self.releases: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.server: TestServer | None = None

    def add(self, tag: str, directory: Path, *, skip: tuple[str, ...] = (), prerelease: bool = False) -> None:
        names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in skip)
        for name in names:
            self.files[f"/assets/{tag}/{name}"] = (directory / name).read_bytes()
        self.releases.insert(
            0,
            {
                "tag_name": tag,
                "prerelease": prerelease,
                "draft": False,
                "assets": [f"/assets/{tag}/{n}" for n in names],
            },
        )

    async def _feed(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        base = str(request.url.origin())
        feed = [
            {
                **r,
                "assets": [
                    {"name": a.rsplit("/", 1)[1], "browser_download_url": base + a} for a in r["assets"]
                ],
            }
            for r in self.releases
        ]
        return web.json_response(feed)

    async def _asset(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        data = self.files.get(request.path)
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/releases", self._feed)
        app.router.add_get("/assets/{tag}/{name}", self._asset)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/releases"))

    def downloads(self) -> list[str]:
        return [p for p in self.requests if p.startswith("/assets/")]


@pytest.fixture
async def server() -> AsyncIterator[ReleaseServer]:
    srv = ReleaseServer()
    await srv.start()
    yield srv
    assert srv.server is not None
    await srv.server.close()


# ------------------------------------------------------------------ plugins


class UpdaterAs:
    """The real updater plugin, its task built as if running ``version`` from ``prefix``."""

    def __init__(self, version: str, prefix: Path) -> None:
        self.version = version
        self.prefix = prefix
        self.task: Updater | None = None

    @hookimpl
    def moenet_config_sections(self) -> Any:
        return moenet_updater.moenet_config_sections()

    @hookimpl
    def moenet_configure(self, config: Any) -> None:
        moenet_updater.moenet_configure(config)

    @hookimpl
    def moenet_tasks(self, config: Any) -> list[TaskSpec]:
        return [attrs.evolve(s, factory=self.build) for s in moenet_updater.moenet_tasks(config)]

    def build(self, ctx: Any) -> Updater:
        self.task = Updater(ctx, running_version=self.version, running_prefix=self.prefix)
        return self.task


class FakeSync:
    """A ``sessionSync`` that succeeds or fails as told: the health signal."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    @hookimpl
    def moenet_tasks(self, config: Any) -> list[TaskSpec]:
        return [TaskSpec(name="sessionSync", factory=lambda ctx: self, interval=60, on_sync=True)]

    async def run_once(self) -> dict[str, bool]:
        if not self.ok:
            raise RuntimeError("sync broken in this version")
        return {"ok": True}


# ------------------------------------------------------------------ fixture


@attrs.define
class Node:
    tmp: Path
    server: ReleaseServer
    public_key: str
    keyfile: Path
    layout: Layout
    restart_log: Path
    restart_command: list[str]
    deps: Path

    @property
    def state_file(self) -> Path:
        return self.tmp / "state" / "plugins" / "updater" / STATE_FILE

    def state(self) -> UpdaterState:
        return UpdaterState.from_json(json.loads(self.state_file.read_text()))

    def restarts(self) -> list[list[str]]:
        if not self.restart_log.exists():
            return []
        return [json.loads(line) for line in self.restart_log.read_text().splitlines()]

    def config(self, **updater: Any) -> dict[str, Any]:
        return {
            "node": {"name": "n1"},
            "controlPlane": {"source": "file", "file": str(self.tmp / "cp.json")},
            "autoUpdate": {"enabled": True, "checkInterval": 60, "channel": "stable"},
            "updater": {
                "publicKey": self.public_key,
                "feedUrl": self.server.url,
                "venvRoot": str(self.layout.root),
                "restartCommand": self.restart_command,
                "pipArgs": ["--no-index", "--find-links", str(self.deps)],
                "healthTimeout": 300,
                **updater,
            },
        }

    def agent(
        self, version: str, *, sync_ok: bool = True, clock: ManualClock | None = None, **updater: Any
    ) -> tuple[AgentHarness, UpdaterAs]:
        plugin = UpdaterAs(version, self.layout.version_dir(version))
        harness = AgentHarness(
            self.config(**updater),
            plugins=[("updater", plugin), ("fake", FakeSync(sync_ok))],
            state_dir=self.tmp / "state",
            clock=clock or ManualClock(),
            env={},
        )
        return harness, plugin

    def release(
        self, version: str, *, prints: str | None = None, key: Path | None = None, lock: str | None = None
    ) -> Path:
        """A signed release directory: the wheel, requirements.txt (hash-pinned, or
        ``lock``), SHA256SUMS(.sig)."""
        out = self.tmp / f"release-{version}-{len(list(self.tmp.glob('release-*')))}"
        out.mkdir()
        agent_wheel(out, version, prints=prints)
        dep = self.deps / "moenet_fake_dep-1.0-py3-none-any.whl"
        digest = hashlib.sha256(dep.read_bytes()).hexdigest()
        (out / "requirements.txt").write_text(
            lock if lock is not None else f"moenet-fake-dep==1.0 --hash=sha256:{digest}\n"
        )
        sign_release("--key", key or self.keyfile, out)
        return out

    def links(self) -> tuple[str, str | None]:
        current = self.layout.target(self.layout.current)
        previous = self.layout.target(self.layout.previous)
        assert current is not None
        return current.name, previous.name if previous else None

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.layout.versions.iterdir())

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.layout.root.iterdir() if p.name.startswith("."))


@pytest.fixture
async def node(tmp_path: Path, server: ReleaseServer) -> Node:
    keyfile = tmp_path / "release.pem"
    public = sign_release("--generate-key", keyfile)
    layout = Layout(tmp_path / "opt")
    layout.version_dir(OLD).mkdir(parents=True)
    switch_link(layout.current, layout.version_dir(OLD))
    deps = tmp_path / "deps"
    deps.mkdir()
    build_wheel(deps, "moenet-fake-dep", "1.0", {"moenet_fake_dep/__init__.py": "VALUE = 42\n"})
    recorder = tmp_path / "restart.py"
    log = tmp_path / "restarts.log"
    recorder.write_text(
        "import json, sys\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    return Node(
        tmp=tmp_path,
        server=server,
        public_key=public,
        keyfile=keyfile,
        layout=layout,
        restart_log=log,
        restart_command=[sys.executable, str(recorder), "restart", "moenet-agent"],
        deps=deps,
    )


def sign_by_hand(keyfile: Path, directory: Path) -> None:
    """SHA256SUMS(.sig) for every file in ``directory``, without sign-release's checks."""
    key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    names = sorted(p.name for p in directory.iterdir() if p.name not in ("SHA256SUMS", "SHA256SUMS.sig"))
    sums = "".join(f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    (directory / "SHA256SUMS").write_text(sums)
    (directory / "SHA256SUMS.sig").write_bytes(base64.b64encode(key.sign(sums.encode())))


async def settle(task: asyncio.Task[None] | None) -> None:
    assert task is not None, "no health watch was started"
    await asyncio.wait_for(task, 60)  # a bound for the real subprocesses, not a synchronisation


def pending_state(node: Node, *, deadline: float, tasks: tuple[str, ...] = ("sessionSync",)) -> None:
    """What the old version leaves behind after switching to NEW (its venv faked)."""
    node.layout.version_dir(NEW).mkdir(parents=True)
    switch_link(node.layout.current, node.layout.version_dir(NEW))
    switch_link(node.layout.previous, node.layout.version_dir(OLD))
    state = UpdaterState(
        pending=Pending(
            version=NEW,
            previous=str(node.layout.version_dir(OLD).resolve()),
            target=str(node.layout.version_dir(NEW).resolve()),
            switched_at=START,
            deadline=deadline,
            health_tasks=list(tasks),
        )
    )
    node.state_file.parent.mkdir(parents=True, exist_ok=True)
    node.state_file.write_text(json.dumps(state.to_json()))


# -------------------------------------------------------------------- tests


async def test_a_good_update_is_verified_installed_switched_restarted_and_proves_healthy(node):
    node.server.add(f"v{NEW}", node.release(NEW))
    harness, plugin = node.agent(OLD)
    async with harness as h:
        assert (await h.agent.scheduler.run_now("sessionSync")).ok
        event = await h.agent.scheduler.run_now("updater")
        info = dict(h.agent.pm.collect("moenet_status_info", setup=False))["updater"]
    assert event.ok, event.error
    assert event.result == {"updated": NEW, "from": OLD, "restarting": True}

    # Installed into its own venv, with the hash-pinned dependency, and runnable.
    venv = node.layout.version_dir(NEW)
    out = subprocess.run([str(venv / "bin" / "moenet-agent"), "version"], capture_output=True, text=True)
    assert out.stdout.splitlines()[0] == f"moenet-agent {NEW}"
    dep = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import moenet_fake_dep; print(moenet_fake_dep.VALUE)"],
        capture_output=True,
        text=True,
    )
    assert dep.stdout.strip() == "42"
    assert (venv / MARKER).is_file()
    assert node.links() == (NEW, OLD)
    assert node.restarts() == [["restart", "moenet-agent"]]
    assert node.leftovers() == []  # no download directory, no temporary link
    pending = node.state().pending
    assert pending is not None and pending.version == NEW and pending.health_tasks == ["sessionSync"]
    assert pending.previous == str(node.layout.version_dir(OLD).resolve())
    assert pending.deadline == pending.switched_at + 300
    assert info["pending"]["version"] == NEW and info["runningVersion"] == OLD
    assert info["lastResult"].startswith(f"switched to {NEW}")

    # The restarted agent (now NEW) runs its first sync fine: healthy, pending cleared.
    harness, plugin = node.agent(NEW)
    async with harness as h:
        await settle(plugin.task and plugin.task.watch)
        info = dict(h.agent.pm.collect("moenet_status_info", setup=False))["updater"]
    state = node.state()
    assert state.pending is None and state.bad == {}
    assert state.last_update is not None and (state.last_update["from"], state.last_update["to"]) == (
        OLD,
        NEW,
    )
    assert "healthy" in (state.last_result or "")
    assert info["pending"] is None and info["lastUpdate"]["to"] == NEW
    assert node.links() == (NEW, OLD)
    assert node.restarts() == [["restart", "moenet-agent"]]  # no second restart


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("checksum", "checksum mismatch for moenet_agent-0.2.0-py3-none-any.whl"),
        ("signature", "bad signature"),
        ("unsigned", "unsigned (no SHA256SUMS.sig asset)"),
        ("no-wheel-line", "the signed SHA256SUMS has no line for moenet_agent-0.2.0-py3-none-any.whl"),
        ("no-lock", "the signed SHA256SUMS has no line for requirements.txt"),
        ("lock-not-pinned", "the signed requirements.txt is not a lock file"),
        ("lock-altered", "checksum mismatch for requirements.txt"),
    ],
)
async def test_a_release_that_fails_verification_is_refused_and_nothing_changes(node, case, error):
    release = node.release(NEW)
    wheel = release / f"moenet_agent-{NEW}-py3-none-any.whl"
    if case == "checksum":
        wheel.write_bytes(wheel.read_bytes() + b"\0")  # served altered after signing
    elif case == "signature":
        other = node.tmp / "other.pem"
        sign_release("--generate-key", other)
        sign_release("--key", other, release)
    elif case == "no-wheel-line":
        sums = release / "SHA256SUMS"
        sums.write_text(
            "".join(line + "\n" for line in sums.read_text().splitlines() if "moenet_agent" not in line)
        )
        wheel.rename(node.tmp / wheel.name)  # signed again without it,
        sign_release("--key", node.keyfile, release)
        (node.tmp / wheel.name).rename(wheel)  # but still offered
    elif case == "no-lock":
        (release / "requirements.txt").unlink()  # sign-release refuses this: signed by hand
        sign_by_hand(node.keyfile, release)
    elif case == "lock-not-pinned":
        (release / "requirements.txt").write_text("moenet-fake-dep>=1.0\n")
        sign_by_hand(node.keyfile, release)
    elif case == "lock-altered":
        lock = release / "requirements.txt"
        lock.write_text(lock.read_text() + "moenet-evil==6.6.6 --hash=sha256:" + "0" * 64 + "\n")
    node.server.add(f"v{NEW}", release, skip=("SHA256SUMS.sig",) if case == "unsigned" else ())

    harness, _ = node.agent(OLD)
    async with harness as h:
        assert (await h.agent.scheduler.run_now("sessionSync")).ok
        event = await h.agent.scheduler.run_now("updater")
    assert not event.ok
    assert event.error is not None and error in event.error and "refused release 0.2.0" in event.error
    assert node.versions() == [OLD]  # no new venv
    assert node.links() == (OLD, None)  # link unchanged
    assert node.restarts() == []
    assert node.leftovers() == []
    state = node.state()
    assert state.pending is None and state.bad == {}
    assert (state.last_result or "").startswith("refused 0.2.0")
    if case in ("signature", "no-wheel-line", "unsigned", "no-lock", "lock-not-pinned", "lock-altered"):
        # Refused before the wheel was even downloaded.
        assert not any(p.endswith(".whl") for p in node.server.downloads())


async def test_a_version_unhealthy_by_the_deadline_is_rolled_back_and_then_skipped(node):
    pending_state(node, deadline=START + 300)
    clock = ManualClock()
    harness, plugin = node.agent(NEW, sync_ok=False, clock=clock)
    async with harness as h:
        assert not (await h.agent.scheduler.run_now("sessionSync")).ok
        await clock.advance(299)
        assert plugin.task is not None and not plugin.task.watch.done()
        assert node.links() == (NEW, OLD) and node.restarts() == []  # still on probation
        await clock.advance(2)
        await settle(plugin.task.watch)
    assert node.links() == (OLD, OLD)
    assert node.restarts() == [["restart", "moenet-agent"]]
    state = node.state()
    assert state.pending is None
    assert "tasks never succeeded: sessionSync" in state.bad[NEW]["reason"]
    assert "rolled back 0.2.0" in (state.last_result or "")

    # Back on the old version, the feed still offers the bad release: it is skipped.
    node.server.add(f"v{NEW}", node.release(NEW))
    harness, _ = node.agent(OLD)
    async with harness as h:
        event = await h.agent.scheduler.run_now("updater")
    assert event.ok and event.result == {"upToDate": True, "running": OLD, "skippedBad": [NEW]}
    assert node.server.downloads() == []
    assert node.restarts() == [["restart", "moenet-agent"]]
    assert node.links() == (OLD, OLD)


async def test_a_pending_version_that_is_not_running_is_rolled_back_without_another_restart(node):
    # The new version never came up; something started the old one again.
    pending_state(node, deadline=START + 300)
    harness, plugin = node.agent(OLD)
    async with harness:
        await settle(plugin.task and plugin.task.watch)
    assert node.links() == (OLD, OLD)
    state = node.state()
    assert state.pending is None and "was not running after the switch" in state.bad[NEW]["reason"]
    assert node.restarts() == []  # already running what current points to


async def test_a_new_version_started_after_its_deadline_rolls_back_at_once(node):
    pending_state(node, deadline=START - 1)
    harness, plugin = node.agent(NEW)  # healthy, but too late
    async with harness:
        await settle(plugin.task and plugin.task.watch)
    assert node.links() == (OLD, OLD)
    assert "started after its health deadline" in node.state().bad[NEW]["reason"]
    assert node.restarts() == [["restart", "moenet-agent"]]


async def test_nothing_happens_in_maintenance(node):
    node.server.add(f"v{NEW}", node.release(NEW))
    harness, plugin = node.agent(OLD)
    async with harness as h:
        await h.agent.set_maintenance(True, "test")
        event = await h.agent.scheduler.run_now("updater")
        assert not event.ok and event.error == "paused (maintenance)"
        assert plugin.task is not None
        assert await plugin.task.run_once() == {"skipped": "maintenance"}  # even when called directly
    assert node.server.requests == []
    assert node.versions() == [OLD] and node.links() == (OLD, None) and node.restarts() == []


async def test_no_update_when_the_agent_does_not_run_through_current(node):
    node.server.add(f"v{NEW}", node.release(NEW))
    node.layout.version_dir("0.0.9").mkdir()
    switch_link(node.layout.current, node.layout.version_dir("0.0.9"))
    harness, _ = node.agent(OLD)
    async with harness as h:
        event = await h.agent.scheduler.run_now("updater")
    assert not event.ok and event.error is not None and "a switch would not take effect" in event.error
    assert node.server.requests == [] and node.restarts() == []


def installed_fake(node: Node, version: str, prints: str, marker: str | None = None) -> None:
    """An environment of ``version`` someone prepared: it prints ``prints`` and
    carries a marker (by default the old style, the version alone)."""
    venv = node.layout.version_dir(version)
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin" / "moenet-agent"
    exe.write_text(f"#!/bin/sh\necho 'moenet-agent {prints}'\n")
    exe.chmod(0o755)
    (venv / MARKER).write_text(marker if marker is not None else version)


async def test_a_failed_restart_switches_back(node):
    node.server.add(f"v{NEW}", node.release(NEW))
    harness, _ = node.agent(OLD, restartCommand=[sys.executable, "-c", "raise SystemExit(3)"])
    async with harness as h:
        event = await h.agent.scheduler.run_now("updater")
    assert not event.ok and event.error is not None
    assert (
        "restart command" in event.error
        and "exit 3" in event.error
        and "switched back to 0.1.0" in event.error
    )
    assert node.links()[0] == OLD
    state = node.state()
    assert state.pending is None and state.bad == {}
    assert node.versions() == [OLD, NEW]  # installed and verified: kept for the next try


async def test_a_release_that_fails_its_smoke_test_is_remembered_as_bad(node):
    node.server.add(f"v{NEW}", node.release(NEW, prints="0.1.9"))  # the wheel runs another version
    harness, _ = node.agent(OLD)
    async with harness as h:
        event = await h.agent.scheduler.run_now("updater")
    assert not event.ok and event.error is not None and "smoke test" in event.error
    assert node.versions() == [OLD] and node.links() == (OLD, None) and node.restarts() == []
    assert "smoke test" in node.state().bad[NEW]["reason"]


async def test_enabled_without_a_pinned_key_fails_the_plugin_visibly_and_runs_nothing(node):
    config = node.config()
    del config["updater"]["publicKey"]
    harness = AgentHarness(
        config,
        plugins=[("updater", moenet_updater)],
        state_dir=node.tmp / "state",
        clock=ManualClock(),
        env={},
    )
    async with harness as h:
        record = h.agent.pm.records["updater"]
        status = h.agent.status()
    assert record.status == "failed"
    assert "updater.publicKey: required when updater.enabled is true" in str(record.error)
    assert "updater" not in [t["name"] for t in status["tasks"]]
    assert node.server.requests == []


# ------------------------------------------- reuse, the lock file, the rollback unit


def site_file(venv: Path, name: str) -> Path:
    [found] = venv.glob(f"lib/python*/site-packages/{name}")
    return found


async def update_once(node: Node, **updater: Any) -> Any:
    harness, _ = node.agent(OLD, **updater)
    async with harness as h:
        return await h.agent.scheduler.run_now("updater")


async def test_an_installed_version_is_reused_only_when_it_is_the_verified_wheel(node):
    release = node.release(NEW)
    node.server.add(f"v{NEW}", release)
    fail = {"restartCommand": [sys.executable, "-c", "raise SystemExit(3)"]}  # installed, never switched
    venv = node.layout.version_dir(NEW)

    assert not (await update_once(node, **fail)).ok
    record = json.loads((venv / MARKER).read_text())
    wheel = release / f"moenet_agent-{NEW}-py3-none-any.whl"
    assert record == {
        "version": NEW,
        "wheelSha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "requirementsSha256": hashlib.sha256((release / "requirements.txt").read_bytes()).hexdigest(),
    }

    # The same verified wheel again: the environment is reused (a file of ours survives).
    (venv / "sentinel").write_text("kept")
    assert not (await update_once(node, **fail)).ok
    assert (venv / "sentinel").exists()

    # A file of the agent changed in place: not reused, installed afresh (and the file restored).
    code = site_file(venv, "fake_moenet_agent/__init__.py")
    original = code.read_text()
    code.write_text(original + "\nimport os  # tampered\n")
    assert not (await update_once(node, **fail)).ok
    assert not (venv / "sentinel").exists() and code.read_text() == original

    # Something in it writable by others: not reused either.
    (venv / "sentinel").write_text("kept")
    (venv / "bin").chmod(0o777)
    assert not (await update_once(node, **fail)).ok
    assert not (venv / "sentinel").exists() and (venv / "bin").stat().st_mode & 0o777 == 0o755


async def test_a_prepared_environment_with_a_forged_record_is_replaced(node):
    release = node.release(NEW)
    node.server.add(f"v{NEW}", release)
    wheel = release / f"moenet_agent-{NEW}-py3-none-any.whl"
    forged = {
        "version": NEW,
        "wheelSha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),  # public: in SHA256SUMS
        "requirementsSha256": hashlib.sha256((release / "requirements.txt").read_bytes()).hexdigest(),
    }
    installed_fake(node, NEW, NEW, marker=json.dumps(forged))  # its moenet-agent is a shell script
    event = await update_once(node)
    assert event.ok and event.result["updated"] == NEW, event.error
    exe = node.layout.version_dir(NEW) / "bin" / "moenet-agent"
    assert not exe.read_text().startswith("#!/bin/sh")  # pip's entry point, from the wheel
    assert site_file(node.layout.version_dir(NEW), "fake_moenet_agent/__init__.py").is_file()
    assert node.links() == (NEW, OLD)


async def test_a_lock_file_that_does_not_cover_the_wheels_dependencies_fails_the_update(node):
    node.server.add(f"v{NEW}", node.release(NEW, lock="# nothing pinned\n"))
    event = await update_once(node)
    assert not event.ok and event.error is not None
    assert "pip check failed" in event.error and "moenet-fake-dep" in event.error
    assert node.versions() == [OLD] and node.links() == (OLD, None) and node.restarts() == []


async def test_extra_requirements_cannot_replace_a_pinned_dependency(node):
    build_wheel(node.deps, "moenet-fake-dep", "2.0", {"moenet_fake_dep/__init__.py": "VALUE = 666\n"})
    node.server.add(f"v{NEW}", node.release(NEW))
    event = await update_once(node, extraRequirements=["moenet-fake-dep==2.0"])
    assert not event.ok and event.error is not None
    assert "installed versions differ from the signed lock file: moenet-fake-dep 2.0" in event.error
    assert node.versions() == [OLD] and node.links() == (OLD, None) and node.restarts() == []


def rollback_unit_command(node: Node, config: Path) -> list[str]:
    """ExecStart= of the shipped rollback unit, pointed at the temporary layout."""
    unit = (ROOT / "contrib/systemd/moenet-agent-rollback.service").read_text()
    [line] = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/opt/moenet-agent/previous/bin/moenet-agent"  # the old version's binary
    argv[0] = str(node.layout.previous / "bin" / "moenet-agent")
    return [str(config) if a == "/etc/moenet-agent/config.json" else a for a in argv]


async def test_the_rollback_unit_switches_back_a_version_that_never_started(node):
    # The new version crash-looped until systemd gave up: the OnFailure= unit runs
    # the previous version's `updater rollback` (here the agent of this checkout).
    pending_state(node, deadline=START + 300)
    old_bin = node.layout.version_dir(OLD) / "bin"
    old_bin.mkdir(parents=True)
    (old_bin / "moenet-agent").symlink_to(Path(sys.executable).with_name("moenet-agent"))
    config = node.tmp / "config.json"
    config.write_text(json.dumps({**node.config(), "state": {"directory": str(node.tmp / "state")}}))
    argv = rollback_unit_command(node, config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}

    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr  # then the unit restarts the agent
    assert node.links() == (OLD, OLD)
    state = node.state()
    assert state.pending is None and "failed to start" in state.bad[NEW]["reason"]

    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 3, again.stdout + again.stderr  # nothing pending: no restart
    assert node.links() == (OLD, OLD)

    # Back on the old version, the bad release is skipped.
    node.server.add(f"v{NEW}", node.release(NEW))
    event = await update_once(node)
    assert event.ok and event.result == {"upToDate": True, "running": OLD, "skippedBad": [NEW]}
    assert node.server.downloads() == []
