"""Give memory the agent freed back to the system.

CPython returns freed objects to its own pools and large blocks to the C
allocator; glibc keeps freed heap pages mapped until ``malloc_trim`` asks it to
release them. A sync of 1 000 sessions or a ``show protocols all`` read frees
megabytes at once, and without a trim the process keeps them resident (measured
at 1 000 sessions: 4.2 MB given back by one trim). The scheduler calls
:meth:`MemoryTrimmer.after_run` after every task run; it trims at most once per
``interval`` seconds. Elsewhere than glibc (musl, other systems) it does nothing.

The same pass drops the source text attrs keeps in :mod:`linecache` for every
class's generated methods (:func:`forget_generated_sources`).
"""

from __future__ import annotations

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
    """Trims after task runs, at most once per ``interval`` seconds (0: never)."""

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self.trims = 0
        """How many trims ran (tests and ``/status`` read it)."""

    def after_run(self) -> None:
        if self.interval <= 0:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        forget_generated_sources()  # classes are also made later (cattrs, plugins' lazy imports)
        if _MALLOC_TRIM is None:
            return
        try:
            malloc_trim()
        except Exception:  # pragma: no cover - a C call that cannot fail in practice
            logger.opt(exception=True).warning("malloc_trim failed")
            return
        self.trims += 1
