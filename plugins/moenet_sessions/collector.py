"""The ``metricCollector`` task: per-session BGP, routes, tunnel and RTT facts,
reported to the control plane, exported to Prometheus, judged healthy or not.

One run:

1. **Inventory**: the sessions the agent configured (``Previous.configured``
   in the sessions store) and sessionSync's last report per session.
2. **Routing**: ONE ``RoutingBackend.protocols()`` call (one BIRD round-trip,
   ``show protocols all``) for every session, and ``fragment_protocols("sessions")``
   (synchronous, no I/O) to map each session uuid to its protocol names: one
   MP-BGP protocol, or ``_v4`` / ``_v6`` ones whose counts are summed per family.
3. **Tunnels** (at the same time as 2): ``TunnelBackend.stats()`` per session
   interface, a few at a time; a failing call (or no tunnel backend) becomes a
   health reason, never the run's exception.
4. **RTT**: the latest measurement per session from the ``latency`` provider.
5. **Health** (:mod:`.health`), **metrics**, then **report**:
   ``POST /agent/{node}/report`` (skipped with no sessions). Metrics and the
   health verdicts are updated before the POST, so a CP outage still leaves
   ``/metrics`` and ``/status`` current; the outage then fails the run with a
   :class:`MetricCollectorError` (logged once per outage, not every minute).
   An unreachable routing daemon is handled alike: every session is ``down``
   with the reason, the report still goes out (state ``unknown``), and the run
   fails so ``/status`` shows it.

What the Go agent's collector got wrong (go-agent.md §11) and this one does not:
route counts were always 0 (a framing bug cut ``show protocols all`` short, and
only the first channel was read), one BIRD command per session, no IPv6 counts,
no "since", no tunnel counters, no RTT, no uuid in the report, and every
Prometheus metric stayed at 0.

Report body (Go-compatible keys kept: ``node_id``, ``timestamp``, per session
``name``, ``type``, ``state``, ``info``, ``routes_imported``, ``routes_exported``)::

    {"node_id": "hkg1", "timestamp": 1718000000, "sessions": [{
        "uuid": "...", "name": "peer", "asn": 4242420002, "interface": "dn42-2",
        "type": "bgp", "status": 1, "state": "up", "info": "Established",
        "bgpState": "Established", "since": 1717990000,
        "protocols": [{"name": "dn42_4242420002_ab12cd", "state": "up",
                       "bgp_state": "Established", "since": 1717990000,
                       "info": "Established", "last_error": null}],
        "routes": {"ipv4": {"imported": 12, "filtered": 0, "exported": 40}, "ipv6": {...}},
        "routes_imported": 30, "routes_exported": 80,
        "limits": [{"protocol": "dn42_4242420002_ab12cd", "channel": "ipv4",
                    "limit": "import", "max": 9000, "hit": false}, ...],
        "tunnel": {"latestHandshake": 1717999990, "handshakeAgeSeconds": 10,
                   "rxBytes": 123, "txBytes": 456},
        "rtt_ms": 12.3, "loss": 0.0, "latencyTier": 3, "rttMeasuredAt": 1717999900,
        "health": {"verdict": "healthy", "reasons": []}}]}

``limits`` lists every route limit of the session's channels as BIRD shows it
(``Receive limit:  18000 [HIT]``): ``limit`` is ``receive``, ``import`` or
``export``, ``hit`` whether BIRD marks it hit; a hit one is also a health reason.

``status`` is the code of sessionSync's last report for the session (null
before the first); ``since`` is BIRD's epoch seconds (the latest state change
of the session's protocols). ``tunnel`` is ``{"error": "..."}`` when the
counters could not be read. The RTT keys are present only when the provider
has a measurement (``rtt_ms`` is null when no probe was answered; ``loss`` is
in percent as in the ``rtt`` report).

Prometheus (``moenet_sessions_*``; labels ``session`` (uuid), ``asn``,
``interface``, plus ``protocol`` / ``family`` / ``direction`` / ``state`` where
named): ``bgp_up``, ``bgp_state_info``, ``bgp_state_change_timestamp_seconds``,
``routes``, ``route_limit``, ``route_limit_hit``, ``tunnel_last_handshake_timestamp_seconds``,
``tunnel_handshake_age_seconds``, ``tunnel_rx_bytes``, ``tunnel_tx_bytes``,
``rtt_seconds``, ``loss_ratio``, ``latency_tier``, ``health`` and
``health_sessions{verdict}``. Every series a run did not set (a session that
disappeared, a protocol that went away, a state that changed, a measurement no
longer available) is removed at the end of the run: no stale series.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import attrs
from prometheus_client.core import GaugeMetricFamily, Metric

from moenet_core import (
    ControlPlaneError,
    EncodedJson,
    LinkLatency,
    MoenetError,
    ProtocolState,
    RoutingBackend,
    SessionStatus,
    StreamedCollector,
    TunnelBackend,
    TunnelStats,
    map_bounded,
    status_to_wire,
)

from .health import (
    LATENCY_STALE_SECONDS,
    Health,
    LimitHit,
    ProtocolFacts,
    SessionFacts,
    TunnelFacts,
    Verdict,
    assess,
    is_established,
)
from .records import ConfiguredSession, Report
from .store import SessionStore

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = [
    "OWNER",
    "REPORT_RESOURCE",
    "TASK_NAME",
    "TUNNEL_CONCURRENCY",
    "MetricCollector",
    "MetricCollectorError",
]

TASK_NAME = "metricCollector"
_METRICS_KEY = "metricCollector.metrics"
REPORT_RESOURCE = "report"
OWNER = "sessions"
TUNNEL_CONCURRENCY = 8
"""Tunnel counter reads in flight at once (each is a netlink and a UAPI round-trip)."""

LatencyProvider = Callable[[str], LinkLatency | None]

_SESSION = ("session", "asn", "interface")
_FAMILY_SUFFIX = {"_v4": "ipv4", "_v6": "ipv6"}
_ROUTE_DIRECTIONS = ("imported", "filtered", "exported")
#: BIRD's channel lines for route limits (``Import limit:   9000 [HIT]``), by limit.
_LIMIT_KEYS = {"receive": "Receive limit", "import": "Import limit", "export": "Export limit"}


class MetricCollectorError(MoenetError):
    """A collection run could not do all of its job (metrics and health were still updated)."""


@attrs.frozen(kw_only=True)
class _Entry:
    """One session's inventory record."""

    uuid: str
    configured: ConfiguredSession
    report: Report | None

    @property
    def name(self) -> str:
        return self.configured.peer.name

    @property
    def asn(self) -> int | None:
        return self.configured.peer.asn

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.uuid, str(self.asn) if self.asn is not None else "", self.configured.interface)


class _Family(NamedTuple):
    """One labelled per-session gauge family (its values live in :class:`_Sample` s)."""

    name: str
    doc: str
    labelnames: tuple[str, ...]


# The families, in this order (indexes into _Metrics.families).
(
    _BGP_UP,
    _BGP_STATE,
    _BGP_SINCE,
    _ROUTES,
    _HANDSHAKE_AT,
    _HANDSHAKE_AGE,
    _RX,
    _TX,
    _RTT,
    _LOSS,
    _TIER,
    _LIMIT,
    _LIMIT_HIT,
    _HEALTH,
) = range(14)
_FAMILY_COUNT = 14
_PROTOCOL_FAMILIES = frozenset((_BGP_UP, _BGP_STATE, _BGP_SINCE, _LIMIT, _LIMIT_HIT))
_TUNNEL_FAMILIES = frozenset((_HANDSHAKE_AT, _HANDSHAKE_AGE, _RX, _TX))
_LATENCY_FAMILIES = frozenset((_RTT, _LOSS, _TIER))
#: Sessions per part of a family written to /metrics (see StreamedCollector).
_PART_SESSIONS = 100


@attrs.frozen
class _ProtocolSample:
    """What one protocol of a session exports."""

    name: str
    up: int
    state: str
    """The ``bgp_state_info`` label: the BGP state, or BIRD's protocol state."""
    since: int | None
    limits: tuple[_Limit, ...]


@attrs.frozen(kw_only=True)
class _Sample:
    """One session's facts from the last run, the source of its metric series
    (built at scrape time) and of its ``/status`` health.

    A series per dict entry (and a ``prometheus_client`` child before that: about
    1 KB each, 30 MB at 1 000 sessions) cost several KB a session; this record
    keeps only the numbers and the label strings the session already has."""

    uuid: str
    name: str
    asn: int | None
    labels: tuple[str, str, str]
    protocols: tuple[_ProtocolSample, ...]
    routes: tuple[tuple[str, str, int], ...]
    """(family, direction, count), summed over the session's protocols."""
    tunnel: TunnelStats | None
    handshake_age: float | None
    latency: LinkLatency | None
    verdict: Verdict
    reasons: tuple[str, ...]
    bgp_state: str | None
    since: int | str | None

    def series(self) -> Iterator[tuple[int, tuple[str, ...], float]]:
        """(family index, label values, value) of every series this session exports."""
        for family in range(_FAMILY_COUNT):
            for key, value in self.rows(family):
                yield family, key, value

    def rows(self, family: int) -> Iterator[tuple[tuple[str, ...], float]]:
        """(label values, value) of this session's series in ``family``."""
        labels = self.labels
        if family in _PROTOCOL_FAMILIES:
            for p in self.protocols:
                if family == _BGP_UP:
                    yield (*labels, p.name), p.up
                elif family == _BGP_STATE:
                    yield (*labels, p.name, p.state), 1
                elif family == _BGP_SINCE:
                    if p.since is not None:
                        yield (*labels, p.name), p.since
                else:
                    for x in p.limits:
                        if family == _LIMIT_HIT:
                            yield (*labels, p.name, x.channel, x.limit), 1 if x.hit else 0
                        elif x.value is not None:
                            yield (*labels, p.name, x.channel, x.limit), x.value
        elif family == _ROUTES:
            for route_family, direction, n in self.routes:
                yield (*labels, route_family, direction), n
        elif family in _TUNNEL_FAMILIES:
            t = self.tunnel
            if t is None:
                return
            if family == _HANDSHAKE_AT:
                yield labels, t.latest_handshake or 0
            elif family == _HANDSHAKE_AGE:
                if self.handshake_age is not None:
                    yield labels, self.handshake_age
            else:
                yield labels, t.rx_bytes if family == _RX else t.tx_bytes
        elif family in _LATENCY_FAMILIES:
            lat = self.latency
            if lat is None:
                return
            if family == _RTT:
                if lat.rtt_ms is not None:
                    yield labels, lat.rtt_ms / 1000.0
            elif family == _LOSS:
                yield labels, lat.loss / 100.0
            elif lat.tier is not None:
                yield labels, lat.tier
        elif family == _HEALTH:
            yield labels, int(self.verdict)

    def keys(self) -> set[tuple[int, tuple[str, ...]]]:
        return {(family, key) for family, key, _ in self.series()}

    def health(self) -> dict[str, Any]:
        """The session's entry in :meth:`MetricCollector.health_info`."""
        routes_in = sum(n for _, d, n in self.routes if d == "imported")
        routes_out = sum(n for _, d, n in self.routes if d == "exported")
        lat = self.latency
        return {
            "name": self.name,
            "asn": self.asn,
            "interface": self.labels[2],
            "verdict": str(self.verdict),
            "reasons": list(self.reasons),
            "bgpState": self.bgp_state,
            "since": self.since,
            "routesIn": routes_in,
            "routesOut": routes_out,
            "limitsHit": [
                f"{p.name} {x.channel} {x.limit}" for p in self.protocols for x in p.limits if x.hit
            ],
            "rttMs": round(lat.rtt_ms, 3) if lat is not None and lat.rtt_ms is not None else None,
        }


class _SeriesCollector(StreamedCollector):
    """Exports the per-session series at scrape time (no I/O: from the last run's
    samples), a family at a time and :data:`_PART_SESSIONS` sessions per part."""

    def __init__(self, metrics: _Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        for f in self.metrics.families:
            yield GaugeMetricFamily(f.name, f.doc, labels=f.labelnames)

    def parts(self) -> Iterator[Metric]:
        samples = list(self.metrics.samples.values())
        for index, f in enumerate(self.metrics.families):
            for start in range(0, max(len(samples), 1), _PART_SESSIONS):
                part = GaugeMetricFamily(f.name, f.doc, labels=f.labelnames)
                for sample in samples[start : start + _PART_SESSIONS]:
                    for key, value in sample.rows(index):
                        part.add_metric(key, float(value))
                yield part


class _Metrics:
    """The collector's gauge families and the last run's samples, created once per registry."""

    def __init__(self, ctx: PluginContext) -> None:
        m = ctx.metrics

        def family(name: str, doc: str, extra: Iterable[str] = ()) -> _Family:
            return _Family(m.full_name(name), doc, (*_SESSION, *extra))

        self.families: tuple[_Family, ...] = (
            family("bgp_up", "1 while the session's BGP protocol is Established, else 0.", ["protocol"]),
            family(
                "bgp_state_info",
                "The BGP state of the session's protocol (value 1; the state is the label; "
                "BIRD's protocol state when there is no BGP state).",
                ["protocol", "state"],
            ),
            family(
                "bgp_state_change_timestamp_seconds",
                "Unix time of the protocol's last state change (BIRD's 'since').",
                ["protocol"],
            ),
            family(
                "routes",
                "Routes per address family: imported (accepted), filtered (rejected by the import "
                "filter, kept in the import table) and exported; summed over split v4/v6 protocols.",
                ["family", "direction"],
            ),
            family(
                "tunnel_last_handshake_timestamp_seconds",
                "Unix time of the tunnel's latest WireGuard handshake; 0 if it never completed one.",
            ),
            family(
                "tunnel_handshake_age_seconds",
                "Seconds since the tunnel's latest handshake (absent if it never completed one).",
            ),
            # The byte counts are gauges holding the kernel's (or wireguard-go's) own
            # counters as read: a prometheus_client Counter can only be incremented by
            # what counts, and the device's counter restarts at 0 when the interface is
            # recreated. rate()/increase() work on these gauges and handle that reset.
            family("tunnel_rx_bytes", "Bytes received on the session's tunnel (device counter)."),
            family("tunnel_tx_bytes", "Bytes sent on the session's tunnel (device counter)."),
            family("rtt_seconds", "Mean round-trip time to the peer over the tunnel (last RTT round)."),
            family("loss_ratio", "Share of RTT probes lost in the last RTT round (0-1)."),
            family("latency_tier", "DN42 latency tier (1-9) of the link, after hysteresis."),
            family(
                "route_limit",
                "Configured route limit of a channel (receive, import or export), as BIRD shows it.",
                ["protocol", "channel", "limit"],
            ),
            family(
                "route_limit_hit",
                "1 while BIRD marks the channel's route limit hit ([HIT]), else 0.",
                ["protocol", "channel", "limit"],
            ),
            family("health", "Session health: 0 healthy, 1 degraded, 2 down."),
        )
        self.samples: dict[str, _Sample] = {}
        """uuid -> the session's sample from the last run (replaced whole each run:
        a session, protocol, state or measurement that is gone leaves no series)."""
        self.samples_at: int | None = None
        self.by_verdict = m.gauge("health_sessions", "Configured sessions per health verdict.", ["verdict"])
        m.register_collector(_SeriesCollector(self))

    def replace(self, samples: dict[str, _Sample], at: int) -> int:
        """Make ``samples`` the current ones; returns how many series went away."""
        gone = 0
        for uuid, old in self.samples.items():
            new = samples.get(uuid)
            if new is None:
                gone += sum(1 for _ in old.series())
            elif new != old:
                gone += len(old.keys() - new.keys())
        self.samples, self.samples_at = samples, at
        return gone


def _metrics_for(ctx: PluginContext) -> _Metrics:
    """One metric set per agent and plugin (kept in the plugin's stash): a rebuilt
    collector reuses the gauges instead of failing on a duplicate registration."""
    found = ctx.stash.get(_METRICS_KEY)
    if not isinstance(found, _Metrics):
        found = ctx.stash[_METRICS_KEY] = _Metrics(ctx)
    return found


def _since(value: str | None) -> int | str | None:
    """BIRD's ``since`` as epoch seconds when it is one (``timeformat "%s"``), else as given."""
    if value is not None and value.isdigit():
        return int(value)
    return value


def _family(name: str, expected: Sequence[str]) -> str | None:
    if len(expected) < 2:
        return None
    for suffix, family in _FAMILY_SUFFIX.items():
        if name.endswith(suffix):
            return family
    return None


@attrs.frozen(kw_only=True)
class _Limit:
    """One route limit of one channel, as ``show protocols all`` shows it."""

    channel: str
    limit: str
    value: int | None
    hit: bool


def _limits(p: ProtocolState) -> list[_Limit]:
    """Every route limit of the protocol's channels (``Receive limit:  4 [HIT]``).
    Read when the backend offers channel details (BIRD's protocols carry
    ``channels``), duck-typed: plugins never import each other."""
    out: list[_Limit] = []
    channels = getattr(p, "channels", None)
    if not isinstance(channels, Mapping):
        return out
    for name, ch in sorted(channels.items()):
        details = getattr(ch, "details", None)
        if not isinstance(details, Mapping):
            continue
        for limit, key in _LIMIT_KEYS.items():
            text = details.get(key)
            if not isinstance(text, str):
                continue
            first = text.split(" ", 1)[0]
            value = int(first) if first.isascii() and first.isdigit() and len(first) <= 12 else None
            out.append(_Limit(channel=str(name), limit=limit, value=value, hit="[HIT]" in text))
    return out


def _protocol_facts(p: ProtocolState, expected: Sequence[str], limits: Sequence[_Limit]) -> ProtocolFacts:
    """Facts of one protocol. Channel states and route limits are read when the
    backend offers them (BIRD's protocols carry ``channels``), duck-typed: plugins
    never import each other."""
    down: dict[str, str] = {}
    channels = getattr(p, "channels", None)
    if isinstance(channels, Mapping):
        for name, ch in channels.items():
            state = getattr(ch, "state", None)
            if isinstance(state, str) and state != "UP":
                down[str(name)] = state
    hits = [LimitHit(channel=x.channel, limit=x.limit, value=x.value) for x in limits if x.hit]
    return ProtocolFacts(
        name=p.name,
        state=p.state,
        bgp_state=p.bgp_state,
        info=p.info,
        last_error=p.last_error,
        family=_family(p.name, expected),
        routes={f: dict(r) for f, r in p.routes.items()},
        channels_down=down,
        limits_hit=tuple(hits),
    )


def _sync_error(report: Report | None) -> str | None:
    if (
        report is None
        or report.removed
        or report.status
        not in (
            SessionStatus.ERROR,
            SessionStatus.SETUP_FAILED,
        )
    ):
        return None
    return f"{report.status.name}: {report.last_error}" if report.last_error else report.status.name


class MetricCollector:
    """The ``metricCollector`` task (see the module doc)."""

    def __init__(
        self,
        ctx: PluginContext,
        latency: LatencyProvider | None = None,
        store: Callable[[], SessionStore | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.latency = latency
        self.store = store
        """The sessionSync task's store, whose memory is the newest state (no file
        read, no second copy of 1 000 sessions); None, or it answering None: the
        state file is read each run."""
        self.metrics = _metrics_for(ctx)
        self.last: dict[str, Any] | None = None
        """Summary of the last run (also the run's result)."""
        self._cp_problem: str | None = None
        self._routing_problem: str | None = None
        self._limit_sets: dict[tuple[_Limit, ...], tuple[_Limit, ...]] = {}
        """The distinct route-limit sets of the last run (see :meth:`_one_copy`)."""
        ctx.stash[TASK_NAME] = self  # the sessionSync task's /status reads the health

    # ---------------------------------------------------------------- facts

    def inventory(self) -> list[_Entry]:
        shared = self.store() if self.store is not None else None
        previous = (shared or SessionStore(self.ctx.state)).load_previous()
        return [
            _Entry(uuid=u, configured=c, report=previous.reported.get(u))
            for u, c in sorted(previous.configured.items())
        ]

    async def read_routing(
        self,
    ) -> tuple[dict[str, ProtocolState], Mapping[str, tuple[str, ...]], str | None]:
        """(protocols by name, protocol names per session, error): ONE daemon call."""
        try:
            routing = self.ctx.backend("routing", RoutingBackend)
            names = routing.fragment_protocols(OWNER)
            protocols = await routing.protocols()
        except Exception as exc:
            return {}, {}, str(exc) or type(exc).__name__
        return {p.name: p for p in protocols}, names, None

    async def read_tunnels(self, entries: Sequence[_Entry]) -> dict[str, TunnelStats | str]:
        """Counters per interface, or the error text (for every interface when there
        is no tunnel backend). Never raises."""
        try:
            tunnel = self.ctx.backend("tunnel", TunnelBackend)
        except Exception as exc:
            return {e.configured.interface: f"no tunnel backend: {exc}" for e in entries}

        async def one(name: str) -> TunnelStats | str:
            try:
                return await tunnel.stats(name)
            except Exception as exc:
                return str(exc) or type(exc).__name__

        names = sorted({e.configured.interface for e in entries})
        results = await map_bounded(one, names, TUNNEL_CONCURRENCY)
        return dict(zip(names, results, strict=True))

    def _latency(self, uuid: str) -> LinkLatency | None:
        if self.latency is None:
            return None
        try:
            return self.latency(uuid)
        except Exception as exc:
            self.ctx.log.warning("latency provider failed for session {}: {}", uuid, exc)
            return None

    # ------------------------------------------------------------------ run

    async def run_once(self) -> dict[str, Any]:
        started = time.monotonic()
        now, samples, parts, routing_error = await self._collect(self.inventory())
        counts = {str(v): 0 for v in Verdict}
        for sample in samples.values():
            counts[str(sample.verdict)] += 1
        stale = self.metrics.replace(samples, int(now))
        for verdict_name, n in counts.items():
            self.metrics.by_verdict.labels(verdict_name).set(n)

        problems: list[str] = []
        if routing_error is not None:
            problems.append(f"routing daemon unreachable: {routing_error}")
        self._note("routing", routing_error)
        reported = False
        if parts:
            head = json.dumps({"node_id": self.ctx.node, "timestamp": int(now)}, separators=(",", ":"))
            report = EncodedJson(b"".join((head[:-1].encode(), b',"sessions":[', b",".join(parts), b"]}")))
            parts.clear()
            try:
                await self.ctx.cp.send(REPORT_RESOURCE, report)
            except ControlPlaneError as exc:
                problems.append(f"report not delivered: {exc}")
                self._note("cp", str(exc))
            else:
                reported = True
                self._note("cp", None)
        self.last = {
            "at": int(now),
            "sessions": len(samples),
            "health": counts,
            "reported": reported,
            "staleSeriesRemoved": stale,
            "problem": "; ".join(problems) or None,
            "seconds": round(time.monotonic() - started, 4),
        }
        if problems:
            raise MetricCollectorError("; ".join(problems))
        return self.last

    async def _collect(
        self, entries: list[_Entry]
    ) -> tuple[float, dict[str, _Sample], list[bytes], str | None]:
        """(time, sample per session, each session's report entry as JSON, routing error).

        Each entry is encoded as soon as it is built, and the daemons' answers go
        with this frame: at 1 000 sessions the report as dicts, the protocols and
        the tunnel counters alive at once were a transient of several MB."""
        protocols: Mapping[str, ProtocolState] = {}
        names: Mapping[str, tuple[str, ...]] = {}
        routing_error: str | None = None
        tunnels: Mapping[str, TunnelStats | str] = {}
        if entries:
            # BIRD and the tunnels are independent: read them at the same time.
            (protocols, names, routing_error), tunnels = await asyncio.gather(
                self.read_routing(), self.read_tunnels(entries)
            )
        now = self.ctx.clock.time()
        lower = {k.lower(): v for k, v in names.items()}

        parts: list[bytes] = []
        samples: dict[str, _Sample] = {}
        limit_sets: dict[tuple[_Limit, ...], tuple[_Limit, ...]] = {}
        for e in entries:
            expected = tuple(names.get(e.uuid, lower.get(e.uuid.lower(), ())))
            found = [protocols[n] for n in expected if n in protocols]
            stats = tunnels.get(e.configured.interface)
            latency = self._latency(e.uuid)
            fresh = latency is not None and now - latency.measured_at <= LATENCY_STALE_SECONDS
            limits = {p.name: self._one_copy(tuple(_limits(p)), limit_sets) for p in found}
            facts = SessionFacts(
                expected=expected,
                protocols=tuple(_protocol_facts(p, expected, limits[p.name]) for p in found),
                routing_error=routing_error,
                tunnel=self._tunnel_facts(stats, e, now),
                loss=latency.loss if latency is not None and fresh else None,
                sync_error=_sync_error(e.report),
            )
            verdict = assess(facts)
            routes = _sum_routes(found)
            body = self._session_body(
                e, expected, found, limits, routes, stats, latency, verdict, now, routing_error
            )
            samples[e.uuid] = _sample(
                e, found, limits, routes, stats, latency, verdict, body, now, self.metrics.samples.get(e.uuid)
            )
            parts.append(json.dumps(body, separators=(",", ":")).encode())
        self._limit_sets = limit_sets
        return now, samples, parts, routing_error

    def _one_copy(
        self, limits: tuple[_Limit, ...], seen: dict[tuple[_Limit, ...], tuple[_Limit, ...]]
    ) -> tuple[_Limit, ...]:
        """One object per distinct set of route limits, kept from run to run: the
        sessions of a node mostly share their import and export limits, and the
        samples keep them (six records a session at 1 000 sessions: 0.5 MB)."""
        return seen.setdefault(limits, self._limit_sets.get(limits, limits))

    def _note(self, what: str, problem: str | None) -> None:
        """Log a problem once when it starts and once when it ends (not every run)."""
        attr = "_cp_problem" if what == "cp" else "_routing_problem"
        before = getattr(self, attr)
        setattr(self, attr, problem)
        text = "control plane" if what == "cp" else "routing daemon"
        if problem is not None and before is None:
            self.ctx.log.warning("metricCollector: {} failing, reports/metrics degraded: {}", text, problem)
        elif problem is None and before is not None:
            self.ctx.log.info("metricCollector: {} back", text)

    # ------------------------------------------------------------ the report

    @staticmethod
    def _tunnel_facts(stats: TunnelStats | str | None, e: _Entry, now: float) -> TunnelFacts | None:
        if stats is None:
            return None
        keepalive = e.configured.tunnel.keepalive
        if isinstance(stats, str):
            return TunnelFacts(error=stats, keepalive=keepalive)
        age = None if stats.latest_handshake is None else max(0.0, now - stats.latest_handshake)
        return TunnelFacts(handshake_age=age, keepalive=keepalive)

    def _session_body(
        self,
        e: _Entry,
        expected: Sequence[str],
        found: Sequence[ProtocolState],
        limits: Mapping[str, Sequence[_Limit]],
        routes: Mapping[str, Mapping[str, int]],
        stats: TunnelStats | str | None,
        latency: LinkLatency | None,
        health: Health,
        now: float,
        routing_error: str | None,
    ) -> dict[str, Any]:
        state, info, bgp = _aggregate_state(expected, found, routing_error)
        sinces = [s for p in found if isinstance(s := _since(p.since), int)]
        since: int | str | None = max(sinces) if sinces else (_since(found[0].since) if found else None)
        body: dict[str, Any] = {
            "uuid": e.uuid,
            "name": e.name,
            "asn": e.asn,
            "interface": e.configured.interface,
            "type": "bgp",
            "status": status_to_wire(
                e.report.status, self.ctx.config.control_plane.status_scheme, deleted=e.report.deleted
            )
            if e.report is not None
            else None,
            "state": state,
            "info": info,
            "bgpState": bgp,
            "since": since,
            "protocols": [
                {
                    "name": p.name,
                    "state": p.state,
                    "bgp_state": p.bgp_state,
                    "since": _since(p.since),
                    "info": p.info,
                    "last_error": p.last_error,
                }
                for p in found
            ],
            "routes": {f: dict(r) for f, r in routes.items()},
            "routes_imported": sum(r["imported"] for r in routes.values()),
            "routes_exported": sum(r["exported"] for r in routes.values()),
            "limits": [
                {"protocol": p.name, "channel": x.channel, "limit": x.limit, "max": x.value, "hit": x.hit}
                for p in found
                for x in limits[p.name]
            ],
            "tunnel": _tunnel_json(stats, now),
        }
        if latency is not None:
            body["rtt_ms"] = round(latency.rtt_ms, 3) if latency.rtt_ms is not None else None
            body["loss"] = latency.loss
            body["latencyTier"] = latency.tier
            body["rttMeasuredAt"] = int(latency.measured_at)
        body["health"] = health.to_json()
        return body

    # ---------------------------------------------------------------- status

    def health_info(self) -> dict[str, Any]:
        """Per-session verdict, reasons, BGP state and since from the last run (no I/O)."""
        counts = {str(v): 0 for v in Verdict}
        sessions: dict[str, dict[str, Any]] = {}
        for uuid, sample in self.metrics.samples.items():
            counts[str(sample.verdict)] += 1
            sessions[uuid] = sample.health()
        return {"at": self.metrics.samples_at, "counts": counts, "sessions": sessions}

    def status_info(self) -> dict[str, Any]:
        """For ``/status``: the last run's summary and every session's health."""
        return {"lastRun": self.last, "health": self.health_info()}


def _aggregate_state(
    expected: Sequence[str], found: Sequence[ProtocolState], routing_error: str | None
) -> tuple[str, str, str | None]:
    """The session's Go-compatible ``state`` and ``info`` and its ``bgpState``:
    ``up``/``Established`` only when every expected protocol is there and
    Established; else the first protocol that is not, or ``down`` when one is
    missing from the daemon."""
    if routing_error is not None:
        return "unknown", routing_error, None
    if not found:
        return "down", "not in the routing daemon", None
    info = found[0].info if len(found) == 1 else "; ".join(f"{p.name}: {p.info}" for p in found)
    not_up = [p for p in found if not _up(p)]
    if not_up:
        return not_up[0].state, info, not_up[0].bgp_state or not_up[0].state
    if len(found) < len(expected):
        missing = ", ".join(n for n in expected if n not in {p.name for p in found})
        return "down", f"{info}; {missing}: not in the routing daemon", None
    return "up", info, "Established"


def _sum_routes(found: Sequence[ProtocolState]) -> dict[str, dict[str, int]]:
    """Imported / filtered / exported per family, summed over the session's protocols
    (split ``_v4`` / ``_v6`` ones, or an MP-BGP one with both families)."""
    routes: dict[str, dict[str, int]] = {}
    for p in found:
        for family, r in p.routes.items():
            into = routes.setdefault(family, dict.fromkeys(_ROUTE_DIRECTIONS, 0))
            for d in _ROUTE_DIRECTIONS:
                into[d] += int(r.get(d, 0) or 0)
    return routes


def _sample(
    e: _Entry,
    found: Sequence[ProtocolState],
    limits: Mapping[str, tuple[_Limit, ...]],
    routes: Mapping[str, Mapping[str, int]],
    stats: TunnelStats | str | None,
    latency: LinkLatency | None,
    health: Health,
    body: Mapping[str, Any],
    now: float,
    old: _Sample | None = None,
) -> _Sample:
    """The session's sample. Parts equal to those of its ``old`` sample are the
    old objects: the samples live until the next run, and 1 000 sessions' labels,
    protocols and routes made anew every minute, while the run's transients
    were alive, left the heap fragmented by megabytes."""
    tunnel = stats if isinstance(stats, TunnelStats) else None
    hs = tunnel.latest_handshake if tunnel is not None else None
    new = _Sample(
        uuid=e.uuid,
        name=e.name,
        asn=e.asn,
        labels=e.labels,
        protocols=tuple(
            _ProtocolSample(
                p.name,
                1 if _up(p) else 0,
                p.bgp_state or p.state,
                since if isinstance(since := _since(p.since), int) else None,
                limits[p.name],
            )
            for p in found
        ),
        routes=tuple((family, d, n) for family, r in routes.items() for d, n in r.items()),
        tunnel=tunnel,
        handshake_age=max(0.0, now - hs) if hs is not None else None,
        latency=latency,
        verdict=health.verdict,
        reasons=tuple(health.reasons),
        bgp_state=body["bgpState"],
        since=body["since"],
    )
    if old is None:
        return new
    if new == old:
        return old
    return attrs.evolve(
        new,
        uuid=_kept(new.uuid, old.uuid),
        name=_kept(new.name, old.name),
        labels=_kept(new.labels, old.labels),
        protocols=_kept(new.protocols, old.protocols),
        routes=_kept(new.routes, old.routes),
        tunnel=_kept(new.tunnel, old.tunnel),
        latency=_kept(new.latency, old.latency),
        reasons=_kept(new.reasons, old.reasons),
        bgp_state=_kept(new.bgp_state, old.bgp_state),
    )


_T = TypeVar("_T")


def _kept(new: _T, old: _T) -> _T:
    """``old`` when it equals ``new`` (the older object stays, the new one goes)."""
    return old if new == old else new


def _up(p: ProtocolState) -> bool:
    return is_established(p.state, p.bgp_state, p.info)


def _tunnel_json(stats: TunnelStats | str | None, now: float) -> dict[str, Any] | None:
    if stats is None:
        return None
    if isinstance(stats, str):
        return {"error": stats}
    hs = stats.latest_handshake
    return {
        "latestHandshake": int(hs) if hs is not None else None,
        "handshakeAgeSeconds": int(max(0.0, now - hs)) if hs is not None else None,
        "rxBytes": stats.rx_bytes,
        "txBytes": stats.tx_bytes,
    }
