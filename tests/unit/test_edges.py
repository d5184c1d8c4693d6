"""Issue 14, item 10 ("Edges"): endpoint addresses and interface names a hostile or
careless CP could hand the agent, refused the same way by the sessions and the
mesh plugins (one check, ``moenet_core.netcheck``), and short tokens.

Each test here fails on main at 0e980bb: the sessions answer accepted these
endpoints and the names ``all``/``default``/``lo``, and a 5-character token was
accepted by the config and then never redacted from the logs.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from moenet_mesh.model import InvalidPeer, endpoint_value, parse_mesh
from moenet_sessions.model import Invalid, Session, parse_sessions
from moenet_wireguard.errors import TunnelSpecError
from moenet_wireguard.spec import normalise

from moenet_core import RESERVED_IFNAMES, ConfigError, TunnelSpec
from moenet_core.config import build_config
from moenet_core.logs import _MIN_SECRET_LEN, add_secret, clear_secrets, reset_logging, setup_logging

KEY = base64.b64encode(b"\x01" * 32).decode()

#: (endpoint host, what the reason says). Every one is an IP literal.
UNUSABLE = [
    ("0.0.0.0", "unspecified"),
    ("[::]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.1.2.3", "multicast"),
    ("[ff02::1]", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("[::1]", "loopback"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("[fe80::1]", "link-local"),
    ("[fe80::1%eth0]", "link-local"),
    ("[::ffff:127.0.0.1]", "loopback"),
    ("240.0.0.1", "reserved"),
]


def session(**over: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "uuid": "00000000-0000-4000-8000-000000000001",
        "asn": 4242420001,
        "status": 1,
        "type": "wireguard",
        "interface": "wg1",
        "endpoint": "198.51.100.1:51820",
        "credential": KEY,
        "ipv6LinkLocal": "fe80::1",
        "port": 20001,
    }
    item.update(over)
    return item


def one_session(item: dict[str, Any]) -> Session | Invalid:
    ok, bad = parse_sessions([item])
    [result] = ok + bad
    return result


@pytest.mark.parametrize(("host", "why"), UNUSABLE)
def test_session_endpoint_that_is_no_unicast_peer_is_refused_with_the_reason(host: str, why: str) -> None:
    bad = one_session(session(endpoint=f"{host}:51820"))
    assert isinstance(bad, Invalid), bad
    assert "endpoint" in bad.reason and why in bad.reason, bad.reason


@pytest.mark.parametrize(("host", "why"), UNUSABLE)
def test_credential_endpoint_is_checked_the_same_way(host: str, why: str) -> None:
    cred = {"publicKey": KEY, "endpoint": f"{host}:51820"}
    bad = one_session(session(endpoint=None, credential=cred))
    assert isinstance(bad, Invalid) and why in bad.reason, bad


@pytest.mark.parametrize(("host", "why"), UNUSABLE)
def test_mesh_refuses_the_same_endpoints_for_the_same_reason(host: str, why: str) -> None:
    """Parity: one check for both plugins (the mesh already refused some of these)."""
    peer = {"nodeId": 7, "publicKey": KEY, "endpoint": f"{host}:51823"}
    answer = parse_mesh({"localNodeId": 3, "peers": [peer]}, node_id=3)
    [bad] = answer.invalid
    assert isinstance(bad, InvalidPeer) and why in bad.reason, bad
    with pytest.raises(ValueError, match=why):
        endpoint_value(f"{host}:51823", "endpoint")


@pytest.mark.parametrize(
    ("endpoint", "canonical"),
    [
        ("peer.example.net:51820", "peer.example.net:51820"),
        ("Peer.Example.NET:51820", "peer.example.net:51820"),
        ("localhost:51820", "localhost:51820"),  # a host name: resolved later, not judged here
        ("198.51.100.7:51820", "198.51.100.7:51820"),
        ("[2001:db8::7]:51820", "[2001:db8::7]:51820"),
        ("172.20.0.1:51820", "172.20.0.1:51820"),  # DN42 space (RFC 1918) is a normal peer
        ("[fd42::1]:51820", "[fd42::1]:51820"),
    ],
)
def test_host_names_and_unicast_endpoints_stay_allowed(endpoint: str, canonical: str) -> None:
    good = one_session(session(endpoint=endpoint))
    assert isinstance(good, Session), good
    assert good.endpoint == canonical


@pytest.mark.parametrize("name", sorted(RESERVED_IFNAMES - {".", ".."}))
def test_session_interface_names_the_kernel_treats_specially_are_refused(name: str) -> None:
    bad = one_session(session(interface=name))
    assert isinstance(bad, Invalid) and "reserved" in bad.reason, bad
    assert bad.interface is None  # never handed on as "the tunnel to take down"


def tunnel(name: str, owner: str) -> TunnelSpec:
    return TunnelSpec(name=name, private_key_file="/k", listen_port=51820, peer_public_key=KEY, owner=owner)


@pytest.mark.parametrize("owner", ["sessions", "mesh"])
@pytest.mark.parametrize("name", sorted(RESERVED_IFNAMES))
def test_the_tunnel_backend_refuses_them_for_every_owner(name: str, owner: str) -> None:
    """The mesh derives ``<prefix><id>`` names, which can never be one of these;
    the tunnel backend, which both plugins go through, refuses them anyway."""
    with pytest.raises(TunnelSpecError, match="interface name"):
        normalise(tunnel(name, owner), 25)
    near = f"{name.strip('.')[:8] or 'x'}0"  # a name that merely starts the same is fine
    assert normalise(tunnel(near, owner), 25).name == near


# ------------------------------------------------------------------ tokens

BASE = {"node": {"name": "jp1"}, "controlPlane": {"url": "http://127.0.0.1:9", "token": "long-enough-token"}}


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({**BASE, "controlPlane": {"url": "http://127.0.0.1:9", "token": "t0k3n"}}, "controlPlane.token"),
        ({**BASE, "server": {"token": "abc"}}, "server.token"),
        (
            {"bootstrap": {"apiUrl": "http://127.0.0.1:9", "nodeName": "jp1", "token": "short"}},
            "bootstrap.token",
        ),
    ],
)
def test_a_token_too_short_to_redact_is_refused_by_the_config(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=rf"{path}: must be at least 8 characters"):
        build_config(raw, env={})


def test_a_short_token_from_the_environment_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"controlPlane.token: must be at least 8 characters"):
        build_config(BASE, env={"MOENET_CP_TOKEN": "abc"})


def test_every_token_the_config_accepts_is_redacted_in_the_logs() -> None:
    """The shortest accepted token is still long enough for ``add_secret``."""
    from moenet_core.config import MIN_TOKEN_LENGTH

    assert MIN_TOKEN_LENGTH >= _MIN_SECRET_LEN
    token = "k" * MIN_TOKEN_LENGTH
    cfg, _ = build_config({**BASE, "server": {"token": token}}, env={})
    assert cfg.server.token == token
    out = io.StringIO()
    clear_secrets()
    try:
        setup_logging(fmt="json", level="INFO", stream=out)
        add_secret(cfg.server.token)
        from loguru import logger

        logger.info("bearer {}", token)
        assert token not in out.getvalue() and "***" in out.getvalue()
    finally:
        reset_logging()
        clear_secrets()


def test_a_plugin_secret_too_short_to_redact_is_warned_about(tmp_path) -> None:
    """``ctx.add_secret`` cannot mask a 3-character secret; it says so instead of
    silently leaving it in the logs."""
    from loguru import logger

    from moenet_core.testing import plugin_context

    ctx = plugin_context("hook", state_dir=tmp_path)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{level} {message}", level="DEBUG")
    try:
        ctx.add_secret("abc")
        ctx.add_secret("long-enough-secret")
    finally:
        logger.remove(sink)
        clear_secrets()
    assert [line.strip() for line in lines] == [
        "WARNING a secret of this plugin is shorter than 6 characters and cannot be redacted "
        "from the logs: configure a longer one"
    ]
