"""Issue 14 item 2: what the CP's bootstrap answer may not decide, and BIRD templates
that cannot run as root."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import jinja2
import pytest

from moenet_core import ConfigSection
from moenet_core.agent import structure_plugin_sections
from moenet_core.cli import disabled_plugins
from moenet_core.config import build_config, check, cp_settable, merge_sections, positive
from moenet_core.plugins import AgentPluginManager

LOCAL = {"bootstrap": {"apiUrl": "https://cp.example", "nodeName": "jp1", "token": "tok-1234567890"}}

HOSTILE = {
    "bird": {
        "templateDir": "/dev/shm",
        "configDir": "/opt/moenet-agent",
        "controlSocket": "/run/systemd/private",
        "peerConfDir": "/x",
        "ibgpConfDir": "/y",
        "birdBinary": "/tmp/evil",
        "ebgpConfTemplateFile": "/tmp/t.j2",
        "poolSize": 3,
    },
    "wireguard": {
        "privateKeyPath": "/var/lib/other.key",
        "publicKeyPath": "/opt/moenet-agent/current",
        "configDir": "/tmp",
        "wireguardGo": "/tmp/evil",
        "backend": "userspace",
        "persistentKeepaliveInterval": 15,
    },
    "sessions": {"pskDir": "/tmp/psk"},
    "autoUpdate": {"enabled": True, "channel": "dev", "githubRepo": "attacker/fork", "checkInterval": 5},
    "updater": {"feedUrl": "https://evil.example/f", "publicKey": "x", "venvRoot": "/tmp/v"},
    "backends": {"tunnel": "userspace"},
    "tasks": {"updater": {"enabled": False, "interval": 30}},
    "server": {"listen": "0.0.0.0:1"},
    "state": {"directory": "/tmp"},
    "logging": {"level": "DEBUG"},
    "controlPlane": {"url": "http://evil", "syncInterval": 30},
}

EXPECTED_IGNORED = [
    "bird.templateDir",
    "bird.configDir",
    "bird.controlSocket",
    "bird.peerConfDir",
    "bird.ibgpConfDir",
    "bird.birdBinary",
    "bird.ebgpConfTemplateFile",
    "wireguard.privateKeyPath (as sessions.privateKeyPath)",
    "wireguard.publicKeyPath (as sessions.publicKeyPath)",
    "wireguard.configDir",
    "wireguard.wireguardGo",
    "wireguard.backend",
    "sessions.pskDir",
    "autoUpdate.enabled (as updater.enabled)",
    "autoUpdate.channel (as updater.channel)",
    "autoUpdate.githubRepo (as updater.githubRepo)",
    "updater.feedUrl",
    "updater.publicKey",
    "updater.venvRoot",
    "backends.tunnel",
    "tasks.updater.enabled",
    "server.listen",
    "state.directory",
    "logging.level",
    "controlPlane.url",
]


def build(remote):
    cfg, warnings = build_config(LOCAL, env={}, remote=remote)
    disabled, enabled = disabled_plugins(cfg, {})
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    sections = structure_plugin_sections(cfg, pm)
    return cfg, [*warnings, *sections.warnings], sections.values


def test_hostile_bootstrap_answer_keeps_local_defaults_and_warns_per_key():
    cfg, warnings, v = build(HOSTILE)
    bird, sessions, wg, updater = v["bird"], v["sessions"], v["wireguard"], v["updater"]
    assert (bird.template_dir, bird.config_dir, bird.control_socket) == (
        "",
        "/etc/bird",
        "/var/run/bird/bird.ctl",
    )
    assert (bird.peer_conf_dir, bird.ibgp_conf_dir, bird.bird_binary) == (
        "/etc/bird/peers",
        "/etc/bird/ibgp",
        "",
    )
    assert bird.ebgp_conf_template_file == ""
    assert (sessions.private_key_path, sessions.public_key_path, sessions.psk_dir) == (
        "/etc/wireguard/private.key",
        "",
        "",
    )
    assert (wg.config_dir, wg.wireguard_go, wg.backend) == ("/etc/wireguard", "wireguard-go", "auto")
    assert (updater.enabled, updater.channel, updater.github_repo) == (False, "stable", "")
    assert (updater.feed_url, updater.public_key, updater.venv_root) == ("", "", "/opt/moenet-agent")
    assert cfg.backends == {} and cfg.tasks["updater"].enabled is True
    assert (cfg.server.listen, cfg.state.directory, cfg.logging.level) == (
        "127.0.0.1:24368",
        "/var/lib/moenet-agent",
        "INFO",
    )
    assert cfg.control_plane.url == "https://cp.example"
    # Desired state stays settable.
    assert bird.pool_size == 3 and sessions.persistent_keepalive_interval == 15
    assert updater.check_interval == 5 and cfg.tasks["updater"].interval == 30
    assert cfg.control_plane.sync_interval == 30
    ignored = [w.split(": set by the control plane")[0] for w in warnings if "set by the control plane" in w]
    assert sorted(ignored) == sorted(EXPECTED_IGNORED)


def test_the_local_file_still_decides_local_keys():
    local = {**LOCAL, "bird": {"configDir": "/srv/bird"}, "sessions": {"privateKeyPath": "/srv/k"}}
    cfg, _ = build_config(local, env={}, remote={"bird": {"configDir": "/evil", "poolSize": 4}})
    disabled, enabled = disabled_plugins(cfg, {})
    pm = AgentPluginManager()
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    v = structure_plugin_sections(cfg, pm).values
    assert (v["bird"].config_dir, v["bird"].pool_size) == ("/srv/bird", 4)
    assert v["sessions"].private_key_path == "/srv/k"


@attrs.define(kw_only=True)
class ThirdParty:
    spool_dir: str = "/var/spool/x"
    interval: float = attrs.field(default=10.0, metadata=check(positive, cp=True))
    batch: int = attrs.field(default=1, metadata=cp_settable())


def test_a_third_party_sections_keys_are_local_unless_marked():
    decl = ConfigSection(name="thirdParty", type=ThirdParty)
    remote = {"thirdParty": {"spoolDir": "/tmp", "interval": 3, "batch": 2}}
    merged = merge_sections({"thirdParty": {"batch": 5}}, [decl], remote=remote)
    assert merged.values["thirdParty"] == {"batch": 5, "interval": 3}
    assert merged.warnings == [
        "thirdParty.spoolDir: set by the control plane, ignored (a local setting: only this node's file decides it)"
    ]


# ------------------------------------------------------------------ templates


def render(template_dir):
    from helpers.render import cp_data
    from moenet_bird.policy import parse_bird_config
    from moenet_bird.render import render_tree

    policy, _ = parse_bird_config(cp_data())
    return render_tree(policy, template_dir=template_dir)


def test_template_escaping_the_sandbox_is_a_render_error(tmp_path: Path):
    from moenet_bird.names import BirdConfigError

    tpl = tmp_path / "tpl"
    tpl.mkdir(mode=0o755)
    (tpl / "cold_potato.conf.j2").write_text("{{ cycler.__init__.__globals__ }}\n")
    with pytest.raises(BirdConfigError, match="unsafe operation") as info:
        render(tpl)
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError)


@pytest.mark.parametrize("what", ["dir-writable", "file-writable", "dir-owner", "file-owner", "missing"])
def test_unsafe_template_dir_is_refused_with_the_fix(tmp_path: Path, what: str):
    from moenet_bird.names import BirdConfigError
    from moenet_bird.render import make_environment, template_dir_problem

    tpl = tmp_path / "tpl"
    if what != "missing":
        tpl.mkdir(mode=0o755)
        os.chmod(tpl, 0o755)
        (tpl / "cold_potato.conf.j2").write_text("# override\n")
        os.chmod(tpl / "cold_potato.conf.j2", 0o644)
    fix = {
        "dir-writable": (lambda: os.chmod(tpl, 0o777), "chmod go-w"),
        "file-writable": (lambda: os.chmod(tpl / "cold_potato.conf.j2", 0o666), "chmod go-w"),
        "dir-owner": (lambda: os.chown(tpl, 65534, -1), "chown"),
        "file-owner": (lambda: os.chown(tpl / "cold_potato.conf.j2", 65534, -1), "chown"),
        "missing": (lambda: None, "does not exist"),
    }[what]
    if what.endswith("owner") and os.geteuid() != 0:
        pytest.skip("chown needs root")
    fix[0]()
    problem = template_dir_problem(tpl)
    assert problem is not None and fix[1] in problem
    with pytest.raises(BirdConfigError, match=fix[1]):
        make_environment(tpl)
    with pytest.raises(BirdConfigError, match=fix[1]):
        render(tpl)


def test_validate_refuses_an_unsafe_template_dir(tmp_path: Path):
    import json
    import subprocess
    import sys

    tpl = tmp_path / "tpl"
    tpl.mkdir()
    os.chmod(tpl, 0o777)
    cfg = {
        "node": {"name": "jp1"},
        "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
        "state": {"directory": str(tmp_path / "state")},
        "sessions": {"privateKeyPath": str(tmp_path / "k")},
        "bird": {"templateDir": str(tpl)},
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    res = subprocess.run(
        [sys.executable, "-m", "moenet_core", "validate", "-c", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert res.returncode == 1
    assert f"chmod go-w {tpl}" in res.stderr
