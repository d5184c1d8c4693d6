"""The session tunnels' key file (``sessions.privateKeyPath``) and its public half.

The node key is the identity every eBGP peer holds: a new one silently kills
every session. So:

- The plugin creates the key at start (0600) only when this node never had one:
  the state file ``plugins/sessions/node-key.json`` remembers the path and the
  public half of the key the node has used. A configured key that is missing
  while that record exists is refused (the ``sessions`` plugin does not start,
  the rest of the node runs, existing tunnels keep their key): restore the file,
  or point ``sessions.privateKeyPath`` back at it, or delete the record to
  accept a new key (and tell every peer). Later, a missing key file makes every
  tunnel change fail instead of generating one.
- An existing key file must be a regular file of the agent's user, mode 0600 or
  0400: ``moenet-agent validate`` and the start both refuse anything else
  (:func:`private_key_problem`), rather than the first tunnel.
- The public half is published at ``sessions.publicKeyPath`` (0644, rewritten
  only when it changed). A symbolic link there is never replaced, nor a file
  whose content is not a single WireGuard public key line (something the agent
  did not write): :func:`public_key_problem`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from moenet_core import StateError, StateStore, atomic_write

#: The record of the node key this node has used (in the plugin's state directory).
HISTORY_FILE = "node-key.json"
#: A WireGuard public key as the agent writes it: 44 characters of base64, a newline.
PUBLIC_KEY_LINE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\n?$")


class KeyFileError(Exception):
    """A key file the agent must not use, create or replace (the message says why and what to do)."""


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


def private_key_problem(path: str | os.PathLike[str], *, euid: int | None = None) -> str | None:
    """Why the existing key file at ``path`` may not be used, or None (also when
    it is missing: see :func:`missing_key_problem`)."""
    where = f"sessions.privateKeyPath {os.fspath(path)}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{where}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{where}: not a regular file"
    euid = os.geteuid() if euid is None else euid
    if st.st_uid != euid:
        return (
            f"{where}: owned by uid {st.st_uid}, not the agent's user (uid {euid}): "
            f"chown {euid} {os.fspath(path)}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o177:
        return (
            f"{where}: mode {mode:04o}; a private key must be 0600 or 0400 "
            f"(chmod 600 {os.fspath(path)}; if others could read it, rotate the key)"
        )
    return None


def history(store: StateStore) -> dict[str, Any] | None:
    """The record of the node key this node used, or None (never had one, or unreadable)."""
    try:
        doc = store.read_json(HISTORY_FILE, None)
    except StateError:
        return None
    return doc if isinstance(doc, dict) else None


def record(store: StateStore, path: str | os.PathLike[str], public_key: str) -> None:
    """Remember that this node's key is at ``path`` (public half ``public_key``)."""
    doc = {"privateKeyPath": os.path.abspath(path), "publicKey": public_key}
    if history(store) != doc:
        store.write_json(HISTORY_FILE, doc)


def missing_key_problem(path: str | os.PathLike[str], store: StateStore) -> str | None:
    """Why the agent must not generate a key at ``path`` (missing), or None when
    it may: it never had one. None also when the file exists."""
    if os.path.lexists(path):
        return None
    had = history(store)
    if had is None:
        return None
    return (
        f"sessions.privateKeyPath {os.fspath(path)}: missing; refusing to generate a new node key "
        f"(every eBGP session would break): restore {had.get('privateKeyPath')} or delete "
        f"{store.path(HISTORY_FILE)} to accept a new key"
    )


def public_key_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the agent must not write its public key at ``path``, or None: a symbolic
    link, something not a regular file, or a file that is not a single WireGuard
    public key line (not the agent's)."""
    where = f"sessions.publicKeyPath {os.fspath(path)}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{where}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{where}: a symbolic link; refusing to replace it (point the key at a plain file)"
    if not stat.S_ISREG(st.st_mode):
        return f"{where}: not a regular file; refusing to replace it"
    if st.st_size > 64:
        return f"{where}: not a public key the agent wrote ({st.st_size} bytes); refusing to replace it"
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        text = ""
    if not PUBLIC_KEY_LINE.match(text):
        return f"{where}: holds something other than a WireGuard public key; refusing to replace it"
    return None


def write_public_key(path: str | os.PathLike[str], public_key: str) -> bool:
    """Publish ``public_key`` at ``path`` (0644) unless it is there already.

    Raises :class:`KeyFileError` for a path the agent must not replace
    (:func:`public_key_problem`); the file there is left untouched."""
    target = Path(path)
    content = public_key + "\n"
    if (problem := public_key_problem(target)) is not None:
        raise KeyFileError(problem)
    with contextlib.suppress(OSError):
        if target.read_text(encoding="ascii") == content:
            return False
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    return atomic_write(target, content.encode("ascii"), mode=0o644)


def config_problems(private_key_path: str, public_key_path: str, store: StateStore) -> list[str]:
    """What ``moenet-agent validate`` and the start refuse about the key files."""
    found = [
        p
        for p in (
            private_key_problem(private_key_path),
            missing_key_problem(private_key_path, store),
            public_key_problem(public_key_path) if public_key_path else None,
        )
        if p is not None
    ]
    return found
