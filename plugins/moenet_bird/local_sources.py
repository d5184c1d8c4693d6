"""Local sources: files (and downloads) the local config names, fed to the BIRD backend.

The ``birdDenyList`` (:class:`~.denylist.DenyListSources`) and ``birdRoaSources``
(:class:`~.roa_sources.RoaSources`) tasks work alike, and this base is what they
share: every source is read and parsed strictly; one that fails keeps its last
good entries (and says so: a log line, ``<metric>_errors_total``, the task's
error naming it); the entries of every source are combined into one value (a
:class:`~.denylist.DenyList`, a :class:`~.roa.StaticRoa`) that becomes one field
of the backend's :class:`~.roa.LocalRouting`, applied only when it changed. An
unchanged file costs a ``stat``.

Sources are read once when the task is built, before anything is applied, so
the first render after a start already carries them. ``moenet-agent render``
builds the same tasks on an :class:`OfflineContext` to render what the agent
would at a start.

A subclass says which sources there are, how one is parsed (:meth:`_parse`)
and how entries combine (:meth:`_combine`), and names its log lines, metrics,
error class and result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence, Sized
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeVar

import attrs
from prometheus_client import CollectorRegistry

from moenet_core import BackendUnavailable, MoenetError, PluginMetrics, RoutingBackend

from .names import BirdConfigError

if TYPE_CHECKING:
    from loguru import Logger

    from moenet_core import PluginContext, StateStore

    from .backend import BirdRoutingBackend
    from .config import BirdConfig
    from .roa import LocalRouting

__all__ = ["LocalSource", "LocalSources", "OfflineContext", "bird_section", "configured_local"]

E = TypeVar("E", bound=Sized)
"""What one source yields (its parsed entries)."""
V = TypeVar("V")
"""What the sources combine into: the :class:`~.roa.LocalRouting` field."""


def bird_section(ctx: PluginContext | OfflineContext) -> BirdConfig:
    """The context's ``bird`` section, or the defaults when there is none."""
    from .config import BirdConfig  # .config imports .policy, which imports .denylist, which imports this

    return ctx.section if isinstance(ctx.section, BirdConfig) else BirdConfig()


def configured_local(section: BirdConfig) -> LocalRouting:
    """What the ``bird`` section itself pins (ROA mode, local RTR caches and their
    expiry, the route collector): the backend's start, before the tasks add theirs."""
    from .roa import LocalRouting  # .roa imports .denylist, which imports this

    return LocalRouting(
        roa_mode=section.roa_mode,
        rpki_servers=tuple(section.local_rpki_servers),
        rpki_expire=section.rpki_expire,
        collector=section.collector,
    )


class OfflineContext:
    """What a source task needs from its context, without an agent:
    ``moenet-agent render`` reads the local sources as the tasks do at a start.
    There is no backend (nothing is applied) and the metrics go to a throwaway
    registry; ``state`` is the plugin's state store (read for saved downloads)."""

    def __init__(self, section: BirdConfig, state: StateStore, log: Logger) -> None:
        self.section = section
        self.state = state
        self.log = log
        self.metrics = PluginMetrics(CollectorRegistry(), "bird")

    def backend(self, kind: str, interface: Any = None) -> NoReturn:
        raise BackendUnavailable(f"no {kind} backend: not running inside the agent")


@attrs.define
class LocalSource(Generic[E]):
    """One source (a file path or a URL) and what was last learnt from it."""

    name: str
    entries: E | None = None
    """The last good entries; None before any good read."""
    good_at: float | None = None
    """Wall time of the content: a file's mtime, or when a download last succeeded."""
    error: str | None = None
    """Why the last read failed (its last good entries, if any, stay in use)."""
    stamp: Any = None
    """What identifies the content read (file: inode, size, mtime; URL: digest)."""


class LocalSources(Generic[E, V]):
    """The shared part of a local-sources task (module doc)."""

    what: ClassVar[str]
    """How log lines name a source: ``"<what> <name>: ..."``."""
    field: ClassVar[str]
    """The :class:`~.roa.LocalRouting` field the combined value goes to."""
    applied_what: ClassVar[str]
    """How the error of a failed apply names the value: ``"<applied_what> not applied: ..."``."""
    error_type: ClassVar[type[MoenetError]]
    """What :meth:`run_once` raises when a source failed or the apply did."""
    max_bytes: ClassVar[int]
    """A bigger file is refused unread."""
    entries_metric: ClassVar[tuple[str, str]]
    """Name and help of the gauge of each source's last good entry count."""
    errors_metric: ClassVar[tuple[str, str]]
    """Name and help of the counter of each source's failed reads."""

    def __init__(
        self, ctx: PluginContext | OfflineContext, files: Sequence[str], others: Sequence[str] = ()
    ) -> None:
        self.ctx = ctx
        self.files = list(files)
        """Sources read from the filesystem (:meth:`_read_file`)."""
        self.sources: dict[str, LocalSource[E]] = {n: LocalSource(n) for n in (*self.files, *others)}
        self._m_entries = ctx.metrics.gauge(*self.entries_metric, ["source"])
        self._m_errors = ctx.metrics.counter(*self.errors_metric, ["source"])
        self._load()
        self.value: V = self._combined()
        """The combination last handed to the backend (or to be, at the next run)."""
        backend = self._backend_or_none()
        if backend is not None and backend.last_result is None:
            # Before the first apply: set directly, the first render carries it. (After
            # one, the first run hands it over with an apply.)
            backend.local = self._with_value(backend.local, self.value)

    # ----------------------------------------------------------- for subclasses

    def _parse(self, data: bytes, source: str) -> E:
        """The entries of one source's content; raises :class:`BirdConfigError`."""
        raise NotImplementedError

    def _combine(self, entries: list[E]) -> V:
        """The value of every source's last good entries together."""
        raise NotImplementedError

    def _describe(self, entries: E) -> str:
        """What a log line says a source holds."""
        raise NotImplementedError

    def _result(self, value: V, applied: bool | None) -> dict[str, Any]:
        """The task's result of one run."""
        raise NotImplementedError

    def _load(self) -> None:
        """The first read, when the task is built (blocking: nothing runs yet)."""
        for path in self.files:
            self._read_file(path)

    async def _refresh(self) -> None:
        """Read every source again (one run)."""
        for path in self.files:
            await asyncio.to_thread(self._read_file, path)

    # ----------------------------------------------------------- bookkeeping

    @property
    def errors(self) -> dict[str, str]:
        """Why each source that failed its last read did."""
        return {s.name: s.error for s in self.sources.values() if s.error}

    def _backend_or_none(self) -> BirdRoutingBackend | None:
        from .backend import BirdRoutingBackend  # imports .roa, which imports .denylist

        try:
            backend = self.ctx.backend("routing", RoutingBackend)
        except BackendUnavailable:
            return None
        return backend if isinstance(backend, BirdRoutingBackend) else None

    def _accepted(self, src: LocalSource[E], entries: E, good_at: float, stamp: Any) -> None:
        if src.entries != entries:
            self.ctx.log.info("{} {}: {}", self.what, src.name, self._describe(entries))
        src.entries, src.good_at, src.error, src.stamp = entries, good_at, None, stamp
        self._m_entries.labels(source=src.name).set(len(entries))

    def _failed(self, src: LocalSource[E], error: str) -> None:
        src.error = error
        self._m_errors.labels(source=src.name).inc()
        kept = (
            f"keeping its last good {len(src.entries)} entries"
            if src.entries is not None
            else "no entries from it"
        )
        self.ctx.log.error("{} {}: {}; {}", self.what, src.name, error, kept)

    def _read_file(self, path: str) -> None:
        src = self.sources[path]
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == src.stamp and src.error is None:
                return  # unchanged: not read again
            if st.st_size > self.max_bytes:
                self._failed(src, f"refused: {path}: larger than {self.max_bytes} bytes")
                return
            with open(path, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
            entries = self._parse(data, path)
        except BirdConfigError as exc:
            self._failed(src, "refused: " + "; ".join(exc.problems))
            return
        except OSError as exc:
            self._failed(src, f"cannot read: {exc.strerror or exc}")
            return
        self._accepted(src, entries, st.st_mtime, stamp)

    def _with_value(self, local: LocalRouting, value: V) -> LocalRouting:
        changes: dict[str, Any] = {self.field: value}
        return attrs.evolve(local, **changes)

    def _combined(self) -> V:
        return self._combine([s.entries for s in self.sources.values() if s.entries is not None])

    async def run_once(self) -> dict[str, Any]:
        await self._refresh()
        value = self.value = self._combined()
        applied = None
        backend = self._backend_or_none()
        if backend is not None and getattr(backend.local, self.field) != value:
            result = await backend.set_local(self._with_value(backend.local, value))
            applied = None if result is None else result.ok
            if result is not None and not result.ok:
                raise self.error_type(f"{self.applied_what} not applied: {result.error}; retried next run")
        if errors := self.errors:
            raise self.error_type("; ".join(f"{k}: {v}" for k, v in errors.items()))
        return self._result(value, applied)
