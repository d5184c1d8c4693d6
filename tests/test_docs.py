"""The hook contract is documented and exercised (datasette's meta-tests)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from moenet_core import hookspecs
from moenet_core.plugins import AgentPluginManager

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    n for n in vars(hookspecs) if n.startswith("moenet_") and hasattr(getattr(hookspecs, n), "moenet_spec")
)


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen-docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_up_to_date():
    committed = (ROOT / "docs/plugins/hooks.md").read_text()
    assert committed == load_generator().render(), "run: .venv/bin/python scripts/gen-docs.py"


def test_every_hook_is_registered_with_the_manager():
    pm = AgentPluginManager()
    assert sorted(n for n in vars(pm.hook) if n.startswith("moenet_")) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_docs_with_signature_and_type(hook):
    doc = hookspecs.__dict__[hook].__doc__ or ""
    assert "**When**" in doc or "**Use**" in doc, f"{hook}: say when it is called"
    assert "**Type**" in doc, f"{hook}: say its hook type"
    text = (ROOT / "docs/plugins/hooks.md").read_text()
    argnames = AgentPluginManager().hook.__dict__[hook].spec.argnames
    assert f"{hook}({', '.join(argnames)})" in text


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py"]
    users = [p.name for p in tests if re.search(rf"def {hook}\(", p.read_text())]
    assert users, f"no test implements {hook}"
