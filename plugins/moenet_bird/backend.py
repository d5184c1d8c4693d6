"""The ``routing`` backend ``bird``: every owner's intent, one policy, one coalesced apply.

Other plugins never write BIRD files; they ``declare(owner, fragments)`` and this
backend renders the whole tree (:func:`~moenet_bird.render.render_tree`) from the
CP policy plus every owner's fragments plus the maintenance flag, and hands it to
:class:`~moenet_bird.apply.TreeApplier`.

Fragment payload schemas (plain JSON-able mappings, camelCase keys as in the CP
and config; unknown keys are ignored with a warning in ``/status``):

``declare("sessions", {uuid: payload})``
    One eBGP session per fragment; ``payload`` holds the
    :class:`~moenet_bird.policy.EbgpPeer` fields: ``asn`` (int), ``latency``
    (DN42 tier 1-9), ``bandwidth`` (21-29), ``crypto`` (31-34, default 33),
    ``name``, ``description``, ``interface``, ``neighborLinkLocal``,
    ``neighborIpv6``, ``neighborIpv4``, ``localLinkLocal``, ``localIpv6``,
    ``localIpv4``, ``mpBgp`` (default true), ``extendedNexthop`` (default true),
    ``importLimit``, ``exportLimit``, ``disabled``. ``uuid`` may be omitted (the
    key is used); if given it must equal the key.
``declare("ibgp", {"options": payload, key: neighbour, ...})``
    ``options`` (optional) is :class:`~moenet_bird.policy.IbgpOptions`:
    ``enabled`` (default true; false renders no iBGP session) and
    ``routeReflector`` (this node's role, informational: shown in the files).
    Every other key is one iBGP neighbour (:class:`~moenet_bird.policy.IbgpNeighbor`;
    the key is the owner's choice, the ibgp plugin uses the node id): ``nodeId``
    (1-4294967295), ``nodeName`` (a node name), ``loopbackIpv4`` /
    ``loopbackIpv6`` (at least one; unicast, not link-local; the session runs
    between the IPv6 loopbacks when the neighbour has one), ``isRr`` (the
    neighbour is a route reflector; informational) and ``rrClient`` (render
    ``rr client`` and ``rr cluster id``: this node reflects for it). The owner
    decides the topology; the backend renders exactly the declared sessions,
    except one to this node itself (the policy's ``node.id``). Two neighbours with
    one ``nodeId`` or ``nodeName`` are refused (the later key). The policy's
    ``ibgpPeers`` are parsed but never rendered.
``declare("mesh", {label: payload})``
    One Babel interface per fragment (:class:`~moenet_bird.policy.BabelInterface`):
    ``pattern`` (interface name, may end in ``*``), ``type`` (tunnel / wired /
    wireless), ``rxcost``, ``rttCost``, ``rttMinMs``, ``rttMaxMs``, ``helloIntervalS``.

An invalid fragment lands in ``ApplyResult.rejected[key]`` with the reason and is
left out; the owner's other fragments still apply. An owner's declare replaces
all of its previous fragments. The same holds for a session or iBGP neighbour
that passes validation but that BIRD rejects: when BIRD's check names its own
file (``peers/<symbol>.conf``, ``ibgp/<symbol>.conf``), that fragment is dropped,
reported in ``rejected[key]`` with BIRD's message, and the apply is retried once
without it, so everything else still goes live. It is tried again on every
apply (the next one may be after a template fix), at the cost of one extra check.

Applies are coalesced: declares (and policy or maintenance changes) arriving
while an apply runs, or in the same event-loop turn (plus an optional debounce),
share one render and one configure, and every caller gets that run's result.
The last applied policy and fragments are persisted in the plugin state after
each successful apply, so a restarted agent renders the same tree at once (and,
with unchanged input, writes nothing and reconfigures nothing) instead of
deleting every peer file until the owners have declared again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from loguru import logger

from moenet_core import hookimpl
from moenet_core.backends import ApplyResult, ProtocolState, RoutingBackend
from moenet_core.config import structure
from moenet_core.descriptors import MaintenanceEvent

from .apply import TreeApplier
from .client import BirdClient
from .names import BirdConfigError as RenderError
from .policy import (
    BabelInterface,
    BabelOptions,
    BirdPolicy,
    EbgpPeer,
    IbgpNeighbor,
    IbgpOptions,
    parse_bird_config,
    validate_babel,
    validate_ibgp,
    validate_peers,
)
from .protocol import BirdClientError
from .render import peer_protocol_names, render_tree

if TYPE_CHECKING:
    from loguru import Logger
    from prometheus_client import Counter, Histogram

    from moenet_core.metrics import PluginMetrics
    from moenet_core.state import StateStore

__all__ = ["NO_POLICY", "OWNERS", "STATE_FILE", "BirdRoutingBackend"]

OWNERS = ("sessions", "ibgp", "mesh")
NO_POLICY = "no BIRD policy from the control plane yet"
#: How long a declare on a fresh node waits for the first policy (seconds).
POLICY_WAIT = 30.0
STATE_FILE = "applied.json"

_BASE_PROTOCOLS = frozenset({"moenet_igp", "moenet_lo", "kernel4", "kernel6", "own4", "own6"})


@attrs.define
class _Candidate:
    policy: BirdPolicy
    config_hash: str
    raw: Any


class BirdRoutingBackend(RoutingBackend):
    """The one writer of BIRD configuration (see the module doc)."""

    def __init__(
        self,
        client: BirdClient,
        config_dir: str,
        *,
        state: StateStore | None = None,
        template_dir: str | None = None,
        bird_binary: str | None = None,
        loopback_interface: str = "dummy0",
        maintenance: bool = False,
        debounce: float = 0.0,
        log: Logger | None = None,
        metrics: PluginMetrics | None = None,
        policy_wait: float = POLICY_WAIT,
    ) -> None:
        self.client = client
        self.policy_wait = policy_wait
        self._policy_known = asyncio.Event()
        """Set once a policy exists (restored or from the CP): declares wait for it."""
        self.applier = TreeApplier(config_dir, client, bird_binary=bird_binary)
        self.state = state
        self.template_dir = template_dir or None
        self.loopback_interface = loopback_interface
        self.maintenance = maintenance
        self.debounce = debounce
        self.log: Logger = log or logger

        self._policy: _Candidate | None = None
        self._candidate: _Candidate | None = None
        self._raw: dict[str, dict[str, Any]] = {o: {} for o in OWNERS}
        self._peers: dict[str, EbgpPeer] = {}
        self._ibgp = IbgpOptions()
        self._neighbors: dict[str, IbgpNeighbor] = {}
        self._babel: dict[str, BabelInterface] = {}
        self._warnings: dict[str, list[str]] = {o: [] for o in OWNERS}
        self._rejected: dict[str, dict[str, str]] = {o: {} for o in OWNERS}
        self._bird_rejected: dict[str, dict[str, str]] = {}
        """Per owner, fragments left out of the last apply because BIRD rejected their file."""

        self._next: asyncio.Future[ApplyResult] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._persisted: Any = None

        self.last_result: ApplyResult | None = None
        self.last_apply_at: float | None = None
        self.last_apply_seconds: float | None = None
        self.last_error_at: float | None = None
        self.sync_error: str | None = None
        """Why the last policy from the CP was not taken (set by ``birdConfigSync``)."""
        self._m_applies: Counter | None = None
        self._m_duration: Histogram | None = None
        if metrics is not None:
            self._m_applies = metrics.counter(
                "applies_total",
                "Applies of the rendered tree by result: reconfigured, unchanged (nothing written), "
                "failed (BIRD refused or the apply broke; the previous config stays live).",
                ["result"],
            )
            self._m_duration = metrics.histogram(
                "apply_duration_seconds",
                "Render, check and configure of one coalesced apply.",
                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            )

    # ------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Restore the last applied input and try BIRD; BIRD being down is not fatal."""
        self._restore()
        try:
            await self.client.warm_up()
            self.log.info("BIRD: {}", self.client.banner)
        except BirdClientError as exc:
            self.log.warning("BIRD not reachable at start ({}); will retry on next use", exc)

    async def aclose(self) -> None:
        tasks = [t for t in (self._runner, *self._background) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._next is not None and not self._next.done():
            self._next.set_result(ApplyResult(ok=False, changed=False, error="agent shutting down"))
        await self.client.close()

    # ---------------------------------------------------------------- input

    @property
    def policy(self) -> BirdPolicy | None:
        return self._policy.policy if self._policy else None

    @property
    def config_hash(self) -> str | None:
        return self._policy.config_hash if self._policy else None

    async def set_policy(self, policy: BirdPolicy, config_hash: str, raw: Any = None) -> ApplyResult:
        """Apply with a new CP policy. It becomes the current (and persisted) policy
        only if the apply succeeds; otherwise the last good one stays in use."""
        self._candidate = _Candidate(policy, config_hash, raw)
        self._policy_known.set()
        return await self._request()

    async def declare(self, owner: str, fragments: Mapping[str, Mapping[str, object]]) -> ApplyResult:
        if owner not in OWNERS:
            return ApplyResult(
                ok=False,
                changed=False,
                error=f"unknown owner {owner!r} (the bird backend takes {', '.join(OWNERS)})",
                rejected={k: "unknown owner" for k in fragments},
            )
        rejected = self._accept(owner, fragments)
        if not await self._await_policy():
            return ApplyResult(ok=False, changed=False, error=NO_POLICY, rejected=rejected)
        result = await self._request()
        rejected = {**self._bird_rejected.get(owner, {}), **rejected}
        return attrs.evolve(result, rejected=rejected)

    async def set_maintenance(self, enabled: bool) -> ApplyResult:
        self.maintenance = enabled
        if not await self._await_policy():
            return ApplyResult(ok=False, changed=False, error=NO_POLICY)
        return await self._request()

    async def _await_policy(self) -> bool:
        """True once there is a policy to render with. On a fresh node the owners'
        first declares race the first birdConfigSync: wait for it (bounded)
        instead of failing a session's setup over start-up order. The fragments
        are stored either way and applied with the policy."""
        if self._policy is not None or self._candidate is not None:
            return True
        if self.policy_wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._policy_known.wait(), self.policy_wait)
        return self._policy is not None or self._candidate is not None

    def _accept(self, owner: str, fragments: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
        """Validate and store ``owner``'s fragments; returns key -> reason for the rejected."""
        rejected: dict[str, str] = {}
        warnings: list[str] = []
        raw: dict[str, Any] = {}
        if owner == "sessions":
            peers: dict[str, EbgpPeer] = {}
            symbols: dict[str, str] = {}
            for key, payload in sorted(fragments.items()):
                peer, why = _session(key, payload, warnings)
                if peer is not None and peer.symbol in symbols:
                    why = f"protocol name {peer.symbol} clashes with session {symbols[peer.symbol]}"
                if peer is None or why:
                    rejected[key] = why or "invalid"
                    continue
                symbols[peer.symbol] = key
                peers[key] = peer
                raw[key] = dict(payload)
            self._peers = peers
        elif owner == "ibgp":
            opts = IbgpOptions()
            neighbors: dict[str, IbgpNeighbor] = {}
            for key, payload in sorted(fragments.items()):
                if key == "options":
                    obj, errs = structure(IbgpOptions, _plain(payload), "ibgp.options", warnings)
                    if obj is None:
                        rejected[key] = "; ".join(errs)
                        continue
                    opts = obj
                    raw[key] = dict(payload)
                    continue
                neighbor, why = _neighbor(key, payload, list(neighbors.values()), warnings)
                if neighbor is None:
                    rejected[key] = why
                    continue
                neighbors[key] = neighbor
                raw[key] = dict(payload)
            self._ibgp = opts
            self._neighbors = neighbors
        else:
            babel: dict[str, BabelInterface] = {}
            patterns: dict[str, str] = {}
            for key, payload in sorted(fragments.items()):
                iface, errs = structure(BabelInterface, _plain(payload), f"mesh[{key}]", warnings)
                if iface is not None:
                    errs = [
                        e.replace("babel.interfaces[0]", f"mesh[{key}]")
                        for e in validate_babel(BabelOptions(interfaces=[iface]))
                    ]
                    if not errs and iface.pattern in patterns:
                        errs = [f"mesh[{key}].pattern: duplicate of fragment {patterns[iface.pattern]}"]
                if iface is None or errs:
                    rejected[key] = "; ".join(errs) or "invalid"
                    continue
                patterns[iface.pattern] = key
                babel[key] = iface
                raw[key] = dict(payload)
            self._babel = babel
        self._raw[owner] = raw
        self._warnings[owner] = warnings
        self._rejected[owner] = rejected
        for key, why in rejected.items():
            self.log.warning("{} fragment {} rejected: {}", owner, key, why)
        return rejected

    # -------------------------------------------------------------- applying

    def _request(self) -> asyncio.Future[ApplyResult]:
        """The future of the next apply run (joined if one is already pending)."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="bird-apply")
        # Shielded: a caller giving up must not cancel a half-done swap for everyone.
        return asyncio.shield(self._next)

    async def _run(self) -> None:
        while self._next is not None and not self._next.done():
            if self.debounce > 0:
                await asyncio.sleep(self.debounce)  # lets owners declaring together share the run
            fut, self._next = self._next, None
            try:
                result = await self._apply_once()
            except Exception as exc:  # a bug must not leave callers waiting forever
                self.log.exception("BIRD apply failed")
                result = ApplyResult(ok=False, changed=False, error=f"apply failed: {exc}")
            if not fut.done():
                fut.set_result(result)

    async def _apply_once(self) -> ApplyResult:
        used = self._candidate or self._policy
        if used is None:
            return ApplyResult(ok=False, changed=False, error=NO_POLICY)
        peers = dict(self._peers)
        ibgp = attrs.evolve(self._ibgp)
        neighbors = dict(self._neighbors)
        babel = BabelOptions(interfaces=list(self._babel.values()))
        maintenance = self.maintenance
        policy = used.policy

        def render(
            sessions: dict[str, EbgpPeer], ibgp_peers: dict[str, IbgpNeighbor]
        ) -> Callable[[], dict[str, str]]:
            return lambda: render_tree(
                policy,
                list(sessions.values()),
                ibgp=ibgp,
                ibgp_peers=list(ibgp_peers.values()),
                babel=babel,
                maintenance=maintenance,
                template_dir=self.template_dir,
                loopback_interface=self.loopback_interface,
            )

        started = time.monotonic()
        result = await self.applier.apply(render(peers, neighbors))
        bird_rejected: dict[str, dict[str, str]] = {}
        named = self._rejected_fragment(peers, neighbors)
        if named is not None and self.applier.last_rejection is not None:
            # BIRD named one fragment's own file: drop that fragment, retry once without it.
            owner, key = named
            first = result
            bird_rejected[owner] = {key: self.applier.last_rejection.error}
            self.log.warning("{} fragment {} rejected by BIRD, applying without it", owner, key)
            if owner == "sessions":
                peers = {k: v for k, v in peers.items() if k != key}
            else:
                neighbors = {k: v for k, v in neighbors.items() if k != key}
            result = await self.applier.apply(render(peers, neighbors))
            if not result.ok:
                # Not (only) that fragment's fault, e.g. a broken shared template: BIRD's first
                # complaint is the one to read, the retry's follows it.
                what = "session" if owner == "sessions" else "iBGP neighbour"
                result = attrs.evolve(result, error=f"{first.error}; without {what} {key}: {result.error}")
            result = attrs.evolve(result, rejected={**result.rejected, **bird_rejected[owner]})
        self._bird_rejected = bird_rejected
        self.last_apply_seconds = time.monotonic() - started
        if self._m_applies is not None and self._m_duration is not None:
            outcome = "failed" if not result.ok else "reconfigured" if result.changed else "unchanged"
            self._m_applies.labels(result=outcome).inc()
            self._m_duration.observe(self.last_apply_seconds)
        self.last_apply_at = time.time()
        self.last_result = result
        if self._candidate is used:
            self._candidate = None
        if result.changed:
            # The files on disk now carry this policy (even if BIRD could not be told yet).
            self._policy = used
        if result.ok:
            self._policy = used
            self._persist()
        else:
            self.last_error_at = self.last_apply_at
        return result

    def _rejected_fragment(
        self, peers: Mapping[str, EbgpPeer], neighbors: Mapping[str, IbgpNeighbor]
    ) -> tuple[str, str] | None:
        """(owner, key) of the session or iBGP neighbour whose file BIRD's last
        rejection names, if any."""
        rejection = self.applier.last_rejection
        if rejection is None or rejection.file is None:
            return None
        for k, p in peers.items():
            if p.file_name == rejection.file:
                return "sessions", k
        for k, n in neighbors.items():
            if n.file_name == rejection.file:
                return "ibgp", k
        return None

    # ----------------------------------------------------------- persistence

    def _persist(self) -> None:
        if self.state is None or self._policy is None or self._policy.raw is None:
            return
        doc = {
            "configHash": self._policy.config_hash,
            "policy": self._policy.raw,
            "fragments": self._raw,
        }
        try:
            doc = json.loads(json.dumps(doc))  # a snapshot: self._raw keeps changing
        except (TypeError, ValueError) as exc:
            self.log.warning("cannot persist the applied BIRD input: {}", exc)
            return
        if doc == self._persisted:
            return
        self.state.write_json(STATE_FILE, doc)
        self._persisted = doc

    def _restore(self) -> None:
        """Load the last applied policy and fragments (a bad file is ignored, not fatal)."""
        if self.state is None:
            return
        try:
            doc = self.state.read_json(STATE_FILE)
        except Exception as exc:
            self.log.warning("ignoring the saved BIRD state: {}", exc)
            return
        if not isinstance(doc, dict):
            return
        try:
            policy, _ = parse_bird_config(doc.get("policy"))
        except RenderError as exc:
            self.log.warning("ignoring the saved BIRD policy: {}", exc)
            return
        self._policy = _Candidate(policy, str(doc.get("configHash") or ""), doc.get("policy"))
        self._policy_known.set()
        fragments = doc.get("fragments")
        if isinstance(fragments, dict):
            for owner in OWNERS:
                if isinstance(fragments.get(owner), dict):
                    self._accept(owner, fragments[owner])
        self._persisted = doc
        self.log.info("restored the last applied BIRD policy (hash {})", self._policy.config_hash or "none")

    # --------------------------------------------------------------- read-out

    async def protocols(self) -> Sequence[ProtocolState]:
        return await self.client.protocols()

    def fragment_protocols(self, owner: str) -> Mapping[str, tuple[str, ...]]:
        """Protocol names per applied fragment: ``sessions`` keys to their BGP
        protocols, ``ibgp`` neighbour keys to their one iBGP protocol (fragments
        BIRD rejected left out; no ``ibgp`` entries while iBGP is disabled or
        before a policy says who this node is)."""
        skip = self._bird_rejected.get(owner, {})
        if owner == "sessions":
            return {k: peer_protocol_names(p) for k, p in self._peers.items() if k not in skip}
        if owner == "ibgp" and self._policy is not None and self._ibgp.enabled:
            own = self._policy.policy.node.id  # never rendered: see render.ibgp_sessions
            return {k: (n.symbol,) for k, n in self._neighbors.items() if n.node_id != own and k not in skip}
        return {}

    def agent_protocols(self) -> set[str]:
        """Protocol names the agent's tree defines (the ones it may restart)."""
        names = set(_BASE_PROTOCOLS)
        for p in self._peers.values():
            names |= {p.symbol, p.symbol + "_v4", p.symbol + "_v6"}
        names |= {n.symbol for n in self._neighbors.values()}
        if self._policy is not None:
            names |= {s.symbol for s in self._policy.policy.policy.rpki_servers}
        return names

    async def restart_protocol(self, name: str) -> None:
        if name not in self.agent_protocols():
            raise ValueError(f"{name!r} is not a BIRD protocol the agent owns")
        await self.client.command(f"restart {name}")

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def moenet_maintenance_changed(self, event: MaintenanceEvent) -> None:
        if event.enabled == self.maintenance:
            return
        task = asyncio.get_running_loop().create_task(self._maintenance(event.enabled))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait until hook-started work (a maintenance change) and pending applies are done."""
        while True:
            tasks = [t for t in (*self._background, self._runner) if t is not None and not t.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _maintenance(self, enabled: bool) -> None:
        result = await self.set_maintenance(enabled)
        if not result.ok:
            self.log.error("maintenance {}: BIRD not updated: {}", "on" if enabled else "off", result.error)

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        return self.status_info()

    def status_info(self) -> dict[str, Any]:
        """Summary for ``/status`` (no I/O)."""
        r = self.last_result
        return {
            "policyHash": self.config_hash,
            "policyLoaded": self._policy is not None,
            "maintenance": self.maintenance,
            "lastApply": None
            if r is None
            else {
                "ok": r.ok,
                "changed": r.changed,
                "error": r.error,
                "at": self.last_apply_at,
                "seconds": round(self.last_apply_seconds or 0.0, 4),
            },
            "lastApplyError": r.error if r is not None and not r.ok else None,
            "syncError": self.sync_error,
            "pendingConfigure": self.applier.pending_configure,
            "owners": {
                "sessions": len(self._peers),
                "ibgp": len(self._neighbors),
                "mesh": len(self._babel),
            },
            "ibgp": {
                "enabled": self._ibgp.enabled,
                "routeReflector": self._ibgp.route_reflector,
            },
            "rejected": {
                o: {**r, **self._bird_rejected.get(o, {})}
                for o, r in self._rejected.items()
                if r or self._bird_rejected.get(o)
            },
            "warnings": {o: list(w) for o, w in self._warnings.items() if w},
            "stats": attrs.asdict(self.applier.stats),
        }


def _plain(payload: object) -> Any:
    """A dict copy of a mapping; anything else as is, for the structurer to refuse."""
    return dict(payload) if isinstance(payload, Mapping) else payload


def _neighbor(
    key: str, payload: Mapping[str, object], accepted: list[IbgpNeighbor], warnings: list[str]
) -> tuple[IbgpNeighbor | None, str]:
    """One ``ibgp`` neighbour fragment, checked alone and against the ``accepted``
    ones (node id and name must be unique), or None and why not."""
    if not isinstance(payload, Mapping):  # callers pass JSON they did not check
        return None, "payload must be an object"  # type: ignore[unreachable]
    neighbor, errs = structure(IbgpNeighbor, dict(payload), f"ibgp[{key}]", warnings)
    if neighbor is None:
        return None, "; ".join(errs)
    problems = [e.replace("ibgp[0]", f"ibgp[{key}]") for e in validate_ibgp([neighbor])]
    if problems:
        return None, "; ".join(problems)
    for other in accepted:
        if other.node_id == neighbor.node_id:
            return None, f"ibgp[{key}].nodeId: {neighbor.node_id} is already declared ({other.node_name})"
        if other.node_name.lower() == neighbor.node_name.lower():
            return (
                None,
                f"ibgp[{key}].nodeName: {neighbor.node_name} is already declared (node {other.node_id})",
            )
    return neighbor, ""


def _session(key: str, payload: Mapping[str, object], warnings: list[str]) -> tuple[EbgpPeer | None, str]:
    """One sessions fragment as an :class:`EbgpPeer`, or None and why not."""
    if not isinstance(payload, Mapping):  # callers pass JSON they did not check
        return None, "payload must be an object"  # type: ignore[unreachable]
    data = dict(payload)
    if "uuid" in data and str(data["uuid"]).lower() != str(key).lower():
        return None, f"uuid {data['uuid']!r} differs from the fragment key"
    data["uuid"] = data.get("uuid", key)
    peer, errs = structure(EbgpPeer, data, f"sessions[{key}]", warnings)
    if peer is None:
        return None, "; ".join(errs)
    problems = [e.replace("peers[0]", f"sessions[{key}]") for e in validate_peers([peer])]
    if problems:
        return None, "; ".join(problems)
    return peer, ""
