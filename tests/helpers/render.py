"""Shared test helpers (moved from ``test_bird_render``)."""

from __future__ import annotations

from typing import Any

from moenet_bird.testing import sample_bird_config


def cp_data(**node_over: Any) -> dict[str, Any]:
    """A CP bird-config answer as the Go agent's CP sends it (symbol names included)."""
    return sample_bird_config(
        node=node_over, policy={"rpkiServers": [{"name": "akae", "host": "rpki.akae.re", "port": 8082}]}
    )
