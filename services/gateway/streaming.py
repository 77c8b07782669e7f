"""The gateway's StreamingTranscribe: a bridge to the transcription service's streaming RPC.

No second pipeline: the caller's config and audio go to one transcription replica unchanged
(both APIs share `asr.common.v1` streaming types) and its events come back unchanged. The
caller cancelling cancels the downstream call; a downstream failure comes back with the
transcription service's own status and sentence. Not retried: a live session cannot be
replayed.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from asr.gateway.v1 import streaming_pb2 as gw_pb
from asr.transcription.v1 import streaming_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from services.common.errors import Cancelled, InvalidInput, from_rpc_error
from services.common.security import open_channel
from services.common.telemetry import traced_channel


class StreamBridge:
    """Forwards streaming sessions to the transcription service at `address`."""

    def __init__(self, address: str, max_message_bytes: int = 64 << 20,
                 credentials: grpc.ChannelCredentials | None = None, deadline_s: float = 3660.0):
        self._deadline_s = deadline_s  # no internal call without a deadline (services/common/limits.py)
        self._channel = open_channel(address, credentials=credentials, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.enable_retries", 0),
        ])
        self._stub = tr_grpc.TranscriptionServiceStub(traced_channel(self._channel))

    def close(self) -> None:
        self._channel.close()

    def __call__(self, request_iterator, context) -> Iterator[gw_pb.StreamingTranscribeResponse]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "config":
            raise InvalidInput("the first message of the stream must carry config", field="config")

        def forward() -> Iterator[tr_pb.StreamingTranscribeRequest]:
            yield tr_pb.StreamingTranscribeRequest(config=first.config)
            for request in request_iterator:
                if request.WhichOneof("payload") == "audio":
                    yield tr_pb.StreamingTranscribeRequest(audio=request.audio)
                else:  # the transcription service refuses it with the usual sentence
                    yield tr_pb.StreamingTranscribeRequest(config=request.config)

        remaining = context.time_remaining()
        call = self._stub.StreamingTranscribe(forward(), wait_for_ready=False, timeout=min(
            self._deadline_s, remaining if remaining is not None else self._deadline_s))
        if not context.add_callback(call.cancel):
            call.cancel()
            raise Cancelled("the caller cancelled the streaming session before it started")
        try:
            for response in call:
                yield gw_pb.StreamingTranscribeResponse(event=response.event)
        except grpc.RpcError as err:
            if not context.is_active():
                raise Cancelled("the caller cancelled the streaming session") from None
            raise from_rpc_error(err, service="transcription") from None
        finally:
            call.cancel()  # no-op once finished; frees the replica's session otherwise
