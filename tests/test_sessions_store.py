"""Persistence: saved answer, memory and the status outbox (moenet_sessions.store)."""

from __future__ import annotations

import base64
import pathlib

import pytest
from moenet_sessions.records import ConfiguredSession, Previous, Report
from moenet_sessions.store import Outbox, SessionStateError, SessionStore

from moenet_core.backends import TunnelAddress, TunnelSpec
from moenet_core.models import SessionStatus as S
from moenet_core.state import StateError, StateStore

KEY = base64.b64encode(b"\x01" * 32).decode()


def previous() -> Previous:
    spec = TunnelSpec(
        name="wg1",
        private_key_file="/k",
        listen_port=20001,
        peer_public_key=KEY,
        preshared_key_file="/p/wg1.psk",
        endpoint="[fd00::1]:1",
        keepalive=25,
        addresses=(
            TunnelAddress(local="fe80::1/64"),
            TunnelAddress(local="172.20.0.1/32", peer="172.20.0.2"),
        ),
    )
    rec = ConfiguredSession(
        interface="wg1", tunnel=spec, peer={"asn": 4242420001}, port=20001, psk_digest="ab"
    )
    return Previous(
        configured={"u1": rec},
        reported={"u1": Report(uuid="u1", status=S.ERROR, last_error="x")},
        seen={"u1": S.QUEUED_FOR_SETUP},
    )


def test_previous_round_trip(tmp_path: pathlib.Path) -> None:
    s = SessionStore(StateStore(tmp_path))
    assert s.load_previous() == Previous()
    assert s.save_previous(previous()) is True
    assert SessionStore(StateStore(tmp_path)).load_previous() == previous()
    assert s.save_previous(previous()) is False  # unchanged: nothing written


def test_answer_round_trip(tmp_path: pathlib.Path) -> None:
    s = SessionStore(StateStore(tmp_path))
    assert s.load_answer() is None
    ans = {"bgpSessions": []}
    assert s.save_answer(ans) and not s.save_answer(ans)
    assert s.load_answer() == ans


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("state.json", b"{not json"),
        ("state.json", b"[]"),
        ("state.json", b'{"version": 1, "configured": {"u": {"interface": 1}}}'),
        ("state.json", b'{"version": 1, "seen": {"u": 9}}'),
        ("answer.json", b'{"version": 1, "answer": 5}'),
        ("answer.json", b"{}"),
    ],
)
def test_corrupt_files_are_errors(tmp_path: pathlib.Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    s = SessionStore(StateStore(tmp_path))
    with pytest.raises(StateError, match=name):
        s.load_previous() if name == "state.json" else s.load_answer()


def r(uuid: str, status: S = S.ACTIVE, **kw: object) -> Report:
    return Report(uuid=uuid, status=status, **kw)  # type: ignore[arg-type]


def test_report_json() -> None:
    assert r("u").to_json() == {"uuid": "u", "status": 1}
    assert r("u", S.DISABLED, removed=True).to_json() == {"uuid": "u", "status": 0, "removed": True}
    assert r("u", S.ERROR, last_error="e").to_json() == {"uuid": "u", "status": 2, "lastError": "e"}


def test_outbox_fifo_coalescing_ack_restart(tmp_path: pathlib.Path) -> None:
    st = StateStore(tmp_path)
    box = Outbox(st)
    box.put(r("a"))
    box.put(r("b", S.ERROR, last_error="e"))
    box.put(r("a", S.SETUP_FAILED, last_error="boom"))  # replaces the undelivered "a"
    box.put(r("b", S.ERROR, last_error="e"))  # identical: no-op
    assert [e.report.uuid for e in box.pending()] == ["b", "a"]
    box.failed("b", r("b", S.ERROR, last_error="e"), "timeout")
    again = Outbox(st)  # restart
    assert [(e.report, e.attempts, e.last_error) for e in again.pending()] == [
        (r("b", S.ERROR, last_error="e"), 1, "timeout"),
        (r("a", S.SETUP_FAILED, last_error="boom"), 0, None),
    ]
    assert again.ack("a", r("a")) is False  # the old report was replaced: nothing acked
    assert again.ack("a", r("a", S.SETUP_FAILED, last_error="boom")) is True
    assert len(Outbox(st)) == 1


def test_outbox_ack_keeps_newer_report(tmp_path: pathlib.Path) -> None:
    box = Outbox(StateStore(tmp_path))
    box.put(r("a"))
    sent = box.pending()[0].report
    box.put(r("a", S.ERROR, last_error="later"))  # queued while "sent" was in flight
    assert box.ack("a", sent) is False
    assert [e.report for e in box.pending()] == [r("a", S.ERROR, last_error="later")]


@pytest.mark.parametrize(
    "content",
    [
        b"nope",
        b"[]",
        b'{"version": 1, "entries": [1]}',
        b'{"version": 1, "entries": [{"report": {"uuid": "a"}}]}',
    ],
)
def test_outbox_corrupt_is_error(tmp_path: pathlib.Path, content: bytes) -> None:
    (tmp_path / "outbox.json").write_bytes(content)
    with pytest.raises(StateError, match=r"outbox\.json"):
        Outbox(StateStore(tmp_path))
    assert issubclass(SessionStateError, StateError)
