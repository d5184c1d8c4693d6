"""Logging setup: loguru for everything, JSON lines for machines, text for humans.

Why it looks like this:

- **One stream, one format.** The agent runs under systemd; journald and log
  shippers want one compact JSON object per line. Library logs that go through
  the stdlib :mod:`logging` module (aiohttp, asyncio, pyroute2) are routed into
  loguru by :class:`InterceptHandler` so they come out in the same format.
- **Sink functions, not** ``serialize=True``: loguru's own serialisation nests the
  whole record (file, process, thread, elapsed...) and is too verbose to read.
  The sinks build their output from the record without mutating it, because a
  change to ``record["extra"]`` would leak into every other sink (for example a
  test's capture sink).
- **Secrets never reach the output.** Extras whose *name* looks secret are always
  rendered as ``***``; values registered with :func:`add_secret` (the control-plane
  token, the API token) are replaced wherever they appear: message, extras and
  traceback text. Tracebacks are formatted by :mod:`traceback` (no variable values)
  and loguru's ``diagnose`` is off for the same reason.
- **No newline injection**: in JSON mode everything is escaped by the encoder; in
  text mode control characters in the message and in values are escaped, so a
  peer name with ``\\n`` in it cannot forge a log line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = [
    "InterceptHandler",
    "add_secret",
    "clear_secrets",
    "is_secret_key",
    "reset_logging",
    "setup_logging",
]

REDACTED = "***"

#: Every level ``logging.level`` accepts (loguru's), with the stdlib number the
#: bridge filters at: TRACE and SUCCESS have no stdlib name.
_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_FORMATS = ("auto", "json", "text")
# Secrets shorter than this are ignored: replacing every "abc" in every line
# would make the logs unreadable and protects nothing.
_MIN_SECRET_LEN = 6
# Compared against the key lower-cased with "_" and "-" removed, so that
# private_key, privateKey and private-key all match.
_SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "privatekey",
    "psk",
    "presharedkey",
    "authorization",
)
# Top-level JSON fields the sink writes itself; an extra with the same name is
# renamed so it cannot overwrite them.
_RESERVED = frozenset({"time", "level", "msg", "exc"})
# Extras shown as the "[plugin/task]" prefix in text mode instead of key=value.
_PREFIX_KEYS = ("plugin", "task")

_ANSI = {
    "TRACE": "\x1b[2m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[32m",
    "SUCCESS": "\x1b[32;1m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[31;1m",
}
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"

_lock = threading.Lock()
_secrets: set[str] = set()
# Rebuilt on every change and read without the lock: assigning a module global
# is atomic, so a sink running in another thread sees the old or the new one.
_secret_re: re.Pattern[str] | None = None
_handler_ids: list[int] = []
_default_removed = False


# ------------------------------------------------------------------ secrets


def add_secret(value: str | None) -> None:
    """Register a secret (a token, a key) to be replaced by ``***`` in all output.

    Call it as soon as the value is known (config load), before anything can log
    it. ``None``, empty and short values (< 6 characters) are ignored.
    """
    global _secret_re
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secret_re
    with _lock:
        _secrets.clear()
        _secret_re = None


def is_secret_key(key: str) -> bool:
    """True when an extra's *name* says its value is secret (``token``, ``psk``...)."""
    norm = key.lower().replace("_", "").replace("-", "")
    return any(part in norm for part in _SECRET_KEY_PARTS)


def _redact(text: str) -> str:
    pattern = _secret_re
    return pattern.sub(REDACTED, text) if pattern is not None else text


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable, redacted copy of ``value`` (``str()`` for the rest)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _redact(value)
    if isinstance(value, dict):
        return {str(k): REDACTED if is_secret_key(str(k)) else _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return _redact(str(value))


def _extras(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record["extra"].items():
        name = str(key)
        out[name] = REDACTED if is_secret_key(name) else _jsonable(value)
    return out


def _exception_text(record: Record) -> str | None:
    exc = record["exception"]
    if exc is None or exc.type is None:
        return None
    text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return _redact(text.rstrip("\n"))


# ------------------------------------------------------------------ sinks


def _utc_timestamp(when: dt.datetime) -> str:
    utc = when.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_json(record: Record) -> str:
    """One compact JSON object (no trailing newline) for ``record``."""
    line: dict[str, Any] = {
        "time": _utc_timestamp(record["time"]),
        "level": record["level"].name,
        "msg": _redact(record["message"]),
    }
    for key, value in _extras(record).items():
        line[f"extra.{key}" if key in _RESERVED else key] = value
    exc = _exception_text(record)
    if exc is not None:
        line["exc"] = exc
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


_BARE_VALUE = re.compile(r"^[^\s\"'=\x00-\x1f\x7f]+$")


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        # Quote anything that could be mistaken for the next key=value pair.
        return value if _BARE_VALUE.match(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def format_text(record: Record, *, colour: bool = False) -> str:
    """``HH:MM:SS.mmm LEVEL    [plugin/task] message key=value ...`` plus traceback lines."""
    extras = _extras(record)
    level = record["level"].name
    when = record["time"]
    stamp = when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
    prefix = "/".join(str(v) for k in _PREFIX_KEYS if (v := extras.pop(k, None)) not in (None, ""))
    parts: list[str] = []
    if colour:
        parts.append(f"{_DIM}{stamp}{_RESET} {_ANSI.get(level, '')}{level:<8}{_RESET}")
    else:
        parts.append(f"{stamp} {level:<8}")
    if prefix:
        parts.append(f"[{_escape_control(prefix)}]")
    parts.append(_escape_control(_redact(record["message"])))
    parts.extend(f"{_escape_control(k)}={_text_value(v)}" for k, v in extras.items())
    line = " ".join(parts)
    exc = _exception_text(record)
    if exc is not None:
        line += "\n" + exc
    return line


def _make_sink(stream: TextIO, render: Callable[[Record], str]) -> Callable[[Message], None]:
    def sink(message: Message) -> None:
        stream.write(render(message.record) + "\n")
        # Flush per line: under systemd a block-buffered stderr would hold logs
        # back for minutes, and a crash would lose them.
        stream.flush()

    return sink


def _empty_format(_record: Record) -> str:
    # The sinks render from the record; returning "" stops loguru formatting
    # the message (and the traceback) a second time for nothing.
    return ""


# ------------------------------------------------------------------ stdlib


class InterceptHandler(logging.Handler):
    """Send stdlib :mod:`logging` records to loguru (the recipe from loguru's docs).

    The stdlib logger's name is kept as the ``logger`` extra so a line from
    aiohttp or pyroute2 says where it came from.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            # Walk out of the logging module so loguru attributes the line to
            # the code that called logging, not to this handler.
            frame = inspect.currentframe()
            depth = 0
            while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
                frame = frame.f_back
                depth += 1
            logger.bind(logger=record.name).opt(depth=depth, exception=record.exc_info).log(
                level, record.getMessage()
            )
        except Exception:
            self.handleError(record)


def _install_intercept(level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, InterceptHandler):
            root.removeHandler(handler)
    root.addHandler(InterceptHandler())
    # Filter at the source: libraries' DEBUG records are then never built
    # unless the operator asked for DEBUG.
    root.setLevel(_LEVELS[level])
    # One line per request would drown everything else; failures still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# ------------------------------------------------------------------ setup


def _check_level(level: str) -> str:
    name = level.strip().upper() if isinstance(level, str) else ""
    if name not in _LEVELS:
        raise ValueError(f"invalid log level {level!r}: expected one of {', '.join(_LEVELS)}")
    return name


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def setup_logging(*, fmt: str = "auto", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure loguru and the stdlib bridge. Safe to call again (reconfigure).

    ``fmt`` is ``"json"``, ``"text"`` or ``"auto"`` (text on a terminal, JSON
    otherwise, i.e. under systemd). ``level`` is TRACE, DEBUG, INFO, SUCCESS,
    WARNING, ERROR or CRITICAL (what ``logging.level`` accepts), any case.
    ``stream`` defaults to the *current* ``sys.stderr``.

    Only the sinks added by a previous call (and loguru's default stderr sink,
    which would print every line twice) are removed; sinks added by others, such
    as a test's capture sink, are left alone.
    """
    global _default_removed
    if fmt not in _FORMATS:
        raise ValueError(f"invalid log format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    lvl = _check_level(level)
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(out))
    render: Callable[[Record], str]
    if use_json:
        render = format_json
    else:
        colour = _isatty(out)

        def render(record: Record) -> str:
            return format_text(record, colour=colour)

    with _lock:
        if not _default_removed:
            with contextlib.suppress(ValueError):  # someone removed it already
                logger.remove(0)
            _default_removed = True
        while _handler_ids:
            with contextlib.suppress(ValueError):  # removed by a logger.remove() elsewhere
                logger.remove(_handler_ids.pop())
        _handler_ids.append(
            logger.add(
                _make_sink(out, render),
                level=lvl,
                format=_empty_format,
                colorize=False,
                diagnose=False,
                backtrace=False,
            )
        )
    _install_intercept(lvl)


def reset_logging() -> None:
    """Undo :func:`setup_logging`: remove its sinks and the stdlib bridge (for tests).

    Loguru's default stderr sink is not restored; registered secrets are kept
    (see :func:`clear_secrets`).
    """
    with _lock:
        while _handler_ids:
            with contextlib.suppress(ValueError):
                logger.remove(_handler_ids.pop())
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, InterceptHandler):
            root.removeHandler(handler)
