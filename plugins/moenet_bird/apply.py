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
- **A crash never leaves BIRD behind its files.** Before the first file is swapped
  a marker (:data:`PENDING_FILE`, dot-named, fsync'd) says "the files are newer
  than what BIRD confirmed loading"; it goes only once BIRD has confirmed a
  configure. A restarted agent that finds it (:meth:`TreeApplier.recover`)
  reconfigures at its first apply even when the render is unchanged, so an
  agent killed between the swap and the configure cannot take "the files are as
  rendered" for "BIRD runs them". ``recover`` also removes the staging
  directories and the temporary files of a swap an agent was killed in.
- **BIRD may run as its own user** (Debian's ``bird3``: ``bird -u bird -g bird``).
  Every file the agent writes, staged or live, is 0640 and every directory it
  creates 0750, set explicitly (the unit's ``UMask=0077`` would make them 0600/0700),
  with the group BIRD reads with (``bird.group``, :meth:`TreeApplier.resolve_gid`);
  nothing is ever world-readable. Owned files and the agent's own directories left
  unreadable by an older agent are repaired on the next apply. Setting the group
  needs ``CAP_CHOWN`` or membership of the group; when it fails a warning says so
  and BIRD's check reports what it cannot read.

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
import functools
import grp
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
from loguru import logger

from moenet_core import ApplyResult, crashpoint

from .client import BirdClient
from .names import BirdConfigError as RenderError
from .protocol import BirdClientError, BirdConfigError, BirdUnavailable
from .render import AGGREGATOR, BIRD_CONF, IBGP_DIR, MARKER, PEER_DIR

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "PENDING_FILE",
    "STAGING_PREFIX",
    "ApplyStats",
    "Rejection",
    "RenderFn",
    "TreeApplier",
    "default_bird_binary",
]

#: ``render() -> {relative path: text}``: the whole tree, ``bird.conf`` included
#: (the applier leaves it out when the operator keeps their own).
RenderFn = Callable[[], Mapping[str, str]]

#: Staging directories are dot-named so no ``*`` glob of BIRD ever matches them.
STAGING_PREFIX = ".moenet-staging-"
#: Present while the files on disk may be newer than what BIRD confirmed loading.
PENDING_FILE = ".moenet-pending-configure"
#: A temporary file of :func:`_atomic_write` (``.<name>.<8 random characters>.tmp``).
_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")

#: Mode of every file the agent writes and of every directory it creates, whatever
#: the umask: BIRD's group reads (``bird.group``), nobody else does.
FILE_MODE = 0o640
DIR_MODE = 0o750

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
    gid: int = -1


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
        group: str = "",
    ) -> None:
        self.config_dir = Path(config_dir)
        self.client = client
        self.bird_binary = bird_binary
        self.group = group
        """``bird.group``: name or gid BIRD reads with; empty picks one (:meth:`resolve_gid`)."""
        self._gid = -1
        self._chown_warned = False
        self.check_timeout = check_timeout
        self.stats = ApplyStats()
        self._pending = False
        self.last_rejection: Rejection | None = None
        """Set when the last apply's staged tree was rejected by BIRD, else None."""
        self._lock = asyncio.Lock()
        self._swept = False

    @property
    def live_conf(self) -> Path:
        return self.config_dir / "bird.conf"

    @property
    def pending_configure(self) -> bool:
        """Files on disk may be newer than what BIRD confirmed loading (BIRD was down,
        the configure timed out, or the agent was killed before it): the next apply
        reconfigures even if unchanged. Kept on disk (:data:`PENDING_FILE`), so a
        restarted agent knows it too."""
        return self._pending

    @pending_configure.setter
    def pending_configure(self, value: bool) -> None:
        marker = self.config_dir / PENDING_FILE
        if value:
            if not self._pending or not marker.exists():
                self._ensure_dir(self.config_dir)
                text = b"moenet-agent: files newer than BIRD's running config\n"
                _atomic_write(marker, text, 0o600, lambda _fd, _path: None)
                _fsync_dir(self.config_dir)
        elif self._pending or marker.exists():
            marker.unlink(missing_ok=True)
        self._pending = value

    # ------------------------------------------------------------ recovery

    def recover(self) -> list[str]:
        """What an agent killed mid-apply left in ``config_dir``: its staging
        directories and the temporary files of an interrupted swap (only empty ones
        or ones carrying the marker: anything else is the operator's) are removed,
        and a pending configure (:data:`PENDING_FILE`) is taken over. Returns what
        was found (for the log)."""
        found: list[str] = []
        if not self.config_dir.is_dir():
            self._swept = True
            return found
        for entry in self.config_dir.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                found.append(f"removed staging directory {entry.name}")
        self._swept = True
        for d in self._dirs():
            if not d.is_dir() or d.is_symlink():
                continue
            for entry in d.iterdir():
                if not _PARTIAL.fullmatch(entry.name) or not entry.is_file() or entry.is_symlink():
                    continue
                with contextlib.suppress(OSError):
                    with open(entry, "rb") as fh:
                        head = fh.read(len(_MARKER_BYTES))
                    if head and not head.startswith(_MARKER_BYTES):
                        continue  # not the agent's
                    entry.unlink()
                    found.append(f"removed {entry.relative_to(self.config_dir)} (an interrupted swap)")
        if (self.config_dir / PENDING_FILE).exists():
            self._pending = True
            found.append("the files may be newer than BIRD's running config: reconfiguring")
        return found

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
                    if (
                        entry.name.startswith(STAGING_PREFIX)
                        or (not prefix and entry.name == PENDING_FILE)
                        or (
                            not prefix
                            and entry.name in (PEER_DIR, IBGP_DIR)
                            and entry.is_dir(follow_symlinks=False)
                        )
                    ):
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        foreign.add(rel)
                        continue
                    with open(entry.path, "rb") as fh:
                        data = fh.read()
                    if data.startswith(_MARKER_BYTES):
                        st = entry.stat(follow_symlinks=False)
                        owned[rel] = _Saved(data, st.st_mode & 0o7777, st.st_gid)
                    else:
                        foreign.add(rel)
        return owned, foreign

    # ---------------------------------------------------------------- modes

    def resolve_gid(self) -> int:
        """The gid BIRD reads with (``bird.group`` in :mod:`.config` says how it is
        picked), or -1 to leave the agent's own group."""
        if self.group:
            if self.group.isascii() and self.group.isdigit():
                return int(self.group)
            try:
                return grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise _Refused(f"bird.group {self.group!r}: no such group") from None
        for path in (self.live_conf, self.config_dir):
            with contextlib.suppress(OSError):
                gid = path.stat().st_gid
                if gid != 0:
                    return gid
        try:
            return grp.getgrnam("bird").gr_gid
        except KeyError:
            return -1

    def _chgrp(self, fd: int, path: Path, gid: int | None = None) -> None:
        """Give the open ``fd`` to BIRD's group (or ``gid``); a failure is warned about once."""
        gid = self._gid if gid is None else gid
        if gid < 0 or os.fstat(fd).st_gid == gid:
            return
        try:
            os.fchown(fd, -1, gid)
        except OSError as exc:
            if not self._chown_warned:
                self._chown_warned = True
                logger.warning(
                    "cannot give {} to group {} ({}): a BIRD running as that group cannot read the "
                    "agent's files; give the agent CAP_CHOWN or membership of the group "
                    "(SupplementaryGroups= in a systemd drop-in), or set bird.group",
                    path,
                    gid,
                    exc.strerror,
                )

    def _ensure_dir(self, path: Path) -> None:
        """``path`` (and missing parents) as a directory BIRD's group can search.

        One the agent creates is :data:`DIR_MODE` with BIRD's group. An existing one
        is left alone unless the agent owns it and BIRD could not search it (an
        older agent under ``UMask=0077`` made it 0700): then it gets group r-x, and
        BIRD's group if its group is root's. Others never gain anything; symlinks
        are not followed.
        """
        created = False
        if not path.is_dir():
            if path.parent != path:
                self._ensure_dir(path.parent)
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=DIR_MODE)  # the umask may take more: set below
                created = True
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if created else 0))
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if created:
                os.fchmod(fd, DIR_MODE)
                self._chgrp(fd, path)
            elif st.st_uid == os.geteuid() and mode & 0o005 != 0o005:
                if mode & 0o050 != 0o050:
                    os.fchmod(fd, mode | 0o050)
                if st.st_gid == 0:
                    self._chgrp(fd, path)
        finally:
            os.close(fd)

    def _repair_files(self, owned: Mapping[str, _Saved]) -> None:
        """Owned files not :data:`FILE_MODE` with BIRD's group (an older agent's) made so."""
        for rel, saved in owned.items():
            if saved.mode == FILE_MODE and (self._gid < 0 or saved.gid == self._gid):
                continue
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.config_dir / rel, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fchmod(fd, FILE_MODE)
                    self._chgrp(fd, self.config_dir / rel)
                finally:
                    os.close(fd)

    def _write_new(self, path: Path, data: bytes) -> None:
        """A new staged file: :data:`FILE_MODE`, BIRD's group."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fd, FILE_MODE)
            self._chgrp(fd, path)
            fh.write(data)

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
        self._gid = self.resolve_gid()
        self._ensure_dir(self.config_dir)
        for d in (PEER_DIR, IBGP_DIR):
            if (self.config_dir / d).is_dir() and not (self.config_dir / d).is_symlink():
                self._ensure_dir(self.config_dir / d)
        owned, foreign = self.scan()
        self._repair_files(owned)
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
            crashpoint("bird.apply.staged")
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
        was_pending = self.pending_configure
        try:
            # Durably, before the first file changes: BIRD is behind the files from here on.
            self.pending_configure = True
            self._swap(to_write, to_delete, owned)
        except OSError as exc:
            self._restore(backup, created)
            with contextlib.suppress(OSError):
                self.pending_configure = was_pending
            return ApplyResult(ok=False, changed=False, error=f"cannot write the BIRD config: {exc}")
        crashpoint("bird.apply.swapped")
        self.stats.files_written += len(to_write)
        self.stats.files_removed += len(to_delete)
        logger.info(
            "BIRD config: wrote {}, removed {}",
            ", ".join(sorted(to_write)) or "nothing",
            ", ".join(to_delete) or "nothing",
        )
        return await self._configure(backup, created)

    def _sweep_staging(self) -> None:
        """What an interrupted agent left behind (:meth:`recover`), once."""
        for what in self.recover():
            logger.warning("BIRD config: {}", what)

    def _stage(
        self, staging: Path, tree: Mapping[str, bytes], foreign: set[str], operator_conf: bytes | None
    ) -> None:
        """The same texts in ``staging`` (includes are relative), plus the operator's files.

        BIRD (possibly running as user bird) must read them whatever the umask:
        directories :data:`DIR_MODE`, files :data:`FILE_MODE`, BIRD's group."""
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, DIR_MODE)
            self._chgrp(fd, staging)
        finally:
            os.close(fd)
        if operator_conf is not None:
            self._write_new(staging / BIRD_CONF, self._staged_operator_conf(operator_conf, staging))
        for d in (PEER_DIR, IBGP_DIR):
            self._ensure_dir(staging / d)
        for rel, data in tree.items():
            self._write_new(staging / rel, data)
        # The live globs include the operator's own *.conf in peers/ and ibgp/: so does the check.
        for rel in foreign:
            src = self.config_dir / rel
            if "/" in rel and rel.endswith(".conf") and src.is_file():
                self._write_new(staging / rel, src.read_bytes())

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

    def _swap(self, to_write: Mapping[str, bytes], to_delete: list[str], owned: Mapping[str, _Saved]) -> None:
        dirs: set[Path] = set()
        for rel, data in sorted(to_write.items()):
            path = self.config_dir / rel
            if not path.parent.is_dir():
                self._ensure_dir(path.parent)
                dirs.add(path.parent.parent)
            _atomic_write(path, data, FILE_MODE, self._chgrp)
            crashpoint("bird.swap.file")
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
                _atomic_write(path, saved.data, saved.mode, functools.partial(self._chgrp, gid=saved.gid))
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
        crashpoint("bird.apply.configured")
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


def _atomic_write(path: Path, data: bytes, mode: int, chgrp: Callable[[int, Path], None]) -> None:
    """Temp file (dot-named, no ``.conf`` suffix) + fsync + rename over ``path``,
    ``mode`` set explicitly (not the umask's), ``chgrp(fd, path)`` sets its group."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            chgrp(fh.fileno(), path)
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
