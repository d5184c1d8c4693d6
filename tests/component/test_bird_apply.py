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
from pathlib import Path
from typing import Any

import helpers.bird
import pytest
from helpers.bird import U1, U2, Env, cp_data, policy, protocol_names, session, session_fields, symbol
from moenet_bird.apply import STAGING_PREFIX, TreeApplier
from moenet_bird.backend import NO_POLICY, BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.render import MARKER
from moenet_bird.testing import unchecked_intent

from moenet_core.intents import BabelInterfaceIntent, EbgpPeerIntent, IbgpOptionsIntent

env = helpers.bird.env  # a fixture

ROOT = Path(__file__).resolve().parents[2]
U3 = "0b5e8a52-3c1e-4e5a-9a51-000000000003"


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
        b.declare("mesh", {"mesh": BabelInterfaceIntent(pattern="mesh-*", type="tunnel")}),
        b.declare("ibgp", {"options": IbgpOptionsIntent(enabled=True)}),
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
    # What a plugin that builds its intents around their checks, or declares
    # something else entirely, could send: BIRD's own rules still hold.
    r = await b.declare(
        "sessions",
        {
            U1: session(),
            U2: unchecked_intent(EbgpPeerIntent, **session_fields(4242420003, 3, latency=12)),
            U3: unchecked_intent(
                EbgpPeerIntent, **session_fields(4242420004, 4, neighbor_link_local='fe80::1"; }')
            ),
            "not-an-intent": {"asn": 4242420005, "neighborIpv4": "172.20.1.5"},  # type: ignore[dict-item]
            "reserved-asn": session(64500, 6),
        },
    )
    assert r.ok and r.changed
    assert set(r.rejected) == {U2, U3, "not-an-intent", "reserved-asn"}
    assert f"sessions[{U2}].latency: must be 1-9" in r.rejected[U2]
    assert "neighborLinkLocal" in r.rejected[U3]
    assert "sessions[not-an-intent]: dict is not a routing intent" in r.rejected["not-an-intent"]
    assert "sessions[reserved-asn].asn: must be a usable 32-bit AS number" in r.rejected["reserved-asn"]
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


@pytest.mark.netns
async def test_a_state_file_of_the_previous_version_restores_the_same_tree(env: Env) -> None:
    """applied.json written before intents (camelCase payloads per owner, ``uuid`` in
    the session's): converted on restore, the upgraded agent renders the same tree
    and reconfigures nothing, before any owner has declared again."""
    from moenet_bird.backend import STATE_FILE

    from moenet_core.intents import IbgpNeighborIntent

    b = await env.backend()
    data = cp_data()
    assert (await b.set_policy(policy(data), "h", raw=data)).ok
    neighbour = IbgpNeighborIntent(
        node_id=4, node_name="tyo1", loopback_ipv6="fd42:4242:1234::2", rr_client=True
    )
    options = IbgpOptionsIntent(enabled=True, route_reflector=True)
    babel = BabelInterfaceIntent(pattern="mesh-*", rtt_cost=96)
    assert (await b.declare("sessions", {U1: session(), U2: session(4242420003, 3, disabled=True)})).ok
    assert (await b.declare("ibgp", {"options": options, "4": neighbour})).ok
    assert (await b.declare("mesh", {"mesh-*": babel})).ok
    protocols = {o: dict(b.fragment_protocols(o)) for o in ("sessions", "ibgp")}
    await b.aclose()
    env.backends.remove(b)
    before, configures = env.inodes(), env.configures

    old_session = {
        "asn": 4242420002,
        "latency": 3,
        "bandwidth": 25,
        "name": "example",
        "interface": "dn42-2",
        "neighborLinkLocal": "fe80::2",
        "localLinkLocal": "fe80::1234",
    }
    env.state.write_json(
        STATE_FILE,
        {
            "configHash": "h",
            "policy": data,
            "fragments": {
                "sessions": {
                    U1: {"uuid": U1, **old_session},
                    U2: {
                        **old_session,
                        "asn": 4242420003,
                        "interface": "dn42-3",
                        "neighborLinkLocal": "fe80::3",
                        "disabled": True,
                    },
                },
                "ibgp": {
                    "options": {"enabled": True, "routeReflector": True},
                    "4": {
                        "nodeId": 4,
                        "nodeName": "tyo1",
                        "loopbackIpv4": "",
                        "loopbackIpv6": "fd42:4242:1234::2",
                        "isRr": False,
                        "rrClient": True,
                    },
                },
                "mesh": {"mesh-*": {"pattern": "mesh-*", "type": "tunnel", "rttCost": 96}},
            },
        },
    )
    b2 = await env.backend()
    assert {o: dict(b2.fragment_protocols(o)) for o in ("sessions", "ibgp")} == protocols
    r = await b2.set_policy(policy(data), "h", raw=data)
    assert (r.ok, r.changed) == (True, False), r
    assert env.inodes() == before and env.configures == configures
    assert b2.status_info()["owners"] == {"ibgp": 1, "mesh": 1, "sessions": 2}
    assert "warnings" not in b2.status_info() or not b2.status_info()["warnings"]
    # The owners declare their intents again: still nothing to do.
    assert (
        await b2.declare("sessions", {U1: session(), U2: session(4242420003, 3, disabled=True)})
    ).changed is False
    assert (await b2.declare("ibgp", {"options": options, "4": neighbour})).changed is False
    assert (await b2.declare("mesh", {"mesh-*": babel})).changed is False
    assert env.configures == configures
    # ... and the state is saved in the new form.
    saved = env.state.read_json(STATE_FILE)["fragments"]
    assert saved["sessions"][U1]["kind"] == "ebgpPeer" and "uuid" not in saved["sessions"][U1]
    assert (
        saved["ibgp"]["options"]["kind"] == "ibgpOptions"
        and saved["mesh"]["mesh-*"]["kind"] == "babelInterface"
    )
