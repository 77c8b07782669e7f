"""The gateway's StreamingTranscribe bridge without a model: what it refuses and reports itself.

Streaming end to end (gateway → transcription with the real model) is in tests/mesh.
"""

from __future__ import annotations

import socket

import grpc
import pytest
from conftest import channel_to
from fakes import FakeStages

from asr.common.v1 import audio_pb2
from asr.common.v1 import streaming_pb2 as spb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import streaming_pb2 as pb
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def stub():
    settings = GatewaySettings(port=0, transcription_address=f"127.0.0.1:{free_port()}")
    handle = create_server(settings, stages_factory=FakeStages)
    channel = channel_to(handle.port)
    yield pb_grpc.GatewayServiceStub(channel)
    channel.close()
    handle.stop(0)


def test_transcription_down_is_unavailable_with_a_sentence(stub):
    requests = iter(
        [
            pb.StreamingTranscribeRequest(config=spb.StreamingConfig()),
            pb.StreamingTranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 1600)),
        ]
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingTranscribe(requests, timeout=30))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "transcription service is unavailable" in err.value.details()


def test_audio_before_config_is_invalid_argument(stub):
    requests = iter([pb.StreamingTranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0"))])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingTranscribe(requests, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message of the stream must carry config" in err.value.details()
