"""wireguard-go processes: start, find, wait for, and clean up after them.

**Why wireguard-go is left to daemonise** (its default, no ``-f``): the tunnels
must outlive the agent, so that a restarted agent adopts them instead of tearing
them down (which would cost every peer a new handshake). The launcher creates
the TUN device and the UAPI socket, forks the daemon and exits 0, so when
:func:`start` returns both exist; a non-zero exit carries the reason on stderr.
The daemon runs in its own session (``start_new_session``), with /dev/null as
stdin/stdout/stderr (``LOG_LEVEL`` is removed from its environment: with it set,
the daemon would keep the launcher's output pipe, which we read, open).

**No pid files.** A daemon is found from ``/proc``: a live (not zombie) root
process whose executable (``/proc/<pid>/exe``, not its spoofable argv) is the
wireguard-go binary and whose last argument is the interface name, in the
caller's network namespace. (``SO_PEERCRED`` on the UAPI socket is no help: it names the
launcher, which has exited.) The process, not the socket, says whether a tunnel
is served: a killed daemon's socket can still accept for a moment.

**Stopping** is deleting the link: wireguard-go notices, closes its device,
removes its socket and exits. :func:`wait_exited` waits for that on a pidfd
(an event, not polling) and SIGKILLs a daemon that does not exit in time; a
socket left behind by a killed daemon is stale (nobody accepts on it) and is
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from .errors import DaemonError
from .journal import Journal

_BANNER_CHARS = set("┌─┐│└┘ ")


_LOG_PREFIX = re.compile(r"^[A-Z]+: \([^)]*\) \d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


def _clean_output(text: str) -> str:
    """wireguard-go's output without its 'use the kernel module' box and log prefixes."""
    lines = [ln.strip() for ln in text.splitlines()]
    keep = [
        _LOG_PREFIX.sub("", ln)
        for ln in lines
        if ln and not (ln[0] in _BANNER_CHARS and ln[-1] in _BANNER_CHARS)
    ]
    return "; ".join(keep)[:500] or "no message"


_DAEMON_ENV = frozenset({"WG_PROCESS_FOREGROUND", "WG_TUN_FD", "WG_UAPI_FD"})
"""What the launcher puts in the environment of the daemon it re-executes (never
passed to a launcher: with them it would not daemonise, or use foreign fds)."""


def is_launcher(pid: int, proc: Path = Path("/proc")) -> bool:
    """``pid`` (a wireguard-go process) is a launcher still starting, not a daemon:
    the launcher re-executes itself as the daemon with ``WG_PROCESS_FOREGROUND=1``
    in its environment, and the two are otherwise alike (binary, argv)."""
    try:
        env = (proc / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"WG_PROCESS_FOREGROUND=1" not in env


async def start(
    name: str,
    binary: str,
    timeout: float,
    journal: Journal,
    on_spawn: Callable[[int], object] | None = None,
) -> None:
    """Run ``wireguard-go <name>`` and wait for its launcher to exit.

    ``on_spawn(pid)`` is called once the launcher runs (the backend records it:
    :mod:`.intentlog`). The launcher is killed if the wait times out or the
    caller is cancelled.
    """
    env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL" and k not in _DAEMON_ENV}
    journal.record("daemon_start")
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,  # wireguard-go logs its errors here
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    except OSError as exc:
        raise DaemonError(f"cannot run {binary} for {name}: {exc.strerror or exc}") from None
    try:
        if on_spawn is not None:
            on_spawn(proc.pid)
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        raise DaemonError(f"{binary} {name} did not finish starting within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        reason = _clean_output(out.decode(errors="replace"))
        if "socket in use" in reason:
            reason += f" (another wireguard-go serves {name}, maybe in another network namespace)"
        raise DaemonError(f"{binary} {name} failed (exit {proc.returncode}): {reason}")


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def current_netns() -> tuple[int, int] | None:
    """The calling thread's network namespace (device and inode)."""
    return _netns_id("/proc/thread-self/ns/net")


def _live_state(stat: str) -> bool:
    return not stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


def executables(binary: str = "wireguard-go") -> frozenset[str]:
    """The real paths a wireguard-go daemon's ``/proc/<pid>/exe`` may resolve to:
    the configured ``binary`` and the ``wireguard-go`` on PATH (a configured
    wrapper that runs the one on PATH leaves a daemon of that one), symlinks
    resolved."""
    out = set()
    for candidate in dict.fromkeys((binary, "wireguard-go")):
        found = shutil.which(candidate)
        if found is not None:
            out.add(os.path.realpath(found))
    return frozenset(out)


def _root_uids(status: str) -> bool:
    """The ``Uid:`` line of ``/proc/<pid>/status`` says real, effective, saved and
    filesystem uid are all 0. (Not the owner of ``/proc/<pid>``: a process that
    makes itself non-dumpable gets a root-owned ``/proc`` entry.)"""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return line.split()[1:] == ["0", "0", "0", "0"]
    return False


def serves(
    pid: int,
    name: str,
    binary: str = "wireguard-go",
    *,
    any_netns: bool = False,
    proc: Path = Path("/proc"),
    exes: frozenset[str] | None = None,
) -> bool:
    """``pid`` is a live (not zombie) wireguard-go for ``name``, in the caller's
    network namespace unless ``any_netns``. A handful of small ``/proc`` reads.

    The command line alone proves nothing (any local user can start a process
    whose argv reads ``wireguard-go <name>``): the process must run as root and
    its executable (``/proc/<pid>/exe``) must be the wireguard-go binary
    (:func:`executables`; ``exes`` passes them precomputed). Only then is its last
    argument trusted to name the interface it serves."""
    entry = proc / str(pid)
    try:
        argv = (entry / "cmdline").read_bytes().split(b"\0")
        if argv and argv[-1] == b"":
            argv.pop()
        if len(argv) < 2 or argv[-1].decode(errors="replace") != name:
            return False
        if not _root_uids((entry / "status").read_text()):
            return False
        exe = os.readlink(entry / "exe").removesuffix(" (deleted)")  # an upgraded package
        if exe not in (exes if exes is not None else executables(binary)):
            return False
        if not _live_state((entry / "stat").read_text()):
            return False
    except (OSError, ValueError):
        return False  # exited while we looked (or a kernel thread: no exe)
    return any_netns or _netns_id(f"{entry}/ns/net") == _netns_id("/proc/thread-self/ns/net")


def find_daemons(
    name: str, binary: str = "wireguard-go", *, any_netns: bool = False, proc: Path = Path("/proc")
) -> list[int]:
    """Live wireguard-go processes serving ``name`` (in the caller's network
    namespace unless ``any_netns``): root processes of the wireguard-go binary,
    see :func:`serves`."""
    exes = executables(binary)
    return sorted(
        int(e.name)
        for e in proc.iterdir()
        if e.name.isdigit() and serves(int(e.name), name, binary, any_netns=any_netns, proc=proc, exes=exes)
    )


def scan(binary: str = "wireguard-go", *, proc: Path = Path("/proc")) -> dict[str, list[int]]:
    """All live wireguard-go daemons of the caller's network namespace, by the
    interface they serve: one pass over ``/proc`` (what :func:`find_daemons`
    costs for a single name), so a backend looking up many tunnels pays it once.
    A process whose executable is not wireguard-go is skipped after one
    ``readlink``; the rest is checked by :func:`serves`."""
    exes = executables(binary)
    out: dict[str, list[int]] = {}
    for e in proc.iterdir():
        if not e.name.isdigit():
            continue
        try:
            if os.readlink(e / "exe").removesuffix(" (deleted)") not in exes:
                continue
            argv = (e / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[-1] == b"":
            argv.pop()
        if len(argv) < 2:
            continue
        name = argv[-1].decode(errors="replace")
        if serves(int(e.name), name, binary, proc=proc, exes=exes):
            out.setdefault(name, []).append(int(e.name))
    for pids in out.values():
        pids.sort()
    return out


def udp_socket_inodes(port: int, net: Path = Path("/proc/thread-self/net")) -> set[int]:
    """Inodes of the UDP sockets (IPv4 and IPv6) bound to local ``port`` in the
    caller's network namespace, from ``/proc/thread-self/net/udp{,6}``."""
    out: set[int] = set()
    for table in ("udp", "udp6"):
        try:
            rows = (net / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            try:
                if len(cols) > 9 and int(cols[1].rpartition(":")[2], 16) == port:
                    out.add(int(cols[9]))
            except ValueError:
                continue
    return out


def port_holders(
    port: int, binary: str = "wireguard-go", *, proc: Path = Path("/proc"), net: Path | None = None
) -> dict[int, str]:
    """The wireguard-go daemons of the caller's network namespace with a UDP socket
    on ``port``: pid -> the interface each serves (empty when nobody, or only
    another program, holds it).

    Why: a wireguard-go daemon binds an *automatic* port (0: a random one from the
    ephemeral range) as soon as it starts, before it is configured, and that port
    can be the listen port another tunnel is about to take."""
    inodes = {f"socket:[{i}]" for i in udp_socket_inodes(port, net or Path("/proc/thread-self/net"))}
    out: dict[int, str] = {}
    if not inodes:
        return out
    for name, pids in scan(binary, proc=proc).items():
        for pid in pids:
            fd_dir = proc / str(pid) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target in inodes:
                    out[pid] = name
                    break
    return out


def _alive(pid: int) -> bool:
    try:
        return _live_state(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return False


async def _wait_pidfd(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a pidfd becomes readable then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        if not _alive(pid):  # exited (or a zombie) before the reader was armed
            return True
        async with asyncio.timeout(timeout):
            await done
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def wait_exited(
    pids: list[int], timeout: float, *, spare: Callable[[int], bool] | None = None
) -> list[int]:
    """Wait for ``pids`` to exit; SIGKILL those still running after ``timeout``,
    except those ``spare`` says to leave alone (asked only after the timeout: a
    wireguard-go launcher caught between its fork and the daemon's exec has become
    the daemon meanwhile, and killing it would take the tunnel down).
    Returns the pids that had to be killed."""
    killed = []
    for pid in pids:
        if await _wait_pidfd(pid, timeout) or (spare is not None and spare(pid)):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        await _wait_pidfd(pid, timeout)
    return killed


def socket_is_live(path: Path) -> bool:
    """Something accepts connections on the UNIX socket ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(str(path))
    except BlockingIOError:
        return True  # backlog full: someone is listening
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise
    finally:
        s.close()
    return True


def remove_stale_socket(path: Path, name: str, binary: str, journal: Journal) -> bool:
    """Remove ``path`` if no live wireguard-go for ``name`` exists, in any network
    namespace (left by a killed daemon). The process is what counts: a killed
    daemon's listening socket can still accept connections for a moment."""
    if not path.is_socket():
        return False
    if socket_is_live(path) and find_daemons(name, binary, any_netns=True):
        return False
    journal.record("socket_unlink")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
