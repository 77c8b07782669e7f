"""TLS credentials and bearer tokens for the mesh's servers and clients.

Nothing here knows a particular service. The pieces:

- `server_credentials(settings)`: the listening port's TLS (or None for plaintext), with client
  certificates required when `tls_require_client_cert` is set (internal services: only mesh
  peers, which hold a certificate of the mesh CA, may call them).
- `channel_credentials(...)` / `downstream_credentials(settings)` / `open_channel(...)`: the
  client side, for the gateway's channels to the services (mTLS with its client certificate)
  and for the SDK (server verification against a CA file).
- `TokenFile`: bearer tokens, one per line (`#` comments, an optional label after the token),
  kept only as SHA-256 digests, compared with `hmac.compare_digest`, reread when the file
  changes. `BearerTokenInterceptor` (sync server) and `AioBearerTokenInterceptor` (grpc.aio)
  refuse calls without a token (UNAUTHENTICATED) or with a wrong one (PERMISSION_DENIED), each
  with a sentence; health is always exempt, reflection when it is served. The caller's identity
  (the token's label, or `token-<8 hex digits of its digest>`) is in `caller_identity` while
  the handler runs, so queues can be fair per caller.
- `BearerTokenAuth`, `client_channel`, `channel_credentials`: the client side, which lives in the
  client distribution (`asr_mesh.client.security`) and is re-exported here.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

# The client side lives in the client distribution; re-exported here for the server's modules.
from asr_mesh.client.security import (  # noqa: F401
    AUTH_METADATA_KEY,
    BearerTokenAuth,
    SecurityConfigError,
    channel_credentials,
    client_channel,
    read_pem,
)
from asr_mesh.services.common.errors import (
    MeshError,
    PermissionDenied,
    Unauthenticated,
    to_status,
)
from asr_mesh.services.common.handlers import rewrapped

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
MISSING_TOKEN = "this gateway requires a bearer token: pass --token or set ASR_TOKEN"
WRONG_TOKEN = (
    "the bearer token is not one this gateway accepts (check --token or ASR_TOKEN; "
    "tokens are compared exactly, and a revoked one stops working at once)"
)

caller_identity: contextvars.ContextVar[str] = contextvars.ContextVar(
    "asr_caller_identity", default=""
)
"""Who is calling, while a handler of an authenticating server runs ("" when no token is needed)."""


# -- TLS ----------------------------------------------------------------------------------


def _stamp(paths: Iterable[Any]) -> tuple:
    stamps = []
    for path in paths:
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        stamps.append((info.st_mtime_ns, info.st_size, info.st_ino) if info else None)
    return tuple(stamps)


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """The listening port's credentials from `ServerSettings`, or None for plaintext.

    The files are read again, for new connections, when they change (cert-manager renews a
    mounted Secret in place): a renewed certificate needs no restart. A renewal that cannot be
    read keeps the certificate in use, with a warning.
    """
    if not settings.tls_cert_file:
        return None
    paths = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)

    def configuration() -> Any:
        cert = read_pem(settings.tls_cert_file, "TLS certificate")
        key = read_pem(settings.tls_key_file, "TLS key")
        ca = read_pem(settings.tls_ca_file, "TLS CA bundle")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    seen = {"stamp": _stamp(paths)}
    initial = configuration()

    def fetch() -> Any:
        stamp = _stamp(paths)
        if stamp == seen["stamp"]:
            return None
        seen["stamp"] = stamp
        try:
            renewed = configuration()
        except SecurityConfigError as exc:
            log.warning(
                "TLS files changed but cannot be used (%s); keeping the certificate in use",
                exc.message,
            )
            return None
        log.info("TLS certificate reloaded from %s", settings.tls_cert_file)
        return renewed

    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=bool(settings.tls_require_client_cert)
    )


def downstream_credentials(settings: Any) -> grpc.ChannelCredentials | None:
    """What a service uses to call other services: TLS when `tls_ca_file` is set, with its client
    certificate (`tls_client_cert_file`, else its server certificate) for their mTLS."""
    if not settings.tls_ca_file:
        return None
    cert = settings.tls_client_cert_file or settings.tls_cert_file
    key = settings.tls_client_key_file or settings.tls_key_file
    return channel_credentials(settings.tls_ca_file, cert, key)


def open_channel(
    target: str,
    options: Iterable[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A secure channel when `credentials` are given, else a plaintext one."""
    options = list(options)
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(
    target: str,
    options: Iterable[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Iterable[Any] | None = None,
) -> grpc.aio.Channel:
    """`open_channel` for grpc.aio (the gateway's channels once it runs on an event loop)."""
    options, interceptors = list(options), list(interceptors or ()) or None
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def bind(server: Any, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """`add_secure_port` with credentials, else `add_insecure_port` (sync or aio server)."""
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def start_health_server(health_servicer: Any, host: str, port: int) -> tuple[grpc.Server, int]:
    """A second, plaintext server with nothing but grpc.health.v1 (for Kubernetes' native gRPC
    probes, which cannot speak TLS); it shares the main server's health servicer."""
    from grpc_health.v1 import health_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the health port {host}:{port}")
    server.start()
    return server, bound


# -- tokens -------------------------------------------------------------------------------


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def default_label(digest: bytes) -> str:
    return f"token-{digest.hex()[:8]}"


class TokenFile:
    """The accepted tokens, as digests, from `path`; reread when the file's mtime/size changes.

    Format: one token per line; blank lines and lines starting with `#` are ignored; text after
    the token (whitespace-separated) is the caller's label, used as its identity. A file that
    becomes unreadable keeps the last good set (with a warning); one that never was refuses to
    start.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | str | None = None
        self._entries: list[tuple[bytes, str]] = []
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            info = self.path.stat()
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == self._stamp:
                return
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            if strict:
                raise SecurityConfigError(
                    f"cannot read the token file {self.path}: {exc}"
                ) from None
            if self._stamp != "unreadable":  # once per outage, not once per call
                log.warning(
                    "token file %s unreadable (%s); keeping the %d tokens read before",
                    self.path,
                    exc,
                    len(self._entries),
                )
                self._stamp = "unreadable"
            return
        entries = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            token, *rest = line.split(None, 1)
            label = (rest[0] if rest else "").split("#", 1)[0].strip()
            digest = token_digest(token)
            entries.append((digest, label or default_label(digest)))
        if not entries and strict:
            raise SecurityConfigError(f"the token file {self.path} holds no token (one per line)")
        if self._stamp is not None:
            log.info("token file %s reread: %d tokens", self.path, len(entries))
        self._entries, self._stamp = entries, stamp

    def identify(self, token: str) -> str | None:
        """The caller's label when `token` is accepted, else None (every entry is compared)."""
        with self._lock:
            self._load(strict=False)
            entries = self._entries
        digest = token_digest(token)
        found = None
        for known, label in entries:
            if hmac.compare_digest(known, digest) and found is None:
                found = label
        return found

    def __len__(self) -> int:
        return len(self._entries)


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header; None when there is none."""
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key.lower() == AUTH_METADATA_KEY:
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class Authenticator:
    """The decision both interceptors share: (identity, None) or ("", error)."""

    def __init__(self, tokens: TokenFile, reflection_enabled: bool = False):
        self._tokens = tokens
        exempt = [HEALTH_PREFIX] + (list(REFLECTION_PREFIXES) if reflection_enabled else [])
        self._exempt = tuple(exempt)

    def check(self, method: str, metadata: Iterable[Any] | None) -> tuple[str, MeshError | None]:
        if method.startswith(self._exempt):
            return "", None
        token = bearer_token(metadata)
        if token is None:
            return "", Unauthenticated(MISSING_TOKEN)
        if not token:
            return "", Unauthenticated(
                "the authorization header must read 'Bearer <token>'; pass --token or set ASR_TOKEN"
            )
        identity = self._tokens.identify(token)
        if identity is None:
            return "", PermissionDenied(WRONG_TOKEN)
        return identity, None


def _status(error: MeshError) -> grpc.Status:
    return rpc_status.to_status(to_status(error))


def _same_kind(handler: Any, behavior_for: Callable[[str], Callable]) -> Any:
    """A method handler of `handler`'s streaming kind whose behavior is `behavior_for(kind)`."""
    return rewrapped(handler, lambda behavior, kind: behavior_for(kind))


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Sync servers: refuse calls without an accepted token; `caller_identity` set for the handler.

    The identity is set around every step of the handler (each `next()` of a response stream),
    on the thread that runs it, and copied into threads the handler starts with
    `contextvars.copy_context()`.
    """

    def __init__(self, tokens: TokenFile, reflection_enabled: bool = False):
        self._auth = Authenticator(tokens, reflection_enabled)

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        identity, error = self._auth.check(
            handler_call_details.method, handler_call_details.invocation_metadata
        )
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if error is not None:
            status = _status(error)

            def refuse_for(_kind: str) -> Callable:
                def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
                    context.abort_with_status(status)

                return refuse

            return _same_kind(handler, refuse_for)
        if not identity:
            return handler

        def with_identity(kind: str) -> Callable:
            behavior = getattr(handler, kind)
            if not handler.response_streaming:

                def unary(request: Any, context: grpc.ServicerContext) -> Any:
                    token = caller_identity.set(identity)
                    try:
                        return behavior(request, context)
                    finally:
                        caller_identity.reset(token)

                return unary

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token = caller_identity.set(identity)
                try:
                    responses = iter(behavior(request, context))
                finally:
                    caller_identity.reset(token)
                try:
                    while True:
                        token = caller_identity.set(identity)
                        try:
                            response = next(responses)
                        except StopIteration:
                            return
                        finally:
                            caller_identity.reset(token)
                        yield response
                finally:
                    close = getattr(responses, "close", None)
                    if close:
                        close()

            return streaming

        return _same_kind(handler, with_identity)


class AioBearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio servers: the same decisions. Each RPC runs in its own task, whose context the
    interceptor shares, so `caller_identity` set here is what the handler sees."""

    def __init__(self, tokens: TokenFile, reflection_enabled: bool = False):
        self._auth = Authenticator(tokens, reflection_enabled)

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        identity, error = self._auth.check(
            handler_call_details.method, handler_call_details.invocation_metadata
        )
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if error is None:
            if identity:
                caller_identity.set(identity)
            return handler
        status = _status(error)

        def refuse_for(kind: str) -> Callable:
            if kind.endswith("_stream"):  # response-streaming handlers must be async generators

                async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> Any:
                    await context.abort(status.code, status.details, status.trailing_metadata)
                    yield  # never reached: abort raises; the yield makes this an async generator

                return refuse_stream

            async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(status.code, status.details, status.trailing_metadata)

            return refuse

        return _same_kind(handler, refuse_for)


def server_interceptors(settings: Any) -> list[grpc.ServerInterceptor]:
    """The sync interceptors `settings` asks for (the token check when auth_token_file is set)."""
    if not settings.auth_token_file:
        return []
    return [
        BearerTokenInterceptor(TokenFile(settings.auth_token_file), settings.reflection_enabled)
    ]


def aio_server_interceptors(settings: Any) -> list[grpc.aio.ServerInterceptor]:
    """The grpc.aio counterpart of `server_interceptors`."""
    if not settings.auth_token_file:
        return []
    return [
        AioBearerTokenInterceptor(TokenFile(settings.auth_token_file), settings.reflection_enabled)
    ]
