"""Issue 13: every golden tree parses on each BIRD 3 that Debian ships today.

``scripts/install-bird --all-debian`` (run by ``scripts/test``, and again here: a
no-op of milliseconds when done) installs ``bird3`` of each suite it lists
(``--debian-suites``: Debian 13's release, its backports, unstable) side by side
into ``/opt/moenet-bird3-debian/<suite>`` and writes ``MANIFEST`` there: suite,
Debian version, BIRD version, wrapper. Each golden tree in
``tests/data/bird_render/<case>/`` (whichever exist) is written to a temporary
directory and must pass ``bird -p`` of every one of them with no output at all, as
the primary BIRD's check in ``test_bird_render`` demands. A suite that is not
installed fails its tests; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.render import GOLDEN_DIR, golden_cases, golden_tree, write_tree

ROOT = Path(__file__).resolve().parents[2]
INSTALL_BIRD = ROOT / "scripts" / "install-bird"
DEBIAN_DIR = Path(os.environ.get("MOENET_BIRD_DEBIAN_DIR", "/opt/moenet-bird3-debian"))
MANIFEST = DEBIAN_DIR / "MANIFEST"
PRIMARY = Path(os.environ.get("MOENET_BIRD_PREFIX", "/opt/moenet-bird3"))


def configured_suites(env: dict[str, str] | None = None) -> list[str]:
    """The suites ``install-bird --all-debian`` installs (its default, or
    ``MOENET_BIRD_DEBIAN_SUITES``)."""
    res = subprocess.run(
        [str(INSTALL_BIRD), "--debian-suites"], capture_output=True, text=True, timeout=30, env=env
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


SUITES = configured_suites()
CASES = golden_cases()


@dataclass(frozen=True)
class DebianBird:
    suite: str
    debian_version: str  # of the bird3 package
    version: str  # what ``bird --version`` says
    bird: Path  # the wrapper

    def __str__(self) -> str:
        return f"BIRD {self.version} of Debian {self.suite} (bird3 {self.debian_version}, {self.bird})"


def read_manifest(path: Path) -> dict[str, DebianBird]:
    out: dict[str, DebianBird] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            suite, deb, version, bird = line.split("\t")
            out[suite] = DebianBird(suite, deb, version, Path(bird))
    return out


@dataclass(frozen=True)
class Installed:
    birds: dict[str, DebianBird]  # suite -> its BIRD 3, as MANIFEST lists them
    problem: str  # why the install failed; empty when it did not


@pytest.fixture(scope="module")
def debian_birds() -> Installed:
    """Each configured suite's BIRD 3, installed first (a no-op when it is). A failed
    install fails every test that needs a version, with the script's message."""
    res = subprocess.run([str(INSTALL_BIRD), "--all-debian"], capture_output=True, text=True, timeout=600)
    problem = ""
    if res.returncode != 0:
        problem = (
            f"scripts/install-bird --all-debian failed (exit {res.returncode}):\n{res.stdout}{res.stderr}"
        )
    elif not MANIFEST.is_file():
        problem = f"scripts/install-bird --all-debian wrote no {MANIFEST}"
    return Installed(read_manifest(MANIFEST) if MANIFEST.is_file() else {}, problem)


def installed(inst: Installed, suite: str) -> DebianBird:
    assert not inst.problem, f"no BIRD 3 of Debian {suite}: {inst.problem}"
    bird = inst.birds.get(suite)
    assert bird is not None, f"no BIRD 3 of Debian {suite} in {MANIFEST} (scripts/install-bird --all-debian)"
    return bird


# ------------------------------------------------------------- the parse checks


@pytest.mark.parametrize(
    ("suite", "case"),
    [(s, c) for s in SUITES for c in CASES],
    ids=[f"{s}-{c}" for s in SUITES for c in CASES],
)
def test_golden_tree_parses(suite: str, case: str, debian_birds: Installed, tmp_path: Path) -> None:
    """``bird -p`` exits 0 and prints nothing: no error, no warning."""
    entry = installed(debian_birds, suite)
    conf = write_tree(golden_tree(case), tmp_path)
    res = subprocess.run([str(entry.bird), "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{entry} rejects golden tree {case!r}:\n{res.stderr}{res.stdout}"
    assert res.stdout == res.stderr == "", f"{entry} warns on golden tree {case!r}:\n{res.stderr}{res.stdout}"


def test_a_broken_tree_fails_on_each_version(debian_birds: Installed, tmp_path: Path) -> None:
    """The check is not vacuous: each version rejects a golden tree with one
    include pointing nowhere, naming the file."""
    tree = golden_tree(CASES[0])
    tree["moenet.conf"] += '\ninclude "no-such-file.conf";\n'
    conf = write_tree(tree, tmp_path)
    for suite in SUITES:
        entry = installed(debian_birds, suite)
        res = subprocess.run(
            [str(entry.bird), "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60
        )
        assert res.returncode != 0 and "no-such-file.conf" in res.stderr, f"{entry}: {res.stderr}"


# ------------------------------------------------------------ what is installed


def test_golden_trees_exist() -> None:
    assert CASES, f"no golden trees (directories with a bird.conf) in {GOLDEN_DIR}"


def test_default_suites_are_release_backports_unstable() -> None:
    """Without an override the script takes the suites the issue names."""
    env = {k: v for k, v in os.environ.items() if k != "MOENET_BIRD_DEBIAN_SUITES"}
    assert configured_suites(env) == ["trixie", "trixie-backports", "sid"]


def test_each_suite_has_its_bird3(debian_birds: Installed) -> None:
    """Exactly the configured suites, each a BIRD 3 whose wrapper reports the listed
    version, the Debian version's upstream part matching it."""
    birds = {s: installed(debian_birds, s) for s in SUITES}
    assert list(debian_birds.birds) == SUITES, (
        f"{MANIFEST} lists {list(debian_birds.birds)}, expected {SUITES}"
    )
    for entry in birds.values():
        assert entry.version.startswith("3."), entry
        upstream = entry.debian_version.split(":")[-1].split("-")[0]
        assert upstream.startswith(entry.version), entry
        out = subprocess.run([str(entry.bird), "--version"], capture_output=True, text=True, timeout=30)
        assert f"BIRD version {entry.version}" in out.stdout + out.stderr, (
            f"{entry}: {out.stdout}{out.stderr}"
        )


def test_one_install_per_version(debian_birds: Installed) -> None:
    """Suites shipping the same version share one install; different versions never do."""
    birds = [installed(debian_birds, s) for s in SUITES]
    by_wrapper: dict[Path, set[str]] = {}
    for entry in birds:
        by_wrapper.setdefault(entry.bird, set()).add(entry.debian_version)
        assert entry.bird.is_relative_to(DEBIAN_DIR), entry
    assert all(len(v) == 1 for v in by_wrapper.values()), by_wrapper
    assert len(by_wrapper) == len({e.debian_version for e in birds})


def test_the_primary_bird_is_not_shadowed(debian_birds: Installed) -> None:
    """Nothing on PATH leads into the Debian set, and the primary prefix is untouched."""
    for suite in SUITES:
        installed(debian_birds, suite)
    for tool in ("bird", "birdc", "birdcl"):
        found = shutil.which(tool)
        if found is not None:
            assert not Path(found).resolve().is_relative_to(DEBIAN_DIR.resolve()), f"{tool} -> {found}"
    assert not PRIMARY.resolve().is_relative_to(DEBIAN_DIR.resolve())
