"""The session health rules (``moenet_sessions.health``): one table row per rule."""

from __future__ import annotations

from typing import Any

import pytest
from moenet_sessions.health import (
    LOSS_DEGRADED_PERCENT,
    REJECT_AFTER_SECONDS,
    REKEY_OVERDUE_SECONDS,
    Health,
    LimitHit,
    ProtocolFacts,
    SessionFacts,
    TunnelFacts,
    Verdict,
    assess,
    is_established,
)

MP = "dn42_4242420002_ab12cd"
V4, V6 = MP + "_v4", MP + "_v6"
GOOD_ROUTES = {
    "ipv4": {"imported": 10, "filtered": 0, "exported": 40},
    "ipv6": {"imported": 12, "filtered": 0, "exported": 41},
}
FRESH = TunnelFacts(handshake_age=30.0, keepalive=25)


def est(name: str = MP, **kw: Any) -> ProtocolFacts:
    kw.setdefault("routes", GOOD_ROUTES)
    return ProtocolFacts(name=name, state="up", bgp_state="Established", info="Established", **kw)


def down(name: str = MP, bgp: str | None = "Active", **kw: Any) -> ProtocolFacts:
    kw.setdefault("state", "start")
    return ProtocolFacts(name=name, bgp_state=bgp, **kw)


def facts(*protocols: ProtocolFacts, expected: tuple[str, ...] | None = None, **kw: Any) -> SessionFacts:
    kw.setdefault("tunnel", FRESH)
    return SessionFacts(
        expected=expected if expected is not None else tuple(p.name for p in protocols),
        protocols=protocols,
        **kw,
    )


H, D, X = Verdict.HEALTHY, Verdict.DEGRADED, Verdict.DOWN

CASES: list[tuple[str, SessionFacts, Verdict, list[str]]] = [
    # --- healthy
    ("mp-bgp established, routes both ways", facts(est()), H, []),
    (
        "split v4/v6 both established",
        facts(
            est(V4, family="ipv4", routes={"ipv4": GOOD_ROUTES["ipv4"]}),
            est(V6, family="ipv6", routes={"ipv6": GOOD_ROUTES["ipv6"]}),
        ),
        H,
        [],
    ),
    ("no tunnel facts at all", facts(est(), tunnel=None), H, []),
    ("loss at the threshold", facts(est(), loss=LOSS_DEGRADED_PERCENT), H, []),
    (
        "idle tunnel without keepalive may age",
        facts(est(), tunnel=TunnelFacts(handshake_age=REJECT_AFTER_SECONDS * 3, keepalive=None)),
        H,
        [],
    ),
    (
        "handshake just inside the rekey window",
        facts(est(), tunnel=TunnelFacts(handshake_age=REKEY_OVERDUE_SECONDS, keepalive=25)),
        H,
        [],
    ),
    # --- down: routing
    (
        "routing daemon unreachable",
        facts(routing_error="BIRD at /run/bird.ctl: connection refused", expected=(MP,)),
        X,
        ["routing daemon unreachable: BIRD at /run/bird.ctl: connection refused"],
    ),
    ("no protocol for the session", facts(expected=()), X, ["no BGP protocol in the routing daemon"]),
    ("protocol missing from BIRD", facts(expected=(MP,)), X, [f"{MP}: missing from the routing daemon"]),
    (
        "BGP Active with a last error",
        facts(down(last_error="Socket: Connection refused", info="Active        Socket: Connection refused")),
        X,
        ["BGP Active: Socket: Connection refused"],
    ),
    (
        "BGP Active, error only in the info column",
        facts(down(info="Active        Received: Administrative shutdown")),
        X,
        ["BGP Active: Received: Administrative shutdown"],
    ),
    ("BGP Connect without error", facts(down(bgp="Connect", info="Connect")), X, ["BGP Connect"]),
    (
        "protocol down without a BGP state",
        facts(down(bgp=None, state="down", info="")),
        X,
        ["protocol down"],
    ),
    (
        "split: both halves down",
        facts(
            down(V4, family="ipv4", info="Connect", bgp="Connect"),
            down(V6, family="ipv6", info="Idle", bgp="Idle"),
        ),
        X,
        ["ipv4 session: BGP Connect", "ipv6 session: BGP Idle"],
    ),
    # --- down: tunnel
    (
        "tunnel never handshook",
        facts(est(), tunnel=TunnelFacts(handshake_age=None, keepalive=25)),
        X,
        ["tunnel: no handshake yet"],
    ),
    (
        "handshake older than reject-after with keepalive",
        facts(est(), tunnel=TunnelFacts(handshake_age=REJECT_AFTER_SECONDS + 20, keepalive=25)),
        X,
        ["tunnel: last handshake 200 s ago (keys expired)"],
    ),
    # --- degraded
    (
        "split: v6 half down",
        facts(
            est(V4, family="ipv4", routes={"ipv4": GOOD_ROUTES["ipv4"]}),
            down(V6, family="ipv6", last_error="Socket: Connection reset by peer"),
        ),
        D,
        ["ipv6 session: BGP Active: Socket: Connection reset by peer"],
    ),
    (
        "split: v6 half missing from BIRD",
        facts(est(V4, family="ipv4", routes={"ipv4": GOOD_ROUTES["ipv4"]}), expected=(V4, V6)),
        D,
        [f"{V6}: missing from the routing daemon"],
    ),
    (
        "0 routes imported on one family",
        facts(est(routes={**GOOD_ROUTES, "ipv6": {"imported": 0, "filtered": 0, "exported": 41}})),
        D,
        ["ipv6: 0 routes imported"],
    ),
    (
        "filtered routes, counted",
        facts(est(routes={**GOOD_ROUTES, "ipv4": {"imported": 10, "filtered": 3, "exported": 40}})),
        D,
        ["ipv4: 3 routes filtered"],
    ),
    (
        "one filtered route, singular",
        facts(est(routes={**GOOD_ROUTES, "ipv4": {"imported": 10, "filtered": 1, "exported": 40}})),
        D,
        ["ipv4: 1 route filtered"],
    ),
    (
        "a channel not up on an established session",
        facts(est(routes={"ipv6": GOOD_ROUTES["ipv6"]}, channels_down={"ipv4": "DOWN"})),
        D,
        ["ipv4: channel DOWN"],
    ),
    (
        "import limit hit",
        facts(est(limits_hit=(LimitHit(channel="ipv4", limit="import"),))),
        D,
        ["ipv4: import limit hit"],
    ),
    (
        "receive and export limits hit",
        facts(
            est(
                limits_hit=(
                    LimitHit(channel="ipv6", limit="receive", value=18000),
                    LimitHit(channel="ipv6", limit="export", value=9000),
                )
            )
        ),
        D,
        ["ipv6: receive limit hit (18000)", "ipv6: export limit hit (9000)"],
    ),
    (
        "rekey overdue",
        facts(est(), tunnel=TunnelFacts(handshake_age=REKEY_OVERDUE_SECONDS + 5, keepalive=25)),
        D,
        ["tunnel: last handshake 140 s ago (rekey overdue)"],
    ),
    (
        "tunnel counters unreadable",
        facts(est(), tunnel=TunnelFacts(error="no such interface", keepalive=25)),
        D,
        ["tunnel: no such interface"],
    ),
    ("loss above the threshold", facts(est(), loss=25.0), D, ["25% RTT probe loss"]),
    ("every probe lost", facts(est(), loss=100.0), D, ["no answer to RTT probes (100% loss)"]),
    (
        "last sync report was an error",
        facts(est(), sync_error="ERROR: tunnel dn42-2: EPERM"),
        D,
        ["last sync: ERROR: tunnel dn42-2: EPERM"],
    ),
    # --- combinations: the worst rule wins, every reason is kept in rule order
    (
        "down beats degraded, reasons in rule order",
        facts(
            down(last_error="Socket: No route to host"),
            tunnel=TunnelFacts(handshake_age=REKEY_OVERDUE_SECONDS + 10, keepalive=25),
            loss=100.0,
        ),
        X,
        [
            "BGP Active: Socket: No route to host",
            "tunnel: last handshake 145 s ago (rekey overdue)",
            "no answer to RTT probes (100% loss)",
        ],
    ),
]


@pytest.mark.parametrize(("case", "session", "verdict", "reasons"), CASES, ids=[c[0] for c in CASES])
def test_rule(case: str, session: SessionFacts, verdict: Verdict, reasons: list[str]) -> None:
    assert assess(session) == Health(verdict, tuple(reasons))


def test_routes_of_a_protocol_that_is_not_established_are_not_judged() -> None:
    # A session going down keeps its last counts for a moment: only BGP speaks then.
    h = assess(facts(down(routes={"ipv4": {"imported": 0, "filtered": 5, "exported": 0}})))
    assert h == Health(X, ("BGP Active",))


@pytest.mark.parametrize(
    ("state", "bgp", "info", "up"),
    [
        ("up", "Established", "Established", True),
        ("start", "Active", "Active        Socket: Connection refused", False),
        ("up", None, "Established   ", True),  # only the row was read (``show protocols``)
        ("start", None, "Connect", False),
        ("down", "Down", "", False),
    ],
)
def test_is_established(state: str, bgp: str | None, info: str, up: bool) -> None:
    assert is_established(state, bgp, info) is up


def test_verdict_values_are_the_gauge_values_and_json_names() -> None:
    assert [(int(v), str(v)) for v in Verdict] == [(0, "healthy"), (1, "degraded"), (2, "down")]
    assert Health(D, ("x",)).to_json() == {"verdict": "degraded", "reasons": ["x"]}
