"""``NftablesFirewall``: the ``firewall`` backend, one agent-owned ``inet`` table.

Every call reads the kernel first (``nft -j list table inet T``). A sync whose
desired table is already there writes nothing; otherwise the whole table is
replaced by one ``nft -f -`` file, which the kernel applies as one batch (all
or nothing), and the result is read back. Nothing outside the table is read or
written.

Owners: each owner's ports are a set of their own (:mod:`.ruleset`). A sync
names its owner and changes only that owner's set: the other owners' sets are
taken from the listing it has just read, so the file written reproduces them
exactly, and all owners' syncs are serialised by one lock.

``nft`` runs with ``asyncio.create_subprocess_exec`` on the event loop's own
thread: the child inherits that thread's network namespace, which is what the
tests (and a containerised agent) rely on. No shell, no executor threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from moenet_core import DEFAULT_OWNER, FirewallBackend, MoenetError, crashpoint

from . import ruleset
from .config import NftablesConfig
from .ruleset import Desired, Obj

if TYPE_CHECKING:
    from loguru import Logger
    from prometheus_client import Counter, Gauge

    from moenet_core import PluginContext, PluginMetrics


class NftablesError(MoenetError):
    """An nft call failed (with nft's own message), timed out, or printed
    something that is not a listing."""


class NftablesFirewall(FirewallBackend):
    """The UDP ports open for tunnels, as a set in the agent's own table.

    ``transactions`` counts the writes this object made (syncs that changed
    something and removals); ``drift_repairs`` the syncs that undid a hand edit.
    ``last_changes`` says what the latest write changed.
    """

    def __init__(
        self,
        config: NftablesConfig | None = None,
        *,
        live_config: Callable[[], NftablesConfig | None] | None = None,
        log: Logger | None = None,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self._static = config or NftablesConfig()
        self._live = live_config
        #: Fixed for the object's lifetime: renaming the table on reload would
        #: leave the old table behind, still accepting and dropping packets.
        self.table = self.config.table
        self.log: Logger = log or logger.bind(plugin="nftables")
        self.transactions = 0
        self.drift_repairs = 0
        self.last_changes: list[str] = []
        self._lock = asyncio.Lock()
        # The kernel's own rendering of the latest table we wrote: accepted as
        # "identical" when an nft version lists it differently from ruleset.expected().
        self._written: tuple[list[Obj], list[Obj]] | None = None
        self._warned_format = False
        self._warned_rename = False
        self._tx_total: Counter | None = None
        self._drift_total: Counter | None = None
        self._open_ports: Gauge | None = None
        if metrics is not None:
            self._tx_total = metrics.counter(
                "transactions_total", "nftables transactions applied (table replaced or removed)."
            )
            self._drift_total = metrics.counter(
                "drift_repairs_total", "Syncs that undid a hand edit of the agent's nftables table."
            )
            self._open_ports = metrics.gauge(
                "open_ports", "UDP ports in the agent's nftables sets, by owner.", ["owner"]
            )
        self._gauge_owners: set[str] = set()

    @classmethod
    def from_context(cls, ctx: PluginContext) -> NftablesFirewall:
        """The backend factory: settings are re-read from ``ctx.section`` on each
        call, so a reload that changes the priority or range takes effect."""
        return cls(
            ctx.section or NftablesConfig(), live_config=lambda: ctx.section, log=ctx.log, metrics=ctx.metrics
        )

    @property
    def config(self) -> NftablesConfig:
        live = self._live() if self._live is not None else None
        return live if live is not None else self._static

    # ------------------------------------------------------------------ nft

    async def _nft(self, *args: str, script: str | None = None) -> tuple[int, str, str]:
        """Run nft; returns (exit status, stdout, stderr). Raises on timeout or
        when the executable cannot be started."""
        cfg = self.config
        env = {**os.environ, "LC_ALL": "C"}  # stable error texts ("No such file or directory")
        try:
            proc = await asyncio.create_subprocess_exec(
                cfg.nft_path,
                *args,
                stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise NftablesError(f"cannot run {cfg.nft_path!r}: {exc.strerror or exc}") from exc
        try:
            async with asyncio.timeout(cfg.timeout):
                out, err = await proc.communicate(script.encode() if script is not None else None)
        except TimeoutError:
            raise NftablesError(f"nft {' '.join(args)} timed out after {cfg.timeout:g}s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()

    async def _observe(self) -> list[Obj] | None:
        """The agent's table as the kernel has it (normalised); None when absent."""
        rc, out, err = await self._nft("-j", "list", "table", "inet", self.table)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftablesError(f"nft list table inet {self.table} failed ({rc}): {err}")
        try:
            return ruleset.parse_listing(out)
        except ruleset.ListingError as exc:
            raise NftablesError(str(exc)) from exc

    async def _apply(self, script: str, *, check: bool = False) -> None:
        args = ("-c", "-f", "-") if check else ("-f", "-")
        rc, _out, err = await self._nft(*args, script=script)
        if rc != 0:
            what = "nftables rejected the agent's table" + (" (check only)" if check else "")
            raise NftablesError(f"{what}: {err}")
        if not check:
            self.transactions += 1
            if self._tx_total is not None:
                self._tx_total.inc()

    def _desired(self, sets: Mapping[str, frozenset[int]]) -> Desired:
        cfg = self.config
        if cfg.table != self.table and not self._warned_rename:
            self._warned_rename = True
            self.log.warning(
                "nftables.table changed to {!r}; the agent keeps managing {!r} until it restarts",
                cfg.table,
                self.table,
            )
        return Desired(
            table=self.table, sets=sets, priority=cfg.chain_priority, managed_range=cfg.managed_bounds()
        )

    def _desired_for(self, current: list[Obj] | None, owner: str, ports: frozenset[int]) -> Desired:
        """The table with ``owner``'s set replaced by ``ports`` and every other
        owner's set exactly as listed in ``current``."""
        sets = ruleset.owner_sets(current) if current is not None else {}
        sets[owner] = ports
        return self._desired(sets)

    def _matches(self, current: list[Obj] | None, want_objs: list[Obj]) -> bool:
        if current is None:
            return False
        if current == want_objs:
            return True
        return self._written is not None and self._written == (want_objs, current)

    # ------------------------------------------------------------- interface

    async def start(self) -> None:
        """Fail early, with nft's message, when nft is missing, lacks JSON
        support or permission, or the kernel refuses the table: the backend is
        then shown as failed instead of failing every sync."""
        current = await self._observe()
        sets = ruleset.owner_sets(current) if current is not None else {}
        want = self._desired(sets)
        await self._apply(ruleset.render(want), check=True)
        self._set_gauges(want)
        self._warn_ephemeral_overlap()

    async def sync(self, ports: frozenset[int], *, owner: str = DEFAULT_OWNER) -> bool:
        """Make ``owner``'s set exactly ``ports``, keeping every other owner's set
        as the kernel has it; one transaction, only when the kernel differs."""
        wanted = ruleset.validate_ports(ports)
        owner = ruleset.validate_owner(owner)
        async with self._lock:
            current = await self._observe()
            want = self._desired_for(current, owner, wanted)
            want_objs = ruleset.expected(want)
            if self._matches(current, want_objs):
                self._set_gauges(want)
                return False
            changes = ruleset.describe(current, want, want_objs)
            # Drift: the kernel no longer holds what this object last wrote
            # (a config change or new ports alone are not drift).
            last = self._written
            drift = last is not None and current != last[0] and current != last[1]
            if drift:
                self.drift_repairs += 1
                if self._drift_total is not None:
                    self._drift_total.inc()
                self.log.warning(
                    "nftables table inet {} is not what the agent last wrote (edited by hand?); "
                    "repairing ({} sync): {}",
                    self.table,
                    owner,
                    "; ".join(changes),
                )
            else:
                self.log.info("nftables table inet {} ({} sync): {}", self.table, owner, "; ".join(changes))
            self._warn_outside_range(want, owner)
            await self._apply(ruleset.render(want))
            # One nft transaction: the kernel has all of it or none. Nothing to adopt
            # after a crash here: every sync reads the set and writes it whole.
            crashpoint("nftables.sync.applied")
            self.last_changes = changes
            after = await self._observe()
            if after is None or ruleset.canonical_sets(ruleset.owner_sets(after)) != want.sets:
                self._written = None
                raise NftablesError(
                    f"table inet {self.table} does not hold the ports just written "
                    f"(someone is changing it concurrently?)"
                )
            self._written = (want_objs, after)
            if after != want_objs and not self._warned_format:
                self._warned_format = True
                self.log.warning(
                    "nft lists table inet {} differently than expected; accepting its form: {}",
                    self.table,
                    ruleset.drift_of(after, want_objs),
                )
            self._set_gauges(want)
            return True

    async def plan(self, ports: frozenset[int], *, owner: str = DEFAULT_OWNER) -> list[str]:
        """What :meth:`sync` would change (empty: nothing), without writing;
        for ``moenet-agent plan``."""
        wanted = ruleset.validate_ports(ports)
        owner = ruleset.validate_owner(owner)
        current = await self._observe()
        want = self._desired_for(current, owner, wanted)
        want_objs = ruleset.expected(want)
        return [] if self._matches(current, want_objs) else ruleset.describe(current, want, want_objs)

    async def list_ports(self, owner: str | None = None) -> frozenset[int]:
        """The ports open now, read from the kernel: every owner's set, or ``owner``'s."""
        if owner is not None:
            owner = ruleset.validate_owner(owner)
        current = await self._observe()
        return frozenset() if current is None else ruleset.ports_in(current, owner)

    async def remove_all(self) -> None:
        """Delete the agent's table (and nothing else); a no-op when it is absent.

        Not called at shutdown: tunnels outlive an agent restart, and so must
        their open ports.
        """
        async with self._lock:
            if await self._observe() is None:
                return
            await self._apply(ruleset.render_delete(self.table))
            self.last_changes = [f"delete table inet {self.table}"]
            self._written = None
            self._set_gauges(None)
            self.log.info("nftables table inet {} removed", self.table)

    # ---------------------------------------------------------------- helpers

    def _set_gauges(self, want: Desired | None) -> None:
        """``open_ports{owner}`` for every owner in the table (0 for owners gone)."""
        if self._open_ports is None:
            return
        sets = dict(want.sets) if want is not None else {}
        for owner in self._gauge_owners - sets.keys():
            self._open_ports.labels(owner=owner).set(0)
        for owner, ports in sets.items():
            self._open_ports.labels(owner=owner).set(len(ports))
        self._gauge_owners |= sets.keys()

    def _warn_outside_range(self, want: Desired, owner: str) -> None:
        if want.managed_range is None:
            return
        lo, hi = want.managed_range
        outside = sorted(p for p in want.owner_ports(owner) if not lo <= p <= hi)
        if outside:
            self.log.warning(
                "{} ports {} are outside nftables.managedRange {}-{}: the agent accepts them, "
                "but only your own firewall decides whether they reach the node",
                owner,
                outside,
                lo,
                hi,
            )

    def _warn_ephemeral_overlap(self, proc: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> None:
        bounds = self.config.managed_bounds()
        if bounds is None:
            return
        try:
            lo, hi = (int(x) for x in proc.read_text().split())
        except (OSError, ValueError):
            return
        if bounds[0] <= hi and lo <= bounds[1]:
            self.log.warning(
                "nftables.managedRange {}-{} overlaps the local port range {}-{}: replies to "
                "outgoing UDP from those ports will be dropped unless the port is open",
                bounds[0],
                bounds[1],
                lo,
                hi,
            )
