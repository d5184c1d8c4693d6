"""In-memory backends, an in-process control plane and a :class:`PluginContext`
factory, for testing tasks without root, daemons or a running agent.

The fakes implement the ABCs of :mod:`moenet_core.backends` the way the real
backends behave where a task can tell the difference:

- **owners**: a tunnel belongs to one owner; ensuring or removing (with
  ``owner=``) another owner's tunnel is refused, as is an interface the agent does
  not own (:attr:`FakeTunnelBackend.foreign`); firewall ports are kept per owner;
  ``declare(owner, fragments)`` replaces that owner's fragments only.
- **canonical state**: what ``list()`` returns is what a real backend would read
  back (canonical addresses and networks, keepalive 0 as None, the endpoint a
  peer roamed to kept while the spec's endpoint is unchanged).
- **validation**: invalid specs, ports, addresses and fragments are refused (a
  routing fragment that is not a typed intent is rejected alone, in
  ``ApplyResult.rejected``).

Every call is recorded in a :class:`Journal` (``wrote`` says whether it changed
anything), so a test can assert that an unchanged cycle writes nothing::

    mark = fakes.journal.mark()
    await task.run_once()
    assert fakes.journal.since(mark) == []

Faults are injected per operation and key: ``tunnel.fail("ensure", "wg1",
OSError("boom"))`` makes the next ``ensure`` of ``wg1`` raise (``times=None``:
until :meth:`heal`); ``late=True`` applies the write first and raises after it
(the "failed late" case: something changed although the call failed);
``routing.fail("declare", "mesh", result=ApplyResult(ok=False, ...))`` answers a
declare with that result; ``routing.reject(key, reason)`` rejects one fragment.

Tests may also edit the fakes' state directly (``tunnel.tunnels[name] =
attrs.evolve(...)``, ``del tunnel.tunnels[name]``) to simulate a hand edit; such
edits are not journaled.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..agent import Agent, PluginSections, structure_plugin_sections
from ..backends import (
    BACKEND_INTERFACES,
    DEFAULT_OWNER,
    ApplyResult,
    FirewallBackend,
    LoopbackBackend,
    ProtocolState,
    RoutingBackend,
    TunnelAddress,
    TunnelBackend,
    TunnelSpec,
    TunnelState,
    TunnelStats,
    _canon_address,
    _canon_network,
)
from ..clock import Clock
from ..config import AgentConfig, build_config, deep_merge
from ..context import PluginContext
from ..controlplane import ControlPlane, validate_resource
from ..descriptors import Backend, BackendSpec
from ..errors import ConfigError, ControlPlaneRejected, ControlPlaneUnavailable, MoenetError
from ..hookspecs import hookimpl
from ..intents import RoutingIntent
from ..plugins import AgentPluginManager
from ..state import StateStore
from .clock import ManualClock
from .fake_cp import FakeControlPlane, RecordedRequest

__all__ = [
    "Call",
    "FakeBackendError",
    "FakeBackends",
    "FakeFirewallBackend",
    "FakeLoopbackBackend",
    "FakeRoutingBackend",
    "FakeTunnelBackend",
    "InjectedFault",
    "Journal",
    "StubControlPlane",
    "plugin_context",
]

_IFNAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$")
_OWNER = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MIN_MTU = 1280


class FakeBackendError(MoenetError):
    """A fake backend refused a call, as the real one would (another owner's
    tunnel, an invalid spec, a missing key file...)."""


class InjectedFault(MoenetError):
    """The error a fault injected with a message (not an exception) raises."""


# ------------------------------------------------------------------ journal


@attrs.frozen
class Call:
    """One call to a fake backend."""

    backend: str
    """The backend kind: ``tunnel``, ``firewall``, ``routing``, ``loopback``."""
    op: str
    """The method: ``ensure``, ``remove``, ``sync``, ``declare``, ``list``..."""
    key: str
    """What it was about: a tunnel name, an owner, a protocol ('' for none)."""
    wrote: bool = False
    """True when the call changed the fake system."""
    error: str | None = None
    """The message of the exception the call raised (injected or a refusal)."""
    detail: Any = None
    """The call's argument: the spec, the ports, the fragments..."""


class Journal:
    """Every call to the fakes sharing it, in order."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def record(self, call: Call) -> Call:
        self.calls.append(call)
        return call

    def writes(self, backend: str | None = None) -> list[Call]:
        """The calls that changed something (of one backend kind, or all)."""
        return [c for c in self.calls if c.wrote and (backend is None or c.backend == backend)]

    def mark(self) -> int:
        """A position for :meth:`since`."""
        return len(self.calls)

    def since(self, mark: int, *, writes_only: bool = True) -> list[Call]:
        """The writes (or, with ``writes_only=False``, all calls) after ``mark``."""
        return [c for c in self.calls[mark:] if c.wrote or not writes_only]

    def clear(self) -> None:
        self.calls.clear()


# ------------------------------------------------------------------- faults


@attrs.define
class _Fault:
    op: str
    key: str | None
    error: BaseException | None
    result: ApplyResult | None
    remaining: int | None
    late: bool


class _FakeBase(Backend):
    """Journal and fault injection shared by the fakes."""

    kind: ClassVar[str] = ""
    OPS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal if journal is not None else Journal()
        self._faults: list[_Fault] = []

    # --------------------------------------------------------- scripting

    def fail(
        self,
        op: str,
        key: str | None = None,
        error: BaseException | str | None = None,
        *,
        result: ApplyResult | None = None,
        times: int | None = 1,
        late: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``op`` (for ``key``, or any key when
        None) fail: raise ``error`` (a message becomes :class:`InjectedFault`), or,
        for routing calls returning an :class:`ApplyResult`, return ``result``.
        ``times=None`` lasts until :meth:`heal`. ``late=True`` lets the call make
        its change first and raise after it."""
        if op not in self.OPS:
            raise ValueError(f"{type(self).__name__} has no operation {op!r} (one of {sorted(self.OPS)})")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: until healed)")
        if result is not None and error is not None:
            raise ValueError("give an error or a result, not both")
        exc: BaseException | None = None
        if result is None:
            exc = (
                error
                if isinstance(error, BaseException)
                else InjectedFault(error or f"injected {op} failure")
            )
        self._faults.append(_Fault(op, key, exc, result, times, late))

    def heal(self, op: str | None = None, key: str | None = None) -> None:
        """Drop scripted faults (of ``op``, of ``key``, or all)."""
        self._faults = [
            f for f in self._faults if not ((op is None or f.op == op) and (key is None or f.key == key))
        ]

    @property
    def faults(self) -> int:
        """Faults still pending."""
        return len(self._faults)

    def _take(self, op: str, key: str) -> _Fault | None:
        for f in self._faults:
            if f.op == op and (f.key is None or f.key == key):
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
                return f
        return None

    # ----------------------------------------------------------- journal

    def _record(
        self, op: str, key: str, *, wrote: bool = False, error: str | None = None, detail: Any = None
    ) -> None:
        self.journal.record(Call(self.kind, op, key, wrote, error, detail))

    def _early(self, op: str, key: str, detail: Any = None) -> _Fault | None:
        """Take a fault; an early one is journaled and raised here."""
        fault = self._take(op, key)
        if fault is not None and not fault.late and fault.error is not None:
            self._record(op, key, error=str(fault.error), detail=detail)
            raise fault.error
        return fault

    def _refuse(self, op: str, key: str, message: str, detail: Any = None) -> FakeBackendError:
        self._record(op, key, error=message, detail=detail)
        return FakeBackendError(message)

    @property
    def calls(self) -> list[Call]:
        """This backend's calls, in order."""
        return [c for c in self.journal.calls if c.backend == self.kind]

    @property
    def writes(self) -> list[Call]:
        """This backend's calls that changed something."""
        return self.journal.writes(self.kind)

    def calls_of(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]


def _check_owner(owner: object) -> str | None:
    if not isinstance(owner, str) or not _OWNER.match(owner):
        return (
            f"owner {owner!r} is invalid: use 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter"
        )
    return None


def _read_private_key(path: str) -> bytes:
    """The raw key of a 0600/0400 base64 key file, as a real backend reads it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FakeBackendError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise FakeBackendError(f"key file {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or mode & 0o077:
        raise FakeBackendError(f"key file {path} has mode {mode:04o}; it must be 0600 or 0400")
    try:
        raw = base64.b64decode(Path(path).read_text(encoding="ascii").strip(), validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
        raise FakeBackendError(f"key file {path}: not a base64 key") from None
    if len(raw) != 32:
        raise FakeBackendError(f"key file {path}: not a 32-byte key")
    return raw


# ------------------------------------------------------------------- tunnel


class FakeTunnelBackend(_FakeBase, TunnelBackend):
    """Tunnels as a real backend shows them, in memory.

    ``tunnels`` is the system's state (edit it to simulate drift); ``foreign``
    names interfaces that exist but are not the agent's; ``stats_by_name``
    scripts :meth:`stats` (a :class:`TunnelStats` or an exception to raise).
    ``check_keys`` (default) reads and mode-checks the private key file on
    ``ensure`` as the real backends do. A ``keepalive`` of None takes
    ``default_keepalive`` (the node's ``wireguard.persistentKeepaliveInterval``).
    """

    kind: ClassVar[str] = "tunnel"
    OPS: ClassVar[frozenset[str]] = frozenset(
        {"ensure", "remove", "list", "observe", "stats", "refresh_endpoints"}
    )

    def __init__(
        self,
        journal: Journal | None = None,
        *,
        default_keepalive: int = 25,
        check_keys: bool = True,
        foreign: Iterable[str] = (),
    ) -> None:
        super().__init__(journal)
        self.tunnels: dict[str, TunnelState] = {}
        self.foreign: set[str] = set(foreign)
        self.stats_by_name: dict[str, TunnelStats | BaseException] = {}
        self.applied_endpoint: dict[str, str | None] = {}
        """The spec endpoint last applied per tunnel (roaming keeps the peer's one)."""
        self.default_keepalive = default_keepalive
        self.check_keys = check_keys
        self._ifindex = 100
        self._port = 40000

    def _validate(self, spec: TunnelSpec) -> tuple[tuple[str, ...], tuple[TunnelAddress, ...]]:
        name = spec.name
        if not isinstance(name, str) or not _IFNAME.match(name) or name in (".", ".."):
            raise FakeBackendError(f"interface name {name!r} is invalid")
        if (problem := _check_owner(spec.owner)) is not None:
            raise FakeBackendError(f"{name}: tunnel {problem}")
        port = spec.listen_port
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            raise FakeBackendError(f"{name}: listen_port must be 1-65535 or unset")
        try:
            key = base64.b64decode(spec.peer_public_key, validate=True)
        except (binascii.Error, ValueError, TypeError):
            key = b""
        if len(key) != 32:
            raise FakeBackendError(
                f"{name}: peer public key must be 44 characters of base64 encoding 32 bytes"
            )
        if not MIN_MTU <= spec.mtu <= 65535:
            raise FakeBackendError(f"{name}: mtu must be {MIN_MTU}-65535")
        if spec.keepalive is not None and not 0 <= spec.keepalive <= 65535:
            raise FakeBackendError(f"{name}: keepalive must be 0-65535 seconds")
        if not spec.private_key_file:
            raise FakeBackendError(f"{name}: private_key_file is required")
        try:
            allowed = tuple(sorted({_canon_network(n) for n in spec.allowed_ips}))
            canon = sorted({_canon_address(a.local, a.peer) for a in spec.addresses}, key=str)
        except ValueError as exc:
            raise FakeBackendError(f"{name}: {exc}") from None
        addresses = tuple(TunnelAddress(local=local, peer=peer) for local, peer in canon)
        if len({a.local.split("/")[0] for a in addresses}) != len(addresses):
            raise FakeBackendError(f"{name}: addresses list the same local address twice")
        return allowed, addresses

    async def ensure(self, spec: TunnelSpec) -> bool:
        name = spec.name
        fault = self._early("ensure", name, spec)
        if name in self.foreign:
            raise self._refuse("ensure", name, f"interface {name} is not one of moenet-agent's tunnels", spec)
        have = self.tunnels.get(name)
        if have is not None and have.owner != spec.owner:
            raise self._refuse(
                "ensure",
                name,
                f"tunnel {name} belongs to owner {have.owner!r}, not {spec.owner!r}; refusing to change it",
                spec,
            )
        try:
            allowed, addresses = self._validate(spec)
            if self.check_keys:
                _read_private_key(spec.private_key_file)
        except FakeBackendError as exc:
            raise self._refuse("ensure", name, str(exc), spec) from None
        endpoint = spec.endpoint
        if have is not None and have.endpoint and self.applied_endpoint.get(name) == spec.endpoint:
            endpoint = have.endpoint  # WireGuard roaming: the peer's current address stays
        port = spec.listen_port
        if port is None:
            if have is not None and have.listen_port is not None:
                port = have.listen_port
            else:
                self._port += 1
                port = self._port
        if have is None:
            self._ifindex += 1
        keepalive = self.default_keepalive if spec.keepalive is None else spec.keepalive
        new = TunnelState(
            name=name,
            ifindex=have.ifindex if have is not None else self._ifindex,
            listen_port=port,
            peer_public_key=spec.peer_public_key,
            endpoint=endpoint,
            allowed_ips=allowed,
            keepalive=keepalive or None,
            mtu=spec.mtu,
            addresses=addresses,
            up=True,
            owner=spec.owner,
        )
        changed = new != have
        if changed:
            self.tunnels[name] = new
        self.applied_endpoint[name] = spec.endpoint
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("ensure", name, wrote=changed, error=error, detail=spec)
        if fault is not None and fault.error is not None:
            raise fault.error
        return changed

    async def remove(self, name: str, *, owner: str | None = None) -> bool:
        fault = self._early("remove", name, owner)
        if name in self.foreign:
            raise self._refuse(
                "remove", name, f"interface {name} is not one of moenet-agent's tunnels", owner
            )
        have = self.tunnels.get(name)
        if have is None:
            self._record("remove", name, detail=owner)
            return False
        if owner is not None and have.owner != owner:
            raise self._refuse(
                "remove",
                name,
                f"tunnel {name} belongs to owner {have.owner!r}, not {owner!r}; refusing to remove it",
                owner,
            )
        del self.tunnels[name]
        self.applied_endpoint.pop(name, None)
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("remove", name, wrote=True, error=error, detail=owner)
        if fault is not None and fault.error is not None:
            raise fault.error
        return True

    async def list(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        self._early("list", owner or "", owner)
        self._record("list", owner or "", detail=owner)
        return {n: s for n, s in sorted(self.tunnels.items()) if owner is None or s.owner == owner}

    async def observe(self, owner: str | None = None) -> Mapping[str, TunnelState]:
        """The same states as :meth:`list`, journaled as a read of op ``observe``
        (tests assert which read a reconciler used)."""
        self._early("observe", owner or "", owner)
        self._record("observe", owner or "", detail=owner)
        return {n: s for n, s in sorted(self.tunnels.items()) if owner is None or s.owner == owner}

    async def stats(self, name: str) -> TunnelStats:
        self._early("stats", name)
        scripted = self.stats_by_name.get(name)
        if isinstance(scripted, BaseException):
            self._record("stats", name, error=str(scripted))
            raise scripted
        self._record("stats", name)
        if scripted is not None:
            return scripted
        have = self.tunnels.get(name)
        if have is None:
            raise FakeBackendError(f"{name}: no such tunnel")
        return TunnelStats(name=name, latest_handshake=None, rx_bytes=0, tx_bytes=0, endpoint=have.endpoint)

    async def refresh_endpoints(self, owner: str | None = None) -> Sequence[str]:
        self._early("refresh_endpoints", owner or "", owner)
        self._record("refresh_endpoints", owner or "", detail=owner)
        return ()

    def public_key(self, private_key_file: str) -> str:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        raw = _read_private_key(private_key_file)
        public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
        return base64.b64encode(public).decode()


# ----------------------------------------------------------------- firewall


class FakeFirewallBackend(_FakeBase, FirewallBackend):
    """Open UDP ports per owner (``ports``: owner -> set; edit it to simulate drift)."""

    kind: ClassVar[str] = "firewall"
    OPS: ClassVar[frozenset[str]] = frozenset({"sync", "list_ports", "remove_all"})

    def __init__(self, journal: Journal | None = None) -> None:
        super().__init__(journal)
        self.ports: dict[str, frozenset[int]] = {}

    @property
    def syncs(self) -> list[tuple[str, frozenset[int]]]:
        """``(owner, ports)`` of every sync that changed something."""
        return [(c.key, c.detail) for c in self.writes if c.op == "sync"]

    async def sync(self, ports: frozenset[int], *, owner: str = DEFAULT_OWNER) -> bool:
        want = frozenset(ports)
        fault = self._early("sync", owner, want)
        if (problem := _check_owner(owner)) is not None:
            raise self._refuse("sync", owner, problem, want)
        bad = sorted(p for p in want if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535)
        if bad:
            raise self._refuse("sync", owner, f"not UDP ports: {bad}", want)
        changed = self.ports.get(owner, frozenset()) != want
        if changed:
            self.ports[owner] = want
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("sync", owner, wrote=changed, error=error, detail=want)
        if fault is not None and fault.error is not None:
            raise fault.error
        return changed

    async def list_ports(self, owner: str | None = None) -> frozenset[int]:
        self._early("list_ports", owner or "", owner)
        self._record("list_ports", owner or "", detail=owner)
        if owner is not None:
            return self.ports.get(owner, frozenset())
        return frozenset().union(*self.ports.values())

    async def remove_all(self) -> None:
        self._early("remove_all", "")
        changed = any(self.ports.values())
        self.ports.clear()
        self._record("remove_all", "", wrote=changed)


# ----------------------------------------------------------------- loopback


class FakeLoopbackBackend(_FakeBase, LoopbackBackend):
    """The agent's loopback addresses (``managed``, canonical ``a.b.c.d/32`` and
    ``x::y/128``); ``others`` are addresses someone else added, left alone."""

    kind: ClassVar[str] = "loopback"
    OPS: ClassVar[frozenset[str]] = frozenset({"ensure", "addresses"})

    def __init__(self, journal: Journal | None = None) -> None:
        super().__init__(journal)
        self.managed: tuple[str, ...] = ()
        self.others: set[str] = set()

    @staticmethod
    def _canon(address: str) -> str:
        try:
            iface = ipaddress.ip_interface(address.strip())
        except (ValueError, AttributeError):
            raise FakeBackendError(f"not an address: {address!r}") from None
        if iface.network.prefixlen != iface.max_prefixlen and "/" in address:
            raise FakeBackendError(f"a loopback address is a /{iface.max_prefixlen} (got {address!r})")
        return f"{iface.ip}/{iface.max_prefixlen}"

    async def ensure(self, addresses: Sequence[str]) -> bool:
        fault = self._early("ensure", "loopback", tuple(addresses))
        try:
            canon = {self._canon(a) for a in addresses}
            want = tuple(
                sorted(canon, key=lambda a: (ipaddress.ip_interface(a).version, ipaddress.ip_interface(a)))
            )
        except FakeBackendError as exc:
            raise self._refuse("ensure", "loopback", str(exc), tuple(addresses)) from None
        changed = want != self.managed
        self.managed = want
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("ensure", "loopback", wrote=changed, error=error, detail=want)
        if fault is not None and fault.error is not None:
            raise fault.error
        return changed

    async def addresses(self) -> tuple[str, ...]:
        self._early("addresses", "loopback")
        self._record("addresses", "loopback")
        return self.managed


# ------------------------------------------------------------------ routing


class FakeRoutingBackend(_FakeBase, RoutingBackend):
    """Declared fragments per owner, and scripted protocol states.

    ``fragments`` is what is applied (owner -> key -> intent); ``states`` is what
    :meth:`protocols` returns; ``protocol_names`` (owner -> key -> names) is what
    :meth:`fragment_protocols` returns. A fragment that is not a
    :class:`~moenet_core.intents.RoutingIntent` is rejected alone, as the real
    backend rejects what it cannot render; ``allow_mappings=True`` accepts plain
    mappings too (for owners not yet on typed intents).
    """

    kind: ClassVar[str] = "routing"
    OPS: ClassVar[frozenset[str]] = frozenset(
        {"declare", "reject", "protocols", "set_maintenance", "restart_protocol"}
    )

    def __init__(self, journal: Journal | None = None, *, allow_mappings: bool = False) -> None:
        super().__init__(journal)
        self.fragments: dict[str, dict[str, Any]] = {}
        self.states: list[ProtocolState] = []
        self.protocol_names: dict[str, dict[str, tuple[str, ...]]] = {}
        self.maintenance = False
        self.allow_mappings = allow_mappings

    @property
    def declares(self) -> list[tuple[str, dict[str, Any]]]:
        """``(owner, fragments)`` of every declare call, applied or not."""
        return [(c.key, c.detail) for c in self.calls if c.op == "declare"]

    def reject(self, key: str, reason: str, *, times: int | None = None) -> None:
        """Reject fragment ``key`` (of any owner) with ``reason`` in every declare
        until :meth:`heal` (``heal("reject", key)``), or the next ``times``."""
        self.fail("reject", key, InjectedFault(reason), times=times)

    async def declare(self, owner: str, fragments: Mapping[str, RoutingIntent]) -> ApplyResult:
        given = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in fragments.items()}
        fault = self._early("declare", owner, given)
        if fault is not None and fault.result is not None and not fault.result.ok:
            # The daemon refused the configuration: the previous one stays live.
            self._record("declare", owner, error=fault.result.error or "rejected", detail=given)
            return fault.result
        if (problem := _check_owner(owner)) is not None:
            raise self._refuse("declare", owner, problem, given)
        accepted: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        for key, fragment in sorted(given.items(), key=lambda kv: str(kv[0])):
            if not isinstance(key, str) or not key:
                rejected[str(key)] = "a fragment key is a non-empty string"
            elif (reject := self._take("reject", key)) is not None:
                rejected[key] = str(reject.error)
            elif isinstance(fragment, RoutingIntent) or (self.allow_mappings and isinstance(fragment, dict)):
                accepted[key] = fragment
            else:
                rejected[key] = f"not a routing intent ({type(fragment).__name__})"
        changed = self.fragments.get(owner, {}) != accepted
        self.fragments[owner] = accepted
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("declare", owner, wrote=changed, error=error, detail=given)
        if fault is not None and fault.error is not None:
            raise fault.error
        if fault is not None and fault.result is not None:
            return fault.result
        return ApplyResult(ok=True, changed=changed, rejected=rejected)

    async def protocols(self) -> Sequence[ProtocolState]:
        self._early("protocols", "")
        self._record("protocols", "")
        return list(self.states)

    def fragment_protocols(self, owner: str) -> Mapping[str, tuple[str, ...]]:
        return dict(self.protocol_names.get(owner, {}))

    async def set_maintenance(self, enabled: bool) -> ApplyResult:
        fault = self._early("set_maintenance", "", enabled)
        if fault is not None and fault.result is not None and not fault.result.ok:
            self._record("set_maintenance", "", error=fault.result.error or "rejected", detail=enabled)
            return fault.result
        changed = self.maintenance != enabled
        self.maintenance = enabled
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("set_maintenance", "", wrote=changed, error=error, detail=enabled)
        if fault is not None and fault.error is not None:
            raise fault.error
        return (
            fault.result
            if fault is not None and fault.result is not None
            else ApplyResult(ok=True, changed=changed)
        )

    async def restart_protocol(self, name: str) -> None:
        fault = self._early("restart_protocol", name)
        known = {p.name for p in self.states} | {
            n for names in self.protocol_names.values() for ns in names.values() for n in ns
        }
        if name not in known:
            raise self._refuse("restart_protocol", name, f"no protocol {name!r} of the agent")
        error = str(fault.error) if fault is not None and fault.error is not None else None
        self._record("restart_protocol", name, wrote=True, error=error)
        if fault is not None and fault.error is not None:
            raise fault.error


# ------------------------------------------------------------------- bundle


class FakeBackends:
    """One fake of each kind sharing a :class:`Journal`; also a plugin providing
    them as backends named ``fake`` (``plugins=[("fakes", fakes)]`` in an
    :class:`~moenet_core.testing.AgentHarness`, with ``"backends": fakes.config()``).

    ``kinds`` limits which kinds the plugin provides (all four by default).
    """

    def __init__(
        self,
        *,
        kinds: Iterable[str] = ("tunnel", "firewall", "routing", "loopback"),
        allow_mappings: bool = False,
        check_keys: bool = True,
        default_keepalive: int = 25,
    ) -> None:
        self.journal = Journal()
        self.tunnel = FakeTunnelBackend(
            self.journal, check_keys=check_keys, default_keepalive=default_keepalive
        )
        self.firewall = FakeFirewallBackend(self.journal)
        self.routing = FakeRoutingBackend(self.journal, allow_mappings=allow_mappings)
        self.loopback = FakeLoopbackBackend(self.journal)
        self.kinds = tuple(kinds)
        unknown = set(self.kinds) - set(BACKEND_INTERFACES)
        if unknown:
            raise ValueError(f"no fake for backend kind(s) {sorted(unknown)}")

    def mapping(self) -> dict[str, Backend]:
        """Kind -> fake, for :func:`plugin_context`'s ``backends``."""
        return {kind: getattr(self, kind) for kind in self.kinds}

    def config(self) -> dict[str, str]:
        """The ``backends`` config section choosing the fakes."""
        return dict.fromkeys(self.kinds, "fake")

    def writes(self) -> list[Call]:
        return self.journal.writes()

    @hookimpl
    def moenet_backends(self) -> list[BackendSpec]:
        def provide(backend: Backend) -> Callable[[PluginContext], Backend]:
            return lambda _ctx: backend

        return [
            BackendSpec(kind=kind, name="fake", factory=provide(backend))
            for kind, backend in self.mapping().items()
        ]


# -------------------------------------------------------------- control plane


class StubControlPlane(ControlPlane):
    """An in-process control plane: no HTTP, no retries, no breaker.

    ``set(resource, data)`` answers ``fetch`` (GET) or ``send`` (POST, with
    ``method="POST"``); a fetch of an unknown resource is rejected as the real
    CP's 404 is. ``fail(resource, times, error=...)`` makes the next calls raise
    (:class:`ControlPlaneUnavailable` by default); ``on_post`` runs a callback on
    every accepted send. Every call is recorded as a :class:`RecordedRequest`
    (``calls(resource, method)``), with a deep copy of the body, as
    :class:`FakeControlPlane` records them.
    """

    def __init__(self, node: str = "test-node") -> None:
        self.node = node
        self.requests: list[RecordedRequest] = []
        self._data: dict[tuple[str, str], Any] = {}
        self._queued: dict[str, deque[BaseException]] = {}
        self._on_post: dict[str, Callable[[Any], None]] = {}

    def set(self, resource: str, data: Any, *, method: str = "GET") -> None:
        self._data[(method.upper(), validate_resource(resource))] = data

    def fail(self, resource: str, times: int = 1, *, error: BaseException | None = None) -> None:
        q = self._queued.setdefault(validate_resource(resource), deque())
        for _ in range(times):
            q.append(error if error is not None else ControlPlaneUnavailable(f"{resource}: injected outage"))

    def on_post(self, resource: str, callback: Callable[[Any], None] | None) -> None:
        if callback is None:
            self._on_post.pop(resource, None)
        else:
            self._on_post[resource] = callback

    def calls(self, resource: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (resource is None or r.resource == resource) and (method is None or r.method == method.upper())
        ]

    @property
    def breaker_state(self) -> str:
        return "closed"

    def _call(self, method: str, resource: str, body: Any) -> Any:
        validate_resource(resource)
        self.requests.append(RecordedRequest(method, self.node, resource, {}, copy.deepcopy(body), True))
        queued = self._queued.get(resource)
        if queued:
            raise queued.popleft()
        if method == "POST" and (callback := self._on_post.get(resource)) is not None:
            callback(copy.deepcopy(body))
        key = (method, resource)
        if key in self._data:
            return copy.deepcopy(self._data[key])
        if method == "POST":
            return None
        raise ControlPlaneRejected(f"GET {resource}: no such resource", status=404)

    async def fetch(self, resource: str) -> Any:
        return self._call("GET", resource, None)

    async def send(self, resource: str, body: Mapping[str, Any]) -> Any:
        return self._call("POST", resource, dict(body))


# ------------------------------------------------------------------ context


def plugin_context(
    plugin: str = "test",
    *,
    state_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | AgentConfig | None = None,
    section: Any = None,
    backends: Mapping[str, Backend] | FakeBackends | None = None,
    cp: ControlPlane | FakeControlPlane | None = None,
    clock: Clock | None = None,
    plugins: Sequence[tuple[str, object]] = (),
    maintenance: bool = False,
) -> PluginContext:
    """A real :class:`PluginContext` of ``plugin`` in an agent that is built but
    not started: no root, no API, no scheduler loops, no daemons.

    - ``config``: a config dict (merged over a minimal valid one: node
      ``test-node`` id 1, a CP URL and token) or a built :class:`AgentConfig`;
      the state directory is ``state_dir``.
    - ``section``: the plugin's structured section (``ctx.section``); or pass
      ``plugins=[(name, module)]`` to register plugins (their hooks, and their
      sections structured from ``config``, as the agent does).
    - ``backends``: kind -> backend (``ctx.backend(kind, Interface)``), or a
      :class:`FakeBackends`.
    - ``cp``: a :class:`ControlPlane` (default: a new :class:`StubControlPlane`),
      or a started :class:`FakeControlPlane`, reached through the real HTTP client
      (``maxRetries`` 0 unless the config says otherwise; close it with ``await
      ctx.cp.aclose()``, or use the ``make_plugin_context`` fixture).
    - ``clock``: default a new :class:`ManualClock` (``ctx.clock``).

    ``ctx.state``, ``ctx.metrics``, ``ctx.log``, ``ctx.register_hooks``,
    ``ctx.call_hook``, ``ctx.emit_*`` and ``ctx.link_targets`` are the agent's own.
    """
    state_root = Path(state_dir)
    cfg = _context_config(config, cp, state_root)
    pm = AgentPluginManager()
    for name, module in plugins:
        pm.register_plugin(module, name)
    agent = _unstarted_agent(cfg, pm, cp, clock, state_root)
    if plugins:
        sections = structure_plugin_sections(cfg, pm)
        if sections.problems.get(plugin):
            raise ConfigError(sections.problems[plugin])
        agent._sections = sections
    if section is not None:
        _override_section(agent, plugin, section)
    _install_backends(agent, backends)
    if maintenance:
        agent._maintenance = {"enabled": True, "since": agent.clock.time(), "reason": "test"}
    return agent.context(plugin)


def _context_config(
    config: Mapping[str, Any] | AgentConfig | None,
    cp: ControlPlane | FakeControlPlane | None,
    state_root: Path,
) -> AgentConfig:
    """The agent's config for :func:`plugin_context`: a copy of a built one, or a
    dict merged over a minimal valid config; either points at ``state_root`` and,
    given a :class:`FakeControlPlane`, at its URL and token."""
    if isinstance(config, AgentConfig):
        cfg = copy.deepcopy(config)
        cfg.state.directory = str(state_root)
        if isinstance(cp, FakeControlPlane):
            cfg.control_plane.url = cp.url
            cfg.control_plane.token = cp.token or ""
        return cfg
    base: dict[str, Any] = {
        "node": {"name": "test-node", "id": 1},
        "controlPlane": {"url": "http://cp.invalid", "token": "test-token"},
    }
    if isinstance(cp, FakeControlPlane):
        base["controlPlane"] = {"url": cp.url, "token": cp.token or "", "maxRetries": 0}
    raw = deep_merge(base, config or {})
    raw["state"] = {**raw.get("state", {}), "directory": str(state_root)}
    cfg, _warnings = build_config(raw, env={})
    return cfg


def _unstarted_agent(
    cfg: AgentConfig,
    pm: AgentPluginManager,
    cp: ControlPlane | FakeControlPlane | None,
    clock: Clock | None,
    state_root: Path,
) -> Agent:
    """An :class:`Agent` built without its API, with its state directory made.
    A :class:`FakeControlPlane` is left to the agent's real HTTP client; no
    ``cp`` gets a :class:`StubControlPlane`."""
    stub = cp if isinstance(cp, ControlPlane) else None
    if stub is None and not isinstance(cp, FakeControlPlane):
        stub = StubControlPlane(cfg.node.name)
    agent = Agent(
        cfg,
        pm,
        clock=clock if clock is not None else ManualClock(),
        cp=stub,
        state=StateStore(state_root),
        api=False,
    )
    agent.state.ensure()
    return agent


def _override_section(agent: Agent, plugin: str, section: Any) -> None:
    """Make ``section`` the plugin's (first) section, whatever was structured,
    keeping the other plugins' sections."""
    current = agent._sections
    name = next((n for n, p in current.owners.items() if p == plugin), plugin)
    owners = {name: plugin, **{n: p for n, p in current.owners.items() if p != plugin}}
    values = {**{n: v for n, v in current.values.items() if n != name}, name: section}
    agent._sections = PluginSections(values, owners, current.problems, current.warnings)


def _install_backends(agent: Agent, backends: Mapping[str, Backend] | FakeBackends | None) -> None:
    """Give the agent these backends, each checked against its kind's interface
    (a wrong fake fails here rather than deep inside the plugin)."""
    chosen = backends.mapping() if isinstance(backends, FakeBackends) else dict(backends or {})
    for kind, backend in chosen.items():
        interface = BACKEND_INTERFACES.get(kind, Backend)
        if not isinstance(backend, interface):
            raise TypeError(f"backend for {kind!r} is a {type(backend).__name__}, not a {interface.__name__}")
        agent._backends[kind] = backend
