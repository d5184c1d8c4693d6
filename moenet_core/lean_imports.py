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

- The system's CA certificates looked up in their directory, not loaded from the
  bundle file: aiohttp builds its shared verifying TLS context when it is
  imported, and OpenSSL's default paths load the whole bundle into it (about 140
  certificates, 2 MB resident) although the agent talks TLS to one or two
  services. :func:`trust_store_by_directory` (called by ``moenet-agent run``
  before anything imports aiohttp) has that context built from the hashed
  certificate directory instead (``/etc/ssl/certs``, kept by
  ``update-ca-certificates``), where OpenSSL reads a CA when a handshake needs
  it: the same trust anchors. Only when ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``
  are unset or name those same defaults, and the directory has hash links; the
  variables are put back afterwards, so child processes see the operator's
  environment.

Not done, measured: ``AIOHTTP_NO_EXTENSIONS`` would save 0.7 MB more, but it
swaps llhttp for aiohttp's pure-Python parser on the listeners that face the
network (the looking glass), and past request-smuggling fixes landed in that
parser; 0.7 MB does not pay for that.
"""

from __future__ import annotations

import mimetypes
import os
import re
import sys

os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")
if not mimetypes.inited:
    mimetypes.knownfiles = []


_HASH_LINK = re.compile(r"[0-9a-f]{8}\.[0-9]+")
"""How OpenSSL names a CA in a certificate directory: its subject hash and a number."""


def trust_store_by_directory(directory: str | None = None) -> bool:
    """Have aiohttp's shared verifying TLS context find CAs in ``directory`` (the
    system's certificate directory when None) instead of loading the bundle file.

    Returns False, changing nothing, when ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``
    names anything but OpenSSL's own default bundle and directory (the operator's
    choice of trust wins), when aiohttp's connector is already imported, or when
    the directory has no hash links. The variables are as before afterwards."""
    import ssl

    if "aiohttp.connector" in sys.modules:
        return False
    paths = ssl.get_default_verify_paths()
    given = {name: os.environ.get(name) for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    for value, default in (
        (given["SSL_CERT_FILE"], paths.openssl_cafile),
        (given["SSL_CERT_DIR"], paths.openssl_capath),
    ):
        if value is not None and os.path.realpath(value) != os.path.realpath(default):
            return False
    directory = directory or os.path.realpath(paths.openssl_capath)
    try:
        if not any(_HASH_LINK.fullmatch(e.name) for e in os.scandir(directory)):
            return False
    except OSError:
        return False
    os.environ["SSL_CERT_FILE"] = os.devnull  # no bundle: nothing loaded up front
    os.environ["SSL_CERT_DIR"] = directory
    try:
        import aiohttp.connector  # noqa: F401  (builds the shared context now)
    finally:
        for name, value in given.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    return True
