"""The ``birdConfigSync`` task: the CP's BIRD policy, validated, applied, remembered only on success.

Every run fetches ``/agent/{node}/bird-config``, validates it
(:func:`~moenet_bird.policy.parse_bird_config`) and hands it to the backend,
which applies it together with every owner's fragments. Nothing is skipped on an
unchanged ``configHash``: an unchanged tree costs one render and a byte compare
and writes nothing, and comparing content also catches a hand-edited or deleted
file and an operator's template change. The hash and policy are persisted by the
backend only after BIRD has accepted the result, so a failed apply is retried on
the next cycle.

Failures raise (the task's last error in ``/status`` says why) and never tear
anything down: an invalid answer or an unreachable CP keeps the last good policy
live. Every run ends with ``moenet_sync_completed``, as every reconciler's does.

ROA (:mod:`.roa`): a policy whose ROA mode is strict (``policy.roaMode``
unless ``bird.roaMode`` pins one) while no RTR cache (the CP's or the local
config's) and no static ROA file or URL is configured is refused the same way:
every eBGP route would be rejected.

Node identity (:mod:`moenet_core.identity`): the policy's ``node.id``,
``node.loopbackIpv4/6`` and ``policy.dn42As`` must agree with the agent's
config (the file and the CP's bootstrap answer). A mismatch is refused before
anything is applied, naming both values and where each came from (the bird
plugin's ``syncError`` in ``/status``); the last good policy stays. An applied
policy (and, at start, the restored one) is published as source ``bird-config``,
so keys the config leaves unset (often ``node.asn``) are known to every plugin
through ``ctx.identity``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from moenet_core import (
    BackendUnavailable,
    ControlPlaneError,
    ControlPlaneUnavailable,
    IdentityConflict,
    MoenetError,
    RoutingBackend,
    sync_cycle,
)

from .backend import BirdRoutingBackend
from .config import BirdConfig
from .names import BirdConfigError
from .policy import BirdPolicy, parse_bird_config
from .roa import roa_source_problem

if TYPE_CHECKING:
    from moenet_core import PluginContext

__all__ = ["IDENTITY_SOURCE", "RESOURCE", "TASK_NAME", "BirdConfigSync", "BirdSyncError", "identity_of"]

TASK_NAME = "birdConfigSync"
RESOURCE = "bird-config"
#: How the policy is named as a source of the node's identity.
IDENTITY_SOURCE = "bird-config"


def identity_of(policy: BirdPolicy) -> dict[str, Any]:
    """The node identity a policy states (``ctx.publish_identity`` keywords)."""
    return {
        "asn": policy.policy.asn or None,
        "id": policy.node.id,
        "loopback_ipv4": policy.node.loopback_ipv4 or None,
        "loopback_ipv6": policy.node.loopback_ipv6 or None,
    }


class BirdSyncError(MoenetError):
    """One sync cycle did not bring a new policy live (the previous one stays)."""


class BirdConfigSync:
    """Fetch, validate and apply the CP's bird-config (see the module doc)."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        self._publish_restored()

    def _publish_restored(self) -> None:
        """The policy restored at start is the node's word until the CP's next one:
        publish its identity before any other task runs."""
        try:
            policy = self._backend().policy
        except (BackendUnavailable, BirdSyncError):
            return
        if policy is None:
            return
        try:
            self.ctx.publish_identity(IDENTITY_SOURCE, **identity_of(policy))
        except IdentityConflict as exc:
            self.ctx.log.error("the restored {} policy: {}", RESOURCE, exc)

    def _backend(self) -> BirdRoutingBackend:
        backend = self.ctx.backend("routing", RoutingBackend)
        if not isinstance(backend, BirdRoutingBackend):
            raise BirdSyncError(f"the routing backend is {type(backend).__name__}, not moenet_bird's")
        return backend

    def _roa_problem(self, policy: BirdPolicy, backend: BirdRoutingBackend) -> str | None:
        """Strict ROA mode with no source at all would reject every eBGP route: refused."""
        section = self.ctx.section if isinstance(self.ctx.section, BirdConfig) else BirdConfig()
        local = attrs.evolve(
            backend.local, roa_mode=section.roa_mode, rpki_servers=tuple(section.local_rpki_servers)
        )
        return roa_source_problem(policy, local, bool(section.roa_files or section.roa_urls))

    async def run_once(self) -> dict[str, Any]:
        async with sync_cycle(self.ctx, TASK_NAME) as cycle:
            summary = await self._cycle()
            cycle.changes = 1 if summary["changed"] else 0
            return summary

    async def _cycle(self) -> dict[str, Any]:
        backend = self._backend()
        keeping = f"keeping the last good policy (hash {backend.config_hash or 'none'})"
        try:
            data = await self.ctx.cp.fetch(RESOURCE)
        except ControlPlaneUnavailable as exc:
            raise BirdSyncError(f"control plane unreachable for {RESOURCE}: {exc}; {keeping}") from exc
        except ControlPlaneError as exc:
            raise BirdSyncError(f"control plane refused {RESOURCE}: {exc}; {keeping}") from exc
        try:
            policy, warnings = parse_bird_config(data)
        except BirdConfigError as exc:
            backend.sync_error = f"invalid {RESOURCE} from the control plane: " + "; ".join(exc.problems)
            raise BirdSyncError(f"{backend.sync_error}; {keeping}") from None
        if problems := self.ctx.check_identity(IDENTITY_SOURCE, **identity_of(policy)):
            backend.sync_error = (
                f"policy {policy.config_hash or '(no hash)'} not applied: node identity mismatch: "
                + "; ".join(problems)
            )
            raise BirdSyncError(f"{backend.sync_error}; {keeping}")
        if (problem := self._roa_problem(policy, backend)) is not None:
            backend.sync_error = f"policy {policy.config_hash or '(no hash)'} not applied: {problem}"
            raise BirdSyncError(f"{backend.sync_error}; {keeping}")
        if policy.config_hash != backend.config_hash or not policy.config_hash:
            # Once per policy, not every cycle: an unchanged policy's warnings are old news.
            for w in warnings:
                self.ctx.log.warning("{}: {}", RESOURCE, w)
        result = await backend.set_policy(policy, policy.config_hash, raw=data)
        if not result.ok:
            backend.sync_error = f"policy {policy.config_hash or '(no hash)'} not applied: {result.error}"
            raise BirdSyncError(f"{backend.sync_error}; {keeping}; retried next cycle")
        backend.sync_error = None
        try:
            self.ctx.publish_identity(IDENTITY_SOURCE, **identity_of(policy))
        except IdentityConflict as exc:  # checked above; only a race with another publisher
            self.ctx.log.error("{}: {}", RESOURCE, exc)
        return {
            "configHash": policy.config_hash,
            "changed": result.changed,
            "warnings": warnings,
        }
