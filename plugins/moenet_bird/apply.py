"""Apply a rendered BIRD tree: stage, check with BIRD, swap atomically, reconfigure, roll back.

Why it works like this (``research/go-agent.md`` §7.1, §20 items 1, 4, 17-19): the
Go agent wrote files in place one by one (a crash left half a tree), remembered
the hash before BIRD had accepted the result, and included files nobody wrote.
Here:

- **Ownership is on disk.** A file belongs to the agent only if it is a regular
  file whose first line starts with :data:`~moenet_bird.render.MARKER`, directly
  in ``config_dir`` or in its ``peers/`` / ``ibgp/`` directories. Anything else is
  the operator's: never overwritten, never deleted. A tree that would overwrite one
  is refused before anything is written.
- **The operator may keep their own ``bird.conf``.** If ``<config_dir>/bird.conf``
  exists without the marker it is the operator's: the agent writes everything
  except ``bird.conf`` (:mod:`.render` lists the files and the contract) and
  never touches that file. It must include the agent's aggregator
  (``include "<config_dir>/moenet.conf";`` or ``include "moenet.conf";``),
  otherwise the apply is refused, since the agent's files would never load.
  Without a ``bird.conf`` (or with one carrying the marker) the agent writes its own.
- **Unchanged is free.** The live render is compared byte for byte with the owned
  files; identical (and nothing to delete) means no write, no check, no configure.
- **BIRD judges the whole new tree before it goes live.** The same texts (every
  include is relative) are copied into a staging directory inside ``config_dir``,
  together with the operator's own files from ``peers/`` and ``ibgp/`` that the
  live globs would include too, and checked with ``configure check
  "<staging>/bird.conf"`` (or ``bird -p`` when the daemon is down). An operator's
  ``bird.conf`` is staged as a copy whose include of the aggregator points at the
  staged one and whose other relative includes point at the live directory. A
  rejection names the live path, since the staging tree has the same line numbers;
  :attr:`TreeApplier.last_rejection` also says which staged file it was in, so the
  backend can drop the one fragment that file belongs to and retry.
- **The swap is per file atomic** (temp name not ending in ``.conf`` so BIRD's
  ``*.conf`` globs never see it, fsync, rename, fsync the directory) and the
  previous content of every touched owned file is kept, so a configure that BIRD
  still refuses (the operator changed an include, a race with a hand-made edit)
  restores the old files exactly and reconfigures from them.
- **``configure`` always names the live ``bird.conf``**: BIRD started with another
  ``-c`` file still loads the agent's tree.

``configure timeout``/``confirm`` is deliberately not used. Its only protection is
against a config that cuts the confirmer off from the daemon, which a local Unix
socket never is; BIRD itself keeps the running config when it rejects a file. The
price would be real: while the undo timer is armed no other reconfigure may run,
and a timer that fires during a reconfiguration aborts BIRD 3.3.2/3.4.0
(``client.py``); an agent that dies before confirming would leave BIRD running the
old config under the new files.

Applies are serialised by a lock; the caller must not cancel one half-way (the
backend runs them in its own task and shields it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
from loguru import logger

from moenet_core import ApplyResult

from .client import BirdClient
from .names import BirdConfigError as RenderError
from .protocol import BirdClientError, BirdConfigError, BirdUnavailable
from .render import AGGREGATOR, BIRD_CONF, IBGP_DIR, MARKER, PEER_DIR

__all__ = ["STAGING_PREFIX", "ApplyStats", "Rejection", "RenderFn", "TreeApplier", "default_bird_binary"]

#: ``render() -> {relative path: text}``: the whole tree, ``bird.conf`` included
#: (the applier leaves it out when the operator keeps their own).
RenderFn = Callable[[], Mapping[str, str]]

#: Staging directories are dot-named so no ``*`` glob of BIRD ever matches them.
STAGING_PREFIX = ".moenet-staging-"

_MARKER_BYTES = MARKER.encode()
_REL_PATH = re.compile(r"^(?:(?P<dir>[A-Za-z0-9_-]+)/)?(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)$")
_BIRD_P_LINE = re.compile(r"<(?P<level>FATAL|ERR|WARN)> (?P<msg>.*)$")
_INCLUDE = re.compile(r'^(?P<pre>[ \t]*include[ \t]+")(?P<path>[^"\n]*)(?P<post>"[ \t]*;)', re.MULTILINE)
_LOCATION = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+) (?P<msg>.*)\Z", re.DOTALL)


def default_bird_binary() -> str | None:
    """``bird`` on PATH, else the project's install location."""
    found = shutil.which("bird")
    if found:
        return found
    fallback = Path("/opt/moenet-bird3/bin/bird")
    return str(fallback) if fallback.exists() else None


@attrs.define
class ApplyStats:
    """Counters since start (for /status and tests)."""

    applies: int = 0
    unchanged: int = 0
    checks: int = 0
    configures: int = 0
    rejected: int = 0
    rollbacks: int = 0
    files_written: int = 0
    files_removed: int = 0


@attrs.frozen
class _Saved:
    data: bytes
    mode: int


@attrs.frozen
class Rejection:
    """Why BIRD rejected the last staged tree: its message (live paths) and, when
    BIRD named one of the agent's files, that file's relative path."""

    error: str
    file: str | None


class _Refused(Exception):
    """The tree cannot be applied as asked (foreign file in the way, bad path)."""


class TreeApplier:
    """Applies rendered trees to ``config_dir`` for one BIRD daemon (see the module doc)."""

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        client: BirdClient,
        *,
        bird_binary: str | None = None,
        check_timeout: float = 60.0,
    ) -> None:
        self.config_dir = Path(config_dir)
        self.client = client
        self.bird_binary = bird_binary
        self.check_timeout = check_timeout
        self.stats = ApplyStats()
        self.pending_configure = False
        """Files on disk are newer than what BIRD confirmed loading (BIRD was down,
        or the configure timed out): the next apply reconfigures even if unchanged."""
        self.last_rejection: Rejection | None = None
        """Set when the last apply's staged tree was rejected by BIRD, else None."""
        self._lock = asyncio.Lock()
        self._swept = False

    @property
    def live_conf(self) -> Path:
        return self.config_dir / "bird.conf"

    # ------------------------------------------------------------ ownership

    def _dirs(self) -> list[Path]:
        return [self.config_dir, self.config_dir / PEER_DIR, self.config_dir / IBGP_DIR]

    def scan(self) -> tuple[dict[str, _Saved], set[str]]:
        """The owned files (relative path -> content and mode) and every other
        entry present in the agent's directories (the operator's)."""
        owned: dict[str, _Saved] = {}
        foreign: set[str] = set()
        for d in self._dirs():
            if not d.is_dir():
                continue
            prefix = "" if d == self.config_dir else d.name + "/"
            with os.scandir(d) as it:
                for entry in it:
                    rel = prefix + entry.name
                    if entry.name.startswith(STAGING_PREFIX) or (
                        not prefix
                        and entry.name in (PEER_DIR, IBGP_DIR)
                        and entry.is_dir(follow_symlinks=False)
                    ):
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        foreign.add(rel)
                        continue
                    with open(entry.path, "rb") as fh:
                        data = fh.read()
                    if data.startswith(_MARKER_BYTES):
                        owned[rel] = _Saved(data, entry.stat(follow_symlinks=False).st_mode & 0o7777)
                    else:
                        foreign.add(rel)
        return owned, foreign

    def owned_files(self) -> dict[str, bytes]:
        """Relative path -> content of every file the agent owns now."""
        return {k: v.data for k, v in self.scan()[0].items()}

    def _check_tree(self, tree: Mapping[str, str], foreign: set[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for rel, text in tree.items():
            m = _REL_PATH.match(rel)
            if not m or (m["dir"] is not None and m["dir"] not in (PEER_DIR, IBGP_DIR)):
                raise _Refused(f"refusing to write {rel!r}: not a file name in the agent's directories")
            if not text.startswith(MARKER):
                raise _Refused(f"refusing to write {rel}: rendered content lacks the ownership marker")
            out[rel] = text.encode()
        clash = sorted(set(out) & foreign)
        if clash:
            paths = ", ".join(str(self.config_dir / c) for c in clash)
            raise _Refused(
                f"refusing to overwrite {paths}: not written by moenet-agent (first line is not "
                f"{MARKER!r}); move it away or make it include the agent's files under another name"
            )
        return out

    # ----------------------------------------------------------------- apply

    async def apply(self, render: RenderFn) -> ApplyResult:
        """Render, compare, and if different check, swap and reconfigure (module doc)."""
        async with self._lock:
            self.stats.applies += 1
            try:
                return await self._apply(render)
            except _Refused as exc:
                logger.error("BIRD config not applied: {}", exc)
                return ApplyResult(ok=False, changed=False, error=str(exc))
            except RenderError as exc:
                return ApplyResult(ok=False, changed=False, error=str(exc))

    def _operator_conf(self, foreign: set[str]) -> bytes | None:
        """The operator's own bird.conf, or None when the agent writes it.

        Refused when it does not include the agent's aggregator: the agent's
        files would be written and checked, and BIRD would never load them.
        """
        if BIRD_CONF not in foreign:
            return None
        try:
            data = self.live_conf.read_bytes()
        except OSError as exc:
            raise _Refused(f"cannot read the operator's {self.live_conf}: {exc.strerror}") from exc
        if not any(self._is_aggregator(m["path"]) for m in _INCLUDE.finditer(data.decode(errors="replace"))):
            target = self.config_dir / AGGREGATOR
            raise _Refused(
                f"{self.live_conf} is the operator's (its first line is not {MARKER!r}) and does not "
                f'include the agent\'s files: add include "{target}"; to it (after its router id, before '
                "anything using the agent's symbols), or remove it to let the agent write its own"
            )
        return data

    def _is_aggregator(self, include: str) -> bool:
        live = os.path.abspath(self.config_dir)
        return os.path.normpath(os.path.join(live, include)) == os.path.join(live, AGGREGATOR)

    def _staged_operator_conf(self, data: bytes, staging: Path) -> bytes:
        """The operator's bird.conf for the staging directory, same line numbers:
        the aggregator include points at the staged one, other relative includes
        at the live directory they mean."""
        live = os.path.abspath(self.config_dir)

        def repl(m: re.Match[str]) -> str:
            path = m["path"]
            if self._is_aggregator(path):
                path = str(staging / AGGREGATOR)
            elif not path.startswith("/"):
                path = os.path.join(live, path)
            if '"' in path or "\\" in path:
                raise _Refused(f"cannot stage {self.live_conf}: the path {path!r} has a quote or backslash")
            return m["pre"] + path + m["post"]

        return _INCLUDE.sub(repl, data.decode(errors="surrogateescape")).encode(errors="surrogateescape")

    async def _apply(self, render: RenderFn) -> ApplyResult:
        self.last_rejection = None
        if not self._swept:
            self._sweep_staging()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        owned, foreign = self.scan()
        operator_conf = self._operator_conf(foreign)
        tree = dict(render())
        if operator_conf is not None:
            tree.pop(BIRD_CONF, None)
        wanted = self._check_tree(tree, foreign)
        to_write = {rel: data for rel, data in wanted.items() if rel not in owned or owned[rel].data != data}
        to_delete = sorted(set(owned) - set(wanted))
        if not to_write and not to_delete:
            if not self.pending_configure:
                self.stats.unchanged += 1
                return ApplyResult(ok=True, changed=False)
            # Same files, but BIRD has not confirmed loading them yet.
            return await self._configure_only()

        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.config_dir))
        try:
            self._stage(staging, wanted, foreign, operator_conf)
            rejection = await self._validate(staging)
            if rejection is not None:
                self.stats.rejected += 1
                self.last_rejection = rejection
                logger.error("BIRD rejected the new config (nothing changed): {}", rejection.error)
                return ApplyResult(ok=False, changed=False, error=rejection.error)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        backup = {rel: owned[rel] for rel in [*to_write, *to_delete] if rel in owned}
        created = [rel for rel in to_write if rel not in owned]
        try:
            self._swap(to_write, to_delete, owned)
        except OSError as exc:
            self._restore(backup, created)
            return ApplyResult(ok=False, changed=False, error=f"cannot write the BIRD config: {exc}")
        self.stats.files_written += len(to_write)
        self.stats.files_removed += len(to_delete)
        logger.info(
            "BIRD config: wrote {}, removed {}",
            ", ".join(sorted(to_write)) or "nothing",
            ", ".join(to_delete) or "nothing",
        )
        return await self._configure(backup, created)

    def _sweep_staging(self) -> None:
        """Remove staging directories an interrupted agent left behind."""
        if self.config_dir.is_dir():
            for entry in self.config_dir.iterdir():
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
        self._swept = True

    def _stage(
        self, staging: Path, tree: Mapping[str, bytes], foreign: set[str], operator_conf: bytes | None
    ) -> None:
        """The same texts in ``staging`` (includes are relative), plus the operator's files."""
        # BIRD (possibly running as user bird) must read it: group of config_dir, 0750.
        st = self.config_dir.stat()
        os.chmod(staging, 0o750)  # noqa: S103 - group read for a daemon running as user bird
        with contextlib.suppress(OSError):
            os.chown(staging, -1, st.st_gid)
        if operator_conf is not None:
            (staging / BIRD_CONF).write_bytes(self._staged_operator_conf(operator_conf, staging))
        for d in (PEER_DIR, IBGP_DIR):
            (staging / d).mkdir(mode=0o750, exist_ok=True)
        for rel, data in tree.items():
            (staging / rel).write_bytes(data)
        # The live globs include the operator's own *.conf in peers/ and ibgp/: so does the check.
        for rel in foreign:
            src = self.config_dir / rel
            if "/" in rel and rel.endswith(".conf") and src.is_file():
                shutil.copyfile(src, staging / rel)

    async def _validate(self, staging: Path) -> Rejection | None:
        """None when BIRD accepts the staged tree, else its message with live paths."""
        self.stats.checks += 1
        conf = str(staging / BIRD_CONF)
        try:
            await self.client.check(conf, timeout=self.check_timeout)
            return None
        except BirdConfigError as exc:
            return Rejection(self._live_message(exc.message, staging), _staged_file(exc.message, staging))
        except BirdUnavailable:
            logger.info("BIRD is not running: checking the new config with bird -p")
            return await self._parse_check(conf, staging)
        except BirdClientError as exc:
            return Rejection(f"could not check the config with BIRD: {exc}", None)

    async def _parse_check(self, conf: str, staging: Path) -> Rejection | None:
        binary = self.bird_binary or default_bird_binary()
        if binary is None:
            return Rejection(
                "BIRD is not running and no bird binary was found for a parse check (birdAgent.birdBinary)",
                None,
            )
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            "-c",
            conf,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.check_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return Rejection(f"{binary} -p did not finish within {self.check_timeout:g} s", None)
        errors: list[str] = []
        first_file: str | None = None
        for line in out.decode(errors="replace").splitlines():
            if m := _BIRD_P_LINE.search(line):
                text = self._live_message(m["msg"], staging)
                if m["level"] == "WARN":
                    logger.warning("bird -p: {}", text)
                else:
                    if not errors:
                        first_file = _staged_file(m["msg"], staging)
                    errors.append(text)
        if proc.returncode == 0 and not errors:
            return None
        return Rejection(
            "; ".join(errors)
            or f"{binary} -p exited {proc.returncode}: {out.decode(errors='replace').strip()}",
            first_file,
        )

    def _live_message(self, message: str, staging: Path) -> str:
        """BIRD's ``file:line:col text`` as ``<live file>:<line>: text``."""
        text = message.replace(str(staging), str(self.config_dir))
        m = _LOCATION.match(text)
        return f"{m['file']}:{m['line']}: {m['msg']}" if m else text

    # ------------------------------------------------------------------ swap

    def _new_file_mode(self) -> tuple[int, int, int]:
        """Mode, uid, gid for a new file: like the existing bird.conf, else 0644 as the agent."""
        try:
            st = self.live_conf.stat()
            return st.st_mode & 0o777, st.st_uid, st.st_gid
        except OSError:
            return 0o644, -1, -1

    def _swap(self, to_write: Mapping[str, bytes], to_delete: list[str], owned: Mapping[str, _Saved]) -> None:
        dirs: set[Path] = set()
        new_mode = self._new_file_mode()
        for rel, data in sorted(to_write.items()):
            path = self.config_dir / rel
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o755)
                dirs.add(path.parent.parent)
            mode = (owned[rel].mode, -1, -1) if rel in owned else new_mode
            _atomic_write(path, data, *mode)
            dirs.add(path.parent)
        for rel in to_delete:
            path = self.config_dir / rel
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            dirs.add(path.parent)
        for d in dirs:
            _fsync_dir(d)

    def _restore(self, backup: Mapping[str, _Saved], created: list[str]) -> None:
        """Put the previous owned files back exactly; remove files that were new."""
        dirs: set[Path] = set()
        for rel, saved in backup.items():
            path = self.config_dir / rel
            try:
                _atomic_write(path, saved.data, saved.mode, -1, -1)
            except OSError as exc:
                logger.error("rollback: cannot restore {}: {}", path, exc)
            dirs.add(path.parent)
        for rel in created:
            path = self.config_dir / rel
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            dirs.add(path.parent)
        for d in dirs:
            with contextlib.suppress(OSError):
                _fsync_dir(d)

    # ------------------------------------------------------------- configure

    async def _configure_only(self) -> ApplyResult:
        try:
            self.stats.configures += 1
            await self.client.configure(str(self.live_conf))
        except BirdConfigError as exc:
            return ApplyResult(
                ok=False, changed=False, error=self._live_message(exc.message, self.config_dir)
            )
        except BirdClientError as exc:
            return ApplyResult(ok=False, changed=False, error=f"BIRD did not reconfigure: {exc}")
        self.pending_configure = False
        return ApplyResult(ok=True, changed=True)

    async def _configure(self, backup: Mapping[str, _Saved], created: list[str]) -> ApplyResult:
        started = time.monotonic()
        try:
            self.stats.configures += 1
            await self.client.configure(str(self.live_conf))
        except BirdConfigError as exc:
            # BIRD kept its running config; make the files say the same again.
            self.stats.rollbacks += 1
            error = self._live_message(exc.message, self.config_dir)
            logger.error("BIRD refused the checked config; restoring the previous files: {}", error)
            self._restore(backup, created)
            try:
                self.stats.configures += 1
                await self.client.configure(str(self.live_conf))
                self.pending_configure = False
            except BirdClientError as again:
                self.pending_configure = True
                logger.error("BIRD did not reload the restored config either: {}", again)
            return ApplyResult(ok=False, changed=False, error=error)
        except BirdUnavailable as exc:
            # Checked files stay: BIRD reads them when it starts. Retried on the next apply.
            self.pending_configure = True
            return ApplyResult(
                ok=False,
                changed=True,
                error=f"new config written, but BIRD could not be told to load it: {exc}",
            )
        except BirdClientError as exc:  # timeout: BIRD may or may not be reconfiguring
            self.pending_configure = True
            return ApplyResult(
                ok=False, changed=True, error=f"BIRD did not confirm the reconfiguration: {exc}"
            )
        self.pending_configure = False
        logger.info("BIRD reconfigured in {:.3f} s", time.monotonic() - started)
        return ApplyResult(ok=True, changed=True)


def _staged_file(message: str, staging: Path) -> str | None:
    """The staged file (relative path) BIRD's ``file:line:col text`` names, if any."""
    m = _LOCATION.match(message)
    prefix = f"{staging}/"
    if m and m["file"].startswith(prefix):
        return m["file"][len(prefix) :]
    return None


def _atomic_write(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Temp file (dot-named, no ``.conf`` suffix) + fsync + rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if uid != -1 or gid != -1:
                with contextlib.suppress(OSError):
                    os.fchown(fh.fileno(), uid, gid)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
