"""Test helpers for moenet-agent and its plugins.

As a pytest plugin (opt-in: ``pytest_plugins = ["moenet_core.testing"]``) it
provides the fixtures ``manual_clock``, ``fake_cp`` and ``agent_harness``. The
classes work without pytest too.
"""

from __future__ import annotations

from .clock import ManualClock
from .fake_cp import FakeControlPlane, RecordedRequest
from .harness import AgentHarness
from .netns import NetNS, veth_pair

__all__ = ["AgentHarness", "FakeControlPlane", "ManualClock", "NetNS", "RecordedRequest", "veth_pair"]

try:
    from .fixtures import agent_harness, fake_cp, manual_clock, netns
except ImportError:  # pragma: no cover - pytest is not installed
    pass
else:
    __all__ += ["agent_harness", "fake_cp", "manual_clock", "netns"]
