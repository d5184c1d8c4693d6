"""End-to-end failure scenarios on the two-node lab (contrib/lab/lab.py), issue 5's "Tests (in CI)":
a session BIRD rejects, hostile session payloads, an empty CP answer refused by the guard,
and a session disabled or vanished from the answer.

Each test gets its own fresh lab (both sessions ACTIVE, BGP Established) and tears it
down, checking nothing is left behind (the lab also deletes the extra sessions' tunnels).
Synchronisation is on events: after changing a node's CP answer a test triggers one
``sessionSync`` run through the agent's ``POST /sync`` with ``wait`` (a run that starts
after the request, answered when it has finished: nothing waits for the 5 s schedule),
and reports are awaited as requests arriving at the node's FakeControlPlane. Only what
settles after a cycle has no push interface and is polled, bounded (``_until``): a
wireguard-go process exiting after its link was deleted, a BGP protocol leaving BIRD.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from pathlib import Path
from typing import Any

import helpers.lab
import moenet_templates
import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow]

STATUS_DISABLED = 0
STATUS_ACTIVE = 1
STATUS_ERROR = 2
STATUS_QUEUED_FOR_SETUP = 4
STATUS_SETUP_FAILED = 6
MARKER = "moenet-agent"  # moenet_wireguard.links.MARKER, the tunnels' ownership alias


lab = helpers.lab.lab  # the same fresh-lab fixture (both sessions ACTIVE, Established)


# ------------------------------------------------------------------ observations


async def tunnel(lab, n, name: str) -> dict[str, Any] | None:
    """The link called ``name`` in ``n``'s namespace, or None."""
    found = [lk for lk in await lab.links(n) if lk.get("ifname") == name]
    assert len(found) <= 1
    return found[0] if found else None


async def marked_tunnels(lab, n) -> set[str]:
    return {lk["ifname"] for lk in await lab.links(n) if lk.get("ifalias") == MARKER}


async def bgp_since(lab, n) -> helpers.lab.Since:
    """``since`` of the node's own (Established) BGP protocol (equal within 50 ms)."""
    protos = await lab.bgp_protocols(n)
    assert n.bgp_protocol in protos, protos
    p = protos[n.bgp_protocol]
    assert p["state"] == "up" and p["info"] == "Established", p
    return helpers.lab.Since(p["since"])


def bird_text(lab, n) -> str:
    """Every file under the node's BIRD config directory, concatenated."""
    return "\n".join(p.read_text(errors="replace") for p in lab.bird_files(n))


def sessions_info(status: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in status["plugins"] if p["name"] == "sessions").get("info") or {}


def session_sync(status: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in status["tasks"] if t["name"] == "sessionSync")


def modify_bodies(n, uuid: str | None = None) -> list[dict[str, Any]]:
    return [
        r.body
        for r in n.cp.calls("modify")
        if isinstance(r.body, dict) and (uuid is None or r.body.get("uuid") == uuid)
    ]


async def report_for(
    lab, n, uuid: str, status: int | None = None, *, after: int = 0, timeout: float = 30
) -> dict[str, Any]:
    """The body of the agent's first report of ``uuid`` (with ``status`` if given) after
    the first ``after`` such reports, waiting for it to arrive."""

    def match(r) -> bool:
        b = r.body
        return isinstance(b, dict) and b.get("uuid") == uuid and (status is None or b.get("status") == status)

    got = await lab._watch(n, n.cp.wait_for("modify", after + 1, where=match, timeout=timeout))
    return got[after].body


async def cycle(lab, n) -> dict[str, Any]:
    """One sessionSync run that starts after now, triggered by ``POST /sync`` and awaited
    (it fetches the CP's current answer, applies, and delivers its reports before the
    API answers)."""
    result = await lab.sync(n)
    assert result["ok"], result
    return result


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


async def assert_nothing_of(lab, n, session: dict[str, Any], protocol: str | None = None) -> None:
    """No tunnel, no wireguard-go, no open port, no BIRD file or protocol of ``session``."""
    name, uuid = session["interface"], session["uuid"]
    port = session["credential"]["listenPort"]
    assert await tunnel(lab, n, name) is None, f"tunnel {name} left behind"
    assert name not in await marked_tunnels(lab, n)
    assert port not in await lab.open_ports(n), f"port {port} left open"
    assert not [p for p in lab.bird_files(n) if uuid in p.read_text(errors="replace")], "BIRD file left"

    async def no_wireguard_go() -> bool:
        return not lab.wireguard_go(n, name)

    async def no_protocol() -> bool:
        return protocol not in await lab.bgp_protocols(n)

    # wireguard-go exits on its own once its link is deleted; BIRD shuts a removed
    # protocol down before dropping it: give each a moment.
    await _until(f"wireguard-go of {name} to exit", no_wireguard_go, 10)
    if protocol is not None:
        await _until(f"BGP protocol {protocol} to leave BIRD", no_protocol, 10)


# ------------------------------------------------------------------ 1. BIRD rejects a session


async def test_bird_rejected_session_ends_setup_failed_and_leaves_nothing(lab):
    """A session that passes the agent's validation but that BIRD 3 rejects.

    Nothing the session model accepts is refused by BIRD any more (the last case, a
    peer with the node's own AS, is now refused up front as ERROR), so the rejection
    is injected the way an operator could cause it: a ``peer.conf.j2`` override in the
    node's ``bird.templateDir`` that writes an invalid line for one peer AS only. BIRD
    then really refuses that session's file (``peers/dn42_<asn>_<hash>.conf:<line>``);
    the agent must drop that session alone.
    """
    n1, n2 = lab.nodes
    since1, since2 = await bgp_since(lab, n1), await bgp_since(lab, n2)
    files = {p: p.read_bytes() for p in lab.peer_files(n1)}
    assert len(files) == 1
    bad_asn = 4242420199
    template = (Path(moenet_templates.__file__).parent / "bird" / "peer.conf.j2").read_text()
    anchor = "from dn42_ebgp {\n"
    assert anchor in template
    broken = template.replace(
        anchor, anchor + f"{{% if p.asn == {bad_asn} %}}  injected_invalid_option on;\n{{% endif %}}"
    )
    (n1.dir / "templates" / "peer.conf.j2").write_text(broken)
    bad = lab.extra_session(n1, asn=bad_asn, name="lab-bird-refuses")

    t = time.monotonic()
    lab.set_extra_sessions(n1, [bad])
    await cycle(lab, n1)
    body = await report_for(lab, n1, bad["uuid"])
    lab.log(f"bird-rejected: SETUP_FAILED reported {time.monotonic() - t:.2f}s after the CP change + /sync")
    assert body["status"] == STATUS_SETUP_FAILED, body
    error = body.get("lastError") or ""
    assert "syntax error" in error, error
    assert re.search(r"peers/dn42_\d+_[0-9a-f]+\.conf:\d+", error), error  # BIRD names file:line
    assert not body.get("removed"), body

    # The failing cycle rolled back before it reported: nothing of it is left.
    await assert_nothing_of(lab, n1, bad)
    assert {p: p.read_bytes() for p in lab.peer_files(n1)} == files
    assert set(await lab.bgp_protocols(n1)) == {n1.bgp_protocol}
    assert await marked_tunnels(lab, n1) == {n1.interface}
    assert await lab.open_ports(n1) == {n1.listen_port}

    # Like a real CP: the session is SETUP_FAILED now (with BIRD's message); later cycles
    # build nothing of it and report nothing more.
    lab.accept_report(n1, body)
    await cycle(lab, n1)
    await assert_nothing_of(lab, n1, bad)
    assert len(modify_bodies(n1, bad["uuid"])) == 1, modify_bodies(n1, bad["uuid"])
    assert {p: p.read_bytes() for p in lab.peer_files(n1)} == files
    assert await bgp_since(lab, n1) == since1, "the original session flapped on lab1"
    assert await bgp_since(lab, n2) == since2, "the original session flapped on lab2"
    lab.log(f"bird-rejected: done {time.monotonic() - t:.2f}s after the CP change + /sync")


# ------------------------------------------------------------------ 2. hostile payloads


def _hostile(lab, n) -> list[tuple[dict[str, Any], str, list[str]]]:
    """(session, a fragment its ``lastError`` must contain, strings that must reach no BIRD
    file). Each session is valid but for its hostile field(s)."""
    short_key = base64.b64encode(os.urandom(31)).decode()
    pwned = f"/tmp/moenet-lab-pwned-{lab.suffix}"  # a marker file that must never be created
    out: list[tuple[dict[str, Any], str, list[str]]] = []

    def add(reason: str, markers: list[str], **fields: Any) -> dict[str, Any]:
        s = lab.extra_session(n, **fields)
        out.append((s, reason, markers))
        return s

    add(
        ".name: must not contain control characters",
        ["evil_name"],
        name='x"; };\nprotocol static evil_name {\n  ipv4; route 10.66.0.0/16 unreachable;\n}\n',
    )
    add(
        ".description: must not contain control characters",
        ["evil_descr"],
        description="{\n}; protocol static evil_descr { ipv4; }\r\n",
    )
    add(".interface: must be 1-15 characters", ["dn42/evil"], interface="dn42/evil")
    add(".interface: must be 1-15 characters", [], interface="..")
    add(".interface: must be 1-15 characters", ["dn42 evil x"], interface="dn42 evil x")
    add(".interface: must be 1-15 characters", ["dn42-way-too-long0"], interface="dn42-way-too-long0")
    add("this node's own AS", [], asn=n.asn)  # iBGP, not a peering: refused up front
    add(".asn:", [], asn=4294967296)
    add(".asn:", [], asn=-1)
    add(".asn: must be an AS number", ["evil_asn"], asn="4242420099; protocol evil_asn")
    s = add(".credential", ["evil_key"])
    s["credential"]["publicKey"] = "not-a-key; evil_key"
    s = add(".credential.public_key: must be 44 characters", [short_key])
    s["credential"]["publicKey"] = short_key
    add(".mtu: must be 1280-9000", [], mtu=70000)
    s = add("neither an endpoint nor a listen port", [], port=0)
    del s["endpoint"]
    s["credential"]["listenPort"] = 0
    add(".port: must be a port 1-65535", [], port=70000)
    add(".extensions: must be a list", ["evil_ext"], extensions="mp-bgp; protocol evil_ext {")
    add(".extensions[1]: must be a string", ["evil_ext2"], extensions=["mp-bgp", {"evil_ext2": 1}])
    add(".endpoint", ["moenet-lab-pwned", "$("], endpoint=f"$(touch {pwned}):51820")
    add(".endpoint: port must be 1-65535", [";reboot"], endpoint="192.0.2.9:51820;reboot")
    return out


async def test_hostile_payloads_end_as_error_and_never_reach_bird(lab):
    """Hostile sessions, each with its own uuid, next to the good one: each is reported
    ``ERROR`` with the field's reason, builds nothing and puts none of its text into any
    BIRD file. Alongside, hostile text the agent *accepts* (BIRD syntax without line
    breaks in a description, an unknown extension) is rendered inert: the session goes
    ACTIVE and BIRD holds no protocol or route the text tried to define."""
    n1, n2 = lab.nodes
    since1, since2 = await bgp_since(lab, n1), await bgp_since(lab, n2)
    hostile = _hostile(lab, n1)
    inert = lab.extra_session(
        n1,
        name="{ evil_inert_name }",
        description='"; }; protocol static evil_inert { ipv4; route 10.77.0.0/16 unreachable; }; #',
        extensions=["mp-bgp", "extended-nexthop", "evil-unknown-ext; }"],
    )
    # A non-object element cannot even be reported (no uuid): logged, breaks nothing.
    garbage = '"; }; protocol static evil_item {'
    pwned = Path(f"/tmp/moenet-lab-pwned-{lab.suffix}")

    t = time.monotonic()
    lab.set_extra_sessions(n1, [*(s for s, _, _ in hostile), inert, garbage])
    await cycle(lab, n1)
    for s, reason, _ in hostile:
        body = await report_for(lab, n1, s["uuid"])
        assert body["status"] == STATUS_ERROR, body
        assert reason in (body.get("lastError") or ""), (reason, body)
        assert not body.get("removed"), body
        lab.accept_report(n1, body)  # like a real CP: ERROR with the reason
    lab.log(f"hostile: {len(hostile)} ERROR reports {time.monotonic() - t:.2f}s after the CP change + /sync")
    lab.accept_report(n1, await report_for(lab, n1, inert["uuid"], STATUS_ACTIVE))
    lab.log(f"hostile: the inert session ACTIVE {time.monotonic() - t:.2f}s after the CP change + /sync")

    # Nothing hostile reached BIRD.
    text = bird_text(lab, n1)
    for s, _, markers in hostile:
        for m in [s["uuid"], *markers]:
            assert m not in text, f"{m!r} reached a BIRD file"
    assert "evil_item" not in text and "evil-unknown-ext" not in text
    # The accepted text is inert: inside a string literal of one description line.
    lines = [ln for ln in text.splitlines() if "evil_inert" in ln]
    assert lines and all(ln.strip().startswith('description "') and ln.count('"') == 2 for ln in lines), lines
    protos = await lab.bgp_protocols(n1)
    assert len(protos) == 2 and n1.bgp_protocol in protos, protos
    assert "evil_inert" not in await lab.birdc(n1, "show", "protocols")
    assert "10.77.0.0/16" not in await lab.birdc(n1, "show", "route", "for", "10.77.0.1")
    assert not pwned.exists()

    # Nothing built for them: only the good and the inert session have tunnels and ports.
    assert await marked_tunnels(lab, n1) == {n1.interface, inert["interface"]}
    names = {lk["ifname"] for lk in await lab.links(n1)}
    assert not names & {s["interface"] for s, _, _ in hostile if isinstance(s.get("interface"), str)}
    assert await lab.open_ports(n1) == {n1.listen_port, inert["credential"]["listenPort"]}
    assert sorted(len(lab.wireguard_go(n1, i)) for i in (n1.interface, inert["interface"])) == [1, 1]
    assert len(lab.wireguard_go(n1)) == 2

    # A later cycle repeats no report, and the good session never flapped.
    await cycle(lab, n1)
    for s, _, _ in hostile:
        assert len(modify_bodies(n1, s["uuid"])) == 1, modify_bodies(n1, s["uuid"])
    assert await bgp_since(lab, n1) == since1, "the good session flapped on lab1"
    assert await bgp_since(lab, n2) == since2, "the good session flapped on lab2"
    st = session_sync(await lab.agent_status(n1))
    assert st["last"]["ok"], st
    lab.log(f"hostile: done {time.monotonic() - t:.2f}s after the CP change + /sync")


# ------------------------------------------------------------------ 3. the guard


async def test_empty_answer_is_refused_by_the_guard(lab):
    """Three configured sessions, then an empty CP answer (3 of 3 removals: more than half
    and more than 2): nothing is removed or reported, ``/status`` shows the refusal; the
    answer returning to normal clears it, still without any change."""
    n1, n2 = lab.nodes
    # Two more configured sessions (to peers that do not exist: never Established).
    extras = [lab.extra_session(n1), lab.extra_session(n1)]
    lab.set_extra_sessions(n1, extras)
    await cycle(lab, n1)
    for s in extras:
        lab.accept_report(n1, await report_for(lab, n1, s["uuid"], STATUS_ACTIVE))  # like a real CP
    sessions = [{"uuid": n1.session_uuid, "interface": n1.interface}, *extras]
    uuids = {s["uuid"] for s in sessions}
    ifaces = {s["interface"] for s in sessions}

    since1, since2 = await bgp_since(lab, n1), await bgp_since(lab, n2)
    links = {lk["ifname"]: lk["ifindex"] for lk in await lab.links(n1) if lk["ifname"] in ifaces}
    assert set(links) == ifaces
    ports = await lab.open_ports(n1)
    assert len(ports) == 3
    files = {p: p.read_bytes() for p in lab.peer_files(n1)}
    assert len(files) == 3
    wg = sorted(lab.wireguard_go(n1))
    assert len(wg) == 3
    protos = set(await lab.bgp_protocols(n1))
    reports = len(modify_bodies(n1))

    t = time.monotonic()
    lab.set_sessions(n1, [])
    await cycle(lab, n1)
    st = await lab.agent_status(n1)
    info = sessions_info(st)
    lab.log(f"guard: refusal in /status {time.monotonic() - t:.2f}s after the empty answer + /sync")
    assert info["guardRefused"] is True, info
    guard = info["guard"]
    assert guard["refused"] is True and guard["removals"] == 3, guard
    assert set(guard["withheld"]) == uuids, guard
    assert guard["reason"] and guard["digest"], guard
    assert session_sync(st)["last"]["result"]["guard"]["refused"] is True, session_sync(st)
    assert "sessions guard: the answer would remove 3 of 3" in n1.log_path.read_text(errors="replace")

    # Nothing was removed, nothing flapped, nothing was reported.
    assert {lk["ifname"]: lk["ifindex"] for lk in await lab.links(n1) if lk["ifname"] in ifaces} == links
    assert await lab.open_ports(n1) == ports
    assert {p: p.read_bytes() for p in lab.peer_files(n1)} == files
    assert sorted(lab.wireguard_go(n1)) == wg
    assert set(await lab.bgp_protocols(n1)) == protos
    assert await bgp_since(lab, n1) == since1
    assert await bgp_since(lab, n2) == since2
    assert len(modify_bodies(n1)) == reports

    # The answer returns to normal: the refusal clears, and still nothing changes.
    t = time.monotonic()
    lab.publish(n1)
    await cycle(lab, n1)
    st = await lab.agent_status(n1)
    info = sessions_info(st)
    lab.log(f"guard: refusal cleared {time.monotonic() - t:.2f}s after the answer returned + /sync")
    assert info["guardRefused"] is False, info
    assert not (info.get("guard") or {}).get("refused"), info
    result = session_sync(st)["last"]["result"]
    assert result["changed"] == {} and result["guard"] is None, result
    assert {lk["ifname"]: lk["ifindex"] for lk in await lab.links(n1) if lk["ifname"] in ifaces} == links
    assert {p: p.read_bytes() for p in lab.peer_files(n1)} == files
    assert await bgp_since(lab, n1) == since1
    assert len(modify_bodies(n1)) == reports


# ------------------------------------------------------------------ 4. disable and vanish


def _own_session(n) -> dict[str, Any]:
    return {
        "uuid": n.session_uuid,
        "interface": n.interface,
        "credential": {"listenPort": n.listen_port},
    }


async def test_disabled_session_is_removed_and_confirmed(lab):
    """``DISABLED``: tunnel, wireguard-go, port, peer file and BGP protocol go, confirmed
    once with ``{status: 0, removed: true}``."""
    n1, _ = lab.nodes
    own = _own_session(n1)
    assert await tunnel(lab, n1, n1.interface) is not None
    assert n1.listen_port in await lab.open_ports(n1)
    assert len(lab.peer_files(n1)) == 1

    before = len(modify_bodies(n1, n1.session_uuid))
    t = time.monotonic()
    lab.set_session_status(n1, STATUS_DISABLED)
    await cycle(lab, n1)
    body = await report_for(lab, n1, n1.session_uuid, after=before)
    lab.log(f"disable: removal reported {time.monotonic() - t:.2f}s after the CP change + /sync")
    # planner.py: DISABLED reports its own status with removed: true, and only because
    # something had to be removed.
    assert body == {"uuid": n1.session_uuid, "status": STATUS_DISABLED, "removed": True}, body
    lab.accept_report(n1, body)

    await assert_nothing_of(lab, n1, own, n1.bgp_protocol)
    assert lab.peer_files(n1) == []
    assert await marked_tunnels(lab, n1) == set()
    assert lab.wireguard_go(n1) == []
    assert await lab.bgp_protocols(n1) == {}
    lab.log(f"disable: everything gone {time.monotonic() - t:.2f}s after the CP change + /sync")

    # The CP keeps it DISABLED: nothing left to remove, so nothing more is reported.
    await cycle(lab, n1)
    assert modify_bodies(n1, n1.session_uuid)[before:] == [body]


async def test_vanished_session_is_removed_silently(lab):
    """A session missing from the answer is removed like a deleted one, and not reported."""
    n1, _ = lab.nodes
    own = _own_session(n1)
    reports = len(modify_bodies(n1, n1.session_uuid))
    assert await tunnel(lab, n1, n1.interface) is not None

    t = time.monotonic()
    lab.set_sessions(n1, [])  # its only session vanishes (1 of 1: within the guard's limits)
    await cycle(lab, n1)
    await assert_nothing_of(lab, n1, own, n1.bgp_protocol)
    lab.log(f"vanish: everything gone {time.monotonic() - t:.2f}s after the CP change + /sync")
    assert lab.peer_files(n1) == []
    assert await marked_tunnels(lab, n1) == set()
    assert lab.wireguard_go(n1) == []
    assert await lab.bgp_protocols(n1) == {}
    assert n1.listen_port not in await lab.open_ports(n1)
    info = sessions_info(await lab.agent_status(n1))
    assert info["guardRefused"] is False, info

    # The CP no longer knows the uuid: nothing is reported, then or later.
    await cycle(lab, n1)
    assert len(modify_bodies(n1, n1.session_uuid)) == reports, modify_bodies(n1, n1.session_uuid)
