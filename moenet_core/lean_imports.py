"""Library switches the agent process sets before those libraries are imported.

``moenet_core.cli`` imports this module before anything imports aiohttp.

- ``FROZENLIST_NO_EXTENSIONS``: frozenlist (an aiohttp dependency) ships a C++
  extension, and loading it maps libstdc++, about 1 MB resident, for the few lists
  aiohttp freezes at start. Its pure-Python twin behaves the same. An operator who
  wants the extension sets the variable to the empty string (frozenlist reads any
  non-empty value as "no extension").
- ``mimetypes.knownfiles`` emptied: aiohttp builds a ``MimeTypes`` table when it is
  imported (for serving files, which the agent never does), and that first loads
  the module's global tables from the system's ``/etc/mime.types``: a few
  thousand entries, about 0.5 MB resident. Without the files, Python's built-in
  table of common types answers ``mimetypes`` lookups. Nothing changes when
  something loaded the tables before.

Not done, measured: ``AIOHTTP_NO_EXTENSIONS`` would save 0.7 MB more, but it
swaps llhttp for aiohttp's pure-Python parser on the listeners that face the
network (the looking glass), and past request-smuggling fixes landed in that
parser; 0.7 MB does not pay for that.
"""

from __future__ import annotations

import mimetypes
import os

os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
if not mimetypes.inited:
    mimetypes.knownfiles = []
