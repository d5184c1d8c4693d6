"""The looking glass's ``show`` grammar: what bird-lg-go's frontend sends is
accepted, everything else is refused, and no input renders a command outside
the grammar (hypothesis)."""

from __future__ import annotations

import re

import pytest
from helpers.nettools import FRONTEND_COMMANDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moenet_nettools.grammar import MAX_QUERY, GrammarError, parse_show

# An independent description of every rendered command: a name is quoted, an
# address canonical, one option of each kind, in the renderer's order.
_NET = r"[0-9a-f:.]+(?:/[0-9]{1,3})?"
_PFX = r"[0-9a-f:.]+/[0-9]{1,3}[+-]?"
_NAME = r"'[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}'"
RENDERED = re.compile(
    r"^show (?:status|memory"
    rf"|protocols(?: all)?(?: {_NAME}| \"[A-Za-z0-9_.:*?-]{{1,64}}\")?"
    rf"|route(?: (?:for {_NET}|in {_NET}|{_NET}))?(?: table [A-Za-z_][A-Za-z0-9_]{{0,63}})?"
    rf"(?: protocol {_NAME})?"
    rf"(?: where (?:bgp_path\.(?:last|first) = [0-9]{{1,10}}|net ~ \[ {_PFX}(?:, {_PFX})* \]))?"
    r"(?: filtered)?(?: primary)?(?: all)?(?: count)?(?: stats)?)$"
)


@pytest.mark.parametrize("command", FRONTEND_COMMANDS)
def test_every_frontend_command_is_accepted_as_it_is(command: str) -> None:
    rendered = parse_show(command).render()
    assert RENDERED.match(rendered)
    # Same words (the options may come back in the renderer's order).
    assert sorted(rendered.split()) == sorted(command.split())


@pytest.mark.parametrize(
    ("query", "rendered"),
    [
        ("SHOW  Route FOR 172.20.10.5 ALL", "show route for 172.20.10.5 all"),
        ("show route for fd42:0:0::1", "show route for fd42::1"),
        ("show route for ::ffff:172.20.0.1", "show route for 172.20.0.1"),
        ("show route all for 172.20.0.0/24", "show route for 172.20.0.0/24 all"),
        ("show route 172.20.0.0/24 table master4", "show route 172.20.0.0/24 table master4"),
        ("show route in 172.20.0.0/16 count", "show route in 172.20.0.0/16 count"),
        ("show protocol all dn42_4242420002_ab12cd", "show protocols all 'dn42_4242420002_ab12cd'"),
        ('show protocols "dn42_*"', 'show protocols "dn42_*"'),
        (
            "show route where net~[172.20.0.0/14+,fd00::/8-]",
            "show route where net ~ [ 172.20.0.0/14+, fd00::/8- ]",
        ),
        ("show route where bgp_path.first=0042", "show route where bgp_path.first = 42"),
        ("show status", "show status"),
        ("show memory", "show memory"),
    ],
)
def test_queries_are_rendered_canonically(query: str, rendered: str) -> None:
    assert parse_show(query).render() == rendered


@pytest.mark.parametrize(
    "query",
    [
        "",
        "   ",
        "configure",
        "configure soft",
        "down",
        "restart all",
        "enable static4",
        "disable static4",
        "reload static4",
        "eval 1+1",
        "dump resources",
        "debug all all",
        "echo all",
        "graceful restart",
        "mrt dump",
        "restrict",
        "show route;configure",
        "show route ; down",
        "show route\nconfigure",
        "show route\rdown",
        "show route\tall",
        "show route for 172.20.0.1\x00",
        "show symbols",
        "show config",
        "show route export static4",
        "show route where 1 = 1",
        "show route where net ~ [ 172.20.0.0/14 ",
        "show route where bgp_path.last = 4294967296",
        "show route where bgp_path.last = -1",
        "show route where bgp_path ~ [= * 1 * =]",
        "show route for",
        "show route for 172.20.0.1 for 172.20.0.2",
        "show route for 172.20.0.1 172.20.0.0/24",
        "show route all all",
        "show route count stats",
        "show route for 172.20.0.0/33",
        "show route for 172.20.0.1/24",
        "show route for -1.2.3.4",
        "show route for example.com",
        "show route for 010.0.0.1",
        "show route for fe80::1%eth0",
        "show route table 'master4'",
        "show route table master4;",
        "show route protocol 'static4",
        "show route protocol 'sta'tic4'",
        "show route protocol 'a b'",
        'show route protocol "static*"',
        "show protocols all 'x' 'y'",
        'show protocols "a b"',
        "show protocols all 'static4' configure",
        "show protocols -x",
        "show route for 172.20.0.1 é",
        "show " + "route " * 100,
        "show route for " + "1" * 600,
    ],
)
def test_everything_else_is_refused(query: str) -> None:
    with pytest.raises(GrammarError):
        parse_show(query)


def test_non_text_is_refused() -> None:
    for value in (None, 1, b"show route", ["show", "route"]):
        with pytest.raises(GrammarError):
            parse_show(value)


def _check(text: str) -> None:
    try:
        cmd = parse_show(text)
    except GrammarError:
        return
    rendered = cmd.render()
    assert RENDERED.match(rendered), rendered
    assert len(rendered) <= 2 * MAX_QUERY
    assert parse_show(rendered) == cmd  # canonical: rendering is a fixed point


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzz_any_text(text: str) -> None:
    _check(text)


_VOCAB = [
    "show", "route", "protocols", "protocol", "status", "memory", "all", "primary", "filtered",
    "count", "stats", "for", "in", "table", "where", "net", "~", "[", "]", ",", "=", "bgp_path.last",
    "bgp_path.first", "172.20.0.1", "172.20.0.0/14+", "fd00::/8-", "10.0.0.0/8", "fd42::1", "'static4'",
    "'x;y'", '"dn42*"', "master4", "4242420001", ";", "configure", "down", "'", '"', "\n", "-x",
    "'a\nb'", "\\", "%", "$(id)", "`id`",
]  # fmt: skip


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_VOCAB), max_size=14), st.sampled_from([" ", "  ", ""]))
def test_fuzz_grammar_words(words: list[str], sep: str) -> None:
    _check(sep.join(words))
