"""The install layout and the steps that change it.

::

    <venvRoot>/
      versions/0.1.0/        one virtual environment per version
      versions/0.2.0/        (``.moenet-installed`` marks a finished install)
      current -> versions/0.2.0    what the service runs:
                                   ExecStart=<venvRoot>/current/bin/moenet-agent run ...
      previous -> versions/0.1.0   the version before the last switch

A link is switched atomically: a new link is created beside it and renamed over
it (``os.replace``), then the directory is fsync'd; a reader sees the old target
or the new one, never no link. Links inside ``venvRoot`` are relative, so the
tree can be moved.

Commands run without a shell, with an argument list, a timeout, and the
environment minus ``PYTHONPATH``/``PYTHONHOME``; a cancelled or timed-out
command is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs
from packaging.version import InvalidVersion, Version

from moenet_core import MoenetError

MARKER = ".moenet-installed"
OUTPUT_TAIL = 600


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


async def install(
    layout: Layout,
    version: Version,
    wheel: Path,
    *,
    python: str,
    pip_args: Sequence[str] = (),
    requirements: Path | None = None,
    extra: Sequence[str] = (),
    config: str | None = None,
    timeout: float,
) -> Path:
    """Install ``wheel`` into ``versions/<version>``; returns that directory.

    An environment already there with the finished-install marker is reused
    (after a fresh smoke test); anything else there is replaced. With
    ``requirements`` (a hash-pinned ``requirements.txt`` from the signed release),
    dependencies come from it in pip's ``--require-hashes`` mode and the wheel
    is installed with ``--no-deps``. On any failure the environment is removed.
    """
    target = layout.version_dir(version)
    if same_path(target, layout.target(layout.current)):
        raise InstallError(f"{target} is what {layout.current} points to; refusing to reinstall it")
    if layout.installed(version):
        try:
            await smoke_test(target, version, config=config, timeout=timeout)
        except BaseException:
            remove_tree(target)
            raise
        return target
    if target.exists() or target.is_symlink():
        remove_tree(target)
    layout.versions.mkdir(parents=True, exist_ok=True)
    try:
        await run_command([python, "-m", "venv", str(target)], timeout=timeout, what="python -m venv")
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--no-input", *pip_args]
        if requirements is not None:
            await run_command(
                [*pip, "--require-hashes", "-r", str(requirements)],
                timeout=timeout,
                what="pip install -r requirements.txt",
            )
            await run_command([*pip, "--no-deps", str(wheel)], timeout=timeout, what="pip install (wheel)")
        else:
            await run_command([*pip, str(wheel)], timeout=timeout, what="pip install (wheel)")
        if extra:
            await run_command([*pip, *extra], timeout=timeout, what="pip install (extraRequirements)")
        await smoke_test(target, version, config=config, timeout=timeout)
        (target / MARKER).write_text(f"{version}\n", encoding="utf-8")
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
