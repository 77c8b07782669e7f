"""The shared PCM helpers: reading a config-then-audio request stream, sample conversion."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from asr.common.v1 import audio_pb2
from asr.diarization.v1 import diarization_service_pb2 as dia
from asr.transcription.v1 import transcription_service_pb2 as asr
from asr_mesh.services.common.domain import BYTES_PER_SAMPLE, SAMPLE_RATE
from asr_mesh.services.common.errors import InvalidAudio, InvalidInput, LimitExceeded
from asr_mesh.services.common.pcm import pcm_samples, pcm_to_float32, read_config, read_pcm
from asr_mesh.services.common.streams import UploadMeter

PCM16K = audio_pb2.PcmFormat(
    sample_rate_hz=SAMPLE_RATE, channels=1, encoding=audio_pb2.SAMPLE_ENCODING_S16LE
)
ONE_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE


def read_config_and_pcm(requests, *, max_audio_seconds, config_field="config"):
    """How the servicers use the two halves (with their queue slot taken in between)."""
    requests = iter(requests)
    config = read_config(requests, config_field=config_field)
    meter = UploadMeter(
        config.pcm_size_bytes, threading.Event(), what="audio stream", field="config.pcm_size_bytes"
    )
    return config, read_pcm(
        requests, max_audio_seconds=max_audio_seconds, meter=meter, config_field=config_field
    )


def stream(*chunks: bytes, fmt=PCM16K):
    yield asr.TranscribeRequest(config=asr.TranscriptionConfig(format=fmt, model="base"))
    for chunk in chunks:
        yield asr.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=chunk))


def test_reads_the_config_and_the_pcm_of_every_chunk():
    config, pcm = read_config_and_pcm(stream(b"\1\0" * 10, b"\2\0" * 5), max_audio_seconds=1)
    assert config.model == "base"
    assert isinstance(pcm, bytearray) and bytes(pcm) == b"\1\0" * 10 + b"\2\0" * 5


def test_works_for_every_service_request_type():
    requests = iter(
        [
            dia.DiarizeRequest(config=dia.DiarizationConfig(format=PCM16K, num_speakers=2)),
            dia.DiarizeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0")),
        ]
    )
    config, pcm = read_config_and_pcm(requests, max_audio_seconds=1)
    assert config.num_speakers == 2 and len(pcm) == 2


def test_the_limit_is_seconds_of_16_khz_16_bit_audio():
    _, pcm = read_config_and_pcm(stream(b"\0" * ONE_SECOND), max_audio_seconds=1)
    assert len(pcm) == ONE_SECOND  # exactly the limit is accepted
    with pytest.raises(LimitExceeded, match="longer than this service's limit of 2 s") as err:
        read_config_and_pcm(
            stream(b"\0" * ONE_SECOND, b"\0" * ONE_SECOND, b"\0\0"), max_audio_seconds=2
        )
    assert err.value.metadata == {"limit_seconds": "2"}


def test_the_limit_stops_reading_at_once():
    consumed = []

    def endless():
        yield from stream()
        while True:
            consumed.append(1)
            yield asr.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0" * ONE_SECOND))

    with pytest.raises(LimitExceeded):
        read_config_and_pcm(endless(), max_audio_seconds=3)
    assert len(consumed) == 4


def test_a_stream_must_open_with_one_config():
    with pytest.raises(InvalidInput, match="first message of the stream must carry config") as err:
        read_config_and_pcm(
            iter([asr.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0"))]),
            max_audio_seconds=1,
        )
    assert err.value.field == "config"
    with pytest.raises(InvalidInput, match="first message"):
        read_config_and_pcm(iter([]), max_audio_seconds=1)
    twice = iter([*stream(b"\0\0"), asr.TranscribeRequest(config=asr.TranscriptionConfig())])
    with pytest.raises(InvalidInput, match="may appear only once"):
        read_config_and_pcm(twice, max_audio_seconds=1)


def test_config_field_names_the_opening_message():
    requests = iter([asr.TranscribeRequest(config=asr.TranscriptionConfig(format=PCM16K))])
    with pytest.raises(InvalidInput, match="must carry settings") as err:
        read_config_and_pcm(requests, max_audio_seconds=1, config_field="settings")
    assert err.value.field == "settings"


def test_a_wrong_format_is_refused_before_any_audio_is_read():
    consumed = []

    def requests():
        yield asr.TranscribeRequest(
            config=asr.TranscriptionConfig(
                format=audio_pb2.PcmFormat(sample_rate_hz=44_100, channels=1)
            )
        )
        consumed.append(1)
        yield asr.TranscribeRequest(audio=audio_pb2.AudioChunk(pcm=b"\0\0"))

    with pytest.raises(InvalidInput, match="16000 Hz, got 44100 Hz"):
        read_config_and_pcm(requests(), max_audio_seconds=1)
    assert consumed == []


def test_read_config_reads_exactly_one_message():
    requests = stream(b"\0\0", b"\0\0")
    assert read_config(requests).model == "base"
    assert len(list(requests)) == 2  # the audio is still there for whoever holds a slot


def test_one_odd_byte_check_for_both_conversions():
    with pytest.raises(InvalidAudio, match="odd byte count"):
        pcm_samples(b"\0\0\0")
    with pytest.raises(InvalidAudio, match="odd byte count"):
        pcm_to_float32(bytearray(3))


def test_pcm_to_float32_scales_like_faster_whisper_from_bytes_or_samples():
    samples = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    expected = samples.astype(np.float32) / 32768.0
    assert np.array_equal(pcm_to_float32(samples.tobytes()), expected)
    assert np.array_equal(pcm_to_float32(samples), expected)
    assert np.array_equal(pcm_samples(bytearray(samples.tobytes())), samples)
    with pytest.raises(TypeError, match="int16"):
        pcm_to_float32(np.zeros(4, dtype=np.float64))


def test_pcm_to_float32_holds_one_float_copy():
    samples = np.zeros(2_000_000, dtype=np.int16)
    tracemalloc.start()
    try:
        audio = pcm_to_float32(samples)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * audio.nbytes
