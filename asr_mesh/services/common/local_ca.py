"""A private CA and certificates for a local mesh (`asr serve --tls`), made with `cryptography`.

`ensure_local_tls(directory)` writes, once, and reuses afterwards:

    ca.pem / ca.key        the mesh's CA (ECDSA P-256, 10 years); clients verify with ca.pem
    mesh.pem / mesh.key    one certificate every service shows, as a server and as a client of
                           the others (SAN 127.0.0.1, ::1, localhost; serverAuth + clientAuth)

Keys are written 0600 in a 0700 directory. Certificates are renewed when they are within 30
days of expiry or no longer chain to ca.pem (a CA made again after its key was deleted, say).
`tls_env(files, services)` is the environment that starts each service with TLS and mTLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        PrivateKeyTypes,
    )

CA_NAME = "asr-mesh local CA"
HOSTS = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class LocalTls:
    ca: Path
    cert: Path
    key: Path


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _usable(cert_path: Path, ca_cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, Exception):  # noqa: BLE001 - any doubt: make a new one
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > RENEW_BEFORE


def ensure_local_tls(
    directory: Path, hosts: Iterable[str] = HOSTS, addresses: Iterable[str] = ADDRESSES
) -> LocalTls:
    """The CA and mesh certificate under `directory`, made if missing, stale or foreign."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = LocalTls(directory / "ca.pem", directory / "mesh.pem", directory / "mesh.key")
    ca_key_path = directory / "ca.key"
    now = dt.datetime.now(dt.timezone.utc)

    def pem_key(key: PrivateKeyTypes) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_cert: x509.Certificate | None = None
    ca_key: CertificateIssuerPrivateKeyTypes | None = None
    if files.ca.is_file() and ca_key_path.is_file():
        try:
            loaded_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
            loaded_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        except ValueError:
            pass
        else:
            # A key that cannot sign certificates (X25519, DH) is as foreign as a broken one.
            signs = (
                ec.EllipticCurvePrivateKey,
                rsa.RSAPrivateKey,
                dsa.DSAPrivateKey,
                ed25519.Ed25519PrivateKey,
                ed448.Ed448PrivateKey,
            )
            if (
                isinstance(loaded_key, signs)
                and loaded_cert.not_valid_after_utc - now >= RENEW_BEFORE
            ):
                ca_cert, ca_key = loaded_cert, loaded_key
    if ca_cert is None or ca_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, pem_key(ca_key), private=True)
        _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    if not (files.key.is_file() and _usable(files.cert, ca_cert)):
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName(h) for h in hosts] + [
            x509.IPAddress(ipaddress.ip_address(a)) for a in addresses
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "asr-mesh local service")])
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.key, pem_key(key), private=True)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def tls_env(files: LocalTls, services: Iterable[str]) -> dict[str, str]:
    """Settings that start each of `services` with TLS, mTLS among them, and the gateway's
    channels over mTLS (the gateway itself asks callers for no certificate: tokens are its
    way in)."""
    env: dict[str, str] = {}
    for name in services:
        prefix = f"ASR_{name.upper()}_"
        env.update(
            {
                f"{prefix}TLS_CERT_FILE": str(files.cert),
                f"{prefix}TLS_KEY_FILE": str(files.key),
                f"{prefix}TLS_CA_FILE": str(files.ca),
            }
        )
        if name != "gateway":
            env[f"{prefix}TLS_REQUIRE_CLIENT_CERT"] = "true"
    return env
