"""Read-only queries on BIRD's control socket, on a connection put in restricted mode.

The ``bird`` plugin is the one writer of BIRD's configuration and owns the
pooled client; these plugins only *read*, and must be unable to do anything
else even with a bug in the grammar. So each query opens its own connection
and, before anything else, sends ``restrict``: BIRD then refuses every command
that is not a read (``configure``, ``enable``, ``down`` ...) on that
connection. The answer to ``restrict`` must say ``Access restricted`` or the
query is not sent (bird-lg-go's proxy does the same).

The command sent is always one the caller rendered itself from parsed tokens
(:mod:`.grammar`, or a fixed ``show route for <address> all``), never client
text. The reply is turned into plain text the way bird-lg-go's proxy does it:
each ``NNNN-``/``NNNN `` line without its code, continuation lines (a leading
space) without that space, empty code lines dropped; the reply ends at a
``0xxx``/``8xxx``/``9xxx`` line. Bounded: ``limit`` bytes of text (then the
connection is closed, which stops BIRD's output) and ``timeout`` seconds for
the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import attrs

__all__ = ["BirdAnswer", "BirdQueryError", "query"]

DEFAULT_SOCKET = "/var/run/bird/bird.ctl"
_CODE = re.compile(rb"^(\d{4})([ -])")
_MAX_LINE = 64 * 1024


class BirdQueryError(Exception):
    """BIRD could not be asked: no socket, no greeting, restrict refused, timeout
    before any output. The message is safe to show to a client."""


@attrs.frozen(kw_only=True)
class BirdAnswer:
    text: str
    """The reply as plain text (codes stripped), each line ending in ``\\n``."""
    error: bool = False
    """The reply ended with an error code (``8xxx``/``9xxx``): BIRD refused the command."""
    truncated: bool = False
    timed_out: bool = False
    duration: float = 0.0


async def _line(reader: asyncio.StreamReader, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return await asyncio.wait_for(reader.readline(), left)


async def query(command: str, *, socket_path: str, timeout: float, limit: int) -> BirdAnswer:
    """Send ``command`` (already rendered; one line, printable) on a restricted
    connection and return the reply as text."""
    if "\n" in command or "\r" in command or not command.isprintable():
        raise ValueError("a BIRD command is one printable line")
    started = time.monotonic()
    deadline = started + timeout
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(socket_path, limit=_MAX_LINE), timeout
        )
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise BirdQueryError(f"cannot connect to BIRD's control socket: {reason}") from None
    out: list[str] = []
    size = 0
    error = truncated = timed_out = False
    try:
        try:
            greeting = await _line(reader, deadline)
            if not greeting.startswith(b"0001 "):
                raise BirdQueryError("BIRD did not greet on its control socket")
            writer.write(b"restrict\n")
            await writer.drain()
            answer = await _line(reader, deadline)
            if b"Access restricted" not in answer:
                raise BirdQueryError("could not verify that BIRD access was restricted")
            writer.write(command.encode("ascii") + b"\n")
            await writer.drain()
        except TimeoutError:
            raise BirdQueryError("BIRD did not answer in time") from None
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            raise BirdQueryError(f"BIRD's control socket failed: {exc}") from None
        while True:
            try:
                raw = await _line(reader, deadline)
            except TimeoutError:
                timed_out = True
                break
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                break  # connection lost or an absurd line: return what we have
            if not raw:
                break
            raw = raw.rstrip(b"\r\n")
            final = False
            m = _CODE.match(raw)
            if m:
                text = raw[5:]
                final = m.group(1)[:1] in b"089"
                error = m.group(1)[:1] in b"89"
            else:
                text = raw[1:]
            if text:
                piece = text.decode("utf-8", errors="replace") + "\n"
                if size + len(piece) > limit:
                    out.append(piece[: max(limit - size, 0)])
                    truncated = True
                    break
                out.append(piece)
                size += len(piece)
            if final:
                break
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    return BirdAnswer(
        text="".join(out),
        error=error and not truncated,
        truncated=truncated,
        timed_out=timed_out,
        duration=time.monotonic() - started,
    )
