"""The guard through the reconciler base, without root (issue 14, item 5).

``SessionSync`` with the shared fakes and a :class:`ManualClock`: removals are
counted over the sliding window (persisted, so a restart does not reset it), a
key path change that would re-key every tunnel is withheld, and an answer over
``sessions.maxSessions`` is refused as a whole while the last valid one keeps
serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.sessions_rig import SessionsRig, uid
from helpers.sessions_rig import session as rig_session
from moenet_sessions.task import SessionSyncError

from moenet_core import GuardMemory, SessionStatus
from moenet_core.reconcile import GUARD_FILE

HOUR = 3600.0


def session(n: int, status: int = SessionStatus.ACTIVE, **over: Any) -> dict[str, Any]:
    return rig_session(n, status, **over)


class Rig(SessionsRig):
    async def sync(self, *ns: int) -> dict[str, Any]:  # type: ignore[override]
        return await super().sync(*(session(n) for n in ns))


def names(*ns: int) -> set[str]:
    return {f"dn42-{n}" for n in ns}


async def test_removing_5_then_2_2_1_of_10_is_refused_within_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.sync(*range(1, 11))
    assert rig.tunnels == names(*range(1, 11))

    # 5 of 10: not more than half, allowed (and remembered).
    r = await rig.sync(*range(1, 6))
    assert r.get("guard") is None and rig.tunnels == names(*range(1, 6))

    # 2 more a minute later: 2 of 5 alone, but 7 of the 10 of the window's start.
    await rig.clock.advance(60)
    r = await rig.sync(1, 2, 3)
    assert r["guard"]["refused"] is True and rig.tunnels == names(*range(1, 6))
    guard = rig.task.guard
    assert guard is not None and guard.refused and guard.recent == 5 and guard.baseline == 10
    assert "with the 5 removed within the last 1h" in guard.reason and "7 of the 10" in guard.reason
    assert rig.task.status_info()["guardRefused"] is True

    # A restart does not reset the window (the memory is persisted, the clock injected).
    saved = rig.task.ctx.state.load(GUARD_FILE, GuardMemory)
    assert saved is not None and len(saved.removals) == 1 and saved.removals[0].configured == 10
    rig.task = rig.build()
    r = await rig.sync(1, 2, 3)
    assert r["guard"]["refused"] is True and rig.tunnels == names(*range(1, 6))

    # Once the first removal has left the window, the same answer goes ahead...
    await rig.clock.advance(HOUR)
    r = await rig.sync(1, 2, 3)
    assert r.get("guard") is None and rig.tunnels == names(1, 2, 3)
    # ...and the next steps are counted again: 2 more of those 5 within the hour is 4 of 5.
    await rig.clock.advance(60)
    r = await rig.sync(1)
    assert r["guard"]["refused"] is True and rig.tunnels == names(1, 2, 3)
    await rig.clock.advance(HOUR)
    await rig.sync(1)
    assert rig.tunnels == names(1)


async def test_the_override_lets_the_refused_set_through_and_restarts_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.sync(*range(1, 11))
    await rig.sync(*range(1, 6))
    r = await rig.sync(1, 2, 3)
    assert r["guard"]["refused"] is True
    rig.task.section.allow_removal = r["guard"]["digest"]
    r = await rig.sync(1, 2, 3)
    assert r["guard"]["overridden"] is True and rig.tunnels == names(1, 2, 3)
    assert rig.task.ctx.state.load(GUARD_FILE, GuardMemory) == GuardMemory()
    # A different set is not covered by the digest; this one is within a fresh window.
    r = await rig.sync(1, 2)
    assert r.get("guard") is None and rig.tunnels == names(1, 2)


async def test_without_a_window_each_answer_is_judged_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, guardWindow=0)
    await rig.sync(*range(1, 11))
    for keep in (range(1, 6), range(1, 4), range(1, 2)):
        r = await rig.sync(*keep)
        assert r.get("guard") is None
    assert rig.tunnels == names(1)
    assert not rig.task.ctx.state.path(GUARD_FILE).exists()


async def test_a_corrupt_window_memory_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.sync(1, 2)
    rig.task.ctx.state.write_bytes(GUARD_FILE, b"{not json")
    rig.task = rig.build()
    r = await rig.sync(1)
    assert r.get("guard") is None and rig.tunnels == names(1)


async def test_a_key_path_change_that_would_rekey_every_tunnel_is_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.sync(1, 2, 3, 4)
    mark = rig.fakes.journal.mark()
    rig.task.section.private_key_path = str(tmp_path / "other" / "wg.key")
    r = await rig.sync(1, 2, 3, 4, 5)
    guard = rig.task.guard
    assert guard is not None and guard.refused and guard.rebuilds == tuple(uid(n) for n in (1, 2, 3, 4))
    assert "rebuild (re-key or recreate) 4 of 4 configured sessions" in guard.reason
    # Nothing was re-keyed; the new session was still set up.
    ensured = [e.key for e in rig.fakes.journal.since(mark) if e.op == "ensure"]
    assert ensured == ["dn42-5"] and r["failed"] == {}
    assert set(rig.task.configured()) == {uid(n) for n in range(1, 6)}
    assert all(rec.tunnel.private_key_file == str(tmp_path / "wg.key") for rec in _records(rig, 1, 2, 3, 4))
    # Allowed by its digest: every tunnel is re-keyed.
    rig.task.section.allow_removal = guard.digest
    r = await rig.sync(1, 2, 3, 4, 5)
    assert r["guard"]["overridden"] is True and r["tunnelWrites"] == 4 and r["failed"] == {}
    new_key = str(tmp_path / "other" / "wg.key")
    assert all(rec.tunnel.private_key_file == new_key for rec in _records(rig, 1, 2, 3, 4, 5))


def _records(rig: Rig, *ns: int) -> list[Any]:
    configured = rig.task.configured()
    return [configured[uid(n)] for n in ns]


async def test_an_answer_over_max_sessions_is_refused_and_the_last_valid_one_keeps_serving(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    await rig.sync(1, 2)
    rig.cp.set("sessions", [session(n, SessionStatus.QUEUED_FOR_SETUP) for n in range(1, 20_001)])
    with pytest.raises(SessionSyncError, match=r"20000 sessions exceed sessions\.maxSessions \(2000\)"):
        await rig.task.run_once()
    assert rig.tunnels == names(1, 2)  # nothing built, nothing removed
    last = rig.task.status_info()
    assert "maxSessions" in (last["lastError"] or "") and last["lastRun"]["answer"] == "saved"
    # A smaller cap applies to what the operator configures.
    small = Rig(tmp_path / "small", maxSessions=3)
    await small.sync(1, 2, 3)
    with pytest.raises(SessionSyncError, match=r"4 sessions exceed sessions\.maxSessions \(3\)"):
        await small.sync(1, 2, 3, 4)
    assert small.tunnels == names(1, 2, 3)
