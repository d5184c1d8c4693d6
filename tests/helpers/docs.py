"""Shared test helpers (moved from ``test_docs``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


DASHBOARD = ROOT / "contrib/grafana/moenet-agent.json"


def dashboard_exprs() -> list[str]:
    import json

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in walk(data["panels"]) for t in p.get("targets", [])]
