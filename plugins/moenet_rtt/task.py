"""The ``rttMeasurement`` task: probe every offered link, keep tiers, tell everyone.

One run:

1. collects the links other plugins offer (``ctx.link_targets()``, the
   ``moenet_link_targets`` hook); a duplicate ``owner/key`` is measured once;
2. probes them over ICMP out of their own interfaces (:mod:`.icmp`), at most
   ``concurrency`` at a time;
3. updates each link's tier with hysteresis (:mod:`.tier`) and persists the
   per-link state (``links.json`` in the plugin's state directory, written only
   when it changed), dropping links no longer offered;
4. announces the round (``moenet_link_latency``), with ``tier_changed`` set on
   the links whose tier moved, so each owner re-declares its routing once;
5. sets the Prometheus gauges and removes those of links that are gone;
6. reports to the CP (``POST /agent/{node}/rtt``, the Go agent's body plus the
   link's owner, key, interface, tier and labels). A CP failure is logged and
   does not undo anything above: the next round reports again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moenet_core import ControlPlaneError, LinkLatency, LinkTarget, StateError, hookimpl

from .config import RttConfig
from .icmp import DEFAULT_INTERVAL, LinkProbe, Prober
from .tier import Hysteresis, LinkState, update

if TYPE_CHECKING:
    from moenet_core import PluginContext

TASK_NAME = "rttMeasurement"
CP_RESOURCE = "rtt"
STATE_FILE = "links.json"
STATE_VERSION = 1
#: Prometheus labels of every gauge; ``asn`` comes from ``LinkTarget.labels`` ("" when absent).
METRIC_LABELS = ("owner", "key", "interface", "asn")
#: Body keys a target's labels may not override.
_BODY_KEYS = frozenset({"target", "rtt_ms", "loss", "owner", "key", "interface", "tier"})


def link_id(owner: str, key: str) -> str:
    """The per-link key of the state file and ``/status``: ``owner/key``."""
    return f"{owner}/{key}"


@attrs.frozen(kw_only=True)
class LinksDoc:
    """``links.json``: ``{"version": 1, "links": {"<owner>/<key>": LinkState, ...}}``.

    Entries stay raw here: each is read by :meth:`LinkState.from_json`, so an
    invalid one costs only its own link."""

    links: dict[str, Any]


def _migrate(version: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A file without ``"version"`` (hand-written) was read as version 1 before: keep it so."""
    return fields


class _Link(NamedTuple):
    """One link's last round."""

    target: LinkTarget
    result: LinkLatency
    error: str | None


_GAUGES_KEY = "rtt.gauges"
#: The per-link gauges: (name, help).
_GAUGES = (
    (
        "rtt_seconds",
        "Mean ICMP round-trip time of the link's last round; absent when no probe was answered.",
    ),
    ("loss_ratio", "Share of the link's probes lost in the last round (0-1)."),
    (
        "latency_tier",
        "DN42 latency tier (1-9) of the link after hysteresis; absent until a probe was answered.",
    ),
)


class _LinkGauges(Collector):
    """``moenet_rtt_{rtt_seconds,loss_ratio,latency_tier}`` from the last round, built
    at scrape time: a link that is gone, or has no value, has no series."""

    def __init__(self, full_name: Callable[[str], str]) -> None:
        self._names = [(full_name(name), doc) for name, doc in _GAUGES]
        self.links: Callable[[], Mapping[str, _Link]] = dict

    def _families(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc, labels=METRIC_LABELS) for name, doc in self._names]

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        rtt, loss, tier = fams = self._families()
        for link in list(self.links().values()):
            t, r = link.target, link.result
            labels = (t.owner, t.key, t.interface, str(t.labels.get("asn", "")))
            loss.add_metric(labels, r.loss / 100.0)
            if r.rtt_ms is not None:
                rtt.add_metric(labels, r.rtt_ms / 1000.0)
            if r.tier is not None:
                tier.add_metric(labels, r.tier)
        yield from fams


class RttMeasurement:
    """The ``rttMeasurement`` task (one per agent)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self._current: dict[str, _Link] = {}
        """The last round per link: the status entries and the gauges are built from
        it when asked (a ``prometheus_client`` child is about 1 KB, three per link)."""
        # One collector per registry, however often the task is built; it reads the newest task.
        gauges = ctx.stash.get(_GAUGES_KEY)
        if not isinstance(gauges, _LinkGauges):
            gauges = ctx.stash[_GAUGES_KEY] = _LinkGauges(ctx.metrics.full_name)
            ctx.metrics.register_collector(gauges)
        gauges.links = lambda: self._current
        self._saved: dict[str, LinkState] | None = None
        """The states last written (the same frozen objects as ``_states``)."""
        self._states: dict[str, LinkState] = self._load()
        self._errors: dict[str, str] = {}
        self.last_run: float | None = None
        self.last_report_error: str | None = None
        ctx.register_hooks(self)

    @property
    def section(self) -> RttConfig:
        section = self.ctx.section
        return section if isinstance(section, RttConfig) else RttConfig()

    def states(self) -> dict[str, LinkState]:
        """Current per-link hysteresis state (a copy)."""
        return dict(self._states)

    # ------------------------------------------------------------ state file

    def _load(self) -> dict[str, LinkState]:
        # Tiers are re-learnt in a few rounds: a file that cannot be read (corrupt,
        # no 'links' object, or of a newer version) is not fatal, only not used.
        try:
            doc = self.ctx.state.load(STATE_FILE, LinksDoc, version=STATE_VERSION, migrate=_migrate)
        except StateError as exc:
            self.ctx.log.warning("rtt: ignoring the saved tiers ({}); they start afresh", exc)
            return {}
        if doc is None:
            return {}
        out: dict[str, LinkState] = {}
        for key, value in doc.links.items():
            state = LinkState.from_json(value)
            if state is None:
                self.ctx.log.warning("rtt: dropping an invalid saved state for link {}", key)
                continue
            out[str(key)] = state
        self._saved = dict(out)
        return out

    @staticmethod
    def _document(states: Mapping[str, LinkState]) -> LinksDoc:
        return LinksDoc(links={k: states[k].to_json() for k in sorted(states)})

    def _save(self) -> None:
        if self._states == self._saved:
            return
        try:
            self.ctx.state.save(STATE_FILE, self._document(self._states), version=STATE_VERSION)
        except StateError as exc:
            self.ctx.log.error("rtt: cannot save the tiers: {}", exc)
            return
        self._saved = dict(self._states)

    # ------------------------------------------------------------------ run

    def _targets(self) -> list[LinkTarget]:
        seen: set[str] = set()
        out: list[LinkTarget] = []
        for target in self.ctx.link_targets():
            lid = link_id(target.owner, target.key)
            if lid in seen:
                self.ctx.log.warning("rtt: link {} is offered twice; measuring the first", lid)
                continue
            seen.add(lid)
            out.append(target)
        return out

    async def run_once(self) -> dict[str, Any]:
        cfg = self.section
        targets = self._targets()
        count, timeout, concurrency = cfg.probe_settings()
        prober = Prober(count=count, timeout=timeout, interval=DEFAULT_INTERVAL, concurrency=concurrency)
        probes = await prober.probe_all((t.interface, t.addresses) for t in targets)
        measured_at = self.ctx.clock.time()
        params = Hysteresis(margin=cfg.hysteresis, confirm_rounds=cfg.confirm_rounds, alpha=cfg.ewma_alpha)

        results: list[LinkLatency] = []
        for target, probe in zip(targets, probes, strict=True):
            lid = link_id(target.owner, target.key)
            old = self._states.get(lid, LinkState())
            new = update(old, probe.rtt_ms, params)
            self._states[lid] = new
            changed = new.tier is not None and new.tier != old.tier
            if changed:
                self.ctx.log.info(
                    "rtt: link {} ({}) latency tier {} -> {}", lid, target.interface, old.tier, new.tier
                )
            self._note_error(lid, target, probe)
            results.append(
                LinkLatency(
                    owner=target.owner,
                    key=target.key,
                    interface=target.interface,
                    target=probe.target,
                    rtt_ms=probe.rtt_ms,
                    loss=probe.loss,
                    tier=new.tier,
                    measured_at=measured_at,
                    tier_changed=changed,
                )
            )
        offered = {link_id(t.owner, t.key) for t in targets}
        # Links never answered have nothing worth keeping (and are not written).
        self._states = {k: v for k, v in self._states.items() if k in offered and v != LinkState()}
        self._errors = {k: v for k, v in self._errors.items() if k in offered}
        self._save()

        if results:
            self.ctx.emit_link_latency(tuple(results))
        self._current = {
            link_id(t.owner, t.key): _Link(t, r, p.error)
            for t, p, r in zip(targets, probes, results, strict=True)
        }
        self.last_run = measured_at

        reported = await self._report(targets, results, measured_at)
        return {
            "links": len(results),
            "answered": sum(1 for r in results if r.rtt_ms is not None),
            "tierChanges": sorted(link_id(r.owner, r.key) for r in results if r.tier_changed),
            "errors": {
                link_id(t.owner, t.key): p.error for t, p in zip(targets, probes, strict=True) if p.error
            },
            "reported": reported,
        }

    def _note_error(self, lid: str, target: LinkTarget, probe: LinkProbe) -> None:
        """Log a link's error when it appears or changes (not every 5 minutes)."""
        if probe.error is None:
            if self._errors.pop(lid, None) is not None:
                self.ctx.log.info("rtt: link {} ({}) can be probed again", lid, target.interface)
            return
        if self._errors.get(lid) != probe.error:
            self.ctx.log.warning("rtt: link {} ({}): {}", lid, target.interface, probe.error)
        self._errors[lid] = probe.error

    # -------------------------------------------------------------- outputs

    @staticmethod
    def _status_entry(link: _Link) -> dict[str, Any]:
        target, result = link.target, link.result
        return {
            "owner": target.owner,
            "key": target.key,
            "interface": target.interface,
            "target": result.target,
            "rttMs": None if result.rtt_ms is None else round(result.rtt_ms, 3),
            "loss": round(result.loss, 1),
            "tier": result.tier,
            "tierChanged": result.tier_changed,
            "error": link.error,
            "measuredAt": result.measured_at,
        }

    @staticmethod
    def measurement(target: LinkTarget, result: LinkLatency) -> dict[str, Any]:
        """One entry of the CP body: the Go agent's ``target``/``rtt_ms``/``loss``
        first, then the link's identity, tier and labels."""
        rtt = result.rtt_ms
        entry: dict[str, Any] = {
            "target": result.target or (target.addresses[0] if target.addresses else ""),
            "rtt_ms": -1.0 if rtt is None or not math.isfinite(rtt) else round(rtt, 3),
            "loss": round(result.loss, 1),
            "owner": target.owner,
            "key": target.key,
            "interface": target.interface,
            "tier": result.tier,
        }
        for name, value in target.labels.items():
            if isinstance(name, str) and name not in _BODY_KEYS:
                entry[name] = str(value)
        return entry

    async def _report(
        self, targets: list[LinkTarget], results: list[LinkLatency], measured_at: float
    ) -> bool:
        if not results:
            return False
        body = {
            "timestamp": int(measured_at),
            "measurements": [self.measurement(t, r) for t, r in zip(targets, results, strict=True)],
        }
        try:
            await self.ctx.cp.send(CP_RESOURCE, body)
        except ControlPlaneError as exc:
            self.last_report_error = str(exc)
            self.ctx.log.warning("rtt: report of {} links not delivered: {}", len(results), exc)
            return False
        self.last_report_error = None
        return True

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        return {
            "lastRun": self.last_run,
            "links": {lid: self._status_entry(link) for lid, link in self._current.items()},
            "reportError": self.last_report_error,
        }
