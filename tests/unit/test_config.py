from __future__ import annotations

import json

import attrs
import pytest

from moenet_core import ConfigSection, SectionAlias
from moenet_core.agent import structure_plugin_sections
from moenet_core.cli import disabled_plugins
from moenet_core.config import (
    AgentConfig,
    build_config,
    camel,
    find_config_file,
    merge_sections,
    read_config_file,
    structure,
    to_dict,
)
from moenet_core.errors import ConfigError
from moenet_core.plugins import AgentPluginManager

FULL = {
    "node": {"name": "jp1", "id": 3},
    "controlPlane": {"url": "https://cp.example/api/v1", "token": "secret-token"},
}


def problems_of(raw, **kw):
    with pytest.raises(ConfigError) as info:
        build_config(raw, env=kw.pop("env", {}), **kw)
    return info.value.problems


def with_plugins(raw, **kw):
    """The config, its warnings (core and plugin sections) and the structured
    sections of the built-in plugins."""
    cfg, warnings = build_config(raw, env=kw.pop("env", {}), **kw)
    disabled, enabled = disabled_plugins(cfg, {})
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    sections = structure_plugin_sections(cfg, pm)
    return cfg, [*warnings, *sections.warnings], sections


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
    assert cfg.task_interval("meshSync", 120) == 120
    # The core keeps only its own sections; the rest are the plugins'.
    assert set(to_dict(cfg)) == {
        "server", "node", "controlPlane", "bootstrap", "plugins", "tasks", "backends", "state", "logging"
    }  # fmt: skip


#: The keys the Go agent's example config uses (go-agent.md §2.1), plus the
#: sections this agent had before each concern got one section
#: (birdAgent, tunnel, meshSync).
GO_CONFIG = {
    # A token: a listener beyond loopback without one is refused (issue 14).
    "server": {
        "listen": ":24368",
        "readTimeout": 30,
        "writeTimeout": 30,
        "idleTimeout": 120,
        "token": "api-token-0123456789",
    },
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
    "birdAgent": {"applyDebounce": 0, "loopbackInterface": "lo"},
    "wireguard": {
        "privateKeyPath": "/etc/wireguard/private.key",
        "publicKeyPath": "/etc/wireguard/public.key",
        "configDir": "/etc/wireguard",
        "persistentKeepaliveInterval": 15,
        "dn42Ipv4": "172.22.68.198",
        "dn42Ipv6": "fd28:cb8f:4c92::1",
        "dn42Ipv6LinkLocal": "fe80::198",
        "backend": "userspace",
    },
    "tunnel": {"wireguardGo": "/usr/local/bin/wireguard-go", "staleHandshake": 120},
    "mesh": {"enabled": False, "mtu": 1400},
    "meshSync": {"portBase": 20000, "interfacePrefix": "m"},
    "metric": {"pingTimeout": 2.5, "pingCount": 3, "pingWorkers": 8},
    "autoUpdate": {"enabled": False, "checkInterval": 30, "channel": "beta", "githubRepo": "a/b"},
}

#: The same configuration, one section per concern.
NEW_CONFIG = {
    "server": GO_CONFIG["server"],
    "node": {**GO_CONFIG["node"], "loopbackIpv4": "172.22.68.198", "loopbackIpv6": "fd28:cb8f:4c92::1"},
    "controlPlane": GO_CONFIG["controlPlane"],
    "bird": {**GO_CONFIG["bird"], "applyDebounce": 0, "loopbackInterface": "lo"},
    "wireguard": {
        "configDir": "/etc/wireguard",
        "backend": "userspace",
        "wireguardGo": "/usr/local/bin/wireguard-go",
        "staleHandshake": 120,
    },
    "sessions": {
        "privateKeyPath": "/etc/wireguard/private.key",
        "publicKeyPath": "/etc/wireguard/public.key",
        "persistentKeepaliveInterval": 15,
        "dn42Ipv6LinkLocal": "fe80::198",
    },
    "mesh": {"enabled": False, "mtu": 1400, "portBase": 20000, "interfacePrefix": "m", "keepalive": 15},
    "rtt": {"count": 3, "timeoutMs": 2500, "concurrency": 8},
    "updater": {"enabled": False, "checkInterval": 30, "channel": "beta", "githubRepo": "a/b"},
}


def test_go_agent_config_loads_with_the_same_values_and_deprecation_warnings():
    old_cfg, old_warnings, old = with_plugins(GO_CONFIG)
    new_cfg, new_warnings, new = with_plugins(NEW_CONFIG)
    assert old.problems == {} and new.problems == {}
    assert new_warnings == []
    assert old_cfg.server.listen == ":24368"
    assert (old_cfg.loopback_ipv4, old_cfg.loopback_ipv6) == ("172.22.68.198", "fd28:cb8f:4c92::1")
    assert old_cfg.node == new_cfg.node
    assert old.values == new.values
    bird = old.values["bird"]
    assert (bird.pool_size_max, bird.apply_debounce, bird.loopback_interface) == (64, 0, "lo")
    assert old.values["rtt"].probe_settings() == (3, 2.5, 8)
    assert old.values["mesh"].keepalive == 15 and old.values["sessions"].persistent_keepalive_interval == 15
    assert old.values["wireguard"].wireguard_go == "/usr/local/bin/wireguard-go"
    assert old.values["updater"].channel == "beta"
    assert old_warnings == [
        "wireguard.dn42Ipv4: deprecated; read as node.loopbackIpv4 (move it there)",
        "wireguard.dn42Ipv6: deprecated; read as node.loopbackIpv6 (move it there)",
        "tunnel: deprecated section name; its keys are read as 'wireguard' (rename it)",
        "meshSync: deprecated section name; its keys are read as 'mesh' (rename it)",
        "birdAgent: deprecated section name; its keys are read as 'bird' (rename it)",
        "autoUpdate: deprecated keys, read in their new place (move them): autoUpdate.enabled -> "
        "updater.enabled, autoUpdate.checkInterval -> updater.checkInterval, autoUpdate.channel -> "
        "updater.channel, autoUpdate.githubRepo -> updater.githubRepo",
        "wireguard: deprecated keys, read in their new place (move them): wireguard.privateKeyPath -> "
        "sessions.privateKeyPath, wireguard.publicKeyPath -> sessions.publicKeyPath, "
        "wireguard.persistentKeepaliveInterval -> sessions.persistentKeepaliveInterval and mesh.keepalive, "
        "wireguard.dn42Ipv6LinkLocal -> sessions.dn42Ipv6LinkLocal",
        "metric: deprecated keys, read in their new place (move them): metric.pingTimeout -> rtt.timeoutMs, "
        "metric.pingCount -> rtt.count, metric.pingWorkers -> rtt.concurrency",
    ]


def test_go_agent_defaults_are_the_new_defaults():
    _, _, old = with_plugins({**FULL, "wireguard": {}, "metric": {}, "mesh": {}, "autoUpdate": {}})
    _, _, new = with_plugins(FULL)
    assert old.values == new.values
    assert new.values["rtt"].probe_settings() == (4, 5.0, 32)
    assert new.values["sessions"].persistent_keepalive_interval == 25
    assert new.values["sessions"].private_key_path == "/etc/wireguard/private.key"


def test_canonical_key_wins_over_its_alias_with_a_warning():
    raw = {
        **FULL,
        "bird": {"applyDebounce": 1},
        "birdAgent": {"applyDebounce": 2, "birdBinary": "/usr/sbin/bird"},
        "rtt": {"count": 5, "timeoutMs": None},
        "metric": {"pingCount": 2, "pingTimeout": 1},
        "mesh": {"keepalive": 0},
        "wireguard": {"persistentKeepaliveInterval": 10},
    }
    _, warnings, sections = with_plugins(raw)
    bird, rtt = sections.values["bird"], sections.values["rtt"]
    assert (bird.apply_debounce, bird.bird_binary) == (1, "/usr/sbin/bird")
    assert (rtt.count, rtt.timeout_ms) == (5, 1000)  # a null counts as unset
    # The mesh's keepalive only defaults to the old wireguard key: no conflict warning.
    assert sections.values["mesh"].keepalive == 0
    assert sections.values["sessions"].persistent_keepalive_interval == 10
    assert "birdAgent.applyDebounce: ignored, bird.applyDebounce is set too (that one wins)" in warnings
    assert "metric.pingCount: ignored, rtt.count is set too (that one wins)" in warnings
    assert not [w for w in warnings if w.startswith("wireguard.persistentKeepaliveInterval: ignored")]


def test_alias_problems_name_the_path_as_written():
    raw = {**FULL, "metric": {"pingCount": "4"}, "meshSync": {"portBase": 0, "bogus": 1}}
    _, warnings, sections = with_plugins(raw)
    assert sections.problems["rtt"] == ['metric.pingCount (as rtt.count): expected an integer, got "4"']
    assert sections.problems["mesh"][0].startswith("meshSync.portBase (as mesh.portBase): must be")
    assert "meshSync.bogus (as mesh.bogus): unknown key, ignored" in warnings


def test_disabled_plugin_section_is_not_validated_by_the_core():
    raw = {
        **FULL,
        "plugins": {"disable": ["bird", "rtt"]},
        "bird": {"poolSize": -1, "poolSizeMax": "x"},
        "metric": {"pingCount": "many"},
    }
    _, warnings, sections = with_plugins(raw)  # build_config does not raise
    assert "bird" not in sections.values and sections.problems == {}
    assert "bird: section of plugin 'bird', which is blocked; unused" in warnings
    assert "metric: unknown section (no active plugin declares it), ignored" in warnings


def test_keys_no_active_plugin_takes_are_warned():
    raw = {**FULL, "plugins": {"disable": ["wireguard"]}, "wireguard": {"backend": "kernel", "x": 1}}
    _, warnings, _ = with_plugins(raw)
    assert "wireguard.backend: key of plugin 'wireguard', which is blocked; unused" in warnings
    assert "wireguard.x: key of plugin 'wireguard', which is blocked; unused" in warnings


def test_merge_sections_single_keys_and_fallback():
    decls = [
        ConfigSection(name="a", type=AgentConfig, aliases=(SectionAlias(section="old", keys={"k": "key"}),)),
        ConfigSection(
            name="b",
            type=AgentConfig,
            aliases=("oldB", SectionAlias(section="old", keys={"k": "k2"}, convert={"k": lambda v: v * 2})),
        ),
    ]
    merged = merge_sections({"old": {"k": 3, "rest": 1}, "OldB": {"z": 1}}, decls)
    assert merged.values == {"a": {"key": 3}, "b": {"z": 1, "k2": 6}}
    assert merged.leftovers == {"old": ["rest"]}
    assert merged.origins == {"a": {"key": "old.k"}, "b": {"z": "oldB.z", "k2": "old.k"}}
    assert "OldB: accepted as 'oldB' (spell it that way)" in merged.warnings


def test_all_errors_reported_at_once_with_paths():
    raw = {
        "server": {"listen": "nope", "readTimeout": "5"},
        "node": {"name": "bad name", "id": True},
        "controlPlane": {"url": "ftp://x", "retryMultiplier": 0.5},
        "wireguard": {"dn42Ipv4": "1.2.3.4/24", "dn42Ipv6LinkLocal": "fd00::1"},
        "plugins": {"disable": ["ok", 5]},
        "tasks": {"heartbeat": {"interval": 0}, "bad": 3},
        "autoUpdate": {"channel": "nightly", "enabled": "yes"},  # the updater plugin's now
    }
    assert problems_of(raw) == [
        "wireguard.dn42Ipv4: must be a single address (/32)",
        "server.listen: invalid listen address 'nope': missing port, expected host:port",
        'server.readTimeout: expected a number, got "5"',
        "node.name: must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
        "node.id: expected an integer, got true",
        "controlPlane.url: must be an http:// or https:// URL without query or fragment",
        "controlPlane.retryMultiplier: must be 1 or greater",
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
    assert cfg.loopback_ipv4 == "172.20.0.1"
    assert "server.lisen: unknown key, ignored" in warnings
    assert "wireguard.dn42IPv4: deprecated; read as node.loopbackIpv4 (move it there)" in warnings
    # Top-level sections other than the core's are kept for plugins; the plugin
    # manager structures them and warns about leftovers.
    assert cfg.plugin_sections == {"Bird": {"poolSize": 2}, "mystery": {"a": 1}}
    _, warnings, sections = with_plugins(raw)
    assert sections.values["bird"].pool_size == 2
    assert "Bird: accepted as 'bird' (spell it that way)" in warnings
    assert "mystery: unknown section (no active plugin declares it), ignored" in warnings


def test_env_overrides_win_and_are_validated():
    cfg, _ = build_config(
        FULL,
        env={
            "MOENET_NODE_NAME": "hk2",
            "MOENET_NODE_ID": "9",
            "MOENET_CP_URL": "http://127.0.0.1:1",
            "MOENET_CP_TOKEN": "other-token",
        },
    )
    assert (cfg.node.name, cfg.node.id, cfg.control_plane.url, cfg.control_plane.token) == (
        "hk2",
        9,
        "http://127.0.0.1:1",
        "other-token",
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
        "bird": {"poolSize": 2, "poolSizeMax": 12, "peerConfDir": "/srv/peers"},
        "server": {"listen": "0.0.0.0:1"},  # never taken from the network
        "controlPlane": {"url": "http://evil", "token": "x", "syncInterval": 30},
    }
    cfg, _, sections = with_plugins(local, remote=remote)
    assert cfg.mode == "bootstrap"
    assert cfg.node.id == 4 and cfg.node.asn == 4242420998
    assert cfg.loopback_ipv4 == "172.22.68.1"
    bird = sections.values["bird"]
    assert bird.pool_size == 7  # local wins
    assert bird.pool_size_max == 12  # remote over defaults
    assert bird.peer_conf_dir == "/etc/bird/peers"  # a path: local only
    assert cfg.server.listen == "127.0.0.1:9999"
    assert cfg.control_plane.url == "https://cp.example/api/v1"
    assert cfg.control_plane.token == "tok-123456"
    assert cfg.control_plane.sync_interval == 30


def test_invalid_remote_values_are_problems_with_paths():
    local = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "jp1", "token": "tok-123456"}}
    assert problems_of(local, remote={"node": {"id": "four"}, "bird": {"poolSize": -1}}) == [
        'node.id: expected an integer, got "four"'
    ]
    _, _, sections = with_plugins(local, remote={"bird": {"poolSize": -1}})
    assert sections.problems["bird"] == ["bird.poolSize: must be greater than 0"]


def test_remote_takes_only_the_go_agent_keys_of_plugin_sections():
    local = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "jp1", "token": "tok-123456"}}
    remote = {
        "bird": {"poolSize": 3, "birdBinary": "/tmp/evil"},
        "wireguard": {"backend": "kernel", "wireguardGo": "/tmp/evil", "dn42Ipv4": "172.22.68.9"},
        "mesh": {"mtu": 1400, "allowRemoval": "0123456789abcdef"},
        "metric": {"pingCount": 2},
        "autoUpdate": {"enabled": True, "publicKey": "x"},
        "updater": {"publicKey": "x"},
        "meshSync": {"portBase": 1},
        "rtt": {"count": 9},
    }
    cfg, _, sections = with_plugins(local, remote=remote)
    v = sections.values
    assert cfg.loopback_ipv4 == "172.22.68.9"
    assert (v["bird"].pool_size, v["bird"].bird_binary) == (3, "")
    assert (v["wireguard"].backend, v["wireguard"].wireguard_go) == ("auto", "wireguard-go")  # local only
    assert (v["mesh"].mtu, v["mesh"].allow_removal, v["mesh"].port_base) == (1400, "", 51820)
    assert v["rtt"].count == 9  # settable, and the section's own spelling wins over metric.pingCount
    # What code runs is a local decision: enabled, channel, repo and key are not the CP's.
    assert (v["updater"].enabled, v["updater"].public_key) == (False, "")


def test_standalone_mode():
    cfg, _ = build_config(
        {"node": {"name": "jp1"}, "controlPlane": {"source": "file", "file": "/x.json"}}, env={}
    )
    assert cfg.mode == "standalone"
    assert problems_of({"node": {"name": "jp1"}, "controlPlane": {"source": "file"}}) == [
        "controlPlane.file: required when controlPlane.source is 'file'"
    ]


def test_backend_choice():
    import moenet_wireguard

    cfg, _, _ = with_plugins(
        {**FULL, "wireguard": {"backend": "userspace"}, "backends": {"firewall": "nftables"}}
    )
    assert cfg.backend_choice("tunnel") == "auto"  # the wireguard plugin decides ...
    assert moenet_wireguard.moenet_select_backend(kind="tunnel", candidates={}, config=cfg) == "userspace"
    assert moenet_wireguard.moenet_select_backend(kind="routing", candidates={}, config=cfg) is None
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


# ------------------------------------------------------------ server (issue 14)


@pytest.mark.parametrize(
    "listen", [":24368", "0.0.0.0:24368", "[::]:24368", "192.0.2.1:24368", "node.example:80"]
)
def test_non_loopback_listen_without_token_is_refused(listen):
    problems = problems_of({**FULL, "server": {"listen": listen}})
    assert problems == [
        f"server.listen: {listen!r} is not loopback and server.token is unset, which would let anyone "
        "who reaches it drain the node: set server.token, or listen on loopback (127.0.0.1:24368)"
    ]
    cfg, _ = build_config({**FULL, "server": {"listen": listen, "token": "api-token-0123456789"}}, env={})
    assert cfg.server.listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1:24368", "127.0.0.9:1", "[::1]:24368", "localhost:24368"])
def test_loopback_listen_needs_no_token(listen):
    cfg, _ = build_config({**FULL, "server": {"listen": listen}}, env={})
    assert cfg.server.token is None


def test_non_loopback_listen_without_token_fails_validate(tmp_path, capsys):
    from moenet_core.cli import cmd_validate

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**FULL, "server": {"listen": ":24368"}}))
    assert cmd_validate(str(path)) == 1
    assert "set server.token, or listen on loopback" in capsys.readouterr().err


def test_server_hardening_keys():
    cfg, _ = build_config(FULL, env={})
    server = cfg.server
    assert (server.read_timeout, server.idle_timeout, server.max_connections) == (10, 120, 64)
    assert server.allowed_hosts == []
    cfg, _ = build_config(
        {**FULL, "server": {"allowedHosts": ["agent.example", "192.0.2.1", "[::1]"], "maxConnections": 8}},
        env={},
    )
    assert cfg.server.allowed_hosts == ["agent.example", "192.0.2.1", "[::1]"]
    for bad in ("agent.example:80", "*.example", "a b", "http://x"):
        assert problems_of({**FULL, "server": {"allowedHosts": [bad]}}) == [
            f"server.allowedHosts: {bad!r} is not a host name or address (no port, no wildcard)"
        ]
    assert problems_of({**FULL, "server": {"maxConnections": 0}}) == [
        "server.maxConnections: must be greater than 0"
    ]
