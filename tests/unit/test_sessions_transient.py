"""``SessionSync`` at scale and under transient faults, without root (the shared fakes).

- tunnels are created with bounded concurrency (``sessions.tunnelConcurrency``);
- a no-op cycle reads the tunnels with the cheap ``observe``; the deep ``list``
  runs on the first cycle and every ``sessions.deepCheckInterval`` seconds, and
  repairs drift it finds;
- a failure a retry may fix (BIRD down, no policy yet, a ``wireguard-go`` that
  does not start) keeps the session's status with ``lastError``, keeps what was
  built and is retried with a backoff; a permanent one (BIRD rejects that
  session) is SETUP_FAILED and rolled back as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from helpers.sessions_rig import SessionsRig, session, uid

from moenet_core import ApplyResult, SessionStatus, TunnelSpec
from moenet_core.controlplane import UNCHANGED
from moenet_core.testing import StubControlPlane

INTERVAL = 60.0  # controlPlane.syncInterval's default: the backoff's unit
BIRD_DOWN = "new config written, but BIRD could not be told to load it: connection refused"


Rig = SessionsRig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# ---------------------------------------------------------------- concurrency


async def test_tunnels_are_created_with_bounded_concurrency(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tunnelConcurrency=4)
    tunnel = rig.fakes.tunnel
    running = peak = tasks = 0
    real = tunnel.ensure

    async def slow_ensure(spec: TunnelSpec) -> bool:
        nonlocal running, peak, tasks
        running += 1
        peak = max(peak, running)
        tasks = max(tasks, len(asyncio.all_tasks()))
        try:
            await asyncio.sleep(0.01)
            if spec.name == "dn42-7":
                raise ConnectionResetError("Connection reset by peer")
            return await real(spec)
        finally:
            running -= 1

    tunnel.ensure = slow_ensure  # type: ignore[method-assign]
    before = len(asyncio.all_tasks())
    r = await rig.sync(*(session(n) for n in range(1, 21)))
    assert peak == 4
    assert tasks - before <= 4, "a task per tunnel waits in memory, not 4 workers"
    assert set(r["failed"]) == {uid(7)} and "Connection reset by peer" in r["failed"][uid(7)]
    assert len(rig.tunnels) == 19 and r["tunnelWrites"] == 19


# ------------------------------------------------------------- observation


async def test_a_no_op_cycle_reads_with_observe_and_the_deep_check_repairs_drift(rig: Rig) -> None:
    sessions = [session(n) for n in range(1, 51)]
    r = await rig.sync(*sessions)
    assert r["failed"] == {} and r["deepCheck"] is True  # the first cycle after a start
    active = [session(n, SessionStatus.ACTIVE) for n in range(1, 51)]

    mark = rig.fakes.journal.mark()
    r = await rig.sync(*active)
    calls = rig.fakes.journal.since(mark, writes_only=False)
    tunnel_reads = [c.op for c in calls if c.backend == "tunnel" and c.op in ("list", "observe")]
    assert tunnel_reads == ["observe"] and r["deepCheck"] is False
    assert [c for c in calls if c.wrote] == []

    # Drift inside WireGuard (someone changed the keepalive): the cheap read, like a real
    # backend's, shows the settings as last written and cannot see it...
    name = "dn42-3"
    fake = rig.fakes.tunnel
    written = dict(fake.tunnels)
    real_observe = fake.observe

    async def observe(owner: str | None = None) -> Any:
        await real_observe(owner)  # journaled
        return written

    fake.observe = observe  # type: ignore[method-assign]
    fake.tunnels[name] = attrs.evolve(fake.tunnels[name], keepalive=99)
    await rig.clock.advance(599)
    r = await rig.sync(*active)
    assert r["deepCheck"] is False and r["tunnelWrites"] == 0

    # ...the deep check after sessions.deepCheckInterval (600 s) does, and repairs it.
    await rig.clock.advance(1)
    mark = rig.fakes.journal.mark()
    r = await rig.sync(*active)
    assert r["deepCheck"] is True and r["tunnelWrites"] == 1 and uid(3) in r["changed"]
    assert [
        c.op for c in rig.fakes.journal.since(mark, writes_only=False) if c.op in ("list", "observe")
    ] == ["list"]
    assert fake.tunnels[name].keepalive == 25


class DigestingCP(StubControlPlane):
    """Answers UNCHANGED for the caller's ``known`` digest, as the HTTP and file
    sources do; counts the answers it handed over."""

    decoded = 0
    during: Callable[[], Awaitable[None]] | None = None
    """Run once by the next fetch that names a known digest, before it answers."""

    async def fetch_digest(self, resource: str, *, known: bytes | None = None) -> tuple[Any, bytes]:
        if known is not None and self.during is not None:
            during, self.during = self.during, None
            await during()
        value, digest = await super().fetch_digest(resource)
        if digest == known:
            return UNCHANGED, digest
        self.decoded += 1
        return value, digest


async def test_an_unchanged_answer_is_neither_decoded_nor_parsed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.cp = DigestingCP("test-node")
    rig.restart()
    active = [session(n, SessionStatus.ACTIVE) for n in range(1, 4)]
    r = await rig.sync(*active)
    assert r["failed"] == {} and rig.cp.decoded == 1 and len(rig.tunnels) == 3

    r = await rig.sync(*active)  # the same answer: handed over as UNCHANGED
    assert rig.cp.decoded == 1 and r["failed"] == {} and r["changed"] == {}, r
    assert len(rig.tunnels) == 3 and r["tunnelWrites"] == 0

    r = await rig.sync(*active, session(4))  # a change is decoded and applied
    assert rig.cp.decoded == 2 and "dn42-4" in rig.tunnels, r

    rig.restart()  # a new process remembers no parse: it decodes once
    r = await rig.sync(*active, session(4))
    assert rig.cp.decoded == 3 and r["failed"] == {} and len(rig.tunnels) == 4


async def test_an_unchanged_answer_is_decoded_when_a_preview_replaced_the_parse_meanwhile(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    cp = rig.cp = DigestingCP("test-node")
    rig.restart()
    active = [session(n, SessionStatus.ACTIVE) for n in range(1, 3)]
    await rig.sync(*active)

    async def preview() -> None:  # `moenet-agent plan sessions` parses another answer
        cp.set("sessions", [*active, session(3)])
        await rig.task.fetch(persist=False)
        cp.set("sessions", active)

    cp.during = preview
    r = await rig.task.run_once()
    assert r["failed"] == {} and r["changed"] == {} and len(rig.tunnels) == 2, r
    assert cp.decoded == 3  # the first answer, the preview's, and this one after all


async def test_a_deep_check_interval_of_zero_reads_deeply_every_cycle(tmp_path: Path) -> None:
    rig = Rig(tmp_path, deepCheckInterval=0)
    await rig.sync(session(1))
    r = await rig.sync(session(1, SessionStatus.ACTIVE))
    assert r["deepCheck"] is True
    assert not rig.fakes.tunnel.calls_of("observe")


# ------------------------------------------------------- transient failures


@pytest.mark.parametrize(
    "fault",
    [
        ApplyResult(ok=False, changed=True, error=BIRD_DOWN, transient=True),
        ApplyResult(
            ok=False, changed=False, error="no BIRD policy from the control plane yet", transient=True
        ),
    ],
    ids=["bird-down", "no-policy"],
)
async def test_a_transient_routing_failure_keeps_the_setup_and_retries_with_backoff(
    rig: Rig, fault: ApplyResult
) -> None:
    rig.fakes.routing.fail("declare", "sessions", result=fault, times=None)
    r = await rig.sync(session(1))
    assert set(r["failed"]) == {uid(1)} and r["retrying"] == [uid(1)]
    # Not SETUP_FAILED: the CP's status, with the reason.
    assert rig.reports()[uid(1)] == (SessionStatus.QUEUED_FOR_SETUP, f"routing: {fault.error}")
    # Nothing rolled back: the tunnel and port stay, the record is kept (provisional).
    assert rig.tunnels == {"dn42-1"} and rig.ports == {21001} and rig.fragments == set()
    assert uid(1) in rig.task.configured()
    retry = rig.task.store.load_previous().retry[uid(1)]
    assert retry.attempts == 1 and retry.setup

    # Within the backoff: nothing is tried, nothing written, nothing re-reported.
    mark = rig.fakes.journal.mark()
    await rig.clock.advance(INTERVAL / 2)
    r = await rig.sync(session(1))
    assert r["failed"] == {} and r["retrying"] == [uid(1)] and r["declares"] == 0
    assert rig.fakes.journal.since(mark) == [] and rig.report_count(uid(1)) == 1

    # One interval on: tried again (and fails again: the next wait doubles); same error, no new report.
    await rig.clock.advance(INTERVAL / 2)
    r = await rig.sync(session(1))
    assert r["declares"] == 1 and set(r["failed"]) == {uid(1)}
    assert rig.task.store.load_previous().retry[uid(1)].attempts == 2
    assert rig.report_count(uid(1)) == 1
    await rig.clock.advance(INTERVAL)
    assert (await rig.sync(session(1)))["declares"] == 0  # 2 intervals now

    # The backoff survives a restart.
    rig.restart()
    assert (await rig.sync(session(1)))["declares"] == 0

    # BIRD is back: the next attempt goes live, ACTIVE, the backoff is forgotten.
    rig.fakes.routing.heal()
    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1))
    assert r["failed"] == {} and r["retrying"] == [] and rig.fragments == {uid(1)}
    assert rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)
    assert rig.task.store.load_previous().retry == {}


async def test_a_wireguard_go_that_fails_to_start_is_retried_not_setup_failed(rig: Rig) -> None:
    rig.fakes.tunnel.fail("ensure", "dn42-2", ConnectionResetError("Connection reset by peer"), late=True)
    r = await rig.sync(session(1), session(2))
    assert set(r["failed"]) == {uid(2)} and uid(2) in r["retrying"]
    status, error = rig.reports()[uid(2)]
    assert status == SessionStatus.QUEUED_FOR_SETUP and "Connection reset by peer" in (error or "")
    assert rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)
    # What was built stays for the next attempt.
    assert "dn42-2" in rig.tunnels and 21002 in rig.ports

    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1, SessionStatus.ACTIVE), session(2))
    assert r["failed"] == {} and rig.reports()[uid(2)] == (SessionStatus.ACTIVE, None)
    assert rig.fragments == {uid(1), uid(2)}


async def test_an_oserror_from_ensure_that_a_retry_may_fix_is_transient(rig: Rig) -> None:
    import errno

    rig.fakes.tunnel.fail("ensure", "dn42-1", OSError(errno.EAGAIN, "Resource temporarily unavailable"))
    r = await rig.sync(session(1))
    assert r["retrying"] == [uid(1)]
    assert rig.reports()[uid(1)][0] == SessionStatus.QUEUED_FOR_SETUP


async def test_a_permanent_failure_after_transient_ones_still_rolls_back(rig: Rig) -> None:
    rig.fakes.routing.fail(
        "declare", "sessions", result=ApplyResult(ok=False, changed=True, error=BIRD_DOWN, transient=True)
    )
    await rig.sync(session(1))
    assert rig.tunnels == {"dn42-1"}
    rig.fakes.routing.reject(uid(1), "peers/dn42_x.conf:3: syntax error")
    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1))
    assert set(r["failed"]) == {uid(1)} and r["retrying"] == []
    assert rig.reports()[uid(1)][0] == SessionStatus.SETUP_FAILED
    assert rig.tunnels == set() and rig.ports == set() and rig.fragments == set()
    assert uid(1) not in rig.task.configured()


async def test_bird_rejecting_one_session_is_permanent_while_the_other_is_retried(rig: Rig) -> None:
    rig.fakes.routing.reject(uid(2), "peers/dn42_x.conf:3: syntax error")
    rig.fakes.routing.fail(
        "declare",
        "sessions",
        result=ApplyResult(
            ok=False,
            changed=True,
            error=BIRD_DOWN,
            transient=True,
            rejected={uid(2): "peers/dn42_x.conf:3: x"},
        ),
        times=None,
    )
    r = await rig.sync(session(1), session(2))
    assert set(r["failed"]) == {uid(1), uid(2)} and r["retrying"] == [uid(1)]
    assert rig.reports()[uid(2)][0] == SessionStatus.SETUP_FAILED
    assert rig.reports()[uid(1)][0] == SessionStatus.QUEUED_FOR_SETUP
    assert rig.tunnels == {"dn42-1"} and rig.ports == {21001}


async def test_a_transient_failure_of_an_active_session_keeps_it_active(rig: Rig) -> None:
    await rig.sync(session(1))
    del rig.fakes.tunnel.tunnels["dn42-1"]  # deleted by hand
    rig.fakes.tunnel.fail("ensure", "dn42-1", ConnectionRefusedError("wireguard-go: connection refused"))
    await rig.clock.advance(600)  # the deep check sees the tunnel gone
    r = await rig.sync(session(1, SessionStatus.ACTIVE))
    assert set(r["failed"]) == {uid(1)} and r["retrying"] == [uid(1)]
    status, error = rig.reports()[uid(1)]
    assert status == SessionStatus.ACTIVE and "connection refused" in (error or "")
    assert rig.ports == {21001} and rig.fragments == {uid(1)} and uid(1) in rig.task.configured()

    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1, SessionStatus.ACTIVE))
    assert r["failed"] == {} and rig.tunnels == {"dn42-1"} and r["retrying"] == []


async def test_a_recovered_session_clears_the_error_the_cp_still_shows(rig: Rig) -> None:
    await rig.sync(session(1))
    del rig.fakes.tunnel.tunnels["dn42-1"]
    rig.fakes.tunnel.fail("ensure", "dn42-1", ConnectionRefusedError("wireguard-go: connection refused"))
    await rig.clock.advance(600)
    await rig.sync(session(1, SessionStatus.ACTIVE))
    status, error = rig.reports()[uid(1)]
    assert status == SessionStatus.ACTIVE and error is not None
    reported = rig.report_count(uid(1))

    # The CP now shows the error it heard; the tunnel works again: one report clears it.
    await rig.clock.advance(INTERVAL)
    r = await rig.sync(session(1, SessionStatus.ACTIVE, lastError=error))
    assert r["failed"] == {} and rig.tunnels == {"dn42-1"}
    assert rig.report_count(uid(1)) == reported + 1
    last = [c.body for c in rig.cp.calls("modify", "POST") if c.body["uuid"] == uid(1)][-1]
    assert last == {"uuid": uid(1), "status": int(SessionStatus.ACTIVE), "lastError": None}

    # Once the CP shows it cleared, nothing more is said.
    await rig.clock.advance(INTERVAL)
    await rig.sync(session(1, SessionStatus.ACTIVE))
    assert rig.report_count(uid(1)) == reported + 1


async def test_an_empty_last_error_is_no_error_to_clear(rig: Rig) -> None:
    """The Go agent's CP sends ``"lastError": ""`` for a healthy session."""
    await rig.sync(session(1))
    reported = rig.report_count(uid(1))
    for _ in range(3):
        await rig.clock.advance(INTERVAL)
        await rig.sync(session(1, SessionStatus.ACTIVE, lastError=""))
    assert rig.report_count(uid(1)) == reported


async def test_a_changed_session_is_retried_at_once(rig: Rig) -> None:
    rig.fakes.routing.fail(
        "declare", "sessions", result=ApplyResult(ok=False, changed=True, error=BIRD_DOWN, transient=True)
    )
    await rig.sync(session(1))
    changed = {**session(1), "endpoint": "192.0.2.200:51820"}
    r = await rig.sync(changed)
    assert r["failed"] == {} and rig.reports()[uid(1)] == (SessionStatus.ACTIVE, None)
