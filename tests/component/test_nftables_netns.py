"""moenet_nftables against real nftables, each test in throwaway network namespaces.

The backend runs inside a namespace (``with ns.entered():`` switches the event
loop's thread; nft children inherit it); assertions read the namespace's
ruleset with ``ns.run("nft", ...)``. The host's ruleset is compared before and
after every test.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import helpers.nftables
import moenet_nftables
import pytest
from helpers.nftables import Recording, counter_of, raw_objects, rule_by_comment
from moenet_nftables import NftablesConfig, NftablesFirewall, ruleset

from moenet_core import BackendUnavailable, FirewallBackend
from moenet_core.testing import NetNS, veth_pair

host_ruleset_untouched = helpers.nftables.host_ruleset_untouched  # a fixture

pytestmark = pytest.mark.netns

PORTS = frozenset({51820, 51821})
OPERATOR_TABLE = """
table inet operator {
    set admins { type ipv4_addr; elements = { 192.0.2.9 } }
    chain input {
        type filter hook input priority 0; policy accept;
        udp dport 51820 counter accept
        tcp dport 22 counter accept
    }
}
"""


def listing(ns: NetNS, *what: str) -> list[dict]:
    """Normalised JSON listing (no handles, no counter values)."""
    return ruleset.parse_listing(ns.run("nft", "-j", "list", *(what or ("ruleset",))).stdout)


# ----------------------------------------------------------------- sync


async def test_sync_creates_exactly_the_ports_and_rules(netns):
    ns = netns()
    with ns.entered():
        fw = Recording(NftablesConfig())
        await fw.start()
        assert await fw.sync(PORTS) is True
        assert await fw.list_ports() == PORTS
    assert fw.transactions == 1 and len(fw.writes()) == 1
    raw = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    tables = [o["table"]["name"] for o in raw if "table" in o]
    assert tables == ["moenet_agent"]
    [nft_set] = [o["set"] for o in raw if "set" in o]
    assert (nft_set["name"], nft_set["type"], nft_set["elem"]) == (
        "udp_ports",
        "inet_service",
        [51820, 51821],
    )
    [chain] = [o["chain"] for o in raw if "chain" in o]
    assert (chain["name"], chain["type"], chain["hook"], chain["prio"], chain["policy"]) == (
        "input",
        "filter",
        "input",
        -10,
        "accept",
    )
    [rule] = [o["rule"] for o in raw if "rule" in o]
    assert rule["expr"][0] == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "udp", "field": "dport"}},
            "right": "@udp_ports",
        }
    }
    assert [next(iter(e)) for e in rule["expr"]] == ["match", "counter", "accept"]
    assert listing(ns) == ruleset.expected(
        ruleset.Desired(table="moenet_agent", sets={"sessions": PORTS}, priority=-10)
    )
    text = ns.run("nft", "list", "ruleset").stdout
    assert 'comment "managed by moenet-agent' in text


async def test_resync_with_other_ports_is_one_transaction(netns):
    ns = netns()
    with ns.entered():
        fw = Recording(NftablesConfig(managed_range="20000-29999"))
        await fw.sync(PORTS)
        fw.calls.clear()
        assert await fw.sync(frozenset({51821, 20005, 20006})) is True
        assert fw.last_changes == ["sessions: open 20005, 20006", "sessions: close 51820"]
        assert await fw.list_ports() == {51821, 20005, 20006}
        assert await fw.sync(frozenset()) is True
        assert await fw.list_ports() == frozenset()
    assert fw.transactions == 3
    # Per changing sync: one read, one write (the whole table), one read-back.
    assert fw.calls[:3] == [
        ("-j", "list", "table", "inet", "moenet_agent"),
        ("-f", "-"),
        ("-j", "list", "table", "inet", "moenet_agent"),
    ]
    assert len(fw.writes()) == 2
    [nft_set] = [o["set"] for o in listing(ns) if "set" in o]
    assert "elem" not in nft_set  # an empty set, still present (the rule refers to it)


async def test_unchanged_sync_writes_nothing(netns):
    ns = netns()
    with ns.entered():
        fw = Recording(NftablesConfig(managed_range="20000-29999"))
        await fw.sync(PORTS)
        before = ns.run("nft", "-a", "list", "ruleset").stdout  # -a: handles change if recreated
        fw.calls.clear()
        for _ in range(3):
            assert await fw.sync(frozenset(sorted(PORTS))) is False
        rounds = 20
        started = time.perf_counter()
        for _ in range(rounds):
            await fw.sync(PORTS)
        per_sync = (time.perf_counter() - started) / rounds
    assert fw.transactions == 1
    assert fw.writes() == []
    assert all(c == ("-j", "list", "table", "inet", "moenet_agent") for c in fw.calls)
    assert ns.run("nft", "-a", "list", "ruleset").stdout == before
    assert per_sync < 0.25, f"a no-op sync took {per_sync * 1000:.1f} ms"


async def test_plan_reports_without_writing(netns):
    ns = netns()
    with ns.entered():
        fw = Recording()
        assert await fw.plan(PORTS) == ["create table inet moenet_agent with 2 open ports"]
        await fw.sync(PORTS)
        assert await fw.plan(PORTS) == []
        assert await fw.plan(frozenset({51820, 7})) == ["sessions: open 7", "sessions: close 51821"]
        with pytest.raises(ValueError, match="invalid UDP ports"):
            await fw.plan(frozenset({0}))
    assert len(fw.writes()) == 1 and kernel_ports(ns) == PORTS


def kernel_ports(ns: NetNS) -> frozenset[int]:
    return ruleset.ports_in(listing(ns))


async def test_concurrent_syncs_are_serialised(netns):
    ns = netns()
    with ns.entered():
        fw = NftablesFirewall()
        results = await asyncio.gather(*(fw.sync(frozenset({p})) for p in (1000, 1001, 1002)))
        assert results == [True, True, True]
        assert await fw.list_ports() == {1002}


async def test_invalid_ports_are_rejected_before_anything_runs(netns):
    ns = netns()
    with ns.entered():
        fw = Recording()
        for bad in (frozenset({0}), frozenset({65536}), frozenset({51820, "51821"}), frozenset({True})):
            with pytest.raises(ValueError, match="invalid UDP ports"):
                await fw.sync(bad)
    assert fw.calls == [] and fw.transactions == 0
    assert listing(ns) == []


# ----------------------------------------------------------- ownership


async def test_foreign_table_is_never_touched(netns):
    ns = netns()
    ns.run("nft", "-f", "-", input=OPERATOR_TABLE)
    ns.run("nft", "add", "table", "ip", "moenet_other")  # a name with the prefix, still not ours
    foreign = ns.run("nft", "-a", "list", "table", "inet", "operator").stdout
    other = ns.run("nft", "-a", "list", "table", "ip", "moenet_other").stdout
    with ns.entered():
        fw = NftablesFirewall()
        await fw.sync(PORTS)
        await fw.sync(frozenset({4000}))
        assert not await fw.sync(frozenset({4000}))
        assert ns.run("nft", "-a", "list", "table", "inet", "operator").stdout == foreign
        await fw.remove_all()
    assert ns.run("nft", "-a", "list", "table", "inet", "operator").stdout == foreign
    assert ns.run("nft", "-a", "list", "table", "ip", "moenet_other").stdout == other
    tables = [o["table"]["name"] for o in listing(ns) if "table" in o]
    assert sorted(tables) == ["moenet_other", "operator"]


async def test_remove_all_drops_only_the_agents_table(netns):
    ns = netns()
    ns.run("nft", "-f", "-", input=OPERATOR_TABLE)
    with ns.entered():
        fw = Recording()
        await fw.remove_all()  # absent: nothing is written
        assert fw.writes() == [] and fw.transactions == 0
        await fw.sync(PORTS)
        await fw.remove_all()
        assert fw.transactions == 2
        assert await fw.list_ports() == frozenset()
        await fw.remove_all()
        assert fw.transactions == 2
        assert await fw.sync(PORTS) is True  # recreated after removal; not counted as drift
    assert fw.drift_repairs == 0
    assert sorted(o["table"]["name"] for o in listing(ns) if "table" in o) == ["moenet_agent", "operator"]


def _delete_accept_rule(ns: NetNS) -> None:
    handle = rule_by_comment(ns, ruleset.ACCEPT_COMMENT)["handle"]
    ns.run("nft", "delete", "rule", "inet", "moenet_agent", "input", "handle", str(handle))


DRIFT = {
    "deleted rule": _delete_accept_rule,
    "added element": lambda ns: ns.run("nft", "add", "element", "inet", "moenet_agent", "udp_ports", "{ 7 }"),
    "flushed set": lambda ns: ns.run("nft", "flush", "set", "inet", "moenet_agent", "udp_ports"),
    "inserted rule": lambda ns: ns.run(
        "nft", "insert", "rule", "inet", "moenet_agent", "input", "udp", "dport", "53", "drop"
    ),
    "added chain": lambda ns: ns.run("nft", "add", "chain", "inet", "moenet_agent", "sneaky"),
    "policy drop": lambda ns: ns.run(
        "nft",
        "add",
        "chain",
        "inet",
        "moenet_agent",
        "input",
        "{ type filter hook input priority -10; policy drop; }",
    ),
    "deleted table": lambda ns: ns.run("nft", "delete", "table", "inet", "moenet_agent"),
    "element with comment": lambda ns: ns.run(
        "nft", "-f", "-", input='add element inet moenet_agent udp_ports { 4242 comment "mine" }\n'
    ),
}


@pytest.mark.parametrize("edit", DRIFT, ids=list(DRIFT))
async def test_hand_edits_are_repaired_by_the_next_sync(netns, edit):
    ns = netns()
    with ns.entered():
        fw = NftablesFirewall(NftablesConfig(managed_range="20000-29999"))
        await fw.sync(PORTS)
        good = listing(ns)
        DRIFT[edit](ns)
        assert listing(ns) != good
        assert await fw.sync(PORTS) is True
        assert fw.drift_repairs == 1 and fw.transactions == 2
        assert listing(ns) == good
        assert await fw.sync(PORTS) is False


async def test_list_ports_reads_the_kernel(netns):
    ns = netns()
    with ns.entered():
        fw = NftablesFirewall()
        assert await fw.list_ports() == frozenset()
        await fw.sync(PORTS)
        ns.run("nft", "add", "element", "inet", "moenet_agent", "udp_ports", "{ 9 }")
        assert await fw.list_ports() == PORTS | {9}
        ns.run("nft", "flush", "ruleset")
        assert await fw.list_ports() == frozenset()


async def test_config_change_is_applied_and_not_called_drift(netns):
    ns = netns()
    cfg = NftablesConfig()
    with ns.entered():
        fw = NftablesFirewall(live_config=lambda: cfg)
        await fw.sync(PORTS)
        cfg = NftablesConfig(chain_priority=-50, managed_range="20000-20999")
        assert await fw.sync(PORTS) is True
        assert fw.drift_repairs == 0
        assert not await fw.sync(PORTS)
    [chain] = [o["chain"] for o in listing(ns) if "chain" in o]
    assert chain["prio"] == -50
    assert "udp dport 20000-20999 counter packets 0 bytes 0 drop" in ns.run("nft", "list", "ruleset").stdout


# --------------------------------------------------------------- packets


def _udp_socket(family: int, port: int | None = None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if port is not None:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    return sock


#: An operator's own default-drop firewall that delegates 20000-29999 to the
#: agent, as the plugin's docstring tells operators to do.
DEFAULT_DROP = """
table inet filter {
    chain input {
        type filter hook input priority 0; policy drop;
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
        udp dport 20000-29999 accept
        counter drop comment "operator: everything else"
    }
}
"""


async def _wait_counter(ns: NetNS, comment: str, want: int, table: str = "moenet_agent") -> int:
    """A rule's packet counter once it reaches ``want`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        rules = [o["rule"] for o in raw_objects(ns, "table", "inet", table) if "rule" in o]
        [rule] = [r for r in rules if r.get("comment") == comment]
        if (n := counter_of(rule)) >= want or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("operator_firewall", [False, True], ids=["alone", "with-default-drop"])
async def test_open_port_receives_and_closed_port_in_range_is_dropped(netns, operator_firewall):
    rx, tx = netns(), netns()
    veth_pair(rx, tx, "vr", "vt")
    rx.run("ip", "addr", "add", "192.0.2.1/24", "dev", "vr")
    tx.run("ip", "addr", "add", "192.0.2.2/24", "dev", "vt")
    rx.run("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "vr", "nodad")
    tx.run("ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "vt", "nodad")
    if operator_firewall:
        rx.run("nft", "-f", "-", input=DEFAULT_DROP)
    loop = asyncio.get_running_loop()
    ports = {"open": 20001, "closed": 20002, "outside": 30001}
    arriving = ["open"] if operator_firewall else ["open", "outside"]
    targets = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
    receivers: dict[tuple[int, str], socket.socket] = {}
    senders: list[socket.socket] = []
    try:
        with rx.entered():
            fw = NftablesFirewall(NftablesConfig(managed_range="20000-29999"))
            assert await fw.sync(frozenset({ports["open"]}))
            for fam in targets:
                for name, port in ports.items():
                    receivers[fam, name] = _udp_socket(fam, port)
        with tx.entered():
            senders = [_udp_socket(fam) for fam in targets]
        for sender, (fam, addr) in zip(senders, targets.items(), strict=True):
            for name in ("closed", "outside", "open"):
                sender.sendto(f"{name}-{fam}".encode(), (addr, ports[name]))
        for fam in targets:
            for name in arriving:
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(receivers[fam, name], 100), 5)
                assert data == f"{name}-{fam}".encode()

        # Drops are proved by the dropping rule's counter, not only by silence.
        assert await _wait_counter(rx, ruleset.DROP_COMMENT, 2) == 2  # one IPv4, one IPv6
        assert counter_of(rule_by_comment(rx, ruleset.ACCEPT_COMMENT)) == 2
        if operator_firewall:
            assert await _wait_counter(rx, "operator: everything else", 2, table="filter") == 2
        for fam in targets:
            for name in ports.keys() - arriving:
                with pytest.raises(BlockingIOError):
                    receivers[fam, name].recv(100)
    finally:
        for sock in [*receivers.values(), *senders]:
            sock.close()


# ------------------------------------------------------------ the core


def _agent_config(tmp_path, **extra):
    data = tmp_path / "cp.json"
    data.write_text("{}")
    cfg = {
        "node": {"name": "n1"},
        "controlPlane": {"source": "file", "file": str(data)},
        "backends": {"firewall": "nftables"},
    }
    cfg.update(extra)
    return cfg


async def test_backend_through_the_agent_core(netns, agent_harness, tmp_path):
    ns = netns()
    cfg = _agent_config(tmp_path, nftables={"chainPriority": -20, "managedRange": "20000-29999"})
    with ns.entered():
        async with agent_harness(cfg, plugins=[("nftables", moenet_nftables)]) as h:
            assert h.agent.status()["backends"]["firewall"] == {
                "name": "nftables",
                "plugin": "nftables",
                "ok": True,
            }
            fw = h.agent.context("nftables").backend("firewall", FirewallBackend)
            assert isinstance(fw, NftablesFirewall)
            assert await fw.sync(frozenset({20001}))
            assert not await fw.sync(frozenset({20001}))
            registry = h.agent.metrics.registry
            assert registry.get_sample_value("moenet_nftables_transactions_total") == 1
            assert registry.get_sample_value("moenet_nftables_open_ports", {"owner": "sessions"}) == 1
            ns.run("nft", "add", "element", "inet", "moenet_agent", "udp_ports", "{ 7 }")
            assert await fw.sync(frozenset({20001}))
            assert registry.get_sample_value("moenet_nftables_drift_repairs_total") == 1
        # Shutdown leaves the table (and the tunnels' ports) in place.
        assert await fw.list_ports() == {20001}
    [chain] = [o["chain"] for o in listing(ns) if "chain" in o]
    assert chain["prio"] == -20


async def test_invalid_section_fails_the_plugin_naming_the_field(netns, agent_harness, tmp_path):
    ns = netns()
    cfg = _agent_config(tmp_path, nftables={"managedRange": "29999-20000", "table": "filter"})
    with ns.entered():
        async with agent_harness(cfg, plugins=[("nftables", moenet_nftables)]) as h:
            record = h.agent.pm.records["nftables"]
            with pytest.raises(BackendUnavailable):
                h.agent.backend("firewall")
    assert record.status == "failed"
    assert "nftables.managedRange: low end must not exceed the high end" in record.error
    assert "nftables.table: must start with 'moenet'" in record.error
    assert listing(ns) == []


async def test_backend_start_fails_visibly_without_nft(netns, agent_harness, tmp_path):
    ns = netns()
    cfg = _agent_config(tmp_path, nftables={"nftPath": str(tmp_path / "missing-nft")})
    with ns.entered():
        async with agent_harness(cfg, plugins=[("nftables", moenet_nftables)]) as h:
            status = h.agent.status()
    assert status["backends"]["firewall"]["ok"] is False
    assert "missing-nft" in status["backends"]["firewall"]["error"]
