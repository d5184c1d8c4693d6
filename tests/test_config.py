from __future__ import annotations

import json

import attrs
import pytest

from moenet_core.config import (
    AgentConfig,
    build_config,
    camel,
    find_config_file,
    read_config_file,
    structure,
    to_dict,
)
from moenet_core.errors import ConfigError

FULL = {
    "node": {"name": "jp1", "id": 3},
    "controlPlane": {"url": "https://cp.example/api/v1", "token": "secret-token"},
}


def problems_of(raw, **kw):
    with pytest.raises(ConfigError) as info:
        build_config(raw, env=kw.pop("env", {}), **kw)
    return info.value.problems


def test_camel_case_mapping():
    assert camel("retry_initial_delay") == "retryInitialDelay"
    assert camel("dn42_ipv6_link_local") == "dn42Ipv6LinkLocal"
    assert camel("listen") == "listen"


def test_defaults_match_the_seed():
    cfg, warnings = build_config(FULL, env={})
    assert warnings == []
    assert cfg.mode == "full"
    assert cfg.server.listen == "127.0.0.1:24368"
    cp = cfg.control_plane
    assert (cp.heartbeat_interval, cp.sync_interval, cp.metric_interval) == (30, 60, 60)
    assert (cp.max_retries, cp.retry_initial_delay, cp.retry_max_delay, cp.retry_multiplier) == (
        3,
        1000,
        30000,
        2.0,
    )
    assert (cp.breaker_failure_threshold, cp.breaker_success_threshold, cp.breaker_open_duration) == (
        5,
        3,
        30,
    )
    assert (cfg.bird.pool_size, cfg.bird.pool_size_max) == (5, 10)
    assert cfg.task_interval("meshSync", 120) == 120


def test_go_agent_example_config_is_accepted():
    # The keys the Go agent's example config uses (go-agent.md §2.1).
    raw = {
        "server": {"listen": ":24368", "readTimeout": 30, "writeTimeout": 30, "idleTimeout": 120},
        "node": {"name": "jp1", "id": 1, "region": "ap-east", "location": "Tokyo", "provider": "x"},
        "controlPlane": {
            "url": "https://cp.example/api/v1",
            "token": "t0k3n-xyz",
            "requestTimeout": 15,
            "heartbeatInterval": 30,
            "syncInterval": 60,
            "metricInterval": 60,
            "maxRetries": 3,
            "retryInitialDelay": 1000,
        },
        "bird": {
            "controlSocket": "/var/run/bird/bird.ctl",
            "poolSize": 5,
            "poolSizeMax": 64,
            "peerConfDir": "/etc/bird/peers",
            "ebgpConfTemplateFile": "x.tmpl",
            "ibgpConfDir": "/etc/bird/ibgp",
        },
        "wireguard": {
            "privateKeyPath": "/etc/wireguard/private.key",
            "publicKeyPath": "/etc/wireguard/public.key",
            "configDir": "/etc/wireguard",
            "persistentKeepaliveInterval": 25,
            "dn42Ipv4": "172.22.68.198",
            "dn42Ipv6": "fd28:cb8f:4c92::1",
            "dn42Ipv6LinkLocal": "fe80::198",
        },
        "metric": {"pingTimeout": 5, "pingCount": 4, "pingWorkers": 32},
        "autoUpdate": {"enabled": False, "checkInterval": 60, "channel": "stable", "githubRepo": "a/b"},
    }
    cfg, warnings = build_config(raw, env={})
    assert cfg.server.listen == ":24368"
    assert cfg.bird.pool_size_max == 64
    assert cfg.loopback_ipv4 == "172.22.68.198"
    assert warnings == [
        "bird.ebgpConfTemplateFile: not used by this agent; put overrides in bird.templateDir"
    ]


def test_all_errors_reported_at_once_with_paths():
    raw = {
        "server": {"listen": "nope", "readTimeout": "5"},
        "node": {"name": "bad name", "id": True},
        "controlPlane": {"url": "ftp://x", "retryMultiplier": 0.5},
        "wireguard": {"dn42Ipv4": "1.2.3.4/24", "dn42Ipv6LinkLocal": "fd00::1"},
        "plugins": {"disable": ["ok", 5]},
        "tasks": {"heartbeat": {"interval": 0}, "bad": 3},
        "autoUpdate": {"channel": "nightly", "enabled": "yes"},
    }
    assert problems_of(raw) == [
        "server.listen: invalid listen address 'nope': missing port, expected host:port",
        'server.readTimeout: expected a number, got "5"',
        "node.name: must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
        "node.id: expected an integer, got true",
        "controlPlane.url: must be an http:// or https:// URL without query or fragment",
        "controlPlane.retryMultiplier: must be 1 or greater",
        "wireguard.dn42Ipv4: must be a single address (/32)",
        "wireguard.dn42Ipv6LinkLocal: must be a link-local address (fe80::/10)",
        'autoUpdate.enabled: expected true or false, got "yes"',
        "autoUpdate.channel: must be one of stable, beta, dev (got 'nightly')",
        "plugins.disable[1]: expected a string, got 5",
        "tasks.heartbeat.interval: must be greater than 0",
        "tasks.bad: expected an object, got 3",
    ]


def test_required_fields_in_full_mode():
    assert problems_of({"node": {"name": "jp1"}}) == [
        "controlPlane.url: required (or use a bootstrap section)",
        "controlPlane.token: required",
    ]


def test_unknown_keys_warned_not_dropped_silently_and_case_fixed():
    raw = {
        **FULL,
        "server": {"listen": "127.0.0.1:1", "lisen": "x"},
        "wireguard": {"dn42IPv4": "172.20.0.1"},
        "Bird": {"poolSize": 2},
        "mystery": {"a": 1},
    }
    cfg, warnings = build_config(raw, env={})
    assert cfg.wireguard.dn42_ipv4 == "172.20.0.1"
    assert cfg.bird.pool_size == 2
    assert "server.lisen: unknown key, ignored" in warnings
    assert "wireguard.dn42IPv4: accepted as 'dn42Ipv4' (spell it that way)" in warnings
    assert "Bird: accepted as 'bird' (spell it that way)" in warnings
    # Unknown top-level sections are kept for plugins; the plugin manager warns about leftovers.
    assert cfg.plugin_sections == {"mystery": {"a": 1}}


def test_env_overrides_win_and_are_validated():
    cfg, _ = build_config(
        FULL,
        env={
            "MOENET_NODE_NAME": "hk2",
            "MOENET_NODE_ID": "9",
            "MOENET_CP_URL": "http://127.0.0.1:1",
            "MOENET_CP_TOKEN": "other",
        },
    )
    assert (cfg.node.name, cfg.node.id, cfg.control_plane.url, cfg.control_plane.token) == (
        "hk2",
        9,
        "http://127.0.0.1:1",
        "other",
    )
    assert problems_of(FULL, env={"MOENET_NODE_ID": "seven"}) == [
        "MOENET_NODE_ID: expected an integer, got 'seven'"
    ]
    assert problems_of(FULL, env={"MOENET_NODE_NAME": "a b"})[0].startswith("node.name:")


def test_bootstrap_requires_its_three_keys():
    assert problems_of({"bootstrap": {"apiUrl": "https://cp.example"}}) == [
        "bootstrap.nodeName: required",
        "bootstrap.token: required",
    ]


def test_bootstrap_merge_precedence():
    local = {
        "bootstrap": {"apiUrl": "https://cp.example/api/v1", "nodeName": "jp1", "token": "tok-123456"},
        "server": {"listen": "127.0.0.1:9999"},
        "bird": {"poolSize": 7},
    }
    remote = {
        "node": {"id": 4, "name": "jp1", "asn": 4242420998, "loopbackIpv4": "172.22.68.1"},
        "bird": {"poolSize": 2, "peerConfDir": "/srv/peers"},
        "server": {"listen": "0.0.0.0:1"},  # never taken from the network
        "controlPlane": {"url": "http://evil", "token": "x", "syncInterval": 30},
    }
    cfg, _ = build_config(local, env={}, remote=remote)
    assert cfg.mode == "bootstrap"
    assert cfg.node.id == 4 and cfg.node.asn == 4242420998
    assert cfg.loopback_ipv4 == "172.22.68.1"
    assert cfg.bird.pool_size == 7  # local wins
    assert cfg.bird.peer_conf_dir == "/srv/peers"  # remote over defaults
    assert cfg.bird.pool_size_max == 10  # defaults still applied (the Go agent lost them)
    assert cfg.server.listen == "127.0.0.1:9999"
    assert cfg.control_plane.url == "https://cp.example/api/v1"
    assert cfg.control_plane.token == "tok-123456"
    assert cfg.control_plane.sync_interval == 30


def test_invalid_remote_values_are_problems_with_paths():
    local = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "jp1", "token": "tok-123456"}}
    assert problems_of(local, remote={"node": {"id": "four"}, "bird": {"poolSize": -1}}) == [
        'node.id: expected an integer, got "four"',
        "bird.poolSize: must be greater than 0",
    ]


def test_standalone_mode():
    cfg, _ = build_config(
        {"node": {"name": "jp1"}, "controlPlane": {"source": "file", "file": "/x.json"}}, env={}
    )
    assert cfg.mode == "standalone"
    assert problems_of({"node": {"name": "jp1"}, "controlPlane": {"source": "file"}}) == [
        "controlPlane.file: required when controlPlane.source is 'file'"
    ]


def test_backend_choice():
    cfg, _ = build_config(
        {**FULL, "wireguard": {"backend": "userspace"}, "backends": {"firewall": "nftables"}}, env={}
    )
    assert cfg.backend_choice("tunnel") == "userspace"
    assert cfg.backend_choice("firewall") == "nftables"
    assert cfg.backend_choice("loopback") == "auto"
    assert problems_of({**FULL, "backends": {"tunnel": "Bad Name"}}) == [
        "backends: invalid backend selections: tunnel=Bad Name"
    ]


def test_loopback_disagreement_is_an_error():
    raw = {
        **FULL,
        "node": {"name": "jp1", "loopbackIpv4": "172.22.68.1"},
        "wireguard": {"dn42Ipv4": "172.22.68.2"},
    }
    assert problems_of(raw) == [
        "node.loopbackIpv4: disagrees with wireguard.dn42Ipv4 (172.22.68.1 vs 172.22.68.2)"
    ]


def test_structure_plugin_section_type():
    @attrs.define
    class Section:
        url: str
        retries: int = 3

    warnings: list[str] = []
    obj, errs = structure(Section, {"url": "x", "retires": 1}, "webhook", warnings)
    assert obj == Section(url="x") and errs == []
    assert warnings == ["webhook.retires: unknown key, ignored"]
    obj, errs = structure(Section, {"retries": "3"}, "webhook", [])
    assert obj is None
    assert errs == ["webhook.url: required", 'webhook.retries: expected an integer, got "3"']


def test_find_and_read_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match="no config file found"):
        find_config_file(None)
    (tmp_path / "config.json").write_text(json.dumps(FULL))
    assert find_config_file(None).resolve() == (tmp_path / "config.json").resolve()
    with pytest.raises(ConfigError, match="no such file"):
        find_config_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "node": {"name": "x",}\n}')
    with pytest.raises(ConfigError) as info:
        read_config_file(bad)
    assert info.value.problems == ["line 2 column 24: Expecting property name enclosed in double quotes"]
    assert str(bad) in str(info.value)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        read_config_file(tmp_path / "list.json")


def test_to_dict_masks_secrets():
    cfg, _ = build_config({**FULL, "server": {"token": "api-secret"}}, env={})
    out = to_dict(cfg)
    assert out["controlPlane"]["token"] == "***" and out["server"]["token"] == "***"
    assert out["controlPlane"]["url"] == "https://cp.example/api/v1"
    assert isinstance(AgentConfig(), AgentConfig)


def test_containers_are_strict():
    # A string is not a list of plugin names (cattrs would happily split it into characters).
    assert problems_of({**FULL, "plugins": {"disable": "heartbeat"}, "backends": [1]}) == [
        'plugins.disable: expected a list, got "heartbeat"',
        "backends: expected an object, got [1]",
    ]
