"""The ``updater`` task: check, verify, install, switch, restart; then health or rollback.

A check (every ``autoUpdate.checkInterval`` minutes; never in maintenance) reads
the release feed, picks the release of the channel (:mod:`.releases`), verifies
it (:mod:`.verify`: the pinned key's signature over ``SHA256SUMS``, then the
wheel's SHA-256), installs it into ``<venvRoot>/versions/<version>`` and smoke
tests it (:mod:`.install`), records the pending update, switches ``current`` and
runs ``restartCommand``. A refused or failed update changes nothing: no
environment is left behind and the link is untouched.

After the restart the new process finds the pending update and watches its own
health. **Healthy** means, before the deadline (``healthTimeout`` seconds after
the switch):

1. the process running is the pending version (``moenet_core.__version__``);
2. the agent finished starting (the ``moenet_startup`` hook ran: config valid,
   backends started, API listening, tasks scheduled);
3. every *health task* finished one run successfully in this process (seen
   through ``moenet_task_finished``). The health tasks are ``updater.healthTasks``
   when set, else every task other than the updater that had succeeded at least
   once in the old process before the switch: a version that breaks something
   that worked (a sync that now fails, a plugin that no longer loads and so
   never runs its tasks) is not healthy.

Healthy: the pending record is cleared and old environments are pruned. Not
healthy by the deadline, or the running version is not the pending one (it did
not start and something brought the old one back): ``current`` goes back to the
previous target, the version is remembered as bad (never offered again) and,
unless the process already runs what ``current`` now points to, the agent is
restarted again. Health checks and rollbacks happen in maintenance too: a broken
version is worse than a restart, which costs no flap.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from moenet_core import MoenetError, StateError, TaskRunEvent, __version__, hookimpl

from . import TASK_NAME
from . import state as state_file
from .config import UpdaterConfig, feed_url
from .fetch import Fetcher, FetchError
from .install import (
    InstallError,
    Layout,
    SmokeTestError,
    install,
    parse_pins,
    prune,
    remove_tree,
    run_command,
    same_path,
    switch_link,
)
from .releases import REQUIREMENTS, SIGNATURE, SUMS, Release, candidates, parse_feed, select_release
from .state import Pending, UpdaterState
from .verify import (
    VerificationError,
    check_digest,
    expected_digest,
    load_public_key,
    parse_sums,
    verify_signature,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from moenet_core import PluginContext

FEED_LIMIT = 8 * 1024 * 1024
SUMS_LIMIT = 1024 * 1024
SIGNATURE_LIMIT = 4096
REQUIREMENTS_LIMIT = 1024 * 1024
RESTART_TIMEOUT = 120.0
REASON_MAX = 500


class UpdateError(MoenetError):
    """An update was refused or failed; nothing was switched."""


def revert_link(layout: Layout, pending: Pending) -> str:
    """Point ``current`` back at ``pending.previous`` if it still points at the
    pending version. Returns ``"switched"``, ``"already"`` (it points at the
    previous target already) or ``"elsewhere"`` (changed by hand: left alone)."""
    now = layout.target(layout.current)
    if now is None or same_path(now, pending.target):
        switch_link(layout.current, Path(pending.previous))
        return "switched"
    if same_path(now, pending.previous):
        return "already"
    return "elsewhere"


class Updater:
    """The ``updater`` task (see the module docstring).

    ``running_version`` / ``running_prefix`` default to this process's
    (``moenet_core.__version__``, ``sys.prefix``); tests pass their own.
    """

    def __init__(
        self,
        ctx: PluginContext,
        *,
        running_version: str | None = None,
        running_prefix: str | os.PathLike[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.running_version = Version(running_version or __version__)
        self.running_prefix = Path(running_prefix or sys.prefix)
        self.state_error: str | None = None
        try:
            self.state = state_file.load(ctx.state)
        except StateError as exc:
            self.state = UpdaterState()
            self.state_error = str(exc)
            ctx.log.error("updater: {}; no updates until this is fixed", exc)
        self.available: str | None = None
        self.ok_tasks: set[str] = set()
        self._started = asyncio.Event()
        self._healthy = asyncio.Event()
        self._noted: set[str] = set()
        self.restarting: str | None = None
        """Set once this process asked to be restarted (after a rollback): no more checks."""
        self.pending_gauge = ctx.metrics.gauge(
            "pending", "1 while a switched-to version has not yet proven healthy."
        )
        self.bad_gauge = ctx.metrics.gauge("bad_versions", "Versions remembered as bad (never installed).")
        self._update_gauges()
        ctx.register_hooks(self)
        self.watch: asyncio.Task[None] | None = None
        if self.state.pending is not None and self.state_error is None:
            self.watch = asyncio.get_running_loop().create_task(
                self._watch_pending(self.state.pending), name="moenet-updater-health"
            )

    # ------------------------------------------------------------- helpers

    def _section(self) -> UpdaterConfig:
        section = self.ctx.section
        return section if isinstance(section, UpdaterConfig) else UpdaterConfig()

    def _layout(self) -> Layout:
        return Layout(Path(self._section().venv_root))

    def _save(self) -> None:
        self._update_gauges()
        try:
            state_file.save(self.ctx.state, self.state)
        except StateError as exc:
            raise UpdateError(f"cannot save the updater state: {exc}") from None

    def _update_gauges(self) -> None:
        self.pending_gauge.set(1 if self.state.pending else 0)
        self.bad_gauge.set(len(self.state.bad))

    def _result(self, text: str) -> None:
        self.state.last_result = text

    def _runs(self, version: str) -> bool:
        try:
            return Version(version) == self.running_version
        except InvalidVersion:
            return False

    def _mark_bad(self, version: str, reason: str) -> None:
        self.state.bad[version] = {"reason": reason[:REASON_MAX], "at": self.ctx.clock.time()}

    def _required(self, pending: Pending) -> list[str]:
        configured = self._section().health_tasks
        return sorted(set(configured if configured is not None else pending.health_tasks))

    # --------------------------------------------------------------- hooks

    @hookimpl
    def moenet_startup(self) -> None:
        self._started.set()
        self._check_health()

    @hookimpl
    def moenet_task_finished(self, event: TaskRunEvent) -> None:
        if event.ok and event.task != TASK_NAME:
            self.ok_tasks.add(event.task)
            self._check_health()

    @hookimpl
    def moenet_status_info(self) -> dict[str, Any]:
        section = self._section()
        pending = self.state.pending
        info: dict[str, Any] = {
            "enabled": True,
            "channel": section.channel,
            "runningVersion": str(self.running_version),
            "runningPrefix": str(self.running_prefix),
            "feedUrl": feed_url(section),
            "venvRoot": section.venv_root,
            "lastCheck": self.state.last_check,
            "lastResult": self.state.last_result,
            "available": self.available,
            "lastUpdate": self.state.last_update,
            "pending": None,
            "badVersions": {k: dict(v) for k, v in self.state.bad.items()},
        }
        if pending is not None:
            required = self._required(pending)
            info["pending"] = {
                **pending.to_json(),
                "healthTasks": required,
                "waitingFor": sorted(set(required) - self.ok_tasks),
            }
        if self.state_error:
            info["stateError"] = self.state_error
        return info

    # -------------------------------------------------------------- health

    def _check_health(self) -> None:
        pending = self.state.pending
        if pending is None or self._healthy.is_set() or not self._started.is_set():
            return
        if self._runs(pending.version) and set(self._required(pending)) <= self.ok_tasks:
            self._healthy.set()

    async def _wait_healthy(self, seconds: float) -> None:
        healthy = asyncio.ensure_future(self._healthy.wait())
        timer = asyncio.ensure_future(self.ctx.clock.sleep(seconds))
        try:
            await asyncio.wait({healthy, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (healthy, timer):
                fut.cancel()
            await asyncio.gather(healthy, timer, return_exceptions=True)

    async def _watch_pending(self, pending: Pending) -> None:
        log = self.ctx.log
        try:
            if not self._runs(pending.version):
                await self._rollback(
                    pending,
                    f"version {pending.version} was not running after the switch (this is "
                    f"{self.running_version}): it did not start, or was replaced",
                )
                return
            log.info(
                "updater: {} is running on probation: healthy by {} or it is rolled back",
                pending.version,
                _iso(pending.deadline),
            )
            self._check_health()
            remaining = pending.deadline - self.ctx.clock.time()
            timeout = round(pending.deadline - pending.switched_at)
            if remaining <= 0 and not self._healthy.is_set():
                await self._rollback(
                    pending, f"it started after its health deadline ({timeout}s after the switch)"
                )
                return
            if not self._healthy.is_set():
                await self._wait_healthy(remaining)
            if self._healthy.is_set():
                self._commit(pending)
                return
            missing = sorted(set(self._required(pending)) - self.ok_tasks)
            why = (
                "the agent did not finish starting"
                if not self._started.is_set()
                else f"tasks never succeeded: {', '.join(missing)}"
            )
            await self._rollback(pending, f"not healthy within {timeout}s of the switch ({why})")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("updater: the health check of {} failed", pending.version)

    def _commit(self, pending: Pending) -> None:
        previous = Path(pending.previous).name
        required = self._required(pending)
        self.state.pending = None
        self.state.last_update = {"from": previous, "to": pending.version, "at": self.ctx.clock.time()}
        self._result(
            f"updated {previous} -> {pending.version}: healthy"
            + (f" ({', '.join(required)} succeeded)" if required else " (agent started)")
        )
        self._save()
        self.ctx.log.info("updater: {} is healthy; update from {} complete", pending.version, previous)
        layout = self._layout()
        try:
            removed = prune(
                layout,
                self._section().keep_versions,
                (layout.target(layout.current), layout.target(layout.previous), self.running_prefix),
            )
        except OSError as exc:
            self.ctx.log.warning("updater: pruning old environments failed: {}", exc)
            return
        if removed:
            self.ctx.log.info("updater: removed old environments {}", ", ".join(removed))

    async def _rollback(self, pending: Pending, reason: str) -> None:
        log = self.ctx.log
        layout = self._layout()
        try:
            outcome = revert_link(layout, pending)
        except (OSError, InstallError) as exc:
            # The pending record stays: the next start tries again.
            log.critical("updater: cannot switch {} back to {}: {}", layout.current, pending.previous, exc)
            self._result(f"rollback of {pending.version} failed: {exc}")
            return
        self.state.pending = None
        if outcome == "elsewhere":
            self._result(
                f"pending update to {pending.version} abandoned: {layout.current} was changed by hand"
            )
            log.warning("updater: {}", self.state.last_result)
        else:
            self._mark_bad(pending.version, reason)
            self._result(f"rolled back {pending.version} -> {Path(pending.previous).name}: {reason}")
            log.error("updater: {}; {} is remembered as bad", self.state.last_result, pending.version)
        self._save()
        if not same_path(self.running_prefix, layout.target(layout.current)):
            self.restarting = f"rolled back {pending.version}; waiting for the restart"
            try:
                await self._restart("rollback")
            except InstallError as exc:
                log.error("updater: {}", exc)

    async def _restart(self, why: str) -> None:
        command = self._section().restart_command
        self.ctx.log.warning("updater: restarting the agent ({}): {}", why, " ".join(command))
        await run_command(command, timeout=RESTART_TIMEOUT, what=f"restart command ({why})")

    # ----------------------------------------------------------------- run

    async def run_once(self) -> dict[str, Any]:
        if self.state_error:
            raise UpdateError(self.state_error)
        if self.restarting:
            return {"skipped": self.restarting}
        if self.ctx.maintenance:
            self._result("skipped: the node is in maintenance")
            return {"skipped": "maintenance"}
        pending = self.state.pending
        if pending is not None:
            if self.watch is not None and not self.watch.done():
                return {"pending": pending.version, "waiting": "health check"}
            if self.ctx.clock.time() < pending.deadline:
                return {"pending": pending.version, "waiting": "restart"}
            await self._rollback(pending, f"the agent was not restarted into {pending.version} in time")
            return {"rolledBack": pending.version}
        section = self._section()
        layout = self._layout()
        try:
            if not section.public_key:
                raise UpdateError("updater.publicKey is not set: no updates without a pinned key")
            key = load_public_key(section.public_key)
            self._check_layout(layout)
        except (UpdateError, ValueError) as exc:
            self._result(f"not checking: {exc}")
            self._save()
            raise UpdateError(str(exc)) from None
        channel = self._section().channel
        self.state.last_check = self.ctx.clock.time()
        try:
            releases = await self._read_feed(section)
        except (FetchError, ValueError) as exc:
            self._result(f"release feed unreadable: {exc}")
            self._save()
            raise UpdateError(f"release feed: {exc}") from None
        newer = candidates(releases, channel, self.running_version)
        chosen = select_release(releases, channel, self.running_version, self.state.bad)
        skipped = [
            str(r.version)
            for r in newer
            if str(r.version) in self.state.bad and (chosen is None or r.version > chosen.version)
        ]
        if skipped:
            self.ctx.log.info("updater: skipping bad versions {}", ", ".join(skipped))
        if chosen is None:
            self.available = None
            self._result(
                f"up to date: {self.running_version} on channel {channel}"
                + (f" (bad versions skipped: {', '.join(skipped)})" if skipped else "")
            )
            self._save()
            return {"upToDate": True, "running": str(self.running_version), "skippedBad": skipped}
        self.available = str(chosen.version)
        self.ctx.log.info("updater: {} ({}) is available on channel {}", chosen.version, chosen.tag, channel)
        try:
            return await self._update(chosen, key, layout, section)
        except VerificationError as exc:
            self._result(f"refused {chosen.version} ({chosen.tag}): {exc}")
            self._save()
            raise UpdateError(f"refused release {chosen.version} ({chosen.tag}): {exc}") from None
        except (FetchError, InstallError, UpdateError) as exc:
            self._result(f"update to {chosen.version} failed: {exc}")
            self._save()
            raise UpdateError(f"update to {chosen.version} failed: {exc}") from None

    def _check_layout(self, layout: Layout) -> None:
        current = layout.target(layout.current)
        if current is None:
            raise UpdateError(
                f"{layout.current} does not exist: install the agent into {layout.versions}/<version> "
                "with a 'current' link and run the service through it (moenet_updater README); not updating"
            )
        if not same_path(current, self.running_prefix):
            raise UpdateError(
                f"this agent runs from {self.running_prefix}, not from {layout.current} (-> {current}): "
                "a switch would not take effect; not updating"
            )

    async def _read_feed(self, section: UpdaterConfig) -> list[Release]:
        import json

        url = feed_url(section)
        async with Fetcher(timeout=section.download_timeout, user_agent=f"moenet-agent/{__version__}") as f:
            body = await f.get(url, limit=FEED_LIMIT, accept="application/vnd.github+json, application/json")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"{url} is not JSON: {exc}") from None
        releases, notes = parse_feed(data)
        for note in notes:
            if note not in self._noted:
                self._noted.add(note)
                self.ctx.log.info("updater: feed: {}", note)
        return releases

    async def _update(
        self, release: Release, key: Ed25519PublicKey, layout: Layout, section: UpdaterConfig
    ) -> dict[str, Any]:
        assets = release.assets
        if SIGNATURE not in assets:
            raise VerificationError(f"the release is unsigned (no {SIGNATURE} asset)")
        if SUMS not in assets:
            raise VerificationError(f"the release has no {SUMS} asset")
        if release.wheel not in assets:
            raise VerificationError(f"the release has no asset {release.wheel}")
        for stale in layout.root.glob(".download-*"):  # left by a crash mid-download
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=layout.root))
        try:
            async with Fetcher(
                timeout=section.download_timeout, user_agent=f"moenet-agent/{__version__}"
            ) as f:
                sums_raw = await f.get(assets[SUMS], limit=SUMS_LIMIT)
                signature = await f.get(assets[SIGNATURE], limit=SIGNATURE_LIMIT)
                verify_signature(key, sums_raw, signature)
                sums = parse_sums(sums_raw)
                expected_digest(sums, release.wheel)  # before the large download
                # The signed lock file pins every dependency: no release without one.
                if REQUIREMENTS not in sums:
                    raise VerificationError(
                        f"the signed {SUMS} has no line for {REQUIREMENTS}: the release does not pin "
                        "its dependencies (sign a hash-pinned lock file with it)"
                    )
                if REQUIREMENTS not in assets:
                    raise VerificationError(f"{SUMS} lists {REQUIREMENTS} but the release has no such asset")
                data = await f.get(assets[REQUIREMENTS], limit=REQUIREMENTS_LIMIT)
                check_digest(sums, REQUIREMENTS, hashlib.sha256(data).hexdigest())
                try:
                    parse_pins(data.decode("utf-8"))
                except (InstallError, UnicodeDecodeError) as exc:
                    raise VerificationError(f"the signed {REQUIREMENTS} is not a lock file: {exc}") from None
                requirements = tmp / REQUIREMENTS
                requirements.write_bytes(data)
                wheel = tmp / release.wheel
                digest = await f.download(assets[release.wheel], wheel, limit=section.max_download_bytes)
                check_digest(sums, release.wheel, digest)
            self.ctx.log.info(
                "updater: {} verified: {} signed by the pinned key, {} sha256 {}",
                release.version,
                SUMS,
                release.wheel,
                digest,
            )
            try:
                target = await install(
                    layout,
                    release.version,
                    wheel,
                    python=section.python or sys.executable,
                    pip_args=section.pip_args,
                    requirements=requirements,
                    extra=section.extra_requirements,
                    config=self.ctx.config.source,
                    timeout=section.install_timeout,
                    log=lambda text: self.ctx.log.warning("updater: {}", text),
                )
            except SmokeTestError as exc:
                self._mark_bad(str(release.version), str(exc))
                raise
        finally:
            remove_tree(tmp)
        return await self._switch(release, target, layout, section)

    async def _switch(
        self, release: Release, target: Path, layout: Layout, section: UpdaterConfig
    ) -> dict[str, Any]:
        version = str(release.version)
        if self.ctx.maintenance:
            self._result(f"installed {version}; not switched: the node went into maintenance")
            self._save()
            return {"installed": version, "switched": False}
        previous = layout.target(layout.current)
        assert previous is not None  # _check_layout
        now = self.ctx.clock.time()
        health = section.health_tasks if section.health_tasks is not None else self.ok_tasks
        pending = Pending(
            version=version,
            previous=str(previous),
            target=str(target),
            switched_at=now,
            deadline=now + section.health_timeout,
            health_tasks=sorted(set(health) - {TASK_NAME}),
        )
        # Recorded before the switch: a crash from here on leaves a record to check.
        self.state.pending = pending
        self._result(f"switching to {version}")
        self._save()
        try:
            switch_link(layout.current, target)
        except (OSError, InstallError) as exc:
            self.state.pending = None
            self._save()
            raise UpdateError(f"cannot switch {layout.current}: {exc}") from None
        try:
            switch_link(layout.previous, previous)
        except (OSError, InstallError) as exc:
            self.ctx.log.warning("updater: cannot update {}: {}", layout.previous, exc)
        self.ctx.log.warning(
            "updater: {} now points to {} (was {}); restarting", layout.current, version, previous.name
        )
        try:
            await self._restart(f"update to {version}")
        except InstallError as exc:
            switch_link(layout.current, previous)
            self.state.pending = None
            self._save()
            raise UpdateError(f"{exc}; switched back to {previous.name}") from None
        self._result(
            f"switched to {version}; restarting (it must be healthy within {section.health_timeout:g}s)"
        )
        self._save()
        return {"updated": version, "from": str(self.running_version), "restarting": True}

    async def aclose(self) -> None:
        if self.watch is not None and not self.watch.done():
            self.watch.cancel()
            await asyncio.gather(self.watch, return_exceptions=True)


def _iso(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat(timespec="seconds")
