"""BIRD's control-socket protocol without I/O: framing, errors and read-out parsers.

Everything here is pure so it can be tested on recorded transcripts
(``tests/data/bird``) and reused by anything that holds BIRD output.

Framing (``nest/cli.c``; ``research/bird3.md`` §3.2)::

    DDDD-text    a line with code DDDD, more lines follow
     text        continuation: same code as the previous line (strip ONE space)
    DDDD text    the final line of the reply (text may be empty)
    +text        asynchronous message: never part of, and never ends, a reply

The Go agent took any line whose fifth character is a space as the end of a
reply; ``" " + "   Neighbor address:"`` has one there, so it stopped early and
desynchronised its connections. Here only a line that *starts* with four
digits and a space ends a reply.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

import attrs

from moenet_core import MoenetError, ProtocolState

#: BIRD 3.3 resets the connection for command lines above about 1 KiB (bird3.md §3.2).
MAX_COMMAND_BYTES = 1000


# ------------------------------------------------------------------- errors


class BirdClientError(MoenetError):
    """Base of everything the BIRD client raises on purpose."""


class BirdUnavailable(BirdClientError):
    """BIRD cannot be reached (no socket, connection refused, closed while in use)."""


class BirdTimeout(BirdClientError):
    """BIRD did not answer (or finish reconfiguring) in time; the connection was discarded."""


class BirdUndoPending(BirdClientError):
    """A configuration applied with an undo timer is still unconfirmed.

    Another reconfiguration now would race the timer: when it fires while BIRD is
    reconfiguring, BIRD queues the undo, and applying a queued undo aborts BIRD 3.3.2
    and 3.4.0 (``Assertion '_r->ref == NULL' failed at conf/conf.c:301``).
    Call ``confirm()`` or ``undo()`` first.
    """


class BirdProtocolError(BirdClientError):
    """BIRD sent something that is not valid framing; the connection was discarded."""


class BirdError(BirdClientError):
    """BIRD answered with an error code (8xxx run-time, 9xxx parse error).

    ``code`` is the first error line's code and ``message`` its text (every
    error line's text, joined by newlines, when there are several).
    """

    def __init__(
        self, code: int, message: str, reply: Reply | None = None, command: str | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.reply = reply
        self.command = command
        where = f" (for {command!r})" if command else ""
        super().__init__(f"BIRD error {code:04d}{where}: {message}")


_CONFIG_LOCATION = re.compile(r"(?P<file>.+?):(?P<line>\d+):(?P<col>\d+) (?P<msg>.*)\Z", re.DOTALL)


class BirdConfigError(BirdError):
    """A configuration BIRD refused (``8002``): the running configuration is unchanged.

    ``message`` is BIRD's text, e.g. ``/etc/bird/peers/x.conf:12:3 syntax error, unexpected '}'``;
    ``file``/``line``/``column`` are parsed out of it when BIRD gave a location
    (a missing file reads ``/path: No such file or directory`` and has none).
    """

    def __init__(
        self, code: int, message: str, reply: Reply | None = None, command: str | None = None
    ) -> None:
        super().__init__(code, message, reply, command)
        m = _CONFIG_LOCATION.match(message)
        self.file: str | None = m["file"] if m else None
        self.line: int | None = int(m["line"]) if m else None
        self.column: int | None = int(m["col"]) if m else None
        self.detail: str = m["msg"] if m else message


# ------------------------------------------------------------------ framing


class ReplyLine(NamedTuple):
    """One line of a reply; continuation lines carry the code they inherit.

    A named tuple rather than an attrs class: a 1000-protocol reply has ~80 000 lines."""

    code: int
    text: str


@attrs.frozen
class AsyncMessage:
    """A ``+`` line: BIRD's unsolicited message (3.x: only the configure-undo notice)."""

    text: str


@attrs.frozen
class Reply:
    """A complete reply: every line in order; the last one is the final ``DDDD `` line."""

    lines: tuple[ReplyLine, ...]

    @property
    def code(self) -> int:
        """The final line's code."""
        return self.lines[-1].code

    @property
    def errors(self) -> tuple[ReplyLine, ...]:
        """Lines with a code >= 8000: the final code alone is not the verdict
        (``reload filters all`` ends in ``0000`` after ``8006-... reload failed``)."""
        return tuple(line for line in self.lines if line.code >= 8000)

    @property
    def ok(self) -> bool:
        return not self.errors

    def texts(self, *codes: int) -> list[str]:
        """The text of every line (or of the lines with one of ``codes``)."""
        return [line.text for line in self.lines if not codes or line.code in codes]

    def raise_for_error(self, command: str | None = None) -> Reply:
        """Raise :class:`BirdError` (:class:`BirdConfigError` for 8002) if any line is an error."""
        errors = self.errors
        if not errors:
            return self
        code = errors[0].code
        message = "\n".join(line.text for line in errors)
        cls = BirdConfigError if code == 8002 else BirdError
        raise cls(code, message, self, command)

    def __str__(self) -> str:
        return "\n".join(f"{line.code:04d} {line.text}" for line in self.lines)


#: Takes one line of a reply in progress (True: consumed, not kept in the reply).
LineSink = Callable[[ReplyLine], bool]


class ReplyAssembler:
    """Turns lines (without their ``\\n``) into replies and asynchronous messages.

    ``feed`` returns a :class:`Reply` when a line ends one, an
    :class:`AsyncMessage` for a ``+`` line (which leaves a reply in progress
    untouched), and ``None`` otherwise. Invalid framing raises
    :class:`BirdProtocolError`: the connection can no longer be trusted.
    """

    def __init__(self) -> None:
        self._lines: list[ReplyLine] = []
        self._code: int | None = None
        self.sink: LineSink | None = None
        """While set, every line but the final one is offered to it first; a line it
        takes (returns True) is not kept in the reply. A reply of 80 000 lines
        (``show protocols all`` at 1 000 sessions) is then parsed as it arrives
        instead of being held whole: the agent's memory peak is the parsed result."""

    @property
    def partial(self) -> tuple[ReplyLine, ...]:
        """Lines of a reply that has not ended yet."""
        return tuple(self._lines)

    def _keep(self, line: ReplyLine) -> None:
        if self.sink is None or not self.sink(line):
            self._lines.append(line)

    def feed(self, raw: str) -> Reply | AsyncMessage | None:
        if raw.startswith("+"):
            return AsyncMessage(raw[1:])
        if raw.startswith(" "):
            if self._code is None:
                raise BirdProtocolError(f"continuation line outside a reply: {raw!r}")
            self._keep(ReplyLine(self._code, raw[1:]))
            return None
        digits, sep = raw[:4], raw[4:5]
        if not (sep in ("-", " ") and sep and digits.isascii() and digits.isdigit()):
            raise BirdProtocolError(f"unparsable reply line: {raw!r}")
        line = ReplyLine(int(digits), raw[5:])
        if sep == "-":
            self._keep(line)
            self._code = line.code
            return None
        self._lines.append(line)
        reply = Reply(tuple(self._lines))
        self._lines.clear()
        self._code = None
        return reply


def parse_replies(data: str | Iterable[str]) -> tuple[list[Reply], list[AsyncMessage], tuple[ReplyLine, ...]]:
    """Frame a whole transcript: (complete replies, asynchronous messages, unfinished tail)."""
    if isinstance(data, str):
        lines: Iterable[str] = data.split("\n")[:-1] if data.endswith("\n") else data.split("\n")
    else:
        lines = data
    asm = ReplyAssembler()
    replies: list[Reply] = []
    asyncs: list[AsyncMessage] = []
    for raw in lines:
        out = asm.feed(raw)
        if isinstance(out, Reply):
            replies.append(out)
        elif isinstance(out, AsyncMessage):
            asyncs.append(out)
    return replies, asyncs, asm.partial


# ----------------------------------------------------------------- commands


def quote(value: str) -> str:
    """A CLI string literal. BIRD's lexer has no escapes, so quotes, backslashes and
    control characters cannot be represented and are refused."""
    if any(c in value for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"cannot pass {value!r} to BIRD: quotes, backslashes and control characters")
    return f'"{value}"'


def encode_command(command: str) -> bytes:
    """One command line, validated: a newline would smuggle a second command and
    an over-long line makes BIRD reset the connection instead of answering."""
    if not command.strip():
        raise ValueError("empty BIRD command")
    if any(c in command for c in "\r\n\0"):
        raise ValueError(f"BIRD command must be one line: {command!r}")
    data = command.encode()
    if len(data) > MAX_COMMAND_BYTES:
        raise ValueError(f"BIRD command too long ({len(data)} > {MAX_COMMAND_BYTES} bytes)")
    words = command.lower().split()
    # 'reload bgp [NAME]' without in/out answers with TWO replies (bird3.md §3.4).
    if words[:2] == ["reload", "bgp"] and (len(words) < 3 or words[2] not in ("in", "out")):
        raise ValueError("'reload bgp' needs 'in' or 'out': without a direction BIRD sends two replies")
    return data + b"\n"


# ------------------------------------------------------------- reconfigure


class ReconfigState(enum.IntEnum):
    """``configure status``: the first line's code."""

    DONE = 3
    IN_PROGRESS = 4
    QUEUED = 5
    SHUTDOWN = 6


@attrs.frozen(kw_only=True)
class ConfigStatus:
    """BIRD's reconfiguration state and the pending undo timer, if any."""

    state: ReconfigState
    undo_in: float | None = None
    """Seconds until an unconfirmed ``configure ... timeout`` is undone."""

    @property
    def idle(self) -> bool:
        return self.state is ReconfigState.DONE


_UNDO_IN = re.compile(r"(?:undo in|Undo scheduled in) ([0-9.]+) s")


def parse_config_status(reply: Reply) -> ConfigStatus:
    """``configure status``: ``0003-Daemon is up and running`` (idle) or ``0004-Reconfiguration
    in progress``, optionally ``0022-Configuration unconfirmed, undo in 12.3 s``, then ``0000``."""
    reply.raise_for_error("configure status")
    state: ReconfigState | None = None
    undo: float | None = None
    for line in reply.lines:
        if state is None and line.code in ReconfigState._value2member_map_:
            state = ReconfigState(line.code)
        elif line.code == 22 and (m := _UNDO_IN.search(line.text)):
            undo = float(m[1])
    if state is None:
        raise BirdProtocolError(f"unexpected 'configure status' reply: {reply}")
    return ConfigStatus(state=state, undo_in=undo)


@attrs.frozen(kw_only=True)
class ConfigureResult:
    """A reconfiguration BIRD accepted (refusals raise :class:`BirdConfigError`).

    ``code`` is BIRD's verdict: 3 reconfigured, 4 finished asynchronously (and was
    awaited), 5 queued behind a reconfiguration someone else started (awaited too),
    18 confirmed, 19 nothing to do, 20 configuration OK (``configure check``).
    """

    code: int
    message: str
    path: str | None = None
    """The file BIRD read (from ``0002-Reading configuration from ...``)."""
    undo_in: float | None = None
    """Seconds until automatic undo, for ``configure ... timeout N``."""
    waited: float = 0.0
    """Seconds spent waiting for an asynchronous reconfiguration to finish."""
    reply: Reply | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def asynchronous(self) -> bool:
        return self.code in (ReconfigState.IN_PROGRESS, ReconfigState.QUEUED)


_READING = re.compile(r"Reading configuration from (.*)\Z", re.DOTALL)


def parse_configure(reply: Reply, command: str) -> ConfigureResult:
    """Any ``configure`` reply. 8002 (config error), 8007 (restricted) and 9xxx raise:
    ``0002-Reading configuration`` precedes every error and is never success."""
    reply.raise_for_error(command)
    path: str | None = None
    undo: float | None = None
    for line in reply.lines:
        if line.code == 2 and (m := _READING.match(line.text)):
            path = m[1]
        elif line.code == 22 and (u := _UNDO_IN.search(line.text)):
            undo = float(u[1])
    final = reply.lines[-1]
    return ConfigureResult(code=final.code, message=final.text, path=path, undo_in=undo, reply=reply)


# ------------------------------------------------------------------ status


@attrs.frozen(kw_only=True)
class BirdStatus:
    """``show status``."""

    version: str
    router_id: str | None
    hostname: str | None
    server_time: str | None
    last_reboot: str | None
    last_reconfiguration: str | None
    message: str
    """The final line: ``Daemon is up and running``, ``Reconfiguration in progress``,
    ``Shutdown in progress``."""

    @property
    def reconfiguring(self) -> bool:
        return "Reconfiguration in progress" in self.message


_STATUS_FIELDS = {
    "Router ID is ": "router_id",
    "Hostname is ": "hostname",
    "Current server time is ": "server_time",
    "Last reboot on ": "last_reboot",
    "Last reconfiguration on ": "last_reconfiguration",
}


def parse_status(reply: Reply) -> BirdStatus:
    reply.raise_for_error("show status")
    version = ""
    found: dict[str, str] = {}
    for line in reply.lines:
        if line.code == 1000:
            version = line.text.removeprefix("BIRD ").strip()
        elif line.code == 1011:
            for prefix, key in _STATUS_FIELDS.items():
                if line.text.startswith(prefix):
                    found[key] = line.text[len(prefix) :].strip()
    return BirdStatus(
        version=version,
        router_id=found.get("router_id"),
        hostname=found.get("hostname"),
        server_time=found.get("server_time"),
        last_reboot=found.get("last_reboot"),
        last_reconfiguration=found.get("last_reconfiguration"),
        message=reply.lines[-1].text,
    )


# --------------------------------------------------------------- protocols


@attrs.frozen(kw_only=True)
class ChannelInfo:
    """One channel of a protocol in ``show protocols all``.

    The counts come from the ``Routes:`` line, which only appears once the channel
    is up; ``filtered`` is only reported with ``import table`` / ``import keep filtered``.
    """

    name: str
    state: str | None = None
    import_state: str | None = None
    export_state: str | None = None
    table: str | None = None
    imported: int | None = None
    filtered: int | None = None
    exported: int | None = None
    preferred: int | None = None
    details: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)
    """Every ``Key: value`` line of the channel block, first occurrence."""


@attrs.frozen(kw_only=True)
class BirdProtocol(ProtocolState):
    """:class:`~moenet_core.backends.ProtocolState` plus what BIRD tells beyond it."""

    neighbor_as: int | None = None
    local_as: int | None = None
    channels: Mapping[str, ChannelInfo] = attrs.field(factory=dict)
    details: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)
    """Every protocol-level ``Key: value`` line (``Session``, ``Hold timer``, RPKI's
    ``Status``, ...), first occurrence."""


_ROUTES = re.compile(r"(\d+) imported, (?:(\d+) filtered, )?(\d+) exported, (\d+) preferred")
# A ``1002`` row is printed as ``"%-10s %-10s %-10s %-6s %-12s  %s"``, but names longer
# than 10 characters push the columns right: split on whitespace, not on offsets.
# ``Since`` holds a space only with an ``iso long`` time format (date, then time).
_ROW = re.compile(
    r"(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)"
    r"(?:\s+(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d\S*|\S+))?(?:\s+(?P<info>.*?))?\s*\Z",
    re.DOTALL,
)

_Row = tuple[str, str, str | None, str, str | None, str]


def _split_row(text: str) -> _Row:
    m = _ROW.match(text)
    if m is None:
        raise BirdProtocolError(f"unparsable protocol line: {text!r}")
    table = m["table"]
    return m["name"], m["proto"], None if table == "---" else table, m["state"], m["since"], m["info"] or ""


#: The ``Key: value`` lines a lean read parses (``ProtocolsParser(lean=True)``): those
#: the typed fields come from, and the channels' route limits. Of these, a lean
#: record's ``details`` keep only the limits (:data:`LEAN_DETAILS`); the rest is in
#: the typed fields.
LEAN_KEYS = frozenset(
    {
        "Last error",
        "BGP state",
        "Neighbor address",
        "Neighbor AS",
        "Local AS",
        "State",
        "Import state",
        "Export state",
        "Table",
        "Routes",
        "Receive limit",
        "Import limit",
        "Export limit",
    }
)
#: What a lean record keeps in its channels' ``details``: the route limits, which
#: have no typed field. Its own ``details`` are empty. At 1 000 sessions the
#: collector's read held 3.7 KB a protocol, 1.4 KB of it these dicts' copies of
#: the typed fields.
LEAN_DETAILS = frozenset({"Receive limit", "Import limit", "Export limit"})
_NO_DETAILS: Mapping[str, str] = MappingProxyType({})
#: Values with a handful of distinct texts, shared instead of one copy per protocol.
_INTERNED = frozenset({"BGP state", "State", "Import state", "Export state", "Table", "Local AS"})


class _ProtoBuilder:
    __slots__ = ("channel", "channels", "details", "keep", "row")

    def __init__(self, row: _Row, keep: frozenset[str] | None = None) -> None:
        self.row = row
        self.keep = keep
        self.details: dict[str, str] = {}
        self.channels: dict[str, dict[str, str]] = {}
        self.channel: dict[str, str] | None = None

    def detail(self, text: str) -> None:
        indent = len(text) - len(text.lstrip(" "))
        s = text.strip()
        if not s:
            return
        if indent <= 2:
            # A section header or a protocol-level line ends the previous channel.
            self.channel = None
            if s.startswith("Channel ") and ":" not in s:
                self.channel = self.channels.setdefault(s[8:].strip(), {})
                return
        key, sep, value = s.partition(":")
        if not sep or indent > 4:
            # Deeper lines are sub-items (BGP capabilities, per-limit actions, the
            # route change statistics table): not key/value facts of their own.
            return
        key = key.strip()
        if self.keep is not None and key not in self.keep:
            return
        target = self.channel if self.channel is not None else self.details
        if key not in target:
            value = value.strip()
            target[key] = sys.intern(value) if key in _INTERNED else value

    def build(self) -> BirdProtocol:
        name, proto, table, state, since, info = self.row
        d = self.details
        channels: dict[str, ChannelInfo] = {}
        routes: dict[str, dict[str, int]] = {}
        for cname, cd in self.channels.items():
            imported = filtered = exported = preferred = None
            m = _ROUTES.match(cd.get("Routes", ""))
            if m:
                imported, exported, preferred = int(m[1]), int(m[3]), int(m[4])
                filtered = int(m[2]) if m[2] is not None else None
                routes[cname] = {
                    "imported": imported,
                    "filtered": filtered or 0,
                    "exported": exported,
                    "preferred": preferred,
                }
            channels[cname] = ChannelInfo(
                name=cname,
                state=cd.get("State"),
                import_state=cd.get("Import state"),
                export_state=cd.get("Export state"),
                table=cd.get("Table"),
                imported=imported,
                filtered=filtered,
                exported=exported,
                preferred=preferred,
                details=cd if self.keep is None else _lean(cd),
            )
        return BirdProtocol(
            name=name,
            proto=proto,
            table=table,
            state=state,
            since=since,
            info=info,
            last_error=d.get("Last error"),
            bgp_state=d.get("BGP state"),
            neighbor=d.get("Neighbor address"),
            routes=routes,
            neighbor_as=_int_or_none(d.get("Neighbor AS")),
            local_as=_int_or_none(d.get("Local AS")),
            channels=channels,
            details=d if self.keep is None else _NO_DETAILS,
        )


def _lean(details: dict[str, str]) -> Mapping[str, str]:
    kept = {k: v for k, v in details.items() if k in LEAN_DETAILS}
    return kept or _NO_DETAILS


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


class ProtocolsParser:
    """``show protocols [all]`` parsed line by line, as a :data:`LineSink`.

    ``1002`` lines are rows (one per protocol), ``1006`` lines the details of the
    row before them; both are taken. Other codes (the ``2002`` header, the final
    ``0000``, errors) are left to the reply. ``lean``: only :data:`LEAN_KEYS` are
    parsed, and the details keep only :data:`LEAN_DETAILS`, for the node's own
    periodic reads (every eBGP session: 2.3 KB a protocol instead of 6.6 KB).
    """

    __slots__ = ("_cur", "_keep", "_out")

    def __init__(self, *, lean: bool = False) -> None:
        self._out: list[BirdProtocol] = []
        self._cur: _ProtoBuilder | None = None
        self._keep = LEAN_KEYS if lean else None

    def __call__(self, line: ReplyLine) -> bool:
        if line.code == 1002:
            if self._cur is not None:
                self._out.append(self._cur.build())
            self._cur = _ProtoBuilder(_split_row(line.text), self._keep)
            return True
        if line.code == 1006:
            if self._cur is not None:
                self._cur.detail(line.text)
            return True
        return False

    def result(self) -> list[BirdProtocol]:
        """The protocols seen so far, in BIRD's order (a fragment parses too)."""
        if self._cur is not None:
            self._out.append(self._cur.build())
            self._cur = None
        return self._out


def parse_protocols(lines: Reply | Sequence[ReplyLine]) -> list[BirdProtocol]:
    """``show protocols [all] [NAME|"pattern"]`` into records, in BIRD's order
    (:class:`ProtocolsParser` over lines already read). Unknown codes are tolerated;
    a fragment without its final line parses too."""
    if isinstance(lines, Reply):
        lines.raise_for_error("show protocols")
        lines = lines.lines
    parser = ProtocolsParser()
    for line in lines:
        parser(line)
    return parser.result()


def iter_lines(replies: Iterable[Reply]) -> Iterator[ReplyLine]:
    """All lines of several replies, in order."""
    for reply in replies:
        yield from reply.lines
