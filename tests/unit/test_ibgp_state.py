"""``nodes.json`` of the ``ibgpSync`` task through the core's typed state API (root-free)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import moenet_ibgp
import pytest
from loguru import logger
from moenet_bird.testing import sample_bird_config
from moenet_ibgp.task import STATE_FILE, STATE_VERSION, IbgpSync

from moenet_core.testing import FakeBackends, StubControlPlane, plugin_context

V6 = "fd42:4242:1234::"
ME = {"nodeId": 3, "nodeName": "hkg1", "loopbackIpv4": "172.20.42.1", "loopbackIpv6": V6 + "1"}
TYO1 = {
    "nodeId": 4,
    "nodeName": "tyo1",
    "loopbackIpv4": "172.20.42.6",
    "loopbackIpv6": V6 + "4",
    "isRr": True,
}


def task(state: Path) -> tuple[IbgpSync, StubControlPlane]:
    cp = StubControlPlane("hkg1")
    ctx = plugin_context(
        "ibgp",
        state_dir=state,
        config={"node": {"name": "hkg1", "id": 3}},
        plugins=[("ibgp", moenet_ibgp)],
        backends=FakeBackends(),
        cp=cp,
    )
    answer = sample_bird_config()
    answer["ibgpPeers"] = [ME, TYO1]
    cp.set("bird-config", answer)
    return IbgpSync(ctx), cp


def nodes_file(state: Path) -> Path:
    return state / "plugins" / "ibgp" / STATE_FILE


def snapshot(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING", format="{message}")
    yield seen
    logger.remove(sink)


async def test_a_file_without_version_loads_and_is_not_rewritten(tmp_path: Path) -> None:
    # What this version writes, and what the previous one wrote (the same without "version").
    first, _cp = task(tmp_path / "a")
    await first.run_once()
    written = json.loads(nodes_file(tmp_path / "a").read_text())
    assert written["version"] == STATE_VERSION == 1
    old = {k: v for k, v in written.items() if k != "version"}
    assert [n["nodeId"] for n in old["nodes"]] == [4]

    path = nodes_file(tmp_path / "b")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    before = snapshot(path)
    restored, _cp = task(tmp_path / "b")
    assert restored.nodes == first.nodes and restored.self_is_rr == first.self_is_rr
    # Restoring, and a cycle with the same answer, leave the old file alone.
    await restored.run_once()
    assert restored.nodes == first.nodes
    assert snapshot(path) == before


async def test_a_changed_node_list_is_saved_as_the_current_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = nodes_file(state)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"nodes": [{**TYO1, "nodeName": "old"}], "selfIsRr": None}))
    t, _cp = task(state)
    assert t.nodes is not None and t.nodes[4].node_name == "old"
    await t.run_once()
    saved = json.loads(path.read_text())
    assert saved["version"] == 1 and [n["nodeName"] for n in saved["nodes"]] == ["tyo1"]


async def test_a_newer_file_is_refused_not_read(tmp_path: Path, warnings: list[str]) -> None:
    state = tmp_path / "state"
    path = nodes_file(state)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 2, "nodes": [TYO1], "selfIsRr": False}))
    before = snapshot(path)
    t, _cp = task(state)
    # Not read as its content (as if it were this version's): ignored, with the reason.
    assert t.nodes is None
    assert snapshot(path) == before
    assert any("ignoring the saved iBGP nodes" in w and "version 2" in w for w in warnings), warnings


def test_corrupt_file_is_ignored_with_a_warning(tmp_path: Path, warnings: list[str]) -> None:
    state = tmp_path / "state"
    path = nodes_file(state)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    t, _cp = task(state)
    assert t.nodes is None
    assert any("ignoring the saved iBGP nodes" in w and str(path) in w for w in warnings), warnings
