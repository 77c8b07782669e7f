"""Pure tests of the preprocess core: argument lists, probe parsing, limits, PCM shaping.

The few tests at the end start tiny /bin/sh children to check the sandbox (deadline, crash,
cancellation, resource limits); they need neither ffmpeg nor gRPC.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from asr_mesh.services.common.errors import Cancelled, InvalidAudio, InvalidInput, LimitExceeded
from asr_mesh.services.preprocess import ffmpeg
from asr_mesh.services.preprocess.core import (
    Chunker,
    DurationCap,
    PreprocessLimits,
    PreprocessOptions,
    Preprocessor,
    PreprocessorConfig,
    SilenceTrimmer,
    check_complete,
    check_declared_duration,
    check_decoded_so_far,
    check_overrun,
    check_sample_rate,
    check_upload_size,
    check_wav_header,
    chunk_size,
    estimate_processing_seconds,
    spool_name,
)
from asr_mesh.services.preprocess.ffmpeg import CancelToken, ChildLimits, ProbeResult

SPOOL = Path("/tmp/spool-x/upload.mp3")


def probe_json(*streams: dict, fmt: dict | None = None) -> str:
    base = {"format_name": "wav", "duration": "5.350000", "bit_rate": "705600", "size": "1000"}
    return json.dumps({"streams": list(streams), "format": base if fmt is None else fmt})


AUDIO = {
    "index": 0,
    "codec_type": "audio",
    "codec_name": "pcm_s16le",
    "sample_rate": "44100",
    "channels": 2,
    "duration": "5.350000",
    "bit_rate": "1411200",
}


# --------------------------------------------------------------------------- argument lists


def test_every_input_is_confined_to_the_spooled_file():
    args = ffmpeg.input_args(Path("/tmp/x/-i upload.wav"))
    assert args[args.index("-protocol_whitelist") + 1] == "file"
    allowed = args[args.index("-format_whitelist") + 1].split(",")
    for refused in (
        "hls",
        "concat",
        "dash",
        "image2",
        "sdp",
        "rtsp",
        "tty",
        "webm_dash_manifest",
        "ffmetadata",
    ):
        assert refused not in allowed
    for needed in ("wav", "mp3", "flac", "ogg", "mov", "matroska", "aac"):
        assert needed in allowed
    assert args[-2:] == ["-i", "file:/tmp/x/-i upload.wav"]  # never read as an option


def test_probe_args_carry_the_whitelists():
    args = ffmpeg.probe_args("/usr/bin/ffprobe", SPOOL)
    assert args[0] == "/usr/bin/ffprobe"
    assert "-format_whitelist" in args and "-protocol_whitelist" in args
    assert args[args.index("-print_format") + 1] == "json"


def _probe(rate: int, demuxer: str = "wav", index: int = 1) -> ProbeResult:
    from asr_mesh.services.common.domain import MediaReport

    return ProbeResult(
        MediaReport(container=demuxer, codec="x", sample_rate_hz=rate, channels=2, duration=5.0),
        stream_index=index,
        demuxer=demuxer,
    )


def test_16k_input_gets_no_filter_so_pcm_matches_faster_whisper():
    args = ffmpeg.decode_args("ffmpeg", SPOOL, _probe(16_000))
    assert "-af" not in args
    assert args[args.index("-map") + 1] == "0:1"
    assert args[args.index("-f") + 1] == "wav"  # the demuxer the probe chose
    assert (
        args[-7:] == ["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", "-f", "s16le", "pipe:1"][-7:]
    )
    assert "-format_whitelist" in args and "-protocol_whitelist" in args


def test_other_rates_use_soxr_and_loudnorm_is_followed_by_a_resample():
    args = ffmpeg.decode_args("ffmpeg", SPOOL, _probe(44_100))
    assert "resampler=soxr" in args[args.index("-af") + 1]
    args = ffmpeg.decode_args(
        "ffmpeg", SPOOL, _probe(16_000), loudness_normalization=True, loudnorm_target=-20
    )
    chain = args[args.index("-af") + 1].split(",")
    assert chain[0].startswith("loudnorm=I=-20") and chain[1].startswith("aresample=16000")


# --------------------------------------------------------------------------- probe parsing


def test_parse_probe_reads_the_audio_stream():
    probe = ffmpeg.parse_probe(probe_json(AUDIO), 943818)
    r = probe.report
    assert (r.container, r.codec, r.sample_rate_hz, r.channels) == ("wav", "pcm_s16le", 44100, 2)
    assert r.duration == pytest.approx(5.35) and r.bit_rate == 1411200 and r.size_bytes == 943818
    assert not r.has_video and probe.stream_index == 0 and probe.demuxer == "wav"


def test_parse_probe_prefers_the_audio_streams_duration_over_the_containers():
    video = {"index": 0, "codec_type": "video", "codec_name": "h264", "duration": "10.2"}
    audio = {**AUDIO, "index": 1, "codec_name": "aac"}
    fmt = {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "10.2"}
    probe = ffmpeg.parse_probe(probe_json(video, audio, fmt=fmt), 1)
    assert probe.report.has_video and probe.stream_index == 1 and probe.demuxer == "mov"
    assert probe.report.duration == pytest.approx(5.35)


def test_parse_probe_refuses_video_without_audio():
    video = {"index": 0, "codec_type": "video", "codec_name": "h264"}
    with pytest.raises(InvalidAudio, match="no audio stream found"):
        ffmpeg.parse_probe(probe_json(video), 1)


def test_parse_probe_refuses_nonsense():
    with pytest.raises(InvalidAudio, match="not in a recognised"):
        ffmpeg.parse_probe("{}", 1)
    with pytest.raises(InvalidAudio, match="declares no sample rate"):
        ffmpeg.parse_probe(probe_json({**AUDIO, "sample_rate": "0"}), 1)


def test_parse_probe_notes_a_duration_guessed_from_the_bit_rate():
    warn = ["[mp3 @ 0x5581] Estimating duration from bitrate, this may be inaccurate"]
    assert ffmpeg.parse_probe(probe_json(AUDIO), 1, warn).duration_estimated
    assert not ffmpeg.parse_probe(probe_json(AUDIO), 1, []).duration_estimated


@pytest.mark.parametrize(
    "lines, expected",
    [
        (
            [
                "[hls @ 0x55e6] Format not on whitelist 'wav,mp3'",
                "file:/tmp/spool-x/upload.mp3: Invalid argument",
            ],
            "HLS playlist",
        ),
        (["[concat @ 0x55e6] Format not on whitelist 'wav'"], "concat list"),
        (
            [
                "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5565] moov atom not found",
                "file:/tmp/spool-x/upload.mp3: Invalid data found when processing input",
            ],
            "the file is truncated or corrupt: mov: moov atom not found",
        ),
        (
            ["file:/tmp/spool-x/upload.mp3: Invalid data found when processing input"],
            "not in a recognised audio or video format",
        ),
        (
            [
                "[mp3 @ 0x55c7] Format mp3 detected only with low score of 1, misdetection possible!",
                "[mp3 @ 0x55c7] Failed to read frame size: Could not seek to 51023.",
            ],
            "not a recognised audio or video format",
        ),
    ],
)
def test_probe_failures_become_sentences_without_paths(lines, expected):
    message = ffmpeg.explain_probe_failure(lines, SPOOL)
    assert expected in message
    assert "/tmp" not in message and "0x" not in message


def test_stderr_log_counts_repeats_and_keeps_a_bounded_list():
    log = ffmpeg.StderrLog()
    log.feed(
        b"[mp3float @ 0x1] Header missing\nError while decoding stream #0:0\n    Last message repeated 4 "
    )
    log.feed(b"times\npartial")
    log.close()
    assert log.count == 2 + 4 + 1
    assert log.lines == [
        "[mp3float @ 0x1] Header missing",
        "Error while decoding stream #0:0",
        "partial",
    ]


# --------------------------------------------------------------------------- limits

LIMITS = PreprocessLimits(max_upload_bytes=1000, max_audio_seconds=60, max_decoded_bytes=1 << 20)


def test_upload_limit_names_the_limit_and_value():
    check_upload_size(1000, LIMITS)
    with pytest.raises(
        LimitExceeded, match=r"larger than the limit of 1000 bytes \(max_upload_bytes\)"
    ):
        check_upload_size(1001, LIMITS)


def test_declared_duration_limits():
    check_declared_duration(30, LIMITS)
    with pytest.raises(
        LimitExceeded, match=r"declares 2\.0 h of audio, over the limit of 1\.0 min"
    ):
        check_declared_duration(7200, LIMITS)
    with pytest.raises(LimitExceeded, match=r"max_decoded_bytes") as err:
        check_declared_duration(40, LIMITS)  # 40 s = 1.28 MB of PCM
    assert err.value.metadata == {"limit": "max_decoded_bytes", "value": str(1 << 20)}


def test_running_decode_limits():
    check_decoded_so_far(1 << 20, LIMITS)
    with pytest.raises(LimitExceeded, match="max_decoded_bytes"):
        check_decoded_so_far((1 << 20) + 2, LIMITS)
    roomy = PreprocessLimits(max_audio_seconds=1, max_decoded_bytes=1 << 30)
    with pytest.raises(LimitExceeded, match=r"limit of 1\.00 s \(max_audio_seconds\)"):
        check_decoded_so_far(32_002, roomy)


def test_an_estimated_duration_is_refused_only_when_far_over_a_limit():
    limits = PreprocessLimits(max_audio_seconds=60)
    check_declared_duration(100, limits, slack=2.0)  # over 60 s, but only an estimate
    with pytest.raises(
        LimitExceeded,
        match=r"size and bit rate suggest 2\.0 h of audio, over the limit of 1\.0 min",
    ):
        check_declared_duration(7200, limits, slack=2.0)


@pytest.mark.parametrize("rate", [8_000, 11_025, 16_000, 44_100, 48_000, 96_000, 192_000, 384_000])
def test_real_sample_rates_pass(rate):
    check_sample_rate(rate, "pcm_s16le")


@pytest.mark.parametrize("rate", [1, 8, 999, 768_001, 0x7FFFFFFF])
def test_forged_sample_rates_are_refused(rate):
    with pytest.raises(InvalidAudio, match=f"sample rate of {rate} Hz, outside .* forged"):
        check_sample_rate(rate, "pcm_s16le")


def test_a_decode_far_past_its_declared_length_is_a_bomb():
    check_overrun(10_000, 0)  # nothing declared: only the limits apply
    check_overrun(4 * 60 + 600, 60)
    with pytest.raises(
        InvalidAudio,
        match=r"1\.0 min declared, over 14\.0 min decoded\): refused as a probable decompression bomb",
    ):
        check_overrun(4 * 60 + 601, 60)


def test_estimate_is_duration_times_the_configured_rtf():
    assert estimate_processing_seconds(600, 0.09) == pytest.approx(54)
    assert estimate_processing_seconds(0, 0.09) == 0
    assert estimate_processing_seconds(600, 0) == 0


def test_stale_spools_in_a_configured_root_are_swept_and_shutdown_waits_for_jobs(tmp_path):
    stale = tmp_path / "asr-preprocess-old"
    (stale / "x").mkdir(parents=True)
    other = tmp_path / "keep-me"
    other.mkdir()
    pre = Preprocessor(PreprocessorConfig(temp_root=tmp_path))
    assert not stale.exists() and other.exists()

    release = threading.Event()

    def upload():
        yield b"RIFF"
        release.wait(10)
        yield b"more"

    errors = []

    def work():
        try:
            list(pre.run(PreprocessOptions(filename="x.wav"), upload()))
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 5
    while not list(tmp_path.glob("asr-preprocess-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob("asr-preprocess-*"))
    threading.Timer(0.2, release.set).start()
    pre.shutdown(timeout=5)
    assert not list(tmp_path.glob("asr-preprocess-*"))
    worker.join(5)
    assert isinstance(errors[0], Cancelled)


def test_the_admission_queue_reports_through_the_injected_callback(tmp_path):
    """The core reports (waiting, running) to `on_queue`; the server wires it to the gauges."""
    seen: list[tuple[int, int]] = []
    pre = Preprocessor(
        PreprocessorConfig(temp_root=tmp_path),
        on_queue=lambda waiting, running: seen.append((waiting, running)),
    )
    with pytest.raises(InvalidAudio):
        list(pre.run(PreprocessOptions(filename="x.wav"), iter([b"not audio at all"])))
    assert (0, 1) in seen and seen[-1] == (0, 0)


def wav_header(data_bytes: int, rate: int = 16_000, channels: int = 1) -> bytes:
    byte_rate = rate * channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def test_wav_header_claiming_hours_is_a_limit_breach_before_any_decode():
    head = wav_header(0xFFFF0000)
    assert ffmpeg.wav_declared_data(head) == (44, 0xFFFF0000, 32000)
    with pytest.raises(LimitExceeded, match="WAV header declares 37.3 h"):
        check_wav_header(head, len(head) + 32000, PreprocessLimits())


def test_wav_header_claiming_more_than_the_file_holds_is_truncation():
    head = wav_header(64_000)
    check_wav_header(head, 44 + 64_000, PreprocessLimits())
    with pytest.raises(
        InvalidAudio, match="truncated or corrupt: its WAV header declares 2.00 s .* only 1.00 s"
    ):
        check_wav_header(head, 44 + 32_000, PreprocessLimits())


def test_wav_streaming_placeholders_are_not_claims():
    assert ffmpeg.wav_declared_data(wav_header(0xFFFFFFFF)) is None
    assert ffmpeg.wav_declared_data(wav_header(0)) is None
    assert ffmpeg.wav_declared_data(b"ID3\x04" + bytes(100)) is None


# --------------------------------------------------------------------------- corrupt-input rule


def _declared(seconds: float, estimated: bool = False) -> ProbeResult:
    from asr_mesh.services.common.domain import MediaReport

    return ProbeResult(MediaReport(duration=seconds), 0, "mp3", duration_estimated=estimated)


def test_nothing_decoded_is_corrupt():
    with pytest.raises(InvalidAudio, match="no audio could be decoded"):
        check_complete(0.0, _declared(5), 0)


def test_shortfall_rule():
    check_complete(5.35, _declared(5.436), 0)  # mp3: probe counts the encoder delay
    check_complete(9.6, _declared(10.0), 0)  # 0.4 s short: under both thresholds
    with pytest.raises(InvalidAudio, match="declares 5.44 s of audio but only 4.32 s"):
        check_complete(4.32, _declared(5.436), 2)
    check_complete(2.0, _declared(5.0, estimated=True), 0)  # a guess proves nothing
    check_complete(3590, _declared(3600), 0)  # 10 s short of an hour: within 5 %
    with pytest.raises(InvalidAudio):
        check_complete(3000, _declared(3600), 0)


def test_decoder_error_rule_tolerates_a_few_glitches_in_long_files():
    check_complete(600, _declared(600), 40)  # 40 errors in 10 min: tolerated
    check_complete(5, _declared(5), 10)
    with pytest.raises(
        InvalidAudio, match="decoder reported 11 errors .*first: mp3float: Header missing"
    ):
        check_complete(5, _declared(5), 11, "mp3float: Header missing")


# --------------------------------------------------------------------------- small helpers


def test_chunk_size_bounds():
    assert chunk_size(0) == 256 * 1024
    assert chunk_size(65_537) == 65_536
    for bad in (1000, 2 << 20, -1):
        with pytest.raises(InvalidInput, match="chunk_size_bytes"):
            chunk_size(bad)


@pytest.mark.parametrize(
    "hint, name",
    [
        ("clip.MP3", "upload.mp3"),
        ("reunião_ação.m4a", "upload.m4a"),
        ("", "upload"),
        ("../../etc/passwd", "upload"),
        ("a.b/../../x", "upload"),
        ("x.tar.gz", "upload.gz"),
        ("weird.m p3", "upload"),
        ("C:\\music\\song.flac", "upload.flac"),
    ],
)
def test_spool_name_never_uses_the_callers_path(hint, name):
    assert spool_name(hint) == name


def test_duration_cap_cuts_padding_but_keeps_a_wrong_declaration():
    cap = DurationCap(cap_bytes=100, tolerance_bytes=20)
    assert cap.feed(b"a" * 90) + cap.feed(b"b" * 20) == b"a" * 90 + b"b" * 10
    assert cap.feed(b"c" * 8) == b"" and cap.finish() == b""  # 18 bytes past: padding
    cap = DurationCap(cap_bytes=100, tolerance_bytes=20)
    out = cap.feed(b"a" * 110) + cap.feed(b"b" * 30)
    assert out == b"a" * 110 + b"b" * 30  # 40 past: the container was wrong, keep all
    assert DurationCap(0, 20).feed(b"xyz") == b"xyz"


def pcm(*parts: tuple[int, int]) -> bytes:
    """(samples, amplitude) runs of a square-ish signal as s16le."""
    return np.concatenate(
        [np.full(n, a, dtype="<i2") * np.resize([1, -1], n).astype("<i2") for n, a in parts]
    ).tobytes()


def test_silence_trimmer_cuts_both_ends_and_keeps_pauses_inside():
    audio = pcm((16_000, 0), (8_000, 5000), (4_000, 3), (8_000, 5000), (24_000, 10))
    trimmer = SilenceTrimmer(-50.0, padding_bytes=3_200)  # 0.1 s
    out = b"".join(trimmer.feed(audio[i : i + 6_000]) for i in range(0, len(audio), 6_000))
    out += trimmer.finish()
    assert len(out) // 2 == 1_600 + 8_000 + 4_000 + 8_000 + 1_600


def test_silence_trimmer_on_pure_silence_gives_nothing():
    trimmer = SilenceTrimmer(-50.0, padding_bytes=3_200)
    assert trimmer.feed(bytes(64_000)) == b"" and trimmer.finish() == b""


def test_chunker_regroups_whole_chunks():
    chunker = Chunker(4)
    assert chunker.feed(b"abcdef") == [b"abcd"]
    assert chunker.feed(b"gh") == [b"efgh"]
    assert chunker.feed(b"i") == [] and chunker.finish() == [b"i"]


# --------------------------------------------------------------------------- the sandbox


def sh(
    script: str,
    deadline: float = 5.0,
    cancel: CancelToken | None = None,
    limits: ChildLimits | None = None,
) -> ffmpeg.Child:
    return ffmpeg.Child(
        ["/bin/sh", "-c", script],
        limits or ChildLimits(),
        deadline,
        cancel or CancelToken(),
        what="decoding the file",
        tool="decoder",
        deadline_setting="max_decode_seconds",
    )


def test_a_hanging_child_is_killed_at_its_deadline():
    start = time.monotonic()
    with pytest.raises(
        LimitExceeded, match=r"decoding the file took longer than the limit of 0\.5 s"
    ):
        sh("exec /bin/sleep 30", deadline=0.5).run()
    assert time.monotonic() - start < 3


def test_a_crashing_child_is_reported_as_corrupt_input():
    with pytest.raises(InvalidAudio, match=r"decoder crashed reading it \(SIGSEGV\)"):
        sh("kill -SEGV $$").run()


def test_cancellation_kills_the_running_child():
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        sh("exec /bin/sleep 30", deadline=20, cancel=token).run()
    assert time.monotonic() - start < 3


def test_children_run_with_resource_limits_and_an_empty_environment():
    out = sh(
        "ulimit -v; ulimit -t; ulimit -f; echo ${HOME:-none}",
        limits=ChildLimits(memory_bytes=256 << 20, cpu_seconds=7),
    ).run()
    assert out.decode().split() == [str(256 << 10), "7", "0", "none"]


def test_stdout_streams_while_the_child_runs_and_stderr_is_kept():
    child = sh("echo one; echo oops >&2; /bin/sleep 0.2; echo two")
    assert b"".join(child.stream()) == b"one\ntwo\n"
    assert child.returncode == 0 and child.stderr.lines == ["oops"]
