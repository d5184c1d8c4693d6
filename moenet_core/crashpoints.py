"""Named crash points: kill the agent at an exact instruction, for crash tests.

``crashpoint("sessions.tunnels.done")`` does nothing unless the environment
variable :data:`CRASH_ENV` (``MOENET_CRASH_AT``) names that point when the agent
starts; then the process sends itself ``SIGKILL`` there: no ``finally``, no
``except BaseException`` cleanup, no flushed buffers, exactly as a power cut or
the OOM killer would end it. ``name:N`` kills at the N-th time the point is
reached (1 by default), so a point inside a loop can fire in the middle of a
batch (``wireguard.create.made:5``: after the fifth tunnel was created).

A point that is not named costs one comparison with None. The variable is read
once, at import; :func:`reload` reads it again (for tests that set it in-process).

Every built-in crash point is listed in ``docs/troubleshooting.md`` ("Crash
recovery") with what the agent does about a crash there;
``tests/e2e/test_crash_recovery.py`` kills a real agent at them.

:func:`sweep_partial_writes` removes what an interrupted
:func:`~moenet_core.atomic_write` leaves in a directory (its temporary file).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

__all__ = ["CRASH_ENV", "crashpoint", "reload", "sweep_partial_writes"]

#: The environment variable naming the point to crash at (``name`` or ``name:N``).
CRASH_ENV = "MOENET_CRASH_AT"

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,127}$")

_target: tuple[str, int] | None = None
_hits = 0


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, sep, count = value.strip().rpartition(":")
    if not sep:
        name, count = count, "1"
    if not _NAME.fullmatch(name) or not count.isdigit() or int(count) < 1:
        print(f"moenet-agent: ignoring {CRASH_ENV}={value!r}: not NAME or NAME:N", file=sys.stderr)
        return None
    return name, int(count)


def reload() -> tuple[str, int] | None:
    """Read :data:`CRASH_ENV` again (and reset the hit count); returns the target."""
    global _target, _hits
    _target, _hits = _parse(os.environ.get(CRASH_ENV)), 0
    return _target


def crashpoint(name: str) -> None:
    """SIGKILL this process when :data:`CRASH_ENV` names ``name`` (see the module doc)."""
    global _hits
    if _target is None or _target[0] != name:
        return
    _hits += 1
    if _hits < _target[1]:
        return
    # One line on stderr (unbuffered write) so a test can tell which point killed it.
    os.write(2, f"moenet-agent: crash point {name} (hit {_hits}): SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def sweep_partial_writes(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files interrupted atomic writes left in ``directory``
    (``.<name>.<8 random characters>.tmp``, never read by anyone: the rename that
    would have published them did not happen); returns their names. Call it when
    the directory's owner starts, before it writes there."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if _PARTIAL.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                Path(entry.path).unlink()
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return sorted(removed)


reload()
