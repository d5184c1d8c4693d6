"""Diff the desired sessions against the node and the agent's memory: the plan.

Pure: no I/O, no clock. The apply phases (tunnels, firewall, one routing declare
and reconfigure) and the reporting consume a :class:`Plan`; ``moenet-agent plan``
prints one. What each CP status means (issue 5):

- ``QUEUED_FOR_SETUP``: configure; report ``ACTIVE`` when the apply succeeds, else
  ``SETUP_FAILED`` with the error and roll back what was built (``rollback_on_failure``).
- ``ACTIVE`` / ``ERROR``: verify; repair drift in place; ``ACTIVE`` when healthy,
  ``ERROR`` with the apply's error when the repair fails.
- a failure a retry may fix (transient) is neither: the session keeps its status
  with the error (:meth:`SessionPlan.transient_report`), keeps what was built and
  waits out a backoff (``Previous.retry``) as :attr:`Kind.DEFERRED`.
- ``QUEUED_FOR_DELETE``: remove everything, then report ``{status: 0, removed: true}``.
- ``DISABLED`` / ``PENDING_REVIEW`` / ``SETUP_FAILED``: remove anything present;
  report (its own status, ``removed: true``) only if something was removed.
- vanished from the answer: removed like a deleted session, no report (the CP no
  longer knows the uuid).
- invalid: whatever is configured stays untouched (a bad answer never breaks a
  working session), ``ERROR`` with the reason is reported. An invalid session
  whose status asks for removal is still removed (removal needs no other field).

Only tunnels in ``Observed.tunnels`` (the backend lists only its own) are ever
removed. Reports are de-duplicated: none when the CP already holds the wanted
status, and none when the same report was made while the CP showed the same status
and has not accepted it yet (the outbox holds it). Once the CP *accepts* a report the
task forgets the status it saw (``SessionSync.deliver``), so a CP that still, or
again, contradicts an accepted report is told again: at once (a re-queue,
``ACTIVE`` -> ``QUEUED_FOR_SETUP``, that happened between two fetches is answered),
then with growing pauses (``SessionSync.pace``) while the contradiction lasts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from moenet_core import (
    GuardPolicy,
    GuardVerdict,
    GuardWindow,
    SessionStatus,
    TunnelSpec,
    TunnelState,
    evaluate,
    tunnel_drift,
)
from moenet_core.intents import EbgpPeerIntent

from .desired import DesiredError, DesiredSession, NodeSettings, build_desired
from .model import CONFIGURE_STATUSES, Invalid, Session
from .records import ConfiguredSession, Previous, Report, Retry

#: Longest wait between two attempts of a session failing transiently (seconds).
RETRY_MAX_SECONDS = 1800.0

REMOVE_STATUSES = frozenset(
    {
        SessionStatus.DISABLED,
        SessionStatus.PENDING_REVIEW,
        SessionStatus.QUEUED_FOR_DELETE,
        SessionStatus.SETUP_FAILED,
    }
)


class TunnelAction(enum.StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    """Ensure in place (the backend changes only what differs)."""
    REMOVE = "remove"


class RoutingAction(enum.StrEnum):
    NONE = "none"
    """Nothing declared and nothing wanted."""
    KEEP = "keep"
    REPLACE = "replace"
    DROP = "drop"


class Kind(enum.StrEnum):
    CONFIGURE = "configure"
    REMOVE = "remove"
    WITHHELD = "withheld"
    """A removal or rebuild the guard refused: everything stays as it is."""
    INVALID = "invalid"
    """Invalid or not buildable: left as configured, ERROR reported."""
    DEFERRED = "deferred"
    """Waiting out the backoff after a transient failure: everything stays as it is."""


@attrs.frozen(kw_only=True)
class Observed:
    """The node as the backends report it now.

    ``fragments`` are the ``sessions`` owner's routing fragments the routing backend
    has *applied* (a fragment it rejected is not applied, so it is re-declared and
    the session is not reported ACTIVE). ``protocols`` (uuid -> BIRD protocol
    state, None if unknown) is informative only: it never triggers an action.
    """

    tunnels: Mapping[str, TunnelState] = attrs.field(factory=dict)
    ports: frozenset[int] = frozenset()
    fragments: Mapping[str, EbgpPeerIntent] = attrs.field(factory=dict)
    protocols: Mapping[str, str] | None = None


@attrs.frozen(kw_only=True)
class SessionPlan:
    """What to do for one uuid."""

    uuid: str
    kind: Kind
    status: SessionStatus | None
    """The CP status; None when the session vanished from the answer."""
    interface: str | None
    tunnel: TunnelAction = TunnelAction.NONE
    spec: TunnelSpec | None = None
    """For CREATE/UPDATE: what to ensure."""
    preshared_key: str | None = attrs.field(default=None, repr=False)
    """Content of ``spec.preshared_key_file`` (written 0600 before ensuring)."""
    remove_interfaces: tuple[str, ...] = ()
    """The agent's tunnels of this session to delete (removal, or a renamed interface)."""
    routing: RoutingAction = RoutingAction.NONE
    peer: EbgpPeerIntent | None = None
    port: int | None = None
    drift: tuple[str, ...] = ()
    """Why anything is done, for logs and ``moenet-agent plan``."""
    report: Report | None = None
    """Send regardless of the apply (invalid sessions)."""
    report_on_success: Report | None = None
    report_on_failure: SessionStatus | None = None
    """Status to report with the apply's error text (see :meth:`failure_report`)."""
    rollback_on_failure: bool = False
    """A failed setup must leave nothing behind: remove its tunnel, port and fragment."""
    configured: ConfiguredSession | None = None
    """This session's record once the apply succeeded (None with ``kind=REMOVE``: forget)."""
    cp_error: str | None = None
    last_reported: Report | None = None
    last_seen: SessionStatus | None = None

    @property
    def changes(self) -> bool:
        """True when the apply has something to write for this session."""
        return (
            self.tunnel is not TunnelAction.NONE
            or bool(self.remove_interfaces)
            or self.routing in (RoutingAction.REPLACE, RoutingAction.DROP)
        )

    def failure_report(self, error: str) -> Report | None:
        """The report for a failed apply, or None (no failure report, or a repeat)."""
        if self.report_on_failure is None:
            return None
        report = Report(uuid=self.uuid, status=self.report_on_failure, last_error=error[:1024])
        return (
            report
            if report_needed(report, self.status, self.cp_error, self.last_reported, self.last_seen)
            else None
        )

    def transient_report(self, error: str) -> Report | None:
        """The report for an apply that failed for a reason a retry may fix: the
        session keeps its CP status and carries the error (None: a repeat)."""
        if self.status is None:
            return None
        report = Report(uuid=self.uuid, status=self.status, last_error=error[:1024])
        return (
            report
            if report_needed(report, self.status, self.cp_error, self.last_reported, self.last_seen)
            else None
        )


@attrs.frozen(kw_only=True)
class Plan:
    """Everything one sync cycle would change."""

    sessions: tuple[SessionPlan, ...]
    fragments: Mapping[str, EbgpPeerIntent]
    """The complete ``sessions`` owner fragment set to declare (kept ones included)."""
    routing_changed: bool
    ports: frozenset[int]
    """The complete desired firewall port set."""
    firewall_changed: bool
    guard: GuardVerdict
    seen: Mapping[str, SessionStatus]
    """The CP status per uuid in this answer (for the next ``Previous``)."""
    unreportable: tuple[str, ...] = ()
    """Reasons of invalid sessions without a usable uuid (logged, cannot be reported)."""

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to report."""
        return not (
            self.routing_changed
            or self.firewall_changed
            or any(s.changes or s.report or s.report_on_success for s in self.sessions)
        )

    def by_uuid(self, uuid: str) -> SessionPlan | None:
        return next((s for s in self.sessions if s.uuid == uuid), None)

    def immediate_reports(self) -> list[Report]:
        return [s.report for s in self.sessions if s.report is not None]


def report_needed(
    report: Report,
    cp_status: SessionStatus | None,
    cp_error: str | None,
    last_reported: Report | None,
    last_seen: SessionStatus | None,
) -> bool:
    """False when the CP already holds ``report`` or it was made while the CP showed
    the same status as now. A report that clears the error (``clear_error``) is
    needed while the CP still holds one."""
    if (
        not report.removed
        and cp_status == report.status
        and (
            cp_error == report.last_error
            or (report.last_error is None and not (report.clear_error and cp_error))
        )
    ):
        return False
    return not (last_reported == report and last_seen == cp_status)


# ------------------------------------------------------------------ the planner


def plan(
    sessions: Iterable[Session],
    invalid: Iterable[Invalid],
    observed: Observed,
    previous: Previous,
    *,
    settings: NodeSettings,
    guard: GuardPolicy | None = None,
    override: str | None = None,
    latency: Mapping[str, int] | None = None,
    window: GuardWindow | None = None,
    now: float | None = None,
    cache: DesiredCache | None = None,
) -> Plan:
    """The plan for one CP answer. ``override`` is an operator-allowed guard digest;
    ``latency`` the measured tier per uuid; ``window`` the guard's sliding window
    (the removals made recently, counted with this answer's); ``now`` the wall
    clock for the retry backoff (``previous.retry``): a session waiting out its
    backoff, unchanged since it failed, is :attr:`Kind.DEFERRED` (None: none is).

    The guard counts the sessions this answer removes together with the
    configured ones whose live tunnel it would re-key or recreate
    (:func:`rebuild_reasons`); a refusal withholds both, while additions and
    harmless in-place changes still apply. ``cache`` (kept by the caller across
    cycles) reuses the last cycle's :func:`build_desired` for unchanged sessions."""
    at = _Planning(
        valid={s.uuid: s for s in sessions},
        bad={i.uuid: i for i in invalid if i.uuid is not None},
        observed=observed,
        previous=previous,
    )
    removals, orphans = _removals(at)
    items, built, rebuilds = _build(at, settings, latency, (cache or DesiredCache()).cycle())
    configured_now = set(previous.configured) | set(observed.fragments) | {ORPHAN_PREFIX + n for n in orphans}
    really = [u for u, p in removals.items() if p.changes or u in previous.configured]
    verdict = evaluate(
        really,
        configured_now,
        guard,
        override=override,
        noun="configured sessions",
        rebuilds=rebuilds,
        window=window,
    )
    if verdict.refused:
        _withhold(at, verdict, removals, items, rebuilds)
    removed_names = {n for p in removals.values() if p.kind is Kind.REMOVE for n in p.remove_interfaces}
    items.update(removals)
    _configure_built(at, built, items, removed_names, now)
    for uuid, i in at.bad.items():
        if uuid not in items:
            items[uuid] = _invalid(uuid, i.status, i.last_error, i.reason, previous, observed)
    return _assemble(at, items, verdict, unreportable=tuple(i.reason for i in invalid if i.uuid is None))


@attrs.frozen(kw_only=True)
class _Planning:
    """The inputs one :func:`plan` works on, with the lookups its steps share."""

    valid: Mapping[str, Session]
    bad: Mapping[str, Invalid]
    observed: Observed
    previous: Previous

    def owned(self, uuid: str, *names: str | None) -> tuple[str, ...]:
        """The agent's tunnels of ``uuid``: its record's interface and ``names``, if they exist."""
        rec = self.previous.configured.get(uuid)
        cands = {n for n in (*names, rec.interface if rec else None) if n}
        return tuple(sorted(n for n in cands if n in self.observed.tunnels))

    def memo(self, uuid: str) -> dict[str, Any]:
        return {
            "last_reported": self.previous.reported.get(uuid),
            "last_seen": self.previous.seen.get(uuid),
        }


def _removals(at: _Planning) -> tuple[dict[str, SessionPlan], tuple[str, ...]]:
    """Step 1: sessions asking for removal (valid or not), vanished ones, and the
    agent's tunnels that nothing names any more (``orphan:<ifname>``)."""
    observed, previous = at.observed, at.previous
    removals: dict[str, SessionPlan] = {}
    for uuid, s in at.valid.items():
        if s.status in REMOVE_STATUSES:
            removals[uuid] = _removal(
                uuid, s.status, s.last_error, at.owned(uuid, s.interface), observed, at.memo(uuid)
            )
    for uuid, i in at.bad.items():
        if i.status in REMOVE_STATUSES:
            removals[uuid] = _removal(uuid, i.status, i.last_error, at.owned(uuid), observed, at.memo(uuid))
    answer = set(at.valid) | set(at.bad)
    for uuid in sorted((set(previous.configured) | set(observed.fragments)) - answer):
        removals[uuid] = _removal(uuid, None, None, at.owned(uuid), observed, at.memo(uuid))
    # Tunnels with the agent's alias that no record and no session of the answer names
    # (a crash between create and record, a wiped state directory): removed, under the guard.
    orphans = orphan_tunnels(at.valid.values(), at.bad.values(), previous, observed.tunnels)
    for name in orphans:
        key = ORPHAN_PREFIX + name
        removals[key] = attrs.evolve(
            _removal(key, None, None, (name,), observed, at.memo(key)),
            drift=(
                f"tunnel {name} carries the agent's alias but no session has it",
                f"removing tunnel {name}",
            ),
        )
    return removals, orphans


class DesiredCache:
    """:func:`build_desired` by its inputs, for one cycle and the next.

    A no-op cycle at 1 000 sessions spent half its time rebuilding (and
    re-validating) the same intents. ``build_desired`` is a pure function of the
    session, the node settings and the latency tier, all frozen and hashable, so
    its result (or its :class:`DesiredError`) is reused while they are equal.
    Only the entries used in the last cycle are kept: memory follows the answer,
    and a changed or vanished session's old entry is gone a cycle later.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Session, NodeSettings, int | None], DesiredSession | DesiredError] = {}
        self.hits = 0
        self.misses = 0

    def cycle(self) -> Callable[[Session, NodeSettings, int | None], DesiredSession]:
        """A builder for one planning cycle (it starts a new generation)."""
        last: dict[tuple[Session, NodeSettings, int | None], DesiredSession | DesiredError] = self._entries
        now: dict[tuple[Session, NodeSettings, int | None], DesiredSession | DesiredError] = {}
        self._entries = now

        def build(session: Session, settings: NodeSettings, latency: int | None) -> DesiredSession:
            key = (session, settings, latency)
            found = last.get(key)
            if found is None:
                self.misses += 1
                try:
                    found = build_desired(session, settings, latency=latency)
                except DesiredError as exc:
                    found = exc
            else:
                self.hits += 1
            now[key] = found
            if isinstance(found, DesiredError):
                raise found
            return found

        return build


def _build(
    at: _Planning,
    settings: NodeSettings,
    latency: Mapping[str, int] | None,
    build: Callable[[Session, NodeSettings, int | None], DesiredSession],
) -> tuple[dict[str, SessionPlan], dict[str, DesiredSession], dict[str, list[str]]]:
    """Step 2: what each session to configure needs (built before the guard, which
    counts the rebuilds among them); unbuildable ones are invalid."""
    items: dict[str, SessionPlan] = {}
    built: dict[str, DesiredSession] = {}
    rebuilds: dict[str, list[str]] = {}
    for uuid, s in at.valid.items():
        if s.status not in CONFIGURE_STATUSES:
            continue
        try:
            built[uuid] = d = build(s, settings, (latency or {}).get(uuid))
        except DesiredError as exc:
            items[uuid] = _invalid(
                uuid, s.status, s.last_error, f"sessions[{uuid}]: {exc}", at.previous, at.observed
            )
            continue
        # A setup that never went live (kept after a transient failure) drops nothing that works.
        live_rec = None if _provisional(at.previous, uuid) else at.previous.configured.get(uuid)
        why = rebuild_reasons(d, live_rec, at.observed.tunnels, at.owned(uuid))
        if why:
            rebuilds[uuid] = why
    return items, built, rebuilds


def _withhold(
    at: _Planning,
    verdict: GuardVerdict,
    removals: dict[str, SessionPlan],
    items: dict[str, SessionPlan],
    rebuilds: Mapping[str, list[str]],
) -> None:
    """Step 3, when the guard refuses: its removals and rebuilds stay as they are."""
    for uuid in verdict.removals:
        removals[uuid] = _withheld(removals[uuid], at.previous, at.observed)
    for uuid in verdict.rebuilds:
        s = at.valid[uuid]
        held = f"rebuild withheld by the guard: {', '.join(rebuilds[uuid])}"
        items[uuid] = _withheld(
            SessionPlan(
                uuid=uuid,
                kind=Kind.WITHHELD,
                status=s.status,
                interface=None,
                cp_error=s.last_error,
                **at.memo(uuid),
            ),
            at.previous,
            at.observed,
            held,
        )


def _configure_built(
    at: _Planning,
    built: Mapping[str, DesiredSession],
    items: dict[str, SessionPlan],
    removed_names: Collection[str],
    now: float | None,
) -> None:
    """Step 4: configure every built session the guard left alone, or defer it
    while it waits out a transient failure's backoff, unchanged."""
    for uuid, d in built.items():
        if uuid in items:
            continue
        retry = at.previous.retry.get(uuid)
        if (
            retry is not None
            and now is not None
            and now < retry.not_before
            and retry.digest == _record(d).digest()
        ):
            items[uuid] = _deferred(at.valid[uuid], d, retry, at.observed, at.memo(uuid))
            continue
        stale = tuple(n for n in at.owned(uuid) if n != d.tunnel.name)
        items[uuid] = _configure(
            at.valid[uuid], d, at.previous, at.observed, removed_names, stale, at.memo(uuid)
        )


def _assemble(
    at: _Planning, items: Mapping[str, SessionPlan], verdict: GuardVerdict, *, unreportable: tuple[str, ...]
) -> Plan:
    """Step 5: the complete fragment and port sets, and the plan."""
    fragments: dict[str, EbgpPeerIntent] = {}
    ports: set[int] = set()
    for uuid, p in items.items():
        if p.kind is Kind.REMOVE:
            continue
        if p.peer is not None:
            fragments[uuid] = p.peer
        if p.port is not None:
            ports.add(p.port)
    seen: dict[str, SessionStatus] = {u: s.status for u, s in at.valid.items()}
    seen.update({u: i.status for u, i in at.bad.items() if i.status is not None})
    return Plan(
        sessions=tuple(items[u] for u in sorted(items)),
        fragments=fragments,
        routing_changed=fragments != dict(at.observed.fragments),
        ports=frozenset(ports),
        firewall_changed=frozenset(ports) != at.observed.ports,
        guard=verdict,
        seen=seen,
        unreportable=unreportable,
    )


#: Plan key of an orphan tunnel's removal (``orphan:<interface>``; never a uuid).
ORPHAN_PREFIX = "orphan:"


def orphan_tunnels(
    sessions: Iterable[Session],
    invalid: Iterable[Invalid],
    previous: Previous,
    tunnels: Mapping[str, TunnelState],
) -> tuple[str, ...]:
    """The agent's tunnels (``tunnels``: the backend lists only the ``sessions``
    owner's) that no record and no session of the answer (valid or invalid) names."""
    named = {rec.interface for rec in previous.configured.values()}
    named |= {s.interface for s in sessions if s.interface}
    named |= {i.interface for i in invalid if i.interface}
    return tuple(sorted(n for n in tunnels if n not in named))


def _configure(
    s: Session,
    d: DesiredSession,
    previous: Previous,
    observed: Observed,
    removed_names: Collection[str],
    stale: tuple[str, ...],
    memo: dict[str, Any],
) -> SessionPlan:
    """Create, repair in place or keep one valid session; ``stale`` are its old
    interfaces under another name (removed), ``removed_names`` tunnels other
    sessions' removals free this cycle."""
    uuid = s.uuid
    rec = previous.configured.get(uuid)
    name = d.tunnel.name
    drift: list[str] = []
    state = observed.tunnels.get(name) if name not in removed_names else None
    if state is None:
        action = TunnelAction.CREATE
        drift.append(f"tunnel {name} missing")
    else:
        drift += tunnel_drift(d.tunnel, state)
        if rec is None:
            if d.psk_digest:
                drift.append("preshared key not known to be applied")
        else:
            if rec.tunnel is not d.tunnel and rec.tunnel != d.tunnel:
                drift.append("tunnel parameters changed: " + ", ".join(_spec_changes(rec.tunnel, d.tunnel)))
            if rec.psk_digest != d.psk_digest:
                drift.append("preshared key changed")
        action = TunnelAction.UPDATE if drift else TunnelAction.NONE
    if stale:
        drift.append(f"interface renamed: removing {', '.join(stale)}")
    fragment = observed.fragments.get(uuid)
    if fragment is None:
        routing = RoutingAction.REPLACE
        drift.append("routing fragment missing")
    elif fragment is not d.peer and fragment != d.peer:
        routing = RoutingAction.REPLACE
        drift.append("routing fragment differs")
    else:
        routing = RoutingAction.KEEP
    if d.port is not None and d.port not in observed.ports:
        drift.append(f"port {d.port} not open")
    if (
        observed.protocols is not None
        and fragment is not None
        and routing is RoutingAction.KEEP
        and uuid not in observed.protocols
    ):
        drift.append("no BGP protocol in the routing daemon (informative)")
    # Working again after a transient failure: the CP still shows its lastError; clear it.
    success = Report(uuid=uuid, status=SessionStatus.ACTIVE, clear_error=bool(s.last_error))
    setup = s.status is SessionStatus.QUEUED_FOR_SETUP
    return SessionPlan(
        uuid=uuid,
        kind=Kind.CONFIGURE,
        status=s.status,
        interface=name,
        tunnel=action,
        spec=d.tunnel if action is not TunnelAction.NONE else None,
        preshared_key=d.preshared_key if action is not TunnelAction.NONE else None,
        remove_interfaces=stale,
        routing=routing,
        peer=d.peer,
        port=d.port,
        drift=tuple(drift),
        report_on_success=success if report_needed(success, s.status, s.last_error, **memo) else None,
        report_on_failure=SessionStatus.SETUP_FAILED if setup else SessionStatus.ERROR,
        rollback_on_failure=setup and (rec is None or _provisional(previous, uuid)),
        configured=_record(d),
        cp_error=s.last_error,
        **memo,
    )


def _record(d: DesiredSession) -> ConfiguredSession:
    return d.record


def _provisional(previous: Previous, uuid: str) -> bool:
    """The session's record is of a setup that failed transiently, never went live."""
    retry = previous.retry.get(uuid)
    return retry is not None and retry.setup


def _deferred(
    s: Session, d: DesiredSession, retry: Retry, observed: Observed, memo: dict[str, Any]
) -> SessionPlan:
    """Waiting out the backoff: nothing is written, what is live stays (its applied
    fragment, its open port), nothing is reported."""
    peer = observed.fragments.get(s.uuid)
    return SessionPlan(
        uuid=s.uuid,
        kind=Kind.DEFERRED,
        status=s.status,
        interface=d.tunnel.name,
        routing=RoutingAction.KEEP if peer is not None else RoutingAction.NONE,
        peer=peer,
        port=d.port if d.port is not None and d.port in observed.ports else None,
        drift=(
            f"retry {retry.attempts + 1} after a transient failure, "
            f"not before {retry.not_before:.0f}: {retry.error}",
        ),
        cp_error=s.last_error,
        **memo,
    )


def _removal(
    uuid: str,
    status: SessionStatus | None,
    cp_error: str | None,
    names: tuple[str, ...],
    observed: Observed,
    memo: dict[str, Any],
) -> SessionPlan:
    has_fragment = uuid in observed.fragments
    drift = [f"removing tunnel {n}" for n in names] + (["dropping routing fragment"] if has_fragment else [])
    report: Report | None = None
    if status is SessionStatus.QUEUED_FOR_DELETE:
        report = Report(uuid=uuid, status=SessionStatus.DISABLED, removed=True, deleted=True)
    elif status is not None and (names or has_fragment):
        report = Report(uuid=uuid, status=status, last_error=cp_error, removed=True)
    if report is not None and not report_needed(report, status, cp_error, **memo):
        report = None
    return SessionPlan(
        uuid=uuid,
        kind=Kind.REMOVE,
        status=status,
        interface=names[0] if names else None,
        tunnel=TunnelAction.REMOVE if names else TunnelAction.NONE,
        remove_interfaces=names,
        routing=RoutingAction.DROP if has_fragment else RoutingAction.NONE,
        drift=tuple(drift) if status is not None else ("vanished from the CP answer", *drift),
        report_on_success=report,
        cp_error=cp_error,
        **memo,
    )


def _withheld(
    p: SessionPlan, previous: Previous, observed: Observed, why: str = "removal withheld by the guard"
) -> SessionPlan:
    rec = previous.configured.get(p.uuid)
    return SessionPlan(
        uuid=p.uuid,
        kind=Kind.WITHHELD,
        status=p.status,
        interface=rec.interface if rec else p.interface,
        routing=RoutingAction.KEEP if p.uuid in observed.fragments else RoutingAction.NONE,
        peer=observed.fragments.get(p.uuid) or (rec.peer if rec else None),
        port=rec.port if rec else None,
        drift=(why,),
        cp_error=p.cp_error,
        last_reported=p.last_reported,
        last_seen=p.last_seen,
    )


def _invalid(
    uuid: str,
    status: SessionStatus | None,
    cp_error: str | None,
    reason: str,
    previous: Previous,
    observed: Observed,
) -> SessionPlan:
    rec = previous.configured.get(uuid)
    report = Report(uuid=uuid, status=SessionStatus.ERROR, last_error=reason[:1024])
    last = previous.reported.get(uuid)
    needed = report_needed(report, status, cp_error, last, previous.seen.get(uuid))
    peer = observed.fragments.get(uuid) or (rec.peer if rec else None)
    return SessionPlan(
        uuid=uuid,
        kind=Kind.INVALID,
        status=status,
        interface=rec.interface if rec else None,
        routing=RoutingAction.KEEP if uuid in observed.fragments else RoutingAction.NONE,
        peer=peer,
        port=rec.port if rec else None,
        drift=(reason,),
        report=report if needed else None,
        cp_error=cp_error,
        last_reported=last,
        last_seen=previous.seen.get(uuid),
    )


def rebuild_reasons(
    d: DesiredSession,
    rec: ConfiguredSession | None,
    tunnels: Mapping[str, TunnelState],
    owned: Collection[str],
) -> list[str]:
    """Why configuring ``d`` would drop the session its live tunnel carries now
    (empty: it would not). Only a session the agent configured (``rec``) with a
    tunnel present counts: creating a missing tunnel, or a successor taking a
    removed session's name, drops nothing that works.

    - the interface is renamed (the old tunnel is deleted, a new one created);
    - our private key file changes (a key path change means a new node key);
    - the peer's public key on the tunnel differs from the desired one (a tunnel
      listed without device details is one of the other WireGuard kind, left
      from a backend switch: it is recreated);
    - the preshared key changes.
    """
    if rec is None:
        return []
    out: list[str] = []
    stale = [n for n in owned if n != d.tunnel.name]
    if stale:
        out.append(f"interface renamed from {', '.join(stale)}")
    state = tunnels.get(d.tunnel.name)
    if state is None or rec.interface != d.tunnel.name:
        return out
    if rec.tunnel.private_key_file != d.tunnel.private_key_file:
        out.append("our private key file changed")
    if state.peer_public_key is None:
        out.append("tunnel recreated (another WireGuard kind, or unreadable)")
    elif state.peer_public_key != d.tunnel.peer_public_key:
        out.append("peer public key changed")
    if rec.psk_digest != d.psk_digest:
        out.append("preshared key changed")
    return out


def _spec_changes(old: TunnelSpec, new: TunnelSpec) -> list[str]:
    return [f.name for f in attrs.fields(TunnelSpec) if getattr(old, f.name) != getattr(new, f.name)]


# ------------------------------------------------------------------ memory


def with_intent(previous: Previous, plan_: Plan) -> Previous:
    """``previous`` plus the records of every session about to be configured:
    persist this *before* applying, so a crash mid-apply leaves the agent knowing
    what it may have created (removed later if the session vanishes)."""
    configured = dict(previous.configured)
    for p in plan_.sessions:
        if p.kind is Kind.CONFIGURE and p.configured is not None and p.changes and p.uuid not in configured:
            configured[p.uuid] = p.configured
    return attrs.evolve(previous, configured=configured)


def next_previous(
    previous: Previous,
    plan_: Plan,
    *,
    failed: Collection[str] = (),
    sent: Iterable[Report] = (),
    transient: Mapping[str, str] | None = None,
    now: float = 0.0,
    interval: float = 60.0,
) -> Previous:
    """The memory after applying ``plan_``: ``failed`` uuids whose apply failed,
    ``sent`` the reports queued in the outbox this cycle.

    ``transient`` (uuid -> why) are the failed sessions a retry may fix: they keep
    what was built (a setup's record stays, marked provisional) and are tried
    again ``interval`` seconds after ``now`` (wall clock), then 2, 4... times that,
    at most :data:`RETRY_MAX_SECONDS`; any other outcome ends the backoff."""
    transient = transient or {}
    configured = dict(previous.configured)
    retry = dict(previous.retry)
    for p in plan_.sessions:
        if p.kind is Kind.DEFERRED:
            continue
        if p.uuid in transient and p.kind is Kind.CONFIGURE:
            old = retry.get(p.uuid)
            attempts = old.attempts + 1 if old is not None else 1
            gap = min(interval * 2 ** (attempts - 1), RETRY_MAX_SECONDS)
            retry[p.uuid] = Retry(
                attempts=attempts,
                # 0.9: cycles are jittered; a retry due "one interval later" must not slip by one.
                not_before=now + 0.9 * gap,
                error=transient[p.uuid][:1024],
                setup=p.rollback_on_failure,
                digest=p.configured.digest() if p.configured is not None else None,
            )
            continue
        retry.pop(p.uuid, None)
        if p.uuid in failed:
            if p.rollback_on_failure:
                configured.pop(p.uuid, None)
            continue
        if p.kind is Kind.CONFIGURE and p.configured is not None:
            configured[p.uuid] = p.configured
        elif p.kind is Kind.REMOVE:
            configured.pop(p.uuid, None)
    reported = dict(previous.reported)
    for r in sent:
        reported[r.uuid] = r
    keep = set(plan_.seen) | set(configured)
    seen = {u: s for u, s in {**previous.seen, **plan_.seen}.items() if u in keep}
    return Previous(
        configured=configured,
        reported={u: r for u, r in reported.items() if u in keep},
        seen=seen,
        retry={u: r for u, r in retry.items() if u in keep},
    )
