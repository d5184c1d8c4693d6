"""Shared by the nettools / looking-glass tests: a fake BIRD control socket that
records what it is sent, and the URL bird-lg-go's frontend builds."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

PROTOCOLS_REPLY = (
    "2002-Name       Proto      Table      State  Since         Info\n"
    "1002-device1    Device     ---        up     09:51:06.181  \n"
    " static4    Static     master4    up     09:51:06.181  \n"
    "0000 \n"
)


class FakeBird:
    """A unix socket speaking BIRD's control protocol: greets, honours
    ``restrict`` (unless ``restrict_reply`` says otherwise) and answers every
    other line with ``reply``. ``received`` lists every line it was sent."""

    def __init__(
        self,
        path: Path,
        reply: str = PROTOCOLS_REPLY,
        restrict_reply: str = "0016 Access restricted\n",
        gate: asyncio.Event | None = None,
    ) -> None:
        self.path = path
        self.reply = reply
        self.restrict_reply = restrict_reply
        self.gate = gate
        """When set, commands are answered only once it is set."""
        self.received: list[str] = []
        self.waiting = 0
        """Commands held at the gate now."""
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> FakeBird:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"0001 BIRD 3.3.2 ready.\n")
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                self.received.append(text)
                if self.gate is not None and text != "restrict":
                    self.waiting += 1
                    await self.gate.wait()
                    self.waiting -= 1
                writer.write((self.restrict_reply if text == "restrict" else self.reply).encode())
                await writer.drain()
        writer.close()


def frontend_url(base: str, endpoint: str, command: str) -> str:
    """The URL bird-lg-go's frontend requests (``frontend/lgproxy.go``):
    ``"http://" + host + ":" + port + "/" + url.PathEscape(endpoint) + "?q=" +
    url.QueryEscape(command)``. Go's QueryEscape keeps only ``A-Za-z0-9-_.~``
    and writes a space as ``+``: Python's ``quote_plus`` with nothing extra safe."""
    return f"{base}/{endpoint}?q={quote_plus(command, safe='')}"


#: Every command bird-lg-go's frontend builds (``frontend/webserver.go``, the
#: Telegram bot), with a protocol name, an ASN and addresses filled in as its pages do.
FRONTEND_COMMANDS = (
    "show protocols",
    "show protocols all 'static4'",
    "show route protocol 'static4'",
    "show route protocol 'static4' all",
    "show route protocol 'static4' primary",
    "show route protocol 'static4' all primary",
    "show route filtered protocol 'static4'",
    "show route filtered protocol 'static4' all",
    "show route where bgp_path.last = 4242420001",
    "show route where bgp_path.last = 4242420001 all",
    "show route where bgp_path.last = 4242420001 primary",
    "show route where bgp_path.last = 4242420001 all primary",
    "show route for 172.20.10.5",
    "show route for 172.20.10.5 all",
    "show route where net ~ [ 172.20.0.0/14+ ]",
    "show route where net ~ [ 172.20.0.0/14+ ] all",
    # frontend/telegram_bot.go
    "show route for 172.20.10.5 primary",
    "show route for 172.20.10.5 all primary",
)


# ------------------------------------------------------------------ real BIRD rig

BIRD_NODE = """\
log "{log}" all;
router id {router_id};
protocol device {{}}
protocol static static4 {{ ipv4; route {own4} blackhole; }}
protocol static static6 {{ ipv6; route {own6} blackhole; }}
protocol bgp {peer_name} {{
    local {local} as {asn};
    neighbor {neighbor} as {peer_asn};
    connect delay time 1;
    connect retry time 2;
    ipv4 {{ import all; export all; }};
    ipv6 {{ import all; export all; }};
}}
"""

A4, B4 = "172.20.1.1", "172.20.1.2"
A6, B6 = "fd42:1::1", "fd42:1::2"
ASN_A, ASN_B = 4242420001, 4242420002
NET_A, NET_B = "172.20.10.0/24", "172.20.20.0/24"
NET6_B = "fd42:20::/48"


class TwoNodes:
    """Namespaces ``a`` and ``b`` joined by a veth pair (172.20.1.1/24 and
    fd42:1::1/64 on ``a``, .2 and ::2 on ``b``), each with a real BIRD 3
    speaking eBGP to the other (AS 4242420001 announces 172.20.10.0/24, AS
    4242420002 announces 172.20.20.0/24 and fd42:20::/48). Used as a context
    manager; everything is removed afterwards."""

    def __init__(self, make_ns: Any, tmp: Path) -> None:
        from moenet_bird.testing import BirdDaemon

        from moenet_core.testing import veth_pair

        self.a = make_ns()
        self.b = make_ns()
        veth_pair(self.a, self.b, "veth-a", "veth-b")
        for ns, ifname, v4, v6 in ((self.a, "veth-a", A4, A6), (self.b, "veth-b", B4, B6)):
            ns.run("ip", "addr", "add", f"{v4}/24", "dev", ifname)
            ns.run("ip", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
        self.bird_a = BirdDaemon(self.a, tmp / "bird-a")
        self.bird_b = BirdDaemon(self.b, tmp / "bird-b")
        for daemon, fields in (
            (self.bird_a, {"router_id": A4, "own4": NET_A, "own6": "fd42:10::/48", "peer_name": "peer_b",
                           "local": A4, "asn": ASN_A, "neighbor": B4, "peer_asn": ASN_B}),
            (self.bird_b, {"router_id": B4, "own4": NET_B, "own6": NET6_B, "peer_name": "peer_a",
                           "local": B4, "asn": ASN_B, "neighbor": A4, "peer_asn": ASN_A}),
        ):  # fmt: skip
            conf = daemon.dir / "bird.conf"
            conf.write_text(BIRD_NODE.format(log=daemon.log, **fields))
            daemon.start(conf)

    @property
    def socket_a(self) -> str:
        return str(self.bird_a.socket)

    def wait_established(self, timeout: float = 30.0) -> None:
        """Poll BIRD on ``a`` until the session is up and both of b's prefixes
        arrived (the IPv6 one may come in a later update than the IPv4 one)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            res = self.a.run("birdc", "-s", self.socket_a, "show", "route", "for", "172.20.20.1", check=False)
            if NET_B in res.stdout:
                res = self.a.run(
                    "birdc", "-s", self.socket_a, "show", "route", "for", "fd42:20::1", check=False
                )
                if NET6_B in res.stdout:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"BGP between the nodes never came up:\n{res.stdout}{res.stderr}")
            time.sleep(0.1)

    def __enter__(self) -> TwoNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bird_a.stop()
        self.bird_b.stop()
