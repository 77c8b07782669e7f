"""The result cache's key, stored form and backends (disk and a real redis-server)."""

from __future__ import annotations

import dataclasses
import time
import zlib

import pytest
from jobs_helpers import free_port, redis_server  # noqa: F401 (fixture)

from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, Segment, Word
from asr_mesh.services.gateway.pipeline import (
    ChainOptions,
    ChainResult,
    Diarization,
    Merged,
    RenderedDocument,
    Transcript,
)
from asr_mesh.services.gateway.result_cache import (
    DiskCache,
    RedisCache,
    ResultCache,
    cache_key,
    decode_result,
    encode_result,
)

MODEL = ("base", "cd" * 32)


def result(text: str = "olá mundo") -> ChainResult:
    words = (Word(0.0, 0.4, "olá", 0.9, "SPEAKER_00"), Word(0.5, 0.9, "mundo", 0.8, "SPEAKER_00"))
    segment = convert.segment_to_proto(
        Segment(0, 0.0, 0.9, text, words, "SPEAKER_00", -0.2, 0.01, 1.1)
    )
    return ChainResult(
        media=MediaReport(
            container="flac", codec="flac", sample_rate_hz=16000, channels=1, duration=1.0
        ),
        audio_duration=1.0,
        transcript=Transcript([segment], "pt-BR", "base"),
        diarization=Diarization([], 1, "resemblyzer"),
        merged=Merged(
            [segment],
            ["SPEAKER_00"],
            [RenderedDocument("srt", "1\n00:00 --> 00:01\nolá", "srt", "application/x-subrip")],
        ),
        seconds=2.5,
    )


def test_stored_form_round_trips_what_the_gateway_streams():
    original = result()
    back = decode_result(encode_result(original))
    assert back.merged == original.merged and back.media == original.media
    assert (back.audio_duration, back.seconds, back.transcript.model, back.diarization.backend) == (
        1.0,
        2.5,
        "base",
        "resemblyzer",
    )
    with pytest.raises(zlib.error):
        decode_result(b"not a stored result")


def test_key_changes_with_bytes_options_model_and_pipeline_but_not_the_directory():
    options = ChainOptions.of(filename="talk.flac")
    key = cache_key("aa" * 32, options, MODEL)
    assert key == cache_key("aa" * 32, ChainOptions.of(filename="talk.flac"), MODEL)
    assert key == cache_key(
        "aa" * 32, ChainOptions.of(filename="talk.flac", formats=("json",)), MODEL
    )
    assert (
        len(
            {
                key,
                cache_key("bb" * 32, options, MODEL),
                cache_key("aa" * 32, ChainOptions.of(filename="talk.flac", diarize=True), MODEL),
                cache_key(
                    "aa" * 32, ChainOptions.of(filename="talk.flac", formats=("json", "srt")), MODEL
                ),
                cache_key(
                    "aa" * 32, dataclasses.replace(options, filename="other.flac"), MODEL
                ),  # RTTM file id
                cache_key("aa" * 32, options, ("base", "ef" * 32)),  # same name, other weights
                cache_key("aa" * 32, options, MODEL, pipeline_version="next"),
            }
        )
        == 7
    )


def test_disk_cache_evicts_least_recently_used_and_expires(tmp_path):
    cache = DiskCache(tmp_path / "c.sqlite", max_bytes=250, ttl_s=60)
    for name in "abc":
        cache.put(name, name.encode() * 100)
        time.sleep(0.01)
    assert cache.get("a") is None  # 300 bytes > 250: the oldest went
    assert cache.get("b") == b"b" * 100
    cache.put("d", b"d" * 100)  # "c" is now the least recently used
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == (b"b" * 100, None, b"d" * 100)
    short = DiskCache(tmp_path / "t.sqlite", max_bytes=1000, ttl_s=0.2)
    short.put("k", b"v")
    assert short.get("k") == b"v"
    time.sleep(0.3)
    assert short.get("k") is None


def test_a_corrupt_disk_cache_is_a_miss_and_is_rebuilt(tmp_path):
    path = tmp_path / "results.sqlite"
    front = ResultCache(DiskCache(path, 1 << 20, 60), lambda name: MODEL)
    key = front.key("aa" * 32, ChainOptions())
    front.store(key, result())
    assert front.lookup(key) is not None
    front.backend.close()
    path.write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"results.sqlite{suffix}").unlink(missing_ok=True)
    assert front.lookup(key) is None  # an error on read: a miss, not a failure
    front.store(key, result())  # rebuilt on the next write
    assert front.lookup(key).merged == result().merged


def test_an_undecodable_entry_is_a_miss(tmp_path):
    front = ResultCache(DiskCache(tmp_path / "c.sqlite", 1 << 20, 60), lambda name: MODEL)
    key = front.key("aa" * 32, ChainOptions())
    front.backend.put(key, b"\x00\x01 truncated")
    assert front.lookup(key) is None


def test_unreachable_redis_is_a_miss_and_unknown_model_is_no_caching():
    front = ResultCache(
        RedisCache(f"redis://127.0.0.1:{free_port()}/0", 1 << 20, 60), lambda name: MODEL
    )
    key = front.key("aa" * 32, ChainOptions())
    assert front.lookup(key) is None
    front.store(key, result())  # logged, not raised

    def no_transcription_service(name):
        raise ConnectionError("transcription unreachable")

    assert (
        ResultCache(front.backend, no_transcription_service).key("aa" * 32, ChainOptions()) is None
    )


@pytest.mark.mesh  # starts a redis-server process
def test_redis_cache_evicts_least_recently_used_and_expires(redis_server):  # noqa: F811
    redis_server.flush()
    cache = RedisCache(redis_server.url, max_bytes=250, ttl_s=60)
    for name in "abc":
        cache.put(name, name.encode() * 100)
        time.sleep(0.01)
    assert cache.get("a") is None
    assert cache.get("b") == b"b" * 100
    cache.put("d", b"d" * 100)
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == (b"b" * 100, None, b"d" * 100)
    short = RedisCache(redis_server.url, max_bytes=1000, ttl_s=0.2)
    short.put("k", b"v")
    assert short.get("k") == b"v"
    time.sleep(0.3)
    assert short.get("k") is None


def test_a_gateway_that_fans_out_long_files_keys_its_results_apart(tmp_path):
    """Fan-out changes long transcripts (context restarts at cuts), so its results must not be
    served to a gateway that decodes whole files, nor the other way round."""
    from asr_mesh.services.gateway.result_cache import DiskCache, ResultCache
    from asr_mesh.services.gateway.server import GatewaySettings, open_cache

    whole = GatewaySettings(state_dir=tmp_path, fanout_min_s=0)
    fanned = GatewaySettings(state_dir=tmp_path, fanout_min_s=600, fanout_chunk_speech_s=120)
    other = GatewaySettings(state_dir=tmp_path, fanout_min_s=600, fanout_chunk_speech_s=60)
    assert whole.output_variant() == "" and fanned.output_variant() != other.output_variant()
    identity = lambda name: ("base", "abc")  # noqa: E731
    keys = set()
    for settings in (whole, fanned, other):
        cache = open_cache(settings, identity)
        assert isinstance(cache, ResultCache) and isinstance(cache.backend, DiskCache)
        keys.add(cache.key("0" * 64, ChainOptions()))
        cache.close()
    assert len(keys) == 3
