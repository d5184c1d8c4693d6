"""Diff the desired mesh against what the node has; say what to create, update, remove.

Pure (no I/O). Inputs: the validated answer's desired peers and per-peer errors,
and :class:`Observed`: every tunnel the backend lists (all owners: another
owner's tunnel is never touched, but its name and listen port must not be
taken), the mesh's open ports, the Babel fragments the routing backend last
accepted, and the per-tunnel :class:`Record` of what was last applied.

Rules:

- A valid peer's tunnel is **created** when missing, **updated** in place when
  what can be read back differs (port, peer key, allowed IPs, addresses,
  keepalive, MTU, link down) or when the digest of what was applied differs
  (the endpoint as configured, our key: neither can be read back; a roamed
  endpoint is therefore never "repaired"), and left alone otherwise.
- A peer whose name or port is held by another owner's tunnel is an error.
- A peer listed but invalid (or unplaceable) **keeps** whatever it has: a
  garbled key in one answer must not cut a working link.
- Mesh tunnels of peers no longer listed are **removed**, subject to the
  mass-removal guard (:mod:`moenet_core.guard`: an empty peer list after a CP
  bug looks exactly like a real mass removal, and the Go agent tore every mesh
  tunnel down on it), counted with the removals made within the guard's window.
- **Rebuilds** count against the same guard, together with this answer's
  removals: a mesh tunnel whose peer is still listed under another name (the
  interface prefix changed: the old tunnel is deleted, a new one created), and
  a live tunnel whose peer key would change (or that is listed without device
  details: a tunnel of the other WireGuard kind after a backend switch, which
  is recreated). When the guard refuses, they are withheld too: the old tunnel
  stays as it is and the renamed one is not created; everything else applies.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from enum import StrEnum
from typing import Any

import attrs

from moenet_core import GuardPolicy, GuardVerdict, GuardWindow, TunnelState, evaluate, tunnel_drift
from moenet_core.intents import BabelInterfaceIntent

from .addressing import parse_interface
from .desired import OWNER, DesiredPeer


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    NONE = "none"
    ERROR = "error"


@attrs.frozen(kw_only=True)
class Record:
    """What was last applied to one mesh tunnel (persisted)."""

    node_id: int
    digest: str
    endpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"nodeId": self.node_id, "digest": self.digest, "endpoint": self.endpoint}

    @classmethod
    def from_json(cls, raw: Any) -> Record | None:
        if not isinstance(raw, Mapping):
            return None
        node_id, digest, endpoint = raw.get("nodeId"), raw.get("digest"), raw.get("endpoint")
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not isinstance(digest, str):
            return None
        return cls(node_id=node_id, digest=digest, endpoint=endpoint if isinstance(endpoint, str) else None)


@attrs.frozen(kw_only=True)
class Observed:
    tunnels: Mapping[str, TunnelState]
    """Every tunnel of the agent, all owners."""
    ports: frozenset[int]
    """The mesh owner's open ports."""
    fragments: Mapping[str, BabelInterfaceIntent]
    """The mesh fragments the routing backend last accepted."""
    records: Mapping[str, Record]

    @property
    def mesh(self) -> dict[str, TunnelState]:
        return {n: s for n, s in self.tunnels.items() if s.owner == OWNER}

    @property
    def others(self) -> dict[str, TunnelState]:
        return {n: s for n, s in self.tunnels.items() if s.owner != OWNER}


@attrs.frozen(kw_only=True)
class PeerPlan:
    node_id: int
    interface: str | None
    action: Action
    drift: tuple[str, ...] = ()
    error: str | None = None
    desired: DesiredPeer | None = None


@attrs.frozen(kw_only=True)
class Plan:
    peers: tuple[PeerPlan, ...]
    remove: tuple[str, ...]
    """Mesh tunnels to remove now."""
    keep: tuple[str, ...]
    """Mesh tunnels left exactly as they are (invalid peers, withheld removals)."""
    guard: GuardVerdict
    ports: frozenset[int]
    """The mesh's open ports once everything is applied."""
    fragments: Mapping[str, BabelInterfaceIntent]
    """The mesh's Babel fragments once everything is applied."""

    @property
    def withheld(self) -> tuple[str, ...]:
        return self.guard.removals if self.guard.refused else ()

    def by_id(self, node_id: int) -> PeerPlan | None:
        return next((p for p in self.peers if p.node_id == node_id), None)


def plan(
    desired: Iterable[DesiredPeer],
    errors: Mapping[int, str],
    present: Collection[int],
    observed: Observed,
    *,
    prefix: str,
    guard: GuardPolicy | None = None,
    override: str | None = None,
    window: GuardWindow | None = None,
) -> Plan:
    """The plan for one answer. ``errors`` holds the listed peers that cannot be
    configured (id -> reason); ``present`` every id the answer lists; ``window``
    the guard's sliding window (the removals made recently)."""
    mesh = observed.mesh
    peers, wanted, failed_ids = _plan_peers(desired, errors, observed, mesh)
    keep, stale, departed = _sort_unwanted(mesh, wanted, failed_ids, set(present), observed, prefix)
    rekeyed = [
        pp.interface
        for pp in peers
        if pp.action is Action.UPDATE
        and pp.interface is not None
        and pp.desired is not None
        and mesh[pp.interface].peer_public_key != pp.desired.spec.peer_public_key
    ]
    verdict = evaluate(
        departed,
        mesh,
        guard,
        override=override,
        noun="mesh tunnels",
        rebuilds=[*stale, *rekeyed],
        window=window,
    )
    remove = stale + departed
    if verdict.refused:
        keep += stale + departed
        remove = []
        peers, wanted = _withhold_rebuilds(peers, wanted, stale, set(rekeyed), observed, prefix)
    ports, fragments = _final_ports_and_fragments(wanted, keep, mesh, observed)
    return Plan(
        peers=tuple(sorted(peers, key=lambda p: p.node_id)),
        remove=tuple(sorted(remove)),
        keep=tuple(sorted(keep)),
        guard=verdict,
        ports=frozenset(ports),
        fragments=fragments,
    )


def _withhold_rebuilds(
    peers: list[PeerPlan],
    wanted: Mapping[str, DesiredPeer],
    stale: Collection[str],
    rekeyed: Collection[str],
    observed: Observed,
    prefix: str,
) -> tuple[list[PeerPlan], dict[str, DesiredPeer]]:
    """The peers and wanted tunnels once the guard withheld the rebuilds: a
    re-keyed tunnel is left alone; a renamed one keeps its old tunnel (kept by
    the caller) and the new name is neither created nor declared."""
    renamed: dict[int, str] = {}
    for name in stale:
        rec = observed.records.get(name)
        owner_id = rec.node_id if rec is not None else parse_interface(name, prefix)
        if owner_id is not None:
            renamed[owner_id] = name
    held: list[PeerPlan] = []
    for pp in peers:
        if pp.interface in rekeyed:
            held.append(attrs.evolve(pp, action=Action.NONE, drift=("re-key withheld by the guard",)))
        elif pp.node_id in renamed and pp.action is Action.CREATE:
            old = renamed[pp.node_id]
            held.append(
                PeerPlan(
                    node_id=pp.node_id,
                    interface=old,
                    action=Action.NONE,
                    drift=("rename withheld by the guard",),
                )
            )
        else:
            held.append(pp)
    new_names = {pp.interface for pp in peers if pp.node_id in renamed and pp.action is Action.CREATE}
    return held, {n: d for n, d in wanted.items() if n not in new_names}


def _plan_peers(
    desired: Iterable[DesiredPeer],
    errors: Mapping[int, str],
    observed: Observed,
    mesh: Mapping[str, TunnelState],
) -> tuple[list[PeerPlan], dict[str, DesiredPeer], set[int]]:
    """A :class:`PeerPlan` per listed peer: ``(plans, interface -> wanted peer,
    ids that failed)``. A failed peer's tunnel is kept, not removed."""
    others = observed.others
    peers: list[PeerPlan] = []
    wanted: dict[str, DesiredPeer] = {}
    failed_ids = set(errors)
    for d in sorted(desired, key=lambda d: d.node_id):
        error = _conflict(d, others)
        if error is not None:
            failed_ids.add(d.node_id)
            peers.append(PeerPlan(node_id=d.node_id, interface=d.interface, action=Action.ERROR, error=error))
            continue
        wanted[d.interface] = d
        peers.append(_peer_action(d, mesh.get(d.interface), observed.records.get(d.interface)))
    for node_id, reason in sorted(errors.items()):
        peers.append(PeerPlan(node_id=node_id, interface=None, action=Action.ERROR, error=reason))
    return peers, wanted, failed_ids


def _conflict(d: DesiredPeer, others: Mapping[str, TunnelState]) -> str | None:
    """Why ``d`` would collide with another owner's tunnel (its interface name or
    its listen port), or None: the mesh never takes over what it does not own."""
    if d.interface in others:
        return f"interface {d.interface} is a tunnel of owner {others[d.interface].owner!r}"
    user = next((n for n, s in sorted(others.items()) if s.listen_port == d.port), None)
    if user is not None:
        return f"listen port {d.port} is used by tunnel {user} (owner {others[user].owner!r})"
    return None


def _peer_action(d: DesiredPeer, state: TunnelState | None, rec: Record | None) -> PeerPlan:
    """Create, update or leave the tunnel of ``d``. Besides the drift read back
    from the tunnel, the persisted record catches what cannot be read back."""
    if state is None:
        return PeerPlan(
            node_id=d.node_id,
            interface=d.interface,
            action=Action.CREATE,
            drift=("tunnel missing",),
            desired=d,
        )
    drift = tunnel_drift(d.spec, state)
    if rec is None or rec.node_id != d.node_id:
        drift.append("not known to be applied")
    elif rec.digest != d.digest:
        drift.append("configuration changed" if rec.endpoint == d.spec.endpoint else "endpoint changed")
    return PeerPlan(
        node_id=d.node_id,
        interface=d.interface,
        action=Action.UPDATE if drift else Action.NONE,
        drift=tuple(drift),
        desired=d,
    )


def _sort_unwanted(
    mesh: Mapping[str, TunnelState],
    wanted: Mapping[str, DesiredPeer],
    failed_ids: set[int],
    present_ids: set[int],
    observed: Observed,
    prefix: str,
) -> tuple[list[str], list[str], list[str]]:
    """Split the mesh tunnels nobody wants into ``(keep, stale, departed)``: kept
    while their peer fails, stale when the peer is still listed (removed freely),
    departed otherwise (removal subject to the guard)."""
    keep: list[str] = []
    stale: list[str] = []
    departed: list[str] = []
    for name in sorted(mesh):
        if name in wanted:
            continue
        rec = observed.records.get(name)
        owner_id = rec.node_id if rec is not None else parse_interface(name, prefix)
        if owner_id is not None and owner_id in failed_ids:
            keep.append(name)
        elif owner_id is not None and owner_id in present_ids:
            stale.append(name)
        else:
            departed.append(name)
    return keep, stale, departed


def _final_ports_and_fragments(
    wanted: Mapping[str, DesiredPeer],
    keep: Iterable[str],
    mesh: Mapping[str, TunnelState],
    observed: Observed,
) -> tuple[set[int], dict[str, BabelInterfaceIntent]]:
    """The open ports and Babel fragments once the plan is applied: the wanted
    peers', plus what the kept tunnels have now, so keeping one doesn't cut it off."""
    ports = {d.port for d in wanted.values()}
    fragments: dict[str, BabelInterfaceIntent] = {n: d.fragment for n, d in wanted.items()}
    for name in keep:
        state = mesh[name]
        if state.listen_port is not None:
            ports.add(state.listen_port)
        if name in observed.fragments:
            fragments[name] = observed.fragments[name]
    return ports, fragments


# ------------------------------------------------------------------ tunnel drift
