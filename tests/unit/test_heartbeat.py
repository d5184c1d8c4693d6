"""The heartbeat plugin: the /proc readers, the payload, and the task end to end."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import moenet_heartbeat
import pytest
from moenet_heartbeat import sysinfo

import moenet_core
from moenet_core import hookimpl

T = TypeVar("T")

TOKEN = "test-token"

# ----------------------------------------------------------- a fabricated /proc

KERNEL = "6.1.0-18-amd64"

# /proc/net/dev as the kernel prints it (net/core/net-procfs.c, dev_seq_printf_stats).
DEV_HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|"
    "bytes    packets errs drop fifo colls carrier compressed\n"
)
DEV_LINE = "%6s:%8d %7d %4d %4d %4d %5d %10d %9d %8d %7d %4d %4d %4d %5d %7d %10d\n"

# name: (rx bytes, tx bytes)
TRAFFIC = {
    "lo": (2584951, 2584951),
    "eth0": (123456789, 987654321),
    "wg0": (5000, 7000),
    "dn42-x": (300, 400),
}

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
TCP6_HEADER = (
    "  sl  local_address                         remote_address                        "
    "st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)
UDP_HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode "
    "ref pointer drops\n"
)
V4_LOCAL, V4_REMOTE = "0100007F:0CEA", "0100007F:B1AD"
V6_LOCAL = "00000000000000000000000001000000:00B3"
V6_REMOTE = "0000000000000000FFFF00000100007F:D2F0"


def sock_line(sl: int, local: str, remote: str, state: str) -> str:
    return (
        f"{sl:4d}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 "
        f"{10000 + sl} 1 0000000000000000 100 0 0 10 0\n"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_proc(root: Path) -> Path:
    """A /proc with 3 established TCP connections (2 v4, 1 v6) and 3 UDP sockets."""
    write(root / "sys/kernel/osrelease", KERNEL + "\n")
    write(root / "loadavg", "0.15 0.10 0.05 1/234 5678\n")
    write(root / "uptime", "12345.67 890.12\n")
    dev = DEV_HEADER
    for name, (rx, tx) in TRAFFIC.items():
        dev += DEV_LINE % (name, rx, 1000, 0, 0, 0, 0, 0, 0, tx, 2000, 0, 0, 0, 0, 0, 0)
    write(root / "net/dev", dev)
    write(
        root / "net/tcp",
        TCP_HEADER
        + sock_line(0, "00000000:00B3", "00000000:0000", "0A")  # LISTEN (bird's BGP port)
        + sock_line(1, V4_LOCAL, V4_REMOTE, "01")
        + sock_line(2, V4_LOCAL, "0100007F:B1AE", "01")
        + sock_line(3, V4_LOCAL, "0100007F:B1AF", "06"),  # TIME_WAIT
    )
    write(
        root / "net/tcp6",
        TCP6_HEADER
        + sock_line(0, "00000000000000000000000000000000:00B3", "0" * 32 + ":0000", "0A")
        + sock_line(1, V6_LOCAL, V6_REMOTE, "01")
        + sock_line(2, V6_LOCAL, V6_REMOTE.replace("D2F0", "D2F1"), "06"),
    )
    write(
        root / "net/udp",
        UDP_HEADER
        + sock_line(0, "00000000:0202", "00000000:0000", "07")
        + sock_line(1, "0100007F:0035", "00000000:0000", "07"),
    )
    write(root / "net/udp6", TCP6_HEADER + sock_line(0, "0" * 32 + ":CA6C", "0" * 32 + ":0000", "07"))
    return root


def make_sys_net(root: Path) -> Path:
    """/sys/class/net where only eth0 is backed by a device."""
    for name in ("lo", "eth0", "wg0", "dn42-x"):
        (root / name).mkdir(parents=True)
        (root / name / "operstate").write_text("up\n")
    (root / "eth0" / "device").mkdir()
    return root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return make_proc(tmp_path / "proc")


# ------------------------------------------------------------- sysinfo readers


def test_readers_on_a_fabricated_proc(proc):
    assert sysinfo.kernel(proc) == KERNEL
    assert sysinfo.load_average(proc) == "0.15 0.10 0.05"
    assert sysinfo.uptime(proc) == 12345
    assert sysinfo.socket_counts(proc) == (3, 3)  # ESTABLISHED only, v4 + v6; every UDP row


def test_traffic_sums_the_chosen_interfaces_and_never_lo(proc):
    eth0_rx, eth0_tx = TRAFFIC["eth0"]
    assert sysinfo.traffic(proc, ["eth0"]) == (eth0_tx, eth0_rx)
    assert sysinfo.traffic(proc, ["eth0", "lo"]) == (eth0_tx, eth0_rx)
    assert sysinfo.traffic(proc, ["wg0", "dn42-x"]) == (7000 + 400, 5000 + 300)
    assert sysinfo.traffic(proc, ["nonexistent"]) == (0, 0)
    everything_but_lo = [v for k, v in TRAFFIC.items() if k != "lo"]
    assert sysinfo.traffic(proc, None) == (
        sum(tx for _, tx in everything_but_lo),
        sum(rx for rx, _ in everything_but_lo),
    )


def test_physical_interfaces_are_those_with_a_device(tmp_path):
    assert sysinfo.physical_interfaces(make_sys_net(tmp_path / "net")) == ["eth0"]
    assert sysinfo.physical_interfaces(tmp_path / "missing") is None


def test_missing_files_give_the_defaults(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sysinfo.kernel(empty) == os.uname().release
    assert sysinfo.load_average(empty) == "0.00 0.00 0.00"
    assert sysinfo.uptime(empty) == 0
    assert sysinfo.traffic(empty, None) == (0, 0)
    assert sysinfo.socket_counts(empty) == (0, 0)


@pytest.mark.parametrize(
    ("osrelease", "loadavg", "uptime"),
    [
        ("", "", ""),
        ("  \n", "0.15 0.10\n", "\n"),
        ("\n", "high medium low 1/2 3\n", "forever 1.0\n"),
        ("\n", "0.1 0.2 nope 1/2 3\n", "inf 1.0\n"),
    ],
)
def test_malformed_files_give_the_defaults(tmp_path, osrelease, loadavg, uptime):
    write(tmp_path / "sys/kernel/osrelease", osrelease)
    write(tmp_path / "loadavg", loadavg)
    write(tmp_path / "uptime", uptime)
    assert sysinfo.kernel(tmp_path) == os.uname().release
    assert sysinfo.load_average(tmp_path) == "0.00 0.00 0.00"
    assert sysinfo.uptime(tmp_path) == 0


def test_malformed_net_files_skip_bad_lines(tmp_path):
    eth0_rx, eth0_tx = TRAFFIC["eth0"]
    write(
        tmp_path / "net/dev",
        DEV_HEADER
        + "garbage without a colon\n"
        + "  wg0: 1 2 3\n"  # too few columns
        + "  dn42-x: x 0 0 0 0 0 0 0 y 0 0 0 0 0 0 0\n"  # not numbers
        + DEV_LINE % ("eth0", eth0_rx, 1, 0, 0, 0, 0, 0, 0, eth0_tx, 1, 0, 0, 0, 0, 0, 0),
    )
    write(tmp_path / "net/tcp", TCP_HEADER + "   0: short\n\n" + sock_line(1, V4_LOCAL, V4_REMOTE, "01"))
    write(tmp_path / "net/udp", "")  # not even a header
    assert sysinfo.traffic(tmp_path, None) == (eth0_tx, eth0_rx)
    assert sysinfo.socket_counts(tmp_path) == (1, 0)


# ------------------------------------------------------------------ end to end


def node_config(cp_url: str, **extra):
    cfg = {"node": {"name": "jp1", "id": 1}, "controlPlane": {"url": cp_url, "token": TOKEN}}
    cfg.update(extra)
    return cfg


def heartbeat_config(cp_url: str, proc: Path, **extra):
    # publicAddresses: off, so the host's own addresses do not show (tested in test_heartbeat_public).
    return node_config(
        cp_url,
        heartbeat={"procRoot": str(proc), "interfaces": ["eth0"], "publicAddresses": False},
        **extra,
    )


def status_of(request) -> dict:
    return request.body["status"]


async def test_heartbeat_reports_the_fabricated_proc(fake_cp, agent_harness, manual_clock, proc):
    plugins = [("heartbeat", moenet_heartbeat)]
    async with agent_harness(heartbeat_config(fake_cp.url, proc), plugins=plugins, clock=manual_clock) as h:
        [req] = await fake_cp.wait_for("heartbeat")  # the initial run, at start
        await h.agent.set_maintenance(True, "x")
        event = await h.agent.scheduler.run_now("heartbeat")
    assert req.method == "POST" and req.node == "jp1" and req.authorized
    assert req.body["node_id"] == "jp1"
    assert req.body["agent_version"] == moenet_core.__version__
    eth0_rx, eth0_tx = TRAFFIC["eth0"]
    assert status_of(req) == {
        "version": moenet_core.__version__,
        "kernel": KERNEL,
        "loadAvg": "0.15 0.10 0.05",
        "uptime": 12345,
        "timestamp": int(manual_clock.time()),
        "tx": eth0_tx,
        "rx": eth0_rx,
        "tcp": 3,
        "udp": 3,
        "maintenance": False,
        "health": {"verdict": "healthy", "reasons": [], "checks": []},
        "publicIpv4": None,
        "publicIpv6": None,
    }
    assert event.ok, event.error
    assert event.result == {"sent": True, "fields": sorted(status_of(req))}
    [_, second] = fake_cp.calls("heartbeat")
    assert status_of(second)["maintenance"] is True


# ------------------------------------------------------- fields from other plugins

MESH_KEY = "bWVzaC1wdWJsaWMta2V5LWJhc2U2NC1lbmNvZGVkMDA="
CORE_FIELDS = {
    "version", "kernel", "loadAvg", "uptime", "timestamp", "tx", "rx", "tcp", "udp", "maintenance", "health",
    "publicIpv4", "publicIpv6",
}  # fmt: skip


class Offers:
    """A plugin offering ``fields`` to the heartbeat (or raising ``error``)."""

    def __init__(self, fields=None, *, error: Exception | None = None) -> None:
        self.fields, self.error = fields, error

    @hookimpl
    def moenet_heartbeat_fields(self):
        if self.error is not None:
            raise self.error
        return self.fields


async def first_heartbeat(fake_cp, agent_harness, proc, **others):
    """Start an agent with the heartbeat and the plugins ``others`` (name=object);
    returns the first heartbeat's status and the plugin records."""
    plugins = [("heartbeat", moenet_heartbeat), *others.items()]
    async with agent_harness(heartbeat_config(fake_cp.url, proc), plugins=plugins) as h:
        [req] = await fake_cp.wait_for("heartbeat")
    return status_of(req), h.agent.pm.records


async def test_plugin_fields_are_merged(fake_cp, agent_harness, proc):
    status, _ = await first_heartbeat(fake_cp, agent_harness, proc, mesh=Offers({"meshPublicKey": MESH_KEY}))
    assert status["meshPublicKey"] == MESH_KEY
    assert status["tcp"] == 3  # the core fields are still there


async def test_a_key_offered_by_two_plugins_is_dropped(fake_cp, agent_harness, proc):
    status, _ = await first_heartbeat(
        fake_cp,
        agent_harness,
        proc,
        a=Offers({"meshPublicKey": MESH_KEY, "region": "ap-east"}),
        b=Offers({"meshPublicKey": "other"}),
        c=Offers({"meshPublicKey": "third"}),
    )
    assert set(status) == CORE_FIELDS | {"region"}
    assert status["region"] == "ap-east"


async def test_plugins_cannot_override_core_fields(fake_cp, agent_harness, proc):
    status, _ = await first_heartbeat(
        fake_cp, agent_harness, proc, sneaky=Offers({"version": "9.9.9", "tcp": -1, "extra": 1})
    )
    assert status["version"] == moenet_core.__version__
    assert status["tcp"] == 3
    assert status["extra"] == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"weird": object()},
        {"weird": {1, 2}},
        {"weird": math.nan},  # json.dumps writes NaN, which is not JSON: a strict CP rejects the POST
        {("not", "a", "string"): "value"},
    ],
    ids=["object", "set", "nan", "tuple-key"],
)
async def test_non_json_values_are_skipped(fake_cp, agent_harness, proc, bad):
    status, _ = await first_heartbeat(fake_cp, agent_harness, proc, odd=Offers({**bad, "fine": "yes"}))
    assert set(status) == CORE_FIELDS | {"fine"}
    assert status["fine"] == "yes"


async def test_a_mapping_that_is_not_a_dict_is_accepted_and_a_list_is_not(fake_cp, agent_harness, proc):
    status, _ = await first_heartbeat(
        fake_cp,
        agent_harness,
        proc,
        proxy=Offers(MappingProxyType({"meshPublicKey": MESH_KEY})),
        listy=Offers([("region", "ap-east")]),
    )
    assert set(status) == CORE_FIELDS | {"meshPublicKey"}
    assert status["meshPublicKey"] == MESH_KEY


async def test_a_raising_plugin_does_not_stop_the_heartbeat(fake_cp, agent_harness, proc):
    status, records = await first_heartbeat(
        fake_cp,
        agent_harness,
        proc,
        broken=Offers(error=RuntimeError("no key yet")),
        mesh=Offers({"meshPublicKey": MESH_KEY}),
    )
    assert status["meshPublicKey"] == MESH_KEY
    assert records["broken"].runtime_errors >= 1
    assert records["broken"].last_runtime_error == "moenet_heartbeat_fields: RuntimeError: no key yet"
    assert records["heartbeat"].status == "active"


# -------------------------------------------------------------- CP failures

#: The longest CP retry backoff with the default policy (1, 2, 4 s, +10 % jitter).
#: The other clock sleeps around a heartbeat are longer (the 30 s run timeout
#: and the 30 s schedule) and must not be jumped over while a request is in flight.
MAX_BACKOFF = 4.4


async def test_cp_failure_fails_the_run_and_the_schedule_goes_on(fake_cp, agent_harness, manual_clock, proc):
    # The breaker is not what this test is about: keep it closed through 10 failures.
    cfg = heartbeat_config(fake_cp.url, proc)
    cfg["controlPlane"]["breakerFailureThreshold"] = 50
    plugins = [("heartbeat", moenet_heartbeat)]
    async with agent_harness(cfg, plugins=plugins, clock=manual_clock) as h:
        await fake_cp.wait_for("heartbeat")
        fake_cp.fail("heartbeat", times=10, status=500)

        # 1 try + 3 retries per run: two runs fail, using up 8 of the 10 failures.
        for _ in range(2):
            event = await asyncio.wait_for(
                manual_clock.drive(h.agent.scheduler.run_now("heartbeat"), max_jump=MAX_BACKOFF), 10
            )
            assert not event.ok
            assert "control plane unavailable after 4 attempt(s): HTTP 500" in event.error
        assert len(fake_cp.calls("heartbeat")) == 1 + 8

        # The third run gets through on its third attempt.
        event = await asyncio.wait_for(
            manual_clock.drive(h.agent.scheduler.run_now("heartbeat"), max_jump=MAX_BACKOFF), 10
        )
        assert event.ok, event.error
        assert len(fake_cp.calls("heartbeat")) == 1 + 8 + 3

        # And the task is still on its schedule: 30 s (+ up to 10 % jitter) later it runs by itself.
        [task] = h.agent.scheduler.status()
        assert (task["runs"], task["failures"]) == (4, 2)
        assert task["next_run"] is not None
        await manual_clock.advance(30 * 1.1)
        await fake_cp.wait_for("heartbeat", 1 + 8 + 3 + 1)
    [_, *failed, good, scheduled] = fake_cp.calls("heartbeat")
    assert len(failed) == 10
    assert status_of(scheduled)["timestamp"] > status_of(good)["timestamp"]


# -------------------------------------------------------------------- config


async def test_invalid_section_fails_the_plugin_naming_the_key(fake_cp, agent_harness):
    cfg = node_config(fake_cp.url, heartbeat={"interfaces": "eth0"})
    async with agent_harness(cfg, plugins=[("heartbeat", moenet_heartbeat)]) as h:
        record = h.agent.pm.records["heartbeat"]
        tasks = h.agent.status()["tasks"]
    assert record.status == "failed"
    assert "heartbeat.interfaces" in record.error
    assert record.error == 'config: heartbeat.interfaces: expected a list, got "eth0"'
    assert tasks == []
    assert fake_cp.calls("heartbeat") == []


def test_socket_counts_prefer_the_kernel_counters(tmp_path):
    # /proc/net/snmp and sockstat are O(1); the socket tables are only the fallback.
    write(
        tmp_path / "net/snmp",
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens CurrEstab InSegs\n"
        "Tcp: 1 200 120000 -1 4458 17 62179\n",
    )
    write(
        tmp_path / "net/sockstat",
        "sockets: used 21\nTCP: inuse 20 orphan 0 tw 3 alloc 21 mem 1\nUDP: inuse 4 mem 0\n",
    )
    write(tmp_path / "net/sockstat6", "TCP6: inuse 2\nUDP6: inuse 5\n")
    write(tmp_path / "net/tcp", TCP_HEADER + sock_line(0, V4_LOCAL, V4_REMOTE, "01"))  # ignored
    assert sysinfo.socket_counts(tmp_path) == (17, 9)
