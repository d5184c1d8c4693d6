"""The ``meshSync`` task: make the node's WireGuard + Babel mesh match the control plane.

A :class:`~moenet_core.reconcile.Reconciler` (the core runs the cycle: fetch with the
last valid answer, lock, guard logging, ``moenet_sync_completed``, a failed cycle's
ending). One cycle (every 120 s and on ``/sync``):

1. **Key**: the node's mesh key pair (:mod:`.keys`), created once.
2. **Fetch** ``mesh`` and validate it (:mod:`.model`). An unreachable CP, a CP
   error reply or an answer that is wrong as a whole never means "no peers":
   the persisted last valid answer is served (nothing it lists is removed) and
   the run ends with an error in ``/status`` when the answer was refused.
3. **Desire** (:mod:`.desired`): per valid peer a tunnel spec, a port and a
   Babel fragment; a peer that cannot be placed is an error.
4. **Observe**: every tunnel the backend lists (all owners, read now), the
   mesh's open ports, and the fragments and per-tunnel records persisted after
   the last apply (``state.json``).
5. **Plan** (:mod:`.planner`) with the mass-removal guard (:mod:`moenet_core.guard`).
6. **Apply** in phases: removals (``tunnel.remove(name, owner="mesh")``), creates
   and in-place updates (``tunnel.ensure``; a failed create that left no link
   gets no port and no Babel interface), ONE
   firewall sync (``owner="mesh"``) only when the open set differs, then ONE
   ``declare("mesh", ...)`` only when the fragment set differs.
7. **Report** every listed peer's state to ``POST mesh/status`` (when it changed,
   and again every ``meshSync.statusRepeat`` seconds); a failed report is
   logged and retried next cycle, never undoing the tunnel work.

An unchanged cycle performs reads only: no netlink or UAPI write, no firewall
transaction, no declare, no state file write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import (
    Answer,
    ApiError,
    ApplyResult,
    BabelInterfaceIntent,
    FirewallBackend,
    GuardVerdict,
    IntentError,
    LinkLatency,
    LinkTarget,
    MoenetError,
    Reconciler,
    RestartAction,
    RoutingBackend,
    TunnelBackend,
    crashpoint,
    hookimpl,
    intent_from_json,
    intent_from_legacy,
    intent_to_json,
    sweep_partial_writes,
)

from .addressing import AddressingError, link_local, listen_port
from .config import MeshConfig
from .desired import OWNER, DesiredError, DesiredPeer, MeshSettings, build_desired
from .keys import KEY_FILE, ensure_private_key
from .model import MeshAnswer, MeshPayloadError, parse_mesh
from .planner import Action, Observed, Plan, Record, plan

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["RESOURCE", "STATUS_RESOURCE", "TASK_NAME", "MeshSync", "MeshSyncError"]

TASK_NAME = "meshSync"
RESOURCE = "mesh"
STATUS_RESOURCE = "mesh/status"
STATE_FILE = "state.json"
CONFIGURED = "configured"


class MeshSyncError(MoenetError):
    """A cycle could not do its job (the reason says what was kept)."""


@attrs.define
class Outcome:
    failed: dict[int, str] = attrs.field(factory=dict)
    records: dict[str, Record] = attrs.field(factory=dict)
    applied: dict[str, BabelInterfaceIntent] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(
        factory=lambda: {
            "tunnelWrites": 0,
            "tunnelRemovals": 0,
            "firewallSyncs": 0,
            "declares": 0,
            "endpointsRefreshed": 0,
        }
    )
    removal_errors: dict[str, str] = attrs.field(factory=dict)


class MeshSync(Reconciler[MeshAnswer, Observed, Plan, Outcome]):
    """The reconciler (see the module doc)."""

    task_name = TASK_NAME
    resource = RESOURCE
    payload_errors = (MeshPayloadError,)
    error = MeshSyncError
    allow_removal_key = "mesh.allowRemoval"

    def __init__(self, ctx: PluginContext) -> None:
        self.public_key: str | None = None
        self.peers: dict[int, dict[str, Any]] = {}
        """Per listed peer: state, interface, port (for /status)."""
        self._live: dict[int, DesiredPeer] = {}
        """Peers whose tunnel is configured, by node id (link targets, /restart)."""
        self._latency: dict[str, LinkLatency] = {}
        self._sent_digest: str | None = None
        self._sent_at: float | None = None
        self.report_error: str | None = None
        self._deep_at: float | None = None
        """When the last deep check of the tunnels ran (monotonic; None: not yet)."""
        self.deep_check = False
        """Whether this cycle's observation was the deep one."""
        self._m_peers = ctx.metrics.gauge("peers", "Mesh peers listed by the CP, by state", ["state"])
        self._swept = False
        super().__init__(ctx)
        try:
            self.public_key = self._load_public_key(ctx.backend("tunnel", TunnelBackend))
        except Exception as exc:  # the first run reports it properly
            ctx.log.warning("mesh key not available yet: {}", exc)

    # ----------------------------------------------------------- plumbing

    @property
    def section(self) -> MeshConfig:
        section = self.ctx.section
        return section if isinstance(section, MeshConfig) else MeshConfig()

    def enabled(self) -> bool:
        return self.section.enabled

    @property
    def key_file(self) -> str:
        return str(self.ctx.state.path(KEY_FILE))

    def _load_public_key(self, tunnel: TunnelBackend) -> str:
        self.ctx.state.ensure()
        if ensure_private_key(self.key_file):
            self.ctx.log.warning("generated the node's mesh private key in {} (mode 0600)", self.key_file)
        return tunnel.public_key(self.key_file)

    def _backends(self) -> tuple[TunnelBackend, FirewallBackend, RoutingBackend]:
        return (
            self.ctx.backend("tunnel", TunnelBackend),
            self.ctx.backend("firewall", FirewallBackend),
            self.ctx.backend("routing", RoutingBackend),
        )

    def load_state(self) -> tuple[dict[str, Record], dict[str, BabelInterfaceIntent]]:
        """Per-tunnel records and the accepted fragments (written only after the
        apply, the fragments only as the routing backend accepted them: never
        intent); a bad file fails the run."""
        if not self._swept:
            # The temporary file of a write the agent was killed in (the old file is intact).
            sweep_partial_writes(self.ctx.state.root)
            self._swept = True
        doc = self.ctx.state.load_document(STATE_FILE)
        if doc is None:
            return {}, {}
        if not isinstance(doc.get("records"), Mapping) or not isinstance(doc.get("fragments"), Mapping):
            raise MeshSyncError(f"{self.ctx.state.path(STATE_FILE)}: not a mesh state file")
        records = {str(k): r for k, v in doc["records"].items() if (r := Record.from_json(v)) is not None}
        fragments: dict[str, BabelInterfaceIntent] = {}
        for key, value in doc["fragments"].items():
            fragment = babel_from_json(value)
            if fragment is not None:  # an unusable one is declared again
                fragments[str(key)] = fragment
        return records, fragments

    def save_state(
        self, records: Mapping[str, Record], fragments: Mapping[str, BabelInterfaceIntent]
    ) -> bool:
        return self.ctx.state.save_document(
            STATE_FILE,
            {
                "records": {k: r.to_json() for k, r in sorted(records.items())},
                "fragments": {k: intent_to_json(v) for k, v in sorted(fragments.items())},
            },
        )

    def settings(self, node_id: int) -> MeshSettings:
        assert self.public_key is not None
        return MeshSettings.from_config(
            self.ctx.config,
            self.section,
            node_id=node_id,
            private_key_file=self.key_file,
            public_key=self.public_key,
        )

    # ------------------------------------------------------- the cycle's steps

    async def prepare(self) -> None:
        try:
            self.public_key = self._load_public_key(self.ctx.backend("tunnel", TunnelBackend))
        except Exception as exc:
            raise MeshSyncError(f"the mesh key {self.key_file} is unusable: {exc}") from None

    def parse(self, raw: Any) -> MeshAnswer:
        node_id = self.ctx.config.node.id or None
        return parse_mesh(
            raw, node_id=node_id, max_peers=self.section.max_peers, own_public_key=self.public_key
        )

    async def observe(self, desired: MeshAnswer) -> Observed:
        try:
            listen_port(desired.node_id, self.section.port_base)
        except AddressingError as exc:
            raise MeshSyncError(f"this node's id cannot be meshed: {exc}; nothing changed") from None
        tunnel, firewall, _ = self._backends()
        records, fragments = self.load_state()
        # The deep read (every tunnel's WireGuard settings) on mesh.deepCheckInterval's
        # cadence and on the first cycle after a start; the cheap one otherwise.
        now = self.ctx.clock.monotonic()
        interval = self.section.deep_check_interval
        last = self._deep_at
        self.deep_check = last is None or interval <= 0 or now - last >= interval
        if self.deep_check:
            self._deep_at = now
        return Observed(
            tunnels=dict(await (tunnel.list() if self.deep_check else tunnel.observe())),
            ports=frozenset(await firewall.list_ports(owner=OWNER)),
            fragments=fragments,
            records=records,
        )

    def plan(self, answer: Answer[MeshAnswer], observed: Observed) -> Plan:
        mesh = answer.value
        settings = self.settings(mesh.node_id)
        errors = {i.node_id: i.reason for i in mesh.invalid if i.node_id is not None}
        desired: dict[int, DesiredPeer] = {}
        for peer in mesh.peers:
            try:
                desired[peer.node_id] = build_desired(peer, settings)
            except DesiredError as exc:
                errors[peer.node_id] = str(exc)
        return plan(
            desired.values(),
            errors,
            mesh.present,
            observed,
            prefix=settings.prefix,
            guard=self.guard_policy(),
            override=self.section.allow_removal or None,
            window=self.guard_window,
        )

    def verdict(self, plan: Plan) -> GuardVerdict:
        return plan.guard

    async def apply(self, p: Plan, observed: Observed) -> Outcome:
        tunnel, firewall, routing = self._backends()
        out = Outcome(records=dict(observed.records), applied=dict(observed.fragments))
        ports = set(p.ports)
        fragments = dict(p.fragments)
        await self._remove(p, observed, tunnel, out, ports, fragments)
        await self._ensure_tunnels(p, observed, tunnel, out, ports, fragments)
        await self._sync_ports(p, observed, firewall, out, frozenset(ports))
        await self._declare(p, observed, routing, out, fragments)
        if self.save_state(out.records, out.applied):
            crashpoint("mesh.state.saved")
        try:
            # Host-name endpoints whose handshake went stale: resolve again (once per cycle).
            out.counts["endpointsRefreshed"] = len(await tunnel.refresh_endpoints(owner=OWNER))
        except Exception as exc:
            self.ctx.log.warning("endpoint refresh failed: {}", exc)
        return out

    async def report(self, answer: Answer[MeshAnswer], p: Plan, outcome: Outcome) -> dict[str, Any]:
        for i in answer.value.invalid:
            if i.node_id is None:
                self.ctx.log.warning("mesh: unreportable invalid peer: {}", i.reason)
        statuses = self._statuses(p, outcome)
        sent = await self.send_status(answer.value, p, statuses)
        return {
            "nodeId": answer.value.node_id,
            "peers": len(statuses),
            "configured": sum(1 for s in statuses.values() if s == CONFIGURED),
            "errors": {str(k): v for k, v in statuses.items() if v != CONFIGURED},
            "created": [pp.interface for pp in p.peers if pp.action is Action.CREATE],
            "updated": {pp.interface: list(pp.drift) for pp in p.peers if pp.action is Action.UPDATE},
            "removed": [n for n in p.remove if n not in outcome.removal_errors],
            "withheld": list(p.withheld),
            "guard": p.guard.status_info() if p.guard.refused or p.guard.overridden else None,
            **outcome.counts,
            "statusSent": sent,
            "deepCheck": self.deep_check,
        }

    def changes(self, summary: Mapping[str, Any]) -> int:
        return sum(int(summary.get(k, 0)) for k in ("tunnelWrites", "tunnelRemovals"))

    def plan_json(self, answer: Answer[MeshAnswer], p: Plan, observed: Observed) -> dict[str, Any]:
        lines = [
            f"node {pp.node_id} {pp.interface or '-'}: {pp.action}" + (f" ({pp.error})" if pp.error else "")
            for pp in p.peers
            if pp.action is not Action.NONE
        ]
        lines += [f.rstrip() for pp in p.peers for f in (f"    - {d}" for d in pp.drift)]
        lines += [f"remove {name}" for name in p.remove]
        if p.guard.refused:
            lines.append(f"GUARD REFUSED: {p.guard.reason} (digest {p.guard.digest})")
        opening, closing = sorted(p.ports - observed.ports), sorted(observed.ports - p.ports)
        if opening or closing:
            lines.append(f"firewall: open {opening} close {closing}")
        routing = p.fragments != observed.fragments
        lines.append(f"routing: {'one reconfigure' if routing else 'unchanged'}")
        empty = not (p.remove or routing or opening or closing) and all(
            pp.action in (Action.NONE, Action.ERROR) for pp in p.peers
        )
        return {
            "empty": empty,
            "lines": lines,
            "nodeId": answer.value.node_id,
            "peers": [
                {
                    "nodeId": pp.node_id,
                    "interface": pp.interface,
                    "action": str(pp.action),
                    "drift": list(pp.drift),
                    "error": pp.error,
                }
                for pp in p.peers
            ],
            "remove": list(p.remove),
            "withheld": list(p.withheld),
            "system": {
                "firewall": {"open": opening, "close": closing},
                "routing": {"changed": routing, "fragments": sorted(p.fragments)},
                "guard": p.guard.status_info(),
            },
        }

    # ------------------------------------------------------------ apply phases

    async def _remove(
        self,
        p: Plan,
        observed: Observed,
        tunnel: TunnelBackend,
        out: Outcome,
        ports: set[int],
        fragments: dict[str, BabelInterfaceIntent],
    ) -> None:
        """Departed peers first (frees their names and ports)."""
        mesh = observed.mesh
        for name in p.remove:
            try:
                if await tunnel.remove(name, owner=OWNER):
                    out.counts["tunnelRemovals"] += 1
                    crashpoint("mesh.tunnel.removed")
                out.records.pop(name, None)
                self.ctx.log.info("mesh: removed tunnel {}", name)
            except Exception as exc:
                out.removal_errors[name] = str(exc)
                self.ctx.log.error("mesh: removing tunnel {} failed: {}", name, exc)
                # It is still there: its port and Babel interface stay as they were.
                kept_port = mesh[name].listen_port if name in mesh else None
                if kept_port is not None:
                    ports.add(kept_port)
                if name in observed.fragments:
                    fragments[name] = observed.fragments[name]
        planned = {pp.interface for pp in p.peers}
        for name in list(out.records):
            if name not in mesh and name not in planned:
                out.records.pop(name)  # gone from the system by other means

    async def _ensure_tunnels(
        self,
        p: Plan,
        observed: Observed,
        tunnel: TunnelBackend,
        out: Outcome,
        ports: set[int],
        fragments: dict[str, BabelInterfaceIntent],
    ) -> None:
        """Creates and in-place updates."""
        failed_creates: list[DesiredPeer] = []
        for pp in p.peers:
            d = pp.desired
            if d is None or pp.action not in (Action.CREATE, Action.UPDATE):
                continue
            try:
                written = await tunnel.ensure(d.spec)
            except Exception as exc:
                out.failed[d.node_id] = f"tunnel {d.interface}: {exc}"
                self.ctx.log.error("mesh peer {}: tunnel {} failed: {}", d.node_id, d.interface, exc)
                if pp.action is Action.CREATE:
                    failed_creates.append(d)
                elif d.interface in observed.fragments:
                    fragments[d.interface] = observed.fragments[d.interface]
                continue
            if written:
                out.counts["tunnelWrites"] += 1
                self.ctx.log.info(
                    "mesh peer {}: tunnel {} {} ({})",
                    d.node_id,
                    d.interface,
                    "created" if pp.action is Action.CREATE else "updated",
                    ", ".join(pp.drift),
                )
            out.records[d.interface] = Record(node_id=d.node_id, digest=d.digest, endpoint=d.spec.endpoint)
            crashpoint("mesh.tunnel.ensured")
        if not failed_creates:
            return
        # A create that failed before the link existed leaves nothing: no port, no Babel
        # interface. One that failed later (an endpoint name that does not resolve yet)
        # left a usable tunnel the peer may reach: it keeps its port and interface and,
        # having no record, is ensured again next cycle.
        try:
            exists = set(await tunnel.list(owner=OWNER))
        except Exception as exc:
            self.ctx.log.error("mesh: cannot list tunnels after a failed create: {}", exc)
            exists = set()
        for d in failed_creates:
            if d.interface not in exists:
                ports.discard(d.port)
                fragments.pop(d.interface, None)

    async def _sync_ports(
        self, p: Plan, observed: Observed, firewall: FirewallBackend, out: Outcome, want: frozenset[int]
    ) -> None:
        """One firewall transaction, only when the open set differs."""
        if want == observed.ports:
            return
        try:
            await firewall.sync(want, owner=OWNER)
            out.counts["firewallSyncs"] += 1
        except Exception as exc:
            self.ctx.log.error("mesh: firewall sync failed: {}", exc)
            for pp in p.peers:
                d = pp.desired
                if d is not None and d.node_id not in out.failed and d.port not in observed.ports:
                    out.failed[d.node_id] = f"firewall: port {d.port} not opened: {exc}"

    async def _declare(
        self,
        p: Plan,
        observed: Observed,
        routing: RoutingBackend,
        out: Outcome,
        fragments: dict[str, BabelInterfaceIntent],
    ) -> None:
        """One declare, only when the Babel interface set differs."""
        if fragments == observed.fragments:
            return
        out.counts["declares"] += 1
        try:
            result = await routing.declare(OWNER, fragments)
            crashpoint("mesh.routing.declared")
        except Exception as exc:
            result = ApplyResult(ok=False, changed=False, error=f"{type(exc).__name__}: {exc}")
        if result.ok:
            out.applied = {k: v for k, v in fragments.items() if k not in result.rejected}
        else:
            self.ctx.log.error("mesh: routing not updated: {}", result.error)
        by_iface = {pp.interface: pp.node_id for pp in p.peers if pp.interface}
        for name, why in result.rejected.items():
            if name in by_iface:
                out.failed.setdefault(by_iface[name], f"routing: {why}")
        if not result.ok:
            for name, node_id in by_iface.items():
                if fragments.get(name) != observed.fragments.get(name):
                    out.failed.setdefault(node_id, f"routing: {result.error or 'apply failed'}")

    # ------------------------------------------------------------- reporting

    def _statuses(self, p: Plan, outcome: Outcome) -> dict[int, str]:
        statuses: dict[int, str] = {}
        live: dict[int, DesiredPeer] = {}
        self.peers = {}
        for pp in p.peers:
            if pp.action is Action.ERROR:
                state = f"error: {pp.error}"
            elif pp.node_id in outcome.failed:
                state = f"error: {outcome.failed[pp.node_id]}"
            else:
                state = CONFIGURED
                if pp.desired is not None:
                    live[pp.node_id] = pp.desired
            statuses[pp.node_id] = state
            d = pp.desired
            self.peers[pp.node_id] = {
                "state": state,
                "interface": pp.interface,
                "listenPort": d.port if d is not None else None,
                "endpoint": d.spec.endpoint if d is not None else None,
                "name": d.name if d is not None else None,
            }
        self._live = live
        configured = sum(1 for s in statuses.values() if s == CONFIGURED)
        self._m_peers.labels(state="configured").set(configured)
        self._m_peers.labels(state="error").set(len(statuses) - configured)
        return statuses

    async def send_status(self, answer: MeshAnswer, p: Plan, statuses: Mapping[int, str]) -> bool:
        """``POST mesh/status`` when it changed or is due again; True when sent."""
        body: dict[str, Any] = {
            "node_id": self.ctx.node,
            "peers": {str(k): v for k, v in sorted(statuses.items())},
            "nodeId": answer.node_id,
            "meshPublicKey": self.public_key,
            "interfaces": {str(d.node_id): d.interface for d in self._live.values()},
            "listenPorts": {str(d.node_id): d.port for d in self._live.values()},
            "guardRefused": p.guard.refused,
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        now = self.ctx.clock.monotonic()
        repeat = self.section.status_repeat
        if (
            digest == self._sent_digest
            and self._sent_at is not None
            and repeat > 0
            and now - self._sent_at < repeat
        ):
            return False
        body["timestamp"] = int(self.ctx.clock.time())
        try:
            await self.ctx.cp.send(STATUS_RESOURCE, body)
        except Exception as exc:
            self.report_error = str(exc)
            self._sent_digest = None
            self.ctx.log.warning("mesh: status report not delivered (retried next cycle): {}", exc)
            return False
        self.report_error = None
        self._sent_digest, self._sent_at = digest, now
        return True

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def moenet_heartbeat_fields(self) -> dict[str, Any] | None:
        if not self.enabled() or self.public_key is None:
            return None
        return {"meshPublicKey": self.public_key}

    @hookimpl
    def moenet_link_targets(self) -> list[LinkTarget]:
        return [
            LinkTarget(
                owner=OWNER,
                key=str(d.node_id),
                interface=d.interface,
                addresses=(d.link_local, *d.loopbacks),
                labels={"node": d.name or str(d.node_id), "nodeId": str(d.node_id)},
            )
            for d in sorted(self._live.values(), key=lambda d: d.node_id)
        ]

    @hookimpl
    def moenet_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
        for m in measurements:
            if m.owner == OWNER:
                self._latency[m.key] = m

    @hookimpl
    def moenet_restart(self, interface: str) -> RestartAction | None:
        found = [d for d in self._live.values() if d.interface == interface]
        if not found:
            return None
        d = found[0]

        async def restart() -> Mapping[str, Any]:
            tunnel = self.ctx.backend("tunnel", TunnelBackend)
            async with self.lock:
                try:
                    written = await tunnel.ensure(d.spec)
                except Exception as exc:
                    raise ApiError(502, "restart_failed", f"tunnel {d.interface}: {exc}") from None
            self.ctx.log.info("mesh peer {}: tunnel {} re-applied ({})", d.node_id, d.interface, written)
            return {"interface": d.interface, "nodeId": d.node_id, "tunnelRepaired": written}

        return restart

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        peers: dict[str, Any] = {}
        for node_id, info in sorted(self.peers.items()):
            m = self._latency.get(str(node_id))
            peers[str(node_id)] = {
                **info,
                "rttMs": m.rtt_ms if m is not None else None,
                "loss": m.loss if m is not None else None,
            }
        return {
            "enabled": self.enabled(),
            "publicKey": self.public_key,
            "peers": peers,
            **self.status_info(),
            "statusReportError": self.report_error,
            "linkLocal": link_local(self.last["nodeId"]) if self.last and self.last.get("nodeId") else None,
        }


def babel_from_json(value: Any) -> BabelInterfaceIntent | None:
    """A saved Babel fragment: the intent's JSON form, or the previous version's
    plain payload (no ``kind``); None when it is unusable (declared again)."""
    try:
        if isinstance(value, Mapping) and "kind" not in value:
            intent = intent_from_legacy(BabelInterfaceIntent.kind, value)
        else:
            intent = intent_from_json(value)
    except IntentError:
        return None
    return intent if isinstance(intent, BabelInterfaceIntent) else None
