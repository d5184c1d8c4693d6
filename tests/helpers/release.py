"""Shared test helpers (moved from ``test_updater_release``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


SIGN_RELEASE = ROOT / "scripts" / "sign-release"


def sign_release(*args: str | Path) -> str:
    """Run scripts/sign-release; its standard output (the public key)."""
    proc = subprocess.run(
        [sys.executable, str(SIGN_RELEASE), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()
