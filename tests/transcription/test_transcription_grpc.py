"""The transcription service on a real in-process gRPC server with the real base model."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import MODELS_DIR, channel_to

from asr.common.v1 import audio_pb2, quality_pb2
from asr.transcription.v1 import transcription_service_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.pcm import chunked
from asr_mesh.services.transcription.server import TranscriptionSettings, create_server

pytestmark = [pytest.mark.grpc, pytest.mark.models]

PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)


@pytest.fixture(scope="module")
def stub():
    settings = TranscriptionSettings(port=0, models_dir=MODELS_DIR, cpu_threads=2, device="cpu")
    handle = create_server(settings)
    channel = channel_to(handle.port)
    yield pb_grpc.TranscriptionServiceStub(channel)
    channel.close()
    handle.stop(0)


def load_pcm(path) -> bytes:
    from faster_whisper import decode_audio

    return (decode_audio(str(path)) * 32768.0).round().astype("<i2").tobytes()


def requests(pcm: bytes, **config):
    yield pb.TranscribeRequest(config=pb.TranscriptionConfig(format=PCM16K, **config))
    for piece in chunked(pcm, 64 * 1024):
        yield pb.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=piece))


def run(stub, pcm: bytes, **config):
    segments, progress, results = [], [], []
    for response in stub.Transcribe(requests(pcm, **config), timeout=120):
        kind = response.WhichOneof("payload")
        {"segment": segments, "progress": progress, "result": results}[kind].append(
            getattr(response, kind)
        )
    return segments, progress, results


def test_same_words_as_plain_faster_whisper(stub, corpus):
    from faster_whisper import WhisperModel

    plain = WhisperModel(
        str(MODELS_DIR / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    for clip in ("asr/000.flac", "asr/003.flac"):
        expected_segments, _ = plain.transcribe(
            str(corpus / clip), language="pt", beam_size=5, word_timestamps=True, vad_filter=True
        )
        expected = [w.word.strip() for s in expected_segments for w in s.words]
        segments, progress, results = run(stub, load_pcm(corpus / clip))
        got = [w.word for s in segments for w in s.words]
        assert got == expected and got, clip
        assert results[0].language_code == "pt-BR"
        assert results[0].segment_count == len(segments)
        assert progress[-1].fraction == pytest.approx(1.0)


def test_silence_gives_no_words(stub):
    segments, _, results = run(stub, np.zeros(16000 * 5, dtype="<i2").tobytes())
    assert segments == []
    assert results[0].audio_duration.seconds == 5


def test_wrong_sample_rate_is_invalid_argument(stub):
    bad = audio_pb2.PcmFormat(sample_rate_hz=44100, channels=1)
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Transcribe(iter([pb.TranscribeRequest(config=pb.TranscriptionConfig(format=bad))]))
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16000 Hz" in err.value.details()


@pytest.mark.parametrize(
    ("sent", "declared", "needle"),
    [
        (
            3200,
            6400,
            "audio stream ended after 3200 of the 6400 bytes declared in config.pcm_size_bytes",
        ),
        (6400, 3200, "audio stream is longer than the 3200 bytes declared"),
    ],
)
def test_pcm_stream_of_another_size_than_declared_is_refused(stub, sent, declared, needle):
    with pytest.raises(grpc.RpcError) as err:
        run(stub, b"\0\0" * (sent // 2), pcm_size_bytes=declared)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_pcm_stream_of_the_declared_size_is_transcribed(stub):
    segments, _, results = run(stub, b"\0\0" * 16_000, pcm_size_bytes=32_000)
    assert segments == [] and results[0].audio_duration.seconds == 1


def test_unknown_model_lists_available(stub):
    with pytest.raises(grpc.RpcError) as err:
        run(stub, b"\0\0" * 1600, model="large-v9")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "available: base" in err.value.details()


def test_list_models_marks_default_loaded(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert models["base"].is_default and models["base"].loaded
    # The weights' identity (the gateway's result cache keys on it): SHA-256 of model.bin.
    import hashlib

    from conftest import MODELS_DIR

    expected = hashlib.sha256((MODELS_DIR / "whisper-base" / "model.bin").read_bytes()).hexdigest()
    assert models["base"].weights_sha256 == expected


@pytest.mark.parametrize("name", ["silence_10s.wav", "noise_10s.wav"])
def test_silence_and_noise_give_no_words(stub, corpus, name):
    segments, _, results = run(stub, load_pcm(corpus / "media" / name))
    assert segments == [], [s.text for s in segments]
    assert results[0].audio_duration.seconds == 10


def test_options_reach_the_core(stub, corpus):
    segments, _, results = run(
        stub,
        load_pcm(corpus / "asr/000.flac"),
        profile=quality_pb2.QUALITY_PROFILE_FAST,
        temperatures=[0.0],
        hotwords="saldo conta corrente",
    )
    assert results[0].profile == "fast" and results[0].strategy == "sequential"
    assert "conta corrente" in " ".join(s.text for s in segments).lower()


def test_long_audio_in_lockstep_agrees_with_plain_and_comes_in_order(stub, corpus):
    from faster_whisper import WhisperModel

    from support.metrics import wer

    pcm = load_pcm(corpus / "long/long.flac")[: 160 * 32000]  # > 120 s of speech: 2 chunks
    segments, progress, results = run(
        stub, pcm, temperatures=[0.0], strategy=pb.LONG_FORM_STRATEGY_LOCKSTEP
    )
    assert results[0].strategy == "lockstep" and results[0].batch_size == 2
    starts = [s.start_offset.ToNanoseconds() for s in segments]
    assert starts == sorted(starts) and starts[-1] > 130 * 10**9
    plain = WhisperModel(
        str(MODELS_DIR / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    expected = " ".join(
        s.text for s in plain.transcribe(audio, language="pt", temperature=0.0, vad_filter=True)[0]
    )
    # 0.084 on an AMD EPYC machine (int8 kernels differ by CPU), under 0.08 on earlier ones:
    # there lockstep ends with "Estou testando o motor.", the start of the sentence the cut at
    # 160 s falls in (long.txt: "Estou testando o motor de transcrição ..."), which plain
    # decoding leaves out: lockstep is the one right about it.
    assert wer([expected], [" ".join(s.text for s in segments)]) < 0.10


def test_long_audio_is_batched_in_order_and_agrees_with_plain(stub, corpus):
    from faster_whisper import WhisperModel

    from support.metrics import wer

    pcm = load_pcm(corpus / "long/long.flac")[: 75 * 32000]
    segments, progress, results = run(
        stub, pcm, temperatures=[0.0], strategy=pb.LONG_FORM_STRATEGY_BATCHED
    )
    assert results[0].strategy == "batched" and results[0].batch_size >= 2
    starts = [s.start_offset.ToNanoseconds() for s in segments]
    assert starts == sorted(starts)
    assert [p.fraction for p in progress] == sorted(p.fraction for p in progress)
    plain = WhisperModel(
        str(MODELS_DIR / "whisper-base"), device="cpu", compute_type="int8", cpu_threads=2
    )
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    expected = " ".join(
        s.text for s in plain.transcribe(audio, language="pt", temperature=0.0, vad_filter=True)[0]
    )
    assert wer([expected], [" ".join(s.text for s in segments)]) < 0.15


def detect_requests(pcm: bytes, declared: int | None = None, piece: int = 32000):
    size = len(pcm) if declared is None else declared
    yield pb.DetectSpeechRequest(config=pb.DetectSpeechConfig(format=PCM16K, pcm_size_bytes=size))
    for k in range(0, len(pcm), piece):
        yield pb.DetectSpeechRequest(audio=audio_pb2.AudioChunk(pcm=pcm[k : k + piece]))


def test_detect_speech_streams_what_vad_finds_on_the_whole_file(stub, corpus):
    from faster_whisper.vad import get_speech_timestamps

    from asr_mesh.services.transcription import longform

    pcm = load_pcm(corpus / "long" / "long.flac")[: 16000 * 2 * 420]  # crosses a 300 s block
    responses = list(stub.DetectSpeech(detect_requests(pcm), timeout=120))
    streamed = [
        (r.start_offset.ToTimedelta().total_seconds(), r.end_offset.ToTimedelta().total_seconds())
        for response in responses
        for r in response.ranges
    ]

    def detect(block):
        found = get_speech_timestamps(block, longform.VadParams().options(longform.WINDOW_S))
        return [(t["start"] / 16000, t["end"] / 16000) for t in found]

    samples = np.frombuffer(pcm, dtype="<i2")
    expected = longform.speech_ranges(samples, detect)
    assert len(streamed) == len(expected) > 20
    assert all(
        abs(a - c) < 1e-6 and abs(b - d) < 1e-6 for (a, b), (c, d) in zip(streamed, expected)
    )
    assert [r.done for r in responses] == [False] * (len(responses) - 1) + [True]
    assert len(responses) >= 2  # the first block's ranges came before the audio ended
    assert responses[-1].audio_processed.ToTimedelta().total_seconds() == pytest.approx(420.0)


@pytest.mark.parametrize(
    ("declared", "piece", "needle"), [(1000, 32000, "declared"), (None, 3, "odd")]
)
def test_detect_speech_refuses_a_bad_stream(stub, declared, piece, needle):
    pcm = np.zeros(16000, dtype="<i2").tobytes()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.DetectSpeech(detect_requests(pcm, declared, piece), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
