"""Apply with rollback and the ``routing`` backend against a real BIRD 3 in a namespace.

Each test starts BIRD (``moenet_bird.testing.BirdDaemon``) on a throwaway
bootstrap file; the agent's tree lives in ``tmp_path/etc`` and is loaded by
explicit path. Configure calls are counted on the client (``configure`` is
wrapped), so "nothing happened" is asserted on BIRD traffic, not on timing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from moenet_bird.apply import STAGING_PREFIX, TreeApplier
from moenet_bird.backend import NO_POLICY, BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.policy import parse_bird_config
from moenet_bird.render import MARKER
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.state import StateStore
from moenet_core.testing import NetNS

ROOT = Path(__file__).resolve().parents[1]
U1 = "0b5e8a52-3c1e-4e5a-9a51-000000000001"
U2 = "0b5e8a52-3c1e-4e5a-9a51-000000000002"
U3 = "0b5e8a52-3c1e-4e5a-9a51-000000000003"


def cp_data(config_hash: str = "3f2a9c", **policy_over: Any) -> dict[str, Any]:
    """A CP bird-config answer without RPKI (no DNS in a namespace)."""
    return sample_bird_config(config_hash=config_hash, policy=policy_over)


def session(asn: int = 4242420002, n: int = 2, **kw: Any) -> dict[str, Any]:
    """A link-local MP-BGP session payload (the usual DN42 WireGuard peering)."""
    return {
        "asn": asn,
        "latency": 3,
        "bandwidth": 25,
        "name": "example",
        "interface": f"dn42-{n}",
        "neighborLinkLocal": f"fe80::{n}",
        "localLinkLocal": "fe80::1234",
        **kw,
    }


def symbol(uuid: str, asn: int) -> str:
    from moenet_bird.policy import EbgpPeer

    return EbgpPeer(uuid=uuid, asn=asn, latency=1, bandwidth=21).symbol


class Env:
    """BIRD in a namespace, a counted client, a backend on ``tmp_path/etc``."""

    def __init__(self, daemon: BirdDaemon, tmp: Path) -> None:
        self.daemon = daemon
        self.tmp = tmp
        self.etc = tmp / "etc"
        self.state = StateStore(tmp / "state")
        self.configures = 0
        self.backends: list[BirdRoutingBackend] = []

    def client(self) -> BirdClient:
        client = BirdClient(str(self.daemon.socket))
        real = client.configure

        async def counted(*a: Any, **kw: Any) -> Any:
            self.configures += 1
            return await real(*a, **kw)

        client.configure = counted  # type: ignore[method-assign]
        return client

    async def backend(self, **kw: Any) -> BirdRoutingBackend:
        b = BirdRoutingBackend(self.client(), str(self.etc), state=self.state, **kw)
        await b.start()
        self.backends.append(b)
        return b

    def files(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.etc)): p.read_bytes()
            for p in sorted(self.etc.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }

    def inodes(self) -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(self.etc)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(self.etc.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
async def env(netns: Callable[[], NetNS], tmp_path: Path) -> AsyncIterator[Env]:
    with BirdDaemon(netns(), tmp_path / "bird").start() as daemon:
        e = Env(daemon, tmp_path)
        try:
            yield e
        finally:
            for b in e.backends:
                await b.aclose()


async def protocol_names(b: BirdRoutingBackend) -> set[str]:
    return {p.name for p in await b.protocols()}


def policy(data: dict[str, Any] | None = None) -> Any:
    return parse_bird_config(data or cp_data())[0]


# ------------------------------------------------------------------ apply


@pytest.mark.netns
async def test_a_declare_before_the_first_policy_waits_for_it(env: Env) -> None:
    """A fresh node: sessionSync's first declare races birdConfigSync's first policy.
    The declare waits for the policy and gets the real result (no false failure)."""
    b = await env.backend()
    waiting = asyncio.ensure_future(b.declare("sessions", {U1: session()}))
    await asyncio.sleep(0)  # let the declare reach its wait (no policy yet)
    assert not waiting.done() and env.configures == 0
    data = cp_data()
    r1 = await b.set_policy(policy(data), data["configHash"], raw=data)
    r0 = await waiting
    assert r1.ok and r0.ok and r0.error is None, (r0, r1)
    assert env.configures == 1  # one coalesced apply for both
    assert any(name.startswith("peers/dn42_") for name in env.files())


@pytest.mark.netns
async def test_a_valid_tree_applies_and_the_same_input_again_costs_nothing(env: Env) -> None:
    b = await env.backend(policy_wait=0)
    r0 = await b.declare("sessions", {U1: session()})
    assert (r0.ok, r0.changed, r0.error) == (False, False, NO_POLICY)  # stored, applied with the policy
    assert env.configures == 0 and not env.etc.exists()

    data = cp_data()
    r1 = await b.set_policy(policy(data), data["configHash"], raw=data)
    assert (r1.ok, r1.changed, r1.error) == (True, True, None)
    assert env.configures == 1
    files = env.files()
    assert {
        "bird.conf",
        "filters.conf",
        "peers/00_moenet.conf",
        f"peers/{symbol(U1, 4242420002)}.conf",
    } <= set(files)
    assert all(v.startswith(MARKER.encode()) for v in files.values())
    assert not [p for p in env.etc.iterdir() if p.name.startswith(STAGING_PREFIX)]

    r2 = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
    assert (r2.ok, r2.changed) == (True, True)
    names = await protocol_names(b)
    assert {symbol(U1, 4242420002), symbol(U2, 4242420003)} <= names
    states = {p.name: p for p in await b.protocols()}
    assert states[symbol(U2, 4242420003)].proto == "BGP"
    assert states[symbol(U2, 4242420003)].state in ("start", "up")

    before, configures = env.inodes(), env.configures
    t0 = time.perf_counter()
    r3 = await b.declare("sessions", {U2: session(4242420003, 3), U1: session()})
    elapsed = time.perf_counter() - t0
    assert (r3.ok, r3.changed, r3.error) == (True, False, None)
    assert env.inodes() == before, "an unchanged apply must not touch a file"
    assert env.configures == configures, "an unchanged apply must not reconfigure"
    print(f"unchanged apply (render + compare): {elapsed * 1000:.1f} ms")
    assert elapsed < 1.0

    # Dropping a session removes its file and its protocol.
    r4 = await b.declare("sessions", {U1: session()})
    assert (r4.ok, r4.changed) == (True, True)
    assert f"peers/{symbol(U2, 4242420003)}.conf" not in env.files()
    assert symbol(U2, 4242420003) not in await protocol_names(b)


@pytest.mark.netns
async def test_bird_rejecting_the_staged_tree_leaves_the_old_config_live(env: Env, tmp_path: Path) -> None:
    override = tmp_path / "templates"
    override.mkdir()
    b = await env.backend(template_dir=str(override))
    data = cp_data()
    assert (await b.set_policy(policy(data), "h1", raw=data)).ok
    assert (await b.declare("sessions", {U1: session()})).ok
    before, live_protocols, configures = env.files(), await protocol_names(b), env.configures

    # An operator template with a syntax error on its 3rd body line (file line 4).
    shipped = (ROOT / "templates/bird/peer.conf.j2").read_text()
    (override / "peer.conf.j2").write_text("# broken\n\nthis is not bird syntax;\n" + shipped)
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
    assert (r.ok, r.changed) == (False, False)
    bad = env.etc / f"peers/{symbol(U1, 4242420002)}.conf"
    assert r.error is not None and r.error.startswith(f"{bad}:4: "), r.error
    assert "syntax error" in r.error and STAGING_PREFIX not in r.error
    assert env.files() == before, "a rejected tree must leave every live file byte-identical"
    assert env.configures == configures, "nothing is sent to BIRD beyond configure check"
    assert await protocol_names(b) == live_protocols
    assert not [p for p in env.etc.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert b.status_info()["lastApplyError"] == r.error


@pytest.mark.netns
async def test_a_configure_refused_after_the_check_restores_the_previous_files(
    env: Env, tmp_path: Path
) -> None:
    override = tmp_path / "templates"
    override.mkdir()
    b = await env.backend(template_dir=str(override))
    data = cp_data()
    assert (await b.set_policy(policy(data), "h1", raw=data)).ok
    assert (await b.declare("sessions", {U1: session()})).ok
    before, live_protocols = env.files(), await protocol_names(b)

    # Simulate the race the check cannot see (the tree changed between check and configure):
    # the check passes, BIRD then refuses the files actually swapped in.
    async def passes(*a: Any, **kw: Any) -> Any:
        return None

    b.applier.client.check = passes  # type: ignore[method-assign]
    shipped = (ROOT / "templates/bird/peer.conf.j2").read_text()
    (override / "peer.conf.j2").write_text("oops;\n" + shipped)
    configures = env.configures
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
    assert (r.ok, r.changed) == (False, False)
    assert r.error is not None and r.error.startswith(f"{env.etc}/peers/"), r.error
    assert env.files() == before, "the previous files are restored exactly (and the new one removed)"
    assert env.configures == configures + 2, "the refused configure, then one from the restored files"
    assert b.applier.stats.rollbacks == 1 and not b.applier.pending_configure
    assert await protocol_names(b) == live_protocols


@pytest.mark.netns
async def test_an_operator_file_in_the_way_is_refused_and_untouched(env: Env) -> None:
    env.etc.mkdir()
    (env.etc / "peers").mkdir()
    mine = b'log syslog all;\nrouter id 10.0.0.1;\ninclude "moenet.conf";\n'
    (env.etc / "bird.conf").write_bytes(mine)
    (env.etc / "filters.conf").write_bytes(b"# operator's filters\n")
    b = await env.backend()
    data = cp_data()
    r = await b.set_policy(policy(data), "h", raw=data)
    assert (r.ok, r.changed) == (False, False)
    assert r.error is not None and f"refusing to overwrite {env.etc / 'filters.conf'}" in r.error
    assert env.files() == {"bird.conf": mine, "filters.conf": b"# operator's filters\n"}, "no partial write"
    assert env.configures == 0


#: An operator's own bird.conf: own router id, device and kernel protocols, one
#: file of their own (relative include), the agent's aggregator, then something of
#: theirs that uses the agent's symbols.
OPERATOR_CONF = """\
# The operator's bird.conf.
router id 192.0.2.1;
protocol device {{ scan time 5; }}
include "local.conf";
include "{aggregator}";
protocol kernel op_kernel4 {{
  ipv4 {{ import none; export filter {{ krt_prefsrc = OWNIP; reject; }}; }};
}}
"""


@pytest.mark.netns
@pytest.mark.parametrize("form", ["absolute", "relative"])
async def test_an_operator_bird_conf_that_includes_moenet_conf_is_kept_and_loads_the_agent(
    env: Env, form: str
) -> None:
    env.etc.mkdir()
    aggregator = str(env.etc / "moenet.conf") if form == "absolute" else "moenet.conf"
    mine = OPERATOR_CONF.format(aggregator=aggregator).encode()
    local = b"protocol static op_static { ipv4; route 192.0.2.0/24 unreachable; }\n"
    (env.etc / "bird.conf").write_bytes(mine)
    (env.etc / "local.conf").write_bytes(local)
    b = await env.backend()
    data = cp_data()
    r = await b.set_policy(policy(data), "h", raw=data)
    assert (r.ok, r.changed, r.error) == (True, True, None)
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
    assert (r.ok, r.changed, r.error) == (True, True, None)
    files = env.files()
    assert files["bird.conf"] == mine and files["local.conf"] == local, "the operator's files are untouched"
    assert {"moenet.conf", "filters.conf", f"peers/{symbol(U1, 4242420002)}.conf"} <= set(files)
    assert all(
        v.startswith(MARKER.encode()) for k, v in files.items() if k not in ("bird.conf", "local.conf")
    )
    names = await protocol_names(b)
    assert {symbol(U1, 4242420002), symbol(U2, 4242420003), "own4", "moenet_lo"} <= names
    assert {"op_kernel4", "op_static"} <= names and "kernel4" not in names
    # Unchanged: nothing written, no configure, the operator's file still the same.
    before, configures = env.inodes(), env.configures
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
    assert (r.ok, r.changed) == (True, False)
    assert env.inodes() == before and env.configures == configures


@pytest.mark.netns
async def test_an_operator_bird_conf_without_the_include_is_refused_clearly(env: Env) -> None:
    env.etc.mkdir()
    mine = b'router id 192.0.2.1;\nprotocol device {}\ninclude "peers/*.conf";\n'
    (env.etc / "bird.conf").write_bytes(mine)
    b = await env.backend()
    data = cp_data()
    r = await b.set_policy(policy(data), "h", raw=data)
    assert (r.ok, r.changed) == (False, False)
    assert r.error is not None and "does not include the agent's files" in r.error, r.error
    assert f'include "{env.etc / "moenet.conf"}";' in r.error
    assert env.files() == {"bird.conf": mine} and env.configures == 0


@pytest.mark.netns
async def test_a_session_bird_rejects_is_dropped_and_the_rest_applies(env: Env, tmp_path: Path) -> None:
    """A fragment that passes validation but BIRD rejects: reported, left out, the rest goes live."""
    override = tmp_path / "templates"
    override.mkdir()
    shipped = (ROOT / "templates/bird/peer.conf.j2").read_text()
    # Only AS4242420003's file is broken (BIRD: syntax error on its file line 2).
    (override / "peer.conf.j2").write_text(
        "{% if p.asn == 4242420003 %}this is not bird syntax;{% endif %}\n" + shipped
    )
    b = await env.backend(template_dir=str(override), policy_wait=0)
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3), U3: session(4242420004, 4)})
    data = cp_data("h1", asPathMaxLen=20)
    r = await b.set_policy(policy(data), "h1", raw=data)
    assert (r.ok, r.changed, r.error) == (True, True, None), r
    bad = env.etc / f"peers/{symbol(U2, 4242420003)}.conf"
    assert set(r.rejected) == {U2} and r.rejected[U2].startswith(f"{bad}:2: syntax error"), r.rejected
    assert b.config_hash == "h1" and "DN42_MAX_PATH = 20;" in env.files()["moenet.conf"].decode()
    assert not bad.exists()
    names = await protocol_names(b)
    assert {symbol(U1, 4242420002), symbol(U3, 4242420004)} <= names and symbol(U2, 4242420003) not in names
    assert b.status_info()["rejected"]["sessions"] == {U2: r.rejected[U2]}
    assert env.configures == 1, "one configure: the retry's"

    # The owner declares again: still rejected, nothing else changes and nothing is reconfigured.
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3), U3: session(4242420004, 4)})
    assert (r.ok, r.changed) == (True, False) and set(r.rejected) == {U2}
    assert env.configures == 1

    # The template is fixed: the session comes back on the next apply.
    (override / "peer.conf.j2").write_text(shipped)
    r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3), U3: session(4242420004, 4)})
    assert (r.ok, r.changed, dict(r.rejected)) == (True, True, {})
    assert symbol(U2, 4242420003) in await protocol_names(b)
    assert "rejected" not in b.status_info() or not b.status_info()["rejected"]


@pytest.mark.netns
async def test_concurrent_declares_share_one_configure(env: Env) -> None:
    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    configures = env.configures
    results = await asyncio.gather(
        b.declare("sessions", {U1: session()}),
        b.declare("mesh", {"mesh": {"pattern": "mesh-*", "type": "tunnel"}}),
        b.declare("ibgp", {"options": {"enabled": True}}),
        b.set_maintenance(True),
        b.declare("sessions", {U1: session(), U2: session(4242420003, 3)}),
    )
    assert all(r.ok and r.changed for r in results), results
    assert env.configures == configures + 1
    assert {symbol(U1, 4242420002), symbol(U2, 4242420003)} <= await protocol_names(b)
    assert "mesh-*" in env.files()["babel.conf"].decode()


@pytest.mark.netns
async def test_an_invalid_fragment_is_rejected_and_the_valid_ones_apply(env: Env) -> None:
    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    r = await b.declare(
        "sessions",
        {
            U1: session(),
            U2: session(4242420003, 3, latency=12),
            U3: {**session(4242420004, 4), "neighborLinkLocal": 'fe80::1"; }'},
            "not-a-uuid": session(4242420005, 5),
        },
    )
    assert r.ok and r.changed
    assert set(r.rejected) == {U2, U3, "not-a-uuid"}
    assert f"sessions[{U2}].latency: must be 1-9" in r.rejected[U2]
    assert "neighborLinkLocal" in r.rejected[U3]
    names = await protocol_names(b)
    assert symbol(U1, 4242420002) in names
    assert not any(n.startswith("dn42_4242420003") for n in names)
    assert b.status_info()["rejected"]["sessions"].keys() == r.rejected.keys()


@pytest.mark.netns
async def test_maintenance_drains_the_exports_and_restores_them(env: Env) -> None:
    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    drain = "bgp_community.add((65535, 0));"
    normal = env.files()["filters.conf"].decode()
    assert drain not in normal
    r = await b.set_maintenance(True)
    assert r.ok and r.changed
    drained = env.files()["filters.conf"].decode()
    assert drained.count(drain) == 2  # eBGP and iBGP exports carry GRACEFUL_SHUTDOWN
    r = await b.set_maintenance(False)
    assert r.ok and r.changed
    assert env.files()["filters.conf"].decode() == normal


@pytest.mark.netns
async def test_a_restarted_backend_with_unchanged_input_writes_and_reconfigures_nothing(env: Env) -> None:
    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    assert (await b.declare("sessions", {U1: session()})).ok
    await b.aclose()
    env.backends.remove(b)
    before, configures = env.inodes(), env.configures

    b2 = await env.backend()  # a new agent: state restored from disk
    assert b2.config_hash == "h"
    # The sync runs first, before any owner has declared again: the peer must survive.
    r = await b2.set_policy(policy(data), "h", raw=data)
    assert (r.ok, r.changed) == (True, False)
    r = await b2.declare("sessions", {U1: session()})
    assert (r.ok, r.changed) == (True, False)
    assert env.inodes() == before and env.configures == configures
    # restart_protocol: only the agent's own protocol names.
    await b2.restart_protocol(symbol(U1, 4242420002))
    with pytest.raises(ValueError, match="not a BIRD protocol the agent owns"):
        await b2.restart_protocol("device1")


async def test_with_bird_down_the_tree_is_parse_checked_by_bird_p(tmp_path: Path) -> None:
    """No daemon: ``bird -p`` judges the tree; a good one is written and a configure stays pending."""
    etc = tmp_path / "etc"
    override = tmp_path / "templates"
    override.mkdir()
    client = BirdClient(str(tmp_path / "nothing.ctl"))
    b = BirdRoutingBackend(client, str(etc), template_dir=str(override))
    await b.start()  # BIRD down at start: logged, not fatal
    try:
        data = cp_data()
        r = await b.set_policy(policy(data), "h", raw=data)
        assert (r.ok, r.changed) == (False, True), r
        assert "could not be told to load it" in (r.error or "")
        assert b.applier.pending_configure and (etc / "bird.conf").read_text().startswith(MARKER)
        before = {p.name: p.read_bytes() for p in etc.rglob("*.conf")}
        (override / "filters.conf.j2").write_text("broken {\n")
        r = await b.declare("sessions", {U1: session()})
        assert not r.ok and (r.error or "").startswith(f"{etc}/filters.conf:2: "), r.error
        assert {p.name: p.read_bytes() for p in etc.rglob("*.conf")} == before
    finally:
        await b.aclose()


async def test_with_bird_down_a_session_bird_p_rejects_is_dropped(tmp_path: Path) -> None:
    """The ``bird -p`` path names the file too, so the one bad session is left out there as well."""
    etc = tmp_path / "etc"
    override = tmp_path / "templates"
    override.mkdir()
    shipped = (ROOT / "templates/bird/peer.conf.j2").read_text()
    (override / "peer.conf.j2").write_text("{% if p.asn == 4242420003 %}oops;{% endif %}\n" + shipped)
    b = BirdRoutingBackend(
        BirdClient(str(tmp_path / "nothing.ctl")), str(etc), template_dir=str(override), policy_wait=0
    )
    await b.start()
    try:
        await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
        data = cp_data()
        r = await b.set_policy(policy(data), "h", raw=data)
        assert (r.ok, r.changed) == (False, True) and "could not be told to load it" in (r.error or "")
        bad = etc / f"peers/{symbol(U2, 4242420003)}.conf"
        assert set(r.rejected) == {U2} and r.rejected[U2].startswith(f"{bad}:2: "), r.rejected
        assert (etc / f"peers/{symbol(U1, 4242420002)}.conf").exists() and not bad.exists()
    finally:
        await b.aclose()


async def test_tree_applier_refuses_paths_outside_its_directories(tmp_path: Path) -> None:
    applier = TreeApplier(tmp_path, BirdClient(str(tmp_path / "x.ctl")))
    r = await applier.apply(lambda: {"../evil.conf": MARKER + "\n"})
    assert not r.ok and "refusing to write" in (r.error or "")
    r = await applier.apply(lambda: {"bird.conf": "no marker\n"})
    assert not r.ok and "lacks the ownership marker" in (r.error or "")
    assert os.listdir(tmp_path) == []
