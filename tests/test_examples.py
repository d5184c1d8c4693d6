"""Every example config in contrib/configs validates with the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from moenet_core.config import CORE_SECTIONS, AgentConfig, build_config, camel

CONFIGS = Path(__file__).resolve().parents[1] / "contrib" / "configs"
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


def test_full_example_sets_every_core_key():
    raw = json.loads((CONFIGS / "full.json").read_text())
    _cfg, warnings = build_config(raw, env={})
    assert warnings == []
    missing = []
    for section, attr in CORE_SECTIONS.items():
        if section == "bootstrap":
            continue  # a full config has no bootstrap section
        model = attrs.fields_dict(AgentConfig)[attr].type
        if not attrs.has(model):
            assert section in raw, section
            continue
        missing += [
            f"{section}.{camel(f.name)}" for f in attrs.fields(model) if camel(f.name) not in raw[section]
        ]
    assert missing == []
