"""Node identity from one source (issue 12 item 5), without root.

The local file, the CP's bootstrap ``config`` answer and the CP's
``bird-config`` must agree on the node's AS, id and loopbacks; a mismatch names
both values and where each came from. The sessions plugin's own-AS check uses
the *effective* AS, e.g. the BIRD policy's when the file has none (the
benchmark's session 234 case).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import moenet_bird
import moenet_sessions
import pytest
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.sync import BirdConfigSync, BirdSyncError
from moenet_bird.testing import sample_bird_config
from moenet_sessions.task import SessionSync

from moenet_core import ApplyResult, ConfigError, IdentityConflict, SessionStatus
from moenet_core.config import build_config
from moenet_core.testing import FakeBackends, StubControlPlane, plugin_context

BIRD_AS = 4242421234  # sample_bird_config's dn42As
KEY = base64.b64encode(b"\x07" * 32).decode()

BOOT = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "hkg1", "token": "t0ken-123456"}}


def test_file_and_bootstrap_answer_disagreeing_is_a_config_error_naming_both() -> None:
    raw = {**BOOT, "node": {"asn": 4242420001, "loopbackIpv4": "172.20.42.1/32"}}
    remote = {"node": {"asn": 4242420002, "loopbackIpv4": "172.20.42.1", "id": 3}}
    with pytest.raises(ConfigError) as err:
        build_config(raw, env={}, remote=remote, source="/etc/moenet/config.json")
    text = "; ".join(err.value.problems)
    assert "node.asn" in text and "4242420001" in text and "4242420002" in text
    assert "the local config (/etc/moenet/config.json)" in text
    assert "control plane's config answer" in text
    assert "loopbackIpv4" not in text  # /32 and bare are the same address


def test_sources_of_a_merged_config() -> None:
    raw = {**BOOT, "node": {"asn": 4242420001}}
    cfg, _ = build_config(raw, env={}, remote={"node": {"asn": 4242420001, "id": 3}}, source="f.json")
    assert cfg.node_sources == {"asn": "the local config (f.json)", "id": "the control plane's config answer"}


def test_wireguard_legacy_key_counts_as_the_loopback() -> None:
    raw = {**BOOT, "wireguard": {"dn42Ipv4": "172.20.42.9"}}
    with pytest.raises(ConfigError, match=r"172\.20\.42\.9.*172\.20\.42\.1"):
        build_config(raw, env={}, remote={"node": {"loopbackIpv4": "172.20.42.1"}})


# ------------------------------------------------------------------ bird-config


class BirdRig:
    def __init__(self, tmp: Path, node: dict[str, Any]) -> None:
        self.cp = StubControlPlane("hkg1")
        self.backend = BirdRoutingBackend(BirdClient(str(tmp / "no.sock")), str(tmp / "bird"))
        self.applied: list[str] = []

        async def set_policy(policy: Any, config_hash: str, raw: Any = None) -> ApplyResult:
            self.applied.append(config_hash)
            return ApplyResult(ok=True, changed=True)

        self.backend.set_policy = set_policy  # type: ignore[method-assign]
        self.ctx = plugin_context(
            "bird",
            state_dir=tmp / "state",
            config={"node": {"name": "hkg1", **node}},
            plugins=[("bird", moenet_bird)],
            backends={"routing": self.backend},
            cp=self.cp,
        )
        self.task = BirdConfigSync(self.ctx)


async def test_bird_config_with_another_as_is_refused_naming_both(tmp_path: Path) -> None:
    rig = BirdRig(tmp_path, {"id": 3, "asn": 4242420001})
    rig.cp.set("bird-config", sample_bird_config())
    with pytest.raises(BirdSyncError) as err:
        await rig.task.run_once()
    msg = str(err.value)
    assert "node.asn: bird-config says 4242421234, the local config says 4242420001" in msg
    assert "keeping the last good policy" in msg
    assert rig.applied == []  # not applied
    status = rig.backend.status_info()["syncError"]
    assert "node identity mismatch" in status and "4242420001" in status
    assert rig.ctx.identity.asn == 4242420001


async def test_bird_config_with_another_node_id_or_loopback_is_refused(tmp_path: Path) -> None:
    rig = BirdRig(tmp_path, {"id": 7, "loopbackIpv6": "fd42:4242:1234::2"})
    rig.cp.set("bird-config", sample_bird_config())
    with pytest.raises(BirdSyncError) as err:
        await rig.task.run_once()
    assert "node.id: bird-config says 3, the local config says 7" in str(err.value)
    assert "node.loopbackIpv6: bird-config says fd42:4242:1234::1" in str(err.value)
    assert rig.applied == []


async def test_bird_config_fills_what_the_config_leaves_unset(tmp_path: Path) -> None:
    rig = BirdRig(tmp_path, {"id": 3})
    rig.cp.set("bird-config", sample_bird_config())
    await rig.task.run_once()
    ident = rig.ctx.identity
    assert ident.asn == BIRD_AS and ident.sources["asn"] == "bird-config"
    assert ident.id == 3 and ident.sources["id"].startswith("the local config")
    assert ident.loopback_ipv4 == "172.20.42.1"
    # A later policy with another AS replaces the CP's own earlier word.
    rig.cp.set("bird-config", sample_bird_config(config_hash="2", policy={"dn42As": "4242421235"}))
    await rig.task.run_once()
    assert rig.ctx.identity.asn == 4242421235


def test_publishers_must_agree(tmp_path: Path) -> None:
    ctx = plugin_context("x", state_dir=tmp_path)
    ctx.publish_identity("bird-config", asn=BIRD_AS)
    with pytest.raises(IdentityConflict, match="mesh says 4242420002, bird-config says 4242421234"):
        ctx.publish_identity("mesh", asn="AS4242420002")
    assert ctx.identity.asn == BIRD_AS
    assert ctx.identity.to_json()["sources"] == {"asn": "bird-config", "id": ctx.identity.sources["id"]}


# --------------------------------------------------------------- own-AS check


def uid(n: int) -> str:
    return f"5e55a000-0000-4000-8000-{n:012d}"


def session(n: int, asn: int) -> dict[str, Any]:
    return {
        "uuid": uid(n),
        "asn": asn,
        "name": f"peer{n}",
        "status": int(SessionStatus.QUEUED_FOR_SETUP),
        "interface": f"dn42-{n}",
        "endpoint": f"192.0.2.{n}:51820",
        "credential": KEY,
        "ipv6LinkLocal": f"fe80::{n}",
        "port": 21000 + n,
    }


async def test_session_with_the_as_from_bird_config_is_an_ibgp_error(tmp_path: Path) -> None:
    fakes = FakeBackends(check_keys=False)
    cp = StubControlPlane("test-node")
    ctx = plugin_context(
        "sessions",
        state_dir=tmp_path / "state",
        config={"sessions": {"privateKeyPath": str(tmp_path / "wg.key"), "pskDir": str(tmp_path / "psk")}},
        plugins=[("sessions", moenet_sessions)],
        backends=fakes,
        cp=cp,
    )
    assert ctx.config.node.asn is None
    ctx.publish_identity("bird-config", asn=BIRD_AS)  # what birdConfigSync does once applied
    task = SessionSync(ctx)
    cp.set("sessions", [session(1, 4242420001), session(234, BIRD_AS)])
    await task.run_once()
    reports = {c.body["uuid"]: c.body for c in cp.calls("modify", "POST")}
    assert reports[uid(1)]["status"] == int(SessionStatus.ACTIVE)
    bad = reports[uid(234)]
    assert bad["status"] == int(SessionStatus.ERROR)
    assert "that is iBGP" in bad["lastError"] and str(BIRD_AS) in bad["lastError"]
    # Never handed to BIRD: the rest of the tree is untouched by it.
    assert set(fakes.routing.fragments.get("sessions", {})) == {uid(1)}
    assert "dn42-234" not in fakes.tunnel.tunnels
