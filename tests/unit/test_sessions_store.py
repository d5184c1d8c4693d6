"""Persistence: saved answer, memory and the status outbox (moenet_sessions.store)."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest
from moenet_sessions.records import ConfiguredSession, Previous, Report
from moenet_sessions.store import Outbox, SessionStateError, SessionStore

from moenet_core.backends import TunnelAddress, TunnelSpec
from moenet_core.intents import EbgpPeerIntent
from moenet_core.models import SessionStatus as S
from moenet_core.state import StateError, StateStore

KEY = base64.b64encode(b"\x01" * 32).decode()


PEER = EbgpPeerIntent(
    asn=4242420001,
    latency=5,
    crypto=34,
    interface="wg1",
    neighbor_link_local="fe80::2",
    local_link_local="fe80::1",
    neighbor_ipv4="172.20.0.2",
    local_ipv4="172.20.0.1",
)


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
    rec = ConfiguredSession(interface="wg1", tunnel=spec, peer=PEER, port=20001, psk_digest="ab")
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


def test_a_record_of_the_previous_version_reads_as_the_same_intent(tmp_path: pathlib.Path) -> None:
    """Before intents, ``peer`` was the camelCase payload with the session's uuid and
    without ``crypto`` (the BIRD backend's default, 34, applied)."""
    doc = previous().to_json()
    assert doc["configured"]["u1"]["peer"]["kind"] == "ebgpPeer"
    doc["configured"]["u1"]["peer"] = {
        "uuid": "u1",
        "asn": 4242420001,
        "latency": 5,
        "bandwidth": 24,
        "name": "",
        "description": "",
        "interface": "wg1",
        "localLinkLocal": "fe80::1",
        "neighborLinkLocal": "fe80::2",
        "neighborIpv4": "172.20.0.2",
        "localIpv4": "172.20.0.1",
    }
    (tmp_path / "state.json").write_text(json.dumps(doc))
    assert SessionStore(StateStore(tmp_path)).load_previous() == previous()


def test_answer_round_trip(tmp_path: pathlib.Path) -> None:
    s = SessionStore(StateStore(tmp_path))
    assert s.load_answer() is None
    ans = {"bgpSessions": []}
    assert s.save_answer(ans) and not s.save_answer(ans)
    assert s.load_answer() == ans


def test_an_answer_with_the_saved_digest_is_not_written_again(tmp_path: pathlib.Path) -> None:
    """The store keeps the digest of the answer it saved, not the answer: the same
    digest writes nothing (not even the encode), another digest writes."""
    s = SessionStore(StateStore(tmp_path))
    assert s.save_answer({"bgpSessions": []}, b"d1")
    path = tmp_path / "answer.json"
    path.write_text("overwritten by hand")
    assert s.save_answer({"bgpSessions": [1]}, b"d1") is False  # trusted: same digest
    assert path.read_text() == "overwritten by hand"
    assert s.save_answer({"bgpSessions": []}, b"d2")
    assert s.load_answer() == {"bgpSessions": []}


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("state.json", b"{not json"),
        ("state.json", b"[]"),
        ("state.json", b'{"version": 1, "configured": {"u": {"interface": 1}}}'),
        ("state.json", b'{"version": 1, "seen": {"u": 9}}'),
        (
            "state.json",
            b'{"version": 1, "configured": {"u": {"interface": "wg1", "tunnel": {}, "port": 1, '
            b'"peer": {"kind": "ebgpPeer", "asn": 0, "neighborIpv4": "172.20.0.2"}}}}',
        ),
        (
            "state.json",
            b'{"version": 1, "configured": {"u": {"interface": "wg1", "tunnel": {}, "port": 1, '
            b'"peer": {"kind": "babelInterface", "pattern": "wg1"}}}}',
        ),
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


def test_files_written_before_the_typed_api_still_load(tmp_path: pathlib.Path) -> None:
    """Byte for byte what the previous store wrote (``write_json`` of hand-built dicts)."""
    import os

    from moenet_sessions.links import LATENCY_FILE, LinkBook

    def put(name: str, doc: object) -> None:
        (tmp_path / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    put("answer.json", {"version": 1, "answer": {"bgpSessions": []}})
    put(
        "outbox.json",
        {
            "version": 1,
            "entries": [
                {
                    "report": {"uuid": "b", "status": 2, "lastError": "e"},
                    "attempts": 1,
                    "lastError": "timeout",
                },
                {"report": {"uuid": "a", "status": 1}, "attempts": 0, "lastError": None},
            ],
        },
    )
    put("state.json", previous().to_json())
    put(LATENCY_FILE, {"version": 1, "tiers": {"u1": 3, "u2": 7}})
    stamps = {p.name: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()}

    st = StateStore(tmp_path)
    s = SessionStore(st)
    assert s.load_answer() == {"bgpSessions": []}
    assert s.load_previous() == previous()
    box = Outbox(st)
    assert [(e.report, e.attempts, e.last_error) for e in box.pending()] == [
        (r("b", S.ERROR, last_error="e"), 1, "timeout"),
        (r("a"), 0, None),
    ]
    assert LinkBook(st).tiers() == {"u1": 3, "u2": 7}
    # Saving the same content again rewrites nothing: the new writer's bytes are the old ones.
    assert s.save_answer({"bgpSessions": []}) is False and s.save_previous(previous()) is False
    box._save()
    assert {p.name: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()} == stamps


@pytest.mark.parametrize("name", ["answer.json", "state.json", "outbox.json"])
def test_a_file_from_a_newer_agent_is_refused(tmp_path: pathlib.Path, name: str) -> None:
    (tmp_path / name).write_text('{"version": 2, "answer": {}, "entries": []}')
    with pytest.raises(SessionStateError, match=rf"{name} has version 2, written by a newer moenet-agent"):
        if name == "outbox.json":
            Outbox(StateStore(tmp_path))
        else:
            s = SessionStore(StateStore(tmp_path))
            s.load_previous() if name == "state.json" else s.load_answer()
