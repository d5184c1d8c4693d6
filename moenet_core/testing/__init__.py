"""Test helpers for moenet-agent and its plugins.

As a pytest plugin (opt-in: ``pytest_plugins = ["moenet_core.testing"]``) it
provides the fixtures ``manual_clock``, ``fake_cp``, ``agent_harness`` and
``make_plugin_context``. The classes work without pytest too: in-memory backends
(:class:`FakeBackends` and the fakes it bundles), an in-process CP
(:class:`StubControlPlane`) and :func:`plugin_context`, a real plugin context
without a running agent.
"""

from __future__ import annotations

from .clock import ManualClock
from .fake_cp import FakeControlPlane, RecordedRequest
from .fakes import (
    Call,
    FakeBackendError,
    FakeBackends,
    FakeFirewallBackend,
    FakeLoopbackBackend,
    FakeRoutingBackend,
    FakeTunnelBackend,
    InjectedFault,
    Journal,
    StubControlPlane,
    plugin_context,
)
from .harness import AgentHarness
from .netns import NetNS, veth_pair

__all__ = [
    "AgentHarness",
    "Call",
    "FakeBackendError",
    "FakeBackends",
    "FakeControlPlane",
    "FakeFirewallBackend",
    "FakeLoopbackBackend",
    "FakeRoutingBackend",
    "FakeTunnelBackend",
    "InjectedFault",
    "Journal",
    "ManualClock",
    "NetNS",
    "RecordedRequest",
    "StubControlPlane",
    "plugin_context",
    "veth_pair",
]

try:
    from .fixtures import agent_harness, fake_cp, make_plugin_context, manual_clock, netns
except ImportError:  # pragma: no cover - pytest is not installed
    pass
else:
    __all__ += ["agent_harness", "fake_cp", "make_plugin_context", "manual_clock", "netns"]
