"""Asyncio client for BIRD 3's control socket: a read pool and one coalescing writer.

Why it is shaped like this (``research/bird3.md`` §3-4, ``research/go-agent.md`` §6):

- **Every connection has its own reader task.** Replies are framed by
  :class:`~moenet_bird.protocol.ReplyAssembler`; ``+`` lines go to the
  ``on_async`` callback the moment they arrive (BIRD sends the configure-undo
  notice on an otherwise idle connection); a reply nobody asked for marks the
  connection broken instead of being handed to the next caller.
- **A connection is never reused after a timeout, a cancellation or a broken
  reply**: half a reply left in the stream would become the answer to the next
  command (the Go agent's pool desynchronised exactly like that).
- **Read commands share a small pool** (``pool_size`` idle connections kept,
  at most ``pool_size_max`` open, callers beyond that wait). A connection that
  turns out dead (BIRD restarted) is dropped with every other idle one, and the
  command is retried once on a fresh connection; if that fails too, BIRD is
  down: :class:`~moenet_bird.protocol.BirdUnavailable`.
- **Every reconfiguration goes through one serialised writer** on its own
  connection: a ``configure`` queued behind another crashed BIRD 3.3.2, so the
  writer waits for ``configure status`` to read ``0003`` before it sends one, and
  after a ``0004 Reconfiguration in progress`` it polls until BIRD has really
  finished. Callers asking for the same configure while an earlier request is
  still waiting its turn share that one run and its result. ``configure undo``
  is only sent while BIRD is idle (a queued undo aborts BIRD 3.3.2 and 3.4.0),
  and no configure starts while an undo timer is armed.

The module knows nothing about the agent's configuration: it takes a socket
path and pool sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

import attrs
from loguru import logger

from .protocol import (
    AsyncMessage,
    BirdClientError,
    BirdError,
    BirdProtocol,
    BirdProtocolError,
    BirdStatus,
    BirdTimeout,
    BirdUnavailable,
    BirdUndoPending,
    ConfigStatus,
    ConfigureResult,
    LineSink,
    ProtocolsParser,
    ReconfigState,
    Reply,
    ReplyAssembler,
    encode_command,
    parse_config_status,
    parse_configure,
    parse_status,
    quote,
)

__all__ = ["DEFAULT_SOCKET", "BirdClient", "PoolStats"]

#: BIRD's reply code when a ``show protocols "pattern"`` matches nothing.
NO_MATCHING_PROTOCOLS = 8003

#: BIRD's default control socket on Debian.
DEFAULT_SOCKET = "/var/run/bird/bird.ctl"

AsyncHandler = Callable[[str], None]

#: Commands that must not run on a pooled connection: reconfigurations belong to
#: the writer, and the others change the session (``restrict``, ``timeformat``)
#: or stop the daemon.
_WRITER_ONLY = {"configure", "restrict", "timeformat", "down", "graceful"}


class _ConnectionLost(Exception):
    """Internal: the connection broke; ``sent`` tells whether BIRD may have seen the command."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


def _log_async(text: str) -> None:
    logger.warning("BIRD says: {}", text)


async def _unix_connect(path: str, timeout: float) -> socket.socket:
    """A connected socket to ``path``.

    BIRD listens with a backlog of 8 (``ss -xl``) and accepts one connection per
    loop turn. A non-blocking AF_UNIX connect to a full backlog fails with EAGAIN
    instead of completing later; asyncio's ``open_unix_connection`` then waits for
    writability, takes the still unconnected socket for connected, and the first
    read fails with EINVAL. So connect here and retry EAGAIN until ``timeout``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.002
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if loop.time() + delay > deadline:
                raise BirdUnavailable(f"BIRD at {path} accepted no connection within {timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise BirdUnavailable(f"cannot connect to BIRD at {path}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class _Connection:
    """One control-socket session and the task that reads it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_async: AsyncHandler,
        name: str,
        on_dead: Callable[[_Connection], None] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_async = on_async
        self._on_dead = on_dead
        self._asm = ReplyAssembler()
        self.name = name
        self.banner = ""
        self.closed_reason: str | None = None
        # The greeting is the answer to "connect": wait for it like for any reply.
        self._waiter: asyncio.Future[Reply] | None = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop(), name=f"bird-reader-{name}")

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        timeout: float,
        on_async: AsyncHandler,
        name: str,
        time_format: str | None,
        on_dead: Callable[[_Connection], None] | None = None,
    ) -> _Connection:
        sock = await _unix_connect(path, timeout)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        conn = cls(reader, writer, on_async, name, on_dead)
        try:
            assert conn._waiter is not None
            try:
                hello = await conn._wait(conn._waiter, timeout, "the greeting", sent=False)
            finally:
                conn._waiter = None
            if hello.code != 1:
                raise BirdProtocolError(f"unexpected greeting from {path}: {hello}")
            conn.banner = hello.lines[0].text
            if time_format is not None:
                # Per session: makes 'Since' unambiguous (epoch seconds with "%s").
                cmd = f"timeformat {quote(time_format)}"
                (await conn.request(encode_command(cmd), timeout)).raise_for_error(cmd)
        except _ConnectionLost as exc:
            conn.close(str(exc))
            raise BirdUnavailable(f"BIRD at {path} closed the connection: {exc}") from None
        except BaseException:
            conn.close("failed to start")
            raise
        return conn

    @property
    def usable(self) -> bool:
        return self.closed_reason is None

    async def request(self, data: bytes, timeout: float, sink: LineSink | None = None) -> Reply:
        """Send one command line and wait for its reply. Any failure closes the connection.
        ``sink`` sees the reply's lines as they arrive (:attr:`ReplyAssembler.sink`)."""
        if self.closed_reason is not None:
            raise _ConnectionLost(self.closed_reason, sent=False)
        if self._waiter is not None:
            raise RuntimeError("BIRD connection used by two callers at once")
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        self._asm.sink = sink
        try:
            self._writer.write(data)
            return await self._wait(fut, timeout, repr(data.decode().strip()), sent=True)
        finally:
            self._waiter = None
            self._asm.sink = None

    async def _wait(self, fut: asyncio.Future[Reply], timeout: float, what: str, sent: bool) -> Reply:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                return await fut
        except TimeoutError:
            fut.cancel()
            self.close("timed out")
            raise BirdTimeout(f"BIRD did not answer {what} within {timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            fut.cancel()
            self.close(str(exc))
            raise _ConnectionLost(str(exc), sent) from None
        except BaseException:
            # Cancelled (or worse) half-way through a reply: the stream is unusable.
            fut.cancel()
            self.close("abandoned during a reply")
            raise

    async def _read_loop(self) -> None:
        exc: BaseException
        try:
            while True:
                self._deliver(await self._reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError:
            exc = _ConnectionLost("BIRD closed the connection", sent=True)
        except asyncio.LimitOverrunError:
            exc = BirdProtocolError("reply line too long")
        except (ConnectionError, OSError) as err:
            exc = _ConnectionLost(str(err) or type(err).__name__, sent=True)
        except BirdProtocolError as err:
            logger.warning("BIRD connection {} dropped: {}", self.name, err)
            exc = err
        self._fail(exc)

    def _deliver(self, raw: bytes) -> None:
        """One line in; a finished reply goes to the waiting request. A method of its
        own so that no local of the reader loop keeps the last reply (thousands of
        lines at 1 000 sessions) alive while the loop waits for the next line."""
        out = self._asm.feed(raw[:-1].decode("utf-8", "replace"))
        if out is None:
            return
        if isinstance(out, AsyncMessage):
            self._dispatch_async(out.text)
            return
        fut = self._waiter
        if fut is None or fut.done():
            raise BirdProtocolError(f"unsolicited reply from BIRD: {out}")
        fut.set_result(out)

    def _dispatch_async(self, text: str) -> None:
        try:
            self._on_async(text)
        except Exception:
            logger.opt(exception=True).error("BIRD async message handler failed")

    def _fail(self, exc: BaseException) -> None:
        """The reader saw the end (EOF, reset, bad framing): fail the pending request
        and tell the owner, so an idle connection leaves the pool right away."""
        if self.closed_reason is None:
            self.closed_reason = str(exc)
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        self._writer.close()
        if self._on_dead is not None:
            self._on_dead(self)

    def close(self, reason: str = "closed") -> None:
        """Close now (idempotent); a pending request fails with :class:`_ConnectionLost`."""
        if self.closed_reason is None:
            self.closed_reason = reason
        if self._task is not asyncio.current_task():
            self._task.cancel()
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_exception(_ConnectionLost(reason, sent=True))
        self._writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


@attrs.frozen(kw_only=True)
class PoolStats:
    """The read pool's counters (the writer's connection is not included)."""

    open: int
    """Pooled connections open now (idle + in use)."""
    idle: int
    high_water: int
    """Most pooled connections ever open at once; never above ``pool_size_max``."""
    connects: int
    """Connections opened in total (pool and writer)."""
    discarded: int
    """Connections thrown away because they broke, timed out or were abandoned."""
    coalesced: int
    """Reconfiguration requests that joined a run another caller had already asked for."""


class BirdClient:
    """Talks to one BIRD daemon over its control socket.

    Reads (:meth:`command`, :meth:`status`, :meth:`protocols`, :meth:`check`,
    :meth:`configure_status`) use the pool and run concurrently; reconfigurations
    (:meth:`configure`, :meth:`confirm`, :meth:`undo`) run one at a time and only
    while BIRD is idle. Use as ``async with BirdClient(path) as bird:`` or call
    :meth:`close`. Errors: :class:`~moenet_bird.protocol.BirdError` (BIRD said no;
    :class:`~moenet_bird.protocol.BirdConfigError` for a refused configuration),
    :class:`BirdUnavailable`, :class:`BirdTimeout`, :class:`BirdProtocolError`.
    """

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        pool_size: int = 5,
        pool_size_max: int = 10,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reconfigure_timeout: float = 120.0,
        poll_interval: float = 0.05,
        time_format: str | None = "%s",
        on_async: AsyncHandler | None = None,
    ) -> None:
        if not 1 <= pool_size <= pool_size_max:
            raise ValueError(f"need 1 <= pool_size ({pool_size}) <= pool_size_max ({pool_size_max})")
        if time_format is not None:
            quote(time_format)
        self.socket_path = socket_path
        self.pool_size = pool_size
        self.pool_size_max = pool_size_max
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        self.reconfigure_timeout = reconfigure_timeout
        self.poll_interval = poll_interval
        self.time_format = time_format
        self.on_async: AsyncHandler = on_async or _log_async
        self.banner: str | None = None
        """BIRD's greeting on the last connection opened (``BIRD 3.3.2 ready.``)."""

        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(pool_size_max)
        self._open = 0
        self._waiting = 0
        self._high_water = 0
        self._connects = 0
        self._discarded = 0
        self._n_coalesced = 0
        self._serial = 0
        self._closed = False

        self._writer: _Connection | None = None
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Task[ConfigureResult]] = {}

    # ---------------------------------------------------------------- life

    async def __aenter__(self) -> BirdClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; later calls raise :class:`BirdUnavailable`."""
        self._closed = True
        for task in list(self._pending.values()):
            task.cancel()
        conns = list(self._idle)
        self._idle.clear()
        if self._writer is not None:
            conns.append(self._writer)
            self._writer = None
        for conn in conns:
            await conn.aclose()

    @property
    def stats(self) -> PoolStats:
        return PoolStats(
            open=self._open,
            idle=len(self._idle),
            high_water=self._high_water,
            connects=self._connects,
            discarded=self._discarded,
            coalesced=self._n_coalesced,
        )

    async def warm_up(self) -> int:
        """Open ``pool_size`` connections ahead of use (otherwise they open on demand).
        Returns how many are idle; raises :class:`BirdUnavailable` if BIRD is down."""
        held: list[_Connection] = []
        try:
            while len(held) + len(self._idle) < self.pool_size:
                conn, _ = await self._acquire()
                held.append(conn)
        finally:
            for conn in held:
                self._release(conn, healthy=True)
        return len(self._idle)

    async def _connect(self) -> _Connection:
        if self._closed:
            raise BirdUnavailable("BIRD client is closed")
        self._serial += 1
        conn = await _Connection.open(
            self.socket_path,
            timeout=self.connect_timeout,
            on_async=self.on_async,
            name=str(self._serial),
            time_format=self.time_format,
            on_dead=self._dead_while_idle,
        )
        self._connects += 1
        self.banner = conn.banner
        return conn

    # ---------------------------------------------------------------- pool

    async def _acquire(self) -> tuple[_Connection, bool]:
        """A pooled connection and whether it was opened just now."""
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            while self._idle:
                conn = self._idle.pop()  # most recently used first: likeliest to be alive
                if conn.usable:
                    return conn, False
                self._drop(conn)
            conn = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        self._open += 1
        self._high_water = max(self._high_water, self._open)
        return conn, True

    def _release(self, conn: _Connection, healthy: bool) -> None:
        try:
            if healthy and conn.usable and not self._closed:
                self._idle.append(conn)
                # Keep connections beyond pool_size only while callers are queueing for one,
                # so a burst does not close and reopen connections.
                while len(self._idle) > self.pool_size and not self._waiting:
                    self._drop(self._idle.popleft(), broken=False)
            else:
                self._drop(conn, broken=not healthy or not conn.usable)
        finally:
            self._slots.release()

    def _drop(self, conn: _Connection, broken: bool = True) -> None:
        conn.close("dropped from the pool")
        self._open -= 1
        if broken:
            self._discarded += 1

    def _dead_while_idle(self, conn: _Connection) -> None:
        # In use: the caller's request fails and _release drops it. Idle: drop it now.
        if conn in self._idle:
            self._idle.remove(conn)
            self._open -= 1
            self._discarded += 1

    def _drop_idle(self) -> None:
        """One idle connection was dead: BIRD went away, so the others are too."""
        while self._idle:
            self._drop(self._idle.pop())

    async def _pooled(
        self, data: bytes, timeout: float | None, sink: Callable[[], LineSink] | None = None
    ) -> Reply:
        """One request on a pooled connection, retried once on a fresh connection
        when a reused one turns out dead. ``sink`` makes a new line sink for each
        attempt, so a retry never sees half of the first attempt's lines."""
        limit = timeout if timeout is not None else self.command_timeout
        for attempt in (1, 2):
            conn, fresh = await self._acquire()
            healthy = False
            try:
                reply = await conn.request(data, limit, sink() if sink is not None else None)
                healthy = True
                return reply
            except _ConnectionLost as exc:
                if fresh or attempt == 2:
                    raise BirdUnavailable(
                        f"lost the connection to BIRD at {self.socket_path}: {exc}"
                    ) from None
                logger.debug("BIRD connection {} was dead ({}); reconnecting", conn.name, exc)
                self._drop_idle()
            finally:
                self._release(conn, healthy)
        raise AssertionError("unreachable")

    # --------------------------------------------------------------- reads

    async def command(
        self,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        sink: Callable[[], LineSink] | None = None,
    ) -> Reply:
        """Run one command on a pooled connection. With ``check`` (default) a reply
        holding any 8xxx/9xxx line raises :class:`~moenet_bird.protocol.BirdError`.
        ``sink`` makes a line sink for each attempt: the lines it takes are parsed as
        they arrive and left out of the reply (:attr:`ReplyAssembler.sink`)."""
        data = encode_command(command)
        first = command.split(None, 1)[0].lower()
        if first in _WRITER_ONLY:
            raise ValueError(f"{first!r} is not allowed on a pooled connection: use the client's methods")
        reply = await self._pooled(data, timeout, sink)
        return reply.raise_for_error(command) if check else reply

    async def status(self) -> BirdStatus:
        """``show status``."""
        return parse_status(await self.command("show status"))

    async def configure_status(self) -> ConfigStatus:
        """``configure status``: idle or reconfiguring, and a pending undo timer."""
        return parse_config_status(await self._pooled(encode_command("configure status"), None))

    async def protocols(self, pattern: str | None = None, *, lean: bool = False) -> list[BirdProtocol]:
        """``show protocols all [\"pattern\"]``, parsed. A pattern that matches
        nothing raises :class:`~moenet_bird.protocol.BirdError` (8003). ``lean``:
        the typed fields only, plus the channels' route limits in their
        ``details`` (:data:`~moenet_bird.protocol.LEAN_DETAILS`)."""
        cmd = "show protocols all" + (f" {quote(pattern)}" if pattern is not None else "")
        parsers: list[ProtocolsParser] = []

        def fresh() -> ProtocolsParser:
            parsers.append(ProtocolsParser(lean=lean))
            return parsers[-1]

        # Parsed as the lines arrive: ~80 lines a session are never held at once.
        await self.command(cmd, sink=fresh)
        return parsers[-1].result()

    async def protocols_named(self, pattern: str) -> list[BirdProtocol]:
        """:meth:`protocols` of the names matching ``pattern`` (BIRD's shell-like
        match, e.g. ``"ibgp_*"``); none is an empty list, not an error. A task that
        watches a few protocols reads those, not every eBGP session of the node
        (at 1 000 sessions the whole read is ~80 000 lines to parse)."""
        try:
            return await self.protocols(pattern)
        except BirdError as exc:
            if exc.code == NO_MATCHING_PROTOCOLS:
                return []
            raise

    async def check(self, path: str | None = None, *, timeout: float | None = None) -> ConfigureResult:
        """``configure check [\"path\"]``: parse without applying. Returns code 20;
        a bad file raises :class:`~moenet_bird.protocol.BirdConfigError`. Warnings
        never come over the socket (run ``bird -p`` for those)."""
        cmd = "configure check" + (f" {quote(path)}" if path is not None else "")
        limit = timeout if timeout is not None else self.reconfigure_timeout
        return parse_configure(await self._pooled(encode_command(cmd), limit), cmd)

    # -------------------------------------------------------------- writer

    async def configure(
        self,
        path: str | None = None,
        *,
        soft: bool = False,
        undo_after: int | None = None,
        timeout: float | None = None,
    ) -> ConfigureResult:
        """Reconfigure from ``path`` (BIRD's own config file when None) and wait
        until BIRD has really finished.

        ``soft`` skips filter reloads; ``undo_after`` arms BIRD's automatic undo
        (``configure ... timeout N``) unless :meth:`confirm` comes first. ``timeout``
        bounds the whole call including the wait (default ``reconfigure_timeout``).
        A refused file raises :class:`~moenet_bird.protocol.BirdConfigError` and
        the running configuration stays. While an earlier ``undo_after`` is still
        unconfirmed it raises :class:`~moenet_bird.protocol.BirdUndoPending`: the
        timer firing during this reconfiguration would queue an undo, which aborts
        BIRD. Pick ``undo_after`` well above the time BIRD needs to apply the file.
        Concurrent calls with the same arguments that arrive before this one got its
        turn share its run and its result.
        """
        cmd = "configure" + (" soft" if soft else "") + (f" {quote(path)}" if path is not None else "")
        if undo_after is not None:
            if undo_after < 1:
                raise ValueError("undo_after must be at least 1 second")
            cmd += f" timeout {int(undo_after)}"
        encode_command(cmd)
        return await self._coalesced(cmd, lambda: self._reconfigure(cmd, timeout))

    async def confirm(self, *, timeout: float | None = None) -> ConfigureResult:
        """``configure confirm``: keep a configuration applied with ``undo_after``.
        Code 18 when confirmed, 19 when there was nothing to confirm (e.g. the undo
        timer had already expired and BIRD went back)."""
        return await self._coalesced("configure confirm", lambda: self._simple("configure confirm", timeout))

    async def undo(self, *, timeout: float | None = None) -> ConfigureResult:
        """``configure undo``: go back to the previous configuration (one level) and
        wait until that has finished. Code 19 when there is nothing to undo."""
        return await self._coalesced("configure undo", lambda: self._reconfigure("configure undo", timeout))

    async def _coalesced(self, key: str, work: Callable[[], Awaitable[ConfigureResult]]) -> ConfigureResult:
        if self._closed:
            raise BirdUnavailable("BIRD client is closed")
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._serialised(key, work), name=f"bird {key}")
            task.add_done_callback(_retrieve)
            self._pending[key] = task
        else:
            self._n_coalesced += 1
        # A cancelled caller must not cancel the run others are waiting for.
        return await asyncio.shield(task)

    async def _serialised(self, key: str, work: Callable[[], Awaitable[ConfigureResult]]) -> ConfigureResult:
        try:
            async with self._write_lock:
                # From now on the files may change under this run: later callers need a run of their own.
                if self._pending.get(key) is asyncio.current_task():
                    del self._pending[key]
                return await work()
        finally:
            if self._pending.get(key) is asyncio.current_task():
                del self._pending[key]

    async def _simple(self, cmd: str, timeout: float | None) -> ConfigureResult:
        limit = timeout if timeout is not None else self.command_timeout
        return parse_configure(await self._write(cmd, limit), cmd)

    async def _reconfigure(self, cmd: str, timeout: float | None) -> ConfigureResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self.reconfigure_timeout)
        # Never send a configure while BIRD is still busy (our own earlier run, an automatic
        # undo, an operator's birdc): BIRD would queue it. A queued configure crashed
        # 3.3.2 in the lab; a queued undo aborts 3.3.2 and 3.4.0 every time.
        status = await self._wait_idle(deadline, cmd)
        if status.undo_in is not None and cmd != "configure undo":
            raise BirdUndoPending(
                f"not running {cmd!r}: an unconfirmed configuration is undone in {status.undo_in:g} s;"
                " confirm() or undo() first"
            )
        reply = await self._write(cmd, max(deadline - loop.time(), 0.001))
        result = parse_configure(reply, cmd)
        if result.code == ReconfigState.SHUTDOWN:
            raise BirdUnavailable(f"BIRD is shutting down and ignored {cmd!r}")
        if result.asynchronous:
            started = loop.time()
            await self._wait_idle(deadline, cmd)
            result = attrs.evolve(result, waited=loop.time() - started)
        logger.debug("BIRD {}: {:04d} {} (waited {:.3f} s)", cmd, result.code, result.message, result.waited)
        return result

    async def _wait_idle(self, deadline: float, cmd: str) -> ConfigStatus:
        """Poll ``configure status`` until it reads ``0003 Daemon is up and running``.

        That is BIRD's own signal that the previous reconfiguration has finished
        (``config_status()`` leaves CONF_PROGRESS only when every protocol has
        completed its restart/removal); ``show status`` ends in ``0013 Reconfiguration
        in progress`` for the same window."""
        loop = asyncio.get_running_loop()
        delay = self.poll_interval
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise BirdTimeout(f"BIRD is still reconfiguring; gave up waiting to run {cmd!r}")
            status = parse_config_status(await self._write("configure status", left))
            if status.idle:
                return status
            if status.state is ReconfigState.SHUTDOWN:
                raise BirdUnavailable(f"BIRD is shutting down; not running {cmd!r}")
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0)))
            delay = min(delay * 2, 1.0)

    async def _write(self, cmd: str, timeout: float) -> Reply:
        """One command on the writer's connection (the caller holds the write lock).

        A dead connection found before sending is replaced once; a connection lost
        after sending is an error, because BIRD may or may not have acted on it."""
        data = encode_command(cmd)
        for attempt in (1, 2):
            fresh = self._writer is None or not self._writer.usable
            if fresh:
                if self._writer is not None:
                    self._discarded += 1
                self._writer = None
                self._writer = await self._connect()
            conn = self._writer
            assert conn is not None
            try:
                return await conn.request(data, timeout)
            except _ConnectionLost as exc:
                if fresh or exc.sent or attempt == 2:
                    raise BirdUnavailable(
                        f"lost the connection to BIRD at {self.socket_path} during {cmd!r}"
                        f"{' (its outcome is unknown)' if exc.sent else ''}: {exc}"
                    ) from None
            finally:
                if not conn.usable:
                    self._writer = None
                    self._discarded += 1
        raise AssertionError("unreachable")


def _retrieve(task: asyncio.Task[ConfigureResult]) -> None:
    """Mark a writer task's exception as seen: its callers may all have been cancelled."""
    if not task.cancelled():
        exc = task.exception()
        if exc is not None and not isinstance(exc, BirdClientError):
            logger.opt(exception=exc).error("BIRD writer task failed")
