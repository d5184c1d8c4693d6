"""A BIRD apply interrupted by a crash (issue 16), without root or BIRD: the tree
applier on a fake control socket.

- Killed after the files were swapped and before BIRD confirmed loading them, a
  restarted agent must not take "the files are as rendered" for "BIRD runs them":
  the pending-configure marker survives and the next apply reconfigures.
- What the interrupted apply left (its staging directory, the temporary files of
  its swap) is removed at start; an operator's file is never touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from moenet_bird.apply import PENDING_FILE, STAGING_PREFIX, TreeApplier
from moenet_bird.protocol import BirdUnavailable
from moenet_bird.render import MARKER


class SimulatedCrash(BaseException):
    """The agent dies here: nothing after it runs."""


class FakeBird:
    """The control socket: every check passes; ``configure`` counts, or raises ``fail``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.configures = 0
        self.fail = fail

    async def check(self, path: str | None = None, *, timeout: float | None = None) -> None:
        return None

    async def configure(self, path: str | None = None, **_: object) -> None:
        self.configures += 1
        if self.fail is not None:
            raise self.fail


def tree(peers: int = 2) -> dict[str, str]:
    out = {"bird.conf": f'{MARKER}\nrouter id 192.0.2.1;\ninclude "peers/*.conf";\n'}
    for n in range(peers):
        out[f"peers/p{n}.conf"] = f"{MARKER}\n# peer {n}\n"
    return out


def applier(etc: Path, bird: FakeBird) -> TreeApplier:
    return TreeApplier(etc, bird)  # type: ignore[arg-type]


async def test_killed_between_the_swap_and_the_configure_reconfigures_after_the_restart(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc"
    first = applier(etc, FakeBird(fail=SimulatedCrash()))
    with pytest.raises(SimulatedCrash):
        await first.apply(lambda: tree(2))
    assert (etc / "peers" / "p1.conf").exists()  # swapped in; BIRD never told
    assert (etc / PENDING_FILE).exists()

    bird = FakeBird()
    restarted = applier(etc, bird)
    assert any("newer than BIRD" in w for w in restarted.recover())
    assert restarted.pending_configure
    result = await restarted.apply(lambda: tree(2))  # the same render: unchanged files
    assert (result.ok, result.changed) == (True, True) and bird.configures == 1
    assert not restarted.pending_configure and not (etc / PENDING_FILE).exists()
    # Loaded: the same input again costs nothing.
    again = await restarted.apply(lambda: tree(2))
    assert (again.ok, again.changed) == (True, False) and bird.configures == 1


async def test_a_completed_apply_leaves_no_marker_and_a_restart_configures_nothing(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert (await applier(etc, FakeBird()).apply(lambda: tree(2))).ok
    assert not (etc / PENDING_FILE).exists()
    bird = FakeBird()
    restarted = applier(etc, bird)
    assert restarted.recover() == []
    result = await restarted.apply(lambda: tree(2))
    assert (result.ok, result.changed) == (True, False) and bird.configures == 0


async def test_bird_down_keeps_the_marker_across_a_restart(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    down = applier(etc, FakeBird(fail=BirdUnavailable("connection refused")))
    result = await down.apply(lambda: tree(1))
    assert (result.ok, result.changed) == (False, True) and down.pending_configure
    restarted = applier(etc, FakeBird())
    restarted.recover()
    assert restarted.pending_configure


async def test_the_leftovers_of_an_interrupted_apply_are_removed_and_nothing_else(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert (await applier(etc, FakeBird()).apply(lambda: tree(1))).ok
    staging = etc / f"{STAGING_PREFIX}abc123"
    (staging / "peers").mkdir(parents=True)
    (staging / "bird.conf").write_text(MARKER)
    ours = etc / "peers" / ".p0.conf.a1b2c3d4.tmp"
    ours.write_text(f"{MARKER}\n# half a swap\n")
    empty = etc / ".bird.conf.zz99yy88.tmp"
    empty.write_bytes(b"")
    operators = etc / "peers" / ".mine.conf.abcdefgh.tmp"
    operators.write_text("# the operator's\n")
    found = applier(etc, FakeBird()).recover()
    assert len(found) == 3, found
    assert not staging.exists() and not ours.exists() and not empty.exists()
    assert operators.read_text() == "# the operator's\n"
