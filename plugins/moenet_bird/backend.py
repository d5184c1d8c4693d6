"""The ``routing`` backend ``bird``: every owner's intents, one policy, one coalesced apply.

Other plugins never write BIRD files; they ``declare(owner, {key: intent})`` and
this backend renders the whole tree (:func:`~moenet_bird.render.render_tree`)
from the CP policy plus every owner's intents plus the maintenance flag, and
hands it to :class:`~moenet_bird.apply.TreeApplier`.

Fragments are the core's typed routing intents (:mod:`moenet_core.intents`),
dispatched by type, never by the owner's name: any owner (the built-in
``sessions``, ``ibgp`` and ``mesh`` plugins, or a third-party one) may declare
any kind, and the tree holds every owner's eBGP peers, iBGP neighbours and Babel
interfaces. An owner's declare replaces all of its previous fragments; the key
is the owner's stable name for the object.

:class:`~moenet_core.intents.EbgpPeerIntent`
    One eBGP peer: ``peers/dn42_<asn>_<hash>.conf`` with one MP-BGP protocol, or
    ``_v4`` / ``_v6`` ones. ``<hash>`` is of the key in its canonical spelling
    when the key is a UUID (the sessions plugin keys by session uuid, so its
    names do not depend on who declares them), else of ``<owner>/<key>``
    (:func:`~moenet_bird.policy.peer_id`). BIRD's own rules come on top of the
    intent's: no reserved ASN (``asn`` 64496-64511, 23456, ...), a link-local
    neighbour needs ``interface``, ``localLinkLocal`` only with
    ``neighborLinkLocal``, ``mpBgp`` needs an IPv6 neighbour, and IPv4 over an
    IPv6 session needs ``extendedNexthop`` or ``localIpv4``.
:class:`~moenet_core.intents.IbgpNeighborIntent`
    One iBGP session between the loopbacks (the IPv6 ones when the neighbour has
    one): ``ibgp/ibgp_<name>_<node id>.conf``; ``rrClient`` renders ``rr client``
    and ``rr cluster id``. The owner decides the topology; the backend renders
    exactly the declared sessions, except one to this node itself (the policy's
    ``node.id``). The policy's ``ibgpPeers`` are parsed but never rendered.
:class:`~moenet_core.intents.IbgpOptionsIntent`
    ``enabled=False`` renders no iBGP session at all; ``routeReflector`` is this
    node's role (shown in the files and ``/status``). At most one, whoever
    declares it; without one iBGP is enabled and the role follows from the
    neighbours (route reflector when any is an ``rrClient``).
:class:`~moenet_core.intents.BabelInterfaceIntent`
    One interface (or ``prefix*`` pattern) of the Babel IGP ``moenet_igp``.

A failed apply is ``ApplyResult.transient`` when a retry may fix it: no policy
yet, BIRD unreachable, restarting or not confirming in time (checked with one
``show status`` when the failure alone does not tell). BIRD refusing the
configuration, or one fragment's file, is not.

A fragment this backend cannot run lands in ``ApplyResult.rejected[key]`` (and
``/status``) with the reason and is left out; the owner's other fragments still
apply. Rejected are: anything that is not one of these four intents, a key that
is not a short printable string, a value BIRD's rules refuse (each reason names
``<owner>[<key>].<field>``), and a clash with a fragment declared earlier, by
this owner or another: one protocol name or session id for two eBGP peers, one
node id or name for two iBGP neighbours, one Babel pattern twice, a second
``IbgpOptionsIntent``. The earlier fragment keeps its place for as long as its
owner keeps declaring it (a changed value does not make it later). The same
holds for an eBGP peer or iBGP neighbour that passes validation but that BIRD
rejects: when BIRD's check names its own file (``peers/<symbol>.conf``,
``ibgp/<symbol>.conf``), that fragment is dropped, reported in ``rejected[key]``
with BIRD's message, and the apply is retried once without it, so everything
else still goes live. It is tried again on every apply (the next one may be
after a template fix), at the cost of one extra check.

Applies are coalesced: declares (and policy or maintenance changes) arriving
while an apply runs, or in the same event-loop turn (plus an optional debounce),
share one render and one configure, and every caller gets that run's result.
The last applied policy and every owner's accepted fragments (as
:func:`~moenet_core.intents.intent_to_json`) are persisted in the plugin state
after each successful apply, so a restarted agent renders the same tree at once
(and, with unchanged input, writes nothing and reconfigures nothing) instead of
deleting every peer file until the owners have declared again. A state file of
the previous version (camelCase payloads of the owners ``sessions``, ``ibgp``
and ``mesh``) is converted on restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from loguru import logger

from moenet_core import ApplyResult, MaintenanceEvent, ProtocolState, RoutingBackend, hookimpl
from moenet_core.intents import (
    BabelInterfaceIntent,
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    IntentError,
    RoutingIntent,
    intent_from_json,
    intent_from_legacy,
    intent_to_json,
)

from .apply import TreeApplier
from .client import BirdClient
from .collector import PROTOCOL as COLLECTOR_PROTOCOL
from .names import BirdConfigError as RenderError
from .names import text_error
from .policy import (
    BgpPeer,
    BirdPolicy,
    ibgp_file,
    parse_bird_config,
    peer_id,
    validate_interface,
    validate_neighbor,
    validate_options,
    validate_peer,
)
from .protocol import BirdClientError
from .render import ibgp_protocol_name, peer_protocol_names, render_tree
from .roa import LocalRouting

if TYPE_CHECKING:
    from loguru import Logger
    from prometheus_client import Counter, Histogram

    from moenet_core import PluginMetrics, StateStore

__all__ = ["INTENT_TYPES", "NO_POLICY", "STATE_FILE", "BirdRoutingBackend"]

#: The intents this backend runs; anything else is rejected.
INTENT_TYPES: tuple[type[RoutingIntent], ...] = (
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IbgpOptionsIntent,
    BabelInterfaceIntent,
)
NO_POLICY = "no BIRD policy from the control plane yet"
#: How long a declare on a fresh node waits for the first policy (seconds).
POLICY_WAIT = 30.0
#: How long a failed apply waits for BIRD's answer to tell "down" from "refused" (seconds).
PROBE_TIMEOUT = 2.0
STATE_FILE = "applied.json"
#: ``applied.json``'s version. Version 0 (no ``"version"``: fragments as the owners'
#: camelCase payloads) has the same fields and is converted by :func:`restore_fragments`.
STATE_VERSION = 2
#: Longest owner name or fragment key (they show in /status and logs).
KEY_MAX = 128
#: The kind of each fragment the previous version persisted, per owner (see :meth:`_restore`).
_LEGACY_OWNERS = ("sessions", "ibgp", "mesh")

_BASE_PROTOCOLS = frozenset({"moenet_igp", "moenet_lo", "kernel4", "kernel6", "own4", "own6"})

Slot = tuple[str, str]
"""(owner, key) of one fragment."""


@attrs.define
class _Merged:
    """Every owner's accepted fragments, free of clashes: what is rendered."""

    peers: dict[Slot, BgpPeer] = attrs.Factory(dict)
    neighbors: dict[Slot, IbgpNeighborIntent] = attrs.Factory(dict)
    babel: dict[Slot, BabelInterfaceIntent] = attrs.Factory(dict)
    options: dict[Slot, IbgpOptionsIntent] = attrs.Factory(dict)
    rejected: dict[str, dict[str, str]] = attrs.Factory(dict)
    """Per owner, key -> why (invalid, or a clash with an earlier fragment)."""

    @property
    def ibgp(self) -> IbgpOptionsIntent:
        return next(iter(self.options.values()), IbgpOptionsIntent())

    def accepted(self, owner: str) -> dict[str, RoutingIntent]:
        out: dict[str, RoutingIntent] = {}
        for group in (self.peers, self.neighbors, self.babel, self.options):
            for (o, k), v in group.items():
                if o == owner:
                    out[k] = v.intent if isinstance(v, BgpPeer) else v
        return out

    def count(self, owner: str) -> int:
        """The owner's accepted eBGP peers, iBGP neighbours and Babel interfaces."""
        return sum(o == owner for group in (self.peers, self.neighbors, self.babel) for o, _ in group)


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
        group: str = "",
    ) -> None:
        self.client = client
        self.policy_wait = policy_wait
        self._policy_known = asyncio.Event()
        """Set once a policy exists (restored or from the CP): declares wait for it."""
        self.applier = TreeApplier(config_dir, client, bird_binary=bird_binary, group=group)
        self.state = state
        self.template_dir = template_dir or None
        self.loopback_interface = loopback_interface
        self.maintenance = maintenance
        self.debounce = debounce
        self.log: Logger = log or logger

        self._policy: _Candidate | None = None
        self._candidate: _Candidate | None = None
        self.local = LocalRouting()
        """What the local config and the plugin's tasks add at render time (:mod:`.roa`)."""
        self._declared: dict[str, dict[str, RoutingIntent]] = {}
        self._declared_now: set[str] = set()
        """Owners that declared in this process (a restored fragment does not count)."""
        """Per owner, its last declare as given (rejected fragments included)."""
        self._since: dict[Slot, int] = {}
        """When each fragment was first declared: of two that clash, the earlier wins."""
        self._seq = itertools.count(1)
        self._merged = _Merged()
        self._warnings: dict[str, list[str]] = {}
        self._bird_rejected: dict[str, dict[str, str]] = {}
        """Per owner, fragments left out of the last apply because BIRD rejected their file."""

        self._next: asyncio.Future[ApplyResult] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._persisted: bytes | None = None
        """Digest of the state last written: a copy of every intent as JSON would
        cost several MB at 1 000 sessions, the digest 16 bytes."""

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
        """Restore the last applied input, clean up after an apply a crash interrupted
        (:meth:`TreeApplier.recover`) and try BIRD; BIRD being down is not fatal.
        Files a killed agent swapped in but BIRD never confirmed loading are loaded
        (one apply) as soon as BIRD answers."""
        self._restore()
        for what in self.applier.recover():
            self.log.warning("BIRD config after an interrupted apply: {}", what)
        try:
            await self.client.warm_up()
            self.log.info("BIRD: {}", self.client.banner)
        except BirdClientError as exc:
            self.log.warning("BIRD not reachable at start ({}); will retry on next use", exc)
            return
        if self.applier.pending_configure and self._policy is not None:
            self._request().add_done_callback(lambda f: f.cancelled() or f.exception())

    async def aclose(self) -> None:
        tasks = [t for t in (self._runner, *self._background) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._next is not None and not self._next.done():
            self._next.set_result(
                ApplyResult(ok=False, changed=False, error="agent shutting down", transient=True)
            )
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

    async def set_local(self, local: LocalRouting) -> ApplyResult | None:
        """Render with new local additions (static ROAs, aggregates); None when
        they are unchanged or there is no policy yet (the next apply takes them)."""
        if local == self.local:
            return None
        self.local = local
        if self._policy is None and self._candidate is None:
            return None
        return await self._request()

    async def declare(self, owner: str, fragments: Mapping[str, RoutingIntent]) -> ApplyResult:
        if why := _name_error(owner):
            return ApplyResult(
                ok=False,
                changed=False,
                error=f"invalid owner name {str(owner)[:40]!r}: {why}",
                rejected={str(k): f"invalid owner name: {why}" for k in fragments},
            )
        rejected = self._accept(owner, fragments)
        self._declared_now.add(owner)
        if not await self._await_policy():
            return ApplyResult(ok=False, changed=False, error=NO_POLICY, rejected=rejected, transient=True)
        result = await self._request()
        rejected = {**self._bird_rejected.get(owner, {}), **rejected}
        return attrs.evolve(result, rejected=rejected)

    async def set_maintenance(self, enabled: bool) -> ApplyResult:
        self.maintenance = enabled
        if not await self._await_policy():
            return ApplyResult(ok=False, changed=False, error=NO_POLICY, transient=True)
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

    def _accept(self, owner: str, fragments: Mapping[str, RoutingIntent]) -> dict[str, str]:
        """Store ``owner``'s fragments and merge every owner's; returns key -> reason
        for the owner's rejected ones."""
        fragments = dict(fragments)
        since: dict[Slot, int] = {}
        for key in sorted(fragments, key=str):
            first = self._since.get((owner, key))
            since[(owner, key)] = first if first is not None else next(self._seq)
        self._since = {slot: n for slot, n in self._since.items() if slot[0] != owner} | since
        self._declared[owner] = fragments
        self._warnings.pop(owner, None)
        self._merged = self._merge()
        rejected = dict(self._merged.rejected.get(owner, {}))
        for key, why in rejected.items():
            self.log.warning("{} fragment {} rejected: {}", owner, key, why)
        return rejected

    def _merge(self) -> _Merged:
        """Every owner's fragments, each checked alone and then against those
        declared before it (see the module doc)."""
        merged = _Merged(rejected={owner: {} for owner in self._declared})
        taken: dict[str, tuple[str, str]] = {}
        """A name only one fragment may have -> (who has it, what it is)."""
        order = sorted(
            (self._since.get((owner, key), 0), owner, key)
            for owner, fragments in self._declared.items()
            for key in fragments
        )
        for _, owner, key in order:
            intent = self._declared[owner][key]
            where = f"{owner}[{key}]"
            problems = _problems(owner, key, intent, where)
            if not problems:
                for claim, _what, clash in _claims(owner, key, intent, where):
                    if claim in taken:
                        holder, theirs = taken[claim]
                        problems = [clash.format(holder=holder, theirs=theirs)]
                        break
                else:
                    for claim, what, _ in _claims(owner, key, intent, where):
                        taken[claim] = (where, what)
            if problems:
                merged.rejected[owner][str(key)] = "; ".join(problems)
            elif isinstance(intent, EbgpPeerIntent):
                merged.peers[(owner, key)] = BgpPeer(peer_id(owner, key), intent)
            elif isinstance(intent, IbgpNeighborIntent):
                merged.neighbors[(owner, key)] = intent
            elif isinstance(intent, BabelInterfaceIntent):
                merged.babel[(owner, key)] = intent
            elif isinstance(intent, IbgpOptionsIntent):
                merged.options[(owner, key)] = intent
        return merged

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
            return ApplyResult(ok=False, changed=False, error=NO_POLICY, transient=True)
        hold = takeover_hold(self.applier.config_dir, time.time())
        if hold is not None and hold[0] not in self._declared_now:
            # ``moenet-agent adopt`` took the Go agent's sessions over: a tree without
            # them would end their BGP sessions. Wait for their owner's first declare.
            return ApplyResult(
                ok=False,
                changed=False,
                error=f"waiting for {hold[0]} to declare the {TAKEOVER_WAIT} ({', '.join(hold[1])})",
                transient=True,
            )
        merged = self._merged
        peers = dict(merged.peers)
        neighbors = dict(merged.neighbors)
        ibgp = merged.ibgp
        babel = [merged.babel[slot] for slot in sorted(merged.babel)]
        maintenance = self.maintenance
        local = self.local
        policy = used.policy
        # A peer with the node's own AS would be iBGP: BIRD refuses it over link-local and
        # with it the whole tree. Leave it out (rejected), whoever declared it.
        own_as = {
            slot: f"the peer's AS{p.intent.asn} is this node's own AS (bird-config policy.dn42As): "
            "that is iBGP, not an eBGP peering"
            for slot, p in peers.items()
            if policy.policy.asn and p.intent.asn == policy.policy.asn
        }
        for slot in own_as:
            del peers[slot]

        def render(
            ebgp: Mapping[Slot, BgpPeer], ibgp_peers: Mapping[Slot, IbgpNeighborIntent]
        ) -> Callable[[], dict[str, str]]:
            return lambda: render_tree(
                policy,
                [ebgp[slot] for slot in sorted(ebgp)],
                ibgp=ibgp,
                ibgp_peers=[ibgp_peers[slot] for slot in sorted(ibgp_peers)],
                babel=babel,
                maintenance=maintenance,
                template_dir=self.template_dir,
                loopback_interface=self.loopback_interface,
                local=local,
            )

        started = time.monotonic()
        result = await self.applier.apply(render(peers, neighbors))
        bird_rejected: dict[str, dict[str, str]] = {}
        named = self._rejected_fragment(peers, neighbors)
        if named is not None and self.applier.last_rejection is not None:
            # BIRD named one fragment's own file: drop that fragment, retry once without it.
            (owner, key), what = named
            first = result
            bird_rejected[owner] = {key: self.applier.last_rejection.error}
            self.log.warning("{} fragment {} rejected by BIRD, applying without it", owner, key)
            peers.pop((owner, key), None)
            neighbors.pop((owner, key), None)
            result = await self.applier.apply(render(peers, neighbors))
            if not result.ok:
                # Not (only) that fragment's fault, e.g. a broken shared template: BIRD's first
                # complaint is the one to read, the retry's follows it.
                result = attrs.evolve(result, error=f"{first.error}; without {what} {key}: {result.error}")
            result = attrs.evolve(result, rejected={**result.rejected, **bird_rejected[owner]})
        if not result.ok and not result.transient and await self._unreachable(result):
            result = attrs.evolve(result, transient=True)
        for (owner, key), why in own_as.items():
            bird_rejected.setdefault(owner, {})[key] = why
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
            if hold is not None:
                with contextlib.suppress(OSError):
                    (self.applier.config_dir / TAKEOVER_FILE).unlink()
                if self.sync_error and TAKEOVER_WAIT in self.sync_error:
                    self.sync_error = None  # the policy the sync task was told to wait with is live now
                self.log.info("the Go agent's sessions are in the BIRD tree: takeover done")
        else:
            self.last_error_at = self.last_apply_at
        return result

    async def _unreachable(self, result: ApplyResult) -> bool:
        """True when a failed apply failed because BIRD is down, restarting or
        busy (a retry may fix it), not because BIRD refused the configuration."""
        if result.changed:
            # Checked and written, but BIRD could not be told, or did not confirm in time.
            return True
        rejection = self.applier.last_rejection
        if rejection is not None and rejection.file is not None:
            return False  # BIRD named a file of the tree: its verdict, not its absence
        try:
            await self.client.command("show status", timeout=PROBE_TIMEOUT)
        except (BirdClientError, OSError, TimeoutError):
            return True
        return False

    def _rejected_fragment(
        self, peers: Mapping[Slot, BgpPeer], neighbors: Mapping[Slot, IbgpNeighborIntent]
    ) -> tuple[Slot, str] | None:
        """(owner, key) and kind of the eBGP peer or iBGP neighbour whose file
        BIRD's last rejection names, if any."""
        rejection = self.applier.last_rejection
        if rejection is None or rejection.file is None:
            return None
        for slot, p in peers.items():
            if p.file_name == rejection.file:
                return slot, "eBGP peer"
        for slot, n in neighbors.items():
            if ibgp_file(n) == rejection.file:
                return slot, "iBGP neighbour"
        return None

    # ----------------------------------------------------------- persistence

    def _persist(self) -> None:
        if self.state is None or self._policy is None or self._policy.raw is None:
            return
        fragments = {
            owner: {
                key: intent_to_json(intent) for key, intent in sorted(self._merged.accepted(owner).items())
            }
            for owner in sorted(self._declared)
        }
        doc = {
            "configHash": self._policy.config_hash,
            "policy": self._policy.raw,
            "fragments": fragments,
        }
        try:
            digest = _digest(doc)  # also the proof that it is JSON
        except (TypeError, ValueError) as exc:
            self.log.warning("cannot persist the applied BIRD input: {}", exc)
            return
        if digest == self._persisted:
            return
        self.state.save_document(STATE_FILE, doc, version=STATE_VERSION)
        self._persisted = digest

    def _restore(self) -> None:
        """Load the last applied policy and fragments (a bad file is ignored, not
        fatal; a bad fragment is skipped with a warning in ``/status``)."""
        if self.state is None:
            return
        try:
            doc = self.state.load_document(
                STATE_FILE, version=STATE_VERSION, migrate=lambda _version, fields: fields
            )
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
            for owner, payloads in sorted(fragments.items()):
                if not isinstance(payloads, dict) or _name_error(owner):
                    continue
                intents, warnings = restore_fragments(owner, payloads)
                self._accept(owner, intents)
                self._warnings[owner] = warnings
                for w in warnings:
                    self.log.warning("saved BIRD state: {}", w)
        with contextlib.suppress(TypeError, ValueError):
            self._persisted = _digest(doc)
        self.log.info("restored the last applied BIRD policy (hash {})", self._policy.config_hash or "none")

    # --------------------------------------------------------------- read-out

    async def protocols(self) -> Sequence[ProtocolState]:
        """Every protocol, lean (the details the collector reads: states, route
        counts and limits); read every minute for every session of the node."""
        return await self.client.protocols(lean=True)

    def fragment_protocols(self, owner: str) -> Mapping[str, tuple[str, ...]]:
        """Protocol names per applied fragment of ``owner``: an eBGP peer's key to
        its BGP protocols, an iBGP neighbour's key to its one protocol (fragments
        rejected or left out by BIRD are absent; so are iBGP neighbours while iBGP
        is disabled, before a policy says who this node is, and this node itself)."""
        skip = self._bird_rejected.get(owner, {})
        merged = self._merged
        out = {
            k: peer_protocol_names(p) for (o, k), p in merged.peers.items() if o == owner and k not in skip
        }
        if self._policy is not None and merged.ibgp.enabled:
            own = self._policy.policy.node.id  # never rendered: see render.ibgp_sessions
            out.update(
                (k, (ibgp_protocol_name(n),))
                for (o, k), n in merged.neighbors.items()
                if o == owner and n.node_id != own and k not in skip
            )
        return out

    def agent_protocols(self) -> set[str]:
        """Protocol names the agent's tree defines (the ones it may restart)."""
        names = set(_BASE_PROTOCOLS) | {"moenet_roa4", "moenet_roa6", COLLECTOR_PROTOCOL}
        for p in self._merged.peers.values():
            names |= {p.symbol, p.symbol + "_v4", p.symbol + "_v6", *peer_protocol_names(p)}
        names |= {ibgp_protocol_name(n) for n in self._merged.neighbors.values()}
        names |= {s.symbol for s in self.local.rpki_servers}
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
            "owners": {o: self._merged.count(o) for o in sorted(self._declared)},
            "ibgp": {
                "enabled": self._merged.ibgp.enabled,
                "routeReflector": self._merged.ibgp.route_reflector,
            },
            "rejected": {
                o: {**r, **self._bird_rejected.get(o, {})}
                for o, r in sorted(self._merged.rejected.items())
                if r or self._bird_rejected.get(o)
            },
            "warnings": {o: list(w) for o, w in self._warnings.items() if w},
            "stats": attrs.asdict(self.applier.stats),
        }


def _name_error(name: object) -> str | None:
    """Why ``name`` cannot be an owner name or fragment key, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    return text_error(name, KEY_MAX)


def _problems(owner: str, key: str, intent: RoutingIntent, where: str) -> list[str]:
    """Why one fragment cannot be rendered on its own (type, key, BIRD's rules)."""
    if why := _name_error(key):
        return [f"{owner}[{str(key)[:40]!r}]: the key {why}"]
    if isinstance(intent, EbgpPeerIntent):
        return validate_peer(BgpPeer(peer_id(owner, key), intent), where)
    if isinstance(intent, IbgpNeighborIntent):
        return validate_neighbor(intent, where)
    if isinstance(intent, BabelInterfaceIntent):
        return validate_interface(intent, where)
    if isinstance(intent, IbgpOptionsIntent):
        return validate_options(intent, where)
    kinds = ", ".join(t.__name__ for t in INTENT_TYPES)
    return [
        f"{where}: {type(intent).__name__} is not a routing intent the bird backend runs (it takes {kinds})"
    ]


def _claims(owner: str, key: str, intent: RoutingIntent, where: str) -> list[tuple[str, str, str]]:
    """The names one valid fragment needs for itself: (name, what it is, the
    reason to give a later fragment wanting it; ``{holder}`` is who has it,
    ``{theirs}`` what it is there)."""
    if isinstance(intent, EbgpPeerIntent):
        peer = BgpPeer(peer_id(owner, key), intent)
        return [
            (
                f"peer {peer.canonical_id}",
                f"AS{intent.asn}",
                f"{where}: eBGP peer {peer.canonical_id} is already declared by {{holder}} ({{theirs}})",
            ),
            (
                f"protocol {peer.symbol}",
                peer.canonical_id,
                f"{where}: protocol name {peer.symbol} clashes with {{holder}} ({{theirs}})",
            ),
        ]
    if isinstance(intent, IbgpNeighborIntent):
        return [
            (
                f"nodeId {intent.node_id}",
                intent.node_name,
                f"{where}.nodeId: {intent.node_id} is already declared ({{theirs}}, by {{holder}})",
            ),
            (
                f"nodeName {intent.node_name.lower()}",
                f"node {intent.node_id}",
                f"{where}.nodeName: {intent.node_name} is already declared ({{theirs}}, by {{holder}})",
            ),
        ]
    if isinstance(intent, BabelInterfaceIntent):
        return [
            (
                f"pattern {intent.pattern}",
                intent.type,
                f"{where}.pattern: {intent.pattern} is already declared by {{holder}}",
            )
        ]
    if isinstance(intent, IbgpOptionsIntent):
        return [("ibgp options", "", f"{where}: iBGP options are already declared by {{holder}}")]
    return []


#: Written into ``bird.configDir`` by ``moenet-agent adopt --apply``: ``{"owner":
#: "sessions", "protocols": [...], "until": <unix time>}``. Until ``owner`` has
#: declared (or ``until`` passed), no tree is applied: the first one would leave
#: out the sessions taken over from the Go agent and end their BGP sessions.
#: Removed after the first successful apply that follows the owner's declare.
TAKEOVER_FILE = ".moenet-takeover.json"
TAKEOVER_WAIT = "sessions taken over from the Go agent"


def takeover_hold(config_dir: Path, now: float) -> tuple[str, tuple[str, ...]] | None:
    """(owner, protocols) of a live :data:`TAKEOVER_FILE`, or None (absent,
    unreadable, malformed or expired: an apply is never held by a broken file)."""
    try:
        data = json.loads((config_dir / TAKEOVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    owner, protocols, until = data.get("owner"), data.get("protocols"), data.get("until")
    if not isinstance(owner, str) or _name_error(owner) or not isinstance(until, int | float):
        return None
    if isinstance(until, bool) or until < now or not isinstance(protocols, list):
        return None
    return owner, tuple(str(p) for p in protocols)


def restore_fragments(owner: str, payloads: Mapping[str, Any]) -> tuple[dict[str, RoutingIntent], list[str]]:
    """One owner's saved fragments as intents, and why any was skipped.

    A payload with ``kind`` is :func:`~moenet_core.intents.intent_to_json`'s form.
    One without is what the previous version saved for the owners it knew:
    ``sessions`` (eBGP peers, ``uuid`` included), ``ibgp`` (``options`` the
    iBGP options, every other key a neighbour) and ``mesh`` (Babel interfaces).
    """
    intents: dict[str, RoutingIntent] = {}
    warnings: list[str] = []
    for key, payload in sorted(payloads.items()):
        where = f"{owner}[{key}]"
        try:
            if isinstance(payload, Mapping) and "kind" in payload:
                intents[key] = intent_from_json(dict(payload), where)
            elif owner in _LEGACY_OWNERS:
                kind = {
                    "sessions": EbgpPeerIntent.kind,
                    "mesh": BabelInterfaceIntent.kind,
                    "ibgp": IbgpOptionsIntent.kind if key == "options" else IbgpNeighborIntent.kind,
                }[owner]
                intents[key] = intent_from_legacy(kind, payload, where, key=key)
            else:
                warnings.append(f"{where}: saved without a kind, skipped")
        except IntentError as exc:
            warnings.append(f"{where}: skipped: {exc}")
    return intents, warnings


def _digest(doc: Any) -> bytes:
    """A digest of ``doc`` as canonical JSON (raises TypeError/ValueError when it is not JSON)."""
    return hashlib.blake2b(json.dumps(doc, sort_keys=True).encode(), digest_size=16).digest()
