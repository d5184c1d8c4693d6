"""Shared test helpers (moved from ``test_bird_render``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moenet_bird.testing import sample_bird_config


def cp_data(**node_over: Any) -> dict[str, Any]:
    """A CP bird-config answer as the Go agent's CP sends it (symbol names included)."""
    return sample_bird_config(
        node=node_over,
        # roaMode "" is a CP that does not send it (the Go agent's): strict.
        policy={"rpkiServers": [{"name": "akae", "host": "rpki.akae.re", "port": 8082}], "roaMode": ""},
    )


# ------------------------------------------------------------ golden trees on disk

#: The golden trees of ``tests/unit/test_bird_render.py``: one directory per case.
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "bird_render"


def golden_cases() -> list[str]:
    """The golden trees that exist now (a directory with a ``bird.conf``), sorted."""
    return sorted(p.parent.name for p in GOLDEN_DIR.glob("*/bird.conf"))


def golden_tree(case: str) -> dict[str, str]:
    """One golden tree as ``{relative path: content}``, as :func:`render_tree` returns it."""
    base = GOLDEN_DIR / case
    return {str(p.relative_to(base)): p.read_text() for p in sorted(base.rglob("*")) if p.is_file()}


def write_tree(tree: dict[str, str], base: Path) -> Path:
    """Write a rendered tree under ``base``, as the agent writes ``bird.configDir``;
    returns its ``bird.conf``. The texts need no fix-up: every include is relative
    to the including file (``test_includes_are_relative_and_only_owned_files``), so a
    tree parses wherever it is written."""
    for rel, content in tree.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return base / "bird.conf"
