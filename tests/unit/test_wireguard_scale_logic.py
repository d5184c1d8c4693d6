"""The pieces behind 1 000 tunnels that need no kernel: the inotify room,
unresolved endpoints remembered, the fake's observe (the cheap rtnetlink
decoding is tested in ``test_rtnl.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from moenet_wireguard import limits
from moenet_wireguard.endpoints import EndpointBook, parse_endpoint
from moenet_wireguard.errors import DaemonError, EndpointError

from moenet_core import TunnelSpec
from moenet_core.testing import FakeTunnelBackend

# --------------------------------------------------------------- inotify room


class FakeHost:
    def __init__(self, tmp_path: Path, instances: int, watches: int, daemons: int) -> None:
        self.root = tmp_path / "inotify"
        self.root.mkdir()
        (self.root / "max_user_instances").write_text(f"{instances}\n")
        (self.root / "max_user_watches").write_text(f"{watches}\n")
        self.proc = tmp_path / "proc"
        self.proc.mkdir()
        self.exe = tmp_path / "wireguard-go"
        self.exe.write_text("")
        for pid in range(100, 100 + daemons):
            self.add(pid)
        self.logged: list[tuple] = []

    def add(self, pid: int) -> None:
        (self.proc / str(pid)).mkdir()
        (self.proc / str(pid) / "exe").symlink_to(self.exe)

    def instances(self) -> int:
        return int((self.root / "max_user_instances").read_text())

    def room(self) -> limits.InotifyRoom:
        return limits.InotifyRoom(
            lambda: frozenset({str(self.exe)}),
            lambda *a: self.logged.append(a),
            root=self.root,
            proc=self.proc,
        )


def test_inotify_limit_is_raised_for_the_daemons_and_logged(tmp_path):
    host = FakeHost(tmp_path, instances=128, watches=8192, daemons=120)
    room = host.room()
    room.reserve(1)
    assert host.instances() >= 120 + 1 + limits.OTHERS
    assert int((host.root / "max_user_watches").read_text()) > 8192
    assert host.logged and "max_user_instances" in host.logged[0][1]
    written = host.instances()
    for pid in range(300, 300 + 100):  # the room made lasts: no recount, no write
        room.reserve(1)
        host.add(pid)
    assert host.instances() == written and len(host.logged) == 2


def test_inotify_limit_is_never_lowered(tmp_path):
    host = FakeHost(tmp_path, instances=100000, watches=10**6, daemons=3)
    host.room().reserve(1)
    assert host.instances() == 100000 and host.logged == []


def test_unwritable_limit_names_the_number_needed(tmp_path, monkeypatch):
    host = FakeHost(tmp_path, instances=128, watches=10**6, daemons=200)

    def refuse(self, *a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(DaemonError, match=r"max_user_instances is 128 .* at least 329"):
        host.room().reserve(1)


# ------------------------------------------------------- unresolved endpoints


async def test_unresolved_name_is_remembered_and_retried():
    answer: list[str] = []

    async def resolver(host, port):
        if not answer:
            raise EndpointError(f"endpoint host {host!r} does not resolve")
        return answer

    book = EndpointBook(resolver)
    spec = parse_endpoint("later.test:51820")
    with pytest.raises(EndpointError, match=r"later\.test"):
        await book.lookup("wg0", spec)
    assert book.names() == ["wg0"] and book.get("wg0").candidates == ()
    with pytest.raises(EndpointError):
        await book.refresh("wg0")
    answer.append("192.0.2.7:51820")
    record, changed = await book.lookup("wg0", spec)  # retried, not cached empty
    assert record.candidates == ("192.0.2.7:51820",) and changed is True
    again, changed = await book.lookup("wg0", spec)
    assert again is record and changed is False


# ------------------------------------------------------------------- fakes


async def test_fake_tunnel_backend_journals_observe_as_its_own_read(tmp_path):
    fake = FakeTunnelBackend(check_keys=False)
    spec = TunnelSpec(
        name="wg0",
        private_key_file=str(tmp_path / "k"),
        listen_port=51820,
        peer_public_key="A" * 43 + "=",
        endpoint=None,
    )
    await fake.ensure(spec)
    assert await fake.observe() == await fake.list()
    assert [c.op for c in fake.calls] == ["ensure", "observe", "list"]
    assert await fake.observe("mesh") == {}
    fake.fail("observe", error="down")
    with pytest.raises(Exception, match="down"):
        await fake.observe()


# ------------------------------------------------------------ daemon lookup


def _fake_process(
    proc: Path, pid: int, exe: Path, argv: list[str], *, uid: str = "0", state: str = "S"
) -> None:
    entry = proc / str(pid)
    (entry / "ns").mkdir(parents=True)
    (entry / "exe").symlink_to(exe)
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (entry / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (entry / "stat").write_text(f"{pid} ({argv[0]}) {state} 1 1 1\n")
    (entry / "ns" / "net").symlink_to("/proc/thread-self/ns/net")


def test_one_proc_scan_finds_every_daemon_and_only_real_ones(tmp_path):
    from moenet_wireguard import daemon

    binary = tmp_path / "wireguard-go"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    other = tmp_path / "sleep"
    other.write_text("")
    proc = tmp_path / "proc"
    _fake_process(proc, 10, binary, ["wireguard-go", "wg0"])
    _fake_process(proc, 11, binary, ["wireguard-go", "wg1"])
    _fake_process(proc, 12, other, ["wireguard-go", "wg2"])  # argv spoofed: not the binary
    _fake_process(proc, 13, binary, ["wireguard-go", "wg3"], uid="1000")  # not root
    _fake_process(proc, 14, binary, ["wireguard-go", "wg4"], state="Z")  # a zombie
    assert daemon.scan(str(binary), proc=proc) == {"wg0": [10], "wg1": [11]}


def test_daemon_lookups_share_one_scan(monkeypatch):
    from moenet_wireguard import daemon
    from moenet_wireguard.userspace import UserspaceTunnelBackend

    running = {f"wg{i}": [1000 + i] for i in range(100)}
    scans = []

    def scan(binary):
        scans.append(binary)
        return {k: list(v) for k, v in running.items()}

    monkeypatch.setattr(daemon, "scan", scan)
    monkeypatch.setattr(daemon, "serves", lambda pid, name, *a, **k: running.get(name) == [pid])
    backend = UserspaceTunnelBackend()
    assert [backend._daemon(f"wg{i}") for i in range(100)] == [1000 + i for i in range(100)]
    assert len(scans) == 1
    assert backend._daemon("wg7") == 1007 and len(scans) == 1  # remembered: no scan
    assert backend._daemon("gone") is None and len(scans) == 2  # "none" is believed only from a new scan
    del running["wg8"]
    assert backend._daemon("wg8") is None and len(scans) == 3
