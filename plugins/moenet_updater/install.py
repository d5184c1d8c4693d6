"""The install layout and the steps that change it.

::

    <venvRoot>/
      versions/0.1.0/        one virtual environment per version
      versions/0.2.0/        (``.moenet-installed``, written last, marks a finished
                             install and records the SHA-256 of the wheel and of
                             the lock file it was installed from)
      current -> versions/0.2.0    what the service runs:
                                   ExecStart=<venvRoot>/current/bin/moenet-agent run ...
      previous -> versions/0.1.0   the version before the last switch

A link is switched atomically: a new link is created beside it and renamed over
it (``os.replace``), then the directory is fsync'd; a reader sees the old target
or the new one, never no link. Links inside ``venvRoot`` are relative, so the
tree can be moved.

An environment is reused only when its marker names the very wheel and lock
file just verified, it is owned by this user and not group- or world-writable,
and every file of the wheel is installed unchanged; anything else is removed
and installed afresh. Dependencies come only from the signed lock file
(``requirements.txt``: exact versions and hashes, pip's ``--require-hashes``
mode), the wheel itself with ``--no-deps``; afterwards every pinned version is
checked in the new environment and ``pip check`` must pass (so the lock covers
every dependency of the wheel and ``extraRequirements`` replaced none of them).

Commands run without a shell, with an argument list, a timeout, and the
environment minus ``PYTHONPATH``/``PYTHONHOME``; a cancelled or timed-out
command is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from moenet_core import MoenetError

from .verify import sha256_file

MARKER = ".moenet-installed"
OUTPUT_TAIL = 600
#: Run by the new environment's interpreter: its distributions and marker environment.
DUMP_ENVIRONMENT = """\
import importlib.metadata as m, json
try:
    from pip._vendor.packaging.markers import default_environment
    env = default_environment()
except Exception:
    env = None
print(json.dumps({"dists": {d.metadata["Name"]: d.version for d in m.distributions()}, "env": env}))
"""


class InstallError(MoenetError):
    """An install step failed (the environment is removed again)."""


class SmokeTestError(InstallError):
    """The installed version does not run: the release itself is broken."""


@attrs.frozen
class Layout:
    root: Path

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def previous(self) -> Path:
        return self.root / "previous"

    def version_dir(self, version: Version | str) -> Path:
        return self.versions / str(version)

    @staticmethod
    def target(link: Path) -> Path | None:
        """Where ``link`` points (absolute, symlinks resolved), or None if it is missing."""
        if not link.is_symlink() and not link.exists():
            return None
        return link.resolve()

    def installed(self, version: Version | str) -> bool:
        return (self.version_dir(version) / MARKER).is_file()


def same_path(a: Path | str | None, b: Path | str | None) -> bool:
    if a is None or b is None:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def switch_link(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (relative when ``target`` is beside it)."""
    if link.exists() and not link.is_symlink():
        raise InstallError(f"{link} exists and is not a symbolic link; refusing to replace it")
    try:
        rel = os.path.relpath(target, link.parent)
        value = rel if not rel.startswith("..") else str(target)
    except ValueError:
        value = str(target)
    tmp = link.parent / f".{link.name}.{secrets.token_hex(4)}.tmp"
    os.symlink(value, tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(link.parent)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"})
    env.update(extra or {})
    return env


def _tail(output: bytes) -> str:
    text = output.decode("utf-8", errors="replace").strip()
    return ("..." + text[-OUTPUT_TAIL:]) if len(text) > OUTPUT_TAIL else text


async def run_command(
    argv: Sequence[str], *, timeout: float, what: str, env: Mapping[str, str] | None = None
) -> str:
    """Run ``argv`` (no shell); its combined output, or InstallError naming ``what``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else child_env(),
        )
    except OSError as exc:
        raise InstallError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise InstallError(f"{what}: timed out after {timeout:g}s") from None
        raise
    if proc.returncode != 0:
        raise InstallError(f"{what} failed (exit {proc.returncode}): {_tail(out)}")
    return out.decode("utf-8", errors="replace")


async def smoke_test(venv: Path, version: Version, *, config: str | None, timeout: float) -> None:
    """The new environment's ``moenet-agent version`` must name ``version``; with a
    config file, ``moenet-agent validate -c FILE`` must accept it too (that loads
    every enabled plugin of the new version)."""
    exe = venv / "bin" / "moenet-agent"
    try:
        out = await run_command([str(exe), "version"], timeout=timeout, what="smoke test (version)")
    except InstallError as exc:
        raise SmokeTestError(str(exc)) from None
    first = out.strip().splitlines()[0] if out.strip() else ""
    words = first.split()
    try:
        ok = len(words) >= 2 and words[0] == "moenet-agent" and Version(words[1]) == version
    except InvalidVersion:
        ok = False
    if not ok:
        raise SmokeTestError(f"smoke test: 'moenet-agent version' printed {first[:100]!r}, not {version}")
    if config:
        try:
            await run_command(
                [str(exe), "validate", "-c", config], timeout=timeout, what="smoke test (validate)"
            )
        except InstallError as exc:
            raise SmokeTestError(str(exc)) from None


@attrs.frozen
class Pin:
    """One requirement of the signed lock file: ``name==version`` (with its marker)."""

    name: str
    requirement: Requirement


_COMMENT = re.compile(r"(^|\s)#.*$")
_OPTION = re.compile(r"\s--?[A-Za-z]")


def parse_pins(text: str) -> list[Pin]:
    """The requirements of a lock file (pip's format: ``name==version
    --hash=sha256:...``, continuation lines, comments). Each must be pinned to
    exactly one version; option lines (``--index-url``...) are left to pip."""
    pins: list[Pin] = []
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    for line in logical:
        line = line.strip()
        if not line or line.startswith("-"):
            continue
        m = _OPTION.search(line)
        spec = (line[: m.start()] if m else line).strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            raise InstallError(f"requirements.txt: {spec[:100]!r} is not a requirement: {exc}") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
            raise InstallError(f"requirements.txt: {req.name} is not pinned to one version ({spec[:100]!r})")
        pins.append(Pin(name=canonicalize_name(req.name), requirement=req))
    return pins


def _record(version: Version, wheel_digest: str, requirements_digest: str) -> dict[str, str]:
    return {"version": str(version), "wheelSha256": wheel_digest, "requirementsSha256": requirements_digest}


def _read_artefacts(version: Version, wheel: Path, requirements: Path) -> tuple[list[Pin], dict[str, str]]:
    try:
        pins = parse_pins(requirements.read_text(encoding="utf-8"))
        return pins, _record(version, sha256_file(wheel), sha256_file(requirements))
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read the verified artefacts: {exc}") from None


def write_marker(target: Path, record: Mapping[str, str]) -> None:
    """The finished-install marker, written last (atomically)."""
    tmp = target / f".{MARKER}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(dict(record), sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target / MARKER)


def _ownership_problem(root: Path) -> str | None:
    """Why ``root`` may have been prepared by someone else: an entry not owned by
    this user, or writable by group or others (symbolic links are not followed)."""
    uid = os.geteuid()

    def check(path: Path) -> str | None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return None
        if st.st_uid != uid:
            return f"{path} is owned by uid {st.st_uid}, not {uid}"
        if st.st_mode & 0o022:
            return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        return None

    try:
        if (problem := check(root)) is not None:
            return problem
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                if (problem := check(Path(dirpath) / name)) is not None:
                    return problem
    except OSError as exc:
        return f"cannot inspect {root}: {exc.strerror or exc}"
    return None


def _site_packages(target: Path) -> list[Path]:
    return sorted(p for p in target.glob("lib/python*/site-packages") if p.is_dir())


def _wheel_files_problem(target: Path, wheel: Path) -> str | None:
    """Why the files of ``wheel`` are not installed unchanged in ``target`` (None: they are)."""
    sites = _site_packages(target)
    if not sites:
        return f"{target} has no site-packages"
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            for info in members:
                parts = info.filename.split("/")
                if parts[0].endswith(".data") or (parts[0].endswith(".dist-info") and parts[-1] == "RECORD"):
                    continue  # installed elsewhere / rewritten by pip
                if ".." in parts or info.filename.startswith("/"):
                    return f"the wheel has an unsafe path {info.filename!r}"
                expected = hashlib.sha256(zf.read(info)).hexdigest()
                found = [s / info.filename for s in sites if (s / info.filename).is_file()]
                if not found or sha256_file(found[0]) != expected:
                    return f"{info.filename} differs from the wheel's (or is missing)"
    except (OSError, zipfile.BadZipFile) as exc:
        return f"cannot compare with the wheel: {exc}"
    return None


def reuse_problem(target: Path, version: Version, wheel: Path, record: Mapping[str, str]) -> str | None:
    """Why the environment at ``target`` may not be reused for ``wheel`` (None: it may).

    Reused only when it is a real directory owned by this user that nobody else
    can write, its marker records exactly this version, wheel and lock file, and
    every file of the wheel is installed unchanged."""
    if target.is_symlink() or not target.is_dir():
        return "not a directory"
    try:
        found = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "no readable install record (an unfinished or foreign install)"
    if found != dict(record):
        was = found.get("wheelSha256") if isinstance(found, dict) else None
        return (
            f"its install record names another wheel or lock file (wheel sha256 {was!s:.16}, "
            f"verified {record['wheelSha256']:.16})"
        )
    return _ownership_problem(target) or _wheel_files_problem(target, wheel)


async def verify_environment(python: Path, pins: Sequence[Pin], *, timeout: float) -> None:
    """Every pin of the lock file is installed at its version (where its marker
    applies), and ``pip check`` passes: nothing the wheel or an extra needs is
    missing or at a version outside its requirement."""
    out = await run_command([str(python), "-c", DUMP_ENVIRONMENT], timeout=timeout, what="listing packages")
    try:
        data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        dists: dict[str, str] = {canonicalize_name(str(k)): str(v) for k, v in data["dists"].items()}
        env = data.get("env") if isinstance(data.get("env"), dict) else None
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        raise InstallError(f"listing packages: unexpected output {out[:200]!r}") from None
    marker_env = {**default_environment(), **(env or {})}
    wrong: list[str] = []
    for pin in pins:
        req = pin.requirement
        if req.marker is not None and not req.marker.evaluate(marker_env):
            continue
        have = dists.get(pin.name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            wrong.append(f"{req.name} {have or 'missing'} (signed lock: {req.specifier})")
    if wrong:
        raise InstallError(f"installed versions differ from the signed lock file: {', '.join(wrong)}")
    await run_command([str(python), "-m", "pip", "check"], timeout=timeout, what="pip check")


async def install(
    layout: Layout,
    version: Version,
    wheel: Path,
    *,
    requirements: Path,
    python: str,
    pip_args: Sequence[str] = (),
    extra: Sequence[str] = (),
    config: str | None = None,
    timeout: float,
    log: Callable[[str], object] | None = None,
) -> Path:
    """Install ``wheel`` into ``versions/<version>``; returns that directory.

    ``requirements`` is the signed lock file: dependencies come from it alone,
    in pip's ``--require-hashes`` mode, then the wheel with ``--no-deps``; the
    result is checked against the lock (:func:`verify_environment`). An
    environment already there is reused only when :func:`reuse_problem` finds
    nothing (then checked and smoke-tested again); anything else there is removed
    and the version installed afresh. The marker is written last. On any
    failure the environment is removed.
    """
    target = layout.version_dir(version)
    if same_path(target, layout.target(layout.current)):
        raise InstallError(f"{target} is what {layout.current} points to; refusing to reinstall it")
    pins, record = await asyncio.to_thread(_read_artefacts, version, wheel, requirements)
    if target.exists() or target.is_symlink():
        problem = await asyncio.to_thread(reuse_problem, target, version, wheel, record)
        if problem is None:
            try:
                await verify_environment(target / "bin" / "python", pins, timeout=timeout)
                await smoke_test(target, version, config=config, timeout=timeout)
            except BaseException:
                remove_tree(target)
                raise
            return target
        if log is not None:
            log(f"{target} exists but is not reused: {problem}; installing {version} afresh")
        remove_tree(target)
        if target.exists() or target.is_symlink():
            raise InstallError(f"cannot remove {target} (not reused: {problem})")
    layout.versions.mkdir(parents=True, exist_ok=True)
    try:
        await run_command([python, "-m", "venv", str(target)], timeout=timeout, what="python -m venv")
        venv_python = target / "bin" / "python"
        pip = [str(venv_python), "-m", "pip", "install", "--no-input", *pip_args]
        if pins:
            await run_command(
                [*pip, "--require-hashes", "-r", str(requirements)],
                timeout=timeout,
                what="pip install -r requirements.txt",
            )
        await run_command([*pip, "--no-deps", str(wheel)], timeout=timeout, what="pip install (wheel)")
        if extra:
            await run_command([*pip, *extra], timeout=timeout, what="pip install (extraRequirements)")
        await verify_environment(venv_python, pins, timeout=timeout)
        await smoke_test(target, version, config=config, timeout=timeout)
        write_marker(target, record)
    except BaseException:
        remove_tree(target)
        raise
    return target


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def prune(layout: Layout, keep: int, protect: Iterable[Path | None]) -> list[str]:
    """Remove all but the ``keep`` newest environments in ``versions/``; never one
    in ``protect`` (current, previous, pending). Returns the removed versions."""
    try:
        entries = [p for p in layout.versions.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []
    protected = [p for p in protect if p is not None]
    versioned: list[tuple[Version, Path]] = []
    for p in entries:
        try:
            versioned.append((Version(p.name), p))
        except InvalidVersion:
            continue  # not ours (or a half-written download dir): leave it
    versioned.sort(key=lambda vp: vp[0], reverse=True)
    removed: list[str] = []
    for _, path in versioned[keep:]:
        if any(same_path(path, q) for q in protected):
            continue
        remove_tree(path)
        removed.append(path.name)
    return removed
