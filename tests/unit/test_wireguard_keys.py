"""WireGuard keys: X25519 against RFC 7748, key files, and nothing secret in output."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import pytest
from moenet_wireguard import keys
from moenet_wireguard.errors import WireguardKeyError


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# RFC 7748 section 5.2: (scalar, u, expected)
SCALARMULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "expected"), SCALARMULT)
def test_x25519_rfc7748_section_5_2(scalar, u, expected):
    assert keys.x25519(h(scalar), h(u)).hex() == expected


def test_x25519_rfc7748_iterated():
    k = u = (9).to_bytes(32, "little")
    k, u = keys.x25519(k, u), k
    assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    for _ in range(999):
        k, u = keys.x25519(k, u), k
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_x25519_rfc7748_section_6_1_diffie_hellman():
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    a_pub, b_pub = keys.public_from_private(a), keys.public_from_private(b)
    assert a_pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert b_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert keys.x25519(a, b_pub).hex() == keys.x25519(b, a_pub).hex() == shared


@pytest.mark.parametrize("use_wg", [True, False])
def test_public_keys_by_wg_and_in_process_agree(use_wg):
    a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    expected = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert keys.public_from_private(a, use_wg=use_wg).hex() == expected


def test_without_a_usable_wg_the_key_is_derived_in_process(tmp_path, monkeypatch):
    a = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    expected = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    monkeypatch.setenv("PATH", str(tmp_path))  # no wg at all
    assert keys._wg_pubkey(a) is None
    assert keys.public_from_private(a).hex() == expected
    fake = tmp_path / "wg"  # a wg that answers nonsense is not believed
    fake.write_text("#!/bin/sh\necho not-a-key\n")
    fake.chmod(0o755)
    assert keys._wg_pubkey(a) is None
    assert keys.public_from_private(a).hex() == expected


def test_deriving_with_wg_leaves_cryptography_unloaded(tmp_path):
    """The point of ``wg pubkey``: the daemon never maps cryptography's OpenSSL."""
    path = tmp_path / "k"
    keys.write_key_file(path, keys.generate_private_key())
    code = (
        "import sys; from moenet_wireguard import keys; "
        f"keys.read_key({str(path)!r}).public_key(); "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_x25519_refuses_bad_lengths_and_small_order_points():
    with pytest.raises(ValueError, match="32-byte"):
        keys.x25519(bytes(31), bytes(32))
    with pytest.raises(ValueError):  # u = 0 has small order: the all-zero result is refused
        keys.x25519(bytes(range(32)), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        keys.public_from_private(bytes(33))


def test_generated_keys_are_clamped_and_distinct():
    made = {keys.generate_private_key().raw for _ in range(16)}
    assert len(made) == 16 and all(keys.clamp(raw) == raw for raw in made)


def test_base64_hex_forms_and_public_key_validation():
    raw = bytes(range(32))
    b64 = keys.bytes_to_b64(raw)
    assert keys.b64_to_hex(b64) == raw.hex()
    assert keys.hex_to_b64(raw.hex()) == b64
    assert keys.is_valid_public_key(b64)
    for bad in (
        "",
        "abc",
        b64[:-1],
        b64[:-2] + "==",
        base64.b64encode(bytes(31)).decode(),
        b64 + "A",
        "!" * 44,
    ):
        assert not keys.is_valid_public_key(bad), bad
    with pytest.raises(WireguardKeyError, match="64 hex"):
        keys.hex_to_bytes("00" * 31)


def test_missing_node_key_is_generated_0600_and_matches_wg_pubkey(tmp_path):
    path = tmp_path / "etc" / "wireguard" / "private.key"
    key, created = keys.load_or_create_private_key(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    text = path.read_text()
    raw = base64.b64decode(text)
    assert raw == key.raw and keys.clamp(raw) == raw  # stored clamped, like wg genkey
    wg = subprocess.run(["wg", "pubkey"], input=text, capture_output=True, text=True, check=True)
    assert key.public_key() == wg.stdout.strip()
    # A second call reads the same key instead of replacing it.
    again, created = keys.load_or_create_private_key(path)
    assert not created and again == key


def test_keys_made_by_wg_are_read(tmp_path):
    text = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o400)
    pub = subprocess.run(["wg", "pubkey"], input=text, capture_output=True, text=True, check=True).stdout
    assert keys.read_key(path).public_key() == pub.strip()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "private.key"
    keys.write_key_file(path, keys.generate_private_key())
    path.chmod(mode)
    with pytest.raises(WireguardKeyError) as info:
        keys.read_key(path)
    msg = str(info.value)
    assert str(path) in msg and f"{mode:04o}" in msg and "0600" in msg
    assert path.read_text().strip() not in msg


def test_loose_node_key_is_refused_not_replaced(tmp_path):
    path = tmp_path / "private.key"
    path.write_text(keys.bytes_to_b64(keys.generate_private_key().raw))
    path.chmod(0o644)
    before = path.read_text()
    with pytest.raises(WireguardKeyError, match="0644"):
        keys.load_or_create_private_key(path)
    assert path.read_text() == before


def test_garbage_key_file_error_does_not_echo_content(tmp_path):
    path = tmp_path / "k"
    secret = "not-a-key-but-maybe-secret-material-xyz"
    path.write_text(secret)
    path.chmod(0o600)
    with pytest.raises(WireguardKeyError) as info:
        keys.read_key(path)
    assert secret not in str(info.value) and str(path) in str(info.value)


def test_secret_key_never_prints_itself():
    key = keys.generate_private_key()
    b64 = keys.bytes_to_b64(key.raw)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert b64 not in text and key.raw.hex() not in text


def test_write_key_file_never_overwrites(tmp_path):
    path = tmp_path / "k"
    first, second = keys.generate_private_key(), keys.generate_private_key()
    assert keys.write_key_file(path, first)
    assert not keys.write_key_file(path, second)
    assert keys.read_key(path) == first


def test_public_key_file_is_written_only_when_changed(tmp_path):
    # One writer publishes the node's public key: the sessions plugin, which owns the key.
    from moenet_sessions.keys import write_public_key

    path = tmp_path / "public.key"
    pub = keys.generate_private_key().public_key()
    assert write_public_key(path, pub)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    mtime = os.stat(path).st_mtime_ns
    assert not write_public_key(path, pub)
    assert os.stat(path).st_mtime_ns == mtime
