"""What the reconciler remembers between cycles, and its JSON form.

``Previous`` is the planner's memory: what the agent configured per session (so
vanished sessions can be removed and unobservable changes such as a new
preshared key detected, even after a restart), what it last reported, and the
CP status it last saw (so a report is not repeated while the CP has not moved).
The JSON codecs are strict: a record that does not decode is an error, never a
silently empty memory (empty memory would look like "nothing configured").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from moenet_core import MoenetError, SessionStatus, StatusScheme, TunnelAddress, TunnelSpec, status_to_wire
from moenet_core.intents import (
    EbgpPeerIntent,
    IntentError,
    intent_from_json,
    intent_from_legacy,
    intent_to_json,
)


class RecordError(MoenetError):
    """A persisted record does not decode."""


@attrs.frozen(kw_only=True)
class Report:
    """One ``POST /modify`` body: ``{uuid, status, lastError?, removed?}``.

    ``clear_error``: the session works again while the CP still shows the error
    of an earlier report; the body carries ``"lastError": null`` to clear it."""

    uuid: str
    status: SessionStatus
    last_error: str | None = None
    removed: bool = False
    clear_error: bool = False
    deleted: bool = attrs.field(default=False, eq=False)
    """The report acknowledges a finished delete (``QUEUED_FOR_DELETE`` done): the
    go status scheme sends it as 0 (Deleted). Kept in the state, never sent as a key;
    not part of equality, so a report saved before this flag existed still counts
    as the same report (no repeat after an upgrade)."""

    def to_json(self) -> dict[str, Any]:
        """The persisted form (the outbox, the memory of what was reported)."""
        out: dict[str, Any] = {"uuid": self.uuid, "status": int(self.status)}
        if self.last_error:
            out["lastError"] = self.last_error
        elif self.clear_error:
            out["lastError"] = None
        if self.removed:
            out["removed"] = True
        if self.deleted:
            out["deleted"] = True
        return out

    def to_wire(self, scheme: StatusScheme | str = StatusScheme.SEED) -> dict[str, Any] | None:
        """The ``POST /modify`` body under ``controlPlane.statusScheme``, or None when
        that CP has nothing to learn from it. Seed: ``{uuid, status, lastError?,
        removed?}``. Go: ``{uuid, status, lastError?}`` with the Go code; a removal
        that only echoes the status the CP shows (a Disabled, Deleted or Teardown
        session whose tunnel went) is not sent, since the Go CP has no ``removed``
        flag and 1 (Disabled) would overwrite its 0 or 7. ``lastError: null``
        clears an error the CP still shows (``clear_error``)."""
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "status": status_to_wire(self.status, scheme, deleted=self.deleted),
        }
        if self.last_error:
            out["lastError"] = self.last_error
        elif self.clear_error:
            out["lastError"] = None
        if StatusScheme(scheme) is StatusScheme.GO:
            return None if self.removed and not self.deleted else out
        if self.removed:
            out["removed"] = True
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "report") -> Report:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object")
        try:
            uuid, status = data["uuid"], data["status"]
            last_error, removed = data.get("lastError"), data.get("removed", False)
            deleted = data.get("deleted", False)
            if not isinstance(uuid, str) or not isinstance(removed, bool) or not isinstance(deleted, bool):
                raise TypeError("uuid must be a string, removed and deleted booleans")
            if last_error is not None and not isinstance(last_error, str):
                raise TypeError("lastError must be a string")
            if isinstance(status, bool) or not isinstance(status, int):
                raise TypeError("status must be an integer")
            return cls(
                uuid=uuid,
                status=SessionStatus(status),
                last_error=last_error,
                removed=removed,
                clear_error="lastError" in data and last_error is None,
                deleted=deleted,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{where}: {exc}") from None


@attrs.frozen(kw_only=True)
class ConfiguredSession:
    """What the agent put on the node for one session (the last successful apply,
    or the intent written ahead of an apply so a crash leaves no unknown orphan)."""

    interface: str
    tunnel: TunnelSpec
    peer: EbgpPeerIntent
    """The routing intent declared for the session (keyed by its uuid)."""
    port: int | None
    psk_digest: str | None = None
    """sha256 of the preshared key: a changed key is detected without storing it twice."""

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "tunnel": spec_to_json(self.tunnel),
            "peer": peer_to_json(self.peer),
            "port": self.port,
            "pskDigest": self.psk_digest,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ConfiguredSession:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object")
        try:
            peer = peer_from_json(data["peer"], f"{where}.peer")
            port = data.get("port")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
                raise TypeError("port must be an integer or null")
            return cls(
                interface=_str(data["interface"], "interface"),
                tunnel=spec_from_json(data["tunnel"]),
                peer=peer,
                port=port,
                psk_digest=data.get("pskDigest"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"{where}: {exc}") from None

    def digest(self) -> str:
        """sha256 of the record's JSON: tells whether a retry is of the same setup."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class Retry:
    """A session whose last apply failed for a reason a retry may fix (BIRD down,
    no policy yet, a ``wireguard-go`` that did not start, DNS): it keeps its CP
    status and is tried again after a backoff, not rebuilt every cycle."""

    attempts: int
    """Transient failures in a row (the backoff doubles with each)."""
    not_before: float
    """Wall-clock time (epoch seconds) of the next attempt: it survives a restart."""
    error: str
    setup: bool = False
    """A setup that never went live: what it built is provisional, and a
    permanent failure still rolls it back (SETUP_FAILED)."""
    digest: str | None = None
    """:meth:`ConfiguredSession.digest` of what was being applied: a session the
    CP changed meanwhile is tried again at once."""

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "notBefore": self.not_before,
            "error": self.error,
            "setup": self.setup,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Retry:
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: must be an object")
        try:
            attempts, not_before = data["attempts"], data["notBefore"]
            error, setup, digest = data.get("error", ""), data.get("setup", False), data.get("digest")
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise TypeError("attempts must be a positive integer")
            if isinstance(not_before, bool) or not isinstance(not_before, int | float):
                raise TypeError("notBefore must be a number")
            if not isinstance(error, str) or not isinstance(setup, bool):
                raise TypeError("error must be a string, setup a boolean")
            if digest is not None and not isinstance(digest, str):
                raise TypeError("digest must be a string or null")
            return cls(
                attempts=attempts, not_before=float(not_before), error=error, setup=setup, digest=digest
            )
        except (KeyError, TypeError) as exc:
            raise RecordError(f"{where}: {exc}") from None


@attrs.frozen(kw_only=True)
class Previous:
    """The persisted memory the planner diffs against (empty on a first start)."""

    configured: Mapping[str, ConfiguredSession] = attrs.field(factory=dict)
    reported: Mapping[str, Report] = attrs.field(factory=dict)
    """The last report queued per uuid (delivered or still in the outbox)."""
    seen: Mapping[str, SessionStatus] = attrs.field(factory=dict)
    """The CP status per uuid when that report was made."""
    retry: Mapping[str, Retry] = attrs.field(factory=dict)
    """Sessions waiting to retry after a transient failure, with their backoff."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": 1,
            "configured": {u: c.to_json() for u, c in sorted(self.configured.items())},
            "reported": {u: r.to_json() for u, r in sorted(self.reported.items())},
            "seen": {u: int(s) for u, s in sorted(self.seen.items())},
        }
        if self.retry:  # absent when empty: the file stays as older versions wrote it
            out["retry"] = {u: r.to_json() for u, r in sorted(self.retry.items())}
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "sessions state") -> Previous:
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise RecordError(f"{where}: not a version-1 sessions state object")
        sections = {k: data.get(k, {}) for k in ("configured", "reported", "seen", "retry")}
        for key, value in sections.items():
            if not isinstance(value, Mapping):
                raise RecordError(f"{where}.{key}: must be an object")
        seen: dict[str, SessionStatus] = {}
        for u, s in sections["seen"].items():
            if isinstance(s, bool) or not isinstance(s, int) or s not in SessionStatus._value2member_map_:
                raise RecordError(f"{where}.seen.{u}: not a status code")
            seen[u] = SessionStatus(s)
        return cls(
            configured={
                u: ConfiguredSession.from_json(c, f"{where}.configured.{u}")
                for u, c in sections["configured"].items()
            },
            reported={
                u: Report.from_json(r, f"{where}.reported.{u}") for u, r in sections["reported"].items()
            },
            seen=seen,
            retry={u: Retry.from_json(r, f"{where}.retry.{u}") for u, r in sections["retry"].items()},
        )


def peer_to_json(peer: EbgpPeerIntent) -> dict[str, Any]:
    """A session's routing intent as JSON (:func:`~moenet_core.intents.intent_to_json`)."""
    return intent_to_json(peer)


def peer_from_json(data: Any, where: str = "peer") -> EbgpPeerIntent:
    """A record's ``peer``: ``intent_to_json``'s form, or the camelCase payload
    (``uuid`` included) the previous version wrote. Raises :class:`RecordError`."""
    try:
        if isinstance(data, Mapping) and "kind" not in data:
            intent = intent_from_legacy(EbgpPeerIntent.kind, data, where)
        else:
            intent = intent_from_json(data, where)
    except IntentError as exc:
        raise RecordError(str(exc)) from None
    if not isinstance(intent, EbgpPeerIntent):
        raise RecordError(f"{where}: not an eBGP peer intent ({intent.kind})")
    return intent


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a string")
    return v


def spec_to_json(spec: TunnelSpec) -> dict[str, Any]:
    """A ``TunnelSpec`` as JSON (keys stay in their files; only paths are stored)."""
    return {
        "name": spec.name,
        "privateKeyFile": spec.private_key_file,
        "listenPort": spec.listen_port,
        "peerPublicKey": spec.peer_public_key,
        "presharedKeyFile": spec.preshared_key_file,
        "endpoint": spec.endpoint,
        "allowedIps": list(spec.allowed_ips),
        "keepalive": spec.keepalive,
        "mtu": spec.mtu,
        "addresses": [{"local": a.local, "peer": a.peer} for a in spec.addresses],
    }


def spec_from_json(data: Any) -> TunnelSpec:
    """Inverse of :func:`spec_to_json`; raises TypeError/KeyError on a malformed record."""
    if not isinstance(data, Mapping):
        raise TypeError("tunnel must be an object")
    addresses = data["addresses"]
    allowed = data["allowedIps"]
    if not isinstance(addresses, list) or not isinstance(allowed, list):
        raise TypeError("tunnel.addresses and tunnel.allowedIps must be lists")
    return TunnelSpec(
        name=_str(data["name"], "tunnel.name"),
        private_key_file=_str(data["privateKeyFile"], "tunnel.privateKeyFile"),
        listen_port=data["listenPort"],
        peer_public_key=_str(data["peerPublicKey"], "tunnel.peerPublicKey"),
        preshared_key_file=data.get("presharedKeyFile"),
        endpoint=data.get("endpoint"),
        allowed_ips=tuple(_str(a, "tunnel.allowedIps[]") for a in allowed),
        keepalive=data.get("keepalive"),
        mtu=data["mtu"],
        addresses=tuple(
            TunnelAddress(local=_str(a["local"], "tunnel.addresses[].local"), peer=a.get("peer"))
            for a in addresses
        ),
    )
