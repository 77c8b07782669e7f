"""Every internal call has a deadline: the gateway's streaming relay too."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from conftest import channel_to

from asr.common.v1 import streaming_pb2
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import streaming_pb2 as gw_pb
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc


def test_a_streaming_session_the_transcription_service_never_answers_ends_at_the_deadline(
    tmp_path, state_dir
):
    released = threading.Event()

    def silent(request_iterator, context):  # accepts the session, then never answers
        released.wait(30)
        return iter(())

    hung = grpc.server(futures.ThreadPoolExecutor(4))
    hung.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "asr.transcription.v1.TranscriptionService",
                {"StreamingTranscribe": grpc.stream_stream_rpc_method_handler(silent)},
            )
        ]
    )
    port = hung.add_insecure_port("127.0.0.1:0")
    hung.start()
    gateway = create_server(
        GatewaySettings(
            port=0,
            spool_dir=tmp_path,
            transcription_address=f"127.0.0.1:{port}",
            stream_deadline_s=1.0,
            cache_enabled=False,
        )
    )

    def requests():
        yield gw_pb.StreamingTranscribeRequest(
            config=streaming_pb2.StreamingConfig(language_code="pt-BR")
        )
        released.wait(30)

    started = time.monotonic()
    try:
        with channel_to(gateway.port) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(
                    pb_grpc.GatewayServiceStub(channel).StreamingTranscribe(requests(), timeout=30)
                )
    finally:
        released.set()
        gateway.stop(0)
        hung.stop(0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert time.monotonic() - started < 10
