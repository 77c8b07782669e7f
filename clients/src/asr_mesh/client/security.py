"""The client side of the mesh's TLS and bearer tokens: what a caller of a gateway needs.

- `client_channel(...)`: the SDK's channel, TLS verified against a CA file when one is given,
  with `authorization: Bearer <token>` on every call (`BearerTokenAuth`); a token is never sent
  over a plaintext channel.
- `channel_credentials(...)`: TLS credentials from PEM files (server verification, and a client
  certificate for servers that require one).
- `read_pem(...)`: a credential file's bytes, or `SecurityConfigError` with a sentence naming the
  file and what is wrong with it.

The server side (listening credentials, token files, the interceptors that check tokens) is
`asr_mesh.services.common.security`, which re-exports these names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from asr_mesh.client.errors import InvalidInput

__all__ = [
    "AUTH_METADATA_KEY",
    "BearerTokenAuth",
    "SecurityConfigError",
    "channel_credentials",
    "client_channel",
    "read_pem",
]

AUTH_METADATA_KEY = "authorization"


class SecurityConfigError(InvalidInput):
    """A TLS or token file that cannot be used; the message names the file and what is wrong."""


def read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    """The bytes of the `what` file at `path` (None when no path is given); refuses an
    unreadable or empty file with a sentence."""
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise SecurityConfigError(f"the {what} {path} is empty")
    return data


def channel_credentials(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS for a client: verify the server against `ca_file` (system roots if None); show
    `cert_file`/`key_file` to servers that require a client certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_file, "CA certificate"),
        private_key=read_pem(key_file, "TLS client key"),
        certificate_chain=read_pem(cert_file, "TLS client certificate"),
    )


class BearerTokenAuth(grpc.AuthMetadataPlugin):  # type: ignore[misc]  # grpc is untyped
    """Call credentials: `authorization: Bearer <token>` on every call (TLS channels only)."""

    def __init__(self, token: str):
        self._metadata = ((AUTH_METADATA_KEY, f"Bearer {token}"),)

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._metadata, None)


def client_channel(
    target: str,
    options: Iterable[tuple[str, Any]] = (),
    *,
    ca_cert: str | os.PathLike[str] | None = None,
    token: str | None = None,
) -> grpc.Channel:
    """The SDK's channel: TLS verified against `ca_cert` when given; `token` sent with every call.

    gRPC sends call credentials only over TLS, so a token without a CA file is refused here
    rather than sent in the clear (use a TLS gateway, or leave the token out).
    """
    if token and not ca_cert:
        raise SecurityConfigError(
            "a bearer token is sent only over TLS: pass --ca-cert (or set ASR_CA_CERT) with --token"
        )
    if not ca_cert:
        return grpc.insecure_channel(target, options=list(options))
    credentials = channel_credentials(ca_cert)
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(BearerTokenAuth(token), name="bearer")
        )
    return grpc.secure_channel(target, credentials, options=list(options))
