"""BGP community tables: the DN42 standard ``(64511, x)`` and MoeNet's large communities.

One module so the numbers live in one place and tests can check them against
the standard. The Go agent got region (47-53) and bandwidth (21-25) wrong; these
tables follow the DN42 wiki.

Source of the DN42 tables: DN42 wiki, ``howto/Bird-communities.md``
(https://dn42.dev/howto/Bird-communities), sections "BGP community criteria" and
"Route Origin" (regions first defined December 2015, extended May 2022; the range
41-70 is reserved for regions, 58-70 are not assigned yet; countries are
1000 + ISO-3166-1 numeric).
"""

from __future__ import annotations

import math
import re

DN42_COMMUNITY_ASN = 64511

#: (64511, x) latency tier x for RTT in (e^(x-1), e^x] ms; tier 9 is everything above e^8.
LATENCY_TIERS: dict[int, tuple[float, float]] = {
    x: (0.0 if x == 1 else math.exp(x - 1), math.inf if x == 9 else math.exp(x)) for x in range(1, 10)
}

#: (64511, x) bandwidth: at least 10^(x-22) Mbit/s (21 = 0.1 Mbit ... 29 = 10 Tbit).
BANDWIDTH_MBIT: dict[int, float] = {x: 10.0 ** (x - 22) for x in range(21, 30)}

#: (64511, x) encryption of the link (wiki ``howto/BGP-communities``, 2025 table).
#: WireGuard is 34; WireGuard with a pre-shared key is 35 (the PSK adds
#: post-quantum resistance); 36 is post-quantum forward secrecy (Rosenpass).
CRYPTO: dict[int, str] = {
    31: "not encrypted",
    32: "encrypted with an unsafe VPN solution",
    33: "encrypted with a safe VPN solution, no PFS",
    34: "encrypted with a safe VPN solution with PFS",
    35: "encrypted with a safe VPN solution with PFS and post-quantum resistance",
    36: "encrypted with post-quantum forward secrecy",
}
CRYPTO_RANGE = range(31, 37)
CRYPTO_WIREGUARD = 34
CRYPTO_WIREGUARD_PSK = 35

#: (64511, x) route-origin region. 41-70 is the region range; 58-70 are unassigned.
REGIONS: dict[int, str] = {
    41: "Europe",
    42: "North America-E",
    43: "North America-C",
    44: "North America-W",
    45: "Central America",
    46: "South America-E",
    47: "South America-W",
    48: "Africa-N (above Sahara)",
    49: "Africa-S (below Sahara)",
    50: "Asia-S (IN, PK, BD)",
    51: "Asia-SE (TH, SG, PH, ID, MY)",
    52: "Asia-E (JP, CN, KR)",
    53: "Pacific & Oceania (AU, NZ, FJ)",
    54: "Antarctica",
    55: "Asia-N (RU)",
    56: "Asia-W (IR, TR, UAE)",
    57: "Central Asia (AF, UZ, KZ)",
}
REGION_RANGE = range(41, 71)

#: (64511, 1000 + ISO-3166-1 numeric) route-origin country.
COUNTRY_BASE = 1000
COUNTRY_RANGE = range(1001, 2000)

#: Region symbols, by meaning. The Go agent sent names like ``DN42_REGION_AS_E``
#: (with wrong numbers behind them); we map the *meaning* to the right number.
#: ``SA`` and ``AF`` are ambiguous since 2022 (E/W, N/S) and are refused.
REGION_SYMBOLS: dict[str, int] = {
    "EU": 41,
    "NA_E": 42,
    "NA_C": 43,
    "NA_W": 44,
    "CA": 45,
    "SA_E": 46,
    "SA_W": 47,
    "AF_N": 48,
    "AF_S": 49,
    "AS_S": 50,
    "AS_SE": 51,
    "AS_E": 52,
    "OC": 53,
    "AN": 54,
    "AS_N": 55,
    "AS_W": 56,
    "ME": 56,  # Go agent's "Middle East" = Asia-W
    "AS_C": 57,
}
AMBIGUOUS_REGION_SYMBOLS: dict[str, str] = {"SA": "SA_E (46) or SA_W (47)", "AF": "AF_N (48) or AF_S (49)"}

#: Bandwidth symbols by meaning (the Go agent's ``DN42_BW_<x>_PLUS``).
BANDWIDTH_SYMBOLS: dict[str, int] = {
    "100K": 21,
    "1M": 22,
    "10M": 23,
    "100M": 24,
    "1G": 25,
    "10G": 26,
    "100G": 27,
    "1T": 28,
    "10T": 29,
}

#: Action communities.
GRACEFUL_SHUTDOWN = (65535, 0)  # RFC 8326
NO_EXPORT = (65535, 65281)
NO_ADVERTISE = (65535, 65282)

# ----------------------------------------------------------------- MoeNet large communities
#
# (OWNAS, type, value). Internal only: stripped from eBGP imports (a neighbour
# must not forge them) and from eBGP exports.

LC_CONTINENT = 1  # (OWNAS, 1, continent code): continent where the route entered MoeNet
LC_SUBREGION = 2  # (OWNAS, 2, subregion code): subregion where it entered
LC_NODE = 3  # (OWNAS, 3, node id): node where it entered (the exit for traffic to it)
LC_BANDWIDTH = 5  # (OWNAS, 5, Mbit/s): bandwidth of that node

CONTINENTS: dict[str, int] = {"AS": 100, "NA": 200, "EU": 300, "OC": 400, "OTHER": 500}
SUBREGIONS: dict[str, int] = {
    "AS_E": 101,
    "AS_SE": 102,
    "AS_S": 103,
    "AS_N": 104,
    "NA_E": 201,
    "NA_C": 202,
    "NA_W": 203,
    "CA": 204,
    "SA": 205,
    "EU_W": 301,
    "EU_C": 302,
    "EU_E": 303,
    "OC": 401,
    "AF": 501,
    "ME": 502,
}
#: Continents next to each other (symmetric); informational since cold potato
#: ranks by the DN42 origin region (see :data:`LOCAL_PREF`).
ADJACENT_CONTINENTS: frozenset[frozenset[int]] = frozenset(
    {frozenset({CONTINENTS["AS"], CONTINENTS["OC"]}), frozenset({CONTINENTS["NA"], CONTINENTS["EU"]})}
)

#: Local preference defaults (the CP's ``policy`` may change each; docs/bird.md).
#: Set once, where a route enters the network (eBGP import), and carried
#: unchanged over iBGP, so every node ranks every exit the same way and BGP's
#: own order (AS path length, eBGP before iBGP, IGP metric) picks among equals:
#:
#: - ``ebgp``: every route learned over eBGP;
#: - ``direct_bonus``: added when the peer is the origin (AS path length 1);
#: - ``cold_potato_penalty``: subtracted, by the exit node, from what it passes
#:   to the other nodes over iBGP when the route's DN42 origin region
#:   (64511, 41..70) is not the exit node's own region. Only iBGP copies lose
#:   it: a node's own eBGP route never ranks below another node's copy of the
#:   same route for it. Smaller than ``direct_bonus``, so a direct session with
#:   the origin anywhere still wins over a transit path in the right region;
#: - ``drained``: GRACEFUL_SHUTDOWN and maintenance (RFC 8326).
LOCAL_PREF: dict[str, int] = {
    "ebgp": 200,
    "direct_bonus": 100,
    "cold_potato_penalty": 50,
    "drained": 0,
}

#: AS numbers that never belong in an AS path (IANA "Special-Purpose AS Numbers"
#: registry plus the reserved 65552-131071 of the 32-bit registry), as inclusive
#: ranges. Left out on purpose: the private ranges 64512-65534 and
#: 4200000000-4294967294 (DN42 runs in them) and AS112 (a real, anycast AS).
BOGON_ASNS: tuple[tuple[int, int], ...] = (
    (0, 0),  # RFC 7607
    (23456, 23456),  # AS_TRANS, RFC 6793
    (64496, 64511),  # documentation, RFC 5398
    (65535, 65535),  # last 16-bit, RFC 7300
    (65536, 65551),  # documentation, RFC 5398
    (65552, 131071),  # IANA reserved
    (4294967295, 4294967295),  # last 32-bit, RFC 7300
)


def is_bogon_asn(asn: int) -> bool:
    """True for an AS number in :data:`BOGON_ASNS`."""
    return any(lo <= asn <= hi for lo, hi in BOGON_ASNS)


def bogon_asn_set() -> str:
    """:data:`BOGON_ASNS` as the body of a BIRD int set (``0, 23456, 64496..64511, ...``)."""
    return ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in BOGON_ASNS)


def bandwidth_community(mbit: float) -> int:
    """DN42 bandwidth community value (21..29) for a link speed in Mbit/s."""
    best = 21
    for value, floor in sorted(BANDWIDTH_MBIT.items()):
        if mbit >= floor:
            best = value
    return best


def adjacent_continents(continent: int) -> list[int]:
    """Continent codes adjacent to ``continent``, sorted."""
    return sorted(c for pair in ADJACENT_CONTINENTS if continent in pair for c in pair if c != continent)


_SYMBOL_PREFIXES = re.compile(r"^(DN42_REGION_|DN42_BW_|LC_ORIGIN_|LC_SUBREGION_|LC_SUB_|LC_)")


def symbol_key(text: str) -> str:
    """``DN42_REGION_AS_E`` -> ``AS_E``, ``DN42_BW_1G_PLUS`` -> ``1G``."""
    key = _SYMBOL_PREFIXES.sub("", text.strip().upper())
    return key.removesuffix("_PLUS")
