"""The heartbeat's public addresses (``publicIpv4`` / ``publicIpv6``): which
addresses count, which one is picked, the echo client's bounds against a local
HTTPS server, the cache, the config checks, and the CP not being able to set the
echo URL. The reads of real interfaces are in
tests/component/test_heartbeat_public_netns.py."""

from __future__ import annotations

import errno
import ipaddress
import time

import moenet_heartbeat
import pytest
from helpers.echo import EchoServer
from helpers.tls import TestCert
from moenet_heartbeat import public
from moenet_heartbeat.public import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    EchoError,
    InterfaceAddress,
    PublicAddresses,
    RouteHint,
)

from moenet_core import NetlinkError, RtAddressDetail, RtRoute, RtScope
from moenet_core.agent import structure_plugin_sections
from moenet_core.cli import disabled_plugins
from moenet_core.config import build_config
from moenet_core.plugins import AgentPluginManager

TOKEN = "test-token"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def addr(index: int, text: str, flags: int = 0) -> InterfaceAddress:
    return InterfaceAddress(index=index, address=ip(text), flags=flags)


# ------------------------------------------------------------------ what counts


@pytest.mark.parametrize("text", ["81.0.0.2", "1.0.0.7", "2a00:2::2", "2606:4700:4700::1111"])
def test_public_addresses(text):
    assert public.is_public(ip(text))


@pytest.mark.parametrize(
    "text",
    [
        "172.20.1.1",  # DN42
        "172.23.255.1",  # DN42
        "10.1.2.3",  # private (DN42 uses parts of it too)
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "100.127.255.254",
        "127.0.0.1",
        "169.254.3.4",
        "0.0.0.0",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "fd42:4242::1",  # DN42 (ULA)
        "fc00::1",
        "fe80::1",
        "::1",
        "::",
        "::ffff:81.0.0.2",  # IPv4-mapped
        "64:ff9b::5100:2",  # NAT64
        "2001:db8::1",
        "2002:5100:2::1",  # 6to4
        "ff02::1",
        "fec0::1",
    ],
)
def test_not_public_addresses(text):
    assert not public.is_public(ip(text))


# ------------------------------------------------------------------ which one


def test_the_kernels_source_for_the_default_route_wins():
    found = [addr(2, "1.0.0.7"), addr(3, "81.0.0.2"), addr(3, "81.0.0.3")]
    assert public.choose(found, 4, RouteHint(index=3, source=ip("81.0.0.3"))) == "81.0.0.3"


def test_the_default_route_interface_beats_an_earlier_interface():
    found = [addr(2, "1.0.0.7"), addr(3, "10.0.0.2"), addr(3, "81.0.0.2")]
    # The kernel's source is private (a NATed uplink with a public alias): the interface still counts.
    assert public.choose(found, 4, RouteHint(index=3, source=ip("10.0.0.2"))) == "81.0.0.2"
    assert public.choose(found, 4, RouteHint(index=3)) == "81.0.0.2"


def test_without_a_default_route_the_first_public_address_is_taken():
    found = [addr(2, "172.20.1.1"), addr(3, "1.0.0.7"), addr(4, "81.0.0.2")]
    assert public.choose(found, 4, None) == "1.0.0.7"
    # A default route through an interface without a public address: the others count.
    assert public.choose(found, 4, RouteHint(index=9)) == "1.0.0.7"


def test_only_non_public_addresses_give_none():
    found = [addr(2, "172.20.1.1"), addr(2, "100.64.0.2"), addr(2, "fd42::1"), addr(2, "fe80::1")]
    assert public.choose(found, 4, RouteHint(index=2)) is None
    assert public.choose(found, 6, RouteHint(index=2)) is None
    assert public.choose([], 4, None) is None


def test_families_are_kept_apart():
    found = [addr(2, "81.0.0.2"), addr(2, "2a00:2::2")]
    assert public.choose(found, 4, None) == "81.0.0.2"
    assert public.choose(found, 6, None) == "2a00:2::2"


def test_ipv6_flags():
    found = [
        addr(3, "2a00:2::1", IFA_F_TENTATIVE),  # not usable yet
        addr(3, "2a00:2::2", IFA_F_DADFAILED),  # never
        addr(3, "2a00:2::3", IFA_F_DEPRECATED),
        addr(3, "2a00:2::4", IFA_F_TEMPORARY),  # privacy address: changes daily
        addr(3, "2a00:2::5"),
    ]
    hint = RouteHint(index=3)
    assert public.choose(found, 6, hint) == "2a00:2::5"
    assert public.choose(found[:4], 6, hint) == "2a00:2::4"
    assert public.choose(found[:3], 6, hint) == "2a00:2::3"
    assert public.choose(found[:2], 6, hint) is None


# ------------------------------------------------------------------ what the core's client answers


class StubRtnl:
    """Stands in for :class:`moenet_core.Rtnl`: scripted answers, recorded questions."""

    def __init__(self, details=(), route=None) -> None:
        self.details = list(details)
        self.route = route
        self.asked: list[object] = []

    async def address_details(self, index=None, *, scope=None):
        self.asked.append(("addresses", index, scope))
        return self.details

    async def route_get(self, destination):
        self.asked.append(destination)
        if isinstance(self.route, BaseException):
            raise self.route
        return self.route


async def test_read_addresses_asks_for_global_scope_and_keeps_the_flags():
    rt = StubRtnl(
        [
            RtAddressDetail(3, 24, "81.0.0.2", None, 0x80, 0),
            RtAddressDetail(3, 64, "2a00:2::1", None, 0xA2, 0),
            RtAddressDetail(4, 32, "172.20.0.3", "172.20.0.4", 0x80, 0),  # point-to-point: the local one
        ]
    )
    found = await public.read_addresses(rt)  # type: ignore[arg-type]
    assert rt.asked == [("addresses", None, RtScope.UNIVERSE)]
    assert found == [addr(3, "81.0.0.2", 0x80), addr(3, "2a00:2::1", 0xA2), addr(4, "172.20.0.3", 0x80)]
    assert found[1].flags & IFA_F_DEPRECATED and not found[1].flags & IFA_F_TENTATIVE


async def test_route_hint_probes_per_family_and_maps_no_route_to_none():
    rt = StubRtnl(route=RtRoute(3, "81.0.0.2", "81.0.0.1", 1))
    assert await public.route_hint(4, rt) == RouteHint(index=3, source=ip("81.0.0.2"))  # type: ignore[arg-type]
    rt.route = RtRoute(3, None, "fe80::1", 1)
    assert await public.route_hint(6, rt) == RouteHint(index=3)  # type: ignore[arg-type]
    assert rt.asked == [public.ROUTE_PROBES[4], public.ROUTE_PROBES[6]]
    for nothing in (
        None,
        RtRoute(0, "81.0.0.2", None, 1),
        NetlinkError(errno.EINVAL),
        NetlinkError(errno.EAFNOSUPPORT),
    ):
        rt.route = nothing
        assert await public.route_hint(4, rt) is None, nothing  # type: ignore[arg-type]
    rt.route = NetlinkError(errno.EACCES)  # a prohibit route: told, not hidden
    with pytest.raises(NetlinkError):
        await public.route_hint(4, rt)  # type: ignore[arg-type]


# ------------------------------------------------------------------ echo answers and URLs


@pytest.mark.parametrize(
    ("body", "version", "want"),
    [(b"81.0.0.99\n", 4, "81.0.0.99"), (b"  2a00:2:0::99 \r\n", 6, "2a00:2::99")],
)
def test_parse_echo_accepts_one_public_address(body, version, want):
    assert public.parse_echo(body, version) == want


@pytest.mark.parametrize(
    ("body", "version", "error"),
    [
        (b"2a00:2::99", 4, "not an IPv4 address"),
        (b"81.0.0.99", 6, "not an IPv6 address"),
        (b"10.0.0.2", 4, "not a public address"),
        (b"172.20.1.1", 4, "not a public address"),
        (b"<html>81.0.0.99</html>", 4, "not an address"),
        (b"81.0.0.99 81.0.0.98", 4, "not an address"),
        (b'{"ip": "81.0.0.99"}', 4, "not an address"),
        (b"", 4, "not an address"),
        ("81.0.0.99\u00a0".encode(), 4, "not ASCII"),
    ],
)
def test_parse_echo_refuses_anything_else(body, version, error):
    with pytest.raises(EchoError, match=error):
        public.parse_echo(body, version)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://api4.ipify.org", None),
        ("https://[2001:db8::1]:8443/ip?format=text", None),
        ("http://api4.ipify.org", "must be an https:// URL"),
        ("ftp://x", "must be an https:// URL"),
        ("api4.ipify.org", "must be an https:// URL"),
        ("https://", "must name a host"),
        ("https://user:pw@api4.ipify.org", "must not hold credentials"),
        ("https://api4.ipify.org/#x", "must not have a fragment"),
        ("https://api4.ipify.org:99999", "not a URL"),
        ("https://api4.ipify.org/a b", "must not contain spaces"),
        ("https://x/" + "a" * 2048, "must be at most 2048 characters"),
    ],
)
def test_check_echo_url(url, error):
    result = public.check_echo_url(url)
    assert result is None if error is None else result is not None and result.startswith(error), result


# ------------------------------------------------------------------ the echo client


@pytest.fixture
async def echo(tmp_path):
    cert = TestCert(tmp_path / "tls", ["127.0.0.1", "::1"])
    async with EchoServer(cert, ["127.0.0.1", "::1"]) as server:
        server.answers = {4: "81.0.0.99", 6: "2a00:2::99"}
        yield server


async def ask(echo, host: str, version: int, timeout: float = 5.0) -> str:
    return await public.ask_echo(echo.url(host), version, timeout, ssl_context=echo.cert.client_context())


async def test_ask_echo_over_the_asked_family(echo):
    assert await ask(echo, "127.0.0.1", 4) == "81.0.0.99"
    assert await ask(echo, "::1", 6) == "2a00:2::99"
    assert [remote for _, remote in echo.requests] == ["127.0.0.1", "::1"]
    # An IPv6 URL for IPv4 (and back) is never asked.
    with pytest.raises(EchoError, match="names an IPv6 address, not IPv4"):
        await ask(echo, "::1", 4)
    with pytest.raises(EchoError, match="names an IPv4 address, not IPv6"):
        await ask(echo, "127.0.0.1", 6)
    assert len(echo.requests) == 2


async def test_ask_echo_resolves_a_name_for_the_asked_family_only(echo):
    # "localhost" resolves to 127.0.0.1 (and maybe ::1): asked for IPv4, it connects over IPv4.
    url = echo.url("127.0.0.1").replace("127.0.0.1", "localhost")
    with pytest.raises(EchoError, match=r"certificate|SSL"):  # the certificate names addresses only
        await public.ask_echo(url, 4, 5.0, ssl_context=echo.cert.client_context())
    assert [remote for _, remote in echo.requests] == []


async def test_ask_echo_refuses_an_untrusted_certificate(echo):
    with pytest.raises(EchoError, match=r"ClientConnectorCertificateError|SSL"):
        await public.ask_echo(echo.url("127.0.0.1"), 4, 5.0)  # the system's trust store
    assert echo.requests == []


async def test_ask_echo_refuses_plain_http_without_asking(echo):
    with pytest.raises(EchoError, match="must be an https:// URL"):
        await public.ask_echo(echo.url("127.0.0.1").replace("https", "http"), 4, 5.0)
    assert echo.requests == []


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("huge", "too long"),
        ("endless", "too long"),
        ("redirect", "HTTP 302"),
        ("error", "HTTP 500"),
    ],
)
async def test_ask_echo_bounds(echo, mode, error):
    echo.mode = mode
    t = time.monotonic()
    with pytest.raises(EchoError, match=error):
        await ask(echo, "127.0.0.1", 4)
    assert time.monotonic() - t < 5
    assert [path for path, _ in echo.requests] == ["/"]  # a redirect is not followed


async def test_ask_echo_gives_up_at_the_timeout(echo):
    echo.mode = "slow"
    t = time.monotonic()
    with pytest.raises(EchoError, match=r"no answer within 0\.5 s"):
        await ask(echo, "127.0.0.1", 4, timeout=0.5)
    assert time.monotonic() - t < 3


async def test_ask_echo_refuses_a_private_answer(echo):
    echo.answers = {4: "10.0.0.2"}
    with pytest.raises(EchoError, match="not a public address"):
        await ask(echo, "127.0.0.1", 4)


# ------------------------------------------------------------------ the cache


class Rig:
    """:class:`PublicAddresses` on a hand-driven clock, with scripted reads and asks."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.local: dict[int, str | None] = {4: "81.0.0.2", 6: None}
        self.reads = 0
        self.asked: list[tuple[str, int, float]] = []
        self.answers: dict[int, str | Exception] = {4: "81.0.0.99", 6: "2a00:2::99"}
        self.warnings: list[str] = []
        self.pub = PublicAddresses(
            monotonic=lambda: self.now, warn=self.warnings.append, read=self.read, ask=self.ask
        )

    async def read(self) -> dict[int, str | None]:
        self.reads += 1
        if isinstance(self.local, Exception):
            raise self.local
        return dict(self.local)

    async def ask(self, url: str, version: int, timeout: float, **_: object) -> str:
        self.asked.append((url, version, timeout))
        answer = self.answers[version]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def current(self, **over: object) -> dict[str, str | None]:
        kw: dict[str, object] = {
            "enabled": True,
            "refresh": 300.0,
            "urls": {4: None, 6: None},
            "ttl": 3600.0,
            "timeout": 5.0,
        }
        kw.update(over)
        return await self.pub.current(**kw)  # type: ignore[arg-type]


async def test_interfaces_are_read_once_per_refresh():
    rig = Rig()
    assert await rig.current() == {"publicIpv4": "81.0.0.2", "publicIpv6": None}
    rig.local = {4: "81.0.0.3", 6: "2a00:2::2"}
    rig.now += 299
    assert await rig.current() == {"publicIpv4": "81.0.0.2", "publicIpv6": None}  # cached
    assert rig.reads == 1
    rig.now += 1
    assert await rig.current() == {"publicIpv4": "81.0.0.3", "publicIpv6": "2a00:2::2"}
    assert rig.reads == 2


async def test_a_failed_read_keeps_the_last_addresses_and_the_heartbeat():
    rig = Rig()
    await rig.current()
    rig.local = OSError(97, "Address family not supported")  # type: ignore[assignment]
    rig.now += 300
    assert await rig.current() == {"publicIpv4": "81.0.0.2", "publicIpv6": None}
    assert rig.warnings == ["public addresses: reading the interfaces failed: OSError: [Errno 97] "
                            "Address family not supported"]  # fmt: skip


async def test_disabled_reads_nothing():
    rig = Rig()
    urls = {4: "https://echo4.example/", 6: None}
    assert await rig.current(enabled=False, urls=urls) == {"publicIpv4": None, "publicIpv6": None}
    assert (rig.reads, rig.asked) == (0, [])


async def test_the_echo_answer_wins_and_is_kept_for_its_ttl():
    rig = Rig()
    urls = {4: "https://echo4.example/", 6: "https://echo6.example/"}
    assert await rig.current(urls=urls, timeout=2.5) == {
        "publicIpv4": "81.0.0.99",
        "publicIpv6": "2a00:2::99",
    }
    assert sorted(rig.asked) == [("https://echo4.example/", 4, 2.5), ("https://echo6.example/", 6, 2.5)]
    rig.answers = {4: "81.0.0.98", 6: "2a00:2::98"}
    rig.now += 3599
    assert await rig.current(urls=urls) == {"publicIpv4": "81.0.0.99", "publicIpv6": "2a00:2::99"}
    assert len(rig.asked) == 2
    rig.now += 1
    assert await rig.current(urls=urls) == {"publicIpv4": "81.0.0.98", "publicIpv6": "2a00:2::98"}
    assert len(rig.asked) == 4


async def test_an_echo_failure_falls_back_and_is_retried_after_the_refresh():
    rig = Rig()
    urls = {4: "https://echo4.example/", 6: None}
    rig.answers[4] = EchoError("HTTP 500")
    # Never a good answer: the interface address.
    assert await rig.current(urls=urls) == {"publicIpv4": "81.0.0.2", "publicIpv6": None}
    assert rig.warnings == ["public IPv4 address from https://echo4.example/: HTTP 500"]
    rig.now += 299
    await rig.current(urls=urls)
    assert len(rig.asked) == 1  # not asked on every heartbeat
    rig.now += 1
    rig.answers[4] = "81.0.0.99"
    assert await rig.current(urls=urls) == {"publicIpv4": "81.0.0.99", "publicIpv6": None}
    # A later failure keeps the last good answer.
    rig.answers[4] = RuntimeError("surprise")
    rig.now += 3600
    assert await rig.current(urls=urls) == {"publicIpv4": "81.0.0.99", "publicIpv6": None}
    assert rig.warnings[-1] == "public IPv4 address from https://echo4.example/: RuntimeError: surprise"
    assert len(rig.asked) == 3


# ------------------------------------------------------------------ config


def heartbeat_section(raw: dict, remote: dict | None = None):
    cfg, warnings = build_config(raw, env={}, remote=remote) if remote else build_config(raw, env={})
    disabled, enabled = disabled_plugins(cfg, {})
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    sections = structure_plugin_sections(cfg, pm)
    return sections, [*warnings, *sections.warnings]


def test_config_defaults_and_checks():
    base = {"node": {"name": "jp1", "id": 1}, "controlPlane": {"url": "https://cp.example", "token": TOKEN}}
    sections, _ = heartbeat_section(base)
    hb = sections.values["heartbeat"]
    assert (hb.public_addresses, hb.public_ipv4_url, hb.public_ipv6_url) == (True, None, None)
    assert (hb.public_address_refresh, hb.public_ip_url_ttl, hb.public_ip_url_timeout) == (300, 3600, 5)
    sections, _ = heartbeat_section(
        {**base, "heartbeat": {"publicIpv4Url": "http://api4.ipify.org", "publicIpUrlTimeout": 60}}
    )
    assert sections.problems["heartbeat"] == [
        "heartbeat.publicIpv4Url: must be an https:// URL",
        "heartbeat.publicIpUrlTimeout: must be 0.5-30 seconds",
    ]


def test_the_control_plane_cannot_set_the_echo_urls():
    local = {
        "bootstrap": {"apiUrl": "https://cp.example", "nodeName": "jp1", "token": "tok-123456"},
        "heartbeat": {"publicIpv6Url": "https://api6.ipify.org"},
    }
    remote = {
        "heartbeat": {
            "publicIpv4Url": "https://evil.example/",
            "publicIpv6Url": "https://evil.example/",
            "publicAddresses": True,
        }
    }
    sections, warnings = heartbeat_section(local, remote)
    hb = sections.values["heartbeat"]
    assert (hb.public_ipv4_url, hb.public_ipv6_url) == (None, "https://api6.ipify.org")
    assert any("heartbeat.publicIpv4Url" in w for w in warnings), warnings


# ------------------------------------------------------------------ in the heartbeat


async def test_the_heartbeat_reports_the_addresses(fake_cp, agent_harness, monkeypatch, tmp_path):
    reads = []

    async def fake_read() -> dict[int, str | None]:
        reads.append(1)
        return {4: "81.0.0.2", 6: None}

    monkeypatch.setattr(public, "interface_addresses", fake_read)
    cfg = {
        "node": {"name": "jp1", "id": 1},
        "controlPlane": {"url": fake_cp.url, "token": TOKEN},
        "heartbeat": {"publicIpv6Url": "https://[::1]:9/"},  # nothing listens: a failed ask
    }
    async with agent_harness(cfg, plugins=[("heartbeat", moenet_heartbeat)]) as h:
        [req] = await fake_cp.wait_for("heartbeat")
        event = await h.agent.scheduler.run_now("heartbeat")
    assert event.ok, event.error
    status = req.body["status"]
    assert (status["publicIpv4"], status["publicIpv6"]) == ("81.0.0.2", None)
    assert reads == [1]  # the second run used the cache
