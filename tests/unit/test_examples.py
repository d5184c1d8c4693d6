"""Every example config in contrib/configs validates with the real CLI."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from moenet_core.config import CORE_SECTIONS, AgentConfig, TaskOverride, build_config, camel

CONFIGS = Path(__file__).resolve().parents[2] / "contrib" / "configs"
EXAMPLES = ["bootstrap.json", "full.json", "standalone.json"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates(name):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    res = subprocess.run(
        [sys.executable, "-m", "moenet_core", "validate", "--json", "-c", str(CONFIGS / name)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["ok"], out["problems"]
    assert out["warnings"] == []


# ------------------------------------------------------------ full.json is complete
#
# full.json shows every key with its default or an example value; these tests keep
# it that way when a model or plugin section grows a key.

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
#: Top-level sections full.json leaves out on purpose: a non-empty ``bootstrap``
#: section turns a file into a bootstrap config (bootstrap.json shows it).
NOT_IN_FULL = {"bootstrap"}
#: Backend kinds full.json leaves out of ``backends``: ``backends.tunnel`` would
#: override ``wireguard.backend``, which full.json shows instead.
BACKENDS_NOT_IN_FULL = {"tunnel"}


def full_example() -> dict:
    return json.loads((CONFIGS / "full.json").read_text())


def builtin_sections() -> list[tuple[str, type]]:
    """(section name, attrs class) of every section the built-in plugins declare."""
    dist = importlib.metadata.distribution("moenet-agent")
    found = []
    for ep in dist.entry_points:
        if ep.group == "moenet" and hasattr(module := ep.load(), "moenet_config_sections"):
            found += [(s.name, s.type) for s in module.moenet_config_sections()]
    return found


def missing_key(raw: dict, dotted: str) -> str | None:
    """``dotted`` (``section.key``, ``tasks.<name>.key``) if full.json lacks it, else None."""
    section, *rest = dotted.split(".")
    if section not in raw:
        return dotted
    if section == "tasks" and rest[:1] == ["<name>"]:
        # Every task entry shows every key (and there is at least one entry).
        tasks = raw["tasks"]
        if not tasks or any(rest[1] not in entry for entry in tasks.values()):
            return dotted
        return None
    node = raw[section]
    for part in rest:
        if not isinstance(node, dict) or part not in node:
            return dotted
        node = node[part]
    return None


def test_full_example_sets_every_model_key():
    """Every key of every core section and every built-in plugin section, and no
    deprecated section (one section per concern)."""
    raw = full_example()
    _cfg, warnings = build_config(raw, env={})
    assert warnings == []
    attrs.resolve_types(AgentConfig)
    keys = []
    for section, attr in CORE_SECTIONS.items():
        if section in NOT_IN_FULL:
            continue
        model = attrs.fields_dict(AgentConfig)[attr].type
        if section == "tasks":
            keys += [f"tasks.<name>.{camel(f.name)}" for f in attrs.fields(TaskOverride)]
        elif attrs.has(model):
            keys += [f"{section}.{camel(f.name)}" for f in attrs.fields(model)]
        else:
            keys.append(section)  # a plain top-level key (backends)
    sections = builtin_sections()
    # The sections the built-in plugins are known to declare (a plugin losing one is a bug).
    assert {"sessions", "rtt", "mesh", "ibgp", "updater", "heartbeat"} <= {n for n, _ in sections}
    assert {"nftables", "loopback", "bird", "wireguard"} <= {n for n, _ in sections}
    for name, model in sections:
        keys += [f"{name}.{camel(f.name)}" for f in attrs.fields(model)]
    missing = [k for k in keys if missing_key(raw, k)]
    assert missing == [], f"add to contrib/configs/full.json (default or example value): {missing}"
    old = {a.section for ep in _section_decls() for a in ep.aliases if a.keys is None}
    assert old and not old & set(raw), "full.json uses a deprecated section name"


def _section_decls() -> list:
    dist = importlib.metadata.distribution("moenet-agent")
    return [
        sec
        for ep in dist.entry_points
        if ep.group == "moenet" and hasattr(module := ep.load(), "moenet_config_sections")
        for sec in module.moenet_config_sections()
    ]


def test_full_example_sets_every_documented_key():
    """Every section, key and backend kind docs/configuration.md documents."""
    raw = full_example()
    text = REFERENCE.read_text()
    top = re.findall(r"^\| `([A-Za-z0-9]+)` \|", text.split("## Core sections")[0], re.M)
    sections = re.findall(r"^### (\S+)$", text, re.M)
    keys = re.findall(r"^\| `([A-Za-z0-9]+(?:\.<name>)?\.[A-Za-z0-9]+)` \|", text, re.M)
    backends = text.split("\n### backends\n")[1].split("\n## ")[0]
    kinds = set(re.findall(r"^\| `([a-z_]+)` \| `", backends, re.M))
    assert top and sections and keys and kinds, "docs/configuration.md changed shape: update this test"
    missing = [
        k
        for k in [*top, *(s.split(".")[0] for s in sections), *keys]
        if k.split(".")[0] not in NOT_IN_FULL and missing_key(raw, k)
    ]
    missing += [
        f"backends.{k}" for k in sorted(kinds - BACKENDS_NOT_IN_FULL) if k not in raw.get("backends", {})
    ]
    assert missing == [], f"add to contrib/configs/full.json (default or example value): {missing}"


def test_full_example_tasks_name_builtin_tasks():
    """A ``tasks`` entry for a task that does not exist would only teach a typo."""
    names = set()
    config = AgentConfig(plugin_sections={"updater": {"enabled": True}})
    for ep in importlib.metadata.distribution("moenet-agent").entry_points:
        if ep.group == "moenet" and hasattr(module := ep.load(), "moenet_tasks"):
            names |= {spec.name for spec in module.moenet_tasks(config=config)}
    assert set(full_example()["tasks"]) <= names
