"""The README's main-job command works (in its --once form)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_and_cleans_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    env["TMPDIR"] = str(tmp_path)
    res = subprocess.run(
        [sys.executable, str(ROOT / "contrib/demo/demo.py"), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "CP <- heartbeat #1 from demo1" in res.stdout
    assert "heartbeat" in res.stdout and "ok" in res.stdout  # the status table
    assert "demo stopped; nothing left behind" in res.stdout
    assert list(tmp_path.iterdir()) == []
