"""The SDK against a real in-process gRPC server that records what it was sent."""

from __future__ import annotations

import grpc
import pytest

from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.errors import InvalidInput
from asr_mesh.services.common.server import build_server
from asr_mesh.services.common.settings import ServerSettings

pytestmark = pytest.mark.grpc


class RecordingGateway(pb_grpc.GatewayServiceServicer):
    """Keeps the config and counts the bytes, then refuses the call."""

    def __init__(self):
        self.config, self.received = None, 0

    def Transcribe(self, request_iterator, context):
        self.config = next(request_iterator).config
        self.received = sum(len(r.content) for r in request_iterator)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "recorded")
        yield  # pragma: no cover - a generator, as the servicer contract has it


@pytest.fixture()
def recording_gateway():
    servicer = RecordingGateway()
    handle = build_server(
        ServerSettings(port=0),
        service_names=["asr.gateway.v1.GatewayService"],
        register=lambda s: pb_grpc.add_GatewayServiceServicer_to_server(servicer, s),
    )
    yield servicer, handle.address
    handle.stop(0)


def test_the_sdk_declares_the_upload_size_so_a_cut_off_upload_is_refused(
    recording_gateway, tmp_path
):
    servicer, address = recording_gateway
    upload = tmp_path / "talk.wav"
    upload.write_bytes(b"RIFF" * 300_000)  # several upload chunks
    with GatewayClient(address) as client, pytest.raises(InvalidInput, match="recorded"):
        client.transcribe(upload, TranscribeOptions())
    assert servicer.config.upload_size_bytes == 1_200_000 == servicer.received
    assert servicer.config.filename == "talk.wav"
