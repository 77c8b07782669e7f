"""StreamingTranscribe on a real in-process transcription server with the real base model."""

from __future__ import annotations

import contextlib
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import MODELS_DIR, channel_to
from google.protobuf import duration_pb2

from asr.common.v1 import audio_pb2
from asr.common.v1 import streaming_pb2 as spb
from asr.transcription.v1 import streaming_pb2 as pb
from asr.transcription.v1 import transcription_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.domain import word_key
from asr_mesh.services.common.errors import Overloaded, from_rpc_error
from asr_mesh.services.transcription.server import (
    TranscriptionSettings,
    build_transcriber,
    create_server,
)
from asr_mesh.services.transcription.stream_servicer import SESSIONS_ACTIVE
from support.metrics import wer

pytestmark = [pytest.mark.grpc, pytest.mark.models]

PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=16000, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)
CHUNK = 3200  # 100 ms


@contextlib.contextmanager
def serving(**settings_fields):
    """A transcription server on a free port (CPU, 2 threads, base) with these settings:
    (settings, transcriber, stub); stopped on exit."""
    settings = TranscriptionSettings(
        port=0, models_dir=MODELS_DIR, cpu_threads=2, device="cpu", **settings_fields
    )
    transcriber = build_transcriber(settings)
    handle = create_server(settings, transcriber)
    channel = channel_to(handle.port)
    try:
        yield settings, transcriber, pb_grpc.TranscriptionServiceStub(channel)
    finally:
        channel.close()
        handle.stop(0)


@pytest.fixture(scope="module")
def stub():
    with serving(max_streams=2, stream_idle_timeout_s=3.0) as (_, _, stub):
        yield stub


def load_pcm(path) -> bytes:
    from faster_whisper import decode_audio

    return (decode_audio(str(path)) * 32768.0).round().astype("<i2").tobytes()


def requests(pcm: bytes, *, speed: float = 0.0, pause_after: float | None = None, **config):
    """Config, then 100 ms chunks; `speed` × real time (0 = as fast as possible)."""
    config.setdefault("interim_results", True)
    yield pb.StreamingTranscribeRequest(config=spb.StreamingConfig(format=PCM16K, **config))
    for k, offset in enumerate(range(0, len(pcm), CHUNK * 2)):
        if pause_after is not None and k * 0.1 >= pause_after:
            time.sleep(3600)  # a caller that stops sending without closing
        yield pb.StreamingTranscribeRequest(
            audio=audio_pb2.AudioChunk(pcm=pcm[offset : offset + CHUNK * 2])
        )
        if speed:
            time.sleep(0.1 / speed)


def events(stub, pcm: bytes, **kw) -> list[spb.StreamingEvent]:
    return [r.event for r in stub.StreamingTranscribe(requests(pcm, **kw), timeout=300)]


def kinds(evs) -> list[str]:
    return [e.WhichOneof("event") for e in evs]


def test_a_conversation_gives_interims_then_stable_finals(stub, corpus, manifest):
    conv = manifest["dia"][0]
    evs = events(stub, load_pcm(corpus / conv["audio"]), speed=3.0)
    k = kinds(evs)
    assert k[-1] == "summary" and k.count("summary") == 1
    assert "interim" in k and "final" in k
    assert k.index("interim") < k.index("final")
    finals = [e.final.segment for e in evs if e.WhichOneof("event") == "final"]
    assert [f.id for f in finals] == list(range(len(finals)))
    for a, b in zip(finals, finals[1:]):  # in time order, never overlapping
        assert a.words[-1].end_offset.ToTimedelta() <= b.words[0].end_offset.ToTimedelta()
    text = " ".join(f.text for f in finals)
    assert wer([conv["text"]], [text]) < 0.35, text
    speech = [e.speech.kind for e in evs if e.WhichOneof("event") == "speech"]
    assert (
        speech[0] == spb.SpeechEvent.KIND_SPEECH_BEGIN
        and speech[-1] == spb.SpeechEvent.KIND_SPEECH_END
    )
    assert (
        speech.count(spb.SpeechEvent.KIND_SPEECH_END) >= 2
    )  # a pause between turns ends an utterance
    summary = evs[-1].summary
    assert summary.final_count == len(finals) and "base" in summary.model
    assert summary.latency_profile == "balanced"
    assert abs(summary.audio_duration.ToTimedelta().total_seconds() - 30.2) < 0.2
    # Each final's words carry timestamps and probabilities within the audio.
    words = [w for f in finals for w in f.words]
    assert all(0 <= w.probability <= 1 for w in words)
    assert all(w.end_offset.ToTimedelta().total_seconds() <= 30.3 for w in words)


def test_the_accurate_profile_hears_earlier_speech_and_repeats_no_word(stub, corpus, manifest):
    """`accurate` decodes a closing phrase after the session's earlier speech and keeps only
    the phrase's words: nothing heard again in that context comes back as a final."""
    conv = manifest["dia"][0]
    evs = accurate_events(stub, corpus / conv["audio"])
    assert evs[-1].summary.latency_profile == "accurate"
    finals = [e.final.segment for e in evs if e.WhichOneof("event") == "final"]
    assert len(finals) >= 3
    assert_in_order_and_no_word_twice(finals)
    text = " ".join(f.text for f in finals)
    assert wer([conv["text"]], [text]) < 0.35, text


def accurate_events(stub, path) -> list[spb.StreamingEvent]:
    """`accurate`'s events for the file at `path`, streamed at twice real time."""
    return events(stub, load_pcm(path), speed=2.0, latency_profile=spb.LATENCY_PROFILE_ACCURATE)


def assert_in_order_and_no_word_twice(finals) -> None:
    """Finals in time order, never overlapping, and the words of the context a closing decode
    heard not committed again at the next phrase's start."""
    for a, b in zip(finals, finals[1:]):
        assert a.words[-1].end_offset.ToTimedelta() <= b.words[0].end_offset.ToTimedelta()
        tail = [word_key(w.word) for w in a.words[-2:]]
        assert [word_key(w.word) for w in b.words[: len(tail)]] != tail, (a.text, b.text)


@pytest.mark.parametrize("name", ["silence_10s.wav", "noise_10s.wav"])
def test_silence_and_noise_give_no_finals(stub, corpus, name):
    evs = events(stub, load_pcm(corpus / "media" / name))
    assert "final" not in kinds(evs), [e.final.segment.text for e in evs if e.HasField("final")]
    assert evs[-1].summary.final_count == 0


def test_a_caller_that_stops_sending_is_timed_out(stub, corpus):
    pcm = load_pcm(corpus / "asr/000.flac")
    with pytest.raises(grpc.RpcError) as err:
        events(stub, pcm, pause_after=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no audio arrived for 3 s" in err.value.details()


def _wait_for_sessions(n: int, within: float = 10.0) -> None:
    gauge = SESSIONS_ACTIVE.labels("transcription")
    deadline = time.monotonic() + within
    while gauge._value.get() != n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gauge._value.get() == n


def test_two_sessions_at_once_and_a_third_is_refused_with_retry_info(stub, corpus, manifest):
    clips = [manifest["asr"][0], manifest["asr"][1]]
    results: dict[int, list] = {}

    def stream(i: int) -> None:
        results[i] = events(stub, load_pcm(corpus / clips[i]["audio"]), speed=2.0)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    _wait_for_sessions(2)
    with pytest.raises(grpc.RpcError) as err:
        events(stub, load_pcm(corpus / clips[0]["audio"]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refusal = from_rpc_error(err.value)
    assert isinstance(refusal, Overloaded) and refusal.retry_after_s > 0
    assert "maximum of 2 streaming sessions" in refusal.message
    for t in threads:
        t.join(120)
    for i, clip in enumerate(clips):
        text = " ".join(e.final.segment.text for e in results[i] if e.HasField("final"))
        # Five-second clips decoded without context: whisper base misses more than on a dialogue.
        assert wer([clip["text"]], [text]) < 0.6, text
    _wait_for_sessions(0)


def test_cancel_mid_stream_frees_the_session(stub, corpus, manifest):
    pcm = load_pcm(corpus / manifest["dia"][0]["audio"])
    call = stub.StreamingTranscribe(requests(pcm, speed=2.0), timeout=300)
    for response in call:
        if response.event.HasField("interim") or response.event.HasField("final"):
            break
    _wait_for_sessions(1)
    call.cancel()
    # Freed once the decode step in progress returns (seconds; much longer on a loaded machine).
    _wait_for_sessions(0, within=120)
    # The slot is usable again straight away.
    assert kinds(events(stub, load_pcm(corpus / "media/silence_10s.wav")))[-1] == "summary"


def test_max_session_length_ends_with_deadline_exceeded(stub, corpus):
    pcm = load_pcm(corpus / "asr/000.flac")
    with pytest.raises(grpc.RpcError) as err:
        events(stub, pcm, max_session_duration=duration_pb2.Duration(seconds=2))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "maximum length of 2 s" in err.value.details()


def test_wrong_format_and_oversized_chunks_are_refused(stub):
    bad = spb.StreamingConfig(format=audio_pb2.PcmFormat(sample_rate_hz=8000))
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.StreamingTranscribe(iter([pb.StreamingTranscribeRequest(config=bad)]), timeout=30)
        )
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "16000 Hz" in err.value.details()
    )

    def big():
        yield pb.StreamingTranscribeRequest(config=spb.StreamingConfig(format=PCM16K))
        yield pb.StreamingTranscribeRequest(
            audio=audio_pb2.AudioChunk(pcm=np.zeros(32000, "<i2").tobytes())
        )

    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamingTranscribe(big(), timeout=30))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "at most 1 s" in err.value.details()
    )


def test_the_shared_transcription_options_are_honoured_by_the_service_itself():
    """StreamingConfig.transcription (asr.common.v1.TranscriptionOptions) replaces the flat
    language/model/prompt fields here too, not only when the gateway folds it."""
    from asr.common.v1 import options_pb2
    from asr_mesh.services.common.errors import InvalidInput
    from asr_mesh.services.transcription.stream_servicer import session_options

    config = spb.StreamingConfig(
        language_code="pt-BR",
        initial_prompt="flat",
        transcription=options_pb2.TranscriptionOptions(
            language_code="en-US", model="base", initial_prompt="shared"
        ),
    )
    options = session_options(config)
    assert (options.language, options.model, options.initial_prompt) == ("en", "base", "shared")
    assert session_options(spb.StreamingConfig(language_code="pt-BR")).language == "pt"
    refused = spb.StreamingConfig(transcription=options_pb2.TranscriptionOptions(beam_size=5))
    with pytest.raises(InvalidInput, match="batch transcription only"):
        session_options(refused)


def test_accurate_runs_its_beam_searches_on_a_one_thread_instance_loaded_on_first_use(
    corpus, manifest
):
    """On CPU `accurate`'s beam-5 closing decodes run on a second instance of the model
    (`stream_beam_threads`, workers for each session's decodes); `balanced` (greedy) never
    loads it."""
    with serving(max_streams=3) as (settings, transcriber, stub):
        conv = manifest["dia"][0]
        pcm = load_pcm(corpus / conv["audio"])[: 12 * 16000 * 2]
        registry = transcriber.registry
        balanced = events(stub, pcm)
        assert registry.loaded_count() == 1
        accurate = events(stub, pcm, latency_profile=spb.LATENCY_PROFILE_ACCURATE)
        assert registry.loaded_count() == 2
        beams = registry.get("", "cpu", transcriber.compute_type, settings.stream_beam_threads)
        # accurate runs two closing decodes at once (`second_context_s`): two workers a session
        assert beams.model.num_workers == 2 * settings.max_streams
        for evs in (balanced, accurate):
            text = " ".join(e.final.segment.text for e in evs if e.WhichOneof("event") == "final")
            assert len(text.split()) >= 10, text


def test_a_replica_with_rover_contexts_combines_accurate_s_closing_decodes(
    corpus, manifest, monkeypatch
):
    """`stream_rover_contexts`: `accurate`'s closing decodes also run after 0 and 2 s of
    context, all at once (workers for each), and their words are combined; the finals stay in
    order with no word repeated from the context."""
    from asr_mesh.services.transcription import streaming

    combined: list[int] = []
    real = streaming.rover.combine

    def counted(transcripts, settings):
        combined.append(len(transcripts))
        return real(transcripts, settings)

    monkeypatch.setattr(streaming.rover, "combine", counted)
    with serving(max_streams=1, stream_rover_contexts=(0.0, 2.0)) as (settings, transcriber, stub):
        conv = manifest["dia"][0]
        evs = accurate_events(stub, corpus / conv["audio"])
        beams = transcriber.registry.get(
            "", "cpu", transcriber.compute_type, settings.stream_beam_threads
        )
        assert beams.model.num_workers == 4  # the full context, 4 s, 0 s and 2 s at once
    assert combined and max(combined) >= 3, (combined, [e.WhichOneof("event") for e in evs])
    finals = [e.final.segment for e in evs if e.WhichOneof("event") == "final"]
    assert_in_order_and_no_word_twice(finals)
    text = " ".join(f.text for f in finals)
    assert wer([conv["text"]], [text]) < 0.35, text
