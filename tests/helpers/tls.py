"""A throwaway TLS certificate for local HTTPS test servers, and the contexts
that serve it and trust it (and nothing else)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TestCert:
    """A self-signed certificate for ``addresses`` (IP SANs), written under ``where``."""

    __test__ = False  # not a test class

    def __init__(self, where: Path, addresses: list[str]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moenet test echo")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        where.mkdir(parents=True, exist_ok=True)
        self.cert_path = where / "cert.pem"
        self.key_path = where / "key.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Trusts this certificate only (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.cert_path))

    def subject_hash(self) -> str:
        """OpenSSL's name for this certificate in a CA directory (``<hash>.0``, as
        ``openssl x509 -hash`` prints it): SHA-1 of the subject's canonical DER
        (its RDN sets without the outer SEQUENCE; the common name above is already
        in canonical form, lower case and UTF8String), first 4 bytes little-endian."""
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        der = cert.subject.public_bytes()
        assert der[0] == 0x30
        header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
        digest = hashlib.sha1(der[header:]).digest()  # OpenSSL's choice of hash
        return f"{int.from_bytes(digest[:4], 'little'):08x}"
