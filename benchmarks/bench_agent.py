"""The installed agent as a process: start -> ``/status``, RSS idle and at N sessions, imports.

Run as root::

    .venv/bin/python benchmarks/bench_agent.py [--starts 7] [--sessions 1000] [--skip-sessions]

- **start**: ``moenet-agent run -c <standalone config>`` (``controlPlane.source:
  file``, every built-in plugin, a real BIRD 3 in a throwaway namespace) started
  as a subprocess, timed until ``GET /status`` answers 200 and lists all built-in
  plugins active; p50 over ``--starts`` runs. Floor in the same run: the bare
  interpreter (``python -c pass``) started the same way.
- **RSS idle**: the agent process's VmRSS (``/proc/<pid>/status``) once its
  first ``sessionSync`` finished, and again a few seconds later.
- **RSS at N sessions**: the same with N sessions in the CP file, after all N
  tunnels (wireguard-go) exist and a further ``sessionSync`` finished; the agent
  process only (wireguard-go and BIRD excluded). Then, for ``--watch`` seconds,
  RSS every 0.5 s while the agent's periodic tasks run and ``/metrics`` is
  scraped every 15 s as Prometheus would (min / median / max, the scrape's time).
- **imports**: ``python -X importtime`` of ``moenet_core.cli`` and of every
  built-in plugin (cumulative ms of the heaviest top-level packages) and the
  wall time of ``python -c 'import ...'`` against ``python -c pass``.

Goals (issue 12, item 6): start -> /status <= 1.0 s, RSS <= 60 MB at 1 000 sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_sessions import ACTIVE, NODE_ASN, clean_sockets, inotify_room, pct, session
from moenet_bird.testing import BirdDaemon, sample_bird_config

from moenet_core.testing import NetNS

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
AGENT = ROOT / ".venv" / "bin" / "moenet-agent"
BUILTINS = tuple(
    sorted(
        ep.name for ep in importlib.metadata.distribution("moenet-agent").entry_points if ep.group == "moenet"
    )
)
"""Every plugin the package registers (entry points of the ``moenet`` group)."""
PORT = 24368
#: Seconds between ``/metrics`` scrapes while RSS is watched (Prometheus's common interval).
SCRAPE_EVERY = 15.0


def get_status(timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/status", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            doc = json.loads(resp.read())
            return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def all_plugins(doc: dict[str, Any]) -> bool:
    active = {p.get("name") for p in doc.get("plugins", []) if p.get("status") == "active"}
    return set(BUILTINS) <= active


def task(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for t in doc.get("tasks", []):
        if t.get("name") == name:
            return dict(t)
    return {}


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return rss, hwm


class Node:
    """A namespace with a BIRD, the agent's config and its CP file."""

    def __init__(self, tmp: Path, prefix: str) -> None:
        self.tmp = tmp
        self.prefix = prefix
        self.ns = NetNS("ma")
        self.bird = BirdDaemon(self.ns, tmp / "bird")
        self.cp_file = tmp / "cp.json"
        self.config = tmp / "config.json"
        self.log = tmp / "agent.log"

    def write(self, count: int, state: str) -> None:
        cp = {
            "sessions": [session(i, self.prefix, ACTIVE) for i in range(1, count + 1)],
            "mesh": {"peers": []},
            "bird-config": sample_bird_config(),
        }
        self.cp_file.write_text(json.dumps(cp))
        cfg = {
            "node": {
                "name": "bench1",
                "id": 3,
                "asn": NODE_ASN,
                "loopbackIpv4": "172.20.42.1",
                "loopbackIpv6": "fd42:4242:1234::1",
            },
            "controlPlane": {"source": "file", "file": str(self.cp_file)},
            "server": {"listen": f"127.0.0.1:{PORT}"},
            "state": {"directory": str(self.tmp / state)},
            "bird": {"controlSocket": str(self.bird.socket), "configDir": str(self.tmp / "etc")},
            "sessions": {"privateKeyPath": str(self.tmp / "wg" / "private.key")},
            "wireguard": {"backend": "userspace"},
            "backends": {"firewall": "nftables"},
            "tasks": {"sessionSync": {"interval": 3}},
            "log": {"level": "WARNING"},
        }
        self.config.write_text(json.dumps(cfg))

    @contextlib.contextmanager
    def agent(self, cmd: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
        """The agent (or ``cmd``) started inside the namespace; SIGTERM, then SIGKILL, at exit."""
        with self.ns.entered(), self.log.open("ab") as log:
            proc = subprocess.Popen(
                cmd or [str(AGENT), "run", "-c", str(self.config)], stdout=log, stderr=log
            )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def wait_status(self, proc: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
        stop = time.monotonic() + seconds
        with self.ns.entered():
            while time.monotonic() < stop:
                if proc.poll() is not None:
                    raise RuntimeError(f"agent exited {proc.returncode}: {self.log.read_text()[-2000:]}")
                doc = get_status(0.5)
                if doc is not None:
                    return doc
                time.sleep(0.005)
        raise RuntimeError(f"/status did not answer within {seconds} s")

    def wait_sync(self, proc: subprocess.Popen[bytes], after: int, seconds: float) -> dict[str, Any]:
        """Wait until sessionSync has finished more than ``after`` runs; its task entry."""
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t = task(self.wait_status(proc, seconds), "sessionSync")
            if int(t.get("runs", 0)) > after and not t.get("running"):
                return t
            time.sleep(0.2)
        raise RuntimeError(f"sessionSync did not finish run {after + 1} within {seconds} s")

    def tunnels(self) -> int:
        n = 0
        for pid in self.ns.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                    n += 1
        return n

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bird.stop()
        self.ns.remove()
        clean_sockets(self.prefix)


def starts(node: Node, runs: int) -> tuple[list[float], list[float]]:
    node.write(0, "state-start")
    agent, floor = [], []
    for _ in range(runs):
        t = time.perf_counter()
        with node.agent() as proc:
            doc = node.wait_status(proc, 30)
            agent.append(time.perf_counter() - t)
            assert all_plugins(doc), [(p.get("name"), p.get("status")) for p in doc.get("plugins", [])]
        t = time.perf_counter()
        with node.agent([str(PYTHON), "-c", "pass"]) as proc:
            proc.wait(10)
            floor.append(time.perf_counter() - t)
    return agent, floor


def scrape(timeout: float = 30.0) -> tuple[float, int]:
    """(seconds, series) of one ``GET /metrics`` as Prometheus asks for it."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the local API)
        body = resp.read()
    took = time.monotonic() - started
    return took, sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def watch(pid: int, seconds: float, every: float) -> tuple[list[int], list[float], int]:
    """RSS (kB) every 0.5 s for ``seconds`` while ``/metrics`` is scraped every
    ``every`` seconds; (RSS samples, scrape durations, series in the last scrape)."""
    rss: list[int] = []
    took: list[float] = []
    series = 0
    end = time.monotonic() + seconds
    next_scrape = time.monotonic()
    while time.monotonic() < end:
        if time.monotonic() >= next_scrape:
            t, series = scrape()
            took.append(t)
            next_scrape += every
        rss.append(rss_kb(pid)[0])
        time.sleep(0.5)
    return rss, took, series


def memory(node: Node, count: int, seconds: float = 0.0) -> tuple[int, int, int]:
    """(RSS after the first sync, RSS 5 s later, VmHWM) in kB with ``count`` sessions;
    then, for ``seconds``, RSS under scrapes (printed)."""
    node.write(count, f"state-{count}")
    limit = 120 + count * 1.0
    with node.agent() as proc:
        node.wait_sync(proc, 0, limit)
        stop = time.monotonic() + limit
        while node.tunnels() < count:
            if time.monotonic() > stop:
                raise RuntimeError(f"only {node.tunnels()}/{count} tunnels after {limit:.0f} s")
            time.sleep(0.5)
        runs = int(task(node.wait_status(proc, 30), "sessionSync").get("runs", 0))
        node.wait_sync(proc, runs, limit)  # one cycle with every tunnel in place
        first = rss_kb(proc.pid)[0]
        time.sleep(5)
        rss, hwm = rss_kb(proc.pid)
        if seconds > 0:
            with node.ns.entered():  # the API listens in the node's namespace
                samples, took, series = watch(proc.pid, seconds, SCRAPE_EVERY)
            mb = sorted(x / 1024 for x in samples)
            print(
                f"agent RSS, {count} sessions, over {seconds:.0f} s of its periodic tasks with /metrics "
                f"scraped every {SCRAPE_EVERY:.0f} s: min {mb[0]:.1f}, median {statistics.median(mb):.1f}, "
                f"max {mb[-1]:.1f} MB; a scrape ({series} series) p50 "
                f"{statistics.median(took) * 1000:.0f} ms, max {max(took) * 1000:.0f} ms",
                flush=True,
            )
        return first, rss, hwm


# ------------------------------------------------------------------ imports

MODULES = [
    "moenet_core.cli",
    *sorted(
        {
            ep.value.split(":")[0]
            for ep in importlib.metadata.distribution("moenet-agent").entry_points
            if ep.group == "moenet"
        }
    ),
]


def importtime(modules: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """(total cumulative us, the heaviest non-moenet packages by their cumulative
    import time) from ``-X importtime``; nested packages count inside their importer too."""
    code = "import " + ", ".join(modules)
    res = subprocess.run(
        [str(PYTHON), "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    total = 0
    roots: dict[str, int] = {}
    for ln in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", ln)
        if not m:
            continue
        name, cumulative = m.group(4), int(m.group(2))
        if len(m.group(3)) <= 1:
            total += cumulative
        if "." not in name and not name.startswith(("moenet", "_")):
            roots[name] = max(roots.get(name, 0), cumulative)
    heavy = sorted(((us, name) for name, us in roots.items()), reverse=True)
    return total, heavy[:12]


def wall(code: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(PYTHON), "-c", code], check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def imports(runs: int) -> None:
    base = wall("pass", runs)
    cli = wall("import moenet_core.cli", runs)
    every = wall("import " + ", ".join(MODULES), runs)
    print(f"python -c pass (floor)                       p50={base * 1000:7.1f} ms  n={runs}")
    print(
        f"python -c 'import moenet_core.cli'           p50={cli * 1000:7.1f} ms  (+{(cli - base) * 1000:.1f})"
    )
    print(
        f"python -c 'import cli + all {len(BUILTINS)} plugins'  p50={every * 1000:7.1f} ms  "
        f"(+{(every - base) * 1000:.1f})"
    )
    total, heavy = importtime(["moenet_core.cli"])
    print(f"-X importtime moenet_core.cli: {total / 1000:.1f} ms cumulative, heaviest:")
    print("   " + ", ".join(f"{n} {us / 1000:.1f}" for us, n in heavy))
    total, heavy = importtime(MODULES)
    print(f"-X importtime cli + plugins: {total / 1000:.1f} ms cumulative, heaviest:")
    print("   " + ", ".join(f"{n} {us / 1000:.1f}" for us, n in heavy))
    code = "import sys, " + ", ".join(MODULES) + "; print(' '.join(sorted(m for m in sys.modules)))"
    loaded = set(
        subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    watch = (
        "cryptography",
        "jinja2",
        "prometheus_client",
        "packaging",
        "pyroute2",
        "aiohttp",
        "pydantic",
        "yaml",
    )
    print("   loaded by the imports: " + ", ".join(f"{w}={'yes' if w in loaded else 'no'}" for w in watch))
    print(f"   modules in sys.modules: {len(loaded)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--starts", type=int, default=7, help="agent starts timed")
    ap.add_argument("--sessions", type=int, default=1000, help="sessions for the loaded RSS")
    ap.add_argument("--skip-sessions", action="store_true", help="idle RSS only")
    ap.add_argument(
        "--watch",
        type=float,
        default=90.0,
        help="seconds of RSS under /metrics scrapes at N sessions (0: none)",
    )
    ap.add_argument("--imports-only", action="store_true")
    args = ap.parse_args()
    imports(max(3, args.starts))
    if args.imports_only:
        return
    if os.geteuid() != 0:
        sys.exit("run as root (network namespace, BIRD, wireguard-go, nftables)")

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    prefix = "a" + secrets.token_hex(2)
    with tempfile.TemporaryDirectory(prefix="moenet-bench-agent-") as tmp, inotify_room(args.sessions):
        node = Node(Path(tmp), prefix)
        try:
            node.bird.start()
            agent, floor = starts(node, args.starts)
            print(
                f"agent start -> /status (all {len(BUILTINS)} built-ins)  n={len(agent)}  "
                f"p50={statistics.median(agent) * 1000:7.1f} ms  p95={pct(agent, 0.95) * 1000:7.1f} ms  "
                f"floor (python -c pass, same way) p50={statistics.median(floor) * 1000:.1f} ms  "
                f"ratio {statistics.median(agent) / statistics.median(floor):.1f}x",
                flush=True,
            )
            first, rss, hwm = memory(node, 0)
            print(
                f"agent RSS idle, all built-ins: {first / 1024:.1f} MB after the first sync, "
                f"{rss / 1024:.1f} MB 5 s later (peak {hwm / 1024:.1f} MB)",
                flush=True,
            )
            if not args.skip_sessions:
                first, rss, hwm = memory(node, args.sessions, args.watch)
                print(
                    f"agent RSS, {args.sessions} sessions: {first / 1024:.1f} MB after a sync with all "
                    f"tunnels, {rss / 1024:.1f} MB 5 s later (peak {hwm / 1024:.1f} MB; wireguard-go "
                    "excluded)",
                    flush=True,
                )
        finally:
            node.close()


if __name__ == "__main__":
    main()
