"""Tunnels with the agent's alias but no record are removed, under the guard
(issue 12 item 7), without root: the shared fakes.

An orphan is a ``sessions``-owned tunnel that no record and no session of the
answer names (a crash between create and record, a wiped state directory). It
is a removal like any other: counted by the guard, kept when the guard refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.sessions_rig import KEY, SessionsRig, uid
from helpers.sessions_rig import session as rig_session
from moenet_sessions.planner import ORPHAN_PREFIX, Kind

from moenet_core import SessionStatusEvent, TunnelSpec, hookimpl


def session(n: int) -> dict[str, Any]:
    return rig_session(n)


class Rig(SessionsRig):
    def __init__(self, tmp: Path, guard: dict[str, Any]) -> None:
        super().__init__(tmp, **guard)

    async def orphan(self, name: str, owner: str = "sessions") -> None:
        spec = TunnelSpec(
            name=name,
            private_key_file=str(self.tmp / "wg.key"),
            listen_port=None,
            peer_public_key=KEY,
            owner=owner,
        )
        await self.fakes.tunnel.ensure(spec)


async def test_orphan_tunnels_are_removed_and_others_kept(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"guardMinCount": 100})
    events: list[SessionStatusEvent] = []

    class Recorder:
        @hookimpl
        def moenet_session_status_changed(self, event: SessionStatusEvent) -> None:
            events.append(event)

    rig.ctx.register_hooks(Recorder())
    await rig.orphan("dn42-77")
    await rig.orphan("mesh-1", owner="mesh")  # another owner's: never the sessions plugin's
    await rig.sync(session(1), session(2))
    assert rig.tunnels == {"dn42-1", "dn42-2", "mesh-1"}
    # A stray tunnel is not a session: no status event, no report names it.
    assert {e.uuid for e in events} == {uid(1), uid(2)}
    assert all(not c.body["uuid"].startswith(ORPHAN_PREFIX) for c in rig.cp.calls("modify", "POST"))
    # The sessions of the answer are not orphans, and a second cycle changes nothing.
    summary = await rig.sync(session(1), session(2))
    assert summary["tunnelWrites"] == 0
    assert rig.tunnels == {"dn42-1", "dn42-2", "mesh-1"}


async def test_orphan_tunnel_named_by_a_session_of_the_answer_is_adopted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"guardMinCount": 100})
    await rig.orphan("dn42-1")  # a crash after create, before the record: the session takes it
    await rig.sync(session(1))
    assert rig.tunnels == {"dn42-1"}
    assert rig.fakes.tunnel.tunnels["dn42-1"].peer_public_key == KEY


async def test_guard_counts_orphans_and_a_refusal_keeps_them(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"guardMinCount": 1, "guardMaxShare": 0.5})
    await rig.sync(session(1))
    for n in (70, 71, 72):
        await rig.orphan(f"dn42-{n}")
    summary = await rig.sync(session(1))
    assert summary["guard"] is not None and summary["guard"]["refused"]
    assert {"dn42-70", "dn42-71", "dn42-72"} <= rig.tunnels
    withheld = set(summary["guard"]["withheld"])
    assert withheld == {ORPHAN_PREFIX + f"dn42-{n}" for n in (70, 71, 72)}
    # Let the operator's digest through: now they go.
    digest = summary["guard"]["digest"]
    rig.ctx.config.sections["sessions"].allow_removal = digest
    await rig.sync(session(1))
    assert rig.tunnels == {"dn42-1"}


def test_planner_names_orphans_as_removals(tmp_path: Path) -> None:
    from moenet_sessions.desired import NodeSettings
    from moenet_sessions.planner import Observed, plan
    from moenet_sessions.records import Previous

    from moenet_core import TunnelState

    state = TunnelState(
        name="dn42-9",
        ifindex=9,
        listen_port=None,
        peer_public_key=KEY,
        endpoint=None,
        allowed_ips=(),
        keepalive=None,
        mtu=1420,
        addresses=(),
        up=True,
        owner="sessions",
    )
    settings = NodeSettings(private_key_file=str(tmp_path / "k"), link_local="fe80::1")
    p = plan([], [], Observed(tunnels={"dn42-9": state}), Previous(), settings=settings)
    (orphan,) = p.sessions
    assert orphan.uuid == ORPHAN_PREFIX + "dn42-9"
    assert orphan.kind is Kind.REMOVE and orphan.remove_interfaces == ("dn42-9",)
    assert orphan.report_on_success is None
    assert "carries the agent's alias" in orphan.drift[0]
