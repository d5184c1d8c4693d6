"""sessionSync at scale: cold converge against its floor, the no-op cycle, the deep check.

Run as root::

    .venv/bin/python benchmarks/bench_sessions.py --sessions 100,500,1000 [--runs 30]

For each N, everything happens in throwaway network namespaces with a real BIRD 3,
one wireguard-go per session, nftables, and a fake CP serving N sessions
(endpoints in TEST-NET-1, so no handshake is needed):

- **cold converge**: the CP turns from no sessions to N queued ones; timed until
  the CP has received a ``modify`` report with status ACTIVE for every one of them
  (sync cycles are run back to back until then).
- **floor, same run**: (a) one ``configure`` of the final BIRD tree on a BIRD
  started fresh; (b) the tunnel backend's ``ensure`` for the same N specs (recorded
  during the cold run) with the same bounded concurrency the cold run used (its
  highest number of ``ensure`` calls in flight), in a fresh namespace, and nothing
  else. The ratio cold / (a + b) is the figure (goal: <= 1.5).
- **no-op sync**: ``--runs`` cycles with nothing to change; p50/p95 and the number
  of writes (tunnel writes, firewall syncs, declares, reports: must be 0).
- **deep check**: cycles with the deep per-tunnel read forced
  (``sessions.deepCheckInterval`` = 0 when the agent has it; without it every
  cycle is deep). Also the bare ``TunnelBackend.list()`` (deep) and ``observe()``.

Teardown (namespaces, wireguard-go processes and their sockets, tunnels, the
inotify limit) runs on error, Ctrl-C and SIGTERM too. Every phase has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import os
import pstats
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import moenet_bird
import moenet_nftables
import moenet_sessions
import moenet_wireguard
from moenet_bird.client import BirdClient
from moenet_bird.testing import BirdDaemon, sample_bird_config
from moenet_sessions.config import SessionsConfig
from moenet_wireguard.config import Settings
from moenet_wireguard.uapi import SOCKET_DIR

from moenet_core import TunnelSpec
from moenet_core.backends import TunnelBackend
from moenet_core.testing import AgentHarness, FakeControlPlane, NetNS

KEY = base64.b64encode(b"\x07" * 32).decode()
NODE_ASN = 4242421234  # the AS of sample_bird_config(); peers use 4242422001.. (never this one)
INOTIFY = Path("/proc/sys/fs/inotify/max_user_instances")
ACTIVE, QUEUED = 1, 4
PREFIXES: list[str] = []
"""This process's interface prefixes: whatever still runs under them is killed at exit."""


def session(i: int, prefix: str, status: int) -> dict[str, Any]:
    return {
        "uuid": f"5e55b000-0000-4000-8000-{i:012d}",
        "asn": 4242422000 + i,
        "name": f"peer{i}",
        "status": status,
        "interface": f"{prefix}{i}",
        "endpoint": f"192.0.2.{i % 250 + 1}:{30000 + i}",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{i:x}",
        "port": 21000 + i,
    }


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(len(s) * q) - 1))]


def line(name: str, samples: list[float]) -> str:
    return (
        f"{name:<44} n={len(samples):<3} p50={statistics.median(samples) * 1000:8.1f} ms  "
        f"p95={pct(samples, 0.95) * 1000:8.1f} ms  max={max(samples) * 1000:8.1f} ms"
    )


async def deadline(aw: Awaitable[Any], seconds: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what}: no result within {seconds:.0f} s") from None


# ------------------------------------------------------------------ host limits


def inotify_in_use() -> int:
    """inotify instances open now (all users: an upper bound for root's)."""
    n = 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == "anon_inode:inotify":
                        n += 1
    return n


@contextlib.contextmanager
def inotify_room(count: int) -> Iterator[None]:
    """Each wireguard-go takes one inotify instance; Debian allows 128 per user.
    The userspace backend is meant to raise ``fs.inotify.max_user_instances``
    itself (issue 12, item 3); until it does, the benchmark makes room for its N
    tunnels and puts the old value back afterwards, unless someone else changed it
    in between (then theirs stays)."""
    old = int(INOTIFY.read_text())
    need = inotify_in_use() + count + 64
    if need <= old:
        yield
        return
    INOTIFY.write_text(f"{need}\n")
    print(f"  (raised fs.inotify.max_user_instances {old} -> {need} for this run)", flush=True)
    try:
        yield
    finally:
        if int(INOTIFY.read_text()) == need:
            INOTIFY.write_text(f"{old}\n")


def clean_sockets(prefix: str) -> None:
    """wireguard-go daemons of this run still alive (their namespace may have been
    deleted under them, so ``NetNS.remove`` cannot see them; the prefix is random
    per run, so only this run's match), then their sockets (paths are not per
    namespace)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            argv = cmdline.read_bytes().split(b"\0")
            if len(argv) > 1 and argv[0].endswith(b"wireguard-go") and argv[1].decode().startswith(prefix):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
    for sock in Path(SOCKET_DIR).glob(f"{prefix}*.sock"):
        with contextlib.suppress(OSError):
            sock.unlink()


async def remove_all(tunnel: TunnelBackend, names: list[str], concurrency: int, seconds: float) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await tunnel.remove(name)

    with contextlib.suppress(Exception):
        await deadline(asyncio.gather(*(one(n) for n in names)), seconds, "removing tunnels")


# ------------------------------------------------------------------ one N


@attrs.define
class Result:
    count: int
    cold: float = 0.0
    cold_cycles: int = 0
    concurrency: int = 0
    floor_bird: float = 0.0
    floor_tunnels: float = 0.0
    noop: list[float] = attrs.field(factory=list)
    noop_writes: int = 0
    deep: list[float] = attrs.field(factory=list)
    deep_writes: int = 0
    deep_mode: str = ""
    noop_deep: int = 0
    """No-op cycles that reported ``deepCheck`` (should be 0 at the default interval)."""
    deep_seen: int = 0
    """Forced cycles that reported ``deepCheck`` (should be all of them)."""
    list_deep: list[float] = attrs.field(factory=list)
    list_observe: list[float] = attrs.field(factory=list)

    @property
    def floor(self) -> float:
        return self.floor_bird + self.floor_tunnels


class Recorder:
    """Wraps a tunnel backend's ``ensure``: records the specs and the most calls in flight."""

    def __init__(self, tunnel: TunnelBackend) -> None:
        self.specs: dict[str, TunnelSpec] = {}
        self.settings = Settings()
        self.in_flight = 0
        self.most = 0
        inner: Callable[[TunnelSpec], Awaitable[bool]] = tunnel.ensure

        async def ensure(spec: TunnelSpec) -> bool:
            self.specs[spec.name] = spec
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await inner(spec)
            finally:
                self.in_flight -= 1

        tunnel.ensure = ensure  # type: ignore[method-assign]


def writes(r: dict[str, Any]) -> int:
    return sum(int(r.get(k, 0)) for k in ("tunnelWrites", "firewallSyncs", "declares", "reports"))


async def agent_phase(tmp: Path, prefix: str, res: Result, args: argparse.Namespace) -> Recorder:
    """Cold converge, no-op cycles and deep-check cycles; returns the recorded specs."""
    count = res.count
    etc, state = tmp / "etc", tmp / "state"
    ns = NetNS("mb")
    tunnel: TunnelBackend | None = None
    try:
        with ns.entered(), BirdDaemon(ns, tmp / "bird").start() as daemon:
            async with FakeControlPlane() as cp:
                cp.set("bird-config", sample_bird_config())
                cp.set("sessions", [])
                cfg = {
                    "node": {"name": "bench1", "id": 3, "asn": NODE_ASN},
                    "controlPlane": {"url": cp.url, "token": "test-token", "maxRetries": 0},
                    "bird": {"controlSocket": str(daemon.socket), "configDir": str(etc), "applyDebounce": 0},
                    "sessions": {"privateKeyPath": str(tmp / "wg" / "private.key")},
                    "wireguard": {"backend": "userspace"},
                    "backends": {"firewall": "nftables"},
                    "state": {"directory": str(state)},
                }
                plugins = [
                    ("sessions", moenet_sessions),
                    ("wireguard", moenet_wireguard),
                    ("nftables", moenet_nftables),
                    ("bird", moenet_bird),
                ]
                async with AgentHarness(cfg, plugins=plugins, state_dir=state) as h:
                    sched = h.agent.scheduler
                    got = h.agent.backend("tunnel")
                    assert isinstance(got, TunnelBackend)
                    tunnel = got
                    rec = Recorder(tunnel)
                    rec.settings = Settings.from_context(h.agent.context("wireguard"))
                    cycle_limit = 60.0 + count * 1.0

                    async def sync() -> dict[str, Any]:
                        ev = await deadline(sched.run_now("sessionSync"), cycle_limit, "sessionSync")
                        assert ev.ok, ev.error
                        assert isinstance(ev.result, dict)
                        return ev.result

                    try:
                        assert (await sched.run_now("birdConfigSync")).ok
                        await sync()
                        uuids = {session(i, prefix, 0)["uuid"] for i in range(1, count + 1)}

                        def active() -> set[str]:
                            return {
                                r.body.get("uuid")
                                for r in cp.calls("modify", "POST")
                                if isinstance(r.body, dict) and r.body.get("status") == ACTIVE
                            } & uuids

                        # ---- cold converge
                        cp.set("sessions", [session(i, prefix, QUEUED) for i in range(1, count + 1)])
                        t = time.perf_counter()
                        stop = t + cycle_limit * 3
                        while len(active()) < count:
                            if time.perf_counter() > stop:
                                raise RuntimeError(
                                    f"cold converge: {len(active())}/{count} ACTIVE by the deadline"
                                )
                            r = await sync()
                            res.cold_cycles += 1
                            if r.get("failed"):
                                raise RuntimeError(
                                    f"cold converge: failed sessions: {list(r['failed'].items())[:3]}"
                                )
                        res.cold = time.perf_counter() - t
                        res.concurrency = rec.most
                        print(
                            f"  cold converge: {res.cold:.2f} s, {res.cold_cycles} cycle(s), "
                            f"{len(rec.specs)} tunnels, at most {rec.most} ensure in flight",
                            flush=True,
                        )

                        # ---- no-op cycles
                        cp.set("sessions", [session(i, prefix, ACTIVE) for i in range(1, count + 1)])
                        await sync()  # settle: the CP now shows ACTIVE
                        await sync()
                        for _ in range(args.runs):
                            r = await sync()
                            res.noop.append(r["seconds"])
                            res.noop_writes += writes(r)
                            res.noop_deep += bool(r.get("deepCheck"))
                        print("  " + line(f"no-op sessionSync, {count} sessions", res.noop), flush=True)

                        # ---- the bare reads
                        for _ in range(max(3, args.deep_runs)):
                            t = time.perf_counter()
                            await tunnel.list(owner="sessions")
                            res.list_deep.append(time.perf_counter() - t)
                            t = time.perf_counter()
                            await tunnel.observe(owner="sessions")
                            res.list_observe.append(time.perf_counter() - t)

                        # ---- deep check forced
                        section = h.agent.plugin_section("sessions")
                        if isinstance(section, SessionsConfig) and hasattr(section, "deep_check_interval"):
                            old = section.deep_check_interval
                            section.deep_check_interval = 0
                            res.deep_mode = "sessions.deepCheckInterval=0"
                            try:
                                for _ in range(args.deep_runs):
                                    r = await sync()
                                    res.deep.append(r["seconds"])
                                    res.deep_writes += writes(r)
                                    res.deep_seen += bool(r.get("deepCheck"))
                            finally:
                                section.deep_check_interval = old
                        else:
                            res.deep_mode = "no deepCheckInterval yet: every cycle reads deep (= no-op above)"
                            res.deep, res.deep_writes = list(res.noop), res.noop_writes
                        print("  " + line(f"deep-check cycle, {count} sessions", res.deep), flush=True)
                        print(
                            f"  cycles reporting deepCheck: no-op {res.noop_deep}/{len(res.noop)}, "
                            f"forced {res.deep_seen}/{len(res.deep)}; writes: no-op {res.noop_writes}, "
                            f"deep {res.deep_writes}",
                            flush=True,
                        )

                        if args.tracemalloc:
                            import gc
                            import tracemalloc

                            gc.collect()
                            snap = tracemalloc.take_snapshot().filter_traces(
                                [tracemalloc.Filter(False, tracemalloc.__file__)]
                            )
                            stats = snap.statistics(
                                "filename" if tracemalloc.get_traceback_limit() == 1 else "traceback"
                            )
                            total = sum(st.size for st in stats)
                            print(
                                f"  live Python allocations after the no-op cycles: {total / 2**20:.1f} MB",
                                flush=True,
                            )
                            for st in stats[:20]:
                                where = " <- ".join(
                                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in st.traceback
                                )
                                print(f"    {st.size / 2**20:6.2f} MB  {st.count:8d} blocks  {where}")

                        if args.profile:
                            prof = cProfile.Profile()
                            prof.enable()
                            for _ in range(5):
                                await sync()
                            prof.disable()
                            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
                    finally:
                        names = sorted(await deadline(tunnel.list(), 120, "listing tunnels"))
                        await remove_all(tunnel, names, 16, 60 + count * 0.5)
        return rec
    finally:
        ns.remove()
        clean_sockets(prefix)


async def floor_phase(tmp: Path, prefix: str, rec: Recorder, settings: Settings, res: Result) -> None:
    """In a fresh namespace: create the recorded tunnels with the same concurrency
    (and nothing else), then one configure of the final tree on a fresh BIRD."""
    from moenet_wireguard import UserspaceTunnelBackend

    ns = NetNS("mf")
    backend = UserspaceTunnelBackend(settings)
    specs = list(rec.specs.values())
    try:
        with ns.entered():
            gate = asyncio.Semaphore(max(1, res.concurrency))

            async def one(spec: TunnelSpec) -> None:
                async with gate:
                    await backend.ensure(spec)

            t = time.perf_counter()
            await deadline(asyncio.gather(*(one(s) for s in specs)), 60 + len(specs) * 1.0, "floor tunnels")
            res.floor_tunnels = time.perf_counter() - t
            print(
                f"  floor (b): {len(specs)} tunnels, concurrency {res.concurrency}: "
                f"{res.floor_tunnels:.2f} s",
                flush=True,
            )
            with BirdDaemon(ns, tmp / "bird-floor").start() as daemon:
                async with BirdClient(str(daemon.socket), reconfigure_timeout=300) as bird:
                    await bird.status()  # connected, idle
                    t = time.perf_counter()
                    await bird.configure(str(tmp / "etc" / "bird.conf"))
                    res.floor_bird = time.perf_counter() - t
            print(
                f"  floor (a): one configure of the final tree on a fresh BIRD: {res.floor_bird:.2f} s",
                flush=True,
            )
            await remove_all(backend, [s.name for s in specs], 16, 60 + len(specs) * 0.5)
    finally:
        ns.remove()
        clean_sockets(prefix)


async def bench(count: int, args: argparse.Namespace) -> Result:
    res = Result(count=count)
    prefix = "b" + secrets.token_hex(2)
    PREFIXES.append(prefix)
    with tempfile.TemporaryDirectory(prefix="moenet-bench-") as tmpdir, inotify_room(count):
        tmp = Path(tmpdir)
        rec = await agent_phase(tmp, prefix, res, args)
        if args.concurrency:
            res.concurrency = args.concurrency
        await floor_phase(tmp, prefix, rec, rec.settings, res)
    return res


def summary(results: list[Result]) -> None:
    print()
    print(
        "| N | cold converge | floor: configure + tunnels (concurrency) | cold/floor | no-op p50 / p95 "
        "| writes | deep-check p50 / p95 | list() / observe() p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r.cold / r.floor if r.floor else float("nan")
        print(
            f"| {r.count} | {r.cold:.2f} s ({r.cold_cycles} cycles) | {r.floor:.2f} s = {r.floor_bird:.2f} + "
            f"{r.floor_tunnels:.2f} ({r.concurrency}) | {ratio:.2f}x | "
            f"{statistics.median(r.noop) * 1000:.1f} / {pct(r.noop, 0.95) * 1000:.1f} ms (n={len(r.noop)}) | "
            f"{r.noop_writes} | {statistics.median(r.deep) * 1000:.1f} / {pct(r.deep, 0.95) * 1000:.1f} ms "
            f"(n={len(r.deep)}, {r.deep_seen} deep, {r.deep_writes} writes) | "
            f"{statistics.median(r.list_deep) * 1000:.1f} / "
            f"{statistics.median(r.list_observe) * 1000:.1f} ms |"
        )
    if any(r.deep_mode.startswith("no ") for r in results):
        print("deep check:", results[0].deep_mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", default="100", help="comma-separated N, e.g. 100,500,1000")
    ap.add_argument("--runs", type=int, default=30, help="no-op cycles per N")
    ap.add_argument("--deep-runs", type=int, default=5, help="deep-check cycles per N")
    ap.add_argument(
        "--concurrency", type=int, default=0, help="floor tunnel concurrency (default: the cold run's)"
    )
    ap.add_argument("--profile", action="store_true", help="print a cProfile of 5 more no-op cycles")
    ap.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace allocations from the start and print the live ones per file after the no-op cycles "
        "(slows everything: not for timings)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces, BIRD, wireguard-go, nftables)")

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # the finally blocks clean up

    signal.signal(signal.SIGTERM, terminate)
    from moenet_core.logs import setup_logging

    setup_logging(level="WARNING")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(int(os.environ.get("MOENET_TRACE_DEPTH", "1")))
    results = []
    for n in (int(x) for x in args.sessions.split(",") if x.strip()):
        print(f"N = {n}", flush=True)
        try:
            results.append(asyncio.run(bench(n, args)))
        finally:
            for prefix in PREFIXES:  # a last sweep, also after an interrupted teardown
                clean_sockets(prefix)
    summary(results)


if __name__ == "__main__":
    main()
