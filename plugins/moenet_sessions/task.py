"""The ``sessionSync`` task: make the node's eBGP sessions match the control plane.

A :class:`~moenet_core.reconcile.Reconciler`: the core runs the cycle (fetch with the
last valid answer, lock, guard logging, ``moenet_sync_completed``, how a failed cycle
ends); this module supplies its steps. One cycle (DESIGN.md §4):

1. **Fetch** ``sessions``. An unreachable CP is not "no sessions": the persisted
   last valid answer is served instead (the node keeps running, drift is still
   repaired). An answer that is wrong as a whole (a CP error reply, a body that
   is not a session list) is refused: the last valid one is served and the run
   ends with a :class:`SessionSyncError` so ``/status`` shows why.
2. **Parse** (``model.parse_sessions``) and persist the answer when it changed.
3. **Observe**: the tunnel backend's cheap ``observe`` (its deep ``list`` on the
   first cycle after a start and every ``sessions.deepCheckInterval`` seconds:
   ``deepCheck`` in the summary), the firewall's open ports, and the
   ``sessions`` fragments the routing backend has *applied*. The routing
   interface has no read-back of applied fragments, so the task persists what it
   declared and the backend accepted (``applied.json``: declared minus
   ``ApplyResult.rejected``, updated only when the apply succeeded). That is the
   truth the planner diffs against; a fragment the backend rejected is therefore
   re-declared and never counted as live. Without the file (the agent was killed
   in its first apply) the applied fragments are observed: those whose protocols
   the routing daemon runs (:meth:`SessionSync.observe_applied`); the intent
   records written before an apply never stand in for "applied".
4. **Plan** (``planner.plan``) with the guard policy of the ``sessions`` section,
   then persist the intent (``with_intent``) *before* touching anything, so a
   crash mid-apply leaves the agent knowing what it may have created.
5. **Apply in phases**: removals first (they free names and ports a successor may
   want), tunnel creates/updates (PSK files written 0600 first), one firewall
   sync with the full port set, then ONE ``declare("sessions", all fragments)``.
   Tunnels are ensured ``sessions.tunnelConcurrency`` at a time.
   A ``QUEUED_FOR_SETUP`` session that failed permanently (its own data, the
   routing daemon rejecting it) is rolled back (tunnel removed, its port and
   fragment left out, re-declared without it) so nothing half-built stays. A
   failure a retry may fix (:class:`~moenet_core.Failure` ``transient``: BIRD
   down or without a policy, a ``wireguard-go`` that did not start, DNS) rolls
   nothing back: the session keeps its CP status, is reported with ``lastError``
   and is tried again after 1, 2, 4... sync intervals (``Previous.retry``,
   persisted; ``retrying`` in the summary). An ``ACTIVE`` session failing
   transiently stays ``ACTIVE`` with ``lastError`` instead of ``ERROR``.
   Before a session is reported ``ACTIVE`` its tunnel, port and BGP protocols
   must be live (:meth:`SessionSync.confirm_live`: one ``protocols()`` read, only
   in a cycle with such a report); one that is not fails transiently.
6. **Report**: per session the success or failure report (deduplicated by the
   planner), ``SessionStatusEvent`` for every status change, reports queued in
   the persisted :class:`~.store.Outbox` and then delivered (acked on success,
   kept on failure: a CP outage never loses a report).

Nothing is written for an unchanged session: no file, no tunnel call, no
firewall transaction, no declare.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import (
    Answer,
    ApiError,
    ApplyResult,
    ControlPlaneError,
    ControlPlaneUnavailable,
    EbgpPeerIntent,
    Failure,
    FirewallBackend,
    LinkLatency,
    LinkTarget,
    MoenetError,
    Reconciler,
    RestartAction,
    RoutingBackend,
    SessionStatus,
    SessionStatusEvent,
    TunnelBackend,
    TunnelSpec,
    atomic_write,
    crashpoint,
    hookimpl,
    map_bounded,
    sweep_partial_writes,
)

from .adopt import Adoptions
from .collector import TASK_NAME as COLLECTOR_TASK
from .config import SessionsConfig
from .desired import NodeSettings
from .keys import missing_key_problem
from .links import LinkBook
from .model import Invalid, Session, SessionsPayloadError, parse_sessions
from .planner import (
    ORPHAN_PREFIX,
    DesiredCache,
    Kind,
    Observed,
    Plan,
    SessionPlan,
    TunnelAction,
    next_previous,
    plan,
    with_intent,
)
from .records import ConfiguredSession, Previous, Report, peer_from_json, peer_to_json
from .store import Outbox, SessionStore

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["APPLIED_FILE", "RESOURCE", "TASK_NAME", "SessionSync", "SessionSyncError"]

TASK_NAME = "sessionSync"
RESOURCE = "sessions"
OWNER = "sessions"
APPLIED_FILE = "applied.json"
#: Longest wait between repeats of a report the CP accepted but contradicts.
REPEAT_MAX_SECONDS = 3600.0

Parsed = tuple[list[Session], list[Invalid]]


class SessionSyncError(MoenetError):
    """A sync cycle could not do its job (the reason says what was kept)."""


@attrs.frozen(kw_only=True)
class Now:
    """What a cycle observed: the system, and the agent's memory of it."""

    observed: Observed
    previous: Previous


@attrs.define(kw_only=True)
class Outcome:
    """What an apply did; the phases fill it in turn."""

    intent: Previous
    """The memory persisted before the apply (with every session about to be built)."""
    failed: dict[str, Failure] = attrs.field(factory=dict)
    """uuid -> why its apply failed (and whether a retry may fix it)."""
    applied: dict[str, EbgpPeerIntent] = attrs.field(factory=dict)
    """The fragment set the routing backend accepted (the next cycle's truth)."""
    declared: dict[str, EbgpPeerIntent] = attrs.field(factory=dict)
    """The fragment set last handed to the routing backend."""
    open_ports: frozenset[int] = frozenset()
    counts: dict[str, int] = attrs.field(
        factory=lambda: {"tunnelWrites": 0, "firewallSyncs": 0, "declares": 0, "endpointsRefreshed": 0}
    )


class SessionSync(Reconciler[Parsed, Now, Plan, Outcome]):
    """The reconciler (see the module doc)."""

    task_name = TASK_NAME
    resource = RESOURCE
    payload_errors = (SessionsPayloadError,)
    error = SessionSyncError
    allow_removal_key = "sessions.allowRemoval"

    def __init__(self, ctx: PluginContext) -> None:
        self._store: SessionStore | None = None
        self._applied: dict[str, EbgpPeerIntent] | None = None
        self._parsed: (
            tuple[bytes, tuple[int | None, str], tuple[tuple[Session, ...], tuple[Invalid, ...]]] | None
        ) = None
        """(answer digest, cap and scheme, result) of the last :meth:`parse`."""
        """What ``applied.json`` holds, once read or written (the only writer is this task)."""
        self._outbox: Outbox | None = None
        self._statuses: dict[str, SessionStatus] | None = None
        self.links = LinkBook(ctx.state)
        self._configured: Mapping[str, ConfiguredSession] | None = None
        self._accepted: dict[str, tuple[Report, int, float]] = {}
        """uuid -> (the report the CP last accepted, times repeated since, not before)."""
        self._known: dict[str, SessionStatusEvent] = {}
        """uuid -> its last status event (name, AS, error): ``session_view``."""
        self._deep_at: float | None = None
        """When the last deep read of the tunnels ran (monotonic; None: not since the start)."""
        self.deep_check = False
        """Whether this cycle's observation was the deep one (``deepCheck`` in the summary)."""
        self.desired = DesiredCache()
        """The last cycle's built sessions, reused while unchanged (planning at 1 000)."""
        super().__init__(ctx)

    # ----------------------------------------------------------- plumbing

    @property
    def section(self) -> SessionsConfig:
        section = self.ctx.section
        return section if isinstance(section, SessionsConfig) else SessionsConfig()

    @property
    def store(self) -> SessionStore:
        # Loaded lazily: an unreadable state file fails the run (visible in /status)
        # instead of the task's construction.
        if self._store is None:
            self._store = SessionStore(self.ctx.state)
            # A preshared key file being written when the agent was killed (never read).
            with contextlib.suppress(Exception):
                sweep_partial_writes(self.settings().psk_dir)
        return self._store

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(self.ctx.state)
        return self._outbox

    def settings(self) -> NodeSettings:
        return NodeSettings.from_config(self.ctx.config, self.section, identity=self.ctx.identity)

    def _backends(self) -> tuple[TunnelBackend, FirewallBackend, RoutingBackend]:
        return (
            self.ctx.backend("tunnel", TunnelBackend),
            self.ctx.backend("firewall", FirewallBackend),
            self.ctx.backend("routing", RoutingBackend),
        )

    async def load_applied(self, previous: Previous) -> dict[str, EbgpPeerIntent]:
        """The fragments the routing backend has applied (see the module doc):
        ``applied.json``, written only after an apply the backend confirmed.

        Without the file (the agent was killed during its first apply, or this is
        the first run after an upgrade) they are observed, never taken from intent
        (``with_intent`` records what *may* have been built): :meth:`observe_applied`.
        """
        if self._applied is not None:
            return dict(self._applied)  # the agent is the only writer (see SessionStore)
        doc = self.ctx.state.load_document(APPLIED_FILE)
        if doc is None:
            return await self.observe_applied(previous)
        if not isinstance(doc.get("fragments"), Mapping):
            raise SessionSyncError(f"{self.ctx.state.path(APPLIED_FILE)}: not a saved fragment set")
        out: dict[str, EbgpPeerIntent] = {}
        for key, value in doc["fragments"].items():
            try:
                out[str(key)] = peer_from_json(value)
            except MoenetError as exc:
                raise SessionSyncError(f"{self.ctx.state.path(APPLIED_FILE)}: {key}: {exc}") from None
        self._applied = dict(out)
        return out

    async def observe_applied(self, previous: Previous) -> dict[str, EbgpPeerIntent]:
        """The configured sessions whose fragment the routing backend holds and runs:
        every protocol it produced (``fragment_protocols``) is in the daemon's
        ``protocols()``. A backend that cannot say which protocols a fragment made
        (``fragment_protocols`` empty) confirms nothing: every fragment is declared
        again (one apply; an unchanged render writes nothing). When the daemon cannot
        be asked, the backend's own record of its last confirmed apply stands (the
        report step still confirms each ACTIVE session: :meth:`confirm_live`)."""
        routing = self.ctx.backend("routing", RoutingBackend)
        names = routing.fragment_protocols(OWNER)
        if not names:
            return {}
        live: set[str] | None
        try:
            live = {p.name for p in await routing.protocols()}
        except Exception as exc:
            live = None
            self.ctx.log.warning("sessions: cannot read the routing daemon's protocols: {}", exc)
        out: dict[str, EbgpPeerIntent] = {}
        for uuid, rec in previous.configured.items():
            protocols = names.get(uuid)
            if protocols and (live is None or set(protocols) <= live):
                out[uuid] = rec.peer
        self.ctx.log.info(
            "sessions: no {} (first apply interrupted, or an upgrade): {} of {} configured sessions "
            "observed live in the routing daemon",
            APPLIED_FILE,
            len(out),
            len(previous.configured),
        )
        return out

    def save_applied(self, fragments: Mapping[str, EbgpPeerIntent]) -> None:
        if self._applied is not None and dict(fragments) == self._applied:
            return
        self.ctx.state.save_document(
            APPLIED_FILE, {"fragments": {k: peer_to_json(v) for k, v in sorted(fragments.items())}}
        )
        self._applied = dict(fragments)
        crashpoint("sessions.applied.saved")

    # ------------------------------------------------------- the cycle's steps

    def _parse_terms(self) -> tuple[int | None, str]:
        """What a parse depends on besides the answer: the session cap and the status scheme."""
        return self.section.max_sessions, self.ctx.config.control_plane.status_scheme

    def reusable_digest(self) -> bytes | None:
        """The digest of the remembered parse, when it was made under today's cap
        and scheme and its answer is the one saved: an unchanged answer is then
        neither decoded nor parsed."""
        memo, store = self._parsed, self._store
        if memo is None or store is None or memo[1] != self._parse_terms():
            return None
        return memo[0] if memo[0] == store.saved_digest else None

    def parse(self, raw: Any) -> Parsed:
        """``parse_sessions``, remembered for the last answer: the CP answers the
        same most of the time, and validating 1 000 sessions again each minute was
        a third of an unchanged cycle. Parsing is pure, so an equal answer under
        the same cap gives an equal result."""
        terms = self._parse_terms()
        digest, memo = self.answer_digest, self._parsed
        if digest is not None and memo is not None and memo[0] == digest and memo[1] == terms:
            sessions, invalid = memo[2]
            return list(sessions), list(invalid)
        cap, scheme = terms
        parsed = parse_sessions(raw, max_sessions=cap, status_scheme=scheme)
        # Keyed by the answer's digest, not the answer: a decoded answer of 1 000
        # sessions is about 1.5 MB, kept only for this comparison.
        if digest is not None:
            self._parsed = (digest, terms, (tuple(parsed[0]), tuple(parsed[1])))
        return parsed

    def save_answer(self, raw: Any) -> None:
        self.store.save_answer(raw, self.answer_digest)

    def load_answer(self) -> Any | None:
        return self.store.load_answer()

    async def without_answer(self, problem: str) -> str:
        await self.deliver()  # queued reports still go out when the CP is back
        return "nothing changed"

    async def observe(self, desired: Parsed) -> Now:
        tunnel, firewall, _ = self._backends()
        previous = self.store.load_previous()
        if self._statuses is None:
            self._statuses = {u: r.status for u, r in previous.reported.items() if not r.removed}
        # The deep read (every tunnel's WireGuard settings from the system) on
        # sessions.deepCheckInterval's cadence and on the first cycle after a start;
        # otherwise the cheap one (one link dump, the settings as last written).
        now = self.ctx.clock.monotonic()
        interval = self.section.deep_check_interval
        last = self._deep_at
        self.deep_check = last is None or interval <= 0 or now - last >= interval
        if self.deep_check:
            self._deep_at = now
        read = tunnel.list if self.deep_check else tunnel.observe
        observed = Observed(
            tunnels=dict(await read(owner=OWNER)),
            ports=frozenset(await firewall.list_ports(owner=OWNER)),
            fragments=await self.load_applied(previous),
        )
        return Now(observed=observed, previous=previous)

    def plan(self, answer: Answer[Parsed], observed: Now) -> Plan:
        sessions, invalid = answer.value
        adopted = Adoptions(self.ctx.state).current(sessions, invalid, self.ctx.log)
        return plan(
            sessions,
            invalid,
            observed.observed,
            observed.previous,
            settings=attrs.evolve(self.settings(), adopted=adopted),
            guard=self.guard_policy(),
            override=self.section.allow_removal or None,
            latency=self.links.tiers(),
            window=self.guard_window,
            now=self.ctx.clock.time(),
            cache=self.desired,
        )

    def verdict(self, plan: Plan) -> Any:
        return plan.guard

    async def apply(self, plan: Plan, observed: Now) -> Outcome:
        """Apply in phases (see the module doc); every failure lands in ``failed``."""
        tunnel, firewall, routing = self._backends()
        for reason in plan.unreportable:
            self.ctx.log.warning("sessions: unreportable invalid session: {}", reason)
        intent = with_intent(observed.previous, plan)
        if self.store.save_previous(intent):
            crashpoint("sessions.intent.saved")
        fragments = dict(observed.observed.fragments)
        out = Outcome(
            intent=intent, applied=fragments, declared=dict(fragments), open_ports=observed.observed.ports
        )
        await self._remove(plan, tunnel, out)
        await self._ensure_tunnels(plan, tunnel, out)
        out.open_ports = await self._sync_ports(plan, firewall, out, out.open_ports)
        await self._declare_routing(plan, observed.observed, routing, out)
        await self._rollback(plan, tunnel, firewall, out)
        await self.confirm_live(plan, observed.observed, routing, out)
        try:
            # Host-name endpoints whose handshake went stale: resolve again (once per cycle).
            out.counts["endpointsRefreshed"] = len(await tunnel.refresh_endpoints(owner=OWNER))
        except Exception as exc:
            self.ctx.log.warning("endpoint refresh failed: {}", exc)
        return out

    async def report(self, answer: Answer[Parsed], plan: Plan, outcome: Outcome) -> dict[str, Any]:
        sessions, invalid = answer.value
        self.note_seen(plan.seen)
        reports, held = self.pace(self.outcome(plan, outcome.failed, {s.uuid: s for s in sessions}))
        for r in reports:
            self.outbox.put(r)
            crashpoint("sessions.report.queued")
        transient = {u: f.reason for u, f in outcome.failed.items() if f.transient}
        after = next_previous(
            outcome.intent,
            plan,
            failed=outcome.failed,
            sent=reports,
            transient=transient,
            now=self.ctx.clock.time(),
            interval=self.ctx.config.control_plane.sync_interval,
        )
        if held:
            # Forget what the CP showed, so the next cycles reconsider the held report.
            after = attrs.evolve(after, seen={u: v for u, v in after.seen.items() if u not in held})
        if self.store.save_previous(after):
            crashpoint("sessions.state.saved")
        self._configured = after.configured
        self.links.forget(after.configured)
        self.save_applied(outcome.applied)
        delivered = await self.deliver()
        return {
            "sessions": len(sessions) + len(invalid),
            "changed": {s.uuid: list(s.drift) for s in plan.sessions if s.changes},
            "failed": {u: str(f) for u, f in outcome.failed.items()},
            "retrying": sorted({*transient, *(s.uuid for s in plan.sessions if s.kind is Kind.DEFERRED)}),
            "deepCheck": self.deep_check,
            "reports": len(reports),
            "delivered": delivered,
            "outbox": len(self.outbox),
            "guard": plan.guard.status_info() if plan.guard.refused or plan.guard.overridden else None,
            **outcome.counts,
        }

    def changes(self, summary: Mapping[str, Any]) -> int:
        return sum(int(summary.get(k, 0)) for k in ("tunnelWrites", "firewallSyncs", "declares"))

    def plan_json(self, answer: Answer[Parsed], plan: Plan, observed: Now) -> dict[str, Any]:
        return plan_json(plan, observed.observed)

    # ------------------------------------------------------------ apply phases

    async def _remove(self, p: Plan, tunnel: TunnelBackend, out: Outcome) -> None:
        """Removals first: a removed tunnel frees its name and port for a successor."""
        for s in p.sessions:
            for name in s.remove_interfaces:
                try:
                    await tunnel.remove(name, owner=OWNER)
                    out.counts["tunnelWrites"] += 1
                    self._drop_psk(name)
                    crashpoint("sessions.tunnel.removed")
                except Exception as exc:
                    out.failed[s.uuid] = Failure.of(f"removing tunnel {name}", exc)
                    self.ctx.log.error("session {}: removing tunnel {} failed: {}", s.uuid, name, exc)
            rec = out.intent.configured.get(s.uuid)
            if s.kind is not Kind.REMOVE or s.uuid in out.failed or rec is None:
                continue
            # The preshared key is written before the tunnel: an agent killed in between
            # left the key of a tunnel that was never made (unless another session has the name).
            shared = any(
                u != s.uuid and c.interface == rec.interface for u, c in out.intent.configured.items()
            )
            if not shared and not any(
                q.interface == rec.interface for q in p.sessions if q.kind is not Kind.REMOVE
            ):
                self._drop_psk(rec.interface)

    async def _ensure_tunnels(self, p: Plan, tunnel: TunnelBackend, out: Outcome) -> None:
        """Creates and in-place updates (the preshared key file written 0600 first),
        up to ``sessions.tunnelConcurrency`` at once. A node key missing while this
        node had one fails them all: the tunnel backend would generate a new key,
        which breaks every session (:mod:`.keys`)."""
        todo: list[tuple[SessionPlan, TunnelSpec]] = []
        for s in p.sessions:
            if (
                s.uuid in out.failed
                or s.spec is None
                or s.tunnel not in (TunnelAction.CREATE, TunnelAction.UPDATE)
            ):
                continue
            if (problem := missing_key_problem(s.spec.private_key_file, self.ctx.state)) is not None:
                out.failed[s.uuid] = Failure(f"tunnel {s.spec.name}: {problem}")
                self.ctx.log.error("session {}: {}", s.uuid, problem)
                continue
            todo.append((s, s.spec))
        if not todo:
            return

        async def ensure(item: tuple[SessionPlan, TunnelSpec]) -> None:
            s, spec = item
            try:
                if spec.preshared_key_file and s.preshared_key:
                    path = Path(spec.preshared_key_file)
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    atomic_write(path, (s.preshared_key + "\n").encode("ascii"), mode=0o600)
                await tunnel.ensure(spec)
                out.counts["tunnelWrites"] += 1
            except Exception as exc:
                out.failed[s.uuid] = Failure.of(f"tunnel {spec.name}", exc)
                self.ctx.log.error("session {}: tunnel {} failed: {}", s.uuid, spec.name, exc)

        # Workers, not a task per tunnel: 1 000 waiting tasks are megabytes of heap
        # on a cold start, and the heap stays that size.
        await map_bounded(ensure, todo, max(1, self.section.tunnel_concurrency))
        crashpoint("sessions.tunnels.done")

    @staticmethod
    def _rolled_back(p: Plan, out: Outcome) -> set[str]:
        """Failed setups: they must leave nothing behind. Not when a retry may fix
        the failure: what was built stays for the next attempt."""
        plans = {s.uuid: s for s in p.sessions}
        return {u for u, f in out.failed.items() if plans[u].rollback_on_failure and not f.transient}

    async def _sync_ports(
        self, p: Plan, firewall: FirewallBackend, out: Outcome, have: frozenset[int]
    ) -> frozenset[int]:
        """One firewall transaction with the full port set (rolled-back sessions'
        ports closed), only when it differs from ``have``; returns the open set."""
        rolled_back = self._rolled_back(p, out)
        plans = {s.uuid: s for s in p.sessions}
        drop = {plans[u].port for u in rolled_back} - {
            s.port for s in p.sessions if s.uuid not in rolled_back and s.kind is not Kind.REMOVE
        }
        ports = frozenset(q for q in p.ports if q not in drop)
        if ports == have:
            return have
        try:
            await firewall.sync(ports, owner=OWNER)
        except Exception as exc:
            for s in p.sessions:
                if s.kind is Kind.CONFIGURE and s.port is not None and s.port not in have:
                    out.failed.setdefault(s.uuid, Failure.of("firewall", exc))
            self.ctx.log.error("firewall sync failed: {}", exc)
            return have
        out.counts["firewallSyncs"] += 1
        crashpoint("sessions.firewall.synced")
        return ports

    async def _declare(self, p: Plan, routing: RoutingBackend, out: Outcome) -> ApplyResult | None:
        """ONE declare of every fragment but the rolled-back ones, only when the set
        differs from the one last handed over."""
        rolled_back = self._rolled_back(p, out)
        fragments = {u: f for u, f in p.fragments.items() if u not in rolled_back}
        if fragments == out.declared:
            return None
        out.declared = fragments
        result = await routing.declare(OWNER, fragments)
        out.counts["declares"] += 1
        crashpoint("sessions.routing.declared")
        if result.ok:
            out.applied = {u: f for u, f in fragments.items() if u not in result.rejected}
        return result

    async def _declare_routing(
        self, p: Plan, observed: Observed, routing: RoutingBackend, out: Outcome
    ) -> None:
        result = await self._declare(p, routing, out)
        if result is None:
            return
        routing_failed = self._fail_routing(p, result, observed, out.failed)
        out.failed.update(routing_failed)
        if not self._rolled_back(p, out) & set(p.fragments):
            return
        # A failed setup leaves nothing behind: the backend must not keep its fragment
        # either (an apply without it renders what is live: no reconfigure).
        again = await self._declare(p, routing, out)
        if again is None:
            return
        plans = {s.uuid: s for s in p.sessions}
        for u in routing_failed:
            if not plans[u].rollback_on_failure:
                del out.failed[u]
        out.failed.update(self._fail_routing(p, again, observed, out.failed))

    async def _rollback(
        self, p: Plan, tunnel: TunnelBackend, firewall: FirewallBackend, out: Outcome
    ) -> None:
        """Remove what a failed setup created, and close its port."""
        rolled_back = self._rolled_back(p, out)
        plans = {s.uuid: s for s in p.sessions}
        for u in sorted(rolled_back):
            iface = plans[u].interface
            # Built this cycle, or by earlier attempts that failed transiently.
            provisional = u in out.intent.retry
            if iface and (plans[u].tunnel in (TunnelAction.CREATE, TunnelAction.UPDATE) or provisional):
                try:
                    if await tunnel.remove(iface, owner=OWNER):
                        out.counts["tunnelWrites"] += 1
                    self._drop_psk(iface)
                except Exception as exc:
                    self.ctx.log.error("session {}: rolling back tunnel {} failed: {}", u, iface, exc)
        if rolled_back:
            out.open_ports = await self._sync_ports(p, firewall, out, out.open_ports)

    @staticmethod
    def _fail_routing(
        p: Plan, result: ApplyResult, observed: Observed, failed: Mapping[str, Failure]
    ) -> dict[str, Failure]:
        """Sessions whose routing did not go live: rejected (the daemon's verdict on
        that session: permanent), or changed in a failed apply (transient when the
        daemon was unreachable or had no policy yet)."""
        out: dict[str, Failure] = {}
        for s in p.sessions:
            if s.uuid in failed:
                continue
            if s.uuid in result.rejected:
                out[s.uuid] = Failure(f"routing: {result.rejected[s.uuid]}")
            elif not result.ok:
                live = observed.fragments.get(s.uuid)
                if (s.kind is Kind.CONFIGURE and live != p.fragments.get(s.uuid)) or (
                    s.kind is Kind.REMOVE and live is not None
                ):
                    out[s.uuid] = Failure(
                        f"routing: {result.error or 'apply failed'}", transient=result.transient
                    )
        return out

    async def confirm_live(self, p: Plan, observed: Observed, routing: RoutingBackend, out: Outcome) -> None:
        """A session is reported ACTIVE only when its tunnel, its port and its BGP
        protocols are live: the tunnel ensured now or observed, the port in the
        open set, the fragment applied and every protocol it produced
        (``fragment_protocols``) running in the routing daemon (one ``protocols()``
        read, only in a cycle with an ACTIVE report to make; never in a no-op
        cycle). One that is not fails transiently (reported with ``lastError``,
        retried after the backoff), never ACTIVE."""
        claims = [
            s
            for s in p.sessions
            if s.kind is Kind.CONFIGURE
            and s.uuid not in out.failed
            and s.report_on_success is not None
            and s.report_on_success.status is SessionStatus.ACTIVE
        ]
        if not claims:
            return
        names = routing.fragment_protocols(OWNER)
        live: set[str] = set()
        unreadable: Failure | None = None
        if any(names.get(s.uuid) for s in claims):
            try:
                live = {x.name for x in await routing.protocols()}
            except Exception as exc:
                unreadable = Failure.of("routing: cannot confirm the BGP protocol runs", exc)
                unreadable = attrs.evolve(unreadable, transient=True)
        for s in claims:
            failure: Failure | None = None
            protocols = names.get(s.uuid) or ()
            missing = [n for n in protocols if n not in live]
            if s.interface and s.tunnel is TunnelAction.NONE and s.interface not in observed.tunnels:
                failure = Failure(f"tunnel {s.interface} is not there", transient=True)
            elif s.port is not None and s.port not in out.open_ports:
                failure = Failure(f"firewall: port {s.port} is not open", transient=True)
            elif s.uuid not in out.applied:
                failure = Failure("routing: the session's fragment is not applied", transient=True)
            elif protocols and unreadable is not None:
                failure = unreadable
            elif missing:
                failure = Failure(
                    f"routing: BGP protocol {', '.join(missing)} is not running in the routing daemon",
                    transient=True,
                )
            if failure is not None:
                out.failed[s.uuid] = failure
                self.ctx.log.warning("session {}: not reported ACTIVE: {}", s.uuid, failure)

    def _drop_psk(self, name: str) -> None:
        path = Path(self.settings().psk_dir) / f"{name}.psk"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # ------------------------------------------------------------- reporting

    def outcome(self, p: Plan, failed: Mapping[str, Failure], valid: Mapping[str, Session]) -> list[Report]:
        """The reports of this cycle, and a status event for every change."""
        assert self._statuses is not None
        reports: list[Report] = []
        for s in p.sessions:
            report: Report | None
            new: SessionStatus | None
            error: str | None = None
            if s.kind in (Kind.WITHHELD, Kind.DEFERRED):
                continue
            if s.kind is Kind.INVALID:
                report, new, error = s.report, SessionStatus.ERROR, s.drift[0] if s.drift else None
            elif s.uuid in failed and failed[s.uuid].transient and s.kind is Kind.CONFIGURE:
                # A retry may fix it: the session keeps its status and carries the error.
                error = str(failed[s.uuid])
                report, new = s.transient_report(error), None
            elif s.uuid in failed:
                error = str(failed[s.uuid])
                report = s.failure_report(error) if s.kind is Kind.CONFIGURE else None
                new = s.report_on_failure if s.kind is Kind.CONFIGURE else None
            else:
                report = s.report_on_success
                new = SessionStatus.ACTIVE if s.kind is Kind.CONFIGURE else None
            if report is not None:
                reports.append(report)
            session = valid.get(s.uuid)
            old = self._statuses.get(s.uuid)
            if s.uuid.startswith(ORPHAN_PREFIX):
                continue  # a stray tunnel, not a session: nothing to announce
            if s.kind is Kind.REMOVE and s.uuid not in failed:
                if s.changes or old is not None:
                    self._statuses.pop(s.uuid, None)
                    self._emit(s, session, old, s.status or SessionStatus.DISABLED, None, removed=True)
            elif new is not None and new != old:
                self._statuses[s.uuid] = new
                self._emit(s, session, old, new, error)
        return reports

    def note_accepted(self, report: Report) -> None:
        """The CP accepted ``report`` (a repeat keeps its pacing)."""
        known = self._accepted.get(report.uuid)
        if known is None or known[0] != report:
            self._accepted[report.uuid] = (report, 0, 0.0)

    def note_seen(self, seen: Mapping[str, SessionStatus]) -> None:
        """What the CP shows now: where it agrees with the accepted report the
        contradiction is over (a later one is answered at once again); sessions it
        no longer lists are forgotten."""
        for uuid, (report, repeats, _) in list(self._accepted.items()):
            if uuid not in seen:
                del self._accepted[uuid]
            elif seen[uuid] == report.status and repeats:
                self._accepted[uuid] = (report, 0, 0.0)

    def pace(self, reports: list[Report]) -> tuple[list[Report], set[str]]:
        """Hold back repeats of an accepted report the CP keeps contradicting.

        The first repeat goes out at once (it answers a re-queue the agent never
        saw); further ones wait one sync interval, then two, four... up to
        ``REPEAT_MAX_SECONDS``: a CP that stores a report differently than sent
        (a truncated ``lastError``, say) is told again, never every minute forever.
        Returns (reports to queue, uuids held back).
        """
        now = self.ctx.clock.monotonic()
        base = self.ctx.config.control_plane.sync_interval
        out: list[Report] = []
        held: set[str] = set()
        for r in reports:
            accepted = self._accepted.get(r.uuid)
            if accepted is not None and accepted[0] == r:
                _, repeats, not_before = accepted
                if now < not_before:
                    held.add(r.uuid)
                    continue
                k = repeats + 1
                gap = min(base * 2 ** (k - 1), REPEAT_MAX_SECONDS)
                # 0.9: cycles are jittered; a repeat due "one interval later" must not slip by one.
                self._accepted[r.uuid] = (r, k, now + 0.9 * gap)
                if k >= 2:
                    self.ctx.log.warning(
                        "session {}: the CP accepted status {} but still shows otherwise; told it "
                        "again ({} times), next time in {:.0f} s at the earliest",
                        r.uuid,
                        r.status.name,
                        k,
                        gap,
                    )
            out.append(r)
        return out, held

    def _emit(
        self,
        s: SessionPlan,
        session: Session | None,
        old: SessionStatus | None,
        new: SessionStatus,
        error: str | None,
        *,
        removed: bool = False,
    ) -> None:
        self.ctx.emit_session_status(
            SessionStatusEvent(
                uuid=s.uuid,
                name=session.name if session is not None else "",
                asn=session.asn if session is not None else None,
                old=old,
                new=new,
                error=error,
                interface=s.interface,
                removed=removed,
            )
        )

    async def deliver(self) -> int:
        """Send the outbox, oldest first; returns how many the CP accepted.

        An unreachable CP stops the round (the rest waits for the next cycle); a
        refused report stays queued with its attempt count (never dropped).

        An accepted report also resets what the agent remembers the CP showing for
        that session: whatever the CP answers from now on is its word *after* the
        report. A CP that still (or again: a re-queue the agent never saw in
        between) shows a status contradicting the report is told again (paced by
        :meth:`pace`), instead of the planner's de-duplication taking the old
        observation for "the CP has not processed it yet" forever.
        """
        sent = 0
        acked: set[str] = set()
        scheme = self.ctx.config.control_plane.status_scheme
        for entry in self.outbox.pending():
            body = entry.report.to_wire(scheme)
            try:
                if body is not None:  # None: nothing this CP's status scheme can take
                    await self.ctx.cp.send("modify", body)
            except ControlPlaneUnavailable as exc:
                self.outbox.failed(entry.report.uuid, entry.report, str(exc))
                break
            except ControlPlaneError as exc:
                self.outbox.failed(entry.report.uuid, entry.report, str(exc))
                self.ctx.log.warning("report for {} refused by the CP: {}", entry.report.uuid, exc)
                continue
            crashpoint("sessions.report.sent")
            self.outbox.ack(entry.report.uuid, entry.report)
            acked.add(entry.report.uuid)
            self.note_accepted(entry.report)
            sent += 1
        if acked:
            previous = self.store.load_previous()
            if acked & set(previous.seen):
                seen = {u: s for u, s in previous.seen.items() if u not in acked}
                self.store.save_previous(attrs.evolve(previous, seen=seen))
        return sent

    # ------------------------------------------------------------------ hooks

    def configured(self) -> Mapping[str, ConfiguredSession]:
        """What the agent has on the node per session (cached after each cycle)."""
        if self._configured is None:
            self._configured = self.store.load_previous().configured
        return self._configured

    @hookimpl
    def moenet_link_targets(self) -> list[LinkTarget]:
        return self.links.targets(self.configured())

    @hookimpl
    def moenet_link_latency(self, measurements: tuple[LinkLatency, ...]) -> None:
        changed = self.links.update(measurements)
        if not changed:
            return
        for uuid, (old, new) in sorted(changed.items()):
            self.ctx.log.info("session {}: latency tier {} -> {}", uuid, old or "default", new)
        # One cycle re-declares every session with its new tier: one BIRD reconfigure.
        fut = self.ctx.trigger(TASK_NAME)
        fut.add_done_callback(_consume)

    @hookimpl
    def moenet_restart(self, interface: str) -> RestartAction | None:
        found = [(u, c) for u, c in self.configured().items() if c.interface == interface]
        if not found:
            return None
        uuid, configured = found[0]

        async def restart() -> Mapping[str, Any]:
            return await self.restart(uuid, configured)

        return restart

    async def restart(self, uuid: str, configured: ConfiguredSession) -> dict[str, Any]:
        """``/restart`` ("restart specific WG interface", as the seed has it): re-apply
        the session's tunnel as recorded (repairing it if it is gone or drifted),
        bounce it (link down and up: WireGuard drops the peer's session keys and
        handshakes afresh; a backend that cannot bounce has the tunnel removed and
        re-created instead), then restart its BGP protocols (a fresh BGP session,
        as ``birdc restart`` does)."""
        tunnel = self.ctx.backend("tunnel", TunnelBackend)
        routing = self.ctx.backend("routing", RoutingBackend)
        async with self.lock:
            try:
                written = await tunnel.ensure(configured.tunnel)
                try:
                    await tunnel.bounce(configured.interface, owner=OWNER)
                    bounce = "link down and up"
                except NotImplementedError:
                    await tunnel.remove(configured.interface, owner=OWNER)
                    bounce = "removed and re-created"
                # Link down drops the IPv6 addresses (keep_addr_on_down is off): put them back.
                await tunnel.ensure(configured.tunnel)
            except Exception as exc:
                with contextlib.suppress(Exception):  # the next cycle repairs it
                    self.ctx.trigger(TASK_NAME).add_done_callback(_consume)
                raise ApiError(502, "restart_failed", f"tunnel {configured.interface}: {exc}") from None
            protocols = tuple(routing.fragment_protocols(OWNER).get(uuid, ()))
            restarted: list[str] = []
            for name in protocols:
                try:
                    await routing.restart_protocol(name)
                except Exception as exc:
                    raise ApiError(
                        502, "restart_failed", f"BGP protocol {name} of session {uuid}: {exc}"
                    ) from None
                restarted.append(name)
        self.ctx.log.info(
            "session {}: restarted (tunnel {} {}, bounced: {}; protocols {})",
            uuid,
            configured.interface,
            "repaired" if written else "unchanged",
            bounce,
            ", ".join(restarted) or "none",
        )
        return {
            "session": uuid,
            "interface": configured.interface,
            "tunnelRepaired": written,
            "tunnelBounced": bounce,
            "protocols": restarted,
        }

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        collector = self.ctx.stash.get(COLLECTOR_TASK)
        health = collector.health_info() if collector is not None else None
        return {
            **self.status_info(),
            "outbox": len(self._outbox) if self._outbox is not None else None,
            "health": health,
            "metrics": collector.last if collector is not None else None,
            "sessions": self.session_view(health),
        }

    @hookimpl
    def moenet_session_status_changed(self, event: SessionStatusEvent) -> None:
        """Remember each session's name, AS and error for :meth:`session_view`
        (a session in ERROR has no record to take them from)."""
        if event.removed:
            self._known.pop(event.uuid, None)
        else:
            self._known[event.uuid] = event

    @hookimpl
    def moenet_startup(self) -> None:
        """Re-announce every status known before the restart (``restored=True``):
        the core's counts in ``/status`` and the ``moenet_sessions`` metric are
        right from the start, not only after the next change."""
        try:
            previous = self.store.load_previous()
        except Exception as exc:  # the first cycle reports the unreadable state
            self.ctx.log.warning("cannot restore the session statuses: {}", exc)
            return
        if self._statuses is None:
            self._statuses = {u: r.status for u, r in previous.reported.items() if not r.removed}
        for uuid, status in sorted(self._statuses.items()):
            configured = previous.configured.get(uuid)
            report = previous.reported.get(uuid)
            self.ctx.emit_session_status(
                SessionStatusEvent(
                    uuid=uuid,
                    name=configured.peer.name if configured is not None else "",
                    asn=configured.peer.asn if configured is not None else None,
                    old=None,
                    new=status,
                    error=report.last_error if report is not None else None,
                    interface=configured.interface if configured is not None else None,
                    restored=True,
                )
            )

    def session_view(self, health: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """One entry per session the agent knows (configured on the node, or with a
        status since the last sync): name, ASN, interface, status and last error
        from the sync itself, so it is there after the first sync; BGP state,
        routes, RTT and health verdict from the collector's last run (None before it)."""
        configured = self.configured()
        per_health: Mapping[str, Any] = (health or {}).get("sessions") or {}
        statuses = self._statuses or {}
        out: list[dict[str, Any]] = []
        for uuid in sorted(set(configured) | set(statuses) | set(self._known)):
            rec, event, h = configured.get(uuid), self._known.get(uuid), per_health.get(uuid) or {}
            status = statuses.get(uuid) or (event.new if event is not None else None)
            out.append(
                {
                    "uuid": uuid,
                    "name": (rec.peer.name if rec is not None else "") or (event.name if event else ""),
                    "asn": rec.peer.asn if rec is not None else (event.asn if event else None),
                    "interface": rec.interface if rec is not None else (event.interface if event else None),
                    "status": status.name if status is not None else None,
                    "lastError": event.error if event is not None else None,
                    "bgpState": h.get("bgpState"),
                    "routesIn": h.get("routesIn"),
                    "routesOut": h.get("routesOut"),
                    "rttMs": h.get("rttMs"),
                    "health": h.get("verdict"),
                }
            )
        return out


def _consume(fut: asyncio.Future[Any]) -> None:
    """A triggered run's outcome is in /status already; do not warn about it."""
    if not fut.cancelled():
        fut.exception()


def _report_json(report: Report | None) -> dict[str, Any] | None:
    return report.to_json() if report is not None else None


def plan_json(p: Plan, observed: Observed) -> dict[str, Any]:
    """A plan as JSON for ``moenet-agent plan`` (no secrets: PSKs are never included)."""
    return {
        "empty": p.empty,
        "lines": plan_lines(p, observed),
        "sessions": [
            {
                "uuid": s.uuid,
                "kind": str(s.kind),
                "status": s.status.name if s.status is not None else None,
                "interface": s.interface,
                "tunnel": str(s.tunnel),
                "removeInterfaces": list(s.remove_interfaces),
                "routing": str(s.routing),
                "port": s.port,
                "drift": list(s.drift),
                "report": _report_json(s.report or s.report_on_success),
            }
            for s in p.sessions
        ],
        "system": {
            "routing": {"changed": p.routing_changed, "fragments": sorted(p.fragments)},
            "firewall": {
                "changed": p.firewall_changed,
                "open": sorted(p.ports - observed.ports),
                "close": sorted(observed.ports - p.ports),
            },
            "guard": p.guard.status_info(),
        },
        "unreportable": list(p.unreportable),
    }


def plan_lines(p: Plan, observed: Observed) -> list[str]:
    """The plan as short readable lines (what ``moenet-agent plan`` prints)."""
    lines: list[str] = []
    for s in p.sessions:
        report = s.report or s.report_on_success
        if not (s.drift or report):
            continue
        status = s.status.name if s.status is not None else None
        line = f"{s.uuid} {s.interface or '-'} [{status}] {s.kind}: tunnel {s.tunnel}, routing {s.routing}"
        if report is not None:
            line += f", report {report.status.name}"
        lines.append(line)
        lines.extend(f"    - {d}" for d in s.drift)
    if not lines:
        lines.append("no session changes")
    opening, closing = sorted(p.ports - observed.ports), sorted(observed.ports - p.ports)
    if opening or closing:
        lines.append(f"firewall: open {opening} close {closing}")
    lines.append(f"routing: {'one reconfigure' if p.routing_changed else 'unchanged'}")
    if p.guard.refused:
        lines.append(f"GUARD REFUSED: {p.guard.reason} (digest {p.guard.digest})")
    return lines
