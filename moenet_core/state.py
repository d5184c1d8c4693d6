"""The state directory: small JSON/bytes files written atomically.

Plugins keep their last-known desired state, outboxes and flags here, so a crash or
a reboot never loses what the agent knew. A write goes to a temporary file in the
same directory, is fsync'd, renamed over the old file, and the directory is
fsync'd: a reader sees the old content or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import MoenetError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class StateError(MoenetError):
    """A state file could not be read or written."""


class StateStore:
    """A directory of named state files. ``scoped(name)`` gives a sub-store
    (each plugin gets ``plugins/<name>``)."""

    def __init__(self, root: str | os.PathLike[str], *, mode: int = 0o700) -> None:
        self.root = Path(root)
        self._mode = mode

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise StateError(f"invalid state file name {name!r}")
        return self.root / name

    def path(self, name: str) -> Path:
        """The file's path (it may not exist)."""
        return self._path(name)

    def ensure(self) -> None:
        """Create the directory (mode 0700) if needed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=self._mode)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.root}: {exc.strerror}") from exc

    def scoped(self, name: str) -> StateStore:
        """A store in the subdirectory ``name``."""
        return StateStore(self._path(name), mode=self._mode)

    def read_bytes(self, name: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self._path(name)}: {exc.strerror}") from exc

    def write_bytes(self, name: str, data: bytes, *, mode: int = 0o600) -> None:
        """Replace the file atomically with ``data``."""
        target = self._path(name)
        self.ensure()
        try:
            atomic_write(target, data, mode=mode)
        except OSError as exc:
            raise StateError(f"cannot write {target}: {exc.strerror}") from exc

    def read_json(self, name: str, default: Any = None) -> Any:
        """Parsed JSON content, or ``default`` when the file does not exist.

        A corrupt file raises :class:`StateError` rather than silently reading as
        empty: empty state can mean "remove everything" to a reconciler.
        """
        raw = self.read_bytes(name)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise StateError(f"state file {self._path(name)} is not valid JSON: {exc}") from exc

    def write_json(self, name: str, value: Any) -> None:
        """Replace the file atomically with ``value`` as JSON."""
        data = json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"
        self.write_bytes(name, data)

    def delete(self, name: str) -> bool:
        """Remove the file; False when it did not exist."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def names(self) -> list[str]:
        """Names of the files present (temporary files excluded), sorted."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return []


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, replace: bool = True
) -> bool:
    """Write ``data`` to ``path`` so a reader sees the old content or the new, never a torn file.

    The data goes to a temporary file in the same directory (created with
    ``mode`` from the start, so a secret is never readable by others), is
    fsync'd, then renamed over ``path`` — or, with ``replace=False``, linked
    into place only if ``path`` does not exist yet (returns False when it did:
    someone else's file wins). The directory is fsync'd so the rename survives
    a crash. Raises OSError; the temporary file never stays behind.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(target.parent)
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
