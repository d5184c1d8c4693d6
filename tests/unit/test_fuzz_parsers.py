"""Every parser of untrusted input, fuzzed (issue 14, item 8).

Input comes from the control plane, the config file, the local API and the state
directory. The property is the same everywhere: whatever JSON-like value arrives
(unicode digits such as ``"²"``, a 4 300-digit number, ``"9"*400`` where a number
is expected, NaN and infinities, nesting up to the boundary's depth limit), the
parser returns a value or raises *its* typed error, never anything else. Each
strategy starts from a valid answer and mutates it, so the fuzzer reaches the
field validators, not only the "expected an object" check at the top.

Deterministic (``derandomize=True``, no example database) and small enough to run
in CI on every push: the whole file takes well under 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moenet_bird.names import BirdConfigError
from moenet_bird.policy import bandwidth_mbit, country_value, parse_bird_config, region_value
from moenet_bird.testing import sample_bird_config
from moenet_ibgp.model import AnswerError, parse_answer
from moenet_loopback.backend import STATE_VERSION as LOOPBACK_VERSION
from moenet_loopback.backend import AddressesDoc
from moenet_mesh.model import MeshPayloadError, parse_mesh
from moenet_mesh.planner import Record as MeshRecord
from moenet_mesh.task import babel_from_json
from moenet_rtt.task import STATE_VERSION as RTT_VERSION
from moenet_rtt.task import LinksDoc
from moenet_rtt.task import _migrate as rtt_migrate
from moenet_rtt.tier import LinkState
from moenet_sessions.links import LATENCY_VERSION, LatencyDoc
from moenet_sessions.model import SessionsPayloadError, parse_sessions
from moenet_sessions.records import Previous, RecordError, peer_from_json
from moenet_sessions.store import OUTBOX_VERSION, OutboxDoc
from moenet_updater.state import STATE_VERSION as UPDATER_VERSION
from moenet_updater.state import UpdaterState
from prometheus_client import CollectorRegistry

from moenet_core.agent import MAINTENANCE_VERSION, MaintenanceDoc, _migrate_maintenance
from moenet_core.api import LocalApi
from moenet_core.config import build_config, read_config_file
from moenet_core.errors import ConfigError, MoenetError
from moenet_core.intents import (
    BabelInterfaceIntent,
    EbgpPeerIntent,
    IbgpNeighborIntent,
    IntentError,
    intent_from_json,
    intent_to_json,
)
from moenet_core.jsonlimits import MAX_DEPTH
from moenet_core.state import SavedAnswer, StateError, StateStore

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ------------------------------------------------------------------ strategies

#: Numbers a JSON parser can hand over that break naive code: ``int()`` of a string
#: over 4 300 digits raises ValueError, ``float("9"*400)`` is inf, ``int(inf)`` raises
#: OverflowError, ``str()`` of a huge int is slow or refused.
BIG_INT = int("9" * 4300)
TRICKY_NUMBERS = st.sampled_from(
    [0, -1, 1, 2**31, 2**32, 2**63, 2**64, -(2**63), BIG_INT, -BIG_INT, int("9" * 400), 10**20]
) | st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 0.5, 1e-320, 4294967295.5])
TRICKY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "²",
        "³²",
        "١٢٣",  # Arabic-Indic digits: str.isdigit() is True, int() accepts them
        "\U0001d7d7",  # mathematical bold nine: isdigit() True
        "9" * 400,
        "9" * 4301,
        "1" * 5000 + "G",
        "9" * 400 + "G",
        "1e999",
        "NaN",
        "inf",
        "-0",
        "0x10",
        " 42 ",
        "1_000",
        "\x00",
        "a\nb",
        "fe80::1%eth0",
        "::",
        "0.0.0.0",
        "999.1.1.1",
        "172.20.0.1/33",
        "LC_BW_" + "9" * 400 + "G",
        "DN42_REGION_",
        "\u202e",
        "\ud800",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | TRICKY_NUMBERS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | TRICKY_STRINGS
)
KEYS = st.text(max_size=8) | st.sampled_from(["version", "code", "data", "peers", "id", "name", "kind"])
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth - 1):
        value = [value] if i % 2 else {"k": value}
    return value


#: The deepest value a boundary lets through, and a few below it.
DEEP = st.sampled_from([nested(MAX_DEPTH - 2), nested(MAX_DEPTH // 2, "²"), nested(40, BIG_INT)])
ANY = JSON | DEEP


def mutated(template: Any) -> st.SearchStrategy[Any]:
    """Values shaped like ``template`` with any part replaced, dropped or added to."""
    if isinstance(template, dict):
        fields = st.fixed_dictionaries({}, optional={k: mutated(v) for k, v in template.items()})
        extra = st.dictionaries(KEYS, ANY, max_size=2)
        return st.builds(lambda f, e: {**e, **f}, fields, extra) | ANY
    if isinstance(template, list):
        if not template:
            return st.lists(ANY, max_size=3)
        return st.lists(st.one_of(*[mutated(t) for t in template]), max_size=4) | ANY
    return st.just(template) | ANY


def _only(exc_types: tuple[type[BaseException], ...], fn: Callable[[], Any]) -> None:
    """Run ``fn``; only ``exc_types`` may escape it (anything else fails the test)."""
    with contextlib.suppress(exc_types):
        fn()


# ------------------------------------------------------------------ CP answers

SESSION = {
    "uuid": "5e55a000-0000-4000-8000-000000000001",
    "asn": 4242420001,
    "name": "peer1",
    "status": 4,
    "type": "wireguard",
    "interface": "dn42-1",
    "endpoint": "192.0.2.1:51820",
    "credential": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
    "ipv6LinkLocal": "fe80::1",
    "ipv4": "172.20.0.1",
    "ipv6": "fd00::1",
    "port": 21001,
    "mtu": 1420,
    "extensions": ["mp-bgp", "extended-nexthop"],
}
SESSIONS_ANSWER = {"bgpSessions": [SESSION, {**SESSION, "uuid": "5e55a000-0000-4000-8000-000000000002"}]}

MESH_PEER = {
    "nodeId": 1,
    "nodeName": "node1",
    "loopbackIpv4": "172.20.42.1",
    "loopbackIpv6": "fd42:4242:1234::1",
    "publicKey": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    "endpoint": "192.0.2.1",
    "mtu": 1420,
    "isRr": False,
}
MESH_ANSWER = {"localNodeId": 3, "localLoopback4": "172.20.42.3", "peers": [MESH_PEER]}

IBGP_PEER = {
    "nodeId": 5,
    "nodeName": "node5",
    "loopbackIpv4": "172.20.42.5",
    "loopbackIpv6": "fd42:4242:1234::5",
    "isRr": True,
}
BIRD_ANSWER = sample_bird_config()
BIRD_ANSWER["ibgpPeers"] = [IBGP_PEER]
BIRD_ANSWER["policy"]["rpkiServers"] = [{"name": "rpki1", "host": "rpki.example", "port": 8282}]


@FUZZ
@given(mutated(SESSIONS_ANSWER) | mutated([SESSION]))
def test_sessions_answer(data: Any) -> None:
    _only((SessionsPayloadError,), lambda: parse_sessions(data))


@FUZZ
@given(mutated(MESH_ANSWER), st.sampled_from([None, 3]))
def test_mesh_answer(data: Any, node_id: int | None) -> None:
    _only((MeshPayloadError,), lambda: parse_mesh(data, node_id=node_id))


@FUZZ
@given(mutated({"node": BIRD_ANSWER["node"], "ibgpPeers": [IBGP_PEER]}), st.sampled_from([0, 3]))
def test_ibgp_answer(data: Any, own_id: int) -> None:
    _only((AnswerError,), lambda: parse_answer(data, own_id=own_id, own_name="hkg1"))


@FUZZ
@given(mutated(BIRD_ANSWER))
def test_bird_policy(data: Any) -> None:
    _only((BirdConfigError,), lambda: parse_bird_config(data))


@pytest.mark.parametrize(
    "value",
    ["²", "³²", "١٢٣", "9" * 400, "9" * 4301, "9" * 4300, BIG_INT, "9" * 400 + "G", 1e308, float("inf")],
)
@pytest.mark.parametrize("field", ["bandwidth", "countryCommunity", "regionCommunity", "bandwidthCommunity"])
def test_bird_policy_odd_numbers_name_the_field(field: str, value: Any) -> None:
    """The escapes the review found: each is a BirdConfigError naming the field."""
    data = sample_bird_config()
    data["node"][field] = value
    try:
        parse_bird_config(data)
    except BirdConfigError as exc:
        assert any(f"node.{field}" in p for p in exc.problems), exc.problems


@pytest.mark.parametrize("value", ["²", "١٢٣", "9" * 400, "9" * 4301, "9" * 400 + "G", float("nan"), 1e308])
def test_bird_normalisers_never_raise(value: Any) -> None:
    for fn in (bandwidth_mbit, country_value, region_value):
        result = fn(value)
        assert result is None or isinstance(result, int)


# ------------------------------------------------------------------ config

FULL_CONFIG = {
    "node": {"name": "n", "id": 3, "loopbackIpv4": "172.20.42.3/32"},
    "controlPlane": {"url": "https://cp.example", "token": "tok-123456", "requestTimeout": 10},
    "server": {"listen": "127.0.0.1:24368", "token": "api-token-1"},
    "logging": {"level": "INFO", "format": "json"},
    "tasks": {"sessionSync": {"interval": 30}},
    "backends": {"tunnel": "wireguard"},
    "plugins": {"enable": ["sessions"], "disable": []},
}
BOOTSTRAP = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "n", "token": "tok-123456"}}
OVERLAY = {
    "node": {"id": 3, "name": "n"},
    "controlPlane": {"syncInterval": 30, "maxResponseBytes": 1},
    "tasks": {"meshSync": {"interval": 60}},
    "bird": {"configDir": "/etc/bird"},
    "wireguard": {"privateKeyPath": "/tmp/x"},
    "mesh": {"enabled": True},
    "metric": {"pingCount": 4},
    "autoUpdate": {"enabled": False},
}


@FUZZ
@given(mutated(FULL_CONFIG))
def test_config_file(raw: Any) -> None:
    _only((ConfigError,), lambda: build_config(raw, env={}))


@FUZZ
@given(mutated(OVERLAY))
def test_bootstrap_overlay(remote: Any) -> None:
    _only((ConfigError,), lambda: build_config(BOOTSTRAP, env={}, remote=remote))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(
    st.binary(max_size=64)
    | mutated(FULL_CONFIG).map(lambda v: json.dumps(v).encode())
    | st.sampled_from(
        [b"[" * 100_000, b'{"a":' * 5000, b"9" * 5000, b"\xff\xfe", b'{"x": NaN}', b"\xef\xbb\xbf{}"]
    )
)
def test_config_file_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "config.json"
    path.write_bytes(data)

    def parse() -> None:
        build_config(read_config_file(path), env={})

    _only((ConfigError,), parse)


# ------------------------------------------------------------------ intents

INTENTS = [
    intent_to_json(
        EbgpPeerIntent(
            asn=4242420001,
            name="p",
            interface="dn42-1",
            neighbor_link_local="fe80::1",
            local_link_local="fe80::2",
        )
    ),
    intent_to_json(
        IbgpNeighborIntent(node_id=5, node_name="node5", loopback_ipv4="172.20.42.5", loopback_ipv6="fd42::5")
    ),
    intent_to_json(BabelInterfaceIntent(pattern="igp1", type="tunnel", rxcost=96)),
]


@FUZZ
@given(st.one_of(*[mutated(t) for t in INTENTS]))
def test_intent_from_json(data: Any) -> None:
    _only((IntentError,), lambda: intent_from_json(data))


# ------------------------------------------------------------------ state files

#: (file, document class, version, migrate) of every typed state document.
DOCUMENTS: list[tuple[type, int, Any, dict[str, Any]]] = [
    (SavedAnswer, 1, None, {"answer": SESSIONS_ANSWER}),
    (
        MaintenanceDoc,
        MAINTENANCE_VERSION,
        _migrate_maintenance,
        {"enabled": True, "since": 1.0, "reason": "x"},
    ),
    (AddressesDoc, LOOPBACK_VERSION, None, {"interfaces": {"lo": ["172.20.42.3/32"]}}),
    (LinksDoc, RTT_VERSION, rtt_migrate, {"links": {"dn42-1": {"tier": 3}}}),
    (LatencyDoc, LATENCY_VERSION, None, {"tiers": {"5e55a000-0000-4000-8000-000000000001": 3}}),
    (OutboxDoc, OUTBOX_VERSION, None, {"entries": [{"report": {"uuid": SESSION["uuid"], "status": 4}}]}),
    (UpdaterState, UPDATER_VERSION, None, {"pending": None, "bad": ["1.0"]}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StateStore:
    return StateStore(tmp_path_factory.mktemp("state"))


def _document_cases() -> Iterator[Any]:
    for cls, version, migrate, fields in DOCUMENTS:
        yield pytest.param(cls, version, migrate, fields, id=cls.__name__)


@pytest.mark.parametrize(("cls", "version", "migrate", "fields"), list(_document_cases()))
def test_state_documents(
    store: StateStore, cls: type, version: int, migrate: Any, fields: dict[str, Any]
) -> None:
    @settings(FUZZ, max_examples=40)
    @given(
        mutated({"version": version, **fields}).map(lambda v: json.dumps(v).encode())
        | st.binary(max_size=32)
        | st.sampled_from([b"[" * 100_000, b"{" * 3, b"9" * 5000, b"\xff", b'{"version": 1e999}'])
    )
    def run(data: bytes) -> None:
        store.write_bytes("doc.json", data)
        _only((StateError,), lambda: store.load("doc.json", cls, version=version, migrate=migrate))
        _only((StateError,), lambda: store.load_document("doc.json", version=version, migrate=migrate))

    run()


@FUZZ
@given(ANY)
def test_state_record_codecs(value: Any) -> None:
    """The per-entry codecs the plugins apply to a loaded document's fields."""
    _only((StateError, RecordError), lambda: Previous.from_json(value))
    _only((MoenetError,), lambda: peer_from_json(value))
    _only((), lambda: MeshRecord.from_json(value))
    _only((), lambda: babel_from_json(value))
    _only((), lambda: LinkState.from_json(value))


# ------------------------------------------------------------------ API bodies


class _Host:
    """Just enough of an ApiHost for the body-parsing routes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.routes: list[Any] = []

    def status(self) -> dict[str, Any]:
        return {}

    async def sync(self, task: str | None, wait: bool) -> dict[str, Any]:
        if task is not None:
            raise KeyError(task)
        return {}

    def maintenance(self) -> dict[str, Any]:
        return {}

    async def set_maintenance(self, enabled: bool, reason: str) -> dict[str, Any]:
        return {"enabled": enabled}

    async def restart(self, interface: str) -> dict[str, Any] | None:
        return None

    def context(self, plugin: str) -> Any:
        return None


API_BODIES = (
    mutated({"task": "sessionSync", "wait": True}).map(json.dumps)
    | mutated({"reason": "planned"}).map(json.dumps)
    | mutated({"interface": "dn42-1"}).map(json.dumps)
    | st.text(max_size=20)
    | st.sampled_from(["[" * 100_000, '{"reason":' * 5000 + "1", "9" * 5000, '{"wait": NaN}', "\ud800"])
)
ROUTES = ["/sync", "/restart", "/maintenance/start", "/maintenance/stop"]


async def _post_all(bodies: list[tuple[str, bytes]]) -> list[tuple[str, int, Any]]:
    api = LocalApi(_Host(), token=None)
    out: list[tuple[str, int, Any]] = []
    async with TestClient(TestServer(api.app)) as client:
        for route, body in bodies:
            resp = await client.post(route, data=body, headers={"Content-Type": "application/json"})
            out.append((route, resp.status, await resp.json(content_type=None)))
    return out


@settings(FUZZ, max_examples=60)
@given(st.lists(st.tuples(st.sampled_from(ROUTES), API_BODIES), min_size=1, max_size=4))
def test_api_bodies(bodies: list[tuple[str, str]]) -> None:
    encoded = [(r, b.encode("utf-8", "surrogatepass")) for r, b in bodies]
    for route, status, answer in asyncio.run(_post_all(encoded)):
        assert status < 500, (route, status, answer)
        assert isinstance(answer, dict)
