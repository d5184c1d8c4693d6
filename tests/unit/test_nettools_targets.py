"""Targets of ping/tcping/trace: strict parsing (nothing can read as an option),
the allowed ranges, host names resolved once and checked."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moenet_nettools.targets import DN42_TARGETS, TargetError, TargetPolicy, parse_network, parse_target
from moenet_nettools.tools import parse_tcp_target


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("172.20.0.1", ipaddress.IPv4Address("172.20.0.1")),
        ("fd42:4242::1", ipaddress.IPv6Address("fd42:4242::1")),
        ("::ffff:172.20.0.1", ipaddress.IPv4Address("172.20.0.1")),
        ("Node1.DN42.", "node1.dn42"),
        ("a-b.example", "a-b.example"),
    ],
)
def test_accepted_targets(text: str, parsed: object) -> None:
    assert parse_target(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-c1000",
        "--help",
        "-f 172.20.0.1",
        "172.20.0.1 -f",
        "172.20.0.1\n",
        "172.20.0.1;id",
        "$(id)",
        "`id`",
        "a b",
        "-example.com",
        "example-.com",
        "exa_mple.com",
        "1.2.3",
        "010.0.0.1",
        "300.1.1.1",
        "fe80::1%eth0",
        "fd00::/8",
        "a" * 254,
        "a..b",
        None,
        42,
    ],
)
def test_refused_targets(text: object) -> None:
    with pytest.raises(TargetError) as err:
        parse_target(text)
    assert err.value.code == "invalid_target"


@given(st.text(max_size=80))
def test_fuzz_nothing_accepted_can_read_as_an_option(text: str) -> None:
    try:
        parsed = parse_target(text)
    except TargetError:
        return
    shown = str(parsed)
    assert not shown.startswith("-")
    assert shown.isprintable() and " " not in shown and "%" not in shown
    assert len(shown) <= 253


def test_networks() -> None:
    assert parse_network("172.20.0.0/14") == ipaddress.ip_network("172.20.0.0/14")
    assert parse_network("fd00::1") == ipaddress.ip_address("fd00::1")
    for bad in ("172.20.0.1/14", "172.20.0.0/33", "example.com", "172.20.0.0/-1", "a/8", "1.2.3.4/ 8"):
        with pytest.raises(TargetError):
            parse_network(bad)


def test_default_policy_is_dn42_and_the_node_s_own() -> None:
    policy = TargetPolicy.build(DN42_TARGETS, extra=["192.0.2.7", None, ""])
    for ok in ("172.20.0.1", "172.23.255.254", "172.31.0.1", "10.127.0.1", "fd42::1", "192.0.2.7"):
        assert policy.problem(ipaddress.ip_address(ok)) is None, ok
    for bad in ("8.8.8.8", "127.0.0.1", "::1", "fe80::1", "172.24.0.1", "192.0.2.8", "2001:db8::1"):
        assert "outside the allowed" in (policy.problem(ipaddress.ip_address(bad)) or ""), bad
    for special in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "ff02::1", "::"):
        assert "not a unicast" in (policy.problem(ipaddress.ip_address(special)) or ""), special
    # Even when listed.
    everything = TargetPolicy.build(["0.0.0.0/0", "::/0"])
    assert everything.problem(ipaddress.ip_address("224.0.0.1")) is not None


async def test_names_are_resolved_once_and_the_address_checked() -> None:
    asked: list[tuple[str, int]] = []
    answers = {"good.dn42": ["8.8.8.8", "172.20.0.9"], "bad.dn42": ["8.8.8.8", "127.0.0.1"]}

    async def resolver(name: str, family: int) -> list[str]:
        asked.append((name, family))
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[name]

    policy = TargetPolicy.build(DN42_TARGETS, resolver=resolver)
    assert await policy.resolve("good.dn42") == ipaddress.ip_address("172.20.0.9")
    assert await policy.resolve("172.20.0.1", family=socket.AF_INET6) == ipaddress.ip_address("172.20.0.1")
    with pytest.raises(TargetError) as err:
        await policy.resolve("bad.dn42", family=socket.AF_INET6)
    assert err.value.code == "target_not_allowed"
    with pytest.raises(TargetError) as err:
        await policy.resolve("missing.dn42")
    assert err.value.code == "unresolvable"
    assert asked == [
        ("good.dn42", socket.AF_UNSPEC),
        ("bad.dn42", socket.AF_INET6),
        ("missing.dn42", socket.AF_UNSPEC),
    ]
    no_names = TargetPolicy.build(DN42_TARGETS, resolver=resolver, resolve_names=False)
    with pytest.raises(TargetError):
        await no_names.resolve("good.dn42")
    assert len(asked) == 3


async def test_a_slow_resolver_is_cut_off() -> None:
    async def stuck(name: str, family: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    policy = TargetPolicy.build(DN42_TARGETS, resolver=stuck, resolve_timeout=0.05)
    with pytest.raises(TargetError) as err:
        await policy.resolve("slow.dn42")
    assert err.value.code == "unresolvable"


@pytest.mark.parametrize(
    ("target", "port", "parsed"),
    [
        ("172.20.0.1", None, ("172.20.0.1", 80)),
        ("172.20.0.1:22", None, ("172.20.0.1", 22)),
        ("172.20.0.1", 443, ("172.20.0.1", 443)),
        ("[fd42::1]:179", None, ("fd42::1", 179)),
        ("fd42::1", None, ("fd42::1", 80)),
        ("host.dn42:8080", None, ("host.dn42", 8080)),
    ],
)
def test_tcp_targets(target: str, port: int | None, parsed: tuple[str, int]) -> None:
    assert parse_tcp_target(target, port, 80) == parsed


@pytest.mark.parametrize(
    ("target", "port"),
    [("172.20.0.1:0", None), ("172.20.0.1:70000", None), ("172.20.0.1:x", None), ("172.20.0.1:22", 23),
     ("[fd42::1", None), ("172.20.0.1", True), ("172.20.0.1", "22"), (None, None)],
)  # fmt: skip
def test_bad_tcp_targets(target: object, port: object) -> None:
    with pytest.raises(TargetError):
        parse_tcp_target(target, port, 80)
