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
from yarl import URL

from moenet_core import MoenetError, StateError
from moenet_core.config import is_loopback_host

from .local_sources import LocalSource, LocalSources, OfflineContext, bird_section
from .roa import MAX_BYTES, RoaEntry, RoaFileError, StaticRoa, parse_roa_text

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["TASK_NAME", "RoaSource", "RoaSources", "RoaSourcesError", "fetch_roa"]

TASK_NAME = "birdRoaSources"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FETCH_TIMEOUT = 60.0


class RoaSourcesError(MoenetError):
    """Some ROA source could not be read or was refused (its last good entries stay)."""


RoaSource = LocalSource[list[RoaEntry]]
"""One file or URL and what was last learnt from it."""


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


class RoaSources(LocalSources[list[RoaEntry], StaticRoa]):
    """Read, validate and apply the static ROA sources (see the module doc; the
    per-source bookkeeping is :class:`.LocalSources`')."""

    what = "ROA source"
    field = "static"
    applied_what = "static ROAs"
    error_type = RoaSourcesError
    max_bytes = MAX_BYTES
    entries_metric = (
        "roa_static_entries",
        "Validated entries of each static ROA source (file or URL) last read successfully.",
    )
    errors_metric = (
        "roa_static_errors_total",
        "Static ROA sources refused (malformed) or not read (missing, fetch failed).",
    )

    def __init__(self, ctx: PluginContext | OfflineContext) -> None:
        section = bird_section(ctx)
        self.urls = list(section.roa_urls)
        super().__init__(ctx, section.roa_files, self.urls)

    @property
    def configured(self) -> bool:
        return bool(self.files or self.urls)

    @property
    def static(self) -> StaticRoa:
        """The union of every source's last good entries, rendered."""
        return self.value

    def _parse(self, data: bytes, source: str) -> list[RoaEntry]:
        return parse_roa_text(data, source)

    def _combine(self, entries: list[list[RoaEntry]]) -> StaticRoa:
        return StaticRoa.of(e for some in entries for e in some)

    def _describe(self, entries: list[RoaEntry]) -> str:
        return f"{len(entries)} entries"

    def _result(self, value: StaticRoa, applied: bool | None) -> dict[str, Any]:
        return {"roa4": value.count4, "roa6": value.count6, "applied": applied}

    def _load(self) -> None:
        for url in self.urls:
            self._restore(url)
        super()._load()

    async def _refresh(self) -> None:
        await super()._refresh()
        for url in self.urls:
            await self._fetch(url)

    def _restore(self, url: str) -> None:
        """The last good download of ``url`` from the state directory, re-validated."""
        name = _cache_name(url)
        try:
            data = self.ctx.state.read_bytes(name)
        except StateError as exc:  # unreadable (render by a user who may not read the state)
            self.ctx.log.warning("ignoring the saved copy of {}: {}", url, exc)
            return
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
