"""Shared test helpers (moved from ``test_plugins``)."""

from __future__ import annotations

import textwrap


def write_dist(root, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]):
    """A fake installed distribution that importlib.metadata (and so pluggy) finds."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "[moenet]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
