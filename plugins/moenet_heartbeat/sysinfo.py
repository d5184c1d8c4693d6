"""Facts about the node for the heartbeat, read from /proc and /sys.

Every reader takes the root to read from, so tests give it a fabricated tree.
Each returns a safe default when a file is missing or malformed: a heartbeat
with one unknown field is better than no heartbeat.
"""

from __future__ import annotations

import os
from pathlib import Path

#: TCP state code for ESTABLISHED in /proc/net/tcp.
TCP_ESTABLISHED = "01"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def kernel(proc: Path = Path("/proc")) -> str:
    """The kernel release (``uname -r``)."""
    text = (_read(proc / "sys/kernel/osrelease") or "").strip()
    return text or os.uname().release


def load_average(proc: Path = Path("/proc")) -> str:
    """``"0.10 0.20 0.30"`` (1, 5 and 15 minutes), the format the Go agent sent."""
    text = _read(proc / "loadavg")
    parts = text.split() if text else []
    if len(parts) >= 3:
        try:
            return " ".join(f"{float(p):.2f}" for p in parts[:3])
        except ValueError:
            pass
    return "0.00 0.00 0.00"


def uptime(proc: Path = Path("/proc")) -> int:
    """Seconds since boot."""
    text = _read(proc / "uptime")
    try:
        return int(float(text.split()[0])) if text else 0
    except (ValueError, IndexError, OverflowError):  # OverflowError: "inf"
        return 0


def physical_interfaces(sys_net: Path = Path("/sys/class/net")) -> list[str] | None:
    """Interfaces backed by a device (not lo, tunnels, veth, dummy, bridges).

    Counting only these keeps tunnel traffic from being counted twice (once on
    the tunnel, once on the uplink carrying it), which the Go agent did.
    Returns None when /sys is not readable.
    """
    try:
        names = sorted(p.name for p in sys_net.iterdir())
    except OSError:
        return None
    return [n for n in names if (sys_net / n / "device").exists()]


def traffic(proc: Path = Path("/proc"), interfaces: list[str] | None = None) -> tuple[int, int]:
    """(tx, rx) byte totals since boot over ``interfaces`` (all but lo if None)."""
    text = _read(proc / "net/dev")
    tx = rx = 0
    if not text:
        return 0, 0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        if not rest or name == "lo" or (interfaces is not None and name not in interfaces):
            continue
        fields = rest.split()
        if len(fields) < 9:
            continue
        try:
            rx += int(fields[0])
            tx += int(fields[8])
        except ValueError:
            continue
    return tx, rx


def _snmp_value(text: str, table: str, field: str) -> int | None:
    """A value from /proc/net/snmp (a header line and a value line per table)."""
    lines = [line.split() for line in text.splitlines() if line.startswith(table + ":")]
    if len(lines) < 2 or field not in lines[0]:
        return None
    try:
        return int(lines[1][lines[0].index(field)])
    except (ValueError, IndexError):
        return None


def _sockstat_inuse(text: str, proto: str) -> int | None:
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == [proto + ":"] and "inuse" in fields:
            try:
                return int(fields[fields.index("inuse") + 1])
            except (ValueError, IndexError):
                return None
    return None


def socket_counts(proc: Path = Path("/proc")) -> tuple[int, int]:
    """(established TCP connections, UDP sockets), IPv4 and IPv6 together.

    Read from the kernel's counters (``Tcp: CurrEstab`` in /proc/net/snmp, the
    ``UDP``/``UDP6`` ``inuse`` lines of sockstat): reading /proc/net/tcp walks
    the whole connection hash table, which costs milliseconds even when it is
    empty and far more on a busy router. Falls back to counting the socket
    tables when the counters are missing.
    """
    snmp = _read(proc / "net/snmp") or ""
    tcp = _snmp_value(snmp, "Tcp", "CurrEstab")
    udp4 = _sockstat_inuse(_read(proc / "net/sockstat") or "", "UDP")
    udp6 = _sockstat_inuse(_read(proc / "net/sockstat6") or "", "UDP6")
    if tcp is None:
        tcp = _count_rows(proc, ("tcp", "tcp6"), state=TCP_ESTABLISHED)
    udp = (
        (udp4 or 0) + (udp6 or 0)
        if udp4 is not None or udp6 is not None
        else _count_rows(proc, ("udp", "udp6"))
    )
    return tcp, udp


def _count_rows(proc: Path, tables: tuple[str, ...], state: str | None = None) -> int:
    count = 0
    for name in tables:
        text = _read(proc / "net" / name)
        for line in (text or "").splitlines()[1:]:
            fields = line.split()
            if not fields:
                continue
            if state is None or (len(fields) > 3 and fields[3] == state):
                count += 1
    return count
