"""Library switches the agent process sets before those libraries are imported.

``moenet_core.cli`` imports this module before anything imports aiohttp.

- ``FROZENLIST_NO_EXTENSIONS``: frozenlist (an aiohttp dependency) ships a C++
  extension, and loading it maps libstdc++, about 1 MB resident, for the few lists
  aiohttp freezes at start. Its pure-Python twin behaves the same. An operator who
  wants the extension sets the variable to the empty string (frozenlist reads any
  non-empty value as "no extension").
"""

from __future__ import annotations

import os

os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
