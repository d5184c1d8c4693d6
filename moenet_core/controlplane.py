"""Where desired state comes from and where reports go.

:class:`ControlPlane` is what tasks use (``ctx.cp``): ``fetch("sessions")`` reads
``GET /agent/{node}/sessions``; ``send("modify", body)`` posts
``POST /agent/{node}/modify``. Two sources exist:

- :class:`HttpControlPlane` (``controlPlane.source: "http"``, the default): the
  real CP over HTTP, behind retries and a circuit breaker.
- :class:`FileControlPlane` (``controlPlane.source: "file"``): a local JSON file
  for nodes without a CP; sends land in the state directory and the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import email.utils
import errno
import hashlib
import json
import os
import random
import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import aiohttp
import aiohttp.abc
import attrs
import yarl
from loguru import logger

from .breaker import CircuitBreaker
from .clock import Clock, SystemClock
from .errors import CircuitOpenError, ControlPlaneRejected, ControlPlaneUnavailable
from .jsonlimits import JSONLimitError
from .jsonlimits import loads as json_loads
from .metrics import BREAKER_STATE_VALUES, AgentMetrics
from .retry import RetryPolicy
from .state import StateError, StateStore
from .version import __version__

if TYPE_CHECKING:
    from loguru import Logger

_DEFAULT_RETRY = RetryPolicy()

#: Bytes of the send log per resource and generation (:class:`FileControlPlane`).
SENT_MAX_BYTES = 4 * 2**20

_LOG_BODY_MAX = 4096


class ControlPlane(ABC):
    """A control-plane source for one node."""

    node: str

    @abstractmethod
    async def fetch(self, resource: str) -> Any:
        """``GET /agent/{node}/{resource}``; returns the unwrapped ``data``.

        Raises :class:`~moenet_core.errors.ControlPlaneUnavailable` (network,
        timeout, 5xx, 429 after retries; breaker open) or
        :class:`~moenet_core.errors.ControlPlaneRejected` (4xx, non-zero envelope
        code, unparseable body). Never returns "empty" in place of an error.
        """

    async def fetch_digest(self, resource: str, *, known: bytes | None = None) -> tuple[Any, bytes]:
        """:meth:`fetch` plus a digest of the answer: equal digests mean equal
        answers, so a caller can tell "unchanged" without keeping the answer
        (at 1 000 sessions a decoded answer is about 1.5 MB). This default digests
        the answer as canonical JSON; sources that read bytes digest those.

        ``known``: the digest of an answer the caller still has the use of. A
        source that can tell the digest before decoding returns :data:`UNCHANGED`
        in place of the answer when they are equal, and skips the decode; this
        default always decodes."""
        value = await self.fetch(resource)
        return value, answer_digest(value)

    @abstractmethod
    async def send(self, resource: str, body: Mapping[str, Any]) -> Any:
        """``POST /agent/{node}/{resource}`` with a JSON body; returns the
        unwrapped answer (None for an empty body). Errors as for :meth:`fetch`."""

    @property
    @abstractmethod
    def breaker_state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (``closed`` for sources without one)."""

    async def aclose(self) -> None:  # noqa: B027 - optional: not every source holds connections
        """Release connections."""


_RESOURCE = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")

#: Upper bound on a server-requested ``Retry-After`` wait (seconds).
RETRY_AFTER_CAP = 300.0

#: Characters of a response body quoted in an error message.
_EXCERPT = 200

#: Characters of a CP-supplied error ``message`` kept (it goes to logs and ``/status``).
MESSAGE_MAX = 500

#: Default cap on one response body (``controlPlane.maxResponseBytes``).
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

#: Default bound on one DNS lookup of the CP host (never longer than the request timeout).
DEFAULT_DNS_TIMEOUT = 10.0


def _clip(text: str, limit: int = MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Lookups of the CP host run here, not in the loop's default executor: a
#: black-holed resolver then ties up at most these threads (a timed-out lookup's
#: thread cannot be stopped, only abandoned).
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="moenet-dns")


class _PoolResolver(aiohttp.abc.AbstractResolver):
    """``getaddrinfo`` on :data:`_DNS_POOL` (aiohttp's threaded resolver uses the
    loop's default executor, shared with everything else)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(
            _DNS_POOL, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG
        )
        out: list[aiohttp.abc.ResolveResult] = []
        for fam, _, proto, _, address in infos:
            if fam == socket.AF_INET6 and (len(address) < 4 or address[3]):
                continue  # no IPv6 support, or a scoped link-local address: not for a CP
            out.append(
                aiohttp.abc.ResolveResult(
                    hostname=host,
                    host=str(address[0]),
                    port=int(address[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return out

    async def close(self) -> None:
        return None


class BoundedResolver(aiohttp.abc.AbstractResolver):
    """Each lookup through ``inner`` bounded by ``timeout`` seconds; a lookup that
    takes longer is an :class:`OSError` (``ETIMEDOUT``), which the connector reports
    as a connection error, so the attempt fails and is retried like any outage."""

    def __init__(self, timeout: float, inner: aiohttp.abc.AbstractResolver | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"DNS timeout must be > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._inner = inner if inner is not None else _PoolResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._inner.resolve(host, port, family)
        except TimeoutError:
            raise OSError(
                errno.ETIMEDOUT, f"DNS lookup of {host!r} timed out after {self.timeout:g} s"
            ) from None

    async def close(self) -> None:
        await self._inner.close()


def validate_resource(resource: str) -> str:
    """Return ``resource`` if it is a safe path below ``/agent/{node}/``
    (segments of ``[A-Za-z0-9_-]`` joined by ``/``), else raise ValueError, so a
    resource name can never climb out of the node's namespace."""
    if not isinstance(resource, str) or not _RESOURCE.fullmatch(resource):
        raise ValueError(f"invalid control-plane resource {resource!r}")
    return resource


def default_user_agent() -> str:
    """``moenet-agent/<version> (+python aiohttp/<version>)``."""
    return f"moenet-agent/{__version__} (+python aiohttp/{aiohttp.__version__})"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP
    date, relative to the wall-clock ``now``); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


#: The path prefix the Go agent's control plane serves its agent API under.
GO_CP_PREFIX = "/api/v1"


def missing_prefix_hint(base_url: str) -> str | None:
    """The hint added to a 404 on an agent path when ``base_url`` lacks
    :data:`GO_CP_PREFIX` (the Go agent appended it itself; we call
    ``<url>/agent/...``), or None when the URL has it."""
    base = base_url.rstrip("/")
    try:
        path = yarl.URL(base).path
    except (TypeError, ValueError):
        path = ""
    if GO_CP_PREFIX in path:
        return None
    return (
        f"(the Go agent's CP serves {GO_CP_PREFIX}/agent/...; set controlPlane.url to {base}{GO_CP_PREFIX}?)"
    )


def _excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def _unwrap(payload: Any, status: int | None) -> Any:
    """Return the envelope's ``data``, or the bare payload when it is not an
    envelope; raise on a non-zero envelope code (an error is never empty data)."""
    if (
        isinstance(payload, dict)
        and "code" in payload
        and isinstance(payload["code"], int)
        and not isinstance(payload["code"], bool)
        and ("data" in payload or "message" in payload)
    ):
        code: int = payload["code"]
        if code != 0:
            message = payload.get("message")
            text = _clip(str(message)) if message not in (None, "") else f"error code {code}"
            raise ControlPlaneRejected(text, status=status, code=code)
        return payload.get("data")
    return payload


class EncodedJson(Mapping[str, Any]):
    """A JSON object body already encoded: :meth:`ControlPlane.send` posts these
    bytes as they are.

    A body of 1 000 sessions built as dicts and encoded at the end is a million
    small objects alive at once (several MB, and arenas left fragmented); one
    encoded a session at a time never is. Read as a mapping (a fake CP, a test,
    a third-party source that does not know this class) it decodes itself, once.
    """

    __slots__ = ("_decoded", "data")

    def __init__(self, data: bytes) -> None:
        if not data.startswith(b"{"):
            raise ValueError("an encoded CP body must be a JSON object")
        self.data = data
        self._decoded: dict[str, Any] | None = None

    def _doc(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = json.loads(self.data)
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._doc()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc())

    def __len__(self) -> int:
        return len(self._doc())

    def __repr__(self) -> str:
        return f"EncodedJson({len(self.data)} bytes)"


class _Unchanged:
    """The type of :data:`UNCHANGED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()
"""What :meth:`ControlPlane.fetch_digest` returns in place of an answer whose
digest is the caller's ``known`` one: the answer was not decoded."""


def encode_body(body: Mapping[str, Any]) -> bytes:
    """``body`` as the compact JSON a send posts (an :class:`EncodedJson` as is)."""
    if isinstance(body, EncodedJson):
        return body.data
    return json.dumps(body, separators=(",", ":")).encode()


class _Transient(Exception):
    """One attempt found the CP unavailable (network error, timeout); it may be retried."""


def answer_digest(value: Any) -> bytes:
    """A digest of a decoded answer as canonical JSON (16 bytes)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _digest(text.encode())


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _Fetched(NamedTuple):
    value: Any
    digest: bytes
    """Of the raw answer body."""


@attrs.frozen
class _Answer:
    """What one attempt got back: enough of the response to judge it."""

    status: int
    body: bytes
    retry_after: str | None = None
    location: str | None = None
    oversize: str | None = None
    """Why the body was cut off at the size cap (``body`` is then partial), or None."""


class _Refused(Exception):
    """The breaker refused a call before any request was made."""

    def __init__(self, error: CircuitOpenError) -> None:
        super().__init__(str(error))
        self.error = error


class HttpControlPlane(ControlPlane):
    """The real CP over HTTP, with retries and a circuit breaker.

    Each *attempt* is one breaker admission, so the breaker sees every failed
    attempt (one call whose four attempts all fail counts four failures) and a
    breaker that opens half-way through a call stops its remaining retries.
    A refused admission before any request ends the call with
    :class:`CircuitOpenError` (metric result ``breaker_open``); a refusal after
    failed attempts raises :class:`CircuitOpenError` carrying the last reason
    (result ``unavailable``, since requests were made).

    Backoff waits run on ``clock`` (tests drive them by hand); the per-attempt
    deadline ``request_timeout`` is real time, since it bounds real I/O.
    Redirects are not followed (a 3xx is a rejection naming the target), so the
    bearer token is only ever sent to ``base_url``.

    Limits on what the CP can make the agent do: a body larger than
    ``max_response_bytes`` is never read past the cap (a 2xx over the cap is
    :class:`ControlPlaneRejected`), JSON nested deeper than
    :data:`~moenet_core.jsonlimits.MAX_DEPTH` is :class:`ControlPlaneRejected`,
    a CP error message is cut to :data:`MESSAGE_MAX` characters, and each DNS
    lookup of the CP host is bounded by ``dns_timeout`` (``resolver``: the
    lookup to bound, for tests; default ``getaddrinfo`` on a small dedicated pool).
    """

    def __init__(
        self,
        *,
        base_url: str,
        node: str,
        token: str | None,
        clock: Clock,
        metrics: AgentMetrics | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        breaker: CircuitBreaker | None = None,
        request_timeout: float = 15.0,
        user_agent: str | None = None,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        dns_timeout: float | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        try:
            parsed = yarl.URL(base)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid control-plane URL {base_url!r}: {exc}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"control-plane URL must be http(s)://host[/prefix], got {base_url!r}")
        if not node:
            raise ValueError("node name must not be empty")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout!r}")
        if isinstance(max_response_bytes, bool) or not max_response_bytes > 0:
            raise ValueError(f"max_response_bytes must be > 0, got {max_response_bytes!r}")
        if dns_timeout is None:
            dns_timeout = min(DEFAULT_DNS_TIMEOUT, float(request_timeout))
        self.node = node
        self.max_response_bytes = int(max_response_bytes)
        self._resolver = BoundedResolver(dns_timeout, resolver)
        self._base = str(parsed)
        self._token = token
        self._clock = clock
        self._metrics = metrics
        self._retry = retry
        self._request_timeout = float(request_timeout)
        self._user_agent = user_agent or default_user_agent()
        self._session = session
        self._owns_session = session is None
        self._rng = rng if rng is not None else random.Random()
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        if metrics is not None:
            self.breaker.subscribe(self._on_breaker_change)
            self._on_breaker_change(self.breaker.state)

    def __repr__(self) -> str:  # never shows the token
        return f"<HttpControlPlane {self._base} node={self.node!r} breaker={self.breaker.state}>"

    @property
    def breaker_state(self) -> str:
        return self.breaker.state

    def url_for(self, resource: str) -> str:
        """The full URL of ``resource`` for this node (node name percent-escaped)."""
        validate_resource(resource)
        return f"{self._base}/agent/{quote(self.node, safe='')}/{resource}"

    async def fetch(self, resource: str) -> Any:
        return (await self._call("GET", resource, None)).value

    async def fetch_digest(self, resource: str, *, known: bytes | None = None) -> tuple[Any, bytes]:
        """The answer and a digest of its body bytes (cheaper than re-encoding it);
        :data:`UNCHANGED` for a body whose digest is ``known``, not decoded."""
        got = await self._call("GET", resource, None, known=known)
        return got.value, got.digest

    async def send(self, resource: str, body: Mapping[str, Any]) -> Any:
        return (await self._call("POST", resource, body)).value

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    # -- internals --------------------------------------------------------

    def _on_breaker_change(self, state: str) -> None:
        if self._metrics is not None:
            self._metrics.breaker_state.set(BREAKER_STATE_VALUES[state])

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp wants a running loop.
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(resolver=self._resolver)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    def _headers(self, method: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if method == "POST":
            headers["Content-Type"] = "application/json"
        return headers

    def _count(self, resource: str, method: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.cp_requests.labels(resource=resource, method=method, result=result).inc()

    async def _call(
        self, method: str, resource: str, body: Mapping[str, Any] | None, *, known: bytes | None = None
    ) -> _Fetched:
        url = yarl.URL(self.url_for(resource), encoded=True)
        data = None if body is None else encode_body(body)
        log = logger.bind(resource=resource, method=method)
        started = self._clock.monotonic()
        result = "unavailable"
        try:
            value = await self._attempts(method, resource, url, data, log, known)
        except _Refused as refused:
            result = "breaker_open"
            raise refused.error from None
        except ControlPlaneRejected:
            result = "rejected"
            raise
        except ControlPlaneUnavailable:
            result = "unavailable"
            raise
        except BaseException:
            result = ""  # cancelled or a bug: not a CP outcome
            raise
        else:
            result = "ok"
            return value
        finally:
            if result:
                self._count(resource, method, result)
                if result != "breaker_open" and self._metrics is not None:
                    self._metrics.cp_duration.labels(resource=resource).observe(
                        max(0.0, self._clock.monotonic() - started)
                    )

    async def _attempts(
        self,
        method: str,
        resource: str,
        url: yarl.URL,
        data: bytes | None,
        log: Logger,
        known: bytes | None = None,
    ) -> _Fetched:
        policy = self._retry
        last_reason = ""
        for attempt in range(policy.max_attempts):
            try:
                ticket = self.breaker.before_call()
            except CircuitOpenError as exc:
                if attempt == 0:
                    log.debug("control plane {} {} refused: {}", method, resource, exc)
                    raise _Refused(exc) from None
                raise CircuitOpenError(
                    f"{method} {resource}: circuit breaker opened after {attempt} failed "
                    f"attempt(s); last error: {last_reason}"
                ) from None
            try:
                answer = await self._attempt(method, url, data)
            except _Transient as exc:
                self.breaker.record_failure(ticket)
                last_reason, server_wait = str(exc), None
            except BaseException:
                self.breaker.release(ticket)
                raise
            else:
                status = answer.status
                if 500 <= status <= 599 or status == 429:
                    self.breaker.record_failure(ticket)
                    last_reason = f"HTTP {status}"
                    excerpt = _excerpt(answer.body)
                    if excerpt:
                        last_reason += f": {excerpt}"
                    server_wait = None
                    if status in (429, 503):
                        server_wait = parse_retry_after(answer.retry_after, self._clock.time())
                else:
                    # The CP answered: whatever the content (even too much of it), it is up.
                    self.breaker.record_success(ticket)
                    return self._interpret(method, resource, answer, log, known)

            if attempt + 1 >= policy.max_attempts:
                break
            if self.breaker.state == "open":
                raise CircuitOpenError(
                    f"{method} {resource}: circuit breaker opened after {attempt + 1} failed "
                    f"attempt(s); last error: {last_reason}"
                )
            wait = policy.delay(attempt, self._rng)
            if server_wait is not None:
                wait = max(wait, min(server_wait, RETRY_AFTER_CAP))
            log.warning(
                "control plane {} {} failed ({}); retry {}/{} in {:.1f}s",
                method,
                resource,
                last_reason,
                attempt + 1,
                policy.max_retries,
                wait,
            )
            if self._metrics is not None:
                self._metrics.cp_retries.labels(resource=resource).inc()
            await self._clock.sleep(wait)

        attempts = policy.max_attempts
        log.warning(
            "control plane {} {} unavailable after {} attempt(s): {}", method, resource, attempts, last_reason
        )
        raise ControlPlaneUnavailable(
            f"{method} {resource}: control plane unavailable after {attempts} attempt(s): {last_reason}"
        )

    def _interpret(
        self, method: str, resource: str, answer: _Answer, log: Logger, known: bytes | None = None
    ) -> _Fetched:
        status, payload = answer.status, answer.body
        if answer.oversize is not None:
            log.warning("control plane {} {} rejected: {}", method, resource, answer.oversize)
            raise ControlPlaneRejected(
                f"{method} {resource}: HTTP {status}: {answer.oversize}", status=status
            )
        if 200 <= status <= 299:
            if not payload.strip():
                log.debug("control plane {} {} -> {} (empty)", method, resource, status)
                return _Fetched(None, _digest(payload))
            digest = _digest(payload)
            if digest == known:
                log.debug("control plane {} {} -> {} (unchanged)", method, resource, status)
                return _Fetched(UNCHANGED, digest)
            try:
                decoded = json_loads(payload)
            except ValueError as exc:
                why = str(exc) if isinstance(exc, JSONLimitError) else "not JSON"
                raise ControlPlaneRejected(
                    f"unparseable response to {method} {resource} (HTTP {status}, {why}): "
                    f"{_excerpt(payload)}",
                    status=status,
                ) from None
            log.debug("control plane {} {} -> {}", method, resource, status)
            return _Fetched(_unwrap(decoded, status), digest)
        detail = _excerpt(payload)
        if 300 <= status <= 399 and answer.location:
            # Redirects are not followed: the bearer token must not travel to
            # another URL. The operator fixes controlPlane.url instead.
            detail = f"redirected to {answer.location} (not followed; fix the control-plane URL)"
        code: int | None = None
        try:
            decoded = json_loads(payload) if payload.strip() else None
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            if isinstance(decoded.get("message"), str) and decoded["message"]:
                detail = _clip(decoded["message"])
            raw_code = decoded.get("code")
            if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                code = raw_code
        text = f"{method} {resource}: HTTP {status}"
        text = f"{text}: {detail}" if detail else text
        if status == 404 and (hint := missing_prefix_hint(self._base)):
            text = f"{text} {hint}"
        log.warning("control plane {} {} rejected: {}", method, resource, text)
        raise ControlPlaneRejected(text, status=status, code=code)

    async def _attempt(self, method: str, url: yarl.URL, data: bytes | None) -> _Answer:
        """One request, bounded by ``request_timeout`` of real time.

        The deadline is real time on purpose: it bounds real network I/O,
        which does not follow a test clock. (Backoff waits do use the clock.)
        Returns the answer or raises :class:`_Transient`.
        """
        try:
            async with asyncio.timeout(self._request_timeout):
                return await self._request(method, url, data)
        except TimeoutError:
            raise _Transient(f"timed out after {self._request_timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Transient(_describe(exc)) from exc

    async def _request(self, method: str, url: yarl.URL, data: bytes | None) -> _Answer:
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=self._request_timeout)
        async with session.request(
            method, url, data=data, headers=self._headers(method), timeout=timeout, allow_redirects=False
        ) as resp:
            payload, oversize = await self._read_capped(resp)
            return _Answer(
                status=resp.status,
                body=payload,
                retry_after=resp.headers.get("Retry-After"),
                location=resp.headers.get("Location"),
                oversize=oversize,
            )

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, str | None]:
        """The body, read no further than :attr:`max_response_bytes` (after
        decompression); with the reason when the cap cut it off (the connection
        is then closed, the rest never read)."""
        cap = self.max_response_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            resp.close()
            return b"", f"response too large: Content-Length {declared} exceeds the {cap}-byte cap"
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > cap:
                resp.close()
                return b"".join(chunks), f"response too large: more than the {cap}-byte cap"
            chunks.append(chunk)
        return b"".join(chunks), None


def _describe(exc: BaseException) -> str:
    """A one-line reason for a transport error (never includes headers)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class FileControlPlane(ControlPlane):
    """Desired state from a local JSON file, for nodes without a CP.

    The file is an object keyed by resource (``"config"``, ``"sessions"``,
    ``"mesh"``, ``"bird-config"``...), each value what the CP's ``data`` would
    be. It is re-read on every :meth:`fetch`, so an operator's edit takes effect
    on the next sync. A missing file, invalid JSON or a missing resource is an
    error, never empty data (empty data would tell reconcilers to remove
    everything).

    :meth:`send` appends each body to the state file ``sent-<resource>.jsonl``
    (``/`` → ``_``; one JSON object a line) and logs it at info. At
    :data:`SENT_MAX_BYTES` the file becomes ``sent-<resource>.jsonl.1`` (the one
    before is dropped): the log is never read back, so a 1 MB report of 1 000
    sessions every minute costs a write, not a decode of every earlier body.
    """

    def __init__(
        self, *, path: str | os.PathLike[str], node: str, state: StateStore, clock: Clock | None = None
    ) -> None:
        self.node = node
        self.path = Path(path)
        self._state = state
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<FileControlPlane {self.path} node={self.node!r}>"

    @property
    def breaker_state(self) -> str:
        return "closed"

    @staticmethod
    def sent_name(resource: str) -> str:
        """The state file holding the bodies sent to ``resource``."""
        return f"sent-{validate_resource(resource).replace('/', '_')}.jsonl"

    async def fetch(self, resource: str) -> Any:
        return (await self.fetch_digest(resource))[0]

    async def fetch_digest(self, resource: str, *, known: bytes | None = None) -> tuple[Any, bytes]:
        """The resource and a digest of the whole file with the resource's name:
        an unchanged file is an unchanged answer (another resource changing only
        costs a parse); :data:`UNCHANGED`, the file not decoded, when it is ``known``."""
        validate_resource(resource)
        raw = self._read()
        digest = _digest(resource.encode() + b"\0" + raw)
        if digest == known:
            return UNCHANGED, digest
        document = self._decode(raw)
        if resource not in document:
            raise ControlPlaneRejected(f"resource '{resource}' not in {self.path}")
        return document[resource], digest

    async def send(self, resource: str, body: Mapping[str, Any]) -> Any:
        name = self.sent_name(resource)
        if isinstance(body, EncodedJson):
            data = body.data
        else:  # TypeError early
            data = json.dumps(dict(body), separators=(",", ":"), sort_keys=True).encode()
        # {"body", "resource", "time"} in key order. The body is written as it is, not
        # copied into a line: a metric report is 1 MB at 1 000 sessions, and text,
        # line and its bytes were three more copies of it every minute.
        tail = f',"resource":{json.dumps(resource)},"time":{json.dumps(self._clock.time())}}}\n'.encode()
        async with self._lock:
            try:
                await asyncio.to_thread(self._record, name, (b'{"body":', data, tail))
            except (OSError, StateError) as exc:
                raise ControlPlaneUnavailable(f"cannot record send to {resource}: {exc}") from exc
        shown = data[:_LOG_BODY_MAX].decode(errors="replace")
        if len(data) > _LOG_BODY_MAX:
            shown = shown[: _LOG_BODY_MAX - 3] + "..."
        logger.bind(resource=resource).info("control plane (file) send {}: {}", resource, shown)
        return None

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise ControlPlaneRejected(f"control-plane file {self.path} does not exist") from None
        except OSError as exc:
            raise ControlPlaneRejected(
                f"cannot read control-plane file {self.path}: {exc.strerror}"
            ) from None

    def _decode(self, raw: bytes) -> dict[str, Any]:
        try:
            document = json_loads(raw)
        except ValueError as exc:
            raise ControlPlaneRejected(f"control-plane file {self.path} is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ControlPlaneRejected(
                f"control-plane file {self.path} must hold a JSON object keyed by resource name"
            )
        return document

    def _record(self, name: str, pieces: Sequence[bytes]) -> None:
        """Append the line made of ``pieces`` to the send log ``name``, rotating it
        at :data:`SENT_MAX_BYTES`."""
        length = sum(len(p) for p in pieces)
        self._state.ensure()
        path = self._state.path(name)
        with contextlib.suppress(FileNotFoundError):
            # The JSON-list log of earlier versions was rewritten whole on every send.
            path.with_suffix(".json").unlink()
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + length > SENT_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
            size = 0
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if size and os.pread(fd, 1, size - 1) != b"\n":
                pieces = (b"\n", *pieces)  # a line torn by a crash stays on its own
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
