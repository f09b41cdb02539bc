"""Certificates made at test time with `cryptography`: a CA, server certificates for
127.0.0.1 and client certificates it signs, written as PEM files.

`Authority(name)` is a self-signed CA; `authority.issue(path_prefix, cn, server=True)`
writes `<prefix>.crt` and `<prefix>.key` and returns the certificate's `Issued` (paths,
serial number and SHA-256 fingerprint of its DER form).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    serial: int
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex

    def files(self) -> tuple[str, str]:
        return str(self.cert), str(self.key)


class Authority:
    """A self-signed CA, written to `<directory>/<name>-ca.crt`."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(f"{name} CA")
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}-ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, prefix: Path, cn: str, *, server: bool) -> Issued:
        """A certificate for `cn` signed by this CA: a server's (SAN 127.0.0.1 and
        localhost) or a client's; its PEM files at `<prefix>.crt` / `<prefix>.key`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        crt, pem_key = prefix.with_suffix(".crt"), prefix.with_suffix(".key")
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem_key.write_bytes(_key_pem(key))
        der = cert.public_bytes(serialization.Encoding.DER)
        return Issued(crt, pem_key, cert.serial_number, hashlib.sha256(der).hexdigest())
