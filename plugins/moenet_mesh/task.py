"""The ``meshSync`` task: make the node's WireGuard + Babel mesh match the control plane.

One cycle (every 120 s and on ``/sync``):

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

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import hookimpl
from moenet_core.backends import ApplyResult, FirewallBackend, RoutingBackend, TunnelBackend
from moenet_core.descriptors import LinkLatency, LinkTarget, RestartAction, SyncEvent
from moenet_core.errors import ControlPlaneError, ControlPlaneUnavailable, MoenetError
from moenet_core.guard import GuardPolicy, GuardVerdict

from .addressing import AddressingError, link_local, listen_port
from .config import MeshSyncConfig
from .desired import OWNER, DesiredError, DesiredPeer, MeshSettings, build_desired
from .keys import KEY_FILE, ensure_private_key
from .model import MeshAnswer, MeshPayloadError, parse_mesh
from .planner import Action, Observed, Plan, Record, plan

if TYPE_CHECKING:
    from moenet_core.context import PluginContext

__all__ = ["RESOURCE", "STATUS_RESOURCE", "TASK_NAME", "MeshSync", "MeshSyncError"]

TASK_NAME = "meshSync"
RESOURCE = "mesh"
STATUS_RESOURCE = "mesh/status"
ANSWER_FILE = "answer.json"
STATE_FILE = "state.json"
CONFIGURED = "configured"


class MeshSyncError(MoenetError):
    """A cycle could not do its job (the reason says what was kept)."""


@attrs.frozen(kw_only=True)
class _Answer:
    answer: MeshAnswer
    source: str
    problem: str | None = None
    fatal: bool = False


@attrs.define
class _Outcome:
    failed: dict[int, str] = attrs.field(factory=dict)
    records: dict[str, Record] = attrs.field(factory=dict)
    applied: dict[str, Mapping[str, Any]] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(
        factory=lambda: {"tunnelWrites": 0, "tunnelRemovals": 0, "firewallSyncs": 0, "declares": 0}
    )
    removal_errors: dict[str, str] = attrs.field(factory=dict)


class MeshSync:
    """The reconciler (see the module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.public_key: str | None = None
        self.guard: GuardVerdict | None = None
        self.last: dict[str, Any] | None = None
        self.peers: dict[int, dict[str, Any]] = {}
        """Per listed peer: state, interface, port (for /status)."""
        self._live: dict[int, DesiredPeer] = {}
        """Peers whose tunnel is configured, by node id (link targets, /restart)."""
        self._latency: dict[str, LinkLatency] = {}
        self._sent_digest: str | None = None
        self._sent_at: float | None = None
        self.report_error: str | None = None
        self._lock = asyncio.Lock()
        self._m_peers = ctx.metrics.gauge("peers", "Mesh peers listed by the CP, by state", ["state"])
        self._m_refused = ctx.metrics.gauge("guard_refused", "1 while the guard withholds mesh removals")
        try:
            self.public_key = self._load_public_key(ctx.backend("tunnel", TunnelBackend))
        except Exception as exc:  # the first run reports it properly
            ctx.log.warning("mesh key not available yet: {}", exc)
        ctx.register_hooks(self)

    # ----------------------------------------------------------- plumbing

    @property
    def section(self) -> MeshSyncConfig:
        section = self.ctx.section
        return section if isinstance(section, MeshSyncConfig) else MeshSyncConfig()

    @property
    def enabled(self) -> bool:
        return self.ctx.config.mesh.enabled

    @property
    def key_file(self) -> str:
        return str(self.ctx.state.path(KEY_FILE))

    def _load_public_key(self, tunnel: TunnelBackend) -> str:
        self.ctx.state.ensure()
        if ensure_private_key(self.key_file):
            self.ctx.log.warning("generated the node's mesh private key in {} (mode 0600)", self.key_file)
        return tunnel.public_key(self.key_file)

    def load_state(self) -> tuple[dict[str, Record], dict[str, Mapping[str, Any]]]:
        """Per-tunnel records and the accepted fragments; a bad file fails the run."""
        raw = self.ctx.state.read_json(STATE_FILE)
        if raw is None:
            return {}, {}
        if (
            not isinstance(raw, Mapping)
            or raw.get("version") != 1
            or not isinstance(raw.get("records"), Mapping)
            or not isinstance(raw.get("fragments"), Mapping)
        ):
            raise MeshSyncError(f"{self.ctx.state.path(STATE_FILE)}: not a version-1 mesh state file")
        records = {str(k): r for k, v in raw["records"].items() if (r := Record.from_json(v)) is not None}
        fragments: dict[str, Mapping[str, Any]] = {
            str(k): dict(v) for k, v in raw["fragments"].items() if isinstance(v, Mapping)
        }
        return records, fragments

    def save_state(self, records: Mapping[str, Record], fragments: Mapping[str, Mapping[str, Any]]) -> bool:
        doc = {
            "version": 1,
            "records": {k: r.to_json() for k, r in sorted(records.items())},
            "fragments": {k: dict(v) for k, v in sorted(fragments.items())},
        }
        if self.ctx.state.read_json(STATE_FILE) == doc:
            return False
        self.ctx.state.write_json(STATE_FILE, doc)
        return True

    def _parse(self, raw: Any) -> MeshAnswer:
        node_id = self.ctx.config.node.id or None
        return parse_mesh(
            raw, node_id=node_id, max_peers=self.section.max_peers, own_public_key=self.public_key
        )

    async def fetch_answer(self, *, persist: bool = True) -> _Answer:
        """The CP's answer, or the saved one when the CP cannot give a usable one."""
        fatal = False
        try:
            raw = await self.ctx.cp.fetch(RESOURCE)
        except ControlPlaneUnavailable as exc:
            problem = f"control plane unreachable for {RESOURCE}: {exc}"
        except ControlPlaneError as exc:
            problem, fatal = f"control plane refused {RESOURCE}: {exc}", True
        else:
            try:
                answer = self._parse(raw)
            except MeshPayloadError as exc:
                problem, fatal = f"invalid {RESOURCE} answer from the control plane: {exc}", True
            else:
                if persist:
                    doc = {"version": 1, "answer": raw}
                    if self.ctx.state.read_json(ANSWER_FILE) != doc:
                        self.ctx.state.write_json(ANSWER_FILE, doc)
                return _Answer(answer=answer, source="controlPlane")
        saved = self.ctx.state.read_json(ANSWER_FILE)
        if saved is None:
            raise MeshSyncError(f"{problem}; no saved answer to serve, nothing changed")
        try:
            if not isinstance(saved, Mapping) or saved.get("version") != 1:
                raise MeshPayloadError("not a version-1 saved answer")
            answer = self._parse(saved.get("answer"))
        except MeshPayloadError as exc:
            raise MeshSyncError(f"{problem}; the saved answer is unusable ({exc}), nothing changed") from None
        return _Answer(
            answer=answer, source="saved", problem=f"{problem}; serving the last valid answer", fatal=fatal
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

    def policy(self) -> GuardPolicy:
        return GuardPolicy(max_share=self.section.guard_max_share, min_count=self.section.guard_min_count)

    # ------------------------------------------------------------ the cycle

    async def run_once(self) -> dict[str, Any]:
        async with self._lock:
            started = time.monotonic()
            try:
                summary = await self._cycle()
            except Exception as exc:
                self.ctx.emit_sync_completed(
                    SyncEvent(task=TASK_NAME, ok=False, duration=time.monotonic() - started, error=str(exc))
                )
                raise
            problem = summary.get("problem")
            self.ctx.emit_sync_completed(
                SyncEvent(
                    task=TASK_NAME,
                    ok=not summary.get("fatal"),
                    duration=time.monotonic() - started,
                    changes=sum(summary.get(k, 0) for k in ("tunnelWrites", "tunnelRemovals")),
                    error=problem if summary.get("fatal") else None,
                )
            )
            if summary.pop("fatal", False):
                raise MeshSyncError(str(problem))
            return summary

    async def _cycle(self) -> dict[str, Any]:
        started = time.monotonic()
        if not self.enabled:
            self.last = {"enabled": False, "at": self.ctx.clock.time()}
            return {"enabled": False}
        tunnel = self.ctx.backend("tunnel", TunnelBackend)
        firewall = self.ctx.backend("firewall", FirewallBackend)
        routing = self.ctx.backend("routing", RoutingBackend)
        try:
            self.public_key = self._load_public_key(tunnel)
        except Exception as exc:
            raise MeshSyncError(f"the mesh key {self.key_file} is unusable: {exc}") from None
        got = await self.fetch_answer()
        answer = got.answer
        try:
            listen_port(answer.node_id, self.section.port_base)
        except AddressingError as exc:
            raise MeshSyncError(f"this node's id cannot be meshed: {exc}; nothing changed") from None
        settings = self.settings(answer.node_id)

        errors = {i.node_id: i.reason for i in answer.invalid if i.node_id is not None}
        for i in answer.invalid:
            if i.node_id is None:
                self.ctx.log.warning("mesh: unreportable invalid peer: {}", i.reason)
        desired: dict[int, DesiredPeer] = {}
        for peer in answer.peers:
            try:
                desired[peer.node_id] = build_desired(peer, settings)
            except DesiredError as exc:
                errors[peer.node_id] = str(exc)

        records, fragments = self.load_state()
        observed = Observed(
            tunnels=dict(await tunnel.list()),
            ports=frozenset(await firewall.list_ports(owner=OWNER)),
            fragments=fragments,
            records=records,
        )
        p = plan(
            desired.values(),
            errors,
            answer.present,
            observed,
            prefix=settings.prefix,
            guard=self.policy(),
            override=self.section.allow_removal or None,
        )
        self._note_guard(p.guard)
        outcome = await self.apply(p, observed, tunnel, firewall, routing)
        self.save_state(outcome.records, outcome.applied)
        refreshed = await refresh_endpoints(tunnel, OWNER, self.ctx.log)

        statuses = self._statuses(p, outcome)
        sent = await self.report(answer, p, statuses)
        summary: dict[str, Any] = {
            "answer": got.source,
            "nodeId": answer.node_id,
            "peers": len(statuses),
            "configured": sum(1 for s in statuses.values() if s == CONFIGURED),
            "errors": {str(k): v for k, v in statuses.items() if v != CONFIGURED},
            "created": [pp.interface for pp in p.peers if pp.action is Action.CREATE],
            "updated": {pp.interface: list(pp.drift) for pp in p.peers if pp.action is Action.UPDATE},
            "removed": [n for n in p.remove if n not in outcome.removal_errors],
            "withheld": list(p.withheld),
            "guard": p.guard.status_info() if p.guard.refused or p.guard.overridden else None,
            **outcome.counts,
            "endpointsRefreshed": refreshed,
            "statusSent": sent,
            "seconds": round(time.monotonic() - started, 4),
        }
        self.last = {**summary, "problem": got.problem, "at": self.ctx.clock.time()}
        if got.problem is not None:
            if not got.fatal:
                self.ctx.log.warning("{}", got.problem)
            summary["problem"] = got.problem
            summary["fatal"] = got.fatal
        return summary

    def _note_guard(self, verdict: GuardVerdict) -> None:
        if verdict.newly_refused(self.guard):
            self.ctx.log.error(
                "mesh guard: {} (allow with meshSync.allowRemoval: {})", verdict.reason, verdict.digest
            )
        self.guard = verdict
        self._m_refused.set(1 if verdict.refused else 0)

    # -------------------------------------------------------------- applying

    async def apply(
        self,
        p: Plan,
        observed: Observed,
        tunnel: TunnelBackend,
        firewall: FirewallBackend,
        routing: RoutingBackend,
    ) -> _Outcome:
        out = _Outcome(records=dict(observed.records), applied=dict(observed.fragments))
        mesh = observed.mesh
        ports = set(p.ports)
        fragments = dict(p.fragments)

        # 1. removals: departed peers (frees their names and ports)
        for name in p.remove:
            try:
                if await tunnel.remove(name, owner=OWNER):
                    out.counts["tunnelRemovals"] += 1
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

        # 2. creates and in-place updates
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
        if failed_creates:
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

        # 3. one firewall transaction, only when the open set differs
        want_ports = frozenset(ports)
        if want_ports != observed.ports:
            try:
                await firewall.sync(want_ports, owner=OWNER)
                out.counts["firewallSyncs"] += 1
            except Exception as exc:
                self.ctx.log.error("mesh: firewall sync failed: {}", exc)
                for pp in p.peers:
                    d = pp.desired
                    if d is not None and d.node_id not in out.failed and d.port not in observed.ports:
                        out.failed[d.node_id] = f"firewall: port {d.port} not opened: {exc}"

        # 4. one declare, only when the Babel interface set differs
        if _plain(fragments) != _plain(observed.fragments):
            out.counts["declares"] += 1
            try:
                result = await routing.declare(OWNER, fragments)
            except Exception as exc:
                result = ApplyResult(ok=False, changed=False, error=f"{type(exc).__name__}: {exc}")
            if result.ok:
                out.applied = {k: dict(v) for k, v in fragments.items() if k not in result.rejected}
            else:
                self.ctx.log.error("mesh: routing not updated: {}", result.error)
            by_iface = {pp.interface: pp.node_id for pp in p.peers if pp.interface}
            for name, why in result.rejected.items():
                if name in by_iface:
                    out.failed.setdefault(by_iface[name], f"routing: {why}")
            if not result.ok:
                for name, node_id in by_iface.items():
                    if _plain(fragments.get(name)) != _plain(observed.fragments.get(name)):
                        out.failed.setdefault(node_id, f"routing: {result.error or 'apply failed'}")
        return out

    # ------------------------------------------------------------- reporting

    def _statuses(self, p: Plan, outcome: _Outcome) -> dict[int, str]:
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

    async def report(self, answer: MeshAnswer, p: Plan, statuses: Mapping[int, str]) -> bool:
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
        if not self.enabled or self.public_key is None:
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
            from moenet_core.api import ApiError

            tunnel = self.ctx.backend("tunnel", TunnelBackend)
            async with self._lock:
                try:
                    written = await tunnel.ensure(d.spec)
                except Exception as exc:
                    raise ApiError(502, "restart_failed", f"tunnel {d.interface}: {exc}") from None
            self.ctx.log.info("mesh peer {}: tunnel {} re-applied ({})", d.node_id, d.interface, written)
            return {"interface": d.interface, "nodeId": d.node_id, "tunnelRepaired": written}

        return restart

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        g = self.guard
        peers: dict[str, Any] = {}
        for node_id, info in sorted(self.peers.items()):
            m = self._latency.get(str(node_id))
            peers[str(node_id)] = {
                **info,
                "rttMs": m.rtt_ms if m is not None else None,
                "loss": m.loss if m is not None else None,
            }
        return {
            "enabled": self.enabled,
            "publicKey": self.public_key,
            "peers": peers,
            "lastRun": self.last,
            "guard": g.status_info() if g is not None else None,
            "guardRefused": bool(g and g.refused),
            "statusReportError": self.report_error,
            "linkLocal": link_local(self.last["nodeId"]) if self.last and self.last.get("nodeId") else None,
        }


def _plain(value: Any) -> Any:
    """Mappings to dicts, tuples to lists: compare fragment sets regardless of type."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


async def refresh_endpoints(tunnel: TunnelBackend, owner: str, log: Any) -> list[str]:
    """Re-resolve this owner's host-name endpoints whose handshake is stale (once
    per cycle); a failure is logged, never the cycle's."""
    try:
        return list(await tunnel.refresh_endpoints(owner=owner))
    except Exception as exc:
        log.warning("endpoint refresh failed: {}", exc)
        return []
