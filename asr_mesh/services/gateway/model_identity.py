"""Which model a request will run on, as the result cache needs it: (resolved name, weights
SHA-256).

Asked of the transcription service (`ListModels`, which reports each model's weights hash) and
remembered for `ttl_s`, so a cache look-up costs no call in the common case. When the service
cannot be asked, the identity is unknown and the request is simply not cached.
"""

from __future__ import annotations

import threading
import time

from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc


class TranscriptionModelIdentity:
    def __init__(
        self, stub: tr_grpc.TranscriptionServiceStub, ttl_s: float = 60.0, timeout_s: float = 5.0
    ):
        self._stub = stub
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._models: dict[str, tuple[str, str]] = {}
        self._fetched = float("-inf")

    def __call__(self, requested: str) -> tuple[str, str] | None:
        with self._lock:
            if time.monotonic() - self._fetched > self._ttl_s:
                reply = self._stub.ListModels(tr_pb.ListModelsRequest(), timeout=self._timeout_s)
                models: dict[str, tuple[str, str]] = {}
                for info in reply.models:
                    models[info.name] = (info.name, info.weights_sha256)
                    if info.is_default:
                        models.setdefault("", (info.name, info.weights_sha256))
                self._models, self._fetched = models, time.monotonic()
            identity = self._models.get(requested)
        # Aliases ("base" and "whisper-base") share weights: key on the hash, not the spelling.
        return None if identity is None or not identity[1] else ("", identity[1])
