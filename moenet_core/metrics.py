"""The agent's own Prometheus registry, the core metrics, and the per-plugin helper.

Each :class:`AgentMetrics` owns a private :class:`CollectorRegistry` (never the
global one), so several agents can live in one test process. Plugins get a
:class:`PluginMetrics` that forces their metric names under ``moenet_<plugin>_``.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .descriptors import HEALTH_VERDICTS, HealthCheck
from .version import __version__

BREAKER_STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}

_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: The line that ends an OpenMetrics document.
_EOF = b"# EOF\n"


class StreamedCollector(Collector, ABC):
    """A collector with too many series to format at once (the sessions plugin's
    21 000 at 1 000 sessions: formatted together, a transient of about 10 MB a
    scrape). ``/metrics`` formats and sends each part :meth:`parts` yields before
    the next is built; :meth:`collect` (in-process readers, filtered scrapes)
    joins the parts into whole families.

    Parts of one family must come one after the other; gauges and untyped
    families only (a counter's or histogram's extra samples would split)."""

    @abstractmethod
    def parts(self) -> Iterator[Metric]:
        """The families in order, each in one or more consecutive parts."""

    def collect(self) -> Iterator[Metric]:
        whole: Metric | None = None
        for part in self.parts():
            if whole is not None and whole.name == part.name:
                whole.samples.extend(part.samples)
                continue
            if whole is not None:
                yield whole
            whole = part
        if whole is not None:
            yield whole


class _Only(Collector):
    """A collector of the given metrics (what an encoder takes)."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics()


class AgentRegistry(CollectorRegistry):
    """prometheus_client's registry, plus :class:`StreamedCollector` s, which
    :meth:`exposition` writes a part at a time."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self._streamed: list[StreamedCollector] = []

    def register_streamed(self, collector: StreamedCollector) -> None:
        self._streamed.append(collector)

    @property
    def has_streamed(self) -> bool:
        return bool(self._streamed)

    def collect(self) -> Iterator[Metric]:
        """Every metric, the streamed collectors' as whole families."""
        yield from super().collect()
        for collector in list(self._streamed):
            yield from collector.collect()

    def exposition(
        self, encoder: Callable[[Collector], bytes], names: Collection[str] | None = None
    ) -> Iterator[bytes]:
        """The registry as ``encoder`` (prometheus_client's, for the negotiated
        format) writes it, in chunks: the registered collectors at once, then each
        streamed part on its own (the header of a family repeated by a later part
        dropped). ``names``: only these families (``/metrics?name[]=...``)."""
        end = b""

        def body(doc: bytes) -> bytes:
            nonlocal end
            if doc.endswith(_EOF):  # OpenMetrics ends each document; once is right
                end, doc = _EOF, doc[: -len(_EOF)]
            return doc

        base = self.restricted_registry(names) if names is not None else _Only(super().collect)
        yield body(encoder(base))
        last = None
        for collector in list(self._streamed):
            for part in collector.parts():
                if names is not None and part.name not in names:
                    continue
                doc = body(encoder(_Only(functools.partial(tuple, (part,)))))
                if part.name == last:
                    while doc.startswith(b"# "):  # HELP and TYPE: sample lines never start so
                        doc = doc[doc.index(b"\n") + 1 :]
                last = part.name
                yield doc
        yield end


class HealthCollector(Collector):
    """``moenet_health_check{check,plugin}``, read from the plugins at scrape time."""

    def __init__(self, checks: Callable[[], Sequence[HealthCheck]]) -> None:
        self._checks = checks

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "moenet_health_check",
            "Node health checks: 0 healthy, 1 degraded, 2 down.",
            labels=["check", "plugin"],
        )

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "moenet_health_check",
            "Node health checks: 0 healthy, 1 degraded, 2 down.",
            labels=["check", "plugin"],
        )
        for check in self._checks():
            family.add_metric([check.name, check.plugin], HEALTH_VERDICTS.index(check.verdict))
        yield family


class AgentMetrics:
    """Core metrics. Every name is documented in ``docs/metrics.md``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else AgentRegistry()
        r = self.registry
        self.info = Gauge("moenet_agent_info", "Agent version (value is always 1).", ["version"], registry=r)
        self.info.labels(version=__version__).set(1)
        self.start_time = Gauge(
            "moenet_agent_start_time_seconds", "Unix time the agent process started.", registry=r
        )
        self.plugins = Gauge("moenet_agent_plugins", "Plugins by load status.", ["status"], registry=r)
        self.maintenance = Gauge(
            "moenet_agent_maintenance", "1 while the node is in maintenance (drained), else 0.", registry=r
        )
        self.cp_requests = Counter(
            "moenet_cp_requests_total",
            "Control-plane calls by resource, method and outcome (ok, rejected, unavailable, breaker_open).",
            ["resource", "method", "result"],
            registry=r,
        )
        self.cp_retries = Counter(
            "moenet_cp_retries_total",
            "Control-plane request attempts that were retried.",
            ["resource"],
            registry=r,
        )
        self.cp_duration = Histogram(
            "moenet_cp_request_duration_seconds",
            "Duration of one control-plane call including retries.",
            ["resource"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.breaker_state = Gauge(
            "moenet_cp_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", registry=r
        )
        self.task_runs = Counter(
            "moenet_task_runs_total",
            "Task runs by outcome (ok, error, timeout).",
            ["task", "result"],
            registry=r,
        )
        self.task_duration = Histogram(
            "moenet_task_duration_seconds",
            "Duration of task runs.",
            ["task"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.task_last_success = Gauge(
            "moenet_task_last_success_timestamp_seconds",
            "Unix time of the task's last successful run.",
            ["task"],
            registry=r,
        )
        self.sessions = Gauge("moenet_sessions", "eBGP sessions by reported status.", ["status"], registry=r)

    def for_plugin(self, plugin: str) -> PluginMetrics:
        return PluginMetrics(self.registry, plugin)


class PluginMetrics:
    """Metric factory for one plugin: names are ``moenet_<plugin>_<name>``."""

    def __init__(self, registry: CollectorRegistry, plugin: str) -> None:
        self.registry = registry
        self.prefix = "moenet_" + re.sub(r"[^a-z0-9_]", "_", plugin.lower()) + "_"

    def _name(self, name: str) -> str:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        return name if name.startswith(self.prefix) else self.prefix + name

    def full_name(self, name: str) -> str:
        """``moenet_<plugin>_<name>``: the name a family built for
        :meth:`register_collector` must carry."""
        return self._name(name)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self._name(name), doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self._name(name), doc, list(labels), registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
    ) -> Histogram:
        if buckets is None:
            return Histogram(self._name(name), doc, list(labels), registry=self.registry)
        return Histogram(self._name(name), doc, list(labels), buckets=tuple(buckets), registry=self.registry)

    def register_collector(self, collector: Collector) -> None:
        """Add a pull collector. Its ``collect()`` runs on the event loop during a
        scrape: read cached state only, never do I/O. A :class:`StreamedCollector`
        is written to ``/metrics`` a part at a time."""
        if isinstance(collector, StreamedCollector) and isinstance(self.registry, AgentRegistry):
            self.registry.register_streamed(collector)
        else:
            self.registry.register(collector)
