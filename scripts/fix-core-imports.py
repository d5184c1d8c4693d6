#!/usr/bin/env python3
"""Rewrite plugins' imports of private core modules into imports from ``moenet_core``.

``from moenet_core.state import StateError, StateStore`` (one line or a
parenthesised block, at module level, under ``if TYPE_CHECKING:`` or inside a
function) becomes ``from moenet_core import StateError, StateStore``. The public
submodules (``moenet_core.config``, ``moenet_core.intents``,
``moenet_core.testing``) are left alone. A name ``moenet_core`` does not export
is reported and its import left unchanged, so the result always imports.

Usage::

    .venv/bin/python scripts/fix-core-imports.py            # plugins/ and contrib/plugins/
    .venv/bin/python scripts/fix-core-imports.py DIR_OR_FILE ...
    .venv/bin/python scripts/fix-core-imports.py --check    # list, change nothing (exit 1 if any)

Then ``ruff check --select I --fix`` and ``ruff format`` on the changed files
merge the new lines with existing ``from moenet_core import`` lines (the script
does it itself unless ``--no-ruff``). ``tests/unit/test_boundaries.py`` checks the
result.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_SUBMODULES = frozenset({"config", "intents", "testing"})


def exported() -> frozenset[str]:
    sys.path.insert(0, str(ROOT))
    import moenet_core

    return frozenset(moenet_core.__all__)


def private_imports(tree: ast.AST) -> list[ast.ImportFrom]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top, _, rest = node.module.partition(".")
            if top == "moenet_core" and rest and rest.partition(".")[0] not in PUBLIC_SUBMODULES:
                out.append(node)
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def render(node: ast.ImportFrom, indent: str, multiline: bool) -> str:
    names = [a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names]
    if not multiline:
        return f"from moenet_core import {', '.join(names)}"
    body = "".join(f"{indent}    {n},\n" for n in names)
    return f"from moenet_core import (\n{body}{indent})"


def fix_file(path: Path, public: frozenset[str], *, write: bool) -> tuple[int, list[str]]:
    """Rewrite ``path``; returns (imports rewritten, problems)."""
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        return 0, [f"{path}: cannot parse: {exc}"]
    lines = text.splitlines(keepends=True)
    # Offsets of line starts, to turn (line, column) into a position in ``text``.
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode("utf-8")))
    data = text.encode("utf-8")
    problems: list[str] = []
    edits: list[tuple[int, int, str]] = []
    for node in private_imports(tree):
        missing = [a.name for a in node.names if a.name not in public]
        if missing:
            problems.append(
                f"{path}:{node.lineno}: {node.module}: not exported by moenet_core: {', '.join(missing)}"
            )
            continue
        assert node.end_lineno is not None and node.end_col_offset is not None
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        indent = lines[node.lineno - 1][: len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())]
        edits.append((begin, end, render(node, indent, node.end_lineno > node.lineno)))
    for begin, end, new in reversed(edits):
        data = data[:begin] + new.encode("utf-8") + data[end:]
    if edits and write:
        path.write_bytes(data)
    return len(edits), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths", nargs="*", type=Path, help="files or directories (default: the plugin trees)"
    )
    parser.add_argument("--check", action="store_true", help="report only; exit 1 when anything needs fixing")
    parser.add_argument("--no-ruff", action="store_true", help="do not sort and format the changed files")
    args = parser.parse_args(argv)
    roots = args.paths or [ROOT / "plugins", ROOT / "contrib" / "plugins"]
    files = sorted(
        {
            f
            for r in roots
            for f in ([r] if r.is_file() else r.rglob("*.py"))
            if not any(p in (".venv", "__pycache__", "build") for p in f.parts)
        }
    )
    public = exported()
    changed: list[Path] = []
    problems: list[str] = []
    total = 0
    for f in files:
        n, probs = fix_file(f, public, write=not args.check)
        problems.extend(probs)
        if n:
            total += n
            changed.append(f)
            print(f"{f}: {n} import(s) {'to rewrite' if args.check else 'rewritten'}")
    for p in problems:
        print(p, file=sys.stderr)
    if changed and not args.check and not args.no_ruff:
        ruff = [sys.executable, "-m", "ruff"]
        names = [str(f) for f in changed]
        subprocess.run([*ruff, "check", "--select", "I", "--fix", "--quiet", *names], check=False, cwd=ROOT)
        subprocess.run([*ruff, "format", "--quiet", *names], check=False, cwd=ROOT)
    print(f"{total} import(s) in {len(changed)} file(s); {len(problems)} problem(s)")
    if args.check:
        return 1 if total or problems else 0
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
