"""The ``birdRoaSources`` task: local ROA files and downloads, validated, fed to BIRD.

Sources come from the local config only (``bird.roaFiles``, ``bird.roaUrls``).
Each is parsed strictly (:func:`~moenet_bird.roa.parse_roa_text`); a source that
fails keeps its last good entries (a download's last good copy is kept in the
plugin's state directory, so a restart has it before the first fetch). The
union of every source's entries is rendered once into the static ROA protocols
and handed to the backend only when it changed: an unchanged file costs a
``stat`` (files) or one download and a hash compare (URLs), never a re-render.

The first load happens when the task is built, before anything is applied, so
the first render after a start already carries the static ROAs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
from yarl import URL

from moenet_core import BackendUnavailable, MoenetError, RoutingBackend
from moenet_core.config import is_loopback_host

from .backend import BirdRoutingBackend
from .config import BirdConfig
from .roa import MAX_BYTES, RoaEntry, RoaFileError, StaticRoa, parse_roa_text

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["TASK_NAME", "RoaSource", "RoaSources", "RoaSourcesError", "fetch_roa"]

TASK_NAME = "birdRoaSources"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FETCH_TIMEOUT = 60.0


class RoaSourcesError(MoenetError):
    """Some ROA source could not be read or was refused (its last good entries stay)."""


@attrs.define
class RoaSource:
    """One file or URL and what was last learnt from it."""

    name: str
    entries: list[RoaEntry] | None = None
    """The last good entries; None before any good read."""
    good_at: float | None = None
    """Wall time of the content: a file's mtime, or when a download last succeeded."""
    error: str | None = None
    """Why the last read failed (its last good entries, if any, stay in use)."""
    stamp: Any = None
    """What identifies the content read (file: inode, size, mtime; URL: digest)."""


def _url_problem(url: URL) -> str | None:
    if url.scheme == "https" and url.host:
        return None
    if url.scheme == "http" and url.host and is_loopback_host(url.host):
        return None
    return f"refusing {url}: only https:// (plain http:// only to this machine)"


async def fetch_roa(url: str, *, timeout: float = _FETCH_TIMEOUT, limit: int = MAX_BYTES) -> bytes:
    """The body of ``url``: https only (each redirect checked before it is followed),
    at most ``limit`` bytes. Raises :class:`RoaSourcesError`."""
    current = URL(url)
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
    # trust_env=False: no proxy or netrc from the environment decides where we connect.
    async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
        for _ in range(4):
            if (problem := _url_problem(current)) is not None:
                raise RoaSourcesError(problem)
            try:
                async with session.get(current, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS and resp.headers.get("Location"):
                        current = current.join(URL(resp.headers["Location"]))
                        continue
                    if resp.status != 200:
                        raise RoaSourcesError(f"{current}: HTTP {resp.status}")
                    if (resp.content_length or 0) > limit:
                        raise RoaSourcesError(f"{current}: larger than {limit} bytes")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > limit:
                            raise RoaSourcesError(f"{current}: larger than {limit} bytes")
                    return bytes(body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RoaSourcesError(f"cannot fetch {current}: {type(exc).__name__}: {exc}") from None
    raise RoaSourcesError(f"{url}: too many redirects")


def _cache_name(url: str) -> str:
    return "roa-" + hashlib.sha256(url.encode()).hexdigest()[:24]


class RoaSources:
    """Read, validate and apply the static ROA sources (see the module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        section = ctx.section if isinstance(ctx.section, BirdConfig) else BirdConfig()
        self.files = list(section.roa_files)
        self.urls = list(section.roa_urls)
        self.sources: dict[str, RoaSource] = {n: RoaSource(n) for n in (*self.files, *self.urls)}
        self.static = StaticRoa()
        self._m_entries = ctx.metrics.gauge(
            "roa_static_entries",
            "Validated entries of each static ROA source (file or URL) last read successfully.",
            ["source"],
        )
        self._m_errors = ctx.metrics.counter(
            "roa_static_errors_total",
            "Static ROA sources refused (malformed) or not read (missing, fetch failed).",
            ["source"],
        )
        for url in self.urls:
            self._restore(url)
        for path in self.files:
            self._read_file(path)
        self.static = self._combined()
        backend = self._backend_or_none()
        if backend is not None and backend.last_result is None:
            # Before the first apply: set directly, the first render carries them. (After
            # one, the first run hands them over with an apply.)
            backend.local = attrs.evolve(backend.local, static=self.static)

    @property
    def configured(self) -> bool:
        return bool(self.files or self.urls)

    def _backend_or_none(self) -> BirdRoutingBackend | None:
        try:
            backend = self.ctx.backend("routing", RoutingBackend)
        except BackendUnavailable:
            return None
        return backend if isinstance(backend, BirdRoutingBackend) else None

    def _failed(self, src: RoaSource, error: str) -> None:
        src.error = error
        self._m_errors.labels(source=src.name).inc()
        kept = f"keeping its last good {len(src.entries)} entries" if src.entries else "no entries from it"
        self.ctx.log.error("ROA source {}: {}; {}", src.name, error, kept)

    def _accepted(self, src: RoaSource, entries: list[RoaEntry], good_at: float, stamp: Any) -> None:
        if src.entries != entries:
            self.ctx.log.info("ROA source {}: {} entries", src.name, len(entries))
        src.entries, src.good_at, src.error, src.stamp = entries, good_at, None, stamp
        self._m_entries.labels(source=src.name).set(len(entries))

    def _read_file(self, path: str) -> None:
        src = self.sources[path]
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == src.stamp and src.error is None:
                return  # unchanged: not read again
            if st.st_size > MAX_BYTES:
                raise RoaFileError([f"{path}: larger than {MAX_BYTES} bytes"], source=path)
            with open(path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
            entries = parse_roa_text(data, path)
        except RoaFileError as exc:
            self._failed(src, "refused: " + "; ".join(exc.problems))
            return
        except OSError as exc:
            self._failed(src, f"cannot read: {exc.strerror or exc}")
            return
        self._accepted(src, entries, st.st_mtime, stamp)

    def _restore(self, url: str) -> None:
        """The last good download of ``url`` from the state directory, re-validated."""
        name = _cache_name(url)
        data = self.ctx.state.read_bytes(name)
        if data is None:
            return
        try:
            entries = parse_roa_text(data, f"{url} (saved copy)")
        except RoaFileError as exc:
            self.ctx.log.warning("ignoring the saved copy of {}: {}", url, "; ".join(exc.problems))
            return
        saved_at = os.stat(self.ctx.state.path(name)).st_mtime
        self._accepted(self.sources[url], entries, saved_at, hashlib.sha256(data).hexdigest())

    async def _fetch(self, url: str) -> None:
        src = self.sources[url]
        try:
            data = await fetch_roa(url)
            digest = hashlib.sha256(data).hexdigest()
            entries = src.entries if digest == src.stamp and src.entries else parse_roa_text(data, url)
        except RoaFileError as exc:
            self._failed(src, "refused: " + "; ".join(exc.problems))
            return
        except RoaSourcesError as exc:
            self._failed(src, str(exc))
            return
        assert entries is not None
        if digest != src.stamp:
            await asyncio.to_thread(self.ctx.state.write_bytes, _cache_name(url), data)
        self._accepted(src, entries, time.time(), digest)

    def _combined(self) -> StaticRoa:
        union: set[RoaEntry] = set()
        for src in self.sources.values():
            union.update(src.entries or ())
        return StaticRoa.of(union)

    async def run_once(self) -> dict[str, Any]:
        for path in self.files:
            await asyncio.to_thread(self._read_file, path)
        for url in self.urls:
            await self._fetch(url)
        static = self.static = self._combined()
        applied = None
        backend = self._backend_or_none()
        if backend is not None and backend.local.static != static:
            result = await backend.set_local(attrs.evolve(backend.local, static=static))
            applied = None if result is None else result.ok
            if result is not None and not result.ok:
                raise RoaSourcesError(f"static ROAs not applied: {result.error}; retried next run")
        errors = {s.name: s.error for s in self.sources.values() if s.error}
        if errors:
            raise RoaSourcesError("; ".join(f"{k}: {v}" for k, v in errors.items()))
        return {"roa4": static.count4, "roa6": static.count6, "applied": applied}
