"""Shared fixtures: the project's own tests use the public testing plugin."""

from __future__ import annotations

import os

pytest_plugins = ["moenet_core.testing"]

# Plugins installed in the environment must not change core tests; tests that
# exercise discovery turn autoload back on explicitly.
os.environ.setdefault("MOENET_DISABLE_PLUGIN_AUTOLOAD", "1")
