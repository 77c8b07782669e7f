"""Bounded cost per request: every cap refuses with INVALID_ARGUMENT naming the cap and its
limit, on the gateway and directly on the internal services (same interceptor, same caps)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import MODELS_DIR, channel_to
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from security_helpers import FakeStages

from asr.common.v1 import audio_pb2, streaming_pb2
from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr.transcription.v1 import streaming_pb2 as tr_streaming_pb2
from asr.transcription.v1 import transcription_service_pb2 as tr_pb
from asr.transcription.v1 import transcription_service_pb2_grpc as tr_grpc
from asr_mesh.services.common.errors import LimitExceeded
from asr_mesh.services.common.limits import AioCapsInterceptor, RequestCaps
from asr_mesh.services.gateway.server import GatewaySettings
from asr_mesh.services.gateway.server import create_server as create_gateway
from asr_mesh.services.merge.server import MergeSettings
from asr_mesh.services.merge.server import create_server as create_merge
from asr_mesh.services.transcription.server import TranscriptionSettings
from asr_mesh.services.transcription.server import create_server as create_transcription

pytestmark = pytest.mark.grpc

PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)
SPEAKERS = {f"SPEAKER_{n:02d}": f"P{n}" for n in range(21)}

# (options, cap named, limit) at the default caps; one over each limit.
OVER = [
    ({"beam_size": 11}, "beam_size", 10),
    ({"best_of": 11}, "best_of", 10),
    ({"temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]}, "temperatures", 6),
    ({"initial_prompt": "á" * 1001}, "prompt_chars", 1000),
    ({"hotwords": " ".join(["Pix"] * 101)}, "hotword_items", 100),
    ({"hotwords": "Itaú" * 501}, "hotwords_chars", 2000),
]
SPEAKER_OVER = [
    ({"num_speakers": 21}, "speakers", 20),
    ({"min_speakers": 21}, "speakers", 20),
    ({"max_speakers": 21}, "speakers", 20),
    ({"speaker_names": SPEAKERS}, "speakers", 20),
]
AT_LIMIT = {
    "beam_size": 10,
    "best_of": 10,
    "temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    "initial_prompt": "x" * 1000,
    "hotwords": " ".join(["Pix"] * 100),
}


def error_info(err: grpc.RpcError) -> dict[str, str]:
    for detail in rpc_status.from_call(err).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return {"reason": info.reason, **info.metadata}
    return {}


def assert_capped(err: grpc.RpcError, cap: str, limit: int, prefix: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert (
        f"above the cap of {limit}" in err.details()
        and f"({prefix}CAP_{cap.upper()})" in err.details()
    )
    assert error_info(err) == {
        "reason": "LIMIT_EXCEEDED",
        "cap": cap,
        "limit": str(limit),
        "setting": f"{prefix}CAP_{cap.upper()}",
    }


def test_caps_are_checked_on_the_config_inside_a_request():
    caps = RequestCaps()
    caps.check(pb.TranscribeRequest(config=pb.TranscribeConfig(**AT_LIMIT)))  # at the limit: fine
    caps.check(pb.TranscribeRequest(content=b"x" * 10))  # content is not capped
    with pytest.raises(
        LimitExceeded, match=r"beam_size 11 is above the cap of 10 on beam_size \(ASR_CAP_BEAM"
    ):
        caps.check(pb.TranscribeRequest(config=pb.TranscribeConfig(beam_size=11)))
    with pytest.raises(LimitExceeded) as err:
        caps.check(jobs_pb2.SubmitJobRequest(config=pb.TranscribeConfig(hotwords="a " * 101)))
    assert err.value.field == "config.hotwords" and err.value.metadata["cap"] == "hotword_items"


@pytest.fixture()
def gateway(tmp_path, state_dir):
    handle = create_gateway(GatewaySettings(port=0, spool_dir=tmp_path), stages_factory=FakeStages)
    channel = channel_to(handle.port)
    yield pb_grpc.GatewayServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel)
    channel.close()
    handle.stop(0)


def upload(config: pb.TranscribeConfig, request_type=pb.TranscribeRequest):
    yield request_type(config=config)
    yield request_type(content=b"RIFF" * 10)


@pytest.mark.parametrize(("options", "cap", "limit"), OVER + SPEAKER_OVER)
def test_each_cap_is_invalid_argument_on_the_gateway(gateway, options, cap, limit):
    stub, jobs = gateway
    diarize = cap == "speakers"
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Transcribe(
                upload(pb.TranscribeConfig(filename="x.wav", diarize=diarize, **options)),
                timeout=10,
            )
        )
    assert_capped(err.value, cap, limit, "ASR_GATEWAY_")
    with pytest.raises(grpc.RpcError) as err:  # jobs take the same config: the same caps
        jobs.SubmitJob(
            upload(
                pb.TranscribeConfig(filename="x.wav", diarize=diarize, **options),
                jobs_pb2.SubmitJobRequest,
            ),
            timeout=10,
        )
    assert_capped(err.value, cap, limit, "ASR_GATEWAY_")


def test_within_the_caps_the_gateway_transcribes(gateway):
    stub, _ = gateway
    responses = list(
        stub.Transcribe(upload(pb.TranscribeConfig(filename="x.wav", **AT_LIMIT)), timeout=10)
    )
    assert responses[-1].WhichOneof("payload") == "result"


def test_caps_come_from_the_settings(tmp_path, state_dir):
    handle = create_gateway(
        GatewaySettings(port=0, spool_dir=tmp_path, cap_beam_size=3), stages_factory=FakeStages
    )
    try:
        with channel_to(handle.port) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(
                    pb_grpc.GatewayServiceStub(channel).Transcribe(
                        upload(pb.TranscribeConfig(filename="x.wav", beam_size=4)), timeout=10
                    )
                )
    finally:
        handle.stop(0)
    assert_capped(err.value, "beam_size", 3, "ASR_GATEWAY_")


@pytest.fixture(scope="module")
def transcription():
    """The real transcription service (model not loaded: caps refuse before any work)."""
    handle = create_transcription(
        TranscriptionSettings(
            port=0, models_dir=MODELS_DIR, preload=False, cpu_threads=1, device="cpu"
        )
    )
    channel = channel_to(handle.port)
    yield tr_grpc.TranscriptionServiceStub(channel)
    channel.close()
    handle.stop(0)


def test_the_issues_direct_call_to_transcription_is_refused_at_once(transcription):
    """beam 20, best_of 20, 11 temperatures and a 5,000-character prompt held a worker 86 s."""

    def requests():
        yield tr_pb.TranscribeRequest(
            config=tr_pb.TranscriptionConfig(
                format=PCM16K,
                beam_size=20,
                best_of=20,
                temperatures=[0.1 * n for n in range(11)],
                initial_prompt="p" * 5000,
            )
        )
        yield tr_pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 16000 * 7))

    with pytest.raises(grpc.RpcError) as err:
        list(transcription.Transcribe(requests(), timeout=10))
    assert_capped(err.value, "beam_size", 10, "ASR_TRANSCRIPTION_")


@pytest.mark.parametrize(("options", "cap", "limit"), OVER)
def test_each_cap_is_invalid_argument_directly_on_transcription(transcription, options, cap, limit):
    def requests():
        yield tr_pb.TranscribeRequest(config=tr_pb.TranscriptionConfig(format=PCM16K, **options))
        yield tr_pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0" * 1600))

    with pytest.raises(grpc.RpcError) as err:
        list(transcription.Transcribe(requests(), timeout=10))
    assert_capped(err.value, cap, limit, "ASR_TRANSCRIPTION_")


def test_streaming_prompt_is_capped_too(transcription):
    def requests():
        yield tr_streaming_pb2.StreamingTranscribeRequest(
            config=streaming_pb2.StreamingConfig(initial_prompt="p" * 1001)
        )

    with pytest.raises(grpc.RpcError) as err:
        list(transcription.StreamingTranscribe(requests(), timeout=10))
    assert_capped(err.value, "prompt_chars", 1000, "ASR_TRANSCRIPTION_")


def test_speaker_names_are_capped_directly_on_merge(state_dir):
    handle = create_merge(MergeSettings(port=0, max_workers=2))
    try:
        with channel_to(handle.port) as channel:
            with pytest.raises(grpc.RpcError) as err:
                merge_grpc.MergeServiceStub(channel).Merge(
                    merge_pb.MergeRequest(language_code="pt-BR", speaker_names=SPEAKERS), timeout=5
                )
    finally:
        handle.stop(0)
    assert_capped(err.value, "speakers", 20, "ASR_MERGE_")


def test_the_aio_caps_interceptor_refuses_the_same_way():
    async def count(requests, context):
        n = 0
        async for _ in requests:
            n += 1
        return str(n).encode()

    async def main() -> dict[str, str]:
        caps = RequestCaps(setting_prefix="ASR_GATEWAY_")
        server = grpc.aio.server(interceptors=[AioCapsInterceptor(caps)])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "asr.test.v1.Upload",
                    {
                        "Count": grpc.stream_unary_rpc_method_handler(
                            count, request_deserializer=pb.TranscribeRequest.FromString
                        )
                    },
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_unary(
                    "/asr.test.v1.Upload/Count",
                    request_serializer=pb.TranscribeRequest.SerializeToString,
                )
                for name, beam in (("ok", 10), ("over", 11)):
                    try:
                        seen[name] = (
                            await call(upload(pb.TranscribeConfig(beam_size=beam)), timeout=5)
                        ).decode()
                    except grpc.aio.AioRpcError as err:
                        seen[name] = f"{err.code().name}: {err.details()}"
        finally:
            await server.stop(0)
        return seen

    seen = asyncio.run(main())
    assert seen["ok"] == "2"
    assert seen["over"].startswith(
        "INVALID_ARGUMENT: beam_size 11 is above the cap of 10 on beam_size "
        "(ASR_GATEWAY_CAP_BEAM_SIZE)"
    )
