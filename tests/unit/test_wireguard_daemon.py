"""Issue 14, item 10: a wireguard-go daemon is recognised by what a local user
cannot fake, its executable (``/proc/<pid>/exe``) and its uid (0), not by its
command line.

On main at 0e980bb a process whose argv read ``wireguard-go dn42x`` counted as the
daemon serving ``dn42x``: the agent then took a dead tunnel for a served one (and
never repaired it), or SIGKILLed that user's process when it removed the tunnel.
The imposters here are python processes with a spoofed argv (``exec -a``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moenet_wireguard import daemon

PYTHON = os.path.realpath(sys.executable)
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")
SLEEP = "import time; time.sleep(60)"
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (reads other users' /proc/<pid>/exe)")


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _spawn(argv0: str, ifname: str) -> subprocess.Popen[bytes]:
    """``python -c <sleep> <ifname>`` running as root with ``argv0`` as argv[0]
    (bash's ``exec -a``). Returns once the exec has happened."""
    script = 'exec -a "$1" "$2" -I -S -c "$3" "$4"'
    proc = subprocess.Popen(
        ["bash", "-c", script, "bash", argv0, PYTHON, SLEEP, ifname],
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10  # waiting on an external process's exec
    while _argv(proc.pid)[:1] != [argv0]:
        assert time.monotonic() < deadline, f"imposter never exec'd: {_argv(proc.pid)}"
        time.sleep(0.01)
    return proc


@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv0: str, ifname: str) -> int:
        proc = _spawn(argv0, ifname)
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def spawn_bash() -> Iterator[object]:
    """``bash -c 'sleep 60; :' <ifname>`` (bash stays the process: the sleep is
    not its last command), as ``uid`` when given."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(ifname: str, *, uid: int | None = None) -> int:
        def drop() -> None:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        proc = subprocess.Popen(
            [BASH, "-c", "sleep 60; :", ifname], cwd="/", preexec_fn=drop, stdin=subprocess.DEVNULL
        )  # Popen returns once the exec has happened
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_imposter_with_a_wireguard_go_command_line_is_not_a_daemon(spawn) -> None:
    """argv ``wireguard-go ... dn42x`` from a root python: the executable gives it away."""
    pid = spawn("wireguard-go", "dn42x")
    assert _argv(pid)[0] == "wireguard-go" and _argv(pid)[-1] == "dn42x"
    assert not daemon.serves(pid, "dn42x")
    assert not daemon.serves(pid, "dn42x", "/usr/bin/wireguard-go", any_netns=True)
    assert pid not in daemon.find_daemons("dn42x", any_netns=True)


def test_an_imposter_naming_the_full_path_is_not_a_daemon_either(spawn) -> None:
    pid = spawn("/usr/bin/wireguard-go", "dn42x")
    assert not daemon.serves(pid, "dn42x", "/usr/bin/wireguard-go")


def test_the_executable_counts_and_it_must_run_as_root(spawn_bash) -> None:
    """With the "binary" set to bash (standing in for a real wireguard-go), a root
    process of it is recognised; the same executable run by another user is not."""
    root = spawn_bash("dn42y")
    other = spawn_bash("dn42y", uid=NOBODY)
    assert daemon.serves(root, "dn42y", BASH)
    assert not daemon.serves(other, "dn42y", BASH)
    found = daemon.find_daemons("dn42y", BASH, any_netns=True)
    assert root in found and other not in found
    assert not daemon.serves(root, "dn42z", BASH)  # the interface is still the last argument


def test_a_non_dumpable_process_owned_by_root_in_proc_is_judged_by_its_uids(tmp_path: Path) -> None:
    """A process can make its ``/proc/<pid>`` root-owned (``PR_SET_DUMPABLE`` 0);
    the uids in ``status`` still say who it is. A synthetic /proc entry."""
    entry = tmp_path / "4242"
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"wireguard-go\0dn42x\0")
    (entry / "stat").write_text("4242 (wireguard-go) S 1 4242 4242 0 -1\n")
    (entry / "exe").symlink_to(PYTHON)
    exes = frozenset({PYTHON})
    (entry / "status").write_text("Name:\twireguard-go\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    assert not daemon.serves(4242, "dn42x", proc=tmp_path, exes=exes, any_netns=True)
    (entry / "status").write_text("Name:\twireguard-go\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    assert daemon.serves(4242, "dn42x", proc=tmp_path, exes=exes, any_netns=True)
    assert daemon.find_daemons("dn42x", PYTHON, proc=tmp_path, any_netns=True) == [4242]


def test_a_daemon_whose_binary_was_upgraded_is_still_recognised(tmp_path: Path) -> None:
    """``exe`` reads ``<path> (deleted)`` after a package upgrade replaced the file."""
    entry = tmp_path / "7"
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"wireguard-go\0wg7\0")
    (entry / "stat").write_text("7 (wireguard-go) S 1 7 7 0 -1\n")
    (entry / "status").write_text("Uid:\t0\t0\t0\t0\n")
    (entry / "exe").symlink_to(f"{PYTHON} (deleted)")
    assert daemon.serves(7, "wg7", proc=tmp_path, exes=frozenset({PYTHON}), any_netns=True)


def _udp_row(local: str, inode: int) -> str:
    return f"  12: {local} 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 {inode} 2 0 0\n"


def test_the_daemon_holding_a_udp_port_is_found_by_its_socket(tmp_path: Path) -> None:
    """wireguard-go binds an automatic port as it starts: the backend must tell
    which daemon sits on a listen port it needs. Synthetic /proc (daemons, their
    fds) and /proc/net/udp{,6} (52001 = 0xCB21 over IPv4, 52002 = 0xCB22 over IPv6)."""
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    )
    net = tmp_path / "net"
    net.mkdir()
    (net / "udp").write_text(header + _udp_row("00000000:CB21", 777))
    (net / "udp6").write_text(header + _udp_row("00000000000000000000000000000000:CB22", 888))
    proc = tmp_path / "proc"
    for pid, ifname, inode in ((31, "wga", 777), (32, "wgb", 888), (33, "wgc", 999)):
        entry = proc / str(pid)
        (entry / "fd").mkdir(parents=True)
        (entry / "ns").mkdir()
        (entry / "cmdline").write_bytes(f"wireguard-go\0{ifname}\0".encode())
        (entry / "stat").write_text(f"{pid} (wireguard-go) S 1 {pid} {pid} 0 -1\n")
        (entry / "status").write_text("Uid:\t0\t0\t0\t0\n")
        (entry / "exe").symlink_to(PYTHON)
        (entry / "ns" / "net").symlink_to("/proc/thread-self/ns/net")  # the caller's namespace
        (entry / "fd" / "3").symlink_to("/dev/null")
        (entry / "fd" / "7").symlink_to(f"socket:[{inode}]")
    assert daemon.udp_socket_inodes(52001, net) == {777}
    assert daemon.udp_socket_inodes(52002, net) == {888}
    assert daemon.udp_socket_inodes(52003, net) == set()
    assert daemon.port_holders(52001, PYTHON, proc=proc, net=net) == {31: "wga"}
    assert daemon.port_holders(52002, PYTHON, proc=proc, net=net) == {32: "wgb"}
    assert daemon.port_holders(52003, PYTHON, proc=proc, net=net) == {}
