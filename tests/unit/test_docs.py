"""The hook contract is documented and exercised (datasette's meta-tests)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from helpers.docs import DASHBOARD, dashboard_exprs

from moenet_core import hookspecs
from moenet_core.plugins import AgentPluginManager

ROOT = Path(__file__).resolve().parents[2]
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
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_docs.py"]
    users = [p.name for p in tests if re.search(rf"def {hook}\(", p.read_text())]
    assert users, f"no test implements {hook}"


# ------------------------------------------------------------ configuration

#: Config keys that have no description yet (no attribute docstring in their
#: model). Empty since every key got one; it stays as the place to list a key
#: deliberately left undocumented. A new field without a docstring fails
#: test_config_fields_are_documented, and so does a listed key once documented
#: (remove it here, then run scripts/gen-docs.py).
UNDOCUMENTED_TODAY: set[str] = set()


def builtin_sections():
    """(section name, attrs class) of every section the built-in plugins declare."""
    import importlib.metadata

    dist = importlib.metadata.distribution("moenet-agent")
    found = []
    for ep in dist.entry_points:
        if ep.group == "moenet" and hasattr(module := ep.load(), "moenet_config_sections"):
            found += [(s.name, s.type) for s in module.moenet_config_sections()]
    return found


def test_configuration_reference_is_up_to_date():
    committed = (ROOT / "docs/configuration.md").read_text()
    assert committed == load_generator().render_config(), "run: .venv/bin/python scripts/gen-docs.py"


def test_configuration_reference_has_every_section_and_key():
    import attrs

    from moenet_core.config import AgentConfig, TaskOverride, camel

    text = (ROOT / "docs/configuration.md").read_text()
    sections = []
    for f in attrs.fields(AgentConfig):
        if f.metadata.get("internal"):
            continue
        assert f"| `{camel(f.name)}` |" in text, f"top-level key {camel(f.name)}"
        default = f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
        if attrs.has(type(default)):
            sections.append((camel(f.name), type(default)))
    sections.append(("tasks.<name>", TaskOverride))
    plugin = builtin_sections()
    names = {n for n, _ in plugin}
    # The sections the built-in plugins are known to declare (a plugin losing one is a bug).
    assert {"sessions", "rtt", "mesh", "ibgp", "updater", "heartbeat"} <= names
    assert {"nftables", "loopback", "bird", "wireguard"} <= names
    for name, cls in [*sections, *plugin]:
        assert f"\n### {name}\n" in text, f"section {name}"
        for f in attrs.fields(cls):
            assert f"| `{name}.{camel(f.name)}` |" in text, f"{name}.{camel(f.name)}"


def test_config_fields_are_documented():
    missing = set(load_generator().undocumented())
    new = sorted(missing - UNDOCUMENTED_TODAY)
    assert not new, f"add an attribute docstring (a string right after the field) to: {new}"
    done = sorted(UNDOCUMENTED_TODAY - missing)
    assert not done, f"documented now: remove from UNDOCUMENTED_TODAY in tests/unit/test_docs.py: {done}"


def test_described_keys_carry_their_docstring():
    text = (ROOT / "docs/configuration.md").read_text()
    gen = load_generator()
    for name, cls in builtin_sections():
        for _attr, key, _typ, _default, doc in gen.model_fields(cls):
            if doc:
                row = next(line for line in text.splitlines() if line.startswith(f"| `{name}.{key}` |"))
                assert gen.md(" ".join(doc.split()))[:60] in row, f"{name}.{key}"


# ------------------------------------------------------------ plugin guide


def guide_sections() -> dict[str, str]:
    text = (ROOT / "docs/plugins/guide.md").read_text()
    parts = re.split(r"^### (moenet_\w+)\n", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("hook", HOOKS)
def test_guide_documents_hook_with_signature_and_type(hook):
    gen = load_generator()
    sections = guide_sections()
    assert hook in sections, f"docs/plugins/guide.md: add a '### {hook}' section"
    fn = getattr(hookspecs, hook)
    body = sections[hook]
    assert f"```python\n{gen.full_signature(fn)}\n```" in body, f"{hook}: signature differs from the hookspec"
    assert f"Type: **{gen.hook_type(hook, fn.moenet_spec)}**" in body, f"{hook}: hook type"


def test_guide_has_no_unknown_hooks():
    assert sorted(guide_sections()) == HOOKS


def guide_code(marker: str) -> str:
    text = (ROOT / "docs/plugins/guide.md").read_text()
    return next(b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if marker in b)


async def test_guide_example_plugin_and_its_tests_run(tmp_path, monkeypatch, fake_cp, agent_harness):
    import sys

    (tmp_path / "moenet_hello.py").write_text(guide_code("# moenet_hello.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    try:
        exec(compile(guide_code("pytest_plugins"), "guide-tests", "exec"), namespace)
        tests = [v for k, v in namespace.items() if k.startswith("test_")]
        assert len(tests) == 2
        for test in tests:
            await test(fake_cp, agent_harness)
    finally:
        sys.modules.pop("moenet_hello", None)


# ------------------------------------------------------------ the other docs

DOCS = sorted((ROOT / "docs").rglob("*.md"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_in_docs_resolve(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: broken link {target}"
        if anchor and dest.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.MULTILINE)}
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor} in {dest.name}"


def test_docs_index_links_every_doc():
    index = (ROOT / "docs/README.md").read_text()
    for doc in DOCS:
        if doc.name != "README.md":
            assert f"]({doc.relative_to(ROOT / 'docs')})" in index, f"docs/README.md: link {doc.name}"


def test_bird_doc_tables_match_the_community_tables():
    from moenet_bird import communities as c

    text = (ROOT / "docs/bird.md").read_text()
    for x, name in c.REGIONS.items():
        assert re.search(rf"^\| {x} \| {re.escape(name)} \|", text, re.MULTILINE), f"region {x}"
    for x, name in c.CRYPTO.items():
        assert f"| {x} | {name} |" in text, f"crypto {x}"
    for symbol, x in c.BANDWIDTH_SYMBOLS.items():
        assert re.search(rf"^\| {x} \| .* \| `{symbol}` \|$", text, re.MULTILINE), f"bandwidth {x}"
    for symbol, x in {**c.CONTINENTS, **c.SUBREGIONS}.items():
        assert f"| {x} | `{symbol}` |" in text, f"large community code {x}"
    for symbol, x in c.REGION_SYMBOLS.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {x} | "))
        assert f"`{symbol}`" in row, f"region symbol {symbol}"
    for key, pref in c.LOCAL_PREF.items():
        assert f"| `{key}` | {pref} |" in text, f"local preference {key}"
    from moenet_rtt.tier import UPPER_BOUNDS

    for x, bound in enumerate(UPPER_BOUNDS, start=1):
        assert f"| {x} | {bound:g} ms |" in text, f"latency tier {x}"


# ------------------------------------------------------------ the dashboard


def test_dashboard_uses_only_documented_metrics():
    import json

    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] and data["panels"]
    documented = set(
        re.findall(r"^\| `(moenet_[a-z0-9_]+)` \|", (ROOT / "docs/metrics.md").read_text(), re.M)
    )
    used = set()
    for expr in dashboard_exprs():
        for name in re.findall(r"\bmoenet_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            used.add(name if name in documented else base)
    assert used, "no metric in the dashboard"
    assert not sorted(used - documented), f"not in docs/metrics.md: {sorted(used - documented)}"
    # The panels the issue asks for.
    for name in (
        "moenet_sessions",
        "moenet_sessions_bgp_up",
        "moenet_sessions_routes",
        "moenet_sessions_rtt_seconds",
        "moenet_sessions_loss_ratio",
        "moenet_task_duration_seconds",
        "moenet_bird_applies_total",
        "moenet_cp_requests_total",
        "moenet_cp_breaker_state",
        "moenet_sessions_health_sessions",
    ):
        assert name in used, name
