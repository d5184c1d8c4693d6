"""WireGuard keys: X25519 (through ``cryptography``), key files, and base64/hex forms.

Private keys live in files that only their owner may read: a file whose mode
gives the group or others any access is refused, because a key that others could
read must be treated as leaked. The node key is generated when missing (random,
clamped, written 0600 through an atomic link so a concurrent writer's key is never
overwritten); a public key file is written only where no file is, or where one
the agent wrote is (never through a symbolic link). Public keys are derived by
``wg pubkey`` when wireguard-tools is installed, else in-process with
``cryptography``'s X25519: that library brings its own OpenSSL (about 6 MB
resident for the daemon's whole life) for one derivation per start. Key material
never appears in a log line, a repr, an argv or an exception.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import subprocess
from pathlib import Path

# cryptography's X25519 (its Rust extension, ~6 MB resident) is imported where a
# key is derived, not at start: an agent that never derives one never loads it.
from moenet_core import atomic_write

from .errors import WireguardKeyError

KEY_LEN = 32

# ----------------------------------------------------------------- X25519
#
# RFC 7748 through ``cryptography`` (OpenSSL): the library clamps the scalar and
# masks the u-coordinate's top bit as the RFC says.


def clamp(scalar: bytes) -> bytes:
    """RFC 7748 decodeScalar25519 clamping, as ``wg genkey`` stores keys."""
    if len(scalar) != KEY_LEN:
        raise ValueError("an X25519 scalar is 32 bytes")
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The X25519 function of RFC 7748 (scalar multiplication on Curve25519).

    Raises ValueError for inputs that are not 32 bytes, and for a ``u`` of small
    order (the result would be all zeros, which ``cryptography`` refuses)."""
    if len(scalar) != KEY_LEN or len(u) != KEY_LEN:
        raise ValueError("X25519 takes 32-byte inputs")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    private = X25519PrivateKey.from_private_bytes(scalar)
    return private.exchange(X25519PublicKey.from_public_bytes(u))


WG_PUBKEY_TIMEOUT = 5.0


def _wg_pubkey(private: bytes) -> bytes | None:
    """``wg pubkey`` of ``private`` (fed on stdin), or None when ``wg`` is not
    installed or gives no well-formed key (the caller derives in-process)."""
    wg = shutil.which("wg")
    if wg is None:
        return None
    try:
        done = subprocess.run(
            [wg, "pubkey"],
            input=base64.b64encode(private) + b"\n",
            capture_output=True,
            timeout=WG_PUBKEY_TIMEOUT,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    try:
        return b64_to_bytes(done.stdout.decode("ascii"), "public key")
    except (UnicodeDecodeError, WireguardKeyError):
        return None


def public_from_private(private: bytes, *, use_wg: bool = True) -> bytes:
    """The public key (X25519 with the base point): ``wg pubkey`` when available
    (``use_wg``), else ``cryptography``."""
    if len(private) != KEY_LEN:
        raise ValueError("an X25519 private key is 32 bytes")
    if use_wg and (public := _wg_pubkey(private)) is not None:
        return public
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


# ------------------------------------------------------------------ forms


def b64_to_bytes(text: str, what: str = "key") -> bytes:
    """Strict base64 of exactly 32 bytes (44 characters, canonical padding)."""
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireguardKeyError(f"{what} is not valid base64") from None
    if len(raw) != KEY_LEN or len(text) != 44 or base64.b64encode(raw).decode() != text:
        raise WireguardKeyError(f"{what} must be 44 characters of base64 encoding 32 bytes")
    return raw


def bytes_to_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hex_to_bytes(text: str) -> bytes:
    """The UAPI's lower-case hex form (64 characters)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise WireguardKeyError("key is not valid hex") from None
    if len(raw) != KEY_LEN:
        raise WireguardKeyError("key must be 64 hex characters")
    return raw


def bytes_to_hex(raw: bytes) -> str:
    return raw.hex()


def b64_to_hex(text: str) -> str:
    return bytes_to_hex(b64_to_bytes(text))


def hex_to_b64(text: str) -> str:
    return bytes_to_b64(hex_to_bytes(text))


def is_valid_public_key(text: str) -> bool:
    try:
        b64_to_bytes(text)
    except WireguardKeyError:
        return False
    return True


# ------------------------------------------------------------------ files


class SecretKey:
    """32 bytes of secret key material that refuse to print themselves."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise WireguardKeyError("a WireGuard key is 32 bytes")
        self._raw = bytes(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    def public_key(self) -> str:
        """Base64 public key (meaningful for private keys, not preshared ones)."""
        return bytes_to_b64(public_from_private(self._raw))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"

    __str__ = __repr__


def check_mode(path: str | os.PathLike[str]) -> os.stat_result:
    """Refuse a key file that the group or others may access in any way."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WireguardKeyError(f"key file {os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise WireguardKeyError(f"key file {os.fspath(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise WireguardKeyError(f"key file {os.fspath(path)} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise WireguardKeyError(
            f"key file {os.fspath(path)} has mode {mode:04o}, which lets group or others read it; "
            f"it must be 0600 or 0400 (chmod 600 {os.fspath(path)}) and the key should be rotated"
        )
    return st


def read_key(path: str | os.PathLike[str], what: str = "private key") -> SecretKey:
    """Read a base64 key file after checking its mode."""
    check_mode(path)
    try:
        text = Path(path).read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise WireguardKeyError(f"key file {os.fspath(path)}: {reason}") from None
    try:
        return SecretKey(b64_to_bytes(text, what))
    except WireguardKeyError as exc:
        raise WireguardKeyError(f"key file {os.fspath(path)}: {exc}") from None


def generate_private_key() -> SecretKey:
    """A new random private key: 32 bytes from the kernel's CSPRNG, clamped, as
    ``wg genkey`` makes them (an X25519 private key is nothing more)."""
    return SecretKey(clamp(os.urandom(KEY_LEN)))


def write_key_file(path: str | os.PathLike[str], key: SecretKey) -> bool:
    """Write ``key`` to ``path`` (0600) unless the file exists.

    Linked into place from a private temporary file, so a reader never sees a
    partial key and a key another process wrote in the meantime is kept
    (returns False then).
    """
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return atomic_write(target, (bytes_to_b64(key.raw) + "\n").encode("ascii"), mode=0o600, replace=False)


def load_or_create_private_key(path: str | os.PathLike[str]) -> tuple[SecretKey, bool]:
    """The node key: read it, or generate and store it when the file is missing.

    Returns ``(key, created)``. A file that exists but is unreadable or has a
    loose mode is an error, never silently replaced.
    """
    created = not os.path.lexists(path) and write_key_file(path, generate_private_key())
    return read_key(path), created
