"""The loopback plugin against the real kernel, in throwaway network namespaces.

This kernel has no dummy driver, so the tests use kind ``bridge`` (an empty
bridge) unless they are about the kind itself. Every netlink call happens with
the test thread switched into a namespace (``inside(ns)`` also checks that it
is), so nothing here can touch the host's interfaces; the ``netns`` fixture
deletes the namespaces, and everything in them, even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import moenet_loopback
import pytest
from loguru import logger
from moenet_loopback import (
    MARKER,
    TASK_NAME,
    InvalidLoopbackAddress,
    LinkLoopback,
    LoopbackConfig,
    LoopbackError,
    normalize_address,
)

from moenet_core import BackendUnavailable, hookimpl
from moenet_core.config import structure
from moenet_core.state import StateStore
from moenet_core.testing import NetNS

IF = "lo-test"
KIND = "bridge"
V4 = "172.22.188.1"
V6 = "fd00:4242:7777::1"


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def inside(ns: NetNS) -> Iterator[NetNS]:
    """Enter ``ns`` and prove it: a test that talks netlink outside a namespace
    would change the host."""
    with ns.entered():
        here = os.stat("/proc/thread-self/ns/net").st_ino
        assert here == os.stat(f"/run/netns/{ns.name}").st_ino, "not inside the test namespace"
        yield ns


def link(ns: NetNS, dev: str = IF) -> dict | None:
    res = ns.run("ip", "-j", "-d", "link", "show", "dev", dev, check=False)
    return json.loads(res.stdout)[0] if res.returncode == 0 else None


def addr_info(ns: NetNS, dev: str = IF) -> list[dict]:
    return json.loads(ns.run("ip", "-j", "addr", "show", "dev", dev).stdout)[0]["addr_info"]


def addrs(ns: NetNS, dev: str = IF) -> set[str]:
    """Global addresses: an operator's interface that the agent brings up gets the
    kernel's automatic link-local (the agent does not change its settings)."""
    return {f"{a['local']}/{a['prefixlen']}" for a in addr_info(ns, dev) if a.get("scope") != "link"}


def backend(tmp_path: Path, interface: str = IF, kind: str = KIND) -> LinkLoopback:
    return LinkLoopback(StateStore(tmp_path / "state"), LoopbackConfig(interface=interface, kind=kind))


def kernel_has_dummy(ns: NetNS) -> bool:
    ok = ns.run("ip", "link", "add", "probe-dummy", "type", "dummy", check=False).returncode == 0
    if ok:
        ns.run("ip", "link", "del", "probe-dummy")
    return ok


@pytest.fixture
def ns(netns) -> NetNS:
    return netns()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Messages logged while the test runs."""
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="DEBUG", format="{message}")
    yield seen
    logger.remove(sink)


# --------------------------------------------------------- address parsing


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("172.22.188.1", "172.22.188.1/32"),
        ("172.22.188.1/32", "172.22.188.1/32"),
        ("fd00:4242:7777::1", "fd00:4242:7777::1/128"),
        ("FD00:4242:7777:0::1/128", "fd00:4242:7777::1/128"),
    ],
)
def test_address_forms_accepted(given, canonical):
    assert normalize_address(given) == canonical


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("172.22.188.0/24", "must be a single address (IPv4 /32), not a /24"),
        ("172.22.188.1/24", "must be a single address (IPv4 /32), not a /24"),
        ("fd00:4242:7777::1/64", "must be a single address (IPv6 /128), not a /64"),
        ("172.22.188", "not an IPv4 or IPv6 address"),
        ("172.022.188.1", "not an IPv4 or IPv6 address"),
        ("dummy0", "not an IPv4 or IPv6 address"),
        ("", "not an IPv4 or IPv6 address"),
        (" 172.22.188.1", "not an IPv4 or IPv6 address"),
        ("fd00::1%eth0", "not an IPv4 or IPv6 address"),
        ("0.0.0.0", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
    ],
)
def test_invalid_addresses_rejected_with_the_value(bad, why):
    with pytest.raises(InvalidLoopbackAddress) as err:
        normalize_address(bad)
    assert repr(bad) in str(err.value) and why in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.netns
async def test_ensure_rejects_before_touching_anything(tmp_path, ns):
    with inside(ns):
        b = backend(tmp_path)
        with pytest.raises(InvalidLoopbackAddress) as err:
            await b.ensure([V4, "10.0.0.0/8", 42])
        with pytest.raises(InvalidLoopbackAddress, match="the string"):
            await b.ensure(V4)  # a bare string is not a list of addresses
    assert "'10.0.0.0/8'" in str(err.value) and "42" in str(err.value)
    assert b.writes == 0 and link(ns) is None
    assert not (tmp_path / "state").exists()


# ------------------------------------------------------- the kernel's view


@pytest.mark.netns
async def test_addresses_appear_on_a_marked_interface_that_is_up(tmp_path, ns):
    with inside(ns):
        b = backend(tmp_path)
        assert await b.ensure([V4, V6]) is True
        assert await b.addresses() == (f"{V4}/32", f"{V6}/128")
    info = link(ns)
    assert info is not None
    assert info["linkinfo"]["info_kind"] == KIND
    assert info["ifalias"] == MARKER
    assert "UP" in info["flags"]
    assert info["inet6_addr_gen_mode"] == "none"
    got = {f"{a['local']}/{a['prefixlen']}": a for a in addr_info(ns)}
    # Exactly the two, with full-length prefixes, and no automatic link-local.
    assert set(got) == {f"{V4}/32", f"{V6}/128"}
    assert got[f"{V6}/128"].get("nodad") is True and "tentative" not in got[f"{V6}/128"]
    saved = json.loads((tmp_path / "state" / "addresses.json").read_text())
    assert saved == {"version": 1, "interfaces": {IF: [f"{V4}/32", f"{V6}/128"]}}


@pytest.mark.netns
async def test_unchanged_ensure_writes_nothing(tmp_path, ns):
    state_file = tmp_path / "state" / "addresses.json"
    with inside(ns):
        b = backend(tmp_path)
        assert await b.ensure([V4, V6]) is True
        writes, stamp = b.writes, state_file.stat().st_mtime_ns
        assert await b.ensure([V4, V6]) is False
        # Same set, other spelling and order: still nothing to do.
        assert await b.ensure([f"{V6}/128", f"{V4}/32", V4]) is False
    assert b.writes == writes
    assert state_file.stat().st_mtime_ns == stamp


@pytest.mark.netns
async def test_changed_set_removes_the_stale_agent_address_and_keeps_the_operators(tmp_path, ns):
    with inside(ns):
        b = backend(tmp_path)
        await b.ensure([V4, V6])
        ns.run("ip", "addr", "add", "172.22.188.99/32", "dev", IF)
        ns.run("ip", "addr", "add", "10.9.9.9/24", "dev", IF)
        assert await b.ensure(["172.22.188.2", V6]) is True
        assert addrs(ns) == {"172.22.188.2/32", f"{V6}/128", "172.22.188.99/32", "10.9.9.9/24"}
        assert await b.addresses() == ("172.22.188.2/32", f"{V6}/128")
        # Nothing wanted: the agent's addresses go, the interface and the operator's stay.
        assert await b.ensure([]) is True
        assert await b.addresses() == ()
    assert addrs(ns) == {"172.22.188.99/32", "10.9.9.9/24"}
    assert link(ns) is not None


@pytest.mark.netns
async def test_an_operator_address_equal_to_the_wanted_one_is_never_claimed(tmp_path, ns, logs):
    ns.run("ip", "link", "add", IF, "type", KIND)
    ns.run("ip", "addr", "add", f"{V4}/32", "dev", IF)
    with inside(ns):
        b = backend(tmp_path)
        await b.ensure([V4])
        assert await b.addresses() == ()
        await b.ensure([])
    assert addrs(ns) == {f"{V4}/32"}
    assert any(f"{V4}/32 on {IF} was not added by the agent" in m for m in logs)


@pytest.mark.netns
async def test_memory_survives_a_restart(tmp_path, ns):
    with inside(ns):
        first = backend(tmp_path)
        await first.ensure([V4, V6])
        # A new agent process: new backend object, same state directory.
        second = backend(tmp_path)
        assert await second.addresses() == (f"{V4}/32", f"{V6}/128")
        assert await second.ensure(["172.22.188.2", V6]) is True
    assert addrs(ns) == {"172.22.188.2/32", f"{V6}/128"}


@pytest.mark.netns
async def test_a_lost_state_file_means_nothing_is_removed(tmp_path, ns):
    """Without the record the agent cannot tell its address from an operator's:
    it leaves it (a leak to clean by hand beats deleting someone's address)."""
    with inside(ns):
        await backend(tmp_path).ensure([V4])
        (tmp_path / "state" / "addresses.json").unlink()
        await backend(tmp_path).ensure(["172.22.188.2"])
    assert addrs(ns) == {f"{V4}/32", "172.22.188.2/32"}


@pytest.mark.netns
async def test_no_substring_matching(tmp_path, ns):
    ns.run("ip", "link", "add", IF, "type", KIND)
    ns.run("ip", "addr", "add", "172.22.188.12/32", "dev", IF)
    with inside(ns):
        b = backend(tmp_path)
        before = b.writes
        await b.ensure(["172.22.188.1"])
        assert b.writes > before  # .1 was added although ".1" is a prefix of ".12"
        assert addrs(ns) == {"172.22.188.1/32", "172.22.188.12/32"}
        assert await b.addresses() == ("172.22.188.1/32",)
        await b.ensure([])
    assert addrs(ns) == {"172.22.188.12/32"}


@pytest.mark.netns
async def test_an_unmarked_interface_is_used_and_never_deleted(tmp_path, ns, logs):
    # The operator's, down, of another kind (veth rather than ifb: loading the ifb
    # module would create ifb0/ifb1 in the host's namespace).
    ns.run("ip", "link", "add", IF, "type", "veth", "peer", "name", "lo-peer")
    index = link(ns)["ifindex"]
    with inside(ns):
        b = backend(tmp_path, kind=KIND)
        assert await b.ensure([V4, V6]) is True
        info = link(ns)
        assert info["ifindex"] == index and "UP" in info["flags"]
        assert info["linkinfo"]["info_kind"] == "veth" and "ifalias" not in info
        assert addrs(ns) >= {f"{V4}/32", f"{V6}/128"}
        await b.ensure([])
        await b.ensure([V4])
        await b.ensure([])
    info = link(ns)
    assert info is not None and info["ifindex"] == index and info["linkinfo"]["info_kind"] == "veth"
    assert not addrs(ns) & {f"{V4}/32", f"{V6}/128"}
    unmarked = [m for m in logs if "was not created by the agent" in m]
    other_kind = [m for m in logs if "is of kind veth, not bridge" in m]
    assert len(unmarked) == 1 and len(other_kind) == 1  # said once, not on every run


@pytest.mark.netns
async def test_interface_recreated_after_it_vanished(tmp_path, ns):
    """A reboot (or an operator's ``ip link del``) drops the interface; the next
    run builds it again and re-adds the addresses it still wants."""
    with inside(ns):
        b = backend(tmp_path)
        await b.ensure([V4, V6])
        ns.run("ip", "link", "del", IF)
        assert await b.addresses() == ()
        assert await b.ensure([V4, V6]) is True
    assert addrs(ns) == {f"{V4}/32", f"{V6}/128"}
    assert link(ns)["ifalias"] == MARKER


@pytest.mark.netns
async def test_changing_the_interface_moves_the_agents_addresses(tmp_path, ns):
    section = LoopbackConfig(interface="lo-old", kind=KIND)
    with inside(ns):
        b = LinkLoopback(StateStore(tmp_path / "state"), lambda: section)
        await b.ensure([V4])
        ns.run("ip", "addr", "add", "10.1.1.1/32", "dev", "lo-old")
        section = LoopbackConfig(interface="lo-new", kind=KIND)
        assert await b.ensure([V4]) is True
        assert await b.ensure([V4]) is False
    assert addrs(ns, "lo-new") == {f"{V4}/32"}
    assert addrs(ns, "lo-old") == {"10.1.1.1/32"}  # the old interface and the operator's address stay
    saved = json.loads((tmp_path / "state" / "addresses.json").read_text())
    assert saved["interfaces"] == {"lo-new": [f"{V4}/32"]}


@pytest.mark.netns
async def test_the_dummy_kind_on_this_kernel(tmp_path, ns):
    """Where the dummy driver is missing (this kernel) the error names the kind and
    the way out; where it exists, the default kind simply works."""
    with inside(ns):
        b = backend(tmp_path, interface="dummy0", kind="dummy")
        if kernel_has_dummy(ns):
            assert await b.ensure([V4]) is True
            assert link(ns, "dummy0")["linkinfo"]["info_kind"] == "dummy"
            return
        with pytest.raises(LoopbackError) as err:
            await b.ensure([V4])
    message = str(err.value)
    assert "'dummy0' of kind 'dummy'" in message
    assert "no 'dummy' link support" in message and "loopback.kind" in message
    assert link(ns, "dummy0") is None
    assert not (tmp_path / "state" / "addresses.json").exists()


@pytest.mark.netns
async def test_a_corrupt_state_file_is_refused_not_read_as_empty(tmp_path, ns):
    store = StateStore(tmp_path / "state")
    store.write_json("addresses.json", {"version": 1, "interfaces": {IF: ["not-an-address"]}})
    with inside(ns), pytest.raises(LoopbackError, match=r"addresses\.json.*not-an-address"):
        await backend(tmp_path).ensure([V4])


# ------------------------------------------------------------- the section


def test_section_errors_name_the_field():
    warnings: list[str] = []
    obj, problems = structure(
        LoopbackConfig,
        {"interface": "a-name-that-is-too-long", "kind": "veth", "enabled": "yes"},
        "loopback",
        warnings,
    )
    assert obj is None
    assert "loopback.kind: must be one of dummy, bridge, ifb (got 'veth')" in problems
    assert any(p.startswith("loopback.interface: must be 1-15 characters") for p in problems)
    assert any(p.startswith("loopback.enabled: expected true or false") for p in problems)
    for name in ("all", "default", "..", "bad name", "eth0:1"):
        _, problems = structure(LoopbackConfig, {"interface": name}, "loopback", warnings)
        assert problems and problems[0].startswith("loopback.interface: "), name


def test_section_defaults_and_direct_construction():
    assert LoopbackConfig() == LoopbackConfig(interface="dummy0", kind="dummy", enabled=True)
    with pytest.raises(ValueError, match="kind: must be one of"):
        LoopbackConfig(kind="vrf")


# ------------------------------------------------------ through the core


class Runs:
    """Records the loopbackSync runs the scheduler finishes."""

    def __init__(self) -> None:
        self.events: list = []
        self._changed = asyncio.Condition()

    @hookimpl
    def moenet_task_finished(self, event):
        if event.task == TASK_NAME:
            self.events.append(event)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, count: int, timeout: float = 10.0):
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.events) >= count), timeout)
        return self.events[count - 1]


def agent_config(tmp_path: Path, **node) -> dict:
    return {
        "node": {"name": "jp1", "loopbackIpv4": V4, "loopbackIpv6": V6, **node},
        "controlPlane": {"url": "http://127.0.0.1:9", "token": "t-123456"},
        "loopback": {"kind": KIND, "interface": IF},
        "state": {"directory": str(tmp_path / "state")},
    }


@pytest.mark.netns
async def test_the_task_puts_the_node_loopbacks_in_place_and_follows_a_reload(tmp_path, ns, agent_harness):
    runs = Runs()
    config = agent_config(tmp_path)
    with inside(ns):
        async with agent_harness(config, plugins=[("loopback", moenet_loopback), ("runs", runs)]) as h:
            first = await runs.wait(1)  # at start, no delay
            assert first.ok, first.error
            assert first.result["changed"] is True
            assert first.result["present"] == [f"{V4}/32", f"{V6}/128"]
            assert addrs(ns) == {f"{V4}/32", f"{V6}/128"}
            assert h.agent.status()["backends"]["loopback"]["name"] == "netlink"
            # A reload with a new IPv4 loopback: the task runs again soon, not in 5 minutes.
            path = tmp_path / "config.json"
            config["node"]["loopbackIpv4"] = "172.22.188.2"
            path.write_text(json.dumps(config))
            h.agent.config.source = str(path)
            assert await h.agent.reload() is True
            second = await runs.wait(2)
            assert second.ok, second.error
            assert second.result["changed"] is True
            assert addrs(ns) == {"172.22.188.2/32", f"{V6}/128"}
    assert link(ns)["ifalias"] == MARKER


@pytest.mark.netns
async def test_the_task_without_loopbacks_does_nothing_and_says_so_once(tmp_path, ns, agent_harness, logs):
    runs = Runs()
    config = agent_config(tmp_path)
    del config["node"]["loopbackIpv4"], config["node"]["loopbackIpv6"]
    with inside(ns):
        async with agent_harness(config, plugins=[("loopback", moenet_loopback), ("runs", runs)]) as h:
            await runs.wait(1)
            await h.agent.scheduler.run_now(TASK_NAME)
            event = await runs.wait(2)
    assert event.ok and event.result["changed"] is False and event.result["present"] == []
    assert link(ns) is None
    assert len([m for m in logs if m.startswith("no loopback address configured")]) == 1


@pytest.mark.netns
async def test_the_task_when_disabled_leaves_the_interface_alone(tmp_path, ns, agent_harness):
    runs = Runs()
    config = agent_config(tmp_path)
    config["loopback"]["enabled"] = False
    with inside(ns):
        async with agent_harness(config, plugins=[("loopback", moenet_loopback), ("runs", runs)]):
            event = await runs.wait(1)
    assert event.ok and event.result == {"enabled": False}
    assert link(ns) is None


async def test_an_invalid_section_fails_the_plugin_naming_the_field(tmp_path, agent_harness):
    config = agent_config(tmp_path)
    config["loopback"] = {"kind": "veth", "interface": IF}
    async with agent_harness(config, plugins=[("loopback", moenet_loopback)]) as h:
        record = h.agent.pm.records["loopback"]
        status = h.agent.status()
        with pytest.raises(BackendUnavailable):
            h.agent.backend("loopback")
    assert record.status == "failed"
    assert "loopback.kind: must be one of dummy, bridge, ifb (got 'veth')" in record.error
    assert TASK_NAME not in [t["name"] for t in status["tasks"]]
