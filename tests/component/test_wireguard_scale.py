"""200 userspace tunnels in one namespace, from the machine's default limits.

Past 128 userspace tunnels new wireguard-go daemons died: Debian's
``fs.inotify.max_user_instances`` is 128 and each daemon takes one instance.
The backend now raises it (host-wide, never lowers). This test starts from the
default (128; the original value is restored at the end), creates 200 tunnels
with bounded concurrency, and checks that every one exists with its daemon and
is listed by both ``observe`` (no per-tunnel round trip) and ``list``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from pathlib import Path

import pytest
from helpers.wireguard import RecordingKernel, TunKernelBackend
from moenet_wireguard import daemon, keys
from moenet_wireguard.config import Settings
from moenet_wireguard.uapi import socket_path
from moenet_wireguard.userspace import UserspaceTunnelBackend

from moenet_core import TunnelAddress, TunnelSpec

pytestmark = pytest.mark.netns

N = 200
CONCURRENCY = 16
INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


@pytest.fixture
def default_inotify_limit():
    """``max_user_instances`` at the kernel default (128) for the test; the
    original value is written back afterwards."""
    original = INSTANCES.read_text().strip()
    if int(original) > 128:
        INSTANCES.write_text("128\n")
    try:
        yield
    finally:
        INSTANCES.write_text(f"{original}\n")


async def test_200_userspace_tunnels_from_default_limits(netns, tmp_path, default_inotify_limit):
    ns = netns()
    key_file = str(tmp_path / "node.key")
    keys.write_key_file(key_file, keys.generate_private_key())
    peer = keys.generate_private_key().public_key()
    prefix = f"ws{uuid.uuid4().hex[:4]}-"
    names = [f"{prefix}{i}" for i in range(N)]
    settings = Settings(node_key_path=key_file, default_keepalive=0)
    backend = UserspaceTunnelBackend(settings)

    def spec(i: int) -> TunnelSpec:
        return TunnelSpec(
            name=names[i],
            private_key_file=key_file,
            listen_port=31000 + i,
            peer_public_key=peer,
            endpoint=f"192.0.2.{i % 250 + 1}:{21000 + i}",
            keepalive=0,
            owner="sessions",
            addresses=(
                TunnelAddress(
                    local=f"172.20.{i // 250}.{i % 250 + 1}/32", peer=f"172.21.{i // 250}.{i % 250 + 1}"
                ),
                TunnelAddress(local=f"fe80::{i + 1}/64"),
            ),
        )

    try:
        with ns.entered():
            await backend.start()  # makes room at start (and logs it)
            gate = asyncio.Semaphore(CONCURRENCY)

            async def create(i: int) -> bool:
                async with gate:
                    return await backend.ensure(spec(i))

            assert all(await asyncio.gather(*(create(i) for i in range(N))))
            assert int(INSTANCES.read_text()) > 128

            daemons = daemon.scan(settings.wireguard_go)
            assert sorted(n for n in daemons if n.startswith(prefix)) == sorted(names)

            reads = 0
            real_read = backend._read

            async def counting_read(name: str):
                nonlocal reads
                reads += 1
                return await real_read(name)

            backend._read = counting_read  # type: ignore[method-assign]
            observed = await backend.observe("sessions")
            assert reads == 0, "a no-op observation must not read devices one by one"
            deep = await backend.list("sessions")
            assert reads == N
            assert sorted(observed) == sorted(deep) == sorted(names)
            assert observed == deep
            assert all(s.owner == "sessions" and s.up and s.listen_port for s in deep.values())

            # A restarted agent: the first observe reads what it has no memory of.
            fresh = UserspaceTunnelBackend(settings)
            assert await fresh.observe("sessions") == deep
            assert not any(await asyncio.gather(*(fresh.ensure(spec(i)) for i in range(N))))

            async def remove(name: str) -> bool:
                async with gate:
                    return await backend.remove(name, owner="sessions")

            assert all(await asyncio.gather(*(remove(n) for n in names)))
            assert await backend.observe("sessions") == {}
    finally:
        for pid in ns.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                socket_path(name).unlink()


async def test_kernel_backend_observe_reads_no_device(netns, tmp_path):
    """The kernel backend's observe answers from one link dump and what it last
    wrote: no generic-netlink read; list reads every device."""
    ns = netns()
    key_file = str(tmp_path / "k")
    keys.write_key_file(key_file, keys.generate_private_key())
    kernel = RecordingKernel()
    settings = Settings(node_key_path=key_file, default_keepalive=0)
    backend = TunKernelBackend(settings, genl=kernel)
    spec = TunnelSpec(
        name="wgko0",
        private_key_file=key_file,
        listen_port=51820,
        peer_public_key=keys.generate_private_key().public_key(),
        endpoint="192.0.2.2:51820",
        keepalive=25,
        owner="mesh",
        addresses=(TunnelAddress(local="172.20.0.1", peer="172.20.0.2"), TunnelAddress(local="fe80::1/64")),
    )
    with ns.entered():
        assert await backend.ensure(spec)
        gets = len(kernel.gets)
        observed = await backend.observe("mesh")
        assert len(kernel.gets) == gets
        assert observed == await backend.list("mesh") and len(kernel.gets) == gets + 1
        _, kept = backend._confirmed["wgko0"]  # what observe answers from: no secret in memory
        assert kept.private_key is None and [p.preshared_key for p in kept.peers] == [None]
        assert observed["wgko0"].endpoint == "192.0.2.2:51820" and observed["wgko0"].keepalive == 25
        assert await backend.observe("sessions") == {}
        assert await backend.remove("wgko0", owner="mesh")
        assert await backend.observe() == {}
