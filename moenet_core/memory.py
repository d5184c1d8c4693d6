"""Give memory the agent freed back to the system.

CPython returns freed objects to its own pools and larger blocks to the C
allocator; glibc keeps freed heap pages mapped until ``malloc_trim`` asks it to
release them. A sync of 1 000 sessions, a metric run's ``show protocols all`` or a
status answer frees megabytes at once, and without a trim the process keeps them
resident until the next trim (measured at 1 000 sessions: 5.3 MB given back by
one trim after a metric run; a collection of cyclic garbage gave back nothing).

The scheduler calls :meth:`MemoryTrimmer.after_run` after every task run. It trims
at once unless it trimmed less than ``gap`` seconds ago; then it trims once the
gap has passed, so the last run of a burst is trimmed too. A trim costs 2-5 ms.
Elsewhere than glibc (musl, other systems) it does nothing.

The same pass drops the source text attrs keeps in :mod:`linecache` for every
class's generated methods (:func:`forget_generated_sources`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import linecache
import time
from collections.abc import Callable

from loguru import logger

__all__ = ["MemoryTrimmer", "forget_generated_sources", "malloc_trim"]

#: ``linecache`` names of source that attrs generates (``<attrs generated methods
#: module.Class>``, ``<attrs generated init ...>`` in older releases).
_GENERATED = "<attrs generated "


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_MALLOC_TRIM = _load_malloc_trim()


def malloc_trim() -> bool | None:
    """Release the C allocator's free pages: True when some were released, False
    when none were, None when this C library has no ``malloc_trim``."""
    if _MALLOC_TRIM is None:
        return None
    return bool(_MALLOC_TRIM(0))


def forget_generated_sources() -> int:
    """Drop the generated methods' source text attrs registers in ``linecache``
    for every class it builds, so that tracebacks can quote it: about 0.85 MB for
    the agent's ~200 classes with all built-in plugins, kept for the whole run.
    A traceback through a generated ``__init__`` then shows the file and line
    without the text. Returns how many entries went."""
    names = [name for name in linecache.cache if name.startswith(_GENERATED)]
    for name in names:
        linecache.cache.pop(name, None)
    return len(names)


class MemoryTrimmer:
    """Trims after task runs: at once, or when ``gap`` seconds have passed since
    the last trim (0: never)."""

    def __init__(
        self,
        gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.gap = gap
        self._clock = clock
        self._later = later
        """Calls a function after some seconds (default: the running event loop's
        ``call_later``; without a running loop a trim inside the gap is skipped)."""
        self._last: float | None = None
        self._pending = False
        self.trims = 0
        """How many trims ran (tests and ``/status`` read it)."""

    def after_run(self) -> None:
        if self.gap <= 0 or self._pending:
            return
        now = self._clock()
        if self._last is None or now - self._last >= self.gap:
            self._trim()
            return
        later = self._later
        if later is None:
            try:
                later = asyncio.get_running_loop().call_later
            except RuntimeError:
                return
        self._pending = True
        later(self._last + self.gap - now, self._deferred)

    def _deferred(self) -> None:
        self._pending = False
        self._trim()

    def _trim(self) -> None:
        self._last = self._clock()
        forget_generated_sources()  # classes are also made later (cattrs, plugins' lazy imports)
        if _MALLOC_TRIM is None:
            return
        try:
            malloc_trim()
        except Exception:  # pragma: no cover - a C call that cannot fail in practice
            logger.opt(exception=True).warning("malloc_trim failed")
            return
        self.trims += 1
