"""The labs of contrib/lab for tests: loading them, a running lab per test, observations.

The two-node lab (``lab.py``: the :func:`lab` fixture and the observations below, moved
from ``test_lab_scenarios`` and ``test_lab_maintenance``) and the network lab
(``network.py``: :func:`running_netlab`, for ``test_lab_network`` and ``test_lab_exits``).
contrib/lab is no package: its modules are loaded from their files, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


LAB = ROOT / "contrib/lab/lab.py"
NETLAB = ROOT / "contrib/lab/network.py"


def _load(name: str, path: Path) -> Any:
    """The module at ``path`` as ``sys.modules[name]`` (loaded on first use)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_lab() -> Any:
    """contrib/lab/lab.py, the two-node lab."""
    return _load("moenet_lab", LAB)


_load_lab = load_lab  # the name test_lab_scenarios imports


def load_netlab() -> Any:
    """contrib/lab/network.py, the network lab."""
    return _load("moenet_netlab", NETLAB)


def _lab_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab needs root; its work directory goes under ``tmp_path`` (checked empty after
    teardown) and no ``MOENET_*`` of the caller's reaches its agents."""
    if os.geteuid() != 0:
        pytest.fail("the lab builds network namespaces and needs root")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for k in [k for k in os.environ if k.startswith("MOENET_")]:
        monkeypatch.delenv(k)


@contextlib.asynccontextmanager
async def running_netlab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> AsyncIterator[Any]:
    """A ``NetworkLab(**kw)``, up; torn down after, and then checked: nothing left
    behind, every agent exited 0."""
    _lab_env(tmp_path, monkeypatch)
    lab = load_netlab().NetworkLab(**kw)
    try:
        await lab.up()
        yield lab
    finally:
        # Shown by pytest for a failing test (and with -s): the times and each agent's log tail.
        print(lab.summary())
        for n in lab.nodes:
            if n.log_path.exists():
                tail = n.log_path.read_text(errors="replace").splitlines()[-30:]
                print(f"--- last lines of {n.name}'s agent log:\n" + "\n".join(tail))
        await lab.down()
    assert lab.leftovers == []
    assert all(n.agent_rc == 0 for n in lab.nodes), [(n.name, n.agent_rc) for n in lab.nodes]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
async def lab(tmp_path, monkeypatch):
    _lab_env(tmp_path, monkeypatch)
    mod = load_lab()
    lab = mod.Lab(timeout=30)
    try:
        await lab.up()
        n1, n2 = lab.nodes
        await asyncio.gather(lab.wait_active(n1, n2), lab.wait_active(n2, n1))
        await asyncio.gather(lab.wait_established(n1), lab.wait_established(n2))
        yield lab
    except BaseException:
        for n in lab.nodes:
            if n.log_path.exists():
                tail = n.log_path.read_text(errors="replace").splitlines()[-40:]
                print(f"--- last lines of {n.name}'s agent log:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        await lab.down()
    assert lab.leftovers == []
    assert list(tmp_path.iterdir()) == []


async def _run(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {text}")
    return text


async def bgp_protocols(lab, n) -> dict[str, dict[str, str]]:
    """``show protocols``: BGP protocol name -> {state, since, info}."""
    out: dict[str, dict[str, str]] = {}
    for line in (await lab.birdc(n, "show", "protocols")).splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[1] == "BGP":
            # Name Proto Table State Since... Info (since may be "date time")
            out[cols[0]] = {"state": cols[3], "since": " ".join(cols[4:-1]), "info": cols[-1]}
    return out


class Since(str):
    """A BIRD ``since`` (``HH:MM:SS.mmm``) that equals the same instant printed again.

    BIRD keeps monotonic time and converts it to wall time when it prints, so one
    unchanged state can read 1 ms apart between two ``show protocols``; a flap
    moves it by seconds (connect delay, hold time). Equal within 50 ms.
    """

    def _seconds(self) -> float | None:
        try:
            h, m, sec = self.split()[-1].split(":")
            return (int(h) * 60 + int(m)) * 60 + float(sec)
        except ValueError:
            return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return NotImplemented
        a, b = self._seconds(), Since(other)._seconds()
        if a is None or b is None:
            return str.__eq__(self, other)
        return abs(a - b) < 0.05

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = str.__hash__


async def bgp_since(lab, n) -> Since:
    protos = await bgp_protocols(lab, n)
    assert n.bgp_protocol in protos, protos
    p = protos[n.bgp_protocol]
    assert p["state"] == "up" and p["info"] == "Established", p
    return Since(p["since"])


async def links(n) -> list[dict[str, Any]]:
    return json.loads(await _run("ip", "-n", n.ns_name, "-j", "-d", "link", "show"))


async def tunnel(n) -> dict[str, Any] | None:
    """The node's session tunnel (by name), or None."""
    found = [lk for lk in await links(n) if lk.get("ifname") == n.interface]
    assert len(found) <= 1
    return found[0] if found else None


async def agent_status(n) -> dict[str, Any]:
    out = await _run(
        "ip", "netns", "exec", n.ns_name, "curl", "-sf", f"http://127.0.0.1:{n.api_port}/status"
    )  # fmt: skip
    return json.loads(out)


async def api(n, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Call node ``n``'s local API from inside its namespace (loopback: no token needed)."""
    args = ["ip", "netns", "exec", n.ns_name, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = await _run(*args, f"http://127.0.0.1:{n.api_port}{path}")
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text) if text.strip() else {}


async def _until(what: str, check, timeout: float) -> Any:
    """Bounded poll of kernel/BIRD state (no push interface): every 0.2 s up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.2)


async def imported(lab, n, other) -> dict[str, str]:
    """``n``'s BGP-learned routes for ``other``'s prefixes: prefix -> the route's ``show route all`` text."""
    out: dict[str, str] = {}
    for prefix in (other.prefix4, other.prefix6):
        text = await lab.birdc(n, "show", "route", "all", prefix, "protocol", n.bgp_protocol)
        if prefix in text:
            out[prefix] = text
    return out


async def metric(n, name: str, labels: str = "") -> float | None:
    """The value of ``name`` on ``n``'s /metrics (the first series whose labels
    contain ``labels``), or None."""
    text = await _run(
        "ip", "netns", "exec", n.ns_name, "curl", "-sf", f"http://127.0.0.1:{n.api_port}/metrics"
    )
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if (series == name and not labels) or (series.startswith(name + "{") and labels in series):
            return float(value)
    return None
