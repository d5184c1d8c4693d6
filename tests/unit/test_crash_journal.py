"""Crash recovery without root (issue 16): the crash points, the tunnel backends'
create intents (``moenet_wireguard.intentlog``) and how an interrupted create is
settled at start (adopted, removed or left alone), on a fake netlink.

The real thing (wireguard-go, a SIGKILLed agent) is ``tests/e2e/test_crash_recovery.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
from moenet_wireguard import base, daemon, intentlog, userspace
from moenet_wireguard.config import Settings
from moenet_wireguard.intentlog import CreateIntent, IntentLog
from moenet_wireguard.kernel import KernelTunnelBackend
from moenet_wireguard.links import Link, marker
from moenet_wireguard.userspace import UserspaceTunnelBackend

from moenet_core import crashpoints, sweep_partial_writes

# ------------------------------------------------------------------ crash points


def _run_with(target: str | None, code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != crashpoints.CRASH_ENV}
    if target is not None:
        env[crashpoints.CRASH_ENV] = target
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


CODE = (
    "from moenet_core import crashpoint\n"
    "for i in range(3):\n"
    "    crashpoint('demo.loop')\n"
    "    print('after', i, flush=True)\n"
)


def test_a_named_point_kills_the_process_at_its_nth_hit() -> None:
    res = _run_with("demo.loop:2", CODE)
    assert res.returncode == -signal.SIGKILL
    assert res.stdout.split("\n")[:-1] == ["after 0"]  # killed at the second hit, before printing
    assert "crash point demo.loop (hit 2): SIGKILL" in res.stderr


def test_an_unnamed_point_does_nothing() -> None:
    for target in (None, "demo.other", "demo.loop:9"):
        res = _run_with(target, CODE)
        assert res.returncode == 0, (target, res.stderr)
        assert res.stdout.count("after") == 3


def test_a_malformed_target_is_ignored_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("Demo.loop", "demo.loop:0", "demo.loop:x", ":3"):
        monkeypatch.setenv(crashpoints.CRASH_ENV, bad)
        assert crashpoints.reload() is None
    monkeypatch.setenv(crashpoints.CRASH_ENV, "demo.loop:3")
    assert crashpoints.reload() == ("demo.loop", 3)
    monkeypatch.delenv(crashpoints.CRASH_ENV)
    assert crashpoints.reload() is None
    crashpoints.crashpoint("demo.loop")  # nothing named: a no-op


def test_partial_writes_are_swept(tmp_path: Path) -> None:
    (tmp_path / ".state.json.ab12_xyz.tmp").write_text("{")
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / ".state.json.short.tmp").write_text("{")
    assert sweep_partial_writes(tmp_path) == [".state.json.ab12_xyz.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".state.json.short.tmp", "state.json"]
    assert sweep_partial_writes(tmp_path / "absent") == []


# ------------------------------------------------------------------ the intent log


def test_an_intent_is_on_disk_before_the_create_and_gone_after(tmp_path: Path) -> None:
    log = IntentLog(tmp_path / "creating")
    entry = CreateIntent.now("cr1", "sessions", "tun")
    log.record(entry)
    path = tmp_path / "creating" / "cr1.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["owner"] == "sessions"
    # The launcher the backend started: pid and start time (this process stands in).
    launched = log.launched("cr1", os.getpid())
    assert launched is not None and launched.launcher == (os.getpid(), intentlog.process_start(os.getpid()))
    assert launched.since_ticks == launched.launcher[1]
    again = IntentLog(tmp_path / "creating").load()  # what a restarted agent reads
    assert again == [launched]
    log.drop("cr1")
    assert not path.exists() and log.pending("cr1") is None


def test_unreadable_and_half_written_entries_are_removed(tmp_path: Path) -> None:
    d = tmp_path / "creating"
    d.mkdir()
    (d / "cr1.json").write_text("{not json")
    (d / "cr2.json").write_text(json.dumps({**CreateIntent.now("other", "sessions", "tun").to_json()}))
    (d / ".cr3.json.abcd1234.tmp").write_text("{")
    good = CreateIntent.now("cr4", "mesh", "wireguard")
    (d / "cr4.json").write_text(json.dumps(good.to_json()))
    assert IntentLog(d).load() == [good]
    assert sorted(p.name for p in d.iterdir()) == ["cr4.json"]


def test_without_a_directory_the_log_is_kept_in_memory() -> None:
    log = IntentLog(None)
    log.record(CreateIntent.now("cr1", "sessions", "tun"))
    assert log.names() == ["cr1"] and log.load()[0].name == "cr1"
    log.drop("cr1")
    assert log.names() == []


# ------------------------------------------------------------------ settling, on a fake netlink


class FakeNetlink:
    """The links of a fake namespace (shared by every instance, like the kernel's)."""

    links: dict[str, Link] = {}
    writes: list[tuple[str, str]] = []

    async def __aenter__(self) -> FakeNetlink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get_link(self, name: str) -> Link | None:
        return self.links.get(name)

    async def mark(self, index: int, owner: str, journal) -> str:
        alias = marker(owner)
        journal.record("link_alias")
        (name,) = [n for n, lk in self.links.items() if lk.index == index]
        self.links[name] = attrs.evolve(self.links[name], alias=alias)
        self.writes.append(("mark", name))
        return alias

    async def delete(self, index: int, journal) -> None:
        journal.record("link_del")
        (name,) = [n for n, lk in self.links.items() if lk.index == index]
        del self.links[name]
        self.writes.append(("delete", name))


@pytest.fixture
def netlink(monkeypatch: pytest.MonkeyPatch) -> type[FakeNetlink]:
    FakeNetlink.links = {}
    FakeNetlink.writes = []
    monkeypatch.setattr(base, "Netlink", FakeNetlink)
    return FakeNetlink


def link(name: str, kind: str = "tun", alias: str | None = None, index: int = 7) -> Link:
    return Link(index=index, name=name, kind=kind, alias=alias, mtu=1420, up=False)


def kernel(tmp_path: Path) -> KernelTunnelBackend:
    return KernelTunnelBackend(Settings(), genl=object(), intent_dir=tmp_path / "creating")  # type: ignore[arg-type]


def entries(tmp_path: Path) -> list[str]:
    d = tmp_path / "creating"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


async def test_an_unmarked_link_of_an_interrupted_create_is_adopted(tmp_path: Path, netlink) -> None:
    """The issue's window: the device was created, the agent died before the alias."""
    backend = kernel(tmp_path)
    backend.intents.record(CreateIntent.now("cr34", "sessions", "wireguard"))
    backend.intents.record(CreateIntent.now("igp7", "mesh", "wireguard"))
    netlink.links = {"cr34": link("cr34", "wireguard", index=3), "igp7": link("igp7", "wireguard", index=4)}
    restarted = kernel(tmp_path)  # a new agent on the same state directory
    done = await restarted.recover()
    assert set(done) == {"cr34", "igp7"} and all("adopted" in v for v in done.values()), done
    assert netlink.links["cr34"].alias == "moenet-agent"  # the sessions owner's marker
    assert netlink.links["igp7"].alias == "moenet-agent:mesh"
    assert netlink.links["cr34"].owner == "sessions" and netlink.links["igp7"].owner == "mesh"
    assert entries(tmp_path) == []


async def test_what_is_not_the_interrupted_create_is_left_alone(tmp_path: Path, netlink) -> None:
    backend = kernel(tmp_path)
    for name in ("gone", "done", "veth", "foreign"):
        backend.intents.record(CreateIntent.now(name, "sessions", "wireguard"))
    stale = attrs.evolve(CreateIntent.now("oldboot", "sessions", "wireguard"), boot="another-boot")
    backend.intents.record(stale)
    elsewhere = attrs.evolve(CreateIntent.now("otherns", "sessions", "wireguard"), netns=(1, 2))
    backend.intents.record(elsewhere)
    netlink.links = {
        "done": link("done", "wireguard", alias="moenet-agent:mesh", index=1),  # the create completed
        "veth": link("veth", "veth", index=2),  # someone else's interface of that name
        "foreign": link("foreign", "wireguard", alias="wg-quick", index=3),
        "oldboot": link("oldboot", "wireguard", index=4),
        "otherns": link("otherns", "wireguard", index=5),
    }
    done = await kernel(tmp_path).recover()
    assert "nothing was created" in done["gone"]
    assert "had completed" in done["done"]
    assert "left alone" in done["veth"] and "left alone" in done["foreign"]
    assert "before the last boot" in done["oldboot"] and "another network namespace" in done["otherns"]
    assert netlink.writes == []  # nothing marked, nothing deleted
    assert netlink.links["done"].alias == "moenet-agent:mesh"
    assert entries(tmp_path) == []


async def test_an_entry_that_cannot_be_settled_is_kept(tmp_path: Path, netlink, monkeypatch) -> None:
    backend = kernel(tmp_path)
    backend.intents.record(CreateIntent.now("cr1", "sessions", "wireguard"))
    netlink.links = {"cr1": link("cr1", "wireguard")}

    async def refuse(self, index, owner, journal):
        raise OSError("netlink said no")

    monkeypatch.setattr(FakeNetlink, "mark", refuse)
    restarted = kernel(tmp_path)
    done = await restarted.recover()
    assert done["cr1"].startswith("not settled: netlink said no")
    assert entries(tmp_path) == ["cr1.json"]  # tried again at the next start
    assert restarted.intents.pending("cr1") is not None  # and by the next ensure of cr1


def userspace_backend(tmp_path: Path) -> UserspaceTunnelBackend:
    return UserspaceTunnelBackend(
        Settings(), socket_dir=str(tmp_path / "run"), intent_dir=tmp_path / "creating"
    )


async def test_wireguard_go_tunnels_are_adopted_only_when_our_daemon_serves_them(
    tmp_path: Path, netlink, monkeypatch
) -> None:
    """A TUN device is adopted when a daemon started at or after our launcher serves
    it; removed when nothing serves it (dead); left alone when only an older daemon
    (not the one we started) does."""
    (tmp_path / "run").mkdir()
    backend = userspace_backend(tmp_path)
    launcher_start = 10_000
    for name in ("ours", "dead", "older"):
        entry = CreateIntent.now(name, "sessions", "tun")
        backend.intents.record(attrs.evolve(entry, launcher=(4242, launcher_start)))
    netlink.links = {n: link(n, "tun", index=i) for i, n in enumerate(("ours", "dead", "older"), 1)}
    daemons = {"ours": [501], "older": [502]}
    started = {501: launcher_start + 3, 502: launcher_start - 500, 4242: None}
    monkeypatch.setattr(userspace.daemon, "find_daemons", lambda name, binary="": daemons.get(name, []))
    monkeypatch.setattr(userspace.daemon, "is_launcher", lambda pid: False)  # 501, 502: daemons
    monkeypatch.setattr(userspace, "process_start", lambda pid: started.get(pid))
    monkeypatch.setattr(UserspaceTunnelBackend, "_daemons", lambda self, name: [])
    done = await userspace_backend(tmp_path).recover()
    assert "adopted" in done["ours"] and netlink.links["ours"].alias == "moenet-agent"
    assert "removed" in done["dead"] and "dead" not in netlink.links
    assert "not ours" in done["older"] and netlink.links["older"].alias is None
    assert entries(tmp_path) == []


async def test_a_launcher_still_running_is_waited_for(tmp_path: Path, netlink, monkeypatch) -> None:
    """The launcher runs in its own session and outlives a killed agent: it is given
    ``startTimeout`` to finish, then killed; only then is the link looked at."""
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        backend = UserspaceTunnelBackend(
            Settings(start_timeout=0.2), socket_dir=str(tmp_path / "run"), intent_dir=tmp_path / "creating"
        )
        backend.intents.record(CreateIntent.now("cr1", "sessions", "tun"))
        backend.intents.launched("cr1", proc.pid)
        restarted = UserspaceTunnelBackend(
            Settings(start_timeout=0.2), socket_dir=str(tmp_path / "run"), intent_dir=tmp_path / "creating"
        )
        done = await restarted.recover()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert "nothing was created" in done["cr1"]
        assert restarted.writes["daemon_kill"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="a wireguard-go process is one running as root")
async def test_a_launcher_the_agent_died_before_recording_is_waited_for_too(tmp_path: Path, netlink) -> None:
    """A batch starts several launchers before the first is recorded (and one that
    finished is never recorded): a launcher still running for the name, started
    since the intent, is waited for although the intent names none; settled as
    "nothing made" while it runs, it would create an unmarked device afterwards.
    The launcher here is a python process standing in for the configured binary
    (same executable, last argument the interface, no ``WG_PROCESS_FOREGROUND``),
    busy for a second."""
    (tmp_path / "run").mkdir()
    settings = Settings(wireguard_go=sys.executable, start_timeout=10.0)
    backend = UserspaceTunnelBackend(
        settings, socket_dir=str(tmp_path / "run"), intent_dir=tmp_path / "creating"
    )
    backend.intents.record(CreateIntent.now("cr2", "sessions", "tun"))  # no launcher recorded
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", "import time; time.sleep(1)", "cr2"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10  # Popen may return while the exec is still settling in /proc
        while not daemon.serves(proc.pid, "cr2", sys.executable):
            assert time.monotonic() < deadline, "the stand-in launcher never showed up in /proc"
            time.sleep(0.01)
        restarted = UserspaceTunnelBackend(
            settings, socket_dir=str(tmp_path / "run"), intent_dir=tmp_path / "creating"
        )
        done = await restarted.recover()
        assert proc.poll() == 0  # finished by itself before the create was settled
        assert "nothing was created" in done["cr2"]
        assert restarted.writes["daemon_kill"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
