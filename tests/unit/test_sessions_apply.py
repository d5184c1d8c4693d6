"""``SessionSync``'s apply phases and rollback, without root: the shared fakes.

The same paths run against real daemons in ``test_sessions_task`` (netns); here
each failure is injected exactly where it hurts: a tunnel that cannot be made
(before and after the link exists), a firewall transaction that fails, a routing
backend that rejects one session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.sessions_rig import SessionsRig, session, uid

from moenet_core import SessionStatus

Rig = SessionsRig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def test_a_clean_setup_then_an_unchanged_cycle_writes_nothing(rig: Rig) -> None:
    r = await rig.sync(session(1), session(2))
    assert r["failed"] == {} and (r["tunnelWrites"], r["firewallSyncs"], r["declares"]) == (2, 1, 1)
    assert rig.tunnels == {"dn42-1", "dn42-2"} and rig.ports == {21001, 21002}
    assert rig.fragments == {uid(1), uid(2)}
    assert rig.reports() == {uid(1): (1, None), uid(2): (1, None)}

    mark = rig.fakes.journal.mark()
    r = await rig.sync(session(1, SessionStatus.ACTIVE), session(2, SessionStatus.ACTIVE))
    assert r["failed"] == {} and rig.fakes.journal.since(mark) == []


@pytest.mark.parametrize("late", [False, True], ids=["before-the-link", "after-the-link"])
async def test_a_failed_tunnel_rolls_back_only_that_setup(rig: Rig, late: bool) -> None:
    rig.fakes.tunnel.fail("ensure", "dn42-2", "wireguard-go died", late=late)
    r = await rig.sync(session(1), session(2))
    assert set(r["failed"]) == {uid(2)} and "wireguard-go died" in r["failed"][uid(2)]
    # Nothing of session 2 stays: no tunnel (removed again when it was made), port or fragment.
    assert rig.tunnels == {"dn42-1"} and rig.ports == {21001} and rig.fragments == {uid(1)}
    status, error = rig.reports()[uid(2)]
    assert status == SessionStatus.SETUP_FAILED and error is not None and "wireguard-go died" in error
    assert rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)
    # The record is forgotten: the next cycle on a re-queue builds it from scratch.
    assert uid(2) not in rig.task.configured() and uid(1) in rig.task.configured()


async def test_a_failed_firewall_fails_the_new_setups_and_removes_their_tunnels(rig: Rig) -> None:
    rig.fakes.firewall.fail("sync", error="nft: transaction refused")
    r = await rig.sync(session(1), session(2))
    assert set(r["failed"]) == {uid(1), uid(2)}
    assert all("firewall" in why for why in r["failed"].values())
    assert rig.tunnels == set() and rig.ports == set() and rig.fragments == set()
    assert {s for s, _ in rig.reports().values()} == {SessionStatus.SETUP_FAILED}


async def test_a_session_the_routing_backend_rejects_leaves_nothing_and_the_other_goes_live(rig: Rig) -> None:
    rig.fakes.routing.reject(uid(2), "peers/dn42_x.conf:3: syntax error")
    r = await rig.sync(session(1), session(2))
    assert set(r["failed"]) == {uid(2)} and "routing: peers/dn42_x.conf:3" in r["failed"][uid(2)]
    assert r["declares"] == 2  # once with both, once without the rejected one
    assert rig.fragments == {uid(1)} and rig.tunnels == {"dn42-1"} and rig.ports == {21001}
    assert rig.reports()[uid(2)][0] == SessionStatus.SETUP_FAILED
    assert rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)


async def test_a_failed_repair_of_an_active_session_is_an_error_and_keeps_it(rig: Rig) -> None:
    await rig.sync(session(1))
    del rig.fakes.tunnel.tunnels["dn42-1"]  # deleted by hand
    rig.fakes.tunnel.fail("ensure", "dn42-1", "no such device")
    r = await rig.sync(session(1, SessionStatus.ACTIVE))
    assert set(r["failed"]) == {uid(1)}
    assert rig.reports()[uid(1)][0] == SessionStatus.ERROR
    # Not a setup: its port and routing stay, and its record is kept for the next repair.
    assert rig.ports == {21001} and rig.fragments == {uid(1)} and uid(1) in rig.task.configured()

    r = await rig.sync(session(1, SessionStatus.ERROR))
    assert r["failed"] == {} and rig.tunnels == {"dn42-1"}
    assert rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)


async def test_an_unchanged_answer_is_not_validated_again(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import moenet_sessions.task as task_module

    calls: list[int] = []
    real = task_module.parse_sessions

    def counted(raw: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(raw, **kw)

    monkeypatch.setattr(task_module, "parse_sessions", counted)
    await rig.sync(session(1), session(2))
    await rig.sync(session(1, SessionStatus.ACTIVE), session(2, SessionStatus.ACTIVE))
    assert len(calls) == 2  # a changed answer is parsed
    r = await rig.sync(session(1, SessionStatus.ACTIVE), session(2, SessionStatus.ACTIVE))
    assert len(calls) == 2 and r["failed"] == {}  # the same answer is not
    assert rig.tunnels == {"dn42-1", "dn42-2"}
    rig.task.ctx.section.max_sessions = 1  # the cap is part of the parse
    with pytest.raises(Exception, match="maxSessions"):
        await rig.sync(session(1, SessionStatus.ACTIVE), session(2, SessionStatus.ACTIVE))
    assert len(calls) == 4  # the answer, then the saved one: both again under the new cap
