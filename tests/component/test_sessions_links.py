"""The sessions' links: RTT targets offered, latency tiers taken back into BIRD, ``/restart``.

``LinkBook`` is tested on its own (pure, with a state directory); the rest runs the
real sessionSync against real wireguard-go, nftables and BIRD 3 in a namespace
(the ``node`` harness of ``test_sessions_task``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import moenet_bird
import pytest
from helpers.sessions import node, symbol, uid
from moenet_bird.testing import unchecked_intent
from moenet_sessions.links import LATENCY_FILE, LinkBook, link_target
from moenet_sessions.records import ConfiguredSession

from moenet_core.backends import TunnelSpec
from moenet_core.descriptors import LinkLatency, LinkTarget
from moenet_core.intents import EbgpPeerIntent
from moenet_core.state import StateStore
from moenet_core.testing import NetNS

KEY = base64.b64encode(b"\x07" * 32).decode()


def configured(iface: str, *, checked: bool = True, **peer: Any) -> ConfiguredSession:
    spec = TunnelSpec(name=iface, private_key_file="/k", listen_port=1, peer_public_key=KEY)
    fields = {"asn": 4242420001, "interface": iface, **peer}
    intent = EbgpPeerIntent(**fields) if checked else unchecked_intent(EbgpPeerIntent, **fields)
    return ConfiguredSession(interface=iface, tunnel=spec, peer=intent, port=1)


def measured(key: str, tier: int | None, *, owner: str = "sessions", rtt: float | None = 10.0) -> LinkLatency:
    return LinkLatency(
        owner=owner,
        key=key,
        interface="x",
        target="fe80::1",
        rtt_ms=rtt,
        loss=0.0,
        tier=tier,
        measured_at=1.0,
        tier_changed=True,
    )


# ------------------------------------------------------------------ LinkBook


def test_target_addresses_in_dn42_probe_order_and_asn_label() -> None:
    c = configured("wg1", neighbor_ipv4="172.20.0.1", neighbor_ipv6="fd00::1", neighbor_link_local="fe80::1")
    t = link_target("u1", c)
    assert t == LinkTarget(
        owner="sessions",
        key="u1",
        interface="wg1",
        addresses=("fe80::1", "fd00::1", "172.20.0.1"),
        labels={"asn": "4242420001"},
    )
    no_address = configured("wg2", checked=False)  # an intent always has one; a record might not
    assert link_target("u2", no_address) is None  # no address: nothing to probe
    no_interface = attrs.evolve(configured("wg3", neighbor_ipv4="172.20.0.3"), interface="")
    assert link_target("u3", no_interface) is None


def test_tiers_change_only_for_own_links_and_persist(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    book = LinkBook(state)
    assert book.tiers() == {}
    changed = book.update([measured("u1", 3), measured("u2", None), measured("m1", 2, owner="mesh")])
    assert changed == {"u1": (None, 3)}
    assert book.latest("u2") is not None and book.latest("m1") is None
    assert book.update([measured("u1", 3)]) == {}  # the same tier again: no change
    assert book.update([measured("u1", 4)]) == {"u1": (3, 4)}
    # A restarted agent starts from the persisted tiers (same peer files, no reconfigure).
    assert LinkBook(state).tiers() == {"u1": 4}
    book.forget(["u9"])
    assert book.tiers() == {} and LinkBook(state).tiers() == {}


def test_a_damaged_latency_file_yields_only_valid_tiers(tmp_path: Path) -> None:
    state = StateStore(tmp_path)
    state.write_json(LATENCY_FILE, {"version": 1, "tiers": {"a": 2, "b": 0, "c": "5", "d": True, "e": 9}})
    assert LinkBook(state).tiers() == {"a": 2, "e": 9}


# ------------------------------------------------------------ with real daemons


def _peer_file(n: Any, k: int) -> str:
    [f] = n.peer_files(k)
    return f.read_text()  # type: ignore[no-any-return]


@pytest.mark.netns
async def test_latency_round_reaches_bird_in_one_reconfigure(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    async with node(netns, tmp_path) as n:
        n.cp.set("sessions", [n.session(1, 1), n.session(2, 1)])
        r = await n.sync()
        assert r["failed"] == {}, r

        received: list[tuple[LinkLatency, ...]] = []

        class Observer:
            @moenet_bird.hookimpl  # type: ignore[misc]
            def moenet_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
                received.append(measurements)

        n.h.agent.pm.register(Observer(), "observer")
        targets = {t.key: t for _, ts in n.h.agent.pm.collect("moenet_link_targets", setup=False) for t in ts}
        assert set(targets) == {uid(1), uid(2)}
        assert targets[uid(1)].interface == n.ifname(1)
        assert targets[uid(1)].addresses == ("fe80::1",)
        assert targets[uid(2)].addresses == ("fe80::2",)
        assert "dn42_ebgp_out(5," in _peer_file(n, 1)  # the default tier until measured

        configures = n.routing.applier.stats.configures
        n.h.agent.pm.broadcast("moenet_link_latency", measurements=(measured(uid(1), 2), measured(uid(2), 7)))
        assert len(received) == 1  # the broadcast reached every implementation
        # The hook triggered a cycle; run_now joins it (or runs a no-op one after it).
        r = await n.sync()
        assert "dn42_ebgp_out(2," in _peer_file(n, 1)
        assert "dn42_ebgp_out(7," in _peer_file(n, 2)
        assert n.routing.applier.stats.configures == configures + 1  # both tiers, one reconfigure
        assert symbol(1) in await n.protocols()

        # The same tiers again change nothing.
        n.h.agent.pm.broadcast("moenet_link_latency", measurements=(measured(uid(1), 2), measured(uid(2), 7)))
        r = await n.sync()
        assert r["declares"] == 0 and n.routing.applier.stats.configures == configures + 1, r


@pytest.mark.netns
async def test_restart_reapplies_the_tunnel_and_restarts_bgp(
    netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    async with node(netns, tmp_path) as n:
        n.cp.set("sessions", [n.session(1, 1)])
        assert (await n.sync())["failed"] == {}
        # Not the agent's: no plugin claims it, the API answers 404.
        assert await n.h.agent.restart("lo") is None

        n.ns.run("ip", "link", "del", n.ifname(1))
        assert n.link(1) is None
        result = await n.h.agent.restart(n.ifname(1))
        assert result == {
            "plugin": "sessions",
            "session": uid(1),
            "interface": n.ifname(1),
            "tunnelRepaired": True,
            "tunnelBounced": "link down and up",
            "protocols": [symbol(1)],
        }
        assert n.link(1) is not None
        assert symbol(1) in await n.protocols()
        # A second restart with everything in place writes no tunnel, but bounces it.
        ifindex = n.link(1)["ifindex"]  # type: ignore[index]
        with subprocess.Popen(
            ["ip", "-n", n.ns.name, "-o", "monitor", "link", "dev", n.ifname(1)],
            stdout=subprocess.PIPE,
            text=True,
        ) as monitor:
            await asyncio.sleep(0.3)  # the monitor is listening
            again = await n.h.agent.restart(n.ifname(1))
            await asyncio.sleep(0.3)
            monitor.terminate()
            events = monitor.communicate()[0].splitlines()
        assert again is not None and again["tunnelRepaired"] is False
        assert again["tunnelBounced"] == "link down and up"
        flags = [ln.split("<", 1)[1].split(">", 1)[0].split(",") for ln in events if "<" in ln]
        down = next(i for i, f in enumerate(flags) if "UP" not in f)
        assert any("UP" in f for f in flags[down + 1 :]), events  # down, then up again
        link = n.link(1)
        assert link is not None and link["ifindex"] == ifindex and "UP" in link["flags"]
        assert symbol(1) in await n.protocols()


# ------------------------------------------------------------ report pacing


async def test_repeats_of_an_accepted_report_back_off(tmp_path: Path) -> None:
    """A CP that accepts a report but keeps contradicting it is told again at once,
    then after 1, 2, 4... sync intervals (capped), never every cycle; a different
    report is never held back."""
    from moenet_sessions.records import Report
    from moenet_sessions.task import REPEAT_MAX_SECONDS, SessionSync

    from moenet_core.models import SessionStatus
    from moenet_core.testing import ManualClock, plugin_context

    clock = ManualClock()
    ctx = plugin_context(
        "sessions", state_dir=tmp_path, config={"controlPlane": {"syncInterval": 60.0}}, clock=clock
    )
    task = SessionSync(ctx)
    active = Report(uuid="u1", status=SessionStatus.ACTIVE)
    task.note_accepted(active)

    sent_at: list[float] = []
    start = clock.monotonic()
    for _ in range(400):  # 400 one-minute cycles
        out, held = task.pace([active])
        assert (out == [active]) != (held == {"u1"})
        if out:
            sent_at.append(clock.monotonic() - start)
            task.note_accepted(active)  # the CP accepts the repeat, and still contradicts it
        await clock.advance(60.0)
    # At once, then waits of 1, 2, 4, 8... intervals.
    assert sent_at[:5] == [0.0, 60.0, 180.0, 420.0, 900.0]
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert 0.9 * REPEAT_MAX_SECONDS <= max(gaps) <= REPEAT_MAX_SECONDS and len(sent_at) <= 14

    other = Report(uuid="u1", status=SessionStatus.ERROR, last_error="x")
    assert task.pace([other]) == ([other], set())
