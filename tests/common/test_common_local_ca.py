"""The local CA of `asr serve --tls`: a CA key that cannot sign is replaced, not used."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from asr_mesh.services.common.local_ca import ensure_local_tls


def test_a_ca_key_that_cannot_sign_is_replaced_with_a_new_ca(tmp_path):
    first = ensure_local_tls(tmp_path / "tls")
    # Someone's X25519 key where the CA key was, and the mesh certificate gone: it must be made
    # again, and an X25519 key cannot sign it.
    foreign = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "tls" / "ca.key").write_bytes(foreign)
    old_ca = first.ca.read_bytes()
    first.cert.unlink()

    again = ensure_local_tls(tmp_path / "tls")

    assert again.ca.read_bytes() != old_ca
    assert (tmp_path / "tls" / "ca.key").read_bytes() != foreign
    ca = x509.load_pem_x509_certificate(again.ca.read_bytes())
    x509.load_pem_x509_certificate(again.cert.read_bytes()).verify_directly_issued_by(ca)
