"""The session tunnels' key file (``sessions.privateKeyPath``) and its public half.

The tunnel backend generates a missing key file when a tunnel first needs it;
with ``sessions.publicKeyPath`` set, the plugin makes sure at start that the key
exists and that its public half is published there (0644, rewritten only when
it changed), as the Go agent did.
"""

from __future__ import annotations

import base64
import contextlib
import os
from pathlib import Path

from moenet_core import atomic_write


def ensure_private_key(path: str | os.PathLike[str]) -> bool:
    """Create the key file (0600) when it does not exist; returns True when created."""
    target = Path(path)
    if os.path.lexists(target):
        return False
    raw = bytearray(os.urandom(32))
    raw[0] &= 248  # an X25519 private key (RFC 7748 clamping), as wg genkey makes it
    raw[31] &= 127
    raw[31] |= 64
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (base64.b64encode(bytes(raw)).decode("ascii") + "\n").encode("ascii")
    return atomic_write(target, data, mode=0o600, replace=False)


def write_public_key(path: str | os.PathLike[str], public_key: str) -> bool:
    """Publish ``public_key`` at ``path`` (0644) unless it is there already."""
    target = Path(path)
    content = public_key + "\n"
    with contextlib.suppress(OSError):
        if target.read_text(encoding="ascii") == content:
            return False
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return atomic_write(target, content.encode("ascii"), mode=0o644)
