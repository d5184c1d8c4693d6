"""The health verdict of one eBGP session: ``healthy``, ``degraded`` or ``down``, with reasons.

Pure: :func:`assess` takes the facts the ``metricCollector`` gathered (routing
daemon, tunnel counters, RTT, the last sessionSync report) as plain values and
applies the rules below; no I/O, no clock (ages are computed by the caller).

**down** (the session carries no traffic, or cannot):

- the routing daemon could not be asked (its state is unknown, nothing to trust);
- the routing backend has no protocol for the session, or every protocol it
  should have is missing from the daemon;
- no protocol of the session is BGP ``Established`` (one reason per protocol:
  ``BGP Active: Socket: Connection refused``);
- the tunnel never completed a handshake;
- the tunnel is kept alive (persistent keepalive set, so traffic is expected)
  and its last handshake is older than WireGuard's Reject-After-Time
  (:data:`REJECT_AFTER_SECONDS`): its keys are expired, no packet passes.

**degraded** (it works, but not as it should):

- one of split ``_v4`` / ``_v6`` protocols is down or missing while the other is
  ``Established``;
- an ``Established`` protocol's channel imported 0 routes, filtered some
  (``ipv4: 3 routes filtered``), is not up, or hit a route limit (receive,
  import or export: ``ipv4: import limit hit (9000)``);
- a kept-alive tunnel's handshake is older than :data:`REKEY_OVERDUE_SECONDS`
  (the rekey is failing) or its counters could not be read;
- the RTT probes lost more than :data:`LOSS_DEGRADED_PERCENT`;
- sessionSync's last report for the session was an error.

**healthy** otherwise. The verdict is the worst rule that fired; reasons keep
the rule order (routing, tunnel, latency, sync).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

__all__ = [
    "LATENCY_STALE_SECONDS",
    "LOSS_DEGRADED_PERCENT",
    "REJECT_AFTER_SECONDS",
    "REKEY_OVERDUE_SECONDS",
    "Health",
    "LimitHit",
    "ProtocolFacts",
    "SessionFacts",
    "TunnelFacts",
    "Verdict",
    "assess",
    "is_established",
]

REJECT_AFTER_SECONDS = 180.0
"""WireGuard's Reject-After-Time (whitepaper §6.1): a session's keys are refused
180 s after the handshake that made them. A tunnel whose latest handshake is
older, while traffic is expected, cannot carry a packet: ``down``."""

REKEY_OVERDUE_SECONDS = 135.0
"""Rekey-After-Time (120 s) plus three Rekey-Timeout (5 s) retries: a tunnel that
sends (persistent keepalive every few seconds) starts a new handshake once its
keys are 120 s old and normally completes it within a retry or two. Older than
this, the rekey is failing and expiry (:data:`REJECT_AFTER_SECONDS`) is near:
``degraded``."""

LOSS_DEGRADED_PERCENT = 5.0
"""RTT probe loss above this share (percent) marks the link ``degraded``. A round
sends only a handful of probes per link (each lost one is 10 % or more), so any
loss in such a round counts; the margin keeps one lost probe of a large round
(ICMP rate limiting at the far end) from flagging an otherwise clean link."""

LATENCY_STALE_SECONDS = 900.0
"""An RTT measurement older than this (three rounds at the usual 300 s interval)
no longer says anything about the link: it is still reported, with its time,
but the collector leaves it out of the health facts."""


class Verdict(enum.IntEnum):
    """The value is the ``moenet_sessions_health`` gauge's."""

    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2

    def __str__(self) -> str:
        return self.name.lower()


@attrs.frozen(kw_only=True)
class LimitHit:
    """A route limit a channel hit (BIRD marks it ``[HIT]`` in ``show protocols all``)."""

    channel: str
    limit: str
    """``receive``, ``import`` or ``export``."""
    value: int | None = None
    """The configured maximum, when known."""

    def reason(self) -> str:
        where = f"{self.channel}: {self.limit} limit hit"
        return where if self.value is None else f"{where} ({self.value})"


@attrs.frozen(kw_only=True)
class ProtocolFacts:
    """One routing protocol of a session, as the daemon reported it."""

    name: str
    state: str
    """The protocol state (BIRD: ``up``, ``start``, ``down``, ``stop``, ``flush``)."""
    bgp_state: str | None = None
    """``Established``, ``Active``, ``Connect``, ``Idle``, ``Down`` ... (None if unknown)."""
    info: str = ""
    last_error: str | None = None
    family: str | None = None
    """``ipv4`` / ``ipv6`` for one of split per-family protocols, None for MP-BGP."""
    routes: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)
    """Per up channel: ``imported``, ``filtered``, ``exported``."""
    channels_down: Mapping[str, str] = attrs.field(factory=dict)
    """Channels the protocol has that are not up (channel -> its state)."""
    limits_hit: tuple[LimitHit, ...] = ()
    """Route limits the protocol's channels hit."""

    @property
    def established(self) -> bool:
        return is_established(self.state, self.bgp_state, self.info)

    @property
    def label(self) -> str:
        """How reasons name this protocol: its family for a split one, else nothing."""
        return f"{self.family} session: " if self.family else ""


@attrs.frozen(kw_only=True)
class TunnelFacts:
    """The tunnel's counters (or why they could not be read)."""

    error: str | None = None
    handshake_age: float | None = None
    """Seconds since the latest handshake; None if there never was one."""
    keepalive: int | None = None
    """Persistent keepalive in seconds; set (> 0) means traffic is always expected."""

    @property
    def traffic_expected(self) -> bool:
        return bool(self.keepalive and self.keepalive > 0)


@attrs.frozen(kw_only=True)
class SessionFacts:
    """Everything :func:`assess` judges one session on."""

    expected: tuple[str, ...] = ()
    """Protocol names the routing backend says the session has."""
    protocols: tuple[ProtocolFacts, ...] = ()
    """Those of ``expected`` the daemon reported."""
    routing_error: str | None = None
    """Set when the daemon could not be asked (then ``protocols`` means nothing)."""
    tunnel: TunnelFacts | None = None
    """None when no tunnel backend could be asked at all."""
    loss: float | None = None
    """RTT probe loss in percent (0-100), None when not (recently) measured."""
    sync_error: str | None = None
    """sessionSync's last report for the session, when it was an error."""


@attrs.frozen
class Health:
    verdict: Verdict
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"verdict": str(self.verdict), "reasons": list(self.reasons)}


def is_established(state: str, bgp_state: str | None, info: str = "") -> bool:
    """BGP ``Established`` (from the BGP state, else from BIRD's info column)."""
    if bgp_state is not None:
        return bgp_state == "Established"
    return state == "up" and info.split(" ", 1)[0] == "Established"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _not_established(p: ProtocolFacts) -> str:
    """``BGP Active: Socket: Connection refused``; ``protocol down`` without a BGP state."""
    what = f"BGP {p.bgp_state}" if p.bgp_state else f"protocol {p.state}"
    error = p.last_error
    if not error:
        # BIRD's info column: the BGP state padded, then an optional error text.
        first, _, rest = p.info.strip().partition(" ")
        error = rest.strip() if first == (p.bgp_state or first) else p.info.strip()
    return f"{p.label}{what}: {error}" if error else f"{p.label}{what}"


Finding = tuple[Verdict, str]


def _routing(facts: SessionFacts) -> list[Finding]:
    if facts.routing_error is not None:
        return [(Verdict.DOWN, f"routing daemon unreachable: {facts.routing_error}")]
    if not facts.expected:
        return [(Verdict.DOWN, "no BGP protocol in the routing daemon")]
    found = {p.name: p for p in facts.protocols}
    up = [p for p in facts.protocols if p.established]
    # One protocol up: the others only degrade the session (split v4/v6 half down).
    miss = Verdict.DEGRADED if up else Verdict.DOWN
    out: list[Finding] = []
    for name in facts.expected:
        p = found.get(name)
        if p is None:
            out.append((miss, f"{name}: missing from the routing daemon"))
        elif not p.established:
            out.append((miss, _not_established(p)))
    for p in up:
        for channel, state in sorted(p.channels_down.items()):
            out.append((Verdict.DEGRADED, f"{channel}: channel {state}"))
        for hit in p.limits_hit:
            out.append((Verdict.DEGRADED, hit.reason()))
        for family, r in sorted(p.routes.items()):
            if r.get("imported", 0) == 0:
                out.append((Verdict.DEGRADED, f"{family}: 0 routes imported"))
            if (filtered := r.get("filtered", 0)) > 0:
                out.append((Verdict.DEGRADED, f"{family}: {_plural(filtered, 'route')} filtered"))
    return out


def _tunnel(t: TunnelFacts | None) -> list[Finding]:
    if t is None:
        return []
    if t.error is not None:
        return [(Verdict.DEGRADED, f"tunnel: {t.error}")]
    if t.handshake_age is None:
        return [(Verdict.DOWN, "tunnel: no handshake yet")]
    if not t.traffic_expected:
        # Without keepalives an idle tunnel legitimately lets its keys age: WireGuard
        # only handshakes when there is something to send.
        return []
    age = f"{t.handshake_age:.0f} s ago"
    if t.handshake_age > REJECT_AFTER_SECONDS:
        return [(Verdict.DOWN, f"tunnel: last handshake {age} (keys expired)")]
    if t.handshake_age > REKEY_OVERDUE_SECONDS:
        return [(Verdict.DEGRADED, f"tunnel: last handshake {age} (rekey overdue)")]
    return []


def _latency(loss: float | None) -> list[Finding]:
    if loss is None or loss <= LOSS_DEGRADED_PERCENT:
        return []
    if loss >= 100:
        return [(Verdict.DEGRADED, "no answer to RTT probes (100% loss)")]
    return [(Verdict.DEGRADED, f"{loss:.0f}% RTT probe loss")]


def _sync(error: str | None) -> list[Finding]:
    return [(Verdict.DEGRADED, f"last sync: {error}")] if error else []


def assess(facts: SessionFacts) -> Health:
    """The verdict and reasons for one session (see the module doc for the rules)."""
    findings: Sequence[Finding] = [
        *_routing(facts),
        *_tunnel(facts.tunnel),
        *_latency(facts.loss),
        *_sync(facts.sync_error),
    ]
    verdict = max((v for v, _ in findings), default=Verdict.HEALTHY)
    return Health(verdict, tuple(reason for _, reason in findings))
