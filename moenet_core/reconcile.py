"""One reconciler skeleton for every task that makes the node match a CP answer.

Level-triggered, like a Kubernetes controller: every cycle reads the desired
state, reads the system, diffs and acts. The sessions, mesh and iBGP tasks are
subclasses of :class:`Reconciler`; they supply the domain steps and inherit the
rest, so every reconciler behaves the same where the network operator cannot
tell them apart:

1. **fetch** (:meth:`Reconciler.fetch`): the CP's answer, parsed. An unreachable
   CP is never "nothing desired": the last valid answer (persisted) is served and
   the run succeeds with a warning. An answer the CP refused, or one wrong as a
   whole, is also replaced by the last valid one, but the run *fails* with the
   reason so ``/status`` shows it. Without any saved answer nothing is changed.
2. **observe** (subclass): what the system has now, read from the backends.
3. **plan** (subclass, pure): what to change; it includes the mass-removal guard's
   verdict (:mod:`moenet_core.guard`), which the base logs once per refusal and
   exports as ``<plugin>_guard_refused``. The guard's sliding window is the
   base's: before the plan it sets :attr:`Reconciler.guard_window` (what was
   removed within :meth:`Reconciler.guard_policy`'s ``window``, from the
   persisted ``guard.json``, at the injected clock's time) for the subclass to
   pass to :func:`~moenet_core.guard.evaluate`; after it, the removals that go
   ahead are remembered.
4. **apply** (subclass): make the changes; per-object failures are
   :class:`Failure` values, told apart as *transient* (a retry may fix it: the CP
   or a daemon unreachable, DNS, a timeout) or *permanent* (the object's own
   data, a daemon rejecting it).
5. **report** (subclass): tell the CP and build the cycle's summary.

The base holds the lock (a cycle and ``/restart`` never interleave), emits
``moenet_sync_completed`` at the end of every cycle, ok or not, and ends a failed
cycle one way: the summary is kept for ``/status`` and the run raises the
subclass's error type with the reason. ``preview`` runs fetch, observe and plan
without persisting or writing anything: ``GET /plugins/<plugin>/plan`` and
``moenet-agent plan <plugin>`` come from :func:`plan_route`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs

from .controlplane import UNCHANGED
from .descriptors import RouteSpec, SyncEvent
from .errors import BackendUnavailable, ControlPlaneError, ControlPlaneUnavailable, MoenetError
from .guard import GuardMemory, GuardPolicy, GuardWindow
from .state import SavedAnswer

if TYPE_CHECKING:
    from aiohttp import web

    from .context import PluginContext
    from .guard import GuardVerdict

__all__ = [
    "Answer",
    "Failure",
    "ReconcileError",
    "Reconciler",
    "TransientError",
    "is_transient",
    "plan_route",
    "sync_cycle",
]

D = TypeVar("D")
"""The parsed desired state (the CP answer)."""
O = TypeVar("O")  # noqa: E741 - the observed state
P = TypeVar("P")
"""The plan."""
R = TypeVar("R")
"""The outcome of applying a plan."""


#: Where the last valid answer is kept, in the plugin's state directory.
ANSWER_FILE = "answer.json"
#: The guard's sliding-window memory (:class:`~moenet_core.guard.GuardMemory`).
GUARD_FILE = "guard.json"


class ReconcileError(MoenetError):
    """A cycle could not do its job; the message says what was kept."""


class TransientError(MoenetError):
    """A failure a retry may fix: a daemon restarting, a name not resolving yet."""


_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ENOENT,  # a control socket not there (yet)
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.EBUSY,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying may fix what raised ``exc`` (see the module doc)."""
    if isinstance(exc, TransientError | ControlPlaneUnavailable | BackendUnavailable | TimeoutError):
        return True
    if isinstance(exc, ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    # Name resolution (socket.gaierror is an OSError without a standard errno).
    return type(exc).__name__ == "gaierror"


@attrs.frozen
class Failure:
    """Why one object of a plan did not go live, and whether a retry may fix it."""

    reason: str
    transient: bool = False

    @classmethod
    def of(cls, what: str, exc: BaseException) -> Failure:
        """``"<what>: <exc>"``, classified with :func:`is_transient`."""
        return cls(f"{what}: {exc}", transient=is_transient(exc))

    def __str__(self) -> str:
        return self.reason


@attrs.frozen(kw_only=True)
class Answer(Generic[D]):
    """The desired state a cycle works on, and where it came from."""

    value: D
    raw: Any
    source: str
    """``controlPlane``, or ``saved`` when the last valid answer stands in."""
    problem: str | None = None
    """Why the CP's answer was not used (None when it was)."""
    fatal: bool = False
    """True when the CP refused or sent an unusable answer: the run fails."""


class Reconciler(Generic[D, O, P, R]):
    """The skeleton (see the module doc). Subclasses set the class attributes and
    implement :meth:`parse`, :meth:`observe`, :meth:`plan`, :meth:`apply` and
    :meth:`report`; the rest has working defaults."""

    task_name: ClassVar[str]
    """The scheduler's name of the task (``sessionSync``)."""
    resource: ClassVar[str]
    """The CP resource fetched (``sessions``)."""
    payload_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Exceptions :meth:`parse` raises for an answer that is wrong as a whole."""
    error: ClassVar[type[MoenetError]] = ReconcileError
    """Raised by a failed cycle."""
    allow_removal_key: ClassVar[str] = ""
    """The config key that lets one refused removal through (for the log line)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self.lock = asyncio.Lock()
        """Held by a cycle and by anything else writing the same objects (``/restart``)."""
        self.guard: GuardVerdict | None = None
        self.guard_window: GuardWindow | None = None
        """The guard's sliding window for the plan being made (None: no window);
        set by the base before :meth:`plan`."""
        self._guard_memory: GuardMemory | None = None
        self.last: dict[str, Any] | None = None
        """The last cycle's summary (``/status``), with its ``problem``."""
        self.last_error: str | None = None
        self._saved: bytes | None = None
        """Digest of the answer last saved (the answer itself is not kept)."""
        self.answer_digest: bytes | None = None
        """Digest of the CP answer :meth:`parse` is given (None for a saved answer):
        equal digests mean an equal answer, so a subclass may reuse its last parse."""
        key = f"{self.task_name}.guard_refused"
        if key not in ctx.stash:  # one gauge per agent and plugin, however often the task is built
            ctx.stash[key] = ctx.metrics.gauge(
                "guard_refused", "1 while the mass-removal guard withholds removals the CP's answer asks for."
            )
        self._m_refused = ctx.stash[key]
        ctx.stash[self.task_name] = self
        ctx.register_hooks(self)

    # ------------------------------------------------------------ subclass steps

    def parse(self, raw: Any) -> D:
        """The CP answer validated into the desired state; raises one of
        :attr:`payload_errors` when it is unusable as a whole."""
        raise NotImplementedError

    def reusable_digest(self) -> bytes | None:
        """The digest of an answer that :meth:`parse` can give again without it
        (handed :data:`~moenet_core.controlplane.UNCHANGED` in its place) and that
        is saved already: the CP source then does not decode an unchanged answer.
        Default None: every answer is decoded and parsed."""
        return None

    async def observe(self, desired: D) -> O:
        """What the system has now (read, not remembered)."""
        raise NotImplementedError

    def plan(self, answer: Answer[D], observed: O) -> P:
        """What to change (pure: no I/O, no clock)."""
        raise NotImplementedError

    def verdict(self, plan: P) -> GuardVerdict | None:
        """The guard's verdict inside ``plan`` (None: no guard)."""
        return None

    def guard_policy(self) -> GuardPolicy | None:
        """The guard's policy; its ``window`` turns the sliding window on. Default:
        the plugin section's ``guardMaxShare``, ``guardMinCount`` and ``guardWindow``
        (None, no window kept, for a section without them)."""
        return GuardPolicy.from_section(self.ctx.section)

    async def apply(self, plan: P, observed: O) -> R:
        """Make the changes of ``plan``."""
        raise NotImplementedError

    async def report(self, answer: Answer[D], plan: P, outcome: R) -> dict[str, Any]:
        """Tell the CP what happened; returns the cycle's summary."""
        raise NotImplementedError

    def plan_json(self, answer: Answer[D], plan: P, observed: O) -> dict[str, Any]:
        """``plan`` as JSON for ``/plugins/<plugin>/plan``: at least ``empty``
        (nothing would change) and ``lines`` (one readable line per change)."""
        raise NotImplementedError

    def changes(self, summary: Mapping[str, Any]) -> int:
        """How many writes a cycle made (for :class:`SyncEvent`)."""
        return 0

    def enabled(self) -> bool:
        """False: the cycle runs :meth:`when_disabled` instead."""
        return True

    async def prepare(self) -> None:
        """Called before the fetch (a key the cycle needs, say); raising
        :attr:`error` ends the cycle with nothing changed."""

    async def when_disabled(self) -> dict[str, Any]:
        return {"enabled": False}

    async def without_answer(self, problem: str) -> str:
        """Called when no answer at all can be served; returns what was kept
        (appended to the error). Default: nothing."""
        return "nothing changed"

    # ------------------------------------------------------------ saved answers

    def save_answer(self, raw: Any) -> None:
        """Persist an answer :meth:`parse` accepted (written only when it changed:
        the digest of the last one saved is remembered, so an unchanged answer
        costs neither an encode nor a copy kept in memory)."""
        digest = self.answer_digest
        if digest is not None and digest == self._saved:
            return
        self.ctx.state.save(ANSWER_FILE, SavedAnswer(answer=raw))
        self._saved = digest

    def load_answer(self) -> Any | None:
        """The last saved answer (raw, parsed again by the caller), or None; raises
        :class:`~moenet_core.state.StateError` for an unusable file."""
        saved = self.ctx.state.load(ANSWER_FILE, SavedAnswer)
        return saved.answer if saved is not None else None

    # ------------------------------------------------------------ the cycle

    async def fetch(self, *, persist: bool = True) -> Answer[D]:
        """The CP's answer, or the saved one when the CP cannot give a usable one."""
        fatal = False
        self.answer_digest = None
        try:
            raw, digest = await self.ctx.cp.fetch_digest(self.resource, known=self.reusable_digest())
            if raw is UNCHANGED and self.reusable_digest() != digest:
                # What parse remembers changed during the fetch (a plan preview parsed
                # another answer): decode this one after all.
                raw, digest = await self.ctx.cp.fetch_digest(self.resource)
        except ControlPlaneUnavailable as exc:
            problem = f"control plane unreachable for {self.resource}: {exc}"
        except ControlPlaneError as exc:
            problem, fatal = f"control plane refused {self.resource}: {exc}", True
        else:
            self.answer_digest = digest
            try:
                value = self.parse(raw)
            except self.payload_errors as exc:
                problem, fatal = f"invalid {self.resource} answer from the control plane: {exc}", True
            else:
                if persist:
                    self.save_answer(raw)
                return Answer(value=value, raw=raw, source="controlPlane")
        self.answer_digest = None
        saved = self.load_answer()
        if saved is None:
            kept = await self.without_answer(problem) if persist else "nothing changed"
            raise self.error(f"{problem}; no saved answer to serve, {kept}")
        try:
            value = self.parse(saved)
        except self.payload_errors as exc:
            raise self.error(f"{problem}; the saved answer is unusable ({exc}), nothing changed") from None
        return Answer(
            value=value,
            raw=saved,
            source="saved",
            problem=f"{problem}; serving the last valid answer",
            fatal=fatal,
        )

    async def run_once(self) -> dict[str, Any]:
        """One cycle under the lock; ``moenet_sync_completed`` either way."""
        async with self.lock, sync_cycle(self.ctx, self.task_name) as cycle:
            summary = await self._cycle()
            cycle.changes = self.changes(summary)
            return summary

    async def _cycle(self) -> dict[str, Any]:
        started = time.monotonic()
        if not self.enabled():
            summary = await self.when_disabled()
            self.last = {**summary, "at": self.ctx.clock.time()}
            self.last_error = None
            return summary
        try:
            await self.prepare()
            answer = await self.fetch()
            observed = await self.observe(answer.value)
            self.guard_window = self.window_now()
            plan = self.plan(answer, observed)
            verdict = self.verdict(plan)
            self.note_guard(verdict)
            self.remember_removals(verdict)
            outcome = await self.apply(plan, observed)
            summary = await self.report(answer, plan, outcome)
        except MoenetError as exc:
            self.last_error = str(exc)
            raise
        summary = {"answer": answer.source, **summary, "seconds": round(time.monotonic() - started, 4)}
        self.last = {**summary, "problem": answer.problem, "at": self.ctx.clock.time()}
        self.last_error = answer.problem if answer.fatal else None
        if answer.problem is not None:
            if answer.fatal:
                raise self.error(answer.problem)
            self.ctx.log.warning("{}", answer.problem)
            summary["problem"] = answer.problem
        return summary

    def note_guard(self, verdict: GuardVerdict | None) -> None:
        """Log a refusal once (and an override), keep the verdict for ``/status``."""
        if verdict is not None:
            if verdict.newly_refused(self.guard):
                self.ctx.log.error(
                    "{} guard: {} (allow with {}: {})",
                    self.ctx.plugin,
                    verdict.reason,
                    self.allow_removal_key or "allowRemoval",
                    verdict.digest,
                )
            elif verdict.overridden and (self.guard is None or self.guard.digest != verdict.digest):
                self.ctx.log.warning(
                    "{} guard: {}: allowed by {} {}",
                    self.ctx.plugin,
                    verdict.reason,
                    self.allow_removal_key or "allowRemoval",
                    verdict.digest,
                )
        self.guard = verdict
        self._m_refused.set(1 if verdict is not None and verdict.refused else 0)

    # ------------------------------------------------------------ guard window

    def _window_seconds(self) -> float:
        policy = self.guard_policy()
        return policy.window if policy is not None else 0.0

    def guard_memory(self) -> GuardMemory:
        """The window's memory, read from ``guard.json`` once; a file that cannot
        be read is logged and an empty memory used (a corrupt state file never
        stops the agent)."""
        if self._guard_memory is None:
            try:
                self._guard_memory = self.ctx.state.load(GUARD_FILE, GuardMemory, default=GuardMemory())
            except MoenetError as exc:
                self.ctx.log.warning("{} guard: ignoring the window's memory: {}", self.ctx.plugin, exc)
                self._guard_memory = GuardMemory()
        return self._guard_memory

    def window_now(self) -> GuardWindow | None:
        """The sliding window at the clock's time now (None when it is off)."""
        seconds = self._window_seconds()
        if seconds <= 0:
            return None
        return self.guard_memory().window(self.ctx.clock.time(), seconds)

    def remember_removals(self, verdict: GuardVerdict | None) -> None:
        """Remember the removals of ``verdict`` that go ahead (persisted before
        the apply, so a crash mid-apply still counts them)."""
        seconds = self._window_seconds()
        if seconds <= 0 and self._guard_memory is None and not self.ctx.state.path(GUARD_FILE).exists():
            return
        memory = self.guard_memory()
        after = memory.record(verdict, now=self.ctx.clock.time(), seconds=seconds)
        if after != memory:
            self.ctx.state.save(GUARD_FILE, after)
            self._guard_memory = after

    async def preview(self) -> dict[str, Any]:
        """What a cycle would change now; persists and writes nothing."""
        answer = await self.fetch(persist=False)
        observed = await self.observe(answer.value)
        self.guard_window = self.window_now()
        plan = self.plan(answer, observed)
        return {"answer": answer.source, "problem": answer.problem, **self.plan_json(answer, plan, observed)}

    def status_info(self) -> dict[str, Any]:
        """The part of ``/status`` every reconciler shares."""
        g = self.guard
        return {
            "lastRun": self.last,
            "lastError": self.last_error,
            "guard": g.status_info() if g is not None else None,
            "guardRefused": bool(g and g.refused),
        }


@attrs.define
class _Cycle:
    changes: int = 0


@contextlib.asynccontextmanager
async def sync_cycle(ctx: PluginContext, task: str) -> AsyncIterator[_Cycle]:
    """``async with sync_cycle(ctx, task) as cycle:`` emits ``moenet_sync_completed``
    when the block ends: ok with ``cycle.changes``, or failed with the error (the
    exception still propagates; a cancelled run emits nothing). For reconcilers
    that are not a :class:`Reconciler` (the BIRD policy sync)."""
    started = time.monotonic()
    cycle = _Cycle()

    def emit(exc: Exception | None) -> None:
        ctx.emit_sync_completed(
            SyncEvent(
                task=task,
                ok=exc is None,
                duration=time.monotonic() - started,
                changes=cycle.changes,
                error=str(exc) if exc is not None else None,
                transient=exc is not None and is_transient(exc),
            )
        )

    try:
        yield cycle
    except Exception as exc:
        emit(exc)
        raise
    emit(None)


def plan_route(task_name: str) -> RouteSpec:
    """``GET /plugins/<plugin>/plan``: what the plugin's reconciler would change
    now, as JSON (503 while it is not running, 502 when it cannot plan).
    Sensitive: it calls the CP and lists the topology, so it needs
    ``server.token`` when one is set (``moenet-agent plan`` sends it)."""

    async def handler(request: web.Request, ctx: PluginContext) -> web.StreamResponse:
        from aiohttp import web

        task = ctx.stash.get(task_name)
        if not isinstance(task, Reconciler):
            return web.json_response({"error": f"{task_name} is not running"}, status=503)
        try:
            return web.json_response(await task.preview())
        except MoenetError as exc:
            return web.json_response({"error": str(exc)}, status=502)

    return RouteSpec(
        method="GET",
        path="/plan",
        handler=handler,
        description=f"what a {task_name} would change now (changes nothing)",
        # A control-plane request per call, and the node's peers in the answer.
        sensitive=True,
    )
