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
