"""The node's own mesh key pair.

The private key is generated once (32 random bytes, clamped as X25519 wants)
and kept as base64 in ``<state>/plugins/mesh/mesh.key``, mode 0600, linked into
place only if no file exists yet (a key another process wrote first is kept).
It is used by every mesh tunnel and never logged or sent anywhere. A file that
exists with a loose mode or unreadable content is an error, never replaced:
replacing it would silently cut every mesh link. The public half is derived by
the tunnel backend (``TunnelBackend.public_key``) and published through the
heartbeat (``meshPublicKey``) and the ``mesh/status`` report.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from moenet_core import atomic_write

KEY_FILE = "mesh.key"


def clamp(raw: bytes) -> bytes:
    """An X25519 private key from 32 random bytes (RFC 7748 clamping)."""
    if len(raw) != 32:
        raise ValueError("a WireGuard key is 32 bytes")
    key = bytearray(raw)
    key[0] &= 248
    key[31] &= 127
    key[31] |= 64
    return bytes(key)


def ensure_private_key(path: str | os.PathLike[str]) -> bool:
    """Create the key file (0600) when it does not exist; returns True when created."""
    target = Path(path)
    if os.path.lexists(target):
        return False
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (base64.b64encode(clamp(os.urandom(32))).decode("ascii") + "\n").encode("ascii")
    return atomic_write(target, data, mode=0o600, replace=False)
