"""The ``ibgpSync`` task: owns this node's iBGP peer set and declares it to the routing backend.

Every run (120 s, and on ``/sync``):

1. **Fetch** ``bird-config`` from the CP and read its ``ibgpPeers`` (the source
   is explained in the package doc). An unreachable CP, an error answer or an
   answer that is unusable as a whole keeps the current peers: the task fails
   with the reason and nothing is declared (never "no peers").
2. **Validate** every entry (:func:`~moenet_ibgp.model.parse_answer`); invalid
   ones are logged once, left out and listed in ``/status``.
3. **Guard**: an answer that would drop more than ``guardMaxShare`` (and more
   than ``guardMinCount``) of the known nodes keeps the dropped ones (the
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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moenet_core import ApplyResult, RoutingBackend, hookimpl
from moenet_core.errors import ControlPlaneError, ControlPlaneUnavailable, MoenetError
from moenet_core.guard import GuardPolicy, GuardVerdict, evaluate, numeric_order

from .config import IbgpConfig
from .model import Answer, AnswerError, Node, parse_answer, sessions

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig
    from moenet_core.context import PluginContext

__all__ = ["OWNER", "RESOURCE", "STATE_FILE", "TASK_NAME", "IbgpSync", "IbgpSyncError"]

TASK_NAME = "ibgpSync"
RESOURCE = "bird-config"
OWNER = "ibgp"
STATE_FILE = "nodes.json"


class IbgpSyncError(MoenetError):
    """One cycle did not bring the CP's iBGP peers live (the current ones stay)."""


class IbgpSync:
    """See the module doc."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.nodes: dict[int, Node] | None = None
        """The accepted node list (None: no valid answer yet, nor a saved one)."""
        self.self_is_rr: bool | None = None
        self.declared: dict[str, dict[str, Any]] | None = None
        """What the last successful declare carried (None: declare on the next run)."""
        self.route_reflector = False
        self.invalid: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        self.guard: GuardVerdict | None = None
        self.last_error: str | None = None
        self.own_id = 0
        self._said: set[str] = set()
        self._persisted: Any = None
        self._m_peers = ctx.metrics.gauge("peers", "iBGP neighbours declared to the routing backend.")
        self._m_invalid = ctx.metrics.gauge(
            "invalid_peers", "Entries of the CP's ibgpPeers left out as invalid in the last answer."
        )
        self._m_refused = ctx.metrics.gauge(
            "guard_refused", "1 while the guard withholds a mass removal of iBGP nodes."
        )
        self._restore()
        ctx.register_hooks(self)

    # ----------------------------------------------------------- persistence

    def _restore(self) -> None:
        try:
            doc = self.ctx.state.read_json(STATE_FILE)
        except Exception as exc:
            self.ctx.log.warning("ignoring the saved iBGP nodes: {}", exc)
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
            return
        # The saved list was valid when saved; re-validate anyway (a hand-edited file).
        answer = parse_answer({"ibgpPeers": doc["nodes"]}, own_id=0, own_name="")
        if answer.invalid:
            self.ctx.log.warning("ignoring invalid saved iBGP nodes: {}", answer.invalid)
        self.nodes = answer.nodes
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
            self.ctx.state.write_json(STATE_FILE, doc)
            self._persisted = doc

    # ------------------------------------------------------------------ run

    def _section(self) -> IbgpConfig:
        section = self.ctx.section
        return section if isinstance(section, IbgpConfig) else IbgpConfig()

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            self.ctx.log.warning(message, *args)

    async def run_once(self) -> dict[str, Any]:
        try:
            return await self._run()
        except IbgpSyncError as exc:
            self.last_error = str(exc)
            raise
        finally:
            self._m_refused.set(1 if self.guard is not None and self.guard.refused else 0)

    async def _run(self) -> dict[str, Any]:
        section = self._section()
        routing = self.ctx.backend("routing", RoutingBackend)
        if not section.enabled:
            self.route_reflector = False
            changed = await self._declare(routing, {"options": {"enabled": False}})
            self.last_error = None
            return {"enabled": False, "peers": 0, "changed": changed}

        config = self.ctx.config
        try:
            data = await self.ctx.cp.fetch(RESOURCE)
            answer = parse_answer(
                data,
                own_id=config.node.id,
                own_name=config.node.name,
                own_loopbacks=(config.node.loopback_ipv4, config.node.loopback_ipv6),
            )
        except (ControlPlaneError, AnswerError) as exc:
            why = (
                f"control plane unreachable for {RESOURCE}"
                if isinstance(exc, ControlPlaneUnavailable)
                else f"control plane refused {RESOURCE}"
                if isinstance(exc, ControlPlaneError)
                else f"unusable {RESOURCE} answer"
            )
            kept = await self._keep(routing, section)
            raise IbgpSyncError(f"{why}: {exc}; keeping the current iBGP peers ({kept})") from exc

        self._take(answer, section)
        return await self._apply(routing, section)

    def _take(self, answer: Answer, section: IbgpConfig) -> None:
        """Validate-and-guard: the new accepted node list."""
        for w in answer.warnings:
            self._say_once(w, "{}: {}", RESOURCE, w)
        if not answer.own_id:
            self._say_once(
                "no-id", "node.id is not configured and the answer has none: this node is recognised by name"
            )
        for label, why in sorted(answer.invalid.items()):
            if self.invalid.get(label) != why:
                self.ctx.log.warning("iBGP peer {} left out: {}", label, why)
        self.invalid = dict(answer.invalid)
        self._m_invalid.set(len(self.invalid))

        previous = self.nodes or {}
        nodes = dict(answer.nodes)
        removals = [str(i) for i in previous if i not in nodes]
        verdict = evaluate(
            removals,
            [str(i) for i in previous],
            GuardPolicy(max_share=section.guard_max_share, min_count=section.guard_min_count),
            override=section.allow_removal or None,
            noun="iBGP nodes",
            sort_key=numeric_order,
        )
        if verdict.refused:
            if verdict.newly_refused(self.guard):
                self.ctx.log.error(
                    "{} (digest {}; set ibgp.allowRemoval to it to allow)", verdict.reason, verdict.digest
                )
            for i in previous:
                if i not in nodes:
                    nodes[i] = previous[i]
        elif verdict.overridden:
            self.ctx.log.warning("{}: allowed by ibgp.allowRemoval {}", verdict.reason, verdict.digest)
        self.guard = verdict if verdict.removals else None
        self.nodes = nodes
        self.self_is_rr = answer.self_is_rr
        self.own_id = answer.own_id
        self._persist()

    def _role(self, section: IbgpConfig) -> bool:
        if self.self_is_rr is not None:
            return self.self_is_rr
        return bool(section.route_reflector)

    def _fragments(self, section: IbgpConfig) -> dict[str, dict[str, Any]]:
        self.route_reflector = self._role(section)
        fragments: dict[str, dict[str, Any]] = {
            "options": {"enabled": True, "routeReflector": self.route_reflector}
        }
        fragments.update(
            sessions((self.nodes or {}).values(), own_is_rr=self.route_reflector, own_id=self.own_id)
        )
        return fragments

    async def _keep(self, routing: RoutingBackend, section: IbgpConfig) -> str:
        """After a failed fetch: make sure the current peers are declared (after a
        restart, from the saved list). Returns a description for the error."""
        if self.nodes is None:
            return "none known yet"
        try:
            await self._declare(routing, self._fragments(section))
        except IbgpSyncError as exc:
            return f"{len(self.nodes)} node(s); declaring them failed too: {exc}"
        return f"{len(self.nodes)} node(s)"

    async def _apply(self, routing: RoutingBackend, section: IbgpConfig) -> dict[str, Any]:
        fragments = self._fragments(section)
        changed = await self._declare(routing, fragments)
        self.last_error = None
        peers = sorted(k for k in fragments if k != "options")
        return {
            "enabled": True,
            "routeReflector": self.route_reflector,
            "nodes": len(self.nodes or {}),
            "peers": len(peers),
            "changed": changed,
            "invalid": dict(self.invalid),
            "rejected": dict(self.rejected),
            "guard": self.guard.status_info() if self.guard is not None else None,
        }

    async def _declare(self, routing: RoutingBackend, fragments: dict[str, dict[str, Any]]) -> bool:
        """Declare ``fragments`` unless they are what was last declared; True if declared."""
        if fragments == self.declared:
            return False
        result: ApplyResult = await routing.declare(OWNER, fragments)
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
    def moenet_status_info(self) -> dict[str, Any]:
        declared = self.declared or {}
        return {
            "source": RESOURCE,
            "enabled": self._section().enabled,
            "routeReflector": self.route_reflector,
            "nodes": len(self.nodes or {}),
            "peers": sorted(
                (
                    {"nodeId": p["nodeId"], "nodeName": p["nodeName"], "rrClient": p["rrClient"]}
                    for k, p in declared.items()
                    if k != "options"
                ),
                key=lambda p: p["nodeId"],
            ),
            "invalid": dict(self.invalid),
            "rejected": dict(self.rejected),
            "guard": self.guard.status_info() if self.guard is not None else None,
            "lastError": self.last_error,
        }
