"""The BIRD client against a real BIRD 3 daemon in a throwaway network namespace.

``scripts/install-bird`` runs once per session (a no-op when BIRD 3 is already
installed; if it fails, these tests fail). Each test starts its own daemon with
``bird -f -c CFG -s SOCK -P PID`` inside a namespace from the ``netns`` fixture,
with every file in ``tmp_path``, and kills it afterwards. Everything the tests
wait for is BIRD's own answer (``configure status``, ``show protocols``, its
log, its ``+`` message), except the daemon's start-up, which is a bounded poll
for its control socket.

A few protocol edge cases that a real BIRD does not produce on demand (a reply
nobody asked for, a connection that stalls half-way) use a fake socket server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import moenet_bird
import pytest
from moenet_bird.client import BirdClient
from moenet_bird.protocol import (
    BirdConfigError,
    BirdError,
    BirdProtocol,
    BirdTimeout,
    BirdUnavailable,
    BirdUndoPending,
    ReconfigState,
)

from moenet_core.testing import NetNS

assert moenet_bird.__doc__
ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("MOENET_BIRD_PREFIX", "/opt/moenet-bird3"))


@pytest.fixture(scope="session")
def bird_bin() -> Path:
    """The installed ``bird`` wrapper (the install script must succeed)."""
    res = subprocess.run([str(ROOT / "scripts/install-bird")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"scripts/install-bird failed:\n{res.stdout}\n{res.stderr}"
    assert "BIRD 3." in res.stdout
    return PREFIX / "bin" / "bird"


# ------------------------------------------------------------------- daemon

BASE = """\
log "@LOG@" all;
router id 192.0.2.1;
protocol device {}
protocol static s1 { ipv4; route 10.1.0.0/24 unreachable; route 10.2.0.0/24 unreachable; }
"""


class Bird:
    """One BIRD daemon in a namespace, with its files in ``dir``."""

    def __init__(self, binary: Path, ns: NetNS, dir: Path) -> None:
        self.binary, self.ns, self.dir = binary, ns, dir
        self.cfg = dir / "bird.conf"
        self.sock = dir / "bird.ctl"
        self.pidfile = dir / "bird.pid"
        self.log = dir / "bird.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text.replace("@LOG@", str(self.log)))
        return path

    def start(self) -> None:
        bird = [str(self.binary), "-f", "-c", str(self.cfg), "-s", str(self.sock), "-P", str(self.pidfile)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *bird],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr").open("ab"),
        )
        # Waits for an external process: BIRD creates its socket once the config is
        # loaded. Bounded; a stale socket file of a killed daemon refuses connections,
        # so "ready" means a connection gets the 0001 greeting.
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"bird exited {self.proc.returncode}: {(self.dir / 'stderr').read_text()}"
                )
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                if s.recv(64).startswith(b"0001 "):
                    return
            if time.monotonic() > deadline:
                raise AssertionError("bird did not open its control socket within 20 s")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if needle in line]


@pytest.fixture
def bird(bird_bin: Path, netns: Callable[[], NetNS], tmp_path: Path) -> Iterator[Bird]:
    """A running BIRD with the BASE config (device + static s1)."""
    daemon = Bird(bird_bin, netns(), tmp_path)
    daemon.write("bird.conf", BASE)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
async def client(bird: Bird) -> AsyncIterator[BirdClient]:
    async with BirdClient(str(bird.sock), command_timeout=10) as c:
        yield c


async def names(client: BirdClient) -> list[str]:
    return [p.name for p in await client.protocols()]


def big_static(bird: Bird, name: str, count: int) -> str:
    """A static protocol with ``count`` routes: removing it keeps BIRD busy for a while."""
    routes = bird.dir / f"{name}.routes"
    routes.write_text(
        "".join(
            f"route 10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32 blackhole;\n" for i in range(count)
        )
    )
    return f'protocol static {name} {{ ipv4;\ninclude "{routes}";\n}}\n'


# --------------------------------------------------------------- configure


async def test_good_configure_is_applied(bird: Bird, client: BirdClient):
    before = await client.status()
    assert before.version.startswith("3.") and client.banner and client.banner.startswith("BIRD 3.")
    assert await names(client) == ["device1", "s1"]
    v2 = bird.write("v2.conf", BASE + "protocol static s3 { ipv4; route 10.3.0.0/24 unreachable; }\n")
    result = await client.configure(str(v2))
    assert result.code in (ReconfigState.DONE, ReconfigState.IN_PROGRESS) and result.path == str(v2)
    protos = {p.name: p for p in await client.protocols()}
    assert list(protos) == ["device1", "s1", "s3"]
    assert protos["s3"].routes["ipv4"]["imported"] == 1 and protos["s3"].state == "up"
    assert (await client.configure_status()).idle
    assert len(bird.log_lines("<INFO> Reconfigured")) == 1


async def test_rejected_configure_keeps_the_old_config(bird: Bird, client: BirdClient):
    before = await client.status()
    broken = bird.write(
        "broken.conf", BASE + "protocol static s9 {\n  ipv4;\n  route 10.9.0.0/24 nowhere;\n}\n"
    )
    with pytest.raises(BirdConfigError) as exc:
        await client.configure(str(broken))
    err = exc.value
    assert err.code == 8002 and err.file == str(broken) and err.line == 7
    assert bird.log_lines("Reconfigur") == []  # BIRD never started to apply it
    assert "syntax error" in err.detail and err.message.startswith(f"{broken}:7:")
    assert await names(client) == ["device1", "s1"]
    after = await client.status()
    assert after.last_reconfiguration == before.last_reconfiguration
    assert (await client.configure_status()).idle
    missing = bird.dir / "missing.conf"
    with pytest.raises(BirdConfigError, match="No such file"):
        await client.configure(str(missing))
    assert bird.alive()


async def test_configure_check(bird: Bird, client: BirdClient):
    good = bird.write("good.conf", BASE + "protocol static s4 { ipv4; }\n")
    result = await client.check(str(good))
    assert (result.code, result.message, result.path) == (20, "Configuration OK", str(good))
    assert (await client.check()).path == str(bird.cfg)
    bad = bird.write("bad.conf", BASE + "protocol static s5 { ipv4; bogus; }\n")
    with pytest.raises(BirdConfigError) as exc:
        await client.check(str(bad))
    assert (exc.value.file, exc.value.line) == (str(bad), 5)
    assert await names(client) == ["device1", "s1"]  # checking never applies


# ------------------------------------------------------------- restarts


async def test_bird_killed_and_restarted_mid_use(bird: Bird, client: BirdClient):
    assert await client.warm_up() == 5
    assert (await client.status()).version.startswith("3.")
    first_pid = bird.pid
    bird.kill()
    # The socket file is left behind and refuses connections: BIRD is down.
    assert bird.sock.exists()
    with pytest.raises(BirdUnavailable, match="cannot connect"):
        await client.status()
    with pytest.raises(BirdUnavailable):
        await client.configure()
    bird.start()
    assert bird.pid != first_pid
    # The pooled connections died with the old daemon: the client drops them and reconnects.
    status = await client.status()
    assert status.version.startswith("3.") and status.message == "Daemon is up and running"
    assert client.stats.discarded >= 1
    v2 = bird.write("v2.conf", BASE + "protocol static s6 { ipv4; }\n")
    assert (await client.configure(str(v2))).code in (3, 4)  # the writer reconnects too
    assert "s6" in await names(client)


async def test_restart_between_two_commands_is_transparent(bird: Bird, client: BirdClient):
    await client.warm_up()
    bird.kill()
    bird.start()
    # No probe in between: the first command hits a dead pooled connection or a fresh one.
    results = await asyncio.gather(*(client.status() for _ in range(8)))
    assert all(r.message == "Daemon is up and running" for r in results)


async def test_unavailable_when_nothing_listens(tmp_path: Path):
    async with BirdClient(str(tmp_path / "nope.ctl"), connect_timeout=2) as c:
        with pytest.raises(BirdUnavailable, match="No such file"):
            await c.status()
        with pytest.raises(BirdUnavailable):
            await c.configure()
    with pytest.raises(BirdUnavailable, match="closed"):
        await c.status()


# ----------------------------------------------------------------- pool


def connections_to(bird: Bird) -> int:
    """Connections BIRD has accepted on its control socket (the kernel's view). An
    accepted unix socket belongs to the connecting side's network namespace, so the
    test's own /proc/self/net/unix lists them, with the socket's path."""
    sock = bird.sock
    lines = Path("/proc/self/net/unix").read_text().splitlines()
    # The listening socket has flag 00010000 (__SO_ACCEPTCON); accepted ones do not.
    return sum(1 for line in lines if line.endswith(str(sock)) and line.split()[3] != "00010000")


async def test_many_concurrent_readers_share_at_most_max_connections(bird: Bird):
    async with BirdClient(str(bird.sock), pool_size=5, pool_size_max=10) as c:
        seen: list[int] = []

        async def one() -> str:
            status = await c.status()
            seen.append(connections_to(bird))
            return status.version

        versions = await asyncio.gather(*(one() for _ in range(50)))
        assert len(versions) == 50 and all(v.startswith("3.") for v in versions)
        stats = c.stats
        assert stats.high_water == 10 and 5 < max(seen) <= 10  # the client's count and the kernel's
        assert stats.connects == 10  # a burst reuses connections instead of reopening them
        assert stats.idle == 5 and stats.open == 5 and stats.discarded == 0


async def test_a_burst_of_connections_beyond_birds_backlog(bird: Bird):
    async with BirdClient(str(bird.sock), pool_size=30, pool_size_max=30) as c:
        got = await asyncio.gather(*(c.status() for _ in range(30)))
        assert all(s.message == "Daemon is up and running" for s in got)
        assert c.stats.connects == 30 and c.stats.discarded == 0


async def test_pool_of_one_serialises_callers(bird: Bird):
    async with BirdClient(str(bird.sock), pool_size=1, pool_size_max=1) as c:
        got = await asyncio.gather(*(c.command("show protocols") for _ in range(20)))
        assert all(r.code == 0 and r.texts(1002)[0].startswith("device1") for r in got)
        assert c.stats.high_water == 1 and c.stats.connects == 1


async def test_a_timed_out_command_discards_its_connection(bird: Bird, client: BirdClient):
    big = bird.write("big.conf", BASE + big_static(bird, "big", 50_000))
    await client.configure(str(big))
    with pytest.raises(BirdTimeout):
        await client.command("show route", timeout=0.001)
    assert client.stats.discarded == 1
    # The half-read reply went away with its connection: the next answers are in step.
    status = await client.status()
    assert status.version.startswith("3.")
    reply = await client.command("show route count")
    assert reply.code == 14 and "50002 of 50002 routes" in reply.texts()[0]


async def test_command_guards(client: BirdClient):
    for cmd in ("configure", 'configure "x"', "restrict", "timeformat iso long", "down"):
        with pytest.raises(ValueError):
            await client.command(cmd)
    with pytest.raises(ValueError, match="two replies"):
        await client.command("reload bgp")
    with pytest.raises(BirdError) as exc:
        await client.command("show protocols nosuchproto")
    assert exc.value.code == 9001
    with pytest.raises(BirdError) as exc:
        await client.protocols("nomatch*")
    assert exc.value.code == 8003
    assert await client.protocols_named("nomatch*") == []  # none matching is no error
    with pytest.raises(ValueError):
        await client.protocols_named('a"b')  # what cannot be sent is still refused
    reply = await client.command("show route for 10.9.9.9", check=False)
    assert reply.errors[0].code == 8001 and not reply.ok
    assert client.stats.discarded == 0  # errors are answers, not broken connections


# ---------------------------------------------------------------- writer


async def test_configures_requested_while_one_runs_are_coalesced(bird: Bird, client: BirdClient):
    heavy = bird.write("heavy.conf", BASE + big_static(bird, "big", 200_000))
    assert (await client.configure(str(heavy))).code in (3, 4)
    light = bird.write("light.conf", BASE)  # removing 200 000 routes takes BIRD a while
    final = bird.write("final.conf", BASE + "protocol static s7 { ipv4; }\n")
    pid = bird.pid
    reconfigs = len(bird.log_lines("<INFO> Reconfiguring"))

    first = asyncio.create_task(client.configure(str(light)))
    # Wait for BIRD itself to report the reconfiguration as running.
    while (await client.configure_status()).state is not ReconfigState.IN_PROGRESS:
        assert not first.done(), "BIRD finished before it was seen reconfiguring"
    followers = [asyncio.create_task(client.configure(str(final))) for _ in range(4)]
    done = await asyncio.gather(first, *followers)

    assert done[0].code == ReconfigState.IN_PROGRESS and done[0].waited > 0
    assert all(r is done[1] for r in done[2:])  # one run, one result for all four
    assert done[1].path == str(final)
    assert client.stats.coalesced == 3
    # BIRD's view: exactly two reconfigurations, none queued, same daemon.
    assert len(bird.log_lines("<INFO> Reconfiguring")) == reconfigs + 2
    assert bird.log_lines("Queueing") == [] and bird.log_lines("<BUG>") == []
    assert bird.alive() and bird.pid == pid and int(bird.pidfile.read_text()) == pid
    assert await names(client) == ["device1", "s1", "s7"]
    assert (await client.configure_status()).idle


async def test_coalesced_run_survives_a_cancelled_caller(bird: Bird, client: BirdClient):
    v2 = bird.write("v2.conf", BASE + "protocol static s8 { ipv4; }\n")
    a = asyncio.create_task(client.configure(str(v2)))
    b = asyncio.create_task(client.configure(str(v2)))
    await asyncio.sleep(0)  # both joined the same pending run
    assert client.stats.coalesced == 1
    a.cancel()
    result = await b
    assert result.path == str(v2) and a.cancelled()
    assert "s8" in await names(client)


async def test_configure_timeout_confirm_and_undo(bird: Bird):
    messages: list[str] = []
    undone = asyncio.Event()

    def on_async(text: str) -> None:
        messages.append(text)
        undone.set()

    async with BirdClient(str(bird.sock), on_async=on_async) as client:
        v2 = bird.write("v2.conf", BASE + "protocol static s2 { ipv4; }\n")
        v3 = bird.write("v3.conf", BASE + "protocol static s3 { ipv4; }\n")

        # Armed undo, then confirmed.
        armed = await client.configure(str(v2), undo_after=60)
        assert armed.undo_in == 60
        pending = await client.configure_status()
        assert pending.idle and pending.undo_in is not None and 0 < pending.undo_in <= 60
        with pytest.raises(BirdUndoPending):
            await client.configure(str(v3))  # would race BIRD's undo timer
        assert (await client.confirm()).code == 18
        assert (await client.configure_status()).undo_in is None
        assert (await client.confirm()).code == 19
        assert await names(client) == ["device1", "s1", "s2"]

        # Explicit undo goes back one step.
        await client.configure(str(v3), undo_after=60)
        assert await names(client) == ["device1", "s1", "s3"]
        assert (await client.undo()).code in (3, 4)
        assert await names(client) == ["device1", "s1", "s2"]
        assert (await client.configure_status()).undo_in is None

        # BIRD's own timer: its '+' message arrives on the writer's idle connection.
        await client.configure(str(v3), undo_after=1)
        assert await names(client) == ["device1", "s1", "s3"]
        await asyncio.wait_for(undone.wait(), 15)
        assert messages == ["Config timeout expired, starting undo"]
        while not (await client.configure_status()).idle:
            pass  # polls BIRD until the undo has finished
        assert await names(client) == ["device1", "s1", "s2"]
        assert (await client.confirm()).code == 19  # nothing left to confirm
        assert bird.alive() and bird.log_lines("<BUG>") == []


# -------------------------------------------------------------- read-out

PEERS = """\
ipv4 table t2;
protocol static s2 { ipv4 { table t2; }; route 10.3.0.0/24 unreachable;
  route 10.4.0.0/24 unreachable; route 10.5.0.0/24 unreachable; }
protocol bgp b1 { local 127.0.0.1 as 65001; neighbor 127.0.0.2 as 65002; multihop;
  router id 192.0.2.11; connect delay time 1;
  ipv4 { import all; export where proto = "s1"; import table on; }; }
protocol bgp b2 { local 127.0.0.2 as 65002; neighbor 127.0.0.1 as 65001; multihop;
  router id 192.0.2.12; connect delay time 1;
  ipv4 { table t2; import filter { if net = 10.1.0.0/24 then reject; accept; }; export all; }; }
"""

EXPECTED_ROUTES = {
    "s1": {"imported": 2, "filtered": 0, "exported": 0, "preferred": 2},
    "s2": {"imported": 3, "filtered": 0, "exported": 0, "preferred": 3},
    "b1": {"imported": 3, "filtered": 0, "exported": 2, "preferred": 3},
    "b2": {"imported": 1, "filtered": 0, "exported": 3, "preferred": 1},
}


async def test_protocols_readout_of_a_live_daemon(bird: Bird, client: BirdClient):
    """Two BGP sessions of one daemon peer with each other over 127.0.0.1/127.0.0.2."""
    peers = bird.write("peers.conf", BASE + PEERS)
    await client.configure(str(peers))
    deadline = time.monotonic() + 60
    while True:  # BIRD's answers: wait for Established and converged counts
        protos: dict[str, BirdProtocol] = {p.name: p for p in await client.protocols()}
        if all(protos[n].routes.get("ipv4") == r for n, r in EXPECTED_ROUTES.items()):
            break
        assert time.monotonic() < deadline, {n: (p.info, p.routes) for n, p in protos.items()}
        await asyncio.sleep(0.2)
    assert list(protos) == ["device1", "s1", "s2", "b1", "b2"]
    b1, b2 = protos["b1"], protos["b2"]
    assert (b1.proto, b1.table, b1.state, b1.info, b1.bgp_state) == (
        "BGP",
        None,
        "up",
        "Established",
        "Established",
    )
    assert (b1.neighbor, b1.neighbor_as, b1.local_as) == ("127.0.0.2", 65002, 65001)
    assert (b2.neighbor, b2.neighbor_as, b2.local_as) == ("127.0.0.1", 65001, 65002)
    assert b1.channels["ipv4"].filtered == 0 and b2.channels["ipv4"].filtered is None
    assert b1.channels["ipv4"].export_state == "READY" and b2.channels["ipv4"].table == "t2"
    assert b1.details["Session"] == "external multihop AS4"
    assert protos["s2"].table == "t2" and protos["device1"].routes == {}
    # timeformat "%s" per connection: Since is epoch seconds.
    assert all(p.since is not None and p.since.isdigit() for p in protos.values())
    assert abs(int(b1.since or 0) - time.time()) < 120
    # Pattern and name selection.
    assert [p.name for p in await client.protocols("b*")] == ["b1", "b2"]
    assert [p.name for p in await client.protocols_named("b*")] == ["b1", "b2"]
    # Taking a session down shows in the read-out, with the peer's reason as last error.
    assert (await client.command("disable b2")).texts(9) == ["b2: disabled"]
    deadline = time.monotonic() + 30
    while True:  # BIRD tears the session down (stop) and then retries it (start)
        b1, b2 = await client.protocols("b*")
        if b1.state == "start" and b2.state == "down":
            break
        assert time.monotonic() < deadline, (b1, b2)
        await asyncio.sleep(0.1)
    assert b1.bgp_state in ("Idle", "Active", "Connect") and b1.routes == {}
    assert b1.last_error == "Received: Administrative shutdown"
    assert b2.bgp_state == "Down" and b2.info == ""


# ------------------------------------------------ fake daemon edge cases


class FakeBird:
    """A scripted control socket: ``answer(conn_no, command)`` returns the reply lines,
    ``None`` to close the connection without answering, or ``[]`` to stay silent."""

    def __init__(
        self, path: Path, answer: Callable[[int, str], list[str] | None], backlog: int = 100
    ) -> None:
        self.path, self.answer, self.backlog = path, answer, backlog
        self.commands: list[tuple[int, str]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeBird:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path), backlog=self.backlog)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(self.writers)
        self.writers.append(writer)
        writer.write(b"0001 BIRD 3.3.2 ready.\n")
        while line := await reader.readline():
            cmd = line.decode().strip()
            self.commands.append((n, cmd))
            out = ["0000 "] if cmd.startswith("timeformat") else self.answer(n, cmd)
            if out is None:
                writer.close()
                return
            writer.write("".join(f"{x}\n" for x in out).encode())

    def push(self, conn_no: int, *lines: str) -> None:
        self.writers[conn_no].write("".join(f"{x}\n" for x in lines).encode())


async def until(cond: Callable[[], bool], limit: float = 5) -> None:
    """Wait (bounded) for the client's own reader task to react to what the fake sent."""
    async with asyncio.timeout(limit):
        while not cond():
            await asyncio.sleep(0.005)


STATUS = ["1000-BIRD 3.3.2", "1011-Router ID is 192.0.2.9", "0013 Daemon is up and running"]


async def test_fake_a_connection_dying_under_a_command_is_retried_once(tmp_path: Path):
    # Connection 0 answers once, then dies while handling the next command, as if
    # BIRD had been restarted between the two; connection 1 is the new daemon.
    def answer(n: int, cmd: str) -> list[str] | None:
        if n == 0 and sum(1 for c in fake.commands if c[0] == 0) > 2:
            return None
        return STATUS

    async with FakeBird(tmp_path / "s", answer) as fake, BirdClient(str(tmp_path / "s"), pool_size=1) as c:
        assert (await c.status()).router_id == "192.0.2.9"
        assert (await c.status()).router_id == "192.0.2.9"
        assert [n for n, cmd in fake.commands if cmd == "show status"] == [0, 0, 1]
        assert c.stats.discarded == 1 and c.stats.connects == 2


async def test_fake_connects_beyond_the_listen_backlog_are_retried(tmp_path: Path):
    """A full backlog makes a non-blocking unix connect fail with EAGAIN (BIRD's backlog is 8)."""
    async with (
        FakeBird(tmp_path / "s", lambda n, cmd: STATUS, backlog=1),
        BirdClient(str(tmp_path / "s"), pool_size=20, pool_size_max=20) as c,
    ):
        got = await asyncio.gather(*(c.status() for _ in range(20)))
        assert all(s.router_id == "192.0.2.9" for s in got)
        assert c.stats.connects == 20 and c.stats.discarded == 0


async def test_fake_a_fresh_connection_dying_means_unavailable(tmp_path: Path):
    async with FakeBird(tmp_path / "s", lambda n, cmd: None) as fake, BirdClient(str(tmp_path / "s")) as c:
        with pytest.raises(BirdUnavailable, match="lost the connection"):
            await c.status()
        assert [cmd for _, cmd in fake.commands] == ['timeformat "%s"', "show status"]


async def test_fake_unsolicited_reply_discards_the_connection(tmp_path: Path):
    async with FakeBird(tmp_path / "s", lambda n, cmd: STATUS) as fake, BirdClient(str(tmp_path / "s")) as c:
        await c.status()
        # Like the second reply of 'reload bgp NAME': nobody asked for it.
        fake.push(0, "0015-x: reloading", "0000 ")
        await until(lambda: c.stats.discarded == 1)  # the reader task notices on its own
        assert c.stats.idle == 0 and c.stats.open == 0
        assert (await c.status()).message == "Daemon is up and running"
        assert [n for n, cmd in fake.commands if cmd == "show status"] == [0, 1]


async def test_fake_async_message_on_an_idle_connection(tmp_path: Path):
    got: asyncio.Queue[str] = asyncio.Queue()
    async with (
        FakeBird(tmp_path / "s", lambda n, cmd: STATUS) as fake,
        BirdClient(str(tmp_path / "s"), on_async=got.put_nowait) as c,
    ):
        await c.status()
        fake.push(0, "+Config timeout expired, starting undo")
        assert await asyncio.wait_for(got.get(), 5) == "Config timeout expired, starting undo"
        assert (await c.status()).router_id == "192.0.2.9" and c.stats.discarded == 0


async def test_fake_garbage_and_stalls(tmp_path: Path):
    def answer(n: int, cmd: str) -> list[str] | None:
        if cmd == "show garbage":
            return ["1000-ok", "this is not framing"]
        if cmd == "show stall":
            return ["1007-half a reply"]
        return STATUS

    async with FakeBird(tmp_path / "s", answer), BirdClient(str(tmp_path / "s"), command_timeout=0.5) as c:
        with pytest.raises(moenet_bird.protocol.BirdProtocolError):
            await c.command("show garbage")
        with pytest.raises(BirdTimeout):
            await c.command("show stall")
        assert c.stats.discarded == 2
        assert (await c.status()).router_id == "192.0.2.9"


async def test_fake_writer_never_resends_a_configure_it_lost(tmp_path: Path):
    def answer(n: int, cmd: str) -> list[str] | None:
        if cmd == "configure status":
            return ["0003-Daemon is up and running", "0000 "]
        return None if cmd.startswith("configure") else STATUS

    async with FakeBird(tmp_path / "s", answer) as fake, BirdClient(str(tmp_path / "s")) as c:
        with pytest.raises(BirdUnavailable, match="outcome is unknown"):
            await c.configure("/etc/bird/bird.conf")
        assert [cmd for _, cmd in fake.commands if cmd.startswith("configure ")] == [
            "configure status",
            'configure "/etc/bird/bird.conf"',
        ]


async def test_fake_bad_greeting(tmp_path: Path):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"0016 Access restricted\n")
        await reader.read()

    server = await asyncio.start_unix_server(serve, str(tmp_path / "s"))
    try:
        async with BirdClient(str(tmp_path / "s")) as c:
            with pytest.raises(moenet_bird.protocol.BirdProtocolError, match="greeting"):
                await c.status()
    finally:
        server.close()
