"""``birdConfigSync`` and the ``bird`` routing backend through the real agent core.

A FakeControlPlane serves ``bird-config``; BIRD runs in a namespace
(``moenet_bird.testing.BirdDaemon``). Runs are triggered with
``scheduler.run_now`` and BIRD traffic is read from the applier's counters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import moenet_bird
import pytest
from helpers.bird import U1, cp_data, session, symbol
from loguru import logger
from moenet_bird.backend import STATE_FILE, STATE_VERSION, BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.sync import TASK_NAME
from moenet_bird.testing import BirdDaemon

from moenet_core.state import StateStore
from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS


def config(fake_cp: FakeControlPlane, daemon: BirdDaemon, etc: Path, state: Path) -> dict[str, Any]:
    return {
        "node": {"name": "hkg1", "id": 3},
        "controlPlane": {"url": fake_cp.url, "token": "test-token", "maxRetries": 0},
        "bird": {
            "controlSocket": str(daemon.socket),
            "configDir": str(etc),
        },
        "birdAgent": {"applyDebounce": 0},
        "state": {"directory": str(state)},
    }


def inodes(etc: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(etc)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(etc.rglob("*"))
        if p.is_file()
    }


def task_status(h: AgentHarness) -> dict[str, Any]:
    [entry] = [t for t in h.agent.status()["tasks"] if t["name"] == TASK_NAME]
    return entry  # type: ignore[no-any-return]


@pytest.mark.netns
async def test_bird_config_sync_through_the_core(
    netns: Callable[[], NetNS], tmp_path: Path, fake_cp: FakeControlPlane
) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        cfg = config(fake_cp, daemon, etc, state)
        fake_cp.set("bird-config", cp_data("h1"))
        async with AgentHarness(cfg, plugins=[("bird", moenet_bird)], state_dir=state) as h:
            backend = h.agent.backend("routing")
            assert isinstance(backend, BirdRoutingBackend)
            assert h.agent.status()["backends"]["routing"]["name"] == "bird"
            # First sync (the start-up run, or this one) applies.
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert ev.ok, ev.error
            assert backend.applier.stats.configures == 1 and backend.config_hash == "h1"
            assert (etc / "moenet.conf").read_text().count("DN42_MAX_PATH = 32;") == 1

            # Unchanged: nothing written, no configure.
            before = inodes(etc)
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert ev.ok and ev.result["changed"] is False
            assert inodes(etc) == before and backend.applier.stats.configures == 1

            # A session declared by another owner, then a changed policy: one configure each.
            r = await backend.declare("sessions", {U1: session()})
            assert r.ok and r.changed
            fake_cp.set("bird-config", cp_data("h2", asPathMaxLen=16))
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert ev.ok and ev.result == {
                "configHash": "h2",
                "changed": True,
                "warnings": ev.result["warnings"],
            }
            assert backend.applier.stats.configures == 3 and backend.config_hash == "h2"
            assert "DN42_MAX_PATH = 16;" in (etc / "moenet.conf").read_text()
            good = inodes(etc)

            # An invalid answer: the old policy stays live and /status says why.
            fake_cp.set("bird-config", cp_data("h3", asPathMaxLen=0, ebgpImportLimit=-1))
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert not ev.ok
            assert ev.error is not None and "policy.asPathMaxLen: must be 1-255" in ev.error
            assert (
                "policy.ebgpImportLimit" in ev.error and "keeping the last good policy (hash h2)" in ev.error
            )
            assert inodes(etc) == good and backend.config_hash == "h2"
            status = h.agent.status()
            assert "policy.asPathMaxLen" in task_status(h)["last"]["error"]
            [plugin] = [p for p in status["plugins"] if p["name"] == "bird"]
            assert "policy.asPathMaxLen" in plugin["info"]["syncError"]
            assert plugin["info"]["policyHash"] == "h2" and plugin["info"]["owners"]["sessions"] == 1
            assert symbol(U1, 4242420002) in {p.name for p in await backend.protocols()}

            # CP down: keeps serving.
            fake_cp.fail("bird-config", times=1, status=503)  # maxRetries 0: one attempt
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert not ev.ok and ev.error is not None and "unreachable" in ev.error
            assert inodes(etc) == good and backend.config_hash == "h2"

            # Maintenance through the core hook: drained exports, then restored.
            fake_cp.set("bird-config", cp_data("h2", asPathMaxLen=16))
            await h.agent.set_maintenance(True, "test")
            await backend.settle()
            drain = "bgp_community.add((65535, 0));"
            assert (etc / "filters.conf").read_text().count(drain) == 2
            await h.agent.set_maintenance(False, "")
            await backend.settle()
            assert drain not in (etc / "filters.conf").read_text()
            assert inodes(etc)["filters.conf"][2] == good["filters.conf"][2]
            ev = await h.agent.scheduler.run_now(TASK_NAME)
            assert ev.ok and ev.result["changed"] is False
            final = inodes(etc)

        # A restarted agent with unchanged input: no write, no configure, peer kept.
        async with AgentHarness(cfg, plugins=[("bird", moenet_bird)], state_dir=state) as h2:
            backend2 = h2.agent.backend("routing")
            assert isinstance(backend2, BirdRoutingBackend)
            ev = await h2.agent.scheduler.run_now(TASK_NAME)
            assert ev.ok and ev.result["changed"] is False, ev
            assert backend2.applier.stats.configures == 0
            assert inodes(etc) == final


@pytest.mark.parametrize(
    ("bird", "warned"),
    [
        ({}, []),  # the Go agent's defaults say nothing: no warning
        ({"peerConfDir": "{etc}/peers", "ibgpConfDir": "{etc}/ibgp"}, []),
        ({"peerConfDir": "/srv/peers"}, ["peerConfDir"]),
    ],
)
def test_peer_and_ibgp_dirs_warn_only_when_set_elsewhere(
    tmp_path: Path, bird: dict[str, str], warned: list[str]
) -> None:
    from types import SimpleNamespace

    from loguru import logger

    from moenet_core.config import build_config

    etc = tmp_path / "etc"
    section = {k: v.format(etc=etc) for k, v in bird.items()}
    cfg, _ = build_config(
        {
            "node": {"name": "n1", "id": 1},
            "controlPlane": {"url": "http://127.0.0.1:9", "token": "t-123456"},
            "bird": {"configDir": str(etc), "controlSocket": str(tmp_path / "bird.ctl"), **section},
        },
        env={},
    )
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        ctx = SimpleNamespace(
            config=cfg, section=None, state=None, metrics=None, maintenance=False, log=logger,
            register_hooks=lambda obj: None,
        )  # fmt: skip
        moenet_bird.make_backend(ctx)  # type: ignore[arg-type]
    finally:
        logger.remove(sink)
    assert [k for k in ("peerConfDir", "ibgpConfDir") if any(f"bird.{k} " in m for m in seen)] == warned


# -------------------------------------------------- applied.json (root-free)

OLD_SESSION = {
    "asn": 4242420002,
    "latency": 3,
    "bandwidth": 25,
    "name": "example",
    "interface": "dn42-2",
    "neighborLinkLocal": "fe80::2",
    "localLinkLocal": "fe80::1234",
}


def restored(tmp_path: Path) -> BirdRoutingBackend:
    """A backend restored from ``tmp_path/state`` (BIRD is not needed to restore)."""
    b = BirdRoutingBackend(
        BirdClient(str(tmp_path / "no-bird.ctl")), str(tmp_path / "etc"), state=StateStore(tmp_path / "state")
    )
    b._restore()
    return b


def snapshot(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_applied_state_of_the_previous_versions_restores(tmp_path: Path) -> None:
    """applied.json without "version" (owners' camelCase payloads) is read, converted
    and saved as the current version once; a current one is not rewritten unchanged."""
    store = StateStore(tmp_path / "state")
    store.write_json(
        STATE_FILE,
        {
            "configHash": "h",
            "policy": cp_data(),
            "fragments": {
                "sessions": {U1: {"uuid": U1, **OLD_SESSION}},
                "ibgp": {
                    "options": {"enabled": True, "routeReflector": True},
                    "4": {
                        "nodeId": 4,
                        "nodeName": "tyo1",
                        "loopbackIpv6": "fd42:4242:1234::2",
                        "rrClient": True,
                    },
                },
                "mesh": {"mesh-*": {"pattern": "mesh-*", "type": "tunnel", "rttCost": 96}},
            },
        },
    )
    path = store.path(STATE_FILE)
    before = snapshot(path)
    b = restored(tmp_path)
    assert b.status_info()["owners"] == {"ibgp": 1, "mesh": 1, "sessions": 1}
    assert snapshot(path) == before  # restoring writes nothing
    b._persist()  # what a successful apply does: the file takes the current form
    saved = store.read_json(STATE_FILE)
    assert saved["version"] == STATE_VERSION == 2 and saved["configHash"] == "h"
    assert saved["fragments"]["sessions"][U1]["kind"] == "ebgpPeer"

    current = snapshot(path)
    b2 = restored(tmp_path)
    assert b2.status_info()["owners"] == {"ibgp": 1, "mesh": 1, "sessions": 1}
    b2._persist()
    assert snapshot(path) == current


def test_applied_state_of_a_newer_version_is_not_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    doc = {"version": 3, "configHash": "h", "policy": cp_data(), "fragments": {}}
    store.write_json(STATE_FILE, doc)
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        b = restored(tmp_path)
    finally:
        logger.remove(sink)
    assert b._policy is None and b.status_info().get("owners", {}) == {}
    assert store.read_json(STATE_FILE) == doc
    assert any("ignoring the saved BIRD state" in m and "version 3" in m for m in seen), seen
