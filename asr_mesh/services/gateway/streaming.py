"""The gateway's StreamingTranscribe: a bridge to the transcription service's streaming RPC.

No second pipeline: the caller's config and audio go to one transcription replica unchanged
(both APIs share `asr.common.v1` streaming types; only a config's shared
`transcription` options are folded into the fields the service reads) and its events come back
unchanged. The
caller cancelling cancels the downstream call; a downstream failure comes back with the
transcription service's own status and sentence. Not retried: a live session cannot be
replayed.

Async end to end (a grpc.aio channel on the gateway's event loop): a live session that is
silent for minutes costs two coroutines, no thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from asr.gateway.v1 import streaming_pb2 as gw_pb
from asr.transcription.v1 import streaming_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common.aio import run_on_loop, shared_loop
from asr_mesh.services.common.errors import Cancelled, InvalidInput, from_rpc_error
from asr_mesh.services.common.options import streaming_config
from asr_mesh.services.common.security import open_aio_channel
from asr_mesh.services.common.telemetry import aio_traced_channel_interceptors


class StreamBridge:
    """Forwards streaming sessions to the transcription service at `address`."""

    def __init__(
        self,
        address: str,
        max_message_bytes: int = 64 << 20,
        credentials: grpc.ChannelCredentials | None = None,
        deadline_s: float = 3660.0,
    ):
        self._address = address
        self._credentials = credentials
        self._deadline_s = (
            deadline_s  # no internal call without a deadline (asr_mesh/services/common/limits.py)
        )
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.enable_retries", 0),
        ]
        self._channel: grpc.aio.Channel | None = None
        self._stub = None

    def _ensure(self) -> tr_grpc.TranscriptionServiceStub:
        if self._stub is None:  # made on the loop that will use it
            self._channel = open_aio_channel(
                self._address,
                self._options,
                credentials=self._credentials,
                interceptors=aio_traced_channel_interceptors(),
            )
            self._stub = tr_grpc.TranscriptionServiceStub(self._channel)
        return self._stub

    def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is shared_loop():
                running.create_task(channel.close())
            else:
                run_on_loop(channel.close(), timeout=5)

    async def __call__(
        self, request_iterator, context
    ) -> AsyncIterator[gw_pb.StreamingTranscribeResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")

        # The shared options (config.transcription) folded into the fields the service reads.
        config = streaming_config(first.config)

        async def forward() -> AsyncIterator[tr_pb.StreamingTranscribeRequest]:
            yield tr_pb.StreamingTranscribeRequest(config=config)
            async for request in request_iterator:
                if request.WhichOneof("payload") == "audio":
                    yield tr_pb.StreamingTranscribeRequest(audio=request.audio)
                else:  # the transcription service refuses it with the usual sentence
                    yield tr_pb.StreamingTranscribeRequest(config=request.config)

        remaining = context.time_remaining()
        call = self._ensure().StreamingTranscribe(
            forward(),
            wait_for_ready=False,
            timeout=min(self._deadline_s, remaining if remaining is not None else self._deadline_s),
        )
        try:
            async for response in call:
                yield gw_pb.StreamingTranscribeResponse(event=response.event)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and context.cancelled():
                raise Cancelled("the caller cancelled the streaming session") from None
            raise from_rpc_error(err, service="transcription") from None
        finally:
            call.cancel()  # no-op once finished; frees the replica's session otherwise
