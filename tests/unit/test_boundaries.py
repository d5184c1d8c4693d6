"""Import boundaries: plugins use only the core's public API, and no plugin or test
module reaches into another.

- A plugin (``plugins/``, ``contrib/plugins/``) imports the core from ``moenet_core``
  itself (names in ``moenet_core.__all__``) and the public submodules
  ``moenet_core.config``, ``moenet_core.intents`` and ``moenet_core.testing``;
  every other submodule is the core's own (``docs/plugins/guide.md``, "Public API").
- A plugin never imports another built-in plugin's package: plugins talk through
  hooks, backends and the context.
- A test module never imports another test module: shared helpers live in
  ``tests/helpers/`` (or are fixtures in ``conftest.py``).

Imports under ``if TYPE_CHECKING:`` and inside functions count too: they are still
uses of the API. ``scripts/fix-core-imports.py`` rewrites private core imports
into imports from ``moenet_core``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import moenet_core

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_SUBMODULES = frozenset({"config", "intents", "testing"})
CORE_SUBMODULES = frozenset(
    p.stem if p.is_file() else p.name
    for p in (ROOT / "moenet_core").iterdir()
    if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
)
BUILTIN_PLUGINS = frozenset(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())
PLUGIN_ROOTS = (ROOT / "plugins", ROOT / "contrib" / "plugins")


def python_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if not any(part in (".venv", "__pycache__", "build") for part in path.parts):
                yield path


def imports(path: Path) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """``(line, module, names)`` of every absolute import in ``path``, wherever it is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in sorted(nodes, key=lambda n: n.lineno):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, tuple(a.name for a in node.names)


def own_package(path: Path) -> str | None:
    """The built-in plugin package ``path`` belongs to (None for contrib plugins)."""
    rel = path.relative_to(ROOT)
    return rel.parts[1] if rel.parts[0] == "plugins" and len(rel.parts) > 2 else None


def plugin_problems(path: Path, own: str | None, where: str) -> list[str]:
    out: list[str] = []
    for line, module, names in imports(path):
        top, _, rest = module.partition(".")
        if top == "moenet_core":
            sub = rest.partition(".")[0]
            if sub and sub not in PUBLIC_SUBMODULES:
                out.append(f"{where}:{line}: imports private core module {module} (use moenet_core)")
            elif not sub:
                for name in names:
                    if name in CORE_SUBMODULES and name not in PUBLIC_SUBMODULES:
                        out.append(f"{where}:{line}: imports private core module moenet_core.{name}")
                    elif name not in CORE_SUBMODULES and name != "*" and name not in moenet_core.__all__:
                        out.append(
                            f"{where}:{line}: imports {name} from moenet_core, which does not export it"
                        )
        elif top in BUILTIN_PLUGINS and top != own:
            out.append(f"{where}:{line}: imports another plugin's package {module}")
    return out


def test_plugins_import_only_the_public_core_api_and_no_other_plugin() -> None:
    files = list(python_files(*PLUGIN_ROOTS))
    assert len(files) > 20  # the walk found the plugins
    problems = [
        p for path in files for p in plugin_problems(path, own_package(path), str(path.relative_to(ROOT)))
    ]
    assert problems == [], "\n" + "\n".join(problems)


def _is_test_module(module: str) -> bool:
    """``test_x``, or ``unit.test_x`` / ``tests.component.test_x`` and the like."""
    parts = module.split(".")
    while parts and parts[0] in ("tests", "unit", "component", "e2e"):
        parts = parts[1:]
    return bool(parts) and parts[0].startswith("test_")


def test_test_modules_do_not_import_each_other() -> None:
    files = list(python_files(ROOT / "tests", *(d for d in (ROOT / "contrib" / "plugins").glob("*/tests"))))
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports test module {module} (move the helper to tests/helpers/)"
        for path in files
        for line, module, _ in imports(path)
        if _is_test_module(module)
    ]
    assert problems == [], "\n" + "\n".join(problems)


def test_tests_are_grouped_by_kind() -> None:
    """``tests/unit`` (no root, no daemons: runs anywhere in seconds),
    ``tests/component`` (one backend against the real daemon in throwaway
    namespaces) and ``tests/e2e`` (labs, the installed wheel); nothing flat."""
    tests = ROOT / "tests"
    flat = sorted(p.name for p in tests.glob("test_*.py"))
    assert flat == [], f"put these in tests/unit, tests/component or tests/e2e: {flat}"
    needs_root = [
        str(p.relative_to(ROOT))
        for p in sorted((tests / "unit").glob("test_*.py"))
        if re.search(r"mark\.netns|def [a-z_0-9]+\([^)]*\bnetns\b", p.read_text())
    ]
    assert needs_root == [], f"tests needing namespaces belong in tests/component: {needs_root}"
    names = [p.name for p in sorted(tests.glob("*/test_*.py"))]
    twins = sorted({n for n in names if names.count(n) > 1})
    assert twins == [], f"test modules share a name across kinds (pytest imports them as one): {twins}"


def test_public_api_is_complete_and_cheap() -> None:
    """Every public name resolves; heavy modules stay unloaded until used."""
    import subprocess
    import sys

    for name in moenet_core.__all__:
        assert getattr(moenet_core, name) is not None, name
    code = (
        "import sys, moenet_core; "
        "print(sorted(m for m in ('aiohttp', 'prometheus_client', 'moenet_core.agent', "
        "'moenet_core.api', 'moenet_core.cli', 'moenet_core.context') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_boundary_check_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "from moenet_core import hookimpl\n"
        "from moenet_core.config import check\n"
        "from moenet_core.state import StateStore\n"
        "from moenet_core import agent\n"
        "if TYPE_CHECKING:\n"
        "    from moenet_core.context import PluginContext\n"
        "import moenet_sessions.task\n"
        "from moenet_bird.render import render_tree\n"
    )
    problems = plugin_problems(bad, "moenet_bird", "probe.py")
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["4", "5", "7", "8"], problems
