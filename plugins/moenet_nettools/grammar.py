"""The ``show`` commands a looking-glass client may run, parsed and rendered anew.

bird-lg-go's proxy writes the client's ``q`` to BIRD's socket as it is (its
``restrict`` check is a prefix match: ``show route;configure`` would pass the
prefix test). Here the query is split into tokens, each token is checked
against a small grammar, and the command sent to BIRD is **rendered from the
parsed values** (canonical addresses, quoted names, keywords in lower case):
client text never reaches BIRD. Anything outside the grammar is refused:

```
show status
show memory
show protocols [all] [NAME | 'NAME' | "GLOB"]
show route [OPTION ...]      each at most once, in any order:
    for ADDRESS|PREFIX | in PREFIX | PREFIX
    table TABLE
    protocol NAME | 'NAME'
    where bgp_path.last = ASN | where bgp_path.first = ASN
    where net ~ [ PREFIX[+|-] , ... ]
    all | primary | filtered | count | stats
```

That covers every command bird-lg-go's frontend builds (``summary``,
``detail``, the ``route_*`` pages, ``route_where``, ``route_from_origin``, the
bgpmap) and what people type into its "generic" boxes. Names are 1-64
characters of ``A-Z a-z 0-9 _ . : -`` (a GLOB also ``*`` and ``?``), tables are
BIRD symbols; the input is at most 512 printable ASCII characters (no newline,
no ``;``, no control characters).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from .targets import TargetError, parse_network

__all__ = ["MAX_QUERY", "GrammarError", "ShowCommand", "parse_show"]

MAX_QUERY = 512
MAX_TOKENS = 64
MAX_WHERE_PREFIXES = 32

_TOKEN = re.compile(r"""'([^']*)'|"([^"]*)"|([\[\],~=])|([^ \[\],~='"]+)""")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
_GLOB = re.compile(r"^[A-Za-z0-9_.:*?-]{1,64}$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ASN = re.compile(r"^[0-9]{1,10}$")
_FLAGS = ("filtered", "primary", "all", "count", "stats")


class GrammarError(ValueError):
    """The query is not a ``show`` command this looking glass runs."""


@attrs.frozen
class _Tok:
    kind: str  # "word", "sq" (single-quoted), "dq" (double-quoted), "punct"
    value: str


@attrs.frozen(kw_only=True)
class ShowCommand:
    """A parsed command; :meth:`render` is what BIRD receives."""

    words: tuple[str, ...]

    def render(self) -> str:
        return " ".join(self.words)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos] == " ":
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            raise GrammarError(f"unbalanced quote at position {pos + 1}")
        sq, dq, punct, word = m.groups()
        if sq is not None:
            out.append(_Tok("sq", sq))
        elif dq is not None:
            out.append(_Tok("dq", dq))
        elif punct is not None:
            out.append(_Tok("punct", punct))
        else:
            out.append(_Tok("word", word))
        if len(out) > MAX_TOKENS:
            raise GrammarError(f"too many words (at most {MAX_TOKENS})")
        pos = m.end()
    return out


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise GrammarError(f"expected {what} at the end")
        self.i += 1
        return tok

    def keyword(self) -> str | None:
        tok = self.peek()
        return tok.value.lower() if tok is not None and tok.kind == "word" else None

    def expect_punct(self, value: str) -> None:
        tok = self.take(repr(value))
        if tok.kind != "punct" or tok.value != value:
            raise GrammarError(f"expected {value!r}, got {tok.value!r}")

    def name(self, what: str) -> str:
        tok = self.take(what)
        if tok.kind not in ("word", "sq") or not _NAME.fullmatch(tok.value):
            raise GrammarError(f"invalid {what} {tok.value!r}: 1-64 characters of A-Z a-z 0-9 _ . : -")
        return f"'{tok.value}'"

    def network(self, *, prefix_only: bool = False) -> str:
        tok = self.take("an address or prefix")
        if tok.kind != "word":
            raise GrammarError(f"expected an address or prefix, got {tok.value!r}")
        try:
            net = parse_network(tok.value)
        except TargetError as exc:
            raise GrammarError(exc.message) from None
        if prefix_only and not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
            raise GrammarError(f"expected a prefix (address/length), got {tok.value!r}")
        return str(net)


def _protocols(p: _Parser) -> list[str]:
    words = ["show", "protocols"]
    if p.keyword() == "all":
        p.i += 1
        words.append("all")
    tok = p.peek()
    if tok is not None:
        if tok.kind == "dq":
            p.i += 1
            if not _GLOB.fullmatch(tok.value):
                raise GrammarError(f"invalid pattern {tok.value!r}: A-Z a-z 0-9 _ . : - * ? only")
            words.append(f'"{tok.value}"')
        else:
            words.append(p.name("protocol name"))
    return words


def _where(p: _Parser) -> list[str]:
    first = p.take("a filter after 'where'")
    key = first.value.lower() if first.kind == "word" else ""
    if key in ("bgp_path.last", "bgp_path.first"):
        p.expect_punct("=")
        tok = p.take("an AS number")
        if tok.kind != "word" or not _ASN.fullmatch(tok.value) or int(tok.value) > 0xFFFFFFFF:
            raise GrammarError(f"expected an AS number (0-4294967295), got {tok.value!r}")
        return ["where", key, "=", str(int(tok.value))]
    if key == "net":
        p.expect_punct("~")
        p.expect_punct("[")
        items: list[str] = []
        while True:
            tok = p.take("a prefix")
            if tok.kind != "word":
                raise GrammarError(f"expected a prefix, got {tok.value!r}")
            text, suffix = tok.value, ""
            if text[-1:] in ("+", "-"):
                text, suffix = text[:-1], text[-1]
            try:
                net = parse_network(text)
            except TargetError as exc:
                raise GrammarError(exc.message) from None
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                net = ipaddress.ip_network(net)
            items.append(f"{net}{suffix}")
            if len(items) > MAX_WHERE_PREFIXES:
                raise GrammarError(f"at most {MAX_WHERE_PREFIXES} prefixes in a set")
            sep = p.take("',' or ']'")
            if sep.kind == "punct" and sep.value == "]":
                break
            if not (sep.kind == "punct" and sep.value == ","):
                raise GrammarError(f"expected ',' or ']', got {sep.value!r}")
        return ["where", "net", "~", "[", ", ".join(items), "]"]
    raise GrammarError(
        "only these filters are accepted: 'where net ~ [ PREFIX, ... ]', "
        "'where bgp_path.last = ASN', 'where bgp_path.first = ASN'"
    )


def _route(p: _Parser) -> list[str]:
    seen: dict[str, list[str]] = {}

    def once(key: str, words: list[str]) -> None:
        group = "target" if key in ("for", "in", "net") else key
        if group in seen:
            raise GrammarError(f"{'an address or prefix' if group == 'target' else repr(key)} given twice")
        seen[group] = words

    while (tok := p.peek()) is not None:
        kw = p.keyword()
        if kw in _FLAGS:
            p.i += 1
            once(kw, [kw])
        elif kw == "for":
            p.i += 1
            once("for", ["for", p.network()])
        elif kw == "in":
            p.i += 1
            once("in", ["in", p.network(prefix_only=True)])
        elif kw == "table":
            p.i += 1
            t = p.take("a table name")
            if t.kind != "word" or not _TABLE.fullmatch(t.value):
                raise GrammarError(f"invalid table name {t.value!r}")
            once("table", ["table", t.value])
        elif kw == "protocol":
            p.i += 1
            once("protocol", ["protocol", p.name("protocol name")])
        elif kw == "where":
            p.i += 1
            once("where", _where(p))
        elif tok.kind == "word" and tok.value[:1].isalnum() and ("." in tok.value or ":" in tok.value):
            once("net", [p.network()])
        else:
            raise GrammarError(
                f"unexpected {tok.value!r}: show route takes for/in/table/protocol/where, a prefix, "
                "and all/primary/filtered/count/stats"
            )
    if "count" in seen and "stats" in seen:
        raise GrammarError("'count' and 'stats' are the same: give one")
    words = ["show", "route"]
    for group in ("target", "table", "protocol", "where", *_FLAGS):
        words += seen.get(group, [])
    return words


def parse_show(text: object) -> ShowCommand:
    """Parse a looking-glass query; :class:`GrammarError` says why it is refused."""
    if not isinstance(text, str):
        raise GrammarError("the query must be text")
    text = text.strip(" ")
    if not text:
        raise GrammarError("empty query")
    if len(text) > MAX_QUERY:
        raise GrammarError(f"the query is longer than {MAX_QUERY} characters")
    if any(not " " <= c <= "~" for c in text):
        raise GrammarError("only printable ASCII: no newlines, tabs or control characters")
    if ";" in text:
        raise GrammarError("one command only: ';' is not accepted")
    p = _Parser(_tokens(text))
    if p.keyword() != "show":
        raise GrammarError("only 'show' commands are accepted (show protocols, show route, show status)")
    p.i += 1
    what = p.keyword()
    if what is None:
        raise GrammarError("show what? (protocols, route, status, memory)")
    p.i += 1
    if what in ("protocols", "protocol"):
        words = _protocols(p)
    elif what == "route":
        words = _route(p)
    elif what in ("status", "memory"):
        words = ["show", what]
    else:
        raise GrammarError(
            f"'show {what}' is not accepted here: show protocols, show route, show status, show memory"
        )
    if (rest := p.peek()) is not None:
        raise GrammarError(f"unexpected {rest.value!r} at the end")
    return ShowCommand(words=tuple(words))
