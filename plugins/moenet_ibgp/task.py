"""The ``ibgpSync`` task: owns this node's iBGP peer set and declares it to the routing backend.

A :class:`~moenet_core.reconcile.Reconciler` (the core runs the cycle: fetch with
the last valid answer, lock, guard logging, ``moenet_sync_completed``, a failed
cycle's ending). Every run (120 s, and on ``/sync``):

1. **Fetch** ``bird-config`` from the CP and read its ``ibgpPeers`` (the source
   is explained in the package doc). An unreachable CP, an error answer or an
   answer that is unusable as a whole never means "no peers": the last valid
   answer is served (the run fails with the reason when the CP refused or sent
   an unusable answer); without any saved answer the current peers (the saved
   node list) are declared again and the run fails.
2. **Validate** every entry (:func:`~moenet_ibgp.model.parse_answer`); invalid
   ones are logged once, left out and listed in ``/status``.
3. **Guard**: an answer that would drop more than ``guardMaxShare`` (and more
   than ``guardMinCount``) of the known nodes, alone or with the nodes dropped
   within the last ``guardWindow`` seconds, keeps the dropped ones (the
   core's :mod:`moenet_core.guard`: an empty or truncated ``ibgpPeers`` after a
   CP bug looks exactly like a real mass removal, and losing iBGP cuts the node
   off from every route its neighbours learned); additions and changes still
   apply, and ``allowRemoval`` lets one such set through. It counts *nodes*
   (the CP's list, this node left out), not sessions: a change of
   route-reflector roles legitimately changes many sessions at once without
   any node leaving, and is not what the guard is for.
4. **Topology** (:func:`~moenet_ibgp.model.sessions`) with this node's role: the
   ``isRr`` of its own entry in the list, else ``ibgp.routeReflector``, else not
   a route reflector.
5. **Declare** ``{"options": ..., "<nodeId>": neighbour, ...}`` as owner ``ibgp``
   only when it differs from what was last declared (and once after a start,
   which costs nothing when the backend already has it: it writes and
   reconfigures only on a changed tree). The backend renders it in the same
   coalesced reconfigure as every other owner's intent.

The accepted node list is persisted (``nodes.json`` in the plugin's state
directory), so a restarted agent facing an unreachable CP still declares the
same peers, and the guard compares against it.

**Mesh latency** (``moenet_link_latency``): after each RTT round the tier of
the mesh link to every node (the mesh plugin's links, keyed by node id) becomes
the neighbour's ``latency``, which the routing backend merges into the routes
learned from it (DN42 latency community, worst wins). The tier already carries
the RTT plugin's hysteresis; a round that changes any tier triggers one run
(one declare, one reconfigure), a round that changes none triggers nothing. The
tiers are persisted (``latency.json``), so a restart declares what it declared
before instead of "unmeasured" until the first round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import Answer as CycleAnswer
from moenet_core import (
    GuardVerdict,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    LinkLatency,
    MoenetError,
    Reconciler,
    RoutingBackend,
    RoutingIntent,
    evaluate,
    hookimpl,
    numeric_order,
)

from .config import IbgpConfig
from .model import Answer, AnswerError, Node, mesh_tiers, parse_answer, sessions

if TYPE_CHECKING:
    from moenet_core import AgentConfig, PluginContext

__all__ = ["LATENCY_FILE", "OWNER", "RESOURCE", "STATE_FILE", "TASK_NAME", "IbgpSync", "IbgpSyncError"]

TASK_NAME = "ibgpSync"
RESOURCE = "bird-config"
OWNER = "ibgp"
STATE_FILE = "nodes.json"
#: ``nodes.json``'s version; version 0 (no ``"version"``) has the same fields.
STATE_VERSION = 1
#: ``{"version": 1, "tiers": {"<node id>": tier}}``: the mesh latency tiers last taken.
LATENCY_FILE = "latency.json"
LATENCY_VERSION = 1


class IbgpSyncError(MoenetError):
    """One cycle did not bring the CP's iBGP peers live (the current ones stay)."""


@attrs.frozen(kw_only=True)
class IbgpPlan:
    """The accepted node list after the guard, this node's role, and what to declare."""

    nodes: Mapping[int, Node]
    verdict: GuardVerdict
    self_is_rr: bool | None
    own_id: int
    route_reflector: bool
    fragments: Mapping[str, RoutingIntent]


class IbgpSync(Reconciler[Answer, Mapping[int, Node], IbgpPlan, bool]):
    """See the module doc."""

    task_name = TASK_NAME
    resource = RESOURCE
    payload_errors = (AnswerError,)
    error = IbgpSyncError
    allow_removal_key = "ibgp.allowRemoval"

    def __init__(self, ctx: PluginContext) -> None:
        self.nodes: dict[int, Node] | None = None
        """The accepted node list (None: no valid answer yet, nor a saved one)."""
        self.self_is_rr: bool | None = None
        self.declared: dict[str, RoutingIntent] | None = None
        """What the last successful declare carried (None: declare on the next run)."""
        self.route_reflector = False
        self.invalid: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        self.own_id = 0
        self._said: set[str] = set()
        self._persisted: Any = None
        self.latency: dict[int, int] = {}
        """Mesh latency tier per node id (absent: not measured)."""
        super().__init__(ctx)
        self._m_peers = ctx.metrics.gauge("peers", "iBGP neighbours declared to the routing backend.")
        self._m_invalid = ctx.metrics.gauge(
            "invalid_peers", "Entries of the CP's ibgpPeers left out as invalid in the last answer."
        )
        self._restore()
        self._restore_latency()

    # ----------------------------------------------------------- persistence

    def _restore_latency(self) -> None:
        try:
            doc = self.ctx.state.load_document(LATENCY_FILE, version=LATENCY_VERSION)
        except Exception as exc:
            self.ctx.log.warning("ignoring the saved mesh latency tiers: {}", exc)
            return
        tiers = doc.get("tiers") if isinstance(doc, dict) else None
        if not isinstance(tiers, dict):
            return
        for key, tier in tiers.items():
            if (
                isinstance(key, str)
                and key.isascii()
                and key.isdigit()
                and len(key) <= 10
                and isinstance(tier, int)
                and not isinstance(tier, bool)
                and 1 <= tier <= 9
            ):
                self.latency[int(key)] = tier

    def _persist_latency(self) -> None:
        doc = {"tiers": {str(k): v for k, v in sorted(self.latency.items())}}
        try:
            self.ctx.state.save_document(LATENCY_FILE, doc, version=LATENCY_VERSION)
        except Exception as exc:  # the tiers are re-learnt from the next round
            self.ctx.log.error("cannot save the mesh latency tiers: {}", exc)

    def _restore(self) -> None:
        try:
            doc = self.ctx.state.load_document(
                STATE_FILE, version=STATE_VERSION, migrate=lambda _version, fields: fields
            )
        except Exception as exc:
            self.ctx.log.warning("ignoring the saved iBGP nodes: {}", exc)
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
            return
        # The saved list was valid when saved; re-validate anyway (a hand-edited file).
        answer = parse_answer({"ibgpPeers": doc["nodes"]}, own_id=0, own_name="")
        if answer.invalid:
            self.ctx.log.warning("ignoring invalid saved iBGP nodes: {}", answer.invalid)
        self.nodes = dict(answer.nodes)
        rr = doc.get("selfIsRr")
        self.self_is_rr = rr if isinstance(rr, bool) else None
        self._persisted = doc
        self.ctx.log.info("restored {} iBGP node(s) from the last valid answer", len(self.nodes))

    def _persist(self) -> None:
        assert self.nodes is not None
        doc = {
            "nodes": [n.to_json() for n in sorted(self.nodes.values(), key=lambda n: n.node_id)],
            "selfIsRr": self.self_is_rr,
        }
        if doc != self._persisted:
            self.ctx.state.save_document(STATE_FILE, doc, version=STATE_VERSION)
            self._persisted = doc

    # ------------------------------------------------------------------ run

    def _section(self) -> IbgpConfig:
        section = self.ctx.section
        return section if isinstance(section, IbgpConfig) else IbgpConfig()

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            self.ctx.log.warning(message, *args)

    def enabled(self) -> bool:
        return self._section().enabled

    async def when_disabled(self) -> dict[str, Any]:
        self.route_reflector = False
        changed = await self._declare(self._routing(), {"options": IbgpOptionsIntent(enabled=False)})
        return {"enabled": False, "peers": 0, "changed": changed}

    def _routing(self) -> RoutingBackend:
        return self.ctx.backend("routing", RoutingBackend)

    def parse(self, raw: Any) -> Answer:
        config = self.ctx.config
        return parse_answer(
            raw,
            own_id=config.node.id,
            own_name=config.node.name,
            own_loopbacks=(config.node.loopback_ipv4, config.node.loopback_ipv6),
        )

    async def without_answer(self, problem: str) -> str:
        """After a failed fetch with nothing saved: make sure the current peers are
        declared (after a restart, from the saved node list)."""
        if self.nodes is None:
            return "keeping the current iBGP peers (none known yet)"
        section = self._section()
        try:
            await self._declare(
                self._routing(), self._fragments(self.nodes, self._role(self.self_is_rr, section))
            )
        except IbgpSyncError as exc:
            return (
                f"keeping the current iBGP peers ({len(self.nodes)} node(s); "
                f"declaring them failed too: {exc})"
            )
        return f"keeping the current iBGP peers ({len(self.nodes)} node(s))"

    async def observe(self, desired: Answer) -> Mapping[int, Node]:
        """The node list accepted last (what the guard compares against)."""
        return dict(self.nodes or {})

    def plan(self, answer: CycleAnswer[Answer], observed: Mapping[int, Node]) -> IbgpPlan:
        section = self._section()
        nodes = dict(answer.value.nodes)
        removals = [str(i) for i in observed if i not in nodes]
        verdict = evaluate(
            removals,
            [str(i) for i in observed],
            self.guard_policy(),
            override=section.allow_removal or None,
            noun="iBGP nodes",
            sort_key=numeric_order,
            window=self.guard_window,
        )
        if verdict.refused:
            nodes.update({i: n for i, n in observed.items() if i not in nodes})
        rr = self._role(answer.value.self_is_rr, section)
        return IbgpPlan(
            nodes=nodes,
            verdict=verdict,
            self_is_rr=answer.value.self_is_rr,
            own_id=answer.value.own_id,
            route_reflector=rr,
            fragments=self._fragments(nodes, rr, own_id=answer.value.own_id),
        )

    def verdict(self, plan: IbgpPlan) -> GuardVerdict | None:
        return plan.verdict if plan.verdict.removals else None

    async def apply(self, plan: IbgpPlan, observed: Mapping[int, Node]) -> bool:
        self.nodes = dict(plan.nodes)
        self.self_is_rr = plan.self_is_rr
        self.own_id = plan.own_id
        self._persist()
        self.route_reflector = plan.route_reflector
        return await self._declare(self._routing(), dict(plan.fragments))

    async def report(self, answer: CycleAnswer[Answer], plan: IbgpPlan, outcome: bool) -> dict[str, Any]:
        value = answer.value
        for w in value.warnings:
            self._say_once(w, "{}: {}", RESOURCE, w)
        if not value.own_id:
            self._say_once(
                "no-id", "node.id is not configured and the answer has none: this node is recognised by name"
            )
        for label, why in sorted(value.invalid.items()):
            if self.invalid.get(label) != why:
                self.ctx.log.warning("iBGP peer {} left out: {}", label, why)
        self.invalid = dict(value.invalid)
        self._m_invalid.set(len(self.invalid))
        return {
            "enabled": True,
            "routeReflector": self.route_reflector,
            "nodes": len(self.nodes or {}),
            "peers": len([k for k in plan.fragments if k != "options"]),
            "changed": outcome,
            "invalid": dict(self.invalid),
            "rejected": dict(self.rejected),
            "guard": self.guard.status_info() if self.guard is not None else None,
        }

    def changes(self, summary: Mapping[str, Any]) -> int:
        return 1 if summary.get("changed") else 0

    def plan_json(
        self, answer: CycleAnswer[Answer], plan: IbgpPlan, observed: Mapping[int, Node]
    ) -> dict[str, Any]:
        changed = dict(plan.fragments) != self.declared
        added = sorted(set(plan.nodes) - set(observed))
        removed = sorted(set(observed) - set(plan.nodes))
        lines = [f"add node {i} ({plan.nodes[i].node_name})" for i in added]
        lines += [f"remove node {i} ({observed[i].node_name})" for i in removed]
        if plan.verdict.refused:
            lines.append(f"GUARD REFUSED: {plan.verdict.reason} (digest {plan.verdict.digest})")
        lines.append(f"routing: {'declare the iBGP peers' if changed else 'unchanged'}")
        return {
            "empty": not changed,
            "lines": lines,
            "routeReflector": plan.route_reflector,
            "peers": sorted(
                (
                    {"nodeId": f.node_id, "nodeName": f.node_name, "rrClient": f.rr_client}
                    for f in plan.fragments.values()
                    if isinstance(f, IbgpNeighborIntent)
                ),
                key=lambda p: int(p["nodeId"]),
            ),
            "guard": plan.verdict.status_info(),
        }

    # --------------------------------------------------------------- helpers

    @staticmethod
    def _role(self_is_rr: bool | None, section: IbgpConfig) -> bool:
        if self_is_rr is not None:
            return self_is_rr
        return bool(section.route_reflector)

    def _fragments(
        self, nodes: Mapping[int, Node], rr: bool, *, own_id: int | None = None
    ) -> dict[str, RoutingIntent]:
        fragments: dict[str, RoutingIntent] = {"options": IbgpOptionsIntent(enabled=True, route_reflector=rr)}
        fragments.update(
            sessions(
                nodes.values(),
                own_is_rr=rr,
                own_id=self.own_id if own_id is None else own_id,
                latency=self.latency,
            )
        )
        return fragments

    async def _declare(self, routing: RoutingBackend, fragments: dict[str, RoutingIntent]) -> bool:
        """Declare ``fragments`` unless they are what was last declared; True if declared."""
        if fragments == self.declared:
            return False
        result = await routing.declare(OWNER, fragments)
        self.rejected = dict(result.rejected)
        for key, why in sorted(result.rejected.items()):
            self.ctx.log.error("the routing backend rejected iBGP neighbour {}: {}", key, why)
        self._m_peers.set(len([k for k in fragments if k != "options" and k not in result.rejected]))
        if not result.ok:
            self.declared = None  # declared again next run
            raise IbgpSyncError(f"the routing backend did not apply the iBGP peers: {result.error}")
        self.declared = fragments
        return True

    # ----------------------------------------------------------------- hooks

    @hookimpl
    def moenet_config_updated(self, old: AgentConfig, new: AgentConfig) -> None:
        try:
            self.ctx.trigger(TASK_NAME)
        except (KeyError, RuntimeError) as exc:  # not scheduled (yet), or no loop
            self.ctx.log.warning("cannot schedule {} after the reload: {}", TASK_NAME, exc)

    @hookimpl
    def moenet_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
        """Take one RTT round's mesh tiers; when any changed, one run re-declares."""
        tiers = mesh_tiers(measurements)
        if tiers == self.latency:
            return
        for node in sorted(set(tiers) | set(self.latency)):
            old, new = self.latency.get(node), tiers.get(node)
            if old != new:
                self.ctx.log.info("mesh link to node {}: latency tier {} -> {}", node, old, new)
        self.latency = tiers
        self._persist_latency()
        if self.nodes is None or not self.enabled():
            return  # nothing declared yet: the next run uses the tiers
        try:
            self.ctx.trigger(TASK_NAME).add_done_callback(_consume)
        except (KeyError, RuntimeError) as exc:  # not scheduled (yet), or no loop
            self.ctx.log.warning("cannot schedule {} after a latency change: {}", TASK_NAME, exc)

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        declared = self.declared or {}
        base = self.status_info()
        return {
            "source": RESOURCE,
            "enabled": self._section().enabled,
            "routeReflector": self.route_reflector,
            "nodes": len(self.nodes or {}),
            "peers": sorted(
                (
                    {"nodeId": f.node_id, "nodeName": f.node_name, "rrClient": f.rr_client}
                    for f in declared.values()
                    if isinstance(f, IbgpNeighborIntent)
                ),
                key=lambda p: int(p["nodeId"]),
            ),
            "latency": {str(k): v for k, v in sorted(self.latency.items())},
            "invalid": dict(self.invalid),
            "rejected": dict(self.rejected),
            "guard": base["guard"],
            "lastError": base["lastError"],
            "lastRun": base["lastRun"],
        }


def _consume(fut: asyncio.Future[Any]) -> None:
    """A triggered run's outcome is in /status already; do not warn about it."""
    if not fut.cancelled():
        fut.exception()
