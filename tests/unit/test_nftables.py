"""moenet_nftables without a kernel: config checks, the rendered script, the
listing parser and the comparison that decides whether a sync writes."""

from __future__ import annotations

import json
import time

import moenet_nftables
import pytest
from moenet_nftables import NftablesConfig, NftablesError, NftablesFirewall, ruleset
from moenet_nftables.ruleset import Desired

from moenet_core.config import build_config, structure


def problems(raw):
    obj, errs = structure(NftablesConfig, raw, "nftables", [])
    return errs if errs else obj


# ----------------------------------------------------------------- config


def test_defaults():
    cfg = problems({})
    assert cfg == NftablesConfig()
    assert (cfg.table, cfg.chain_priority, cfg.managed_range, cfg.nft_path, cfg.timeout) == (
        "moenet_agent",
        -10,
        None,
        "nft",
        10.0,
    )
    assert cfg.managed_bounds() is None


def test_camel_case_keys_structure():
    cfg = problems(
        {
            "table": "moenet_x1",
            "chainPriority": -150,
            "managedRange": "20000-29999",
            "nftPath": "/usr/sbin/nft",
        }
    )
    assert cfg.table == "moenet_x1" and cfg.chain_priority == -150
    assert cfg.managed_bounds() == (20000, 29999)
    assert problems({"managedRange": "5-5"}).managed_bounds() == (5, 5)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"table": "filter"}, "nftables.table: must start with 'moenet'"),
        ({"table": "moenet-agent"}, "nftables.table: must start with 'moenet'"),
        ({"table": "moenet_" + "x" * 60}, "nftables.table: must start with 'moenet'"),
        ({"table": 5}, "nftables.table: "),
        ({"chainPriority": "early"}, "nftables.chainPriority: "),
        ({"chainPriority": 2**31}, "nftables.chainPriority: must be a 32-bit signed integer"),
        ({"chainPriority": True}, "nftables.chainPriority: "),
        ({"managedRange": "20000"}, "nftables.managedRange: must be 'low-high'"),
        ({"managedRange": "29999-20000"}, "nftables.managedRange: low end must not exceed the high end"),
        ({"managedRange": "0-100"}, "nftables.managedRange: ports must be within 1-65535"),
        ({"managedRange": "1-70000"}, "nftables.managedRange: ports must be within 1-65535"),
        ({"managedRange": " 1-2"}, "nftables.managedRange: must be 'low-high'"),
        ({"managedRange": 20000}, "nftables.managedRange: "),
        ({"nftPath": ""}, "nftables.nftPath: must be an executable name"),
        ({"nftPath": "nft -j"}, "nftables.nftPath: must be an executable name"),
        ({"timeout": 0}, "nftables.timeout: must be greater than 0"),
    ],
)
def test_config_errors_name_the_field(raw, expected):
    errs = problems(raw)
    assert isinstance(errs, list) and len(errs) == 1, errs
    assert errs[0].startswith(expected), errs


def test_every_bad_field_is_reported_at_once():
    errs = problems({"table": "x", "managedRange": "9-1", "chainPriority": 2**40})
    assert sorted(e.split(":")[0] for e in errs) == [
        "nftables.chainPriority",
        "nftables.managedRange",
        "nftables.table",
    ]


def test_config_built_in_code_is_checked_too():
    with pytest.raises(ValueError, match="managed_range: must be 'low-high'"):
        NftablesConfig(managed_range="all")
    with pytest.raises(ValueError, match="table: must start with 'moenet'"):
        NftablesConfig(table="inet")


def test_unknown_key_is_a_warning():
    warnings: list[str] = []
    obj, errs = structure(NftablesConfig, {"tabel": "moenet_x"}, "nftables", warnings)
    assert obj == NftablesConfig() and errs == []
    assert warnings == ["nftables.tabel: unknown key, ignored"]


# ---------------------------------------------------------------- hooks


def test_hooks_declare_section_and_backend(tmp_path):
    [section] = moenet_nftables.moenet_config_sections()
    assert section.name == "nftables" and section.type is NftablesConfig
    cfg, _ = build_config({"node": {"name": "n1"}, "controlPlane": {"source": "file", "file": "/x"}}, env={})
    [spec] = moenet_nftables.moenet_backends(config=cfg)
    assert (spec.kind, spec.name) == ("firewall", "nftables")
    assert spec.probe is not None and spec.probe() is True  # nft is installed here
    cfg.plugin_sections = {"nftables": {"nftPath": str(tmp_path / "no-nft")}}
    [spec] = moenet_nftables.moenet_backends(config=cfg)
    assert spec.probe is not None and spec.probe() is False


# ----------------------------------------------------------------- ports


@pytest.mark.parametrize("bad", [0, 65536, -1, "80", 1.5, True, None])
def test_invalid_ports_are_refused(bad):
    with pytest.raises(ValueError, match="invalid UDP ports"):
        ruleset.validate_ports(frozenset({51820, bad}))


def test_port_container_must_be_a_collection():
    with pytest.raises(ValueError, match="not str"):
        ruleset.validate_ports("51820")  # type: ignore[arg-type]
    assert ruleset.validate_ports([1, 65535, 1]) == frozenset({1, 65535})
    assert ruleset.validate_ports(frozenset()) == frozenset()


# ------------------------------------------------------------- rendering


def test_render_full_table():
    text = ruleset.render(
        Desired(
            table="moenet_agent",
            sets={"sessions": frozenset({51821, 51820})},
            priority=-10,
            managed_range=(20000, 29999),
        )
    )
    assert text.splitlines()[:3] == [
        "table inet moenet_agent {}",
        "delete table inet moenet_agent",
        "table inet moenet_agent {",
    ]
    assert "\t\telements = { 51820, 51821 }" in text
    assert "\t\ttype filter hook input priority -10; policy accept;" in text
    assert '\t\tudp dport @udp_ports counter accept comment "moenet-agent: open ports"' in text
    assert (
        '\t\tudp dport 20000-29999 counter drop comment "moenet-agent: closed ports of the managed range"'
        in text
    )
    assert text.count("table inet") == 3  # nothing but the agent's table is named


def test_render_empty_set_and_no_range():
    text = ruleset.render(Desired(table="moenet_t", sets={"sessions": frozenset()}, priority=0))
    assert "elements" not in text and "drop" not in text
    assert ruleset.render_delete("moenet_t") == "table inet moenet_t {}\ndelete table inet moenet_t\n"


def test_single_port_range_is_rendered_as_a_port():
    want = Desired(table="moenet_t", sets={"sessions": frozenset({1})}, priority=0, managed_range=(7, 7))
    assert "udp dport 7 counter drop" in ruleset.render(want)
    drop = ruleset.expected(want)[-1]["rule"]["expr"][0]["match"]["right"]
    assert drop == 7


# --------------------------------------------------------------- listing

LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "moenet_agent", "handle": 7}},
        {
            "set": {
                "family": "inet",
                "name": "udp_ports",
                "table": "moenet_agent",
                "type": "inet_service",
                "handle": 1,
                "comment": "moenet-agent: UDP ports open for tunnels",
                "elem": [51821, 51820],
            }
        },
        {
            "chain": {
                "family": "inet",
                "table": "moenet_agent",
                "name": "input",
                "handle": 2,
                "type": "filter",
                "hook": "input",
                "prio": -10,
                "policy": "accept",
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "moenet_agent",
                "chain": "input",
                "handle": 3,
                "comment": "moenet-agent: open ports",
                "expr": [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "udp", "field": "dport"}},
                            "right": "@udp_ports",
                        }
                    },
                    {"counter": {"packets": 12, "bytes": 3400}},
                    {"accept": None},
                ],
            }
        },
    ]
}
WANT = Desired(table="moenet_agent", sets={"sessions": frozenset({51820, 51821})}, priority=-10)


def test_recorded_listing_matches_expected_form():
    objs = ruleset.parse_listing(json.dumps(LISTING))
    assert objs == ruleset.expected(WANT)  # handles and counter values do not count
    assert ruleset.ports_in(objs) == {51820, 51821}
    assert ruleset.describe(objs, WANT, ruleset.expected(WANT)) == []


def test_describe_port_changes_and_drift():
    objs = ruleset.parse_listing(json.dumps(LISTING))
    want = Desired(
        table="moenet_agent",
        sets={"sessions": frozenset({51820, 4242})},
        priority=-10,
        managed_range=(4000, 4999),
    )
    reasons = ruleset.describe(objs, want, ruleset.expected(want))
    assert reasons[:2] == ["sessions: open 4242", "sessions: close 51821"]
    assert len(reasons) == 3 and reasons[2].startswith("missing rule in input:")
    assert ruleset.describe(None, WANT, ruleset.expected(WANT)) == [
        "create table inet moenet_agent with 2 open ports"
    ]


def test_hand_added_objects_are_drift():
    listing = json.loads(json.dumps(LISTING))
    listing["nftables"].append(
        {"chain": {"family": "inet", "table": "moenet_agent", "name": "extra", "handle": 9}}
    )
    listing["nftables"][3]["chain"]["comment"] = "tables and chains comments are not compared"
    objs = ruleset.parse_listing(json.dumps(listing))
    [reason] = ruleset.describe(objs, WANT, ruleset.expected(WANT))
    assert reason.startswith("unexpected chain extra")


def test_element_options_are_drift_but_still_ports():
    listing = json.loads(json.dumps(LISTING))
    listing["nftables"][2]["set"]["elem"] = [51820, {"elem": {"val": 51821, "comment": "by hand"}}]
    objs = ruleset.parse_listing(json.dumps(listing))
    assert ruleset.ports_in(objs) == {51820, 51821}
    assert ruleset.describe(objs, WANT, ruleset.expected(WANT)) == [
        "set elements differ in form (element options added by hand)"
    ]
    listing["nftables"][2]["set"]["elem"] = [{"range": [10, 12]}]
    assert ruleset.ports_in(ruleset.parse_listing(json.dumps(listing))) == {10, 11, 12}


@pytest.mark.parametrize(
    "text", ["", "[]", '{"nftables": {}}', '{"nftables": [{"a": 1, "b": 2}]}', '{"nftables": [{"set": 3}]}']
)
def test_garbage_listing_is_an_error(text):
    with pytest.raises(ruleset.ListingError):
        ruleset.parse_listing(text)


# -------------------------------------------------------- nft misbehaving


async def test_nft_errors_carry_stderr_and_hangs_time_out(tmp_path):
    failing = tmp_path / "nft-fails"
    failing.write_text("#!/bin/sh\necho 'Error: Operation not permitted' >&2\nexit 1\n")
    hanging = tmp_path / "nft-hangs"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    for script in (failing, hanging):
        script.chmod(0o755)
    with pytest.raises(NftablesError, match="Operation not permitted"):
        await NftablesFirewall(NftablesConfig(nft_path=str(failing))).sync(frozenset({51820}))
    started = time.monotonic()
    with pytest.raises(NftablesError, match=r"timed out after 0.3s"):
        await NftablesFirewall(NftablesConfig(nft_path=str(hanging), timeout=0.3)).list_ports()
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------- owners


def test_owner_set_names():
    assert ruleset.set_name("sessions") == "udp_ports"  # the set every older table has
    assert ruleset.set_name("mesh") == "udp_ports_mesh"
    assert ruleset.set_name("a-b_1") == "udp_ports_a-b_1"
    for name, owner in (
        ("udp_ports", "sessions"),
        ("udp_ports_mesh", "mesh"),
        ("udp_ports_a-b_1", "a-b_1"),
        ("udp_ports_sessions", None),  # not canonical
        ("udp_ports_", None),
        ("udp_ports_Mesh", None),
        ("udp_portsmesh", None),
        ("admins", None),
        (None, None),
    ):
        assert ruleset.owner_of_set(name) == owner, name
    for bad in ("", "Mesh", "1x", "a b", "x;flush ruleset", "mesh\n", "a" * 33, None):
        with pytest.raises(ValueError, match="firewall owner"):
            ruleset.validate_owner(bad)


def test_desired_sets_are_canonical():
    want = Desired(
        table="moenet_t",
        sets={
            "zeta": frozenset({3}),
            "mesh": frozenset({2}),
            "sessions": frozenset({1}),
            "idle": frozenset(),
        },
        priority=0,
    )
    # The default owner first (always), then owners holding ports by name; empty ones have no set.
    assert want.sets == (("sessions", frozenset({1})), ("mesh", frozenset({2})), ("zeta", frozenset({3})))
    assert want.ports == {1, 2, 3} and want.owner_ports("mesh") == {2} and want.owner_ports("idle") == set()
    assert Desired(table="moenet_t", sets={"mesh": frozenset({2})}, priority=0).sets == (
        ("sessions", frozenset()),
        ("mesh", frozenset({2})),
    )
    with pytest.raises(ValueError, match="firewall owner"):
        Desired(table="moenet_t", sets={"Bad": frozenset()}, priority=0)


def test_render_and_expect_one_set_and_rule_per_owner():
    want = Desired(
        table="moenet_agent",
        sets={"sessions": frozenset({51820}), "mesh": frozenset({4242, 4243})},
        priority=-10,
        managed_range=(4000, 60000),
    )
    text = ruleset.render(want)
    assert "\tset udp_ports {" in text and "\tset udp_ports_mesh {" in text
    assert "\t\telements = { 4242, 4243 }" in text and "\t\telements = { 51820 }" in text
    rules = [line.strip() for line in text.splitlines() if line.startswith("\t\tudp dport")]
    assert rules == [
        'udp dport @udp_ports counter accept comment "moenet-agent: open ports"',
        'udp dport @udp_ports_mesh counter accept comment "moenet-agent: open ports of mesh"',
        'udp dport 4000-60000 counter drop comment "moenet-agent: closed ports of the managed range"',
    ]
    objs = ruleset.expected(want)
    assert [next(iter(o)) for o in objs] == ["table", "set", "set", "chain", "rule", "rule", "rule"]
    assert ruleset.owner_sets(objs) == {"sessions": {51820}, "mesh": {4242, 4243}}
    assert ruleset.ports_in(objs) == {51820, 4242, 4243}
    assert ruleset.ports_in(objs, "mesh") == {4242, 4243} and ruleset.ports_in(objs, "x") == set()


def test_a_table_of_the_previous_version_is_the_sessions_owners():
    objs = ruleset.parse_listing(json.dumps(LISTING))  # recorded from the version before owners
    assert ruleset.owner_sets(objs) == {"sessions": {51820, 51821}}
    assert ruleset.ports_in(objs, "sessions") == {51820, 51821} and ruleset.ports_in(objs, "mesh") == set()
    # Upgrading changes nothing: the sessions owner's desired table is the listed one.
    assert objs == ruleset.expected(
        Desired(table="moenet_agent", sets=ruleset.owner_sets(objs), priority=-10)
    )


def test_describe_names_the_owner_whose_ports_change():
    objs = ruleset.parse_listing(json.dumps(LISTING))
    want = Desired(
        table="moenet_agent", sets={"sessions": frozenset({51820, 51821}), "mesh": {7, 8}}, priority=-10
    )
    reasons = ruleset.describe(objs, want, ruleset.expected(want))
    assert reasons[0] == "mesh: open 7, 8"
    assert all(not r.startswith("sessions:") for r in reasons)
    back = ruleset.expected(want)
    assert ruleset.describe(back, WANT, ruleset.expected(WANT))[0] == "mesh: close 7, 8"
