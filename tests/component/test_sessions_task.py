"""``sessionSync`` end to end on one node: real wireguard-go, nftables and BIRD 3.

Everything runs inside a throwaway network namespace (the agent, the fake CP and
BIRD), so tunnels, the firewall set and BGP protocols are real and leave nothing
on the host. Tunnel endpoints point at TEST-NET-1: no handshake is needed for
anything asserted here. Runs are driven with ``scheduler.run_now``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from helpers.sessions import KEY, node, symbol, uid
from moenet_sessions.config import SessionsConfig
from moenet_sessions.task import TASK_NAME

from moenet_core.cli import render_plan
from moenet_core.models import SessionStatus
from moenet_core.reconcile import plan_route
from moenet_core.testing import NetNS

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PSK = base64.b64encode(b"\x09" * 32).decode()
WITH_PSK = {"publicKey": KEY, "presharedKey": PSK}


async def test_setup_unchanged_outbox_delete_and_hostile(netns: Callable[[], NetNS], tmp_path: Path) -> None:
    async with node(netns, tmp_path) as n:
        n.cp.set("sessions", [n.session(1, credential=WITH_PSK)])
        r = await n.sync()
        assert r["failed"] == {} and r["declares"] == 1, r
        link = n.link(1)
        assert link is not None and link.get("ifalias") == "moenet-agent", link
        assert "21001" in n.ports()
        assert len(n.peer_files(1)) == 1
        assert symbol(1) in await n.protocols()
        assert n.modifies() == [{"uuid": uid(1), "status": 1}]
        psk = Path(n.h.agent.config.state.directory) / "psk" / f"{n.ifname(1)}.psk"
        assert psk.read_text().strip() == PSK and psk.stat().st_mode & 0o777 == 0o600
        assert [(e.uuid, e.old, e.new) for e in n.events] == [(uid(1), None, SessionStatus.ACTIVE)]

        # Unchanged (the CP now shows ACTIVE, as a real one would): nothing at all happens.
        n.cp.set("sessions", [n.session(1, 1, credential=WITH_PSK)])
        configures = n.routing.applier.stats.configures
        ifindex = link["ifindex"]
        files = {p: p.stat().st_mtime_ns for p in (n.etc / "peers").iterdir()}
        started = time.monotonic()
        r = await n.sync()
        took = time.monotonic() - started
        assert (r["tunnelWrites"], r["firewallSyncs"], r["declares"], r["reports"]) == (0, 0, 0, 0), r
        assert r["changed"] == {}
        assert n.routing.applier.stats.configures == configures
        assert n.link(1)["ifindex"] == ifindex  # type: ignore[index]
        assert {p: p.stat().st_mtime_ns for p in (n.etc / "peers").iterdir()} == files
        assert len(n.modifies()) == 1
        print(f"unchanged sessionSync, 1 session: {r['seconds'] * 1000:.1f} ms (run_now both: {took:.3f} s)")

        # A hostile session: ERROR with the reason, never in a BIRD file; the good one stays.
        evil = n.session(2, interface="../../x", description='x"; } protocol static evil {')
        n.cp.fail("modify", 1, status=503)
        n.cp.set("sessions", [n.session(1, 1, credential=WITH_PSK), evil])
        r = await n.sync()
        assert r["reports"] == 1 and r["delivered"] == 0 and r["outbox"] == 1, r
        assert n.task.moenet_status_info()["outbox"] == 1
        # The CP is back: the queued report is delivered by the next run.
        r = await n.sync()
        assert r["delivered"] == 1 and r["outbox"] == 0, r
        # Two attempts of the same report: the refused one, then the delivered one.
        first, bad = [m for m in n.modifies() if m["uuid"] == uid(2)]
        assert first == bad
        assert bad["status"] == 2 and "interface" in bad["lastError"], bad
        tree = "".join(p.read_text() for p in n.etc.rglob("*.conf"))
        assert "evil" not in tree and uid(2) not in tree and n.peer_files(2) == []
        assert symbol(1) in await n.protocols()

        # Delete: tunnel, port, peer file and PSK gone, then {status 0, removed}.
        n.cp.set("sessions", [n.session(1, 5)])
        r = await n.sync()
        assert r["failed"] == {}, r
        assert n.link(1) is None and "21001" not in n.ports() and n.peer_files(1) == []
        assert symbol(1) not in await n.protocols() and not psk.exists()
        assert n.modifies()[-1] == {"uuid": uid(1), "status": 0, "removed": True}
        assert n.events[-1].removed and n.events[-1].uuid == uid(1)
        # The CP accepted the confirmation yet still shows the session queued for
        # delete: the confirmation is repeated (the truth, once per cycle), nothing touched.
        r = await n.sync()
        assert (r["tunnelWrites"], r["declares"], r["reports"]) == (0, 0, 1), r
        assert n.modifies()[-1] == {"uuid": uid(1), "status": 0, "removed": True}
        # Once the CP has dropped it, nothing more.
        n.cp.set("sessions", [])
        r = await n.sync()
        assert (r["tunnelWrites"], r["declares"], r["reports"]) == (0, 0, 0), r


async def test_bird_rejects_one_session(netns: Callable[[], NetNS], tmp_path: Path) -> None:
    shipped = (ROOT / "templates/bird/peer.conf.j2").read_text()
    broken = "{% if p.asn == 4242420003 %}this is not bird syntax;{% endif %}\n" + shipped
    async with node(netns, tmp_path, template=broken) as n:
        n.cp.set("sessions", [n.session(1), n.session(3)])
        r = await n.sync()
        assert set(r["failed"]) == {uid(3)}, r
        by_uuid = {m["uuid"]: m for m in n.modifies()}
        assert by_uuid[uid(1)] == {"uuid": uid(1), "status": 1}
        failed = by_uuid[uid(3)]
        assert failed["status"] == 6 and "syntax error" in failed["lastError"], failed
        # Nothing of it is left: no tunnel, no port, no file, no protocol; the other stays.
        assert n.link(3) is None and "21003" not in n.ports() and n.peer_files(3) == []
        assert symbol(3) not in await n.protocols()
        assert n.link(1) is not None and "21001" in n.ports() and symbol(1) in await n.protocols()
        assert uid(3) not in n.routing.status_info().get("rejected", {}).get("sessions", {})
        # The CP records SETUP_FAILED: nothing is retried or re-reported.
        n.cp.set("sessions", [n.session(1, 1), n.session(3, 6, lastError=failed["lastError"])])
        count = len(n.modifies())
        r = await n.sync()
        assert (r["tunnelWrites"], r["declares"], r["reports"]) == (0, 0, 0), r
        assert len(n.modifies()) == count

        # The CP is down: the saved answer is served, nothing is torn down.
        n.cp.fail("sessions", 1, status=503)
        r = await n.sync()
        assert r["answer"] == "saved" and "unreachable" in r["problem"], r
        assert (r["tunnelWrites"], r["declares"]) == (0, 0) and n.link(1) is not None
        # An answer that is wrong as a whole: refused with a clear error, nothing removed.
        n.cp.set("sessions", {"not": "a list"})
        ev = await n.h.agent.scheduler.run_now("sessionSync")
        assert not ev.ok and ev.error is not None and "invalid sessions answer" in ev.error, ev
        assert n.link(1) is not None and symbol(1) in await n.protocols()


async def test_guard_refuses_an_empty_answer_and_20_session_timing(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    async with node(netns, tmp_path) as n:
        count = 20
        n.cp.set("sessions", [n.session(i) for i in range(1, count + 1)])
        r = await n.sync()
        assert r["failed"] == {} and len(n.modifies()) == count, r
        n.cp.set("sessions", [n.session(i, 1) for i in range(1, count + 1)])
        r = await n.sync()
        assert (r["tunnelWrites"], r["declares"], r["reports"]) == (0, 0, 0), r
        print(f"unchanged sessionSync, {count} sessions: {r['seconds'] * 1000:.1f} ms")

        # The plan route's view of an unchanged node: nothing to do.
        preview = await n.task.preview()
        assert preview["empty"] is True and "no session changes" in render_plan(preview)
        resp = await plan_route(TASK_NAME).handler(
            make_mocked_request("GET", "/plugins/sessions/plan"), n.h.agent.context("sessions")
        )
        assert isinstance(resp, web.Response) and resp.text is not None
        assert json.loads(resp.text) == preview

        # An empty answer would remove everything: refused, nothing removed, visible in /status.
        n.cp.set("sessions", [])
        preview = await n.task.preview()
        assert preview["system"]["guard"]["refused"] is True
        r = await n.sync()
        assert r["guard"]["refused"] is True and r["tunnelWrites"] == 0 and r["declares"] == 0, r
        assert all(n.link(i) is not None for i in range(1, count + 1))
        assert len(list((n.etc / "peers").glob("dn42_*.conf"))) == count
        [info] = [p["info"] for p in n.h.agent.status()["plugins"] if p["name"] == "sessions"]
        assert info["guardRefused"] is True and len(info["guard"]["withheld"]) == count
        digest = info["guard"]["digest"]
        assert "GUARD REFUSED" in render_plan(preview) and digest in render_plan(preview)

        # The operator allows exactly this removal: everything goes, cleanly.
        # (as a config reload would set sessions.allowRemoval)
        section = n.h.agent.plugin_section("sessions")
        assert isinstance(section, SessionsConfig)
        section.allow_removal = digest
        r = await n.sync()
        assert r["failed"] == {} and r["declares"] == 1, r
        assert all(n.link(i) is None for i in range(1, count + 1))
        assert list((n.etc / "peers").glob("dn42_*.conf")) == [] and "21001" not in n.ports()


async def test_a_requeue_the_agent_never_saw_is_reported_again(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    """The CP accepts ACTIVE, then re-queues the session (1 -> 4) before the agent's
    next fetch: the agent only ever sees 4. It must report ACTIVE again, not take
    the unchanged observation for "the CP has not processed the report yet"."""
    async with node(netns, tmp_path) as n:
        n.cp.set("sessions", [n.session(1, 4)])
        await n.sync()
        assert n.modifies() == [{"uuid": uid(1), "status": 1}]
        r = await n.sync()  # still 4: the CP contradicts the accepted report
        assert r["reports"] == 1 and r["delivered"] == 1, r
        assert n.modifies()[-1] == {"uuid": uid(1), "status": 1}
        # Once the CP agrees, nothing more is said.
        n.cp.set("sessions", [n.session(1, 1)])
        r = await n.sync()
        assert r["reports"] == 0 and len(n.modifies()) == 2, r
        # An undelivered report is not repeated while the CP shows what it showed
        # when the report was made: the outbox holds it.
        n.cp.set("sessions", [n.session(1, 4)])
        n.cp.fail("modify", 1, status=503)
        r = await n.sync()
        assert r["reports"] == 1 and r["delivered"] == 0, r
        r = await n.sync()
        assert r["reports"] == 0 and r["delivered"] == 1, r


async def test_sessions_without_link_local_and_own_as(netns: Callable[[], NetNS], tmp_path: Path) -> None:
    """IPv4-only and IPv6-ULA-only sessions are set up (BIRD accepts them); a session
    with the node's own AS is refused up front as ERROR, never reaching BIRD."""
    async with node(netns, tmp_path) as n:
        v4 = n.session(1, ipv6LinkLocal=None, ipv4="172.20.9.1")
        ula = n.session(2, ipv6LinkLocal=None, ipv6="fd00:9::2")
        own = n.session(3, asn=4242429999)
        n.cp.set("sessions", [v4, ula, own])
        r = await n.sync()
        assert r["failed"] == {}, r
        reports = {m["uuid"]: m for m in n.modifies()}
        assert reports[uid(1)] == {"uuid": uid(1), "status": 1}
        assert reports[uid(2)] == {"uuid": uid(2), "status": 1}
        assert reports[uid(3)]["status"] == 2 and "own AS" in reports[uid(3)]["lastError"]
        protocols = await n.protocols()
        assert symbol(1) + "_v4" in protocols and symbol(2) in protocols
        assert list((n.etc / "peers").glob("dn42_4242429999_*")) == [] and n.link(3) is None
