""" "Applied" means confirmed live (issue 16), without root (the shared fakes).

- After a restart ``sessionSync`` takes the routing fragments that are live from
  ``applied.json`` (written only after an apply the backend confirmed) or, without
  it, from what the routing backend runs (``fragment_protocols`` and
  ``protocols``), never from the intent ``with_intent`` records before an apply.
- A session is reported ACTIVE only when its tunnel, port and BGP protocols are
  live; otherwise it fails transiently (``lastError``, retried after the backoff).
- Checking costs nothing in a cycle with no ACTIVE report to make.

A crash is a :class:`SimulatedCrash` raised by a fake backend: a ``BaseException``
nothing in the cycle catches, so nothing after it runs (as with SIGKILL).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.sessions_rig import SessionsRig, session, uid

from moenet_core import ApplyResult, ProtocolState, SessionStatus

INTERVAL = 60.0
NO_POLICY = "no BIRD policy from the control plane yet"


class SimulatedCrash(BaseException):
    """The agent dies here: nothing after it runs."""


@pytest.fixture
def rig(tmp_path: Path) -> SessionsRig:
    return SessionsRig(tmp_path)


def runs(rig: SessionsRig, *ns: int, named: tuple[int, ...] = ()) -> None:
    """The fake routing daemon runs the BGP protocol ``p<n>`` of each session in ``ns``;
    the backend names the protocols of ``named`` too (default: ``ns``)."""
    rig.fakes.routing.protocol_names["sessions"] = {uid(n): (f"p{n}",) for n in (named or ns)}
    rig.fakes.routing.states = [
        ProtocolState(name=f"p{n}", proto="BGP", table=None, state="start", since=None, info="Connect")
        for n in ns
    ]


def active(rig: SessionsRig) -> set[str]:
    return {u for u, (status, _) in rig.reports().items() if status == SessionStatus.ACTIVE}


async def test_killed_in_the_first_apply_and_no_policy_after_the_restart_reports_nothing_active(
    rig: SessionsRig,
) -> None:
    """The issue's case: the intent was recorded, the agent died in its first apply
    (no applied.json), and after the restart BIRD has no policy. Nothing is ACTIVE:
    the fragments are declared again, the declare fails, the sessions say why."""
    sessions = [session(n) for n in range(1, 6)]
    rig.fakes.routing.fail("declare", "sessions", SimulatedCrash())
    with pytest.raises(SimulatedCrash):
        await rig.sync(*sessions)
    assert set(rig.task.store.load_previous().configured) == {uid(n) for n in range(1, 6)}  # the intent
    assert not rig.task.ctx.state.path("applied.json").exists() and rig.reports() == {}

    rig.restart()
    no_policy = ApplyResult(ok=False, changed=False, error=NO_POLICY, transient=True)
    rig.fakes.routing.fail("declare", "sessions", result=no_policy)
    r = await rig.sync(*sessions)
    assert active(rig) == set()
    assert {u: status for u, (status, _) in rig.reports().items()} == {
        uid(n): SessionStatus.QUEUED_FOR_SETUP for n in range(1, 6)
    }
    assert all(NO_POLICY in (err or "") for _, err in rig.reports().values())
    assert sorted(r["retrying"]) == sorted(uid(n) for n in range(1, 6))

    await rig.clock.advance(INTERVAL)  # the policy is there now
    r = await rig.sync(*sessions)
    assert active(rig) == {uid(n) for n in range(1, 6)} and r["failed"] == {}


async def test_without_applied_json_what_the_daemon_runs_is_applied_and_the_rest_declared(
    rig: SessionsRig,
) -> None:
    sessions = [session(n, SessionStatus.ACTIVE) for n in range(1, 5)]
    await rig.sync(*sessions)
    # Killed before applied.json was first written; the daemon runs 1-3 (4 was never loaded).
    rig.task.ctx.state.path("applied.json").unlink()
    del rig.fakes.routing.fragments["sessions"][uid(4)]
    runs(rig, 1, 2, 3, named=(1, 2, 3, 4))
    rig.restart()
    mark = rig.fakes.journal.mark()
    r = await rig.sync(*sessions)
    assert set(r["changed"]) == {uid(4)}, r["changed"]
    assert "routing fragment missing" in r["changed"][uid(4)]
    declares = [c for c in rig.fakes.journal.since(mark) if c.op == "declare"]
    assert len(declares) == 1 and set(declares[0].detail) == {uid(n) for n in range(1, 5)}
    assert rig.task.ctx.state.path("applied.json").exists()  # confirmed now
    mark = rig.fakes.journal.mark()
    assert (await rig.sync(*sessions))["changed"] == {}
    assert rig.fakes.journal.since(mark) == []


async def test_a_backend_that_cannot_say_what_runs_confirms_nothing(rig: SessionsRig) -> None:
    """No ``fragment_protocols``: every configured fragment is declared again, once."""
    sessions = [session(n, SessionStatus.ACTIVE) for n in range(1, 4)]
    await rig.sync(*sessions)
    rig.task.ctx.state.path("applied.json").unlink()
    rig.restart()
    r = await rig.sync(*sessions)
    assert set(r["changed"]) == {uid(n) for n in range(1, 4)} and r["declares"] == 1
    assert (await rig.sync(*sessions))["changed"] == {}


async def test_active_is_reported_only_when_the_bgp_protocol_runs(rig: SessionsRig) -> None:
    runs(rig, 1, named=(1, 2))  # the backend made p1 and p2; the daemon runs only p1
    r = await rig.sync(session(1), session(2))
    assert active(rig) == {uid(1)}
    status, error = rig.reports()[uid(2)]
    assert status == SessionStatus.QUEUED_FOR_SETUP
    assert error is not None and "BGP protocol p2 is not running" in error
    assert uid(2) in r["retrying"]

    runs(rig, 1, 2)
    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1, SessionStatus.ACTIVE), session(2))
    assert active(rig) == {uid(1), uid(2)} and r["failed"] == {}


async def test_an_unreadable_daemon_confirms_nothing(rig: SessionsRig) -> None:
    runs(rig, 1)
    rig.fakes.routing.fail("protocols", error=ConnectionRefusedError("BIRD is down"), times=None)
    await rig.sync(session(1))
    assert active(rig) == set()
    assert "cannot confirm the BGP protocol runs" in (rig.reports()[uid(1)][1] or "")


async def test_a_port_that_is_not_open_is_not_active(rig: SessionsRig) -> None:
    """A sync that does not open the port (the firewall refused) is no ACTIVE either."""
    rig.fakes.firewall.fail("sync", "sessions", ConnectionResetError("nft: reset"))
    await rig.sync(session(1))
    assert active(rig) == set()


async def test_checking_costs_nothing_in_a_cycle_without_an_active_report(rig: SessionsRig) -> None:
    runs(rig, *range(1, 11))
    await rig.sync(*(session(n) for n in range(1, 11)))
    assert len(active(rig)) == 10
    reads = len(rig.fakes.routing.calls_of("protocols"))
    await rig.sync(*(session(n, SessionStatus.ACTIVE) for n in range(1, 11)))
    assert len(rig.fakes.routing.calls_of("protocols")) == reads


async def test_the_preshared_key_of_a_tunnel_never_made_goes_with_its_session(rig: SessionsRig) -> None:
    """The key file is written before the tunnel: killed in between, then the
    session vanishes: no tunnel to remove, but the key must not stay on disk."""
    psk = "A" * 43 + "="
    s = session(1, credential={"publicKey": session(1)["credential"], "presharedKey": psk})
    rig.fakes.tunnel.fail("ensure", "dn42-1", SimulatedCrash())
    with pytest.raises(SimulatedCrash):
        await rig.sync(s)
    key_file = rig.tmp / "psk" / "dn42-1.psk"
    assert key_file.exists() and "dn42-1" not in rig.tunnels
    rig.restart()
    await rig.sync()  # the session vanished
    assert not key_file.exists()
    assert uid(1) not in rig.task.store.load_previous().configured
