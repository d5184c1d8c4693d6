"""A BIRD 3 that runs as its own user reads the tree the agent writes under ``UMask=0077``.

Debian's ``bird3`` starts ``bird -u bird -g bird``; the agent's unit has
``UMask=0077``. Here BIRD runs in a namespace as a throwaway system user and group
(``moenetbird<hex>``, removed afterwards), the agent's apply runs with
``os.umask(0o077)``, and BIRD must accept the staged tree (``configure check``
runs in the unprivileged daemon) and load the live one. Every file is 0640 and
every directory 0750 with BIRD's group; nothing is world-readable.
"""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.bird import U1, U2, cp_data, policy, protocol_names, session, symbol
from moenet_bird.apply import DIR_MODE, FILE_MODE, STAGING_PREFIX, TreeApplier, _Refused
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.testing import BirdDaemon

from moenet_core.state import StateStore
from moenet_core.testing import NetNS


@pytest.fixture
def bird_user() -> Iterator[str]:
    """A throwaway system user with a group of the same name (Debian's ``passwd`` tools)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (useradd, namespaces)")
    name = f"moenetbird{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        subprocess.run(
            [
                *("useradd", "--system", "--gid", name, "--no-create-home"),
                *("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name),
            ],
            check=True,
            capture_output=True,
        )
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)  # userdel may have
        with pytest.raises(KeyError):
            grp.getgrnam(name)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory any user can search (pytest's tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="moenet-unpriv-", dir="/tmp"))
    os.chmod(path, 0o755)  # the test's root, holds no agent file
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def tree_modes(root: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (permission bits, gid) of everything under ``root``, itself included."""
    return {
        str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_gid)
        for p in [root, *sorted(root.rglob("*"))]
    }


def assert_bird_readable(root: Path, gid: int) -> None:
    modes = tree_modes(root)
    assert not [rel for rel in modes if rel.startswith(STAGING_PREFIX)]
    world = {rel: oct(mode) for rel, (mode, _) in modes.items() if mode & 0o007}
    assert not world, f"world-accessible: {world}"
    for rel, (mode, g) in modes.items():
        want = DIR_MODE if (root / rel).is_dir() else FILE_MODE
        assert (mode, g) == (want, gid), f"{rel}: {oct(mode)} gid {g}, want {oct(want)} gid {gid}"


def uid_of(daemon: BirdDaemon) -> int:
    pid = daemon.pidfile.read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.netns
@pytest.mark.parametrize("how", ["explicit", "auto"])
async def test_bird_as_its_own_user_reads_the_tree_written_under_umask_0077(
    netns: Callable[[], NetNS], bird_user: str, base: Path, how: str
) -> None:
    gid = grp.getgrnam(bird_user).gr_gid
    etc = base / "etc" / "bird"
    if how == "auto":
        # The operator gave configDir to BIRD's group: the agent picks that group itself.
        etc.mkdir(parents=True)
        os.chmod(etc.parent, 0o755)  # like /etc
        os.chown(etc, -1, gid)
        os.chmod(etc, 0o750)
        group = ""
    else:
        # configDir (and its parent) do not exist yet: the agent creates them.
        group = bird_user

    with BirdDaemon(netns(), base / "bird", user=bird_user, group=bird_user).start() as daemon:
        assert uid_of(daemon) != 0, "BIRD did not drop its privileges"
        old_umask = os.umask(0o077)
        b = BirdRoutingBackend(
            BirdClient(str(daemon.socket)), str(etc), state=StateStore(base / "state"), group=group
        )
        try:
            await b.start()
            data = cp_data()
            r = await b.set_policy(policy(data), data["configHash"], raw=data)
            assert (r.ok, r.error) == (True, None)
            r = await b.declare("sessions", {U1: session()})
            assert (r.ok, r.changed, r.error) == (True, True, None)
            assert b.applier.stats.checks >= 2 and b.applier.stats.rejected == 0
            assert symbol(U1, 4242420002) in await protocol_names(b)
            if how == "explicit":
                assert_bird_readable(base / "etc", gid)
            else:
                assert_bird_readable(etc, gid)

            # What an older agent left under UMask=0077 (peers/ 0700, files 0600, root's
            # group) is repaired on the next apply, which BIRD then accepts.
            os.chmod(etc / "peers", 0o700)
            os.chown(etc / "peers", -1, 0)
            for f in (etc / "bird.conf", etc / "peers" / f"{symbol(U1, 4242420002)}.conf"):
                os.chmod(f, 0o600)
                os.chown(f, -1, 0)
            r = await b.declare("sessions", {U1: session(), U2: session(4242420003, 3)})
            assert (r.ok, r.changed, r.error) == (True, True, None)
            assert {symbol(U1, 4242420002), symbol(U2, 4242420003)} <= await protocol_names(b)
            assert_bird_readable(etc, gid)
        finally:
            os.umask(old_umask)
            await b.aclose()
        assert "Permission denied" not in daemon.read_log()


def test_the_group_bird_reads_with(tmp_path: Path) -> None:
    """``bird.group``: explicit name or gid; else bird.conf's, configDir's, ``bird``, nobody."""
    client = BirdClient(str(tmp_path / "x.ctl"))
    etc = tmp_path / "etc"

    def gid(group: str = "") -> int:
        return TreeApplier(etc, client, group=group).resolve_gid()

    assert gid("4321") == 4321
    assert gid(grp.getgrgid(0).gr_name) == 0
    with pytest.raises(_Refused, match="no such group"):
        gid("moenet-no-such-group")
    try:
        bird = grp.getgrnam("bird").gr_gid
    except KeyError:
        bird = -1
    assert gid() == bird  # nothing on disk yet (and root-owned is skipped below)
    etc.mkdir()
    os.chown(etc, -1, 0)
    assert gid() == bird
    os.chown(etc, -1, 4000)
    assert gid() == 4000
    (etc / "bird.conf").write_text("")
    os.chown(etc / "bird.conf", -1, 4001)
    assert gid() == 4001
    assert gid("4321") == 4321
