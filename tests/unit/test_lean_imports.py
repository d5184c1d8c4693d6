"""What ``moenet_core.lean_imports`` switches off before the libraries load:
frozenlist's C++ extension, the system MIME tables, and the whole CA bundle (the
agent's TLS trust comes from the system's CA directory, looked up when a
handshake needs a CA: the same anchors, and the operator's own choice wins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.tls import TestCert

# Runs in a fresh interpreter: the choice must be made before aiohttp is imported.
PROBE = r"""
import asyncio, json, os, sys
from moenet_core.lean_imports import trust_store_by_directory

env_before = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
used = trust_store_by_directory(sys.argv[1] or None)
import aiohttp, aiohttp.connector, aiohttp.web

out = {
    "used": used,
    "env_kept": env_before == {k: os.environ.get(k) for k in env_before},
    "cas_loaded_at_start": aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
}

async def fetch(cert_dir: str) -> str:
    import ssl
    app = aiohttp.web.Application()
    app.router.add_get("/", lambda r: aiohttp.web.Response(text="ok"))
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem")
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as s:  # the shared verifying context
            async with s.get(f"https://127.0.0.1:{port}/") as r:
                return await r.text()
    except aiohttp.ClientConnectorCertificateError:
        return "untrusted"
    finally:
        await runner.cleanup()

for name in sys.argv[2:]:
    out[name] = asyncio.run(fetch(name))
print(json.dumps(out))
"""


def probe(directory: str, servers: list[Path], env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, directory, *map(str, servers)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}


def test_a_hashed_ca_directory_is_trusted_and_nothing_is_loaded_up_front(tmp_path: Path) -> None:
    trusted = TestCert(tmp_path / "trusted", ["127.0.0.1"])
    TestCert(tmp_path / "stranger", ["127.0.0.1"])  # a server whose CA is not in the directory
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / f"{trusted.subject_hash()}.0").symlink_to(trusted.cert_path)

    out = probe(str(cas), [tmp_path / "trusted", tmp_path / "stranger"], clean_env())
    assert out["used"] is True and out["env_kept"] is True
    assert out["cas_loaded_at_start"] == 0
    assert out[str(tmp_path / "trusted")] == "ok"  # found in the directory by its hash
    assert out[str(tmp_path / "stranger")] == "untrusted"  # and only what is there


def test_the_operators_trust_store_wins(tmp_path: Path) -> None:
    own = TestCert(tmp_path / "own", ["127.0.0.1"])
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / f"{own.subject_hash()}.0").symlink_to(own.cert_path)
    env = {**clean_env(), "SSL_CERT_FILE": str(own.cert_path)}

    out = probe(str(cas), [tmp_path / "own"], env)
    assert out["used"] is False and out["env_kept"] is True
    assert out["cas_loaded_at_start"] == 1  # the operator's bundle, loaded as OpenSSL does
    assert out[str(tmp_path / "own")] == "ok"


def test_the_system_defaults_named_explicitly_count_as_the_defaults(tmp_path: Path) -> None:
    """Some hosts export the default bundle and directory for every program: that
    names the same trust, so the directory lookup still applies."""
    import ssl

    paths = ssl.get_default_verify_paths()
    env = {**clean_env(), "SSL_CERT_FILE": paths.openssl_cafile, "SSL_CERT_DIR": paths.openssl_capath}
    cas = tmp_path / "cas"
    cas.mkdir()
    cert = TestCert(tmp_path / "c", ["127.0.0.1"])
    (cas / f"{cert.subject_hash()}.0").symlink_to(cert.cert_path)
    out = probe(str(cas), [], env)
    assert out["used"] is True and out["env_kept"] is True and out["cas_loaded_at_start"] == 0


def test_a_directory_without_hash_links_changes_nothing(tmp_path: Path) -> None:
    cert = TestCert(tmp_path / "c", ["127.0.0.1"])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ca.pem").symlink_to(cert.cert_path)
    out = probe(str(plain), [], clean_env())
    assert out["used"] is False and out["env_kept"] is True


def test_the_cli_process_uses_frozenlists_pure_python_twin() -> None:
    """frozenlist's C++ extension would map libstdc++ (about 1 MB resident); the
    agent's entry point turns it off unless the operator set the variable."""
    import os
    import subprocess
    import sys

    code = (
        "import moenet_core.cli, aiohttp, frozenlist\n"
        "print(frozenlist.FrozenList.__module__, 'libstdc++' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["frozenlist", "False"]
    kept = {**env, "FROZENLIST_NO_EXTENSIONS": ""}  # the operator's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=kept, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["frozenlist._frozenlist", "True"]


def test_the_cli_process_does_not_read_the_system_mime_tables() -> None:
    """aiohttp builds a MIME table at import (for file responses the agent never
    sends), which loads the module's tables: only Python's built-in types go in,
    not ``/etc/mime.types``."""
    import subprocess
    import sys

    def table(imports: str) -> list[str]:
        code = (
            f"import {imports}, aiohttp.web_fileresponse as f, mimetypes\n"
            "print(len(mimetypes.types_map), mimetypes.guess_type('x.json')[0])"
        )
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()

    size, json_type = table("moenet_core.cli")
    assert json_type == "application/json"
    assert int(size) < 200  # Python's own table has about 150 types
    if Path("/etc/mime.types").exists():  # the control: a process that reads it gets far more
        assert int(table("os")[0]) > 2 * int(size)
