"""Issue 14 items 2 and 9: key files the agent must not create, replace or use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from moenet_sessions import keys as skeys
from moenet_wireguard import keys as wkeys

from moenet_core import StateStore

PUB = wkeys.generate_private_key().public_key()


# ------------------------------------------------------- public key files


def test_public_key_never_replaces_a_symlink(tmp_path: Path):
    write = skeys.write_public_key
    target = tmp_path / "versions" / "1.0"
    target.mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(target)
    with pytest.raises(skeys.KeyFileError, match="symbolic link"):
        write(link, PUB)
    assert link.is_symlink() and os.readlink(link) == str(target)


def test_public_key_never_replaces_a_foreign_file(tmp_path: Path):
    write = skeys.write_public_key
    path = tmp_path / "bird.conf"
    path.write_text("router id 1.2.3.4;\n")
    with pytest.raises(skeys.KeyFileError, match="other than"):
        write(path, PUB)
    assert path.read_text() == "router id 1.2.3.4;\n"


def test_public_key_replaces_its_own_file(tmp_path: Path):
    write = skeys.write_public_key
    path = tmp_path / "public.key"
    assert write(path, PUB) is True
    assert write(path, PUB) is False
    other = wkeys.generate_private_key().public_key()
    assert write(path, other) is True
    assert path.read_text() == other + "\n"


# ------------------------------------------------------- private key checks


def test_loose_or_foreign_private_key_is_refused(tmp_path: Path):
    key = tmp_path / "private.key"
    skeys.ensure_private_key(key)
    assert skeys.private_key_problem(key) is None
    os.chmod(key, 0o400)
    assert skeys.private_key_problem(key) is None
    os.chmod(key, 0o644)
    assert "mode 0644" in (skeys.private_key_problem(key) or "")
    os.chmod(key, 0o600)
    assert "not the agent's user" in (skeys.private_key_problem(key, euid=os.geteuid() + 1) or "")
    assert skeys.private_key_problem(tmp_path / "missing") is None  # the agent will generate it


def test_missing_key_is_generated_only_when_the_node_never_had_one(tmp_path: Path):
    store = StateStore(tmp_path / "state")
    key = tmp_path / "wg" / "private.key"
    assert skeys.missing_key_problem(key, store) is None  # a new node: generate
    skeys.ensure_private_key(key)
    skeys.record(store, key, PUB)
    assert skeys.missing_key_problem(key, store) is None  # present
    moved = tmp_path / "elsewhere.key"
    problem = skeys.missing_key_problem(moved, store)
    assert problem is not None and "refusing to generate" in problem and str(key) in problem
    assert not moved.exists()


def run_validate(tmp_path: Path, sessions: dict) -> subprocess.CompletedProcess[str]:
    cfg = {
        "node": {"name": "jp1"},
        "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
        "state": {"directory": str(tmp_path / "state")},
        "sessions": sessions,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    return subprocess.run(
        [sys.executable, "-m", "moenet_core", "validate", "-c", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_validate_refuses_a_0644_private_key(tmp_path: Path):
    key = tmp_path / "private.key"
    skeys.ensure_private_key(key)
    os.chmod(key, 0o644)
    res = run_validate(tmp_path, {"privateKeyPath": str(key)})
    assert res.returncode == 1
    assert f"chmod 600 {key}" in res.stderr


def test_validate_accepts_a_missing_key_it_will_generate(tmp_path: Path):
    res = run_validate(tmp_path, {"privateKeyPath": str(tmp_path / "new.key")})
    assert res.returncode == 0, res.stderr


def test_validate_refuses_a_symlinked_public_key_path(tmp_path: Path):
    (tmp_path / "target").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "target")
    res = run_validate(
        tmp_path, {"privateKeyPath": str(tmp_path / "new.key"), "publicKeyPath": str(tmp_path / "current")}
    )
    assert res.returncode == 1
    assert "symbolic link" in res.stderr


def test_validate_refuses_a_moved_key_when_the_node_had_one(tmp_path: Path):
    store = StateStore(tmp_path / "state").scoped("plugins").scoped("sessions")
    skeys.record(store, tmp_path / "old.key", PUB)
    res = run_validate(tmp_path, {"privateKeyPath": str(tmp_path / "new.key")})
    assert res.returncode == 1
    assert "refusing to generate" in res.stderr
    assert not (tmp_path / "new.key").exists()


def test_start_fails_the_sessions_plugin_with_the_same_message(tmp_path: Path):
    """The start runs the same check (``moenet_configure``), before any tunnel."""
    from moenet_core.agent import structure_plugin_sections
    from moenet_core.cli import disabled_plugins
    from moenet_core.config import build_config
    from moenet_core.plugins import AgentPluginManager

    key = tmp_path / "private.key"
    skeys.ensure_private_key(key)
    os.chmod(key, 0o640)
    cfg, _ = build_config(
        {
            "node": {"name": "jp1"},
            "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
            "state": {"directory": str(tmp_path / "state")},
            "sessions": {"privateKeyPath": str(key)},
        },
        env={},
    )
    disabled, enabled = disabled_plugins(cfg, {})
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    structure_plugin_sections(cfg, pm)
    pm.collect("moenet_configure", config=cfg)
    record = pm.records["sessions"]
    assert record.status == "failed"
    assert "mode 0640" in (record.error or "")
