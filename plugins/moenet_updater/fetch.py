"""HTTP for the updater: the release feed and the artefacts, HTTPS only, size-capped.

Every URL, including each redirect target (GitHub answers asset downloads with a
redirect to its storage), must be ``https://``; plain ``http://`` is accepted only
for loopback hosts, which is what tests serve from. Redirects are followed by
hand (at most five) so that a redirect to plain HTTP is refused *before* it is
requested. Bodies are streamed with a byte cap (a ``Content-Length`` above it is
refused at once); downloads go to a file while being hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import aiohttp
from yarl import URL

from moenet_core import MoenetError

MAX_REDIRECTS = 5
CHUNK = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(MoenetError):
    """A download failed or was refused."""


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be fetched, or None."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return f"not a URL: {url!r}"
    if not parsed.is_absolute() or not parsed.host:
        return f"must be an absolute https:// URL (got {url!r})"
    if parsed.scheme == "https":
        return None
    if parsed.scheme == "http" and _loopback(parsed.host):
        return None
    return f"must be https:// (plain http only for loopback addresses; got {url!r})"


def checked_url(url: str | URL) -> URL:
    problem = url_problem(str(url))
    if problem is not None:
        raise FetchError(f"refusing {url}: {problem}")
    return URL(str(url))


class Fetcher:
    """One aiohttp session; ``async with Fetcher(...) as f: await f.get(url, limit=...)``."""

    def __init__(self, *, timeout: float, user_agent: str) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 30.0))
        self._headers = {"User-Agent": user_agent}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        # trust_env=False: no proxy or netrc from the environment decides where we connect.
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers, trust_env=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def _open(self, url: str, accept: str) -> AsyncIterator[aiohttp.ClientResponse]:
        assert self._session is not None, "use Fetcher as an async context manager"
        current = checked_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = await self._session.get(current, allow_redirects=False, headers={"Accept": accept})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise FetchError(f"cannot fetch {current}: {type(exc).__name__}: {exc}") from None
            if resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                resp.release()
                if not location:
                    raise FetchError(f"{current}: redirect without a Location")
                current = checked_url(current.join(URL(location)))
                continue
            try:
                if resp.status != 200:
                    raise FetchError(f"{current}: HTTP {resp.status} {resp.reason or ''}".rstrip())
                yield resp
            finally:
                resp.release()
            return
        raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _check_length(resp: aiohttp.ClientResponse, limit: int) -> None:
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchError(f"{resp.url}: {resp.content_length} bytes is more than the cap of {limit}")

    async def get(self, url: str, *, limit: int, accept: str = "application/octet-stream") -> bytes:
        """The body of ``url``, at most ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._open(url, accept) as resp:
                self._check_length(resp, limit)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise FetchError(f"{resp.url}: larger than the cap of {limit} bytes")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from None
        return b"".join(chunks)

    async def download(self, url: str, dest: Path, *, limit: int) -> str:
        """Stream ``url`` into ``dest`` (at most ``limit`` bytes); returns its SHA-256 (hex)."""
        h = hashlib.sha256()
        size = 0
        try:
            async with self._open(url, "application/octet-stream") as resp:
                self._check_length(resp, limit)
                with dest.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise FetchError(f"{resp.url}: larger than the cap of {limit} bytes")
                        h.update(chunk)
                        fh.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"cannot download {url}: {type(exc).__name__}: {exc}") from None
        return h.hexdigest()
