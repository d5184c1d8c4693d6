from __future__ import annotations

import os
import stat

import pytest

from moenet_core.state import StateError, StateStore


def test_write_read_json_roundtrip(tmp_path):
    store = StateStore(tmp_path / "s")
    assert store.read_json("x.json", default={"none": True}) == {"none": True}
    store.write_json("x.json", {"a": [1, 2]})
    assert store.read_json("x.json") == {"a": [1, 2]}
    mode = stat.S_IMODE(os.stat(store.path("x.json")).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o700


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    store = StateStore(tmp_path)
    store.write_bytes("f", b"old")
    inode_before = os.stat(store.path("f")).st_ino
    store.write_bytes("f", b"new")
    assert store.read_bytes("f") == b"new"
    assert os.stat(store.path("f")).st_ino != inode_before  # renamed over, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_failed_write_keeps_old_content(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.write_bytes("f", b"old")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StateError, match="No space left"):
        store.write_bytes("f", b"new")
    assert store.read_bytes("f") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_corrupt_json_is_an_error_not_empty_state(tmp_path):
    store = StateStore(tmp_path)
    store.write_bytes("s.json", b"{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        store.read_json("s.json", default={})


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "", ".hidden"])
def test_names_cannot_escape_the_directory(tmp_path, name):
    with pytest.raises(StateError, match="invalid state file name"):
        StateStore(tmp_path).write_bytes(name, b"x")


def test_scoped_store_and_names(tmp_path):
    store = StateStore(tmp_path)
    sub = store.scoped("plugins").scoped("heartbeat")
    sub.write_json("a.json", 1)
    sub.write_json("b.json", 2)
    assert sub.names() == ["a.json", "b.json"]
    assert (tmp_path / "plugins" / "heartbeat" / "a.json").is_file()
    assert sub.delete("a.json") is True
    assert sub.delete("a.json") is False


def test_atomic_write_modes_and_no_replace(tmp_path):
    from moenet_core.state import atomic_write

    target = tmp_path / "key"
    assert atomic_write(target, b"first", mode=0o600, replace=False) is True
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert atomic_write(target, b"second", replace=False) is False  # an existing file wins
    assert target.read_bytes() == b"first"
    assert atomic_write(target, b"third", mode=0o644) is True
    assert target.read_bytes() == b"third" and stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


# ------------------------------------------------------------ typed documents

import json  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

import attrs  # noqa: E402

from moenet_core.config import checked  # noqa: E402
from moenet_core.models import SessionStatus  # noqa: E402
from moenet_core.state import from_document, json_codec, to_document  # noqa: E402


def _non_negative(v: int) -> str | None:
    return None if v >= 0 else "must not be negative"


@attrs.frozen(kw_only=True)
class Entry:
    name: str
    attempts: int = attrs.field(default=0, **checked(_non_negative))
    last_error: str | None = None
    tags: tuple[str, ...] = ()
    status: SessionStatus = SessionStatus.ACTIVE


@attrs.frozen(kw_only=True)
class Doc:
    entries: list[Entry]
    counts: Mapping[str, int] = attrs.field(factory=dict)
    ports: frozenset[int] = frozenset()


DOC = Doc(
    entries=[Entry(name="a", attempts=2, last_error="x", tags=("t",), status=SessionStatus.ERROR)],
    counts={"a": 1},
    ports=frozenset({2, 1}),
)


def test_document_layout_is_version_beside_camel_case_fields():
    assert to_document(DOC) == {
        "version": 1,
        "entries": [{"name": "a", "attempts": 2, "lastError": "x", "tags": ["t"], "status": 2}],
        "counts": {"a": 1},
        "ports": [1, 2],
    }
    assert from_document(Doc, json.loads(json.dumps(to_document(DOC, version=3))), version=3) == DOC


def test_load_save_round_trip_and_unchanged_is_not_rewritten(tmp_path):
    store = StateStore(tmp_path)
    assert store.load("d.json", Doc) is None
    assert store.load("d.json", Doc, default=Doc(entries=[])) == Doc(entries=[])
    assert store.save("d.json", DOC) is True
    inode = os.stat(store.path("d.json")).st_ino
    assert store.save("d.json", DOC) is False
    assert os.stat(store.path("d.json")).st_ino == inode  # not even rewritten in place
    assert store.load("d.json", Doc) == DOC
    assert store.save("d.json", attrs.evolve(DOC, counts={})) is True
    assert store.load("d.json", Doc) == attrs.evolve(DOC, counts={})


def test_a_newer_version_is_refused_never_read_as_empty(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("d.json", {"version": 2, "entries": []})
    with pytest.raises(StateError, match=r"d\.json has version 2, written by a newer moenet-agent"):
        store.load("d.json", Doc, default=Doc(entries=[]))
    with pytest.raises(StateError, match="newer"):
        store.load_document("d.json")
    assert store.load("d.json", Doc, version=2) == Doc(entries=[])


def test_an_older_version_goes_through_migrate(tmp_path):
    store = StateStore(tmp_path)
    store.write_json("d.json", {"version": 1, "items": ["a", "b"]})
    seen: list[tuple[int, dict[str, Any]]] = []

    def migrate(version: int, fields: dict[str, Any]) -> dict[str, Any]:
        seen.append((version, dict(fields)))
        return {"entries": [{"name": n} for n in fields["items"]]}

    doc = store.load("d.json", Doc, version=2, migrate=migrate)
    assert doc == Doc(entries=[Entry(name="a"), Entry(name="b")])
    assert seen == [(1, {"items": ["a", "b"]})]
    with pytest.raises(StateError, match=r"d\.json has version 1, older .* no migration is known"):
        store.load("d.json", Doc, version=2)
    # A file without a version is version 0: migrated, or refused.
    store.write_json("old.json", {"items": ["c"]})
    assert store.load("old.json", Doc, migrate=migrate) == Doc(entries=[Entry(name="c")])
    with pytest.raises(StateError, match=r"old\.json has no version"):
        store.load("old.json", Doc)

    def broken(version: int, fields: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("items")

    with pytest.raises(StateError, match=r"old\.json: cannot migrate from no version: 'items'"):
        store.load("old.json", Doc, migrate=broken)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"version": "1", "entries": []}', "'version' must be a positive integer"),
        (b'{"version": true, "entries": []}', "'version' must be a positive integer"),
        (b'{"version": 1}', "entries: required"),
        (b'{"version": 1, "entries": "x"}', 'entries: expected a list, got "x"'),
        (b'{"version": 1, "entries": [{"name": 1}]}', "entries[0].name: expected a string, got 1"),
        (b'{"version": 1, "entries": [{"name": "a", "tags": "abc"}]}', "entries[0].tags: expected a list"),
        (b'{"version": 1, "entries": [{"name": "a", "attempts": -1}]}', "attempts: must not be negative"),
        (b'{"version": 1, "entries": [{"name": "a", "status": true}]}', "entries[0].status"),
        (b'{"version": 1, "entries": [{"name": "a", "status": 99}]}', "99 is not a valid SessionStatus"),
        (b'{"version": 1, "entries": [], "counts": {"a": "1"}}', "counts.a: expected an integer"),
    ],
)
def test_a_corrupt_or_invalid_document_names_the_file(tmp_path, content, problem):
    store = StateStore(tmp_path)
    store.write_bytes("d.json", content)
    with pytest.raises(StateError) as info:
        store.load("d.json", Doc, default=Doc(entries=[]))
    assert str(store.path("d.json")) in str(info.value) and problem in str(info.value), str(info.value)


def test_document_classes_are_checked():
    @attrs.frozen
    class Versioned:
        version: int = 1

    with pytest.raises(TypeError, match="version"):
        to_document(Versioned())
    with pytest.raises(TypeError, match="not an attrs class"):
        to_document({"a": 1})
    with pytest.raises(ValueError, match="positive integer"):
        to_document(DOC, version=0)


class Strict:
    """A record with its own strict JSON codec (like the sessions' records)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strict) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Strict:
        if not isinstance(data, dict) or not isinstance(data.get("n"), int):
            raise ValueError(f"{where}: n must be an integer")
        return cls(data["n"])


json_codec(Strict)


@attrs.frozen
class Holder:
    items: dict[str, Strict]


def test_classes_with_their_own_codec(tmp_path):
    store = StateStore(tmp_path)
    assert store.save("h.json", Holder(items={"a": Strict(1)}))
    assert store.read_json("h.json") == {"version": 1, "items": {"a": {"n": 1}}}
    assert store.load("h.json", Holder) == Holder(items={"a": Strict(1)})
    store.write_json("h.json", {"version": 1, "items": {"a": {"n": "1"}}})
    with pytest.raises(StateError, match=r"items\.a: Strict: n must be an integer"):
        store.load("h.json", Holder)


def test_raw_documents_for_records_with_their_own_codec(tmp_path):
    store = StateStore(tmp_path)
    assert store.load_document("r.json") is None
    assert store.save_document("r.json", {"a": 1}, version=2) is True
    assert store.save_document("r.json", {"a": 1}, version=2) is False
    assert store.read_json("r.json") == {"version": 2, "a": 1}
    assert store.load_document("r.json", version=2) == {"a": 1}
    with pytest.raises(ValueError, match="version"):
        store.save_document("r.json", {"version": 3})


def test_write_json_if_changed_replaces_a_corrupt_file(tmp_path):
    store = StateStore(tmp_path)
    store.write_bytes("x.json", b"{broken")
    assert store.write_json_if_changed("x.json", {"a": 1}) is True
    assert store.write_json_if_changed("x.json", {"a": 1}) is False
    store.write_bytes("x.json", b'{"a":1}')  # same content, other spelling: left alone
    assert store.write_json_if_changed("x.json", {"a": 1}) is False


# --------------------------------------- files written before the typed API


def test_old_updater_and_loopback_files_still_load(tmp_path):
    from moenet_loopback.backend import STATE_FILE as LOOPBACK_FILE
    from moenet_loopback.backend import LinkLoopback, LoopbackError
    from moenet_updater.state import STATE_FILE as UPDATER_FILE
    from moenet_updater.state import Pending, UpdaterState, load, save

    store = StateStore(tmp_path)
    # Exactly what the previous updater wrote (to_json of version 1).
    old_updater = {
        "version": 1,
        "pending": {
            "version": "1.1.0",
            "previous": "/opt/v/1.0.0",
            "target": "/opt/v/1.1.0",
            "switchedAt": 1700000000.5,
            "deadline": 1700000600,
            "healthTasks": ["sessionSync"],
        },
        "bad": {"1.0.5": {"reason": "unhealthy", "at": 1699999999.0}},
        "lastCheck": 1700000000.0,
        "lastResult": "updated",
        "lastUpdate": {"from": "1.0.0", "to": "1.1.0", "at": 1700000000.0},
    }
    store.write_json(UPDATER_FILE, old_updater)
    state = load(store)
    assert state.pending == Pending(
        version="1.1.0",
        previous="/opt/v/1.0.0",
        target="/opt/v/1.1.0",
        switched_at=1700000000.5,
        deadline=1700000600.0,
        health_tasks=["sessionSync"],
    )
    assert (
        state.bad == {"1.0.5": {"reason": "unhealthy", "at": 1699999999.0}} and state.last_result == "updated"
    )
    mtime = os.stat(store.path(UPDATER_FILE)).st_mtime_ns
    save(store, state)  # the same content: not rewritten
    assert os.stat(store.path(UPDATER_FILE)).st_mtime_ns == mtime
    assert store.read_json(UPDATER_FILE) == old_updater
    assert load(StateStore(tmp_path / "none")) == UpdaterState()
    store.write_json(UPDATER_FILE, {**old_updater, "version": 2})
    with pytest.raises(StateError, match=r"newer moenet-agent.*fix or remove it"):
        load(store)

    # The loopback's addresses.json as the previous version wrote it.
    store.write_json(LOOPBACK_FILE, {"version": 1, "interfaces": {"dn42": ["172.20.0.1/32", "fd00::1/128"]}})
    backend = LinkLoopback(store, None)
    assert backend.owned() == {"dn42": ("172.20.0.1/32", "fd00::1/128")}
    store.write_json(LOOPBACK_FILE, {"version": 1, "interfaces": {"dn42": "172.20.0.1/32"}})
    with pytest.raises(LoopbackError, match=r"addresses\.json.*interfaces\.dn42: expected a list"):
        LinkLoopback(store, None).owned()
    store.write_json(LOOPBACK_FILE, {"version": 7, "interfaces": {}})
    with pytest.raises(LoopbackError, match="newer"):
        LinkLoopback(store, None).owned()
