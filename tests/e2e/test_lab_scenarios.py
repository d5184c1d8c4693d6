"""End-to-end scenarios on the two-node lab (contrib/lab/lab.py), issue 5's "Tests (in CI)":
restart without flap, a tunnel deleted by hand, SIGKILL mid-apply, a CP outage with the
outbox delivering afterwards, and a session deleted by the CP.

Each test gets its own fresh lab (both sessions ACTIVE, BGP Established) and tears it
down, checking nothing is left behind. Synchronisation is on events where one exists
(requests arriving at a node's FakeControlPlane, agent processes exiting); BIRD's and the
kernel's state have no push interface and are polled, bounded (``lab.poll``/``_until``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import helpers.lab
import pytest
from helpers.lab import _load_lab, _run, _until, agent_status, api, bgp_protocols, bgp_since, links, tunnel

lab = helpers.lab.lab  # a fixture

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, pytest.mark.slow]

STATUS_DISABLED = 0
STATUS_ACTIVE = 1
STATUS_QUEUED_FOR_SETUP = 4
STATUS_QUEUED_FOR_DELETE = 5
SYNC_INTERVAL = 5.0  # the lab's controlPlane.syncInterval (sessionSync's interval)
MARKER = "moenet-agent"  # moenet_wireguard.links.MARKER, the tunnels' ownership alias


# ------------------------------------------------------------------ observations


async def marked_tunnels(n) -> list[str]:
    return [lk["ifname"] for lk in await links(n) if lk.get("ifalias") == MARKER]


async def open_ports(n) -> set[int]:
    """Elements of the agent's nftables port set (empty when the table/set is absent)."""
    out = await _run("ip", "netns", "exec", n.ns_name, "nft", "-j", "list", "ruleset")
    mod = _load_lab()
    return mod.parse_udp_set(out, mod.SESSIONS_SET)


def peer_files(n) -> list[Path]:
    """Per-session peer files (``00_moenet.conf`` is the routing backend's shared file)."""
    d = n.dir / "bird" / "peers"
    if not d.exists():
        return []
    return sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("00_"))


def wireguard_go(n) -> list[int]:
    mod = _load_lab()
    return [p for p in mod._all_pids() if mod._comm(p) == "wireguard-go" and n.interface in mod._cmdline(p)]


def session_sync(status: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in status["tasks"] if t["name"] == "sessionSync")


async def wait_full_cycle(lab, n, timeout: float = 30) -> None:
    """Wait until a sessionSync cycle has *finished* after now.

    Event-based: the CP records each cycle's ``GET sessions``; the scheduler never
    overlaps runs of one task, so the second fetch after now means the first cycle
    that started after now has finished.
    """
    before = len(n.cp.calls("sessions", "GET"))
    await lab._watch(n, n.cp.wait_for("sessions", before + 2, method="GET", timeout=timeout))


def modify_bodies(n) -> list[dict[str, Any]]:
    return [r.body for r in n.cp.calls("modify") if isinstance(r.body, dict)]


# ------------------------------------------------------------------ scenarios


async def test_restart_with_unchanged_state_does_not_flap(lab):
    n1, n2 = lab.nodes
    since = {n.name: await bgp_since(lab, n) for n in (n1, n2)}
    ifindex = {n.name: (await tunnel(n))["ifindex"] for n in (n1, n2)}
    wg_pids = wireguard_go(n1)
    reports_before = len(modify_bodies(n1))

    assert await lab.stop_agent(n1, signal.SIGTERM) == 0
    t = time.monotonic()
    await lab.start_agent(n1)
    await wait_full_cycle(lab, n1)
    st = session_sync(await agent_status(n1))
    assert st["runs"] >= 1 and st["last"]["ok"], st
    lab.log(f"restart: first cycle done {time.monotonic() - t:.1f}s after restart")

    for n in (n1, n2):
        assert await bgp_since(lab, n) == since[n.name], f"BGP flapped on {n.name}"
        assert (await tunnel(n))["ifindex"] == ifindex[n.name], f"tunnel recreated on {n.name}"
    assert wireguard_go(n1) == wg_pids  # no new wireguard-go (no re-created device)
    result = st["last"]["result"]
    assert result["changed"] == {} and result["tunnelWrites"] == 0, result
    assert result["declares"] == 0 and result["firewallSyncs"] == 0, result
    assert len(modify_bodies(n1)) == reports_before  # nothing new to report


async def test_sync_to_active_and_established(lab):
    """A fresh setup on both nodes, started by ``POST /sync``: how long until each
    session is reported ACTIVE and BGP is Established (the numbers in the README)."""
    n1, n2 = lab.nodes

    def removed(n):
        return lambda r: (
            isinstance(r.body, dict) and r.body.get("uuid") == n.session_uuid and r.body.get("removed")
        )

    for n in (n1, n2):
        lab.set_session_status(n, STATUS_QUEUED_FOR_DELETE)
    await asyncio.gather(
        *(lab._watch(n, n.cp.wait_for("modify", where=removed(n), timeout=20)) for n in (n1, n2))
    )
    for n in (n1, n2):
        assert await tunnel(n) is None

    def active(n):
        return lambda r: isinstance(r.body, dict) and r.body == {"uuid": n.session_uuid, "status": 1}

    before = {n.name: len([r for r in n.cp.calls("modify") if active(n)(r)]) for n in (n1, n2)}
    for n in (n1, n2):
        lab.set_session_status(n, STATUS_QUEUED_FOR_SETUP)
    t0 = time.monotonic()
    for n in (n1, n2):
        code, body = await api(n, "POST", "/sync")
        assert code in (200, 202), body

    async def reported(n) -> float:
        await lab._watch(n, n.cp.wait_for("modify", before[n.name] + 1, where=active(n), timeout=20))
        return time.monotonic() - t0

    t_active = await asyncio.gather(*(reported(n) for n in (n1, n2)))
    await asyncio.gather(lab.wait_established(n1), lab.wait_established(n2))
    t_established = time.monotonic() - t0
    lab.log(
        f"/sync -> ACTIVE reported: {t_active[0]:.2f}s (lab1), {t_active[1]:.2f}s (lab2); "
        f"-> BGP Established on both: {t_established:.2f}s"
    )
    for n in (n1, n2):
        assert (await tunnel(n)) is not None and len(peer_files(n)) == 1


async def test_interface_deleted_by_hand_is_repaired(lab):
    n1, n2 = lab.nodes
    old = await tunnel(n1)
    await _run("ip", "-n", n1.ns_name, "link", "del", n1.interface)
    t = time.monotonic()

    async def back() -> dict[str, Any] | None:
        # Re-created *and* marked: creating the link and labelling it are two steps.
        lk = await tunnel(n1)
        ok = lk is not None and lk["ifindex"] != old["ifindex"] and lk.get("ifalias") == MARKER
        return lk if ok else None

    # One cycle is SYNC_INTERVAL; allow that plus the cycle's own time and the poll step.
    new = await _until(f"{n1.interface} to be re-created", back, 2 * SYNC_INTERVAL + 2)
    repaired = time.monotonic() - t
    assert new.get("ifalias") == MARKER
    lab.log(f"repair: tunnel back after {repaired:.1f}s")
    assert repaired <= SYNC_INTERVAL + 3, repaired

    async def established() -> bool:
        p = (await bgp_protocols(lab, n1)).get(n1.bgp_protocol)
        return bool(p and p["state"] == "up" and p["info"] == "Established")

    await _until("BGP Established again on lab1", established, 20)
    lab.log(f"repair: BGP Established {time.monotonic() - t:.1f}s after the deletion")
    assert len(wireguard_go(n1)) == 1
    await bgp_since(lab, n2)  # the peer is Established as well


async def test_sigkill_mid_apply_then_restart_converges(lab):
    n1, n2 = lab.nodes
    # Make the next cycle have work to do (re-create the tunnel), and kill the agent
    # the moment that cycle has fetched its answer, i.e. while it applies.
    before = len(n1.cp.calls("sessions", "GET"))
    await _run("ip", "-n", n1.ns_name, "link", "del", n1.interface)
    await lab._watch(n1, n1.cp.wait_for("sessions", before + 1, method="GET", timeout=20))
    assert await lab.stop_agent(n1, signal.SIGKILL) == -signal.SIGKILL

    t = time.monotonic()
    await lab.start_agent(n1)
    await lab.wait_established(n1)
    lab.log(f"sigkill: converged {time.monotonic() - t:.1f}s after restart")
    await wait_full_cycle(lab, n1)  # and a complete cycle after that changes nothing

    assert await marked_tunnels(n1) == [n1.interface]
    assert len(wireguard_go(n1)) == 1
    assert len(peer_files(n1)) == 1, peer_files(n1)
    assert list(await bgp_protocols(lab, n1)) == [n1.bgp_protocol]
    assert await open_ports(n1) == {n1.listen_port}
    st = session_sync(await agent_status(n1))
    assert st["last"]["ok"], st
    assert st["last"]["result"]["changed"] == {}, st["last"]["result"]
    await bgp_since(lab, n2)


async def test_cp_down_tears_nothing_down_and_outbox_delivers(lab):
    n1, n2 = lab.nodes
    since = await bgp_since(lab, n1)
    since2 = await bgp_since(lab, n2)
    ifindex = (await tunnel(n1))["ifindex"]
    files = {p: p.read_bytes() for p in peer_files(n1)}
    assert files
    fetches = len(n1.cp.calls("sessions", "GET"))

    # The CP is down for sessions (several cycles) and for reports; meanwhile its answer
    # changes so that the session needs a report (QUEUED_FOR_SETUP -> the agent must say ACTIVE).
    n1.cp.fail("sessions", times=4, status=503)
    n1.cp.fail("modify", times=2, status=503)
    lab.set_session_status(n1, STATUS_QUEUED_FOR_SETUP)
    t = time.monotonic()

    def wanted(r) -> bool:
        b = r.body
        return isinstance(b, dict) and b.get("uuid") == n1.session_uuid and b.get("status") == STATUS_ACTIVE

    reports_before = len([r for r in n1.cp.calls("modify") if wanted(r)])
    # Two failed deliveries plus the one the CP accepts. The CP client retries each call
    # (1 + 3 attempts), so the failures may open its circuit breaker for 30 s: allow for it.
    await lab._watch(n1, n1.cp.wait_for("modify", reports_before + 3, where=wanted, timeout=90))
    lab.log(f"outage: report delivered {time.monotonic() - t:.1f}s after the outage began")
    # The outage really lasted: all four failed fetches, then one that was answered (the
    # report may go out before the outage ends: it is made from the saved answer).
    await lab._watch(n1, n1.cp.wait_for("sessions", fetches + 5, method="GET", timeout=40))
    lab.set_session_status(n1, STATUS_ACTIVE)

    assert await bgp_since(lab, n1) == since
    assert await bgp_since(lab, n2) == since2
    assert (await tunnel(n1))["ifindex"] == ifindex
    assert {p: p.read_bytes() for p in peer_files(n1)} == files
    # The next cycle's fetch means the delivering cycle has finished (outbox updated).
    fetched = len(n1.cp.calls("sessions", "GET"))
    await lab._watch(n1, n1.cp.wait_for("sessions", fetched + 1, method="GET", timeout=20))
    st = await agent_status(n1)
    assert st["plugins"] is not None
    info = next(p for p in st["plugins"] if p["name"] == "sessions").get("info") or {}
    assert info.get("outbox") == 0, info


async def test_queued_for_delete_removes_everything(lab):
    n1, _ = lab.nodes
    assert await tunnel(n1) is not None
    assert n1.listen_port in await open_ports(n1)
    assert len(peer_files(n1)) == 1

    lab.set_session_status(n1, STATUS_QUEUED_FOR_DELETE)
    t = time.monotonic()

    def removed(r) -> bool:
        b = r.body
        return isinstance(b, dict) and b.get("uuid") == n1.session_uuid and b.get("removed") is True

    req = (await lab._watch(n1, n1.cp.wait_for("modify", where=removed, timeout=20)))[0]
    lab.log(f"delete: removal confirmed {time.monotonic() - t:.1f}s after the CP change")
    assert req.body["status"] == STATUS_DISABLED, req.body

    assert await tunnel(n1) is None
    assert await marked_tunnels(n1) == []
    assert wireguard_go(n1) == []
    assert n1.listen_port not in await open_ports(n1)
    assert peer_files(n1) == []
    assert n1.bgp_protocol not in await bgp_protocols(lab, n1)
