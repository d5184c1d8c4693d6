"""Issue 13's "done when": a foreign DN42 peer, configured by hand the wiki's way.

The node (AS4242421234) is the real agent process in a namespace with BIRD 3 and a
fake CP serving one WireGuard session; its only ROA source is the static ROA files
of its local config (``bird.roaFiles``), and neither the local config nor the CP
sets a ROA mode, so the default (strict) applies. The peer (AS4242420077) is
``tests/data/foreign_peer``: a BIRD config written after the DN42 wiki
(``is_valid_network``, ROA tables from the registry's files, ``dn42_import_filter`` /
``dn42_export_filter``) and a WireGuard side set up with ``wg setconf`` and ``ip``.
See ``tests/helpers/foreign_peer.py`` for the rig.

The peer announces, in IPv4 and IPv6: its own net (ROA-valid), a prefix without ROA
(unknown), another AS's prefix (invalid: origin), a more-specific beyond its ROA's
max length (invalid: length), the node's own prefix (a hijack), and non-DN42 space
that a ROA covers (only the address-space check refuses it); IPv6 also a
more-specific of the node's prefix with a ROA naming the peer.

The node must accept exactly the two valid routes (its BIRD's master tables and its
kernel), having received all of them (its import table shows them), report the
session ACTIVE to the CP, and announce its own prefixes, which the wiki peer
accepts (its ROA check passes) with the node's DN42 communities.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers.foreign_peer import (
    NODE_ASN,
    NODE_PREFIX4,
    NODE_PREFIX6,
    PEER_ASN,
    PEER_PROTOCOL,
    SESSION_UUID,
    STATUS_ACTIVE,
    ForeignPeerLab,
    foreign_peer_lab,
    node_bird_config,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VALID4 = {"172.20.77.0/27"}
BAD4 = {
    "172.20.99.0/27",  # ROA unknown
    "172.20.88.0/27",  # ROA invalid: another origin AS
    "172.20.79.0/28",  # ROA invalid: longer than max length
    NODE_PREFIX4,  # hijack of the node's own prefix
    "8.8.8.0/24",  # not DN42 (a ROA covers it)
}
VALID6 = {"fd42:77::/48"}
BAD6 = {
    "fd42:99::/48",
    "fd42:88::/48",
    "fd42:79::/64",
    NODE_PREFIX6,
    "fd42:4242:1234:ff::/64",  # the node's space, ROA-valid for the peer
    "2001:db8::/32",
}

_PREFIX = re.compile(r"^([0-9a-f.:]+/\d+)\s", re.MULTILINE)


def prefixes(text: str) -> set[str]:
    """The networks listed by a ``birdc show route ...``."""
    return set(_PREFIX.findall(text))


def channel_routes(text: str, channel: str) -> dict[str, int]:
    """``Routes: 1 imported, 5 filtered, 2 exported, 1 preferred`` of one channel of a
    ``show protocols all`` as {kind: count}."""
    section = text.split(f"Channel {channel}", 1)[1].split("Channel ", 1)[0]
    m = re.search(r"Routes:\s+(.*)", section)
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", m.group(1))} if m else {}


async def node_bgp_protocol(lab: ForeignPeerLab) -> str | None:
    """The node's eBGP protocol once it is Established."""
    for line in (await lab.birdc("node", "show", "protocols")).splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1] == "BGP" and cols[3] == "up" and cols[-1] == "Established":
            return cols[0]
    return None


async def test_wiki_configured_peer_gets_only_valid_routes_accepted(netns: Any, tmp_path: Path) -> None:
    async with foreign_peer_lab(netns, tmp_path) as lab:
        # The session reaches the CP as ACTIVE (the tunnel and BGP protocol are up).
        report = await lab.wait_reported(STATUS_ACTIVE)
        assert report.body["uuid"] == SESSION_UUID and not report.body.get("lastError"), report.body

        proto = await lab.poll("the node's eBGP session Established", lambda: node_bgp_protocol(lab))
        assert str(PEER_ASN) in proto, proto
        # The policy the node runs: strict, from neither the CP nor the local config.
        filters = (lab.work / "bird" / "filters.conf").read_text()
        assert "ROA strict" in filters and "ROA loose" not in filters
        assert "roaMode" not in node_bird_config()["policy"]
        assert "roaMode" not in json.loads(lab.agent_config_path.read_text())["bird"]

        # Every announced route arrived and went through the import filter.
        async def all_received() -> dict[str, dict[str, int]] | None:
            text = await lab.birdc("node", "show", "protocols", "all", proto)
            counts = {ch: channel_routes(text, ch) for ch in ("ipv4", "ipv6")}
            got4 = counts["ipv4"].get("imported", 0) + counts["ipv4"].get("filtered", 0)
            got6 = counts["ipv6"].get("imported", 0) + counts["ipv6"].get("filtered", 0)
            return counts if (got4, got6) == (len(VALID4 | BAD4), len(VALID6 | BAD6)) else None

        counts = await lab.poll("all of the peer's routes through the node's filters", all_received)
        assert counts["ipv4"]["imported"] == len(VALID4) and counts["ipv4"]["filtered"] == len(BAD4), counts
        assert counts["ipv6"]["imported"] == len(VALID6) and counts["ipv6"]["filtered"] == len(BAD6), counts

        # The import table (Adj-RIB-In) holds every route as received ...
        in4 = prefixes(await lab.birdc("node", "show", "route", "import", "table", f"{proto}.ipv4"))
        in6 = prefixes(await lab.birdc("node", "show", "route", "import", "table", f"{proto}.ipv6"))
        assert in4 == VALID4 | BAD4, in4
        assert in6 == VALID6 | BAD6, in6
        # ... the master tables only the valid ones.
        accepted = prefixes(await lab.birdc("node", "show", "route", "protocol", proto))
        assert accepted == VALID4 | VALID6, accepted
        for bad in BAD4 | BAD6:
            text = await lab.birdc("node", "show", "route", bad, "all", check=False)
            assert proto not in text and ("Network not found" in text or "own4" in text or "own6" in text), (
                text
            )
        # The node's own prefixes stay its own aggregates.
        own = await lab.birdc("node", "show", "route", NODE_PREFIX4, "all")
        assert "own4" in own and proto not in own, own

        # An accepted route: origin the peer, ingress local preference (200 plus the
        # direct bonus 100: path length 1), WireGuard's crypto community (64511, 34).
        route = await lab.birdc("node", "show", "route", "172.20.77.0/27", "all")
        assert re.search(rf"^\s*bgp_path: {PEER_ASN}\s*$", route, re.MULTILINE), route
        assert "bgp_local_pref: 300" in route, route
        assert "(64511,34)" in route, route

        # The node's kernel has exactly the valid routes from BIRD, through the tunnel.
        async def kernel_valid() -> tuple[set[str], set[str]] | None:
            k4 = {r["dst"] for r in await lab.kernel_routes("4")}
            k6 = {r["dst"] for r in await lab.kernel_routes("6")}
            return (k4, k6) if k4 >= VALID4 and k6 >= VALID6 else None

        k4, k6 = await lab.poll("the valid routes in the node's kernel", kernel_valid)
        assert not k4 & BAD4 and not k6 & BAD6, (k4, k6)
        [r4] = [r for r in await lab.kernel_routes("4") if r["dst"] == "172.20.77.0/27"]
        assert r4.get("dev") == lab.node_interface, r4

        # The wiki peer accepted the node's prefixes (its ROA check passed) with the
        # node's communities: origin region Asia-E (64511, 52), country Hong Kong
        # (64511, 1344), crypto 34 (WireGuard, PFS).
        async def peer_learned() -> set[str] | None:
            got = prefixes(await lab.birdc("peer", "show", "route", "protocol", PEER_PROTOCOL))
            return got if {NODE_PREFIX4, NODE_PREFIX6} <= got else None

        learned = await lab.poll("the peer to learn the node's prefixes", peer_learned)
        assert learned == {NODE_PREFIX4, NODE_PREFIX6}, learned
        for prefix in (NODE_PREFIX4, NODE_PREFIX6):
            text = await lab.birdc("peer", "show", "route", prefix, "protocol", PEER_PROTOCOL, "all")
            assert re.search(rf"^\s*bgp_path: {NODE_ASN}\s*$", text, re.MULTILINE), text
            for community in ("(64511,52)", "(64511,1344)", "(64511,34)"):
                assert community in text, (prefix, community, text)
    # Torn down: no tunnel process or control socket of either side is left.
    assert lab.leftovers() == []
