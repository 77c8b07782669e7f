"""End to end: real services in separate processes, real models, the development corpus."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import srt
from conftest import MODELS_DIR

from asr_mesh.client.sdk import TranscribeOptions
from asr_mesh.services.common.errors import InvalidInput

pytestmark = pytest.mark.mesh

REPO = Path(__file__).resolve().parents[2]


def words_of(result) -> list[str]:
    return [w.word for s in result.segments for w in s.words]


@pytest.fixture(scope="module")
def plain_model():
    from faster_whisper import WhisperModel

    return WhisperModel(str(MODELS_DIR / "whisper-base"), device="cpu", compute_type="int8")


def test_clips_give_exactly_plain_faster_whisper_words(client, manifest, corpus, plain_model):
    # Deterministic decoding on both sides: with the default fallback schedule faster-whisper
    # samples at temperatures > 0 on hard clips, and then plain differs from plain (asr/011).
    # Loudness normalisation is off (the default; set explicitly): this compares the
    # recognition path, so both sides must see the same samples.
    # The service's repetition guard is applied to the plain words too: at T=0 plain
    # faster-whisper loops on asr/011 ("Amiglio" ×10 with zero-length words), and cutting such
    # loops to three copies is the service's documented behaviour, not a recognition difference.
    # So is its invention guard (squeezed improbable words, text where VAD heard no speech).
    from faster_whisper import decode_audio

    from asr_mesh.services.transcription import guards, longform
    from asr_mesh.services.transcription.core import to_segment
    from asr_mesh.services.transcription.guards import cut_loops

    def detect(block):
        from faster_whisper.vad import get_speech_timestamps

        found = get_speech_timestamps(block, longform.VadParams().options(longform.WINDOW_S))
        return [(t["start"] / 16000, t["end"] / 16000) for t in found]

    mismatches = []
    for entry in manifest["asr"]:
        path = corpus / entry["audio"]
        segments, _ = plain_model.transcribe(
            str(path),
            language="pt",
            beam_size=5,
            word_timestamps=True,
            vad_filter=True,
            temperature=0.0,
        )
        speech = longform.speech_ranges(decode_audio(str(path)), detect)
        kept = [to_segment(k, s) for k, s in enumerate(segments)]
        kept = [
            s for s in kept if not guards.is_squeezed(s) and not guards.outside_speech(s, speech)
        ]
        guarded, _ = cut_loops(kept)
        expected = [w.word for s in guarded for w in s.words]
        options = TranscribeOptions(temperatures=(0.0,), loudness_normalization=False)
        got = words_of(client.transcribe(path, options))
        if got != expected:
            mismatches.append((entry["audio"], expected, got))
    assert not mismatches


def test_conversation_has_speakers_and_valid_srt(client, corpus, tmp_path):
    result = client.transcribe(
        corpus / "dia" / "conv0.flac",
        TranscribeOptions(diarize=True, formats=("srt", "json", "rttm")),
    )
    assert len(result.speakers) == 2
    srt_doc, json_doc, rttm_doc = result.documents
    # Through the whole chain the turns match the truth.
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    hypothesis_file = tmp_path / "conv0.rttm"
    hypothesis_file.write_text(rttm_doc.content, encoding="utf-8")
    [hypothesis] = load_rttm(hypothesis_file).values()
    [reference] = load_rttm(corpus / "dia" / "conv0.rttm").values()
    assert DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hypothesis) <= 0.05
    cues = list(srt.parse(srt_doc.content))
    assert cues and [c.index for c in cues] == list(range(1, len(cues) + 1))
    assert all(c.start < c.end for c in cues)
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))
    data = json.loads(json_doc.content)
    assert data["trace_id"] == result.trace_id
    assert {"language", "duration", "speakers", "segments"} <= set(data)
    assert all(w["speaker"] for s in data["segments"] for w in s["words"])
    # Nothing invented: every segment touches true speech, and no cue is shorter than 0.7 s
    # (a last word at the very end of the file included).
    truth = reference.get_timeline().support()
    for segment in data["segments"]:
        start, end = segment["words"][0]["start"], segment["words"][-1]["end"]
        assert any(t.start - 0.5 <= end and start <= t.end + 0.5 for t in truth), segment["text"]
    for i, cue in enumerate(cues):
        if (cue.end - cue.start).total_seconds() < 0.7:  # only between two touching cues
            assert 0 < i < len(cues) - 1
            assert cues[i - 1].end == cue.start and cue.end == cues[i + 1].start


@pytest.mark.parametrize("name", ["silence_10s.wav", "noise_10s.wav"])
def test_silence_and_noise_give_no_words(client, corpus, name):
    result = client.transcribe(corpus / "media" / name, TranscribeOptions(diarize=True))
    assert words_of(result) == []
    assert result.audio_duration.seconds == 10


def test_every_bad_input_is_refused_and_the_mesh_keeps_serving(client, mesh, manifest, corpus):
    for entry in manifest["bad"]:
        with pytest.raises(InvalidInput) as err:
            client.transcribe(corpus / entry["audio"], TranscribeOptions(diarize=True))
        message = err.value.message
        assert message and "Traceback" not in message and len(message) < 300, entry
        assert all(s.process.poll() is None for s in mesh.services.values()), entry
    assert words_of(client.transcribe(corpus / "asr" / "000.flac", TranscribeOptions()))


def test_one_trace_spans_all_five_services(client, corpus, mesh_state):
    result = client.transcribe(corpus / "dia" / "conv1.flac", TranscribeOptions(diarize=True))
    assert len(result.speakers) == 3
    services = {"gateway", "preprocess", "transcription", "diarization", "merge"}
    # A server span ends just after its last response is sent, so give the files a moment.
    deadline = time.monotonic() + 10
    while True:
        spans = []
        for path in (mesh_state / "traces").glob("*.jsonl"):
            spans += [json.loads(line) for line in path.read_text().splitlines()]
        mine = [s for s in spans if s["trace_id"] == result.trace_id]
        server_spans = {s["service"] for s in mine if s["kind"] == "SERVER"}
        if server_spans == services or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert server_spans == services
    ids = {s["span_id"] for s in mine}
    roots = [s for s in mine if s["parent_span_id"] not in ids]
    assert len(roots) == 1 and roots[0]["service"] == "gateway"

    # The trace tool reads it back: waterfall as JSON and as a picture.
    png = mesh_state / "waterfall.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr_mesh.client.cli",
            "trace",
            "show",
            result.trace_id,
            "--format",
            "json",
            "--state-dir",
            str(mesh_state),
            "--png",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert {s["service"] for s in shown} == services and len(shown) == len(mine)
    assert png.stat().st_size > 10_000

    # Structured logs carry the request's trace id.
    log_lines = (mesh_state / "logs" / "gateway.log").read_text().splitlines()
    records = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert any(r["trace_id"] == result.trace_id and "transcribed" in r["message"] for r in records)


def test_cli_writes_outputs_and_reports_failures_per_file(mesh, corpus, tmp_path):
    bad = corpus / "bad" / "text.wav"
    good = corpus / "media" / "reunião_ação.mp3"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr_mesh.client.cli",
            "transcribe",
            str(good),
            str(bad),
            str(tmp_path / "missing.wav"),
            "--format",
            "json,srt,vtt,txt",
            "-o",
            str(tmp_path / "out"),
            "--server",
            mesh.gateway_address,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("asr: ")]
    assert (
        len(errors) == 2
        and any("text.wav" in e for e in errors)
        and any("missing.wav" in e for e in errors)
    )
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == [
        "reunião_ação.json",
        "reunião_ação.srt",
        "reunião_ação.txt",
        "reunião_ação.vtt",
    ]
    data = json.loads((tmp_path / "out" / "reunião_ação.json").read_text(encoding="utf-8"))
    assert "conta corrente" in " ".join(s["text"] for s in data["segments"]).lower()
