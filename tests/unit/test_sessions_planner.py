"""The planner and how it applies the core's removal guard (moenet_sessions.planner)."""

from __future__ import annotations

import base64
import itertools
import pathlib
from typing import Any

import attrs
import pytest
from moenet_sessions.desired import NodeSettings, build_desired
from moenet_sessions.model import parse_sessions
from moenet_sessions.planner import (
    DesiredCache,
    Kind,
    Observed,
    Plan,
    RoutingAction,
    TunnelAction,
    next_previous,
    plan,
    with_intent,
)
from moenet_sessions.records import ConfiguredSession, Previous, Report
from moenet_sessions.store import SessionStore

from moenet_core.backends import TunnelSpec, TunnelState
from moenet_core.models import SessionStatus as S
from moenet_core.state import StateStore

KEY = base64.b64encode(b"\x01" * 32).decode()
SETTINGS = NodeSettings(
    private_key_file="/k", link_local="fe80::998:302:1:1", loopback_ipv4="172.20.0.1", loopback_ipv6="fd00::1"
)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def item(n: int, status: int = 1, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "uuid": uid(n),
        "asn": 4242420000 + n,
        "status": status,
        "interface": f"wg{n}",
        "endpoint": f"198.51.100.{n}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n}",
        "ipv4": f"172.20.9.{n}",
        "port": 20000 + n,
    }
    d.update(over)
    return d


def state_of(spec: TunnelSpec, **over: Any) -> TunnelState:
    """What the backend would list for a tunnel made from ``spec``."""
    st = TunnelState(
        name=spec.name,
        ifindex=7,
        listen_port=spec.listen_port,
        peer_public_key=spec.peer_public_key,
        endpoint="198.51.100.77:51820",  # roamed: must not count as drift
        allowed_ips=tuple(sorted(spec.allowed_ips)),
        keepalive=spec.keepalive or None,
        mtu=spec.mtu,
        addresses=spec.addresses,
        up=True,
    )
    return attrs.evolve(st, **over)


def desired(n: int, status: int = 1, **over: Any) -> Any:
    ok, _ = parse_sessions([item(n, 1, **over)])
    return build_desired(ok[0], SETTINGS)


def configured(n: int, **over: Any) -> ConfiguredSession:
    d = desired(n, **over)
    return ConfiguredSession(interface=d.tunnel.name, tunnel=d.tunnel, peer=d.peer, port=d.port)


def run(
    answer: list[dict[str, Any]], observed: Observed, previous: Previous | None = None, **kw: Any
) -> Plan:
    ok, bad = parse_sessions(answer)
    return plan(ok, bad, observed, previous or Previous(), settings=SETTINGS, **kw)


def healthy(*ns: int) -> tuple[Observed, Previous]:
    tunnels = {f"wg{n}": state_of(desired(n).tunnel) for n in ns}
    frags = {uid(n): desired(n).peer for n in ns}
    obs = Observed(tunnels=tunnels, ports=frozenset(20000 + n for n in ns), fragments=frags)
    prev = Previous(configured={uid(n): configured(n) for n in ns}, seen={uid(n): S.ACTIVE for n in ns})
    return obs, prev


# ------------------------------------------------------------------ the table

STATUSES = list(S)
TUNNEL = ["missing", "equal", "different"]
FRAGMENT = ["missing", "equal", "different"]
PORT = ["open", "closed"]


@pytest.mark.parametrize(
    ("status", "tunnel", "fragment", "port"), list(itertools.product(STATUSES, TUNNEL, FRAGMENT, PORT))
)
def test_status_by_observed_state(status: S, tunnel: str, fragment: str, port: str) -> None:
    d = desired(1)
    tunnels = {}
    if tunnel == "equal":
        tunnels["wg1"] = state_of(d.tunnel)
    elif tunnel == "different":
        tunnels["wg1"] = state_of(d.tunnel, mtu=1500)
    frags = {}
    if fragment == "equal":
        frags[uid(1)] = d.peer
    elif fragment == "different":
        frags[uid(1)] = attrs.evolve(d.peer, asn=4242429999)
    obs = Observed(tunnels=tunnels, ports=frozenset({20001} if port == "open" else set()), fragments=frags)
    prev = (
        Previous(configured={uid(1): configured(1)})
        if tunnel != "missing" or fragment != "missing"
        else Previous()
    )
    p = run([item(1, int(status))], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.status is status
    present = tunnel != "missing" or fragment != "missing"

    if status in (S.QUEUED_FOR_SETUP, S.ACTIVE, S.ERROR):
        assert sp.kind is Kind.CONFIGURE
        assert (
            sp.tunnel
            is {"missing": TunnelAction.CREATE, "equal": TunnelAction.NONE, "different": TunnelAction.UPDATE}[
                tunnel
            ]
        )
        assert (sp.spec == d.tunnel) == (tunnel != "equal")
        assert sp.routing is (RoutingAction.KEEP if fragment == "equal" else RoutingAction.REPLACE)
        assert p.fragments == {uid(1): d.peer}
        assert p.ports == {20001} and p.firewall_changed == (port == "closed")
        assert p.routing_changed == (fragment != "equal")
        assert sp.report is None
        if status is S.ACTIVE:
            assert sp.report_on_success is None  # the CP already says ACTIVE
            assert sp.report_on_failure is S.ERROR
        elif status is S.ERROR:
            assert sp.report_on_success == Report(uuid=uid(1), status=S.ACTIVE)
            assert sp.report_on_failure is S.ERROR
        else:
            assert sp.report_on_success == Report(uuid=uid(1), status=S.ACTIVE)
            assert sp.report_on_failure is S.SETUP_FAILED
            assert sp.rollback_on_failure == (not present)
        fr = sp.failure_report("bird: syntax error")
        assert fr is not None and fr.last_error == "bird: syntax error"
        assert sp.configured == configured(1)
        healthy_now = tunnel == "equal" and fragment == "equal" and port == "open"
        assert p.empty == (healthy_now and status is S.ACTIVE)
    else:
        assert sp.kind is Kind.REMOVE
        assert sp.tunnel is (TunnelAction.NONE if tunnel == "missing" else TunnelAction.REMOVE)
        assert sp.remove_interfaces == (() if tunnel == "missing" else ("wg1",))
        assert sp.routing is (RoutingAction.NONE if fragment == "missing" else RoutingAction.DROP)
        assert p.fragments == {} and p.ports == frozenset()
        assert p.firewall_changed == (port == "open")
        something = tunnel != "missing" or fragment != "missing"
        if status is S.QUEUED_FOR_DELETE:
            assert sp.report_on_success == Report(uuid=uid(1), status=S.DISABLED, removed=True)
            assert sp.report_on_success is not None and sp.report_on_success.deleted
        elif something:
            assert sp.report_on_success == Report(uuid=uid(1), status=status, removed=True)
        else:
            assert sp.report_on_success is None
        assert sp.configured is None


def test_unowned_tunnels_are_never_touched() -> None:
    # wg1 exists on the system but not in the backend's own list -> not in observed
    p = run([item(1, 5)], Observed())
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.tunnel is TunnelAction.NONE and sp.remove_interfaces == ()


def test_endpoint_roaming_and_hostname_not_drift() -> None:
    obs, prev = healthy(1)
    assert run([item(1)], obs, prev).empty


def test_vanished_session_is_removed_without_report() -> None:
    obs, prev = healthy(1, 2, 3)
    p = run([item(1), item(2)], obs, prev)
    sp = p.by_uuid(uid(3))
    assert sp is not None and sp.kind is Kind.REMOVE and sp.status is None
    assert sp.remove_interfaces == ("wg3",) and sp.routing is RoutingAction.DROP
    assert sp.report_on_success is None and sp.report is None
    assert uid(3) not in p.fragments and 20003 not in p.ports and p.firewall_changed
    after = next_previous(prev, p)
    assert uid(3) not in after.configured and uid(3) not in after.seen


def test_vanished_fragment_only_is_dropped() -> None:
    obs, prev = healthy(1)
    obs = attrs.evolve(obs, fragments={**obs.fragments, uid(9): desired(9).peer})
    p = run([item(1)], obs, prev)
    sp = p.by_uuid(uid(9))
    assert sp is not None and sp.routing is RoutingAction.DROP and p.routing_changed


def test_unchanged_after_restart_is_empty(tmp_path: pathlib.Path) -> None:
    answer = [item(1, 4), item(2, 4, credential={"public_key": KEY, "preshared_key": KEY}), item(3, 1)]
    obs = Observed()
    store = SessionStore(StateStore(tmp_path))
    p1 = run(answer, obs, store.load_previous())
    assert not p1.empty
    store.save_previous(with_intent(store.load_previous(), p1))
    # "apply": make the system look like the plan
    tunnels = {s.interface: state_of(s.configured.tunnel) for s in p1.sessions if s.configured}  # type: ignore[union-attr]
    obs = Observed(tunnels=tunnels, ports=p1.ports, fragments=p1.fragments)
    sent = [s.report_on_success for s in p1.sessions if s.report_on_success]
    assert {r.uuid for r in sent} == {uid(1), uid(2)}  # status 3 is already ACTIVE at the CP
    store.save_previous(next_previous(store.load_previous(), p1, sent=sent))

    # restart: a fresh store object, same directory; the CP has not processed the reports yet
    restarted = SessionStore(StateStore(tmp_path)).load_previous()
    assert run(answer, obs, restarted).empty
    # the CP processed them
    answer2 = [item(1, 1), item(2, 1, credential={"public_key": KEY, "preshared_key": KEY}), item(3, 1)]
    p3 = run(answer2, obs, restarted)
    assert p3.empty
    assert store.save_previous(next_previous(restarted, p3)) is True  # seen statuses moved
    p4 = run(answer2, obs, store.load_previous())
    assert p4.empty and store.save_previous(next_previous(store.load_previous(), p4)) is False


def test_requeued_session_is_answered_again() -> None:
    obs, prev = healthy(1)
    prev = attrs.evolve(
        prev, reported={uid(1): Report(uuid=uid(1), status=S.ACTIVE)}, seen={uid(1): S.ACTIVE}
    )
    p = run([item(1, 4)], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.tunnel is TunnelAction.NONE and sp.report_on_success is not None


def test_psk_change_detected_through_previous() -> None:
    obs, prev = healthy(1)
    p = run([item(1, credential={"public_key": KEY, "preshared_key": KEY})], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.tunnel is TunnelAction.UPDATE and sp.preshared_key == KEY
    assert any("preshared" in r for r in sp.drift)


def test_spec_change_detected_through_previous() -> None:
    obs, prev = healthy(1)
    p = run([item(1, endpoint="198.51.100.200:1")], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.tunnel is TunnelAction.UPDATE and "endpoint" in " ".join(sp.drift)


def test_interface_rename_removes_old_one() -> None:
    obs, prev = healthy(1)
    p = run([item(1, interface="wgnew")], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.tunnel is TunnelAction.CREATE and sp.remove_interfaces == ("wg1",)


def test_successor_takes_the_name_of_a_deleted_session() -> None:
    obs, prev = healthy(1)
    p = run([item(1, 5), item(2, 4, interface="wg1", port=20001)], obs, prev)
    old, new = p.by_uuid(uid(1)), p.by_uuid(uid(2))
    assert old is not None and old.remove_interfaces == ("wg1",)
    assert new is not None and new.tunnel is TunnelAction.CREATE  # created after the removal phase


def test_invalid_reported_once_and_configuration_kept() -> None:
    obs, prev = healthy(1)
    answer = [item(1, asn=0)]
    p = run(answer, obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.kind is Kind.INVALID
    assert sp.report is not None and sp.report.status is S.ERROR and ".asn:" in (sp.report.last_error or "")
    assert sp.tunnel is TunnelAction.NONE and sp.remove_interfaces == ()
    assert p.fragments == obs.fragments and p.ports == obs.ports and not p.routing_changed
    prev2 = next_previous(prev, p, sent=[sp.report])
    p2 = run(answer, obs, prev2)
    assert p2.empty and p2.by_uuid(uid(1)).report is None  # type: ignore[union-attr]
    # the CP took it: status ERROR with our reason
    p3 = run([item(1, 2, asn=0, lastError=sp.report.last_error)], obs, Previous(configured=prev.configured))
    assert p3.empty


def test_hostile_payload_never_reaches_a_fragment() -> None:
    p = run([item(1, 4, interface='x"; }', name="a\nprotocol")], Observed())
    assert p.fragments == {} and p.by_uuid(uid(1)).kind is Kind.INVALID  # type: ignore[union-attr]


def test_invalid_delete_request_is_still_honoured() -> None:
    obs, prev = healthy(1)
    p = run([item(1, 5, asn=0)], obs, prev)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.kind is Kind.REMOVE and sp.remove_interfaces == ("wg1",)
    assert sp.report_on_success == Report(uuid=uid(1), status=S.DISABLED, removed=True)


def test_delete_confirmation_not_repeated_while_cp_lags() -> None:
    rep = Report(uuid=uid(1), status=S.DISABLED, removed=True)
    p = run([item(1, 5)], Observed(), Previous(reported={uid(1): rep}, seen={uid(1): S.QUEUED_FOR_DELETE}))
    assert p.empty


def test_disabled_with_nothing_configured_costs_nothing() -> None:
    assert run([item(1, 0), item(2, 3), item(3, 6)], Observed()).empty


def test_unbuildable_session_is_invalid() -> None:
    settings = attrs.evolve(SETTINGS, loopback_ipv4=None)
    ok, bad = parse_sessions([item(1, 4)])
    p = plan(ok, bad, Observed(), Previous(), settings=settings)
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.kind is Kind.INVALID and "IPv4 loopback" in (sp.report.last_error or "")  # type: ignore[union-attr]


def test_failure_report_deduplicated() -> None:
    rep = Report(uuid=uid(1), status=S.SETUP_FAILED, last_error="boom")
    p = run([item(1, 4)], Observed(), Previous(reported={uid(1): rep}, seen={uid(1): S.QUEUED_FOR_SETUP}))
    sp = p.by_uuid(uid(1))
    assert sp is not None and sp.failure_report("boom") is None and sp.failure_report("other") is not None


def test_failed_setup_rolls_back_memory() -> None:
    p = run([item(1, 4)], Observed())
    intent = with_intent(Previous(), p)
    assert uid(1) in intent.configured
    assert uid(1) not in next_previous(intent, p, failed={uid(1)}).configured


def test_latency_override_changes_fragment() -> None:
    obs, prev = healthy(1)
    p = run([item(1)], obs, prev, latency={uid(1): 2})
    assert p.by_uuid(uid(1)).routing is RoutingAction.REPLACE and p.fragments[uid(1)].latency == 2  # type: ignore[union-attr]


# ------------------------------------------------------------------ the guard


def test_guard_refuses_empty_answer() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    p = run([], obs, prev)
    assert p.guard.refused and "remove 4 of 4 configured sessions" in p.guard.reason
    assert all(s.kind is Kind.WITHHELD for s in p.sessions)
    assert not p.routing_changed and not p.firewall_changed and p.empty
    assert p.guard.status_info()["withheld"] == [uid(n) for n in (1, 2, 3, 4)]


def test_guard_three_of_four_refused_two_allowed() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    p = run([item(1)], obs, prev)
    assert p.guard.refused and p.empty
    p = run([item(1), item(2)], obs, prev)
    assert not p.guard.refused
    assert {s.uuid for s in p.sessions if s.kind is Kind.REMOVE} == {uid(3), uid(4)}


def test_guard_refusal_keeps_other_actions() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    p = run([item(5, 4)], obs, prev)
    assert p.guard.refused
    assert p.by_uuid(uid(5)).tunnel is TunnelAction.CREATE  # type: ignore[union-attr]
    assert set(p.fragments) == {uid(n) for n in (1, 2, 3, 4, 5)} and 20005 in p.ports


def test_guard_counts_status_removals_too() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    assert run([item(n, 0) for n in (1, 2, 3, 4)], obs, prev).guard.refused


def test_guard_override_matches_only_that_set() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    refused = run([], obs, prev)
    p = run([], obs, prev, override=refused.guard.digest)
    assert not p.guard.refused and p.guard.overridden
    assert all(s.kind is Kind.REMOVE for s in p.sessions)
    other = run([item(1)], obs, prev, override=refused.guard.digest)  # a different set
    assert other.guard.refused


# ------------------------------------------------------------------ the guard: rebuilds and the window (issue 14)


def test_a_key_path_change_rebuilding_every_tunnel_is_withheld() -> None:
    """A new ``privateKeyPath`` re-keys every session tunnel: a mass change, refused
    like a mass removal; an addition in the same answer still goes ahead."""
    obs, prev = healthy(1, 2, 3, 4)
    moved = attrs.evolve(SETTINGS, private_key_file="/elsewhere/new.key")
    ok, bad = parse_sessions([item(n) for n in (1, 2, 3, 4, 5)])
    p = plan(ok, bad, obs, prev, settings=moved)
    assert (
        p.guard.refused and p.guard.removals == () and p.guard.rebuilds == tuple(uid(n) for n in (1, 2, 3, 4))
    )
    assert "rebuild (re-key or recreate) 4 of 4 configured sessions" in p.guard.reason
    for n in (1, 2, 3, 4):
        sp = p.by_uuid(uid(n))
        assert sp is not None and sp.kind is Kind.WITHHELD and not sp.changes
        assert "our private key file changed" in sp.drift[0]
    new = p.by_uuid(uid(5))
    assert new is not None and new.tunnel is TunnelAction.CREATE
    assert set(p.fragments) == {uid(n) for n in (1, 2, 3, 4, 5)}
    # The operator's override lets exactly this set through.
    allowed = plan(ok, bad, obs, prev, settings=moved, override=p.guard.digest)
    assert allowed.guard.overridden and not allowed.guard.refused
    assert all(allowed.by_uuid(uid(n)).tunnel is TunnelAction.UPDATE for n in (1, 2, 3, 4))  # type: ignore[union-attr]


def test_peer_key_and_backend_switch_rebuilds_count_harmless_changes_do_not() -> None:
    obs, prev = healthy(1, 2, 3, 4)
    other = base64.b64encode(b"\x02" * 32).decode()
    p = run([item(n, credential=other) for n in (1, 2, 3)] + [item(4)], obs, prev)
    assert p.guard.refused and p.guard.rebuilds == tuple(uid(n) for n in (1, 2, 3))
    assert "peer public key changed" in p.by_uuid(uid(1)).drift[0]  # type: ignore[union-attr]
    # A backend switch: the old kind's tunnels are listed without device details.
    switched = attrs.evolve(
        obs,
        tunnels={n: attrs.evolve(t, peer_public_key=None, listen_port=None) for n, t in obs.tunnels.items()},
    )
    q = run([item(n) for n in (1, 2, 3, 4)], switched, prev)
    assert q.guard.refused and len(q.guard.rebuilds) == 4 and q.empty
    # Endpoints, MTU and keepalive change in place: no rebuild, nothing withheld.
    r = run([item(n, endpoint=f"198.51.100.{n + 100}:1", mtu=1400) for n in (1, 2, 3, 4)], obs, prev)
    assert not r.guard.refused and r.guard.rebuilds == ()
    assert all(s.tunnel is TunnelAction.UPDATE for s in r.sessions)
    # Missing tunnels (a reboot with the kernel backend) are recreated: nothing working is dropped.
    gone = attrs.evolve(obs, tunnels={})
    assert not run([item(n) for n in (1, 2, 3, 4)], gone, prev).guard.refused


def test_removals_and_rebuilds_count_together() -> None:
    obs, prev = healthy(1, 2, 3, 4, 5, 6)
    other = base64.b64encode(b"\x03" * 32).decode()
    # 2 removed + 2 re-keyed of 6: within the share alone, but 4 of 6 together.
    p = run([item(1), item(2), item(3, credential=other), item(4, credential=other)], obs, prev)
    assert p.guard.refused and "remove 2 and rebuild (re-key or recreate) 2 of 6" in p.guard.reason
    assert {s.uuid for s in p.sessions if s.kind is Kind.WITHHELD} == {uid(n) for n in (3, 4, 5, 6)}


def test_the_window_counts_earlier_removals() -> None:
    from moenet_core.guard import GuardWindow

    obs, prev = healthy(1, 2, 3, 4, 5, 6)  # 5 removed earlier: 6 of 11 were left
    window = GuardWindow(removed=frozenset(uid(n) for n in range(20, 25)), baseline=11, seconds=3600)
    p = run([item(n) for n in (1, 2, 3, 4, 5)], obs, prev, window=window)
    assert p.guard.refused and "6 of the 11 configured sessions" in p.guard.reason and "1h" in p.guard.reason
    assert p.by_uuid(uid(6)).kind is Kind.WITHHELD  # type: ignore[union-attr]
    assert not run([item(n) for n in (1, 2, 3, 4, 5)], obs, prev).guard.refused


def test_the_desired_cache_hands_the_same_records_on() -> None:
    """An unchanged session is built once: the next cycle reuses its desired state
    and its record (the same objects, so comparing the memory is an identity check);
    a changed session is built again."""
    cache = DesiredCache()
    answer = [item(1), item(2)]
    obs, prev = healthy(1, 2)
    first = run(answer, obs, prev, cache=cache)
    second = run(answer, obs, prev, cache=cache)
    by1 = {p.uuid: p for p in first.sessions}
    by2 = {p.uuid: p for p in second.sessions}
    assert (cache.misses, cache.hits) == (2, 2)
    for u in (uid(1), uid(2)):
        assert by2[u].configured is by1[u].configured and by2[u].peer is by1[u].peer
        assert by2[u].configured == configured(int(u[-1]))  # equal to one built afresh
    changed = run([item(1, mtu=1380), item(2)], obs, prev, cache=cache)
    after = {p.uuid: p for p in changed.sessions}
    assert after[uid(2)].configured is by1[uid(2)].configured
    assert after[uid(1)].configured is not by1[uid(1)].configured
    assert after[uid(1)].configured.tunnel.mtu == 1380


def test_an_equal_memory_is_kept_as_the_newest_objects(tmp_path: pathlib.Path) -> None:
    """After a restart the memory read from disk equals the planned one but shares
    no objects with it; saving the equal one writes nothing and keeps it, so later
    comparisons are identity checks."""
    store = SessionStore(StateStore(tmp_path))
    store.save_previous(Previous(configured={uid(1): configured(1)}))
    restarted = SessionStore(StateStore(tmp_path))
    loaded = restarted.load_previous()
    planned = Previous(configured={uid(1): desired(1).record})
    assert planned == loaded and planned.configured[uid(1)] is not loaded.configured[uid(1)]
    assert restarted.save_previous(planned) is False
    assert restarted.load_previous() is planned
