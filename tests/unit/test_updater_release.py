"""The updater's pure parts: release selection per channel, the verification chain,
its config, URL rules, the link switch, and ``scripts/sign-release``.

The end-to-end flow (a local release server, real wheels, venvs, restart and
rollback) is in ``test_updater_e2e.py``; the helpers here are shared with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import moenet_updater
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers.release import SIGN_RELEASE, sign_release
from moenet_updater.config import UpdaterConfig, feed_url, problems
from moenet_updater.fetch import url_problem
from moenet_updater.install import InstallError, Layout, parse_pins, prune, switch_link
from moenet_updater.releases import Release, parse_feed, select_release, wheel_name
from moenet_updater.state import Pending, UpdaterState
from moenet_updater.verify import (
    VerificationError,
    check_digest,
    load_public_key,
    parse_sums,
    verify_signature,
)
from packaging.version import Version

from moenet_core.config import build_config, structure
from moenet_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def rel(tag: str, *, prerelease: bool = False, draft: bool = False, assets: Any = None) -> dict[str, Any]:
    return {
        "tag_name": tag,
        "prerelease": prerelease,
        "draft": draft,
        "assets": assets if assets is not None else [],
    }


def pick(
    feed: list[dict[str, Any]], channel: str, current: str = "1.0.0", bad: tuple[str, ...] = ()
) -> str | None:
    releases, _ = parse_feed(feed)
    chosen = select_release(releases, channel, Version(current), bad)
    return None if chosen is None else chosen.tag


# --------------------------------------------------------------- selection

FEED = [
    rel("v1.3.0.dev2", prerelease=True),
    rel("v1.2.0rc1", prerelease=True),
    rel("v1.1.0"),
    rel("v1.4.0", draft=True),
    rel("dev-3f2a1b0", prerelease=True),
    rel("v1.0.0"),
]


def test_stable_takes_the_newest_non_prerelease_non_draft():
    assert pick(FEED, "stable") == "v1.1.0"


def test_beta_takes_the_newest_of_stable_and_prereleases_but_not_dev_builds():
    assert pick(FEED, "beta") == "v1.2.0rc1"


def test_dev_takes_the_newest_of_anything_but_drafts():
    assert pick(FEED, "dev") == "v1.3.0.dev2"


def test_a_newer_stable_beats_an_older_beta_on_the_beta_channel():
    feed = [rel("v1.2.0rc1", prerelease=True), rel("v1.2.0"), rel("v1.1.0rc3", prerelease=True)]
    assert pick(feed, "beta") == "v1.2.0"
    assert pick(feed, "dev") == "v1.2.0"


def test_prerelease_is_the_github_flag_or_the_version():
    # Flagged on GitHub without a pre-release version, or a pre-release version not flagged:
    feed = [rel("v2.0.0", prerelease=True), rel("1.5.0b1")]
    assert pick(feed, "stable") is None
    assert pick(feed, "beta") == "v2.0.0"
    releases, _ = parse_feed(feed)
    assert [r.kind for r in releases] == ["beta", "beta"]


def test_only_strictly_newer_versions_are_offered():
    assert pick([rel("v1.0.0"), rel("0.9.0")], "dev", current="1.0.0") is None
    assert pick([rel("v1.0.1")], "stable", current="1.0.0") == "v1.0.1"
    # A running pre-release is replaced by its final release.
    assert pick([rel("v1.0.0")], "stable", current="1.0.0rc2") == "v1.0.0"


def test_bad_versions_are_skipped_for_the_newest_good_one():
    feed = [rel("v1.3.0"), rel("v1.2.0"), rel("v1.1.0")]
    assert pick(feed, "stable", bad=("1.3.0",)) == "v1.2.0"
    assert pick(feed, "stable", bad=("1.3.0", "1.2.0", "1.1.0")) is None


def test_unparseable_tags_and_broken_entries_are_skipped_with_a_note():
    releases, notes = parse_feed([rel("dev-3f2a1b0"), "junk", {"draft": False}, rel("v1.0.1")])
    assert [r.tag for r in releases] == ["v1.0.1"]
    assert any("dev-3f2a1b0" in n and "PEP 440" in n for n in notes)
    assert any("entry 1" in n for n in notes) and any("no tag_name" in n for n in notes)
    with pytest.raises(ValueError, match="JSON list"):
        parse_feed({"message": "Not Found"})


def test_assets_and_the_wheel_name_use_the_normalised_version():
    releases, _ = parse_feed(
        [
            rel(
                "v1.2.0-RC.1",
                assets=[
                    {"name": "moenet_agent-1.2.0rc1-py3-none-any.whl", "browser_download_url": "https://x/w"},
                    {"name": "SHA256SUMS"},  # no URL: ignored
                    "junk",
                ],
            )
        ]
    )
    [r] = releases
    assert r.version == Version("1.2.0rc1") and r.wheel == "moenet_agent-1.2.0rc1-py3-none-any.whl"
    assert dict(r.assets) == {"moenet_agent-1.2.0rc1-py3-none-any.whl": "https://x/w"}
    assert wheel_name(Version("v3.0")) == "moenet_agent-3.0-py3-none-any.whl"
    assert isinstance(r, Release)


# ------------------------------------------------------------ verification


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


SUMS = (
    f"{hashlib.sha256(b'wheel').hexdigest()}  moenet_agent-1.1.0-py3-none-any.whl\n"
    f"{hashlib.sha256(b'reqs').hexdigest()} *requirements.txt\n"
).encode()


def test_a_signature_by_the_pinned_key_verifies_raw_or_base64(key):
    pinned = load_public_key(public_b64(key))
    sig = key.sign(SUMS)
    verify_signature(pinned, SUMS, sig)
    verify_signature(pinned, SUMS, base64.b64encode(sig) + b"\n")


def test_a_signature_by_another_key_is_refused(key):
    other = Ed25519PrivateKey.generate()
    with pytest.raises(VerificationError, match="bad signature"):
        verify_signature(load_public_key(public_b64(key)), SUMS, other.sign(SUMS))


def test_an_altered_sums_file_is_refused(key):
    sig = key.sign(SUMS)
    altered = SUMS.replace(b"moenet_agent-1.1.0", b"moenet_agent-9.9.9")
    with pytest.raises(VerificationError, match="bad signature"):
        verify_signature(load_public_key(public_b64(key)), altered, sig)


def test_a_garbled_signature_file_is_refused(key):
    with pytest.raises(VerificationError, match="not an Ed25519 signature"):
        verify_signature(load_public_key(public_b64(key)), SUMS, b"not a signature")


def test_public_keys_must_be_base64_of_32_bytes(key):
    with pytest.raises(ValueError, match="base64"):
        load_public_key("not base64!")
    with pytest.raises(ValueError, match="32-byte"):
        load_public_key(base64.b64encode(b"short").decode())


def test_sums_are_parsed_and_checked():
    sums = parse_sums(SUMS)
    assert set(sums) == {"moenet_agent-1.1.0-py3-none-any.whl", "requirements.txt"}
    check_digest(sums, "requirements.txt", hashlib.sha256(b"reqs").hexdigest().upper())
    with pytest.raises(VerificationError, match=r"checksum mismatch for moenet_agent-1\.1\.0"):
        check_digest(sums, "moenet_agent-1.1.0-py3-none-any.whl", hashlib.sha256(b"evil").hexdigest())
    with pytest.raises(VerificationError, match=r"no line for moenet_agent-1\.2\.0"):
        check_digest(sums, "moenet_agent-1.2.0-py3-none-any.whl", "00" * 32)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"abc  file\n", "line 1"),
        (b"%s  a\n%s  a\n" % (b"0" * 64, b"1" * 64), "twice"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_sums_are_refused_whole(text, error):
    with pytest.raises(VerificationError, match=error):
        parse_sums(text)


# ------------------------------------------------------------- sign-release


def test_sign_release_signs_what_the_updater_verifies(tmp_path):
    keyfile = tmp_path / "release.pem"
    public = sign_release("--generate-key", keyfile)
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    assert sign_release("--public-key", keyfile) == public
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "moenet_agent-1.1.0-py3-none-any.whl").write_bytes(b"wheel")
    (dist / "requirements.txt").write_bytes(LOCK)
    (dist / ".hidden").write_bytes(b"not listed")
    assert sign_release("--key", keyfile, dist) == public
    sums_raw = (dist / "SHA256SUMS").read_bytes()
    assert (
        sums_raw
        == (
            f"{hashlib.sha256(b'wheel').hexdigest()}  moenet_agent-1.1.0-py3-none-any.whl\n"
            f"{hashlib.sha256(LOCK).hexdigest()}  requirements.txt\n"
        ).encode()
    )
    verify_signature(load_public_key(public), sums_raw, (dist / "SHA256SUMS.sig").read_bytes())
    assert sign_release("--verify", public, dist).splitlines() == [
        "ok  moenet_agent-1.1.0-py3-none-any.whl",
        "ok  requirements.txt",
    ]
    # The script's own check fails on a changed artefact.
    (dist / "requirements.txt").write_bytes(b"evil")
    proc = subprocess.run(
        [sys.executable, str(SIGN_RELEASE), "--verify", public, str(dist)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "BAD requirements.txt" in proc.stdout


LOCK = b"moenet-fake-dep==1.0 \\\n    --hash=sha256:" + b"a" * 64 + b"\n    # via moenet-agent\n"


@pytest.mark.parametrize(
    ("lock", "error"),
    [
        (None, "no requirements.txt; the updater refuses a release whose dependencies are not pinned"),
        (b"moenet-fake-dep>=1.0\n", "is not 'name==version --hash=sha256:...'"),
        (b"moenet-fake-dep==1.0\n", "is not 'name==version --hash=sha256:...'"),
    ],
)
def test_sign_release_refuses_a_wheel_without_a_hash_pinned_lock_file(tmp_path, lock, error):
    keyfile = tmp_path / "release.pem"
    sign_release("--generate-key", keyfile)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "moenet_agent-1.1.0-py3-none-any.whl").write_bytes(b"wheel")
    if lock is not None:
        (dist / "requirements.txt").write_bytes(lock)
    proc = subprocess.run(
        [sys.executable, str(SIGN_RELEASE), "--key", str(keyfile), str(dist)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and error in proc.stderr
    assert not (dist / "SHA256SUMS").exists()
    (dist / "requirements.txt").write_bytes(b"")  # a wheel without dependencies: an empty lock
    sign_release("--key", keyfile, dist)


@pytest.mark.parametrize(
    ("text", "pinned"),
    [
        ("", []),
        (LOCK.decode(), ["moenet-fake-dep==1.0"]),
        (
            "# pip-compile\n--index-url https://pypi.org/simple\n"
            'Foo_Bar[x]==2.0 ; python_version >= "3" --hash=sha256:' + "b" * 64 + "\n",
            ['foo-bar[x]==2.0; python_version >= "3"'],
        ),
    ],
)
def test_lock_files_are_read_as_exact_pins(text, pinned):
    assert [str(p.requirement).replace("Foo_Bar", "foo-bar") for p in parse_pins(text)] == pinned


@pytest.mark.parametrize("text", ["foo>=1.0\n", "foo\n", "foo==1.*\n", "foo==1.0,==1.0.0\n", "not a req!\n"])
def test_a_lock_file_with_an_unpinned_requirement_is_refused(text):
    with pytest.raises(InstallError, match=r"requirements\.txt"):
        parse_pins(text)


def test_sign_release_never_overwrites_a_key(tmp_path):
    keyfile = tmp_path / "k.pem"
    sign_release("--generate-key", keyfile)
    before = keyfile.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(SIGN_RELEASE), "--generate-key", str(keyfile)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "refusing" in proc.stderr
    assert keyfile.read_bytes() == before


# ------------------------------------------------------------------ config


def structured(raw: dict[str, Any]) -> tuple[UpdaterConfig | None, list[str]]:
    return structure(UpdaterConfig, raw, "updater", [])


def test_config_defaults_and_camel_case_keys(key):
    section, errors = structured(
        {
            "publicKey": public_b64(key),
            "venvRoot": "/srv/agent",
            "healthTimeout": 120,
            "pipArgs": ["--no-index"],
        }
    )
    assert errors == [] and section is not None
    assert section.venv_root == "/srv/agent" and section.health_timeout == 120.0
    assert section.restart_command == ["systemctl", "--no-block", "restart", "moenet-agent"]
    assert section.health_tasks is None and section.keep_versions == 3


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"publicKey": "AAAA"}, "updater.publicKey: must be the base64 of a 32-byte"),
        ({"feedUrl": "http://example.org/releases"}, "updater.feedUrl: must be https://"),
        ({"venvRoot": "relative/dir"}, "updater.venvRoot: must be an absolute path"),
        ({"restartCommand": []}, "updater.restartCommand: must be a non-empty list"),
        ({"healthTimeout": 0}, "updater.healthTimeout: must be greater than 0"),
        ({"healthTasks": ["bad name"]}, "updater.healthTasks: invalid task names"),
        ({"restartCommand": "systemctl restart x"}, "updater.restartCommand"),
    ],
)
def test_config_errors_name_the_field(raw, error):
    section, errors = structured(raw)
    assert section is None
    assert any(e.startswith(error) for e in errors), errors


def test_feed_url_defaults_to_the_github_releases_api():
    assert feed_url(UpdaterConfig()) == "https://api.github.com/repos/moenet/moenet-agent/releases"
    assert feed_url(UpdaterConfig(github_repo="me/fork")) == "https://api.github.com/repos/me/fork/releases"
    assert (
        feed_url(UpdaterConfig(feed_url="https://mirror.example/r.json")) == "https://mirror.example/r.json"
    )


def test_enabled_without_a_key_is_a_clear_error(key):
    config, _ = build_config(
        {
            "node": {"name": "n1"},
            "controlPlane": {"source": "file", "file": "/nonexistent"},
            "autoUpdate": {"enabled": True},
        },
        env={},
    )
    with pytest.raises(ConfigError, match=r"updater\.publicKey: required when updater\.enabled"):
        moenet_updater.moenet_configure(config)
    config.plugin_sections["updater"] = {"publicKey": public_b64(key)}  # autoUpdate.enabled still counts
    moenet_updater.moenet_configure(config)  # fine now
    assert problems(UpdaterConfig(public_key=public_b64(key), github_repo="not a repo")) == [
        "updater.githubRepo: must be 'owner/name' (got 'not a repo')"
    ]


def test_the_task_exists_only_when_enabled_and_runs_every_check_interval_minutes():
    def config(auto: dict[str, Any]) -> Any:
        raw = {"node": {"name": "n1"}, "controlPlane": {"source": "file", "file": "/x"}, "autoUpdate": auto}
        return build_config(raw, env={})[0]

    assert moenet_updater.moenet_tasks(config({})) == []
    assert moenet_updater.moenet_tasks(config({"enabled": False, "checkInterval": 5})) == []
    [spec] = moenet_updater.moenet_tasks(config({"enabled": True, "checkInterval": 15}))
    assert spec.name == "updater" and spec.interval == 900.0 and spec.skip_in_maintenance
    # The Go agent's rule: under a minute means an hour.
    [spec] = moenet_updater.moenet_tasks(config({"enabled": True, "checkInterval": 0.5}))
    assert spec.interval == 3600.0


# --------------------------------------------------------------- URLs, links


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.github.com/repos/a/b/releases", True),
        ("http://127.0.0.1:8080/releases", True),
        ("http://[::1]:8080/releases", True),
        ("http://localhost/r", True),
        ("http://api.github.com/repos/a/b/releases", False),
        ("http://10.0.0.1/r", False),
        ("ftp://example.org/r", False),
        ("/relative/path", False),
    ],
)
def test_https_only_unless_loopback(url, ok):
    assert (url_problem(url) is None) is ok


def test_switch_link_is_relative_and_replaces_atomically(tmp_path):
    layout = Layout(tmp_path)
    for v in ("1.0.0", "1.1.0"):
        layout.version_dir(v).mkdir(parents=True)
    switch_link(layout.current, layout.version_dir("1.0.0"))
    assert os.readlink(layout.current) == "versions/1.0.0"
    switch_link(layout.current, layout.version_dir("1.1.0"))
    assert os.readlink(layout.current) == "versions/1.1.0"
    assert layout.target(layout.current) == layout.version_dir("1.1.0").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "versions"]  # no temporary link left
    real = tmp_path / "real"
    real.mkdir()
    with pytest.raises(Exception, match="not a symbolic link"):
        switch_link(real, layout.version_dir("1.0.0"))


def test_prune_keeps_the_newest_and_every_protected_environment(tmp_path):
    layout = Layout(tmp_path)
    for v in ("0.9.0", "1.0.0", "1.1.0", "1.2.0", "1.10.0"):
        layout.version_dir(v).mkdir(parents=True)
    (layout.versions / ".download-x").mkdir()
    removed = prune(layout, 2, [layout.version_dir("0.9.0"), None])
    assert sorted(removed) == ["1.0.0", "1.1.0"]
    assert sorted(p.name for p in layout.versions.iterdir()) == [".download-x", "0.9.0", "1.10.0", "1.2.0"]


def test_state_round_trips_through_json():
    st = UpdaterState(
        pending=Pending(
            version="1.1.0", previous="/a", target="/b", switched_at=1.0, deadline=2.0, health_tasks=["x"]
        ),
        bad={"1.0.5": {"reason": "r", "at": 3.0}},
        last_check=4.0,
        last_result="ok",
    )
    again = UpdaterState.from_json(json.loads(json.dumps(st.to_json())))
    assert again == st


def test_what_code_runs_is_decided_locally_never_by_the_control_plane(key):
    """The switch, channel, repository, feed and key come from the local file only;
    the CP's answer may tune the check interval and nothing else."""
    local = {
        "node": {"name": "n1"},
        "controlPlane": {"source": "file", "file": "/nonexistent"},
        "updater": {"enabled": True, "channel": "stable", "publicKey": public_b64(key)},
    }
    hostile = {
        "autoUpdate": {"enabled": False, "channel": "dev", "githubRepo": "attacker/fork", "checkInterval": 5},
        "updater": {
            "enabled": False,
            "channel": "dev",
            "githubRepo": "attacker/fork",
            "feedUrl": "https://attacker.example/releases",
            "publicKey": public_b64(Ed25519PrivateKey.generate()),
            "venvRoot": "/tmp/attacker",
            "restartCommand": ["/tmp/attacker/run"],
            "pipArgs": ["--index-url", "https://attacker.example/simple"],
        },
    }
    config, _ = build_config(local, env={}, remote=hostile)
    section = moenet_updater.config.section_of(config)
    assert section is not None
    assert (section.enabled, section.channel, section.github_repo, section.feed_url) == (
        True,
        "stable",
        "",
        "",
    )
    assert section.public_key == public_b64(key)
    assert section.venv_root == "/opt/moenet-agent" and section.pip_args == []
    assert section.restart_command == ["systemctl", "--no-block", "restart", "moenet-agent"]
    assert feed_url(section) == "https://api.github.com/repos/moenet/moenet-agent/releases"
    assert section.check_interval == 5  # the one key the CP may set

    # Not even where the local file leaves a key unset: the CP cannot switch updates on.
    hostile["autoUpdate"]["enabled"] = hostile["updater"]["enabled"] = True
    config, _ = build_config({**local, "updater": {"publicKey": public_b64(key)}}, env={}, remote=hostile)
    section = moenet_updater.config.section_of(config)
    assert section is not None and (section.enabled, section.channel, section.github_repo) == (
        False,
        "stable",
        "",
    )
    assert moenet_updater.moenet_tasks(config) == []


def test_a_node_that_does_not_update_never_loads_the_updater_task_or_packaging():
    """Off by default, the updater plugin registers its section and commands
    only: its task, the installer and ``packaging`` (about 1 MB) stay unloaded
    until a node enables it."""
    code = """
import sys
import moenet_updater
from moenet_core.config import build_config
cfg, _ = build_config({"node": {"name": "n1", "id": 1},
                       "controlPlane": {"url": "https://cp.example", "token": "t" * 32}})
assert moenet_updater.moenet_tasks(cfg) == []
print(sorted(m for m in sys.modules if m.split(".")[0] == "packaging" or m.startswith("moenet_updater.")))
print(moenet_updater.Updater.__module__)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    loaded, updater = res.stdout.splitlines()
    assert loaded == "['moenet_updater.config', 'moenet_updater.fetch', 'moenet_updater.verify']"
    assert updater == "moenet_updater.task"  # still there for whoever asks for it
