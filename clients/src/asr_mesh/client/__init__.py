"""asr-mesh-client: call a running asr-mesh gateway from Python or from the `asr` command.

    from asr_mesh.client import GatewayClient, TranscribeOptions

    with GatewayClient("localhost:50051") as client:
        result = client.transcribe(Path("meeting.flac"), TranscribeOptions(formats=("srt",)))
    print(result.documents[0].content)

Failures are the typed exceptions below (`InvalidAudio`, `Overloaded`, ...), each with the
service's own sentence in `.message`. The names listed in `__all__` are the public surface
(tests/clients/test_client_surface.py fails if one disappears). They are loaded on first use, so
`import asr_mesh.client.errors` (which the server's cores do) pulls in neither gRPC nor the SDK.

Modules: `sdk` (GatewayClient and its options), `errors` (the exceptions, no gRPC), `status`
(the one category ↔ gRPC status table, `from_rpc_error`), `security` (TLS and bearer-token
channels), `tracing` (trace-context propagation), `paths` (a local mesh's state directory),
`cli` (the `asr` command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "GatewayClient": "sdk",
    "GatewayUnreachable": "sdk",
    "StreamOptions": "sdk",
    "TranscribeOptions": "sdk",
    "Transcription": "sdk",
    "FORMATS": "sdk",
    "Category": "errors",
    "MeshError": "errors",
    "InvalidInput": "errors",
    "InvalidAudio": "errors",
    "LimitExceeded": "errors",
    "UnknownModel": "errors",
    "Overloaded": "errors",
    "DependencyUnavailable": "errors",
    "Draining": "errors",
    "DependencyFailed": "errors",
    "DeadlineExceeded": "errors",
    "UploadStalled": "errors",
    "Cancelled": "errors",
    "InternalError": "errors",
    "NotFound": "errors",
    "FailedPrecondition": "errors",
    "Unauthenticated": "errors",
    "PermissionDenied": "errors",
    "from_rpc_error": "status",
    "SecurityConfigError": "security",
}

__all__ = [
    "Cancelled",
    "Category",
    "DeadlineExceeded",
    "DependencyFailed",
    "DependencyUnavailable",
    "Draining",
    "FORMATS",
    "FailedPrecondition",
    "GatewayClient",
    "GatewayUnreachable",
    "InternalError",
    "InvalidAudio",
    "InvalidInput",
    "LimitExceeded",
    "MeshError",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "SecurityConfigError",
    "StreamOptions",
    "TranscribeOptions",
    "Transcription",
    "Unauthenticated",
    "UnknownModel",
    "UploadStalled",
    "__version__",
    "from_rpc_error",
]

if TYPE_CHECKING:  # what the lazy loading below resolves to, for type checkers and IDEs
    from asr_mesh.client.errors import (
        Cancelled,
        Category,
        DeadlineExceeded,
        DependencyFailed,
        DependencyUnavailable,
        Draining,
        FailedPrecondition,
        InternalError,
        InvalidAudio,
        InvalidInput,
        LimitExceeded,
        MeshError,
        NotFound,
        Overloaded,
        PermissionDenied,
        Unauthenticated,
        UnknownModel,
        UploadStalled,
    )
    from asr_mesh.client.sdk import (
        FORMATS,
        GatewayClient,
        GatewayUnreachable,
        StreamOptions,
        TranscribeOptions,
        Transcription,
    )
    from asr_mesh.client.security import SecurityConfigError
    from asr_mesh.client.status import from_rpc_error


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
