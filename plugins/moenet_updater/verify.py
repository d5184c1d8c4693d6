"""The verification chain: a pinned Ed25519 key signs ``SHA256SUMS``, which pins the wheel.

1. ``SHA256SUMS.sig`` must be a valid Ed25519 signature, by the key pinned in
   ``updater.publicKey``, over the exact bytes of ``SHA256SUMS`` (the signature
   file holds the 64 raw bytes, or their base64).
2. The signed ``SHA256SUMS`` must have a line for the wheel of the selected
   version (``<hex>  moenet_agent-<version>-py3-none-any.whl``), and the
   downloaded wheel's SHA-256 must equal it.

Because the wheel's file name carries its version and the signed list names it,
an unsigned release feed cannot pass an older signed release off as a newer one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from moenet_core import MoenetError

if TYPE_CHECKING:  # cryptography is imported where a key is used (the updater is off by default)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](\S(?:.*\S)?)$")
SIGNATURE_BYTES = 64
KEY_BYTES = 32


class VerificationError(MoenetError):
    """A release failed verification; nothing from it may be installed."""


def load_public_key(text: str) -> Ed25519PublicKey:
    """The key from its base64 text (32 raw bytes); ValueError says what is wrong."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (the 32-byte Ed25519 public key sign-release prints)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"must be the base64 of a 32-byte Ed25519 public key (got {len(raw)} bytes)")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def decode_signature(data: bytes) -> bytes:
    """The 64 raw signature bytes from a ``.sig`` file (raw, or base64 text)."""
    if len(data) == SIGNATURE_BYTES:
        return data
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != SIGNATURE_BYTES:
        raise VerificationError(
            f"SHA256SUMS.sig is not an Ed25519 signature (neither 64 raw bytes nor their base64; "
            f"{len(data)} bytes)"
        )
    return raw


def verify_signature(key: Ed25519PublicKey, sums: bytes, signature: bytes) -> None:
    """Raise unless ``signature`` is the pinned key's signature over ``sums``."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(decode_signature(signature), sums)
    except InvalidSignature:
        raise VerificationError(
            "bad signature: SHA256SUMS.sig does not verify against the pinned updater.publicKey "
            "(signed by another key, or SHA256SUMS was altered)"
        ) from None


def parse_sums(data: bytes) -> dict[str, str]:
    """``{file name: lower-case hex}`` from ``sha256sum`` output (text or ``*`` binary
    marker). Any malformed line, or a name listed twice, refuses the whole file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError("SHA256SUMS is not UTF-8 text") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = SUMS_LINE.match(line)
        if not m:
            raise VerificationError(f"SHA256SUMS line {number} is not '<sha256 hex>  <file name>'")
        digest, name = m.group(1).lower(), m.group(2)
        if name in out:
            raise VerificationError(f"SHA256SUMS lists {name} twice")
        out[name] = digest
    return out


def expected_digest(sums: dict[str, str], name: str) -> str:
    """The signed checksum of ``name``; refuses a file the list does not name."""
    digest = sums.get(name)
    if digest is None:
        raise VerificationError(f"the signed SHA256SUMS has no line for {name}")
    return digest


def check_digest(sums: dict[str, str], name: str, actual: str) -> None:
    """Raise unless ``actual`` (hex) is the signed checksum of ``name``."""
    expected = expected_digest(sums, name)
    if actual.lower() != expected:
        raise VerificationError(f"checksum mismatch for {name}: SHA256SUMS says {expected}, got {actual}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
