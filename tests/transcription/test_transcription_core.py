"""Pure-core tests for transcription: language mapping, model registry, device choice."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asr_mesh.services.common.errors import InvalidInput, UnknownModel
from asr_mesh.services.transcription.core import auto_compute_type, whisper_language
from asr_mesh.services.transcription.models import ModelRegistry, discover_models


@pytest.mark.parametrize(
    ("code", "expected"),
    [("pt-BR", "pt"), ("pt", "pt"), ("", "pt"), ("en-US", "en"), ("auto", None), ("PT_br", "pt")],
)
def test_bcp47_maps_to_whisper_codes(code, expected):
    assert whisper_language(code) == expected


def test_garbage_language_is_refused():
    with pytest.raises(InvalidInput, match="BCP-47"):
        whisper_language("12-xx")


def _fake_model(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"x")
    return path


def test_registry_finds_flat_and_hf_cache_layouts(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    snap = tmp_path / "models--Systran--faster-whisper-large-v3" / "snapshots"
    _fake_model(snap, "abc123")
    models = discover_models(tmp_path)
    assert models["base"].path == tmp_path / "whisper-base"
    assert models["large-v3"].path == snap / "abc123"
    assert {"whisper-base", "faster-whisper-large-v3"} <= set(models)


def test_unknown_model_lists_what_exists(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: object())
    with pytest.raises(UnknownModel, match="available: base, whisper-base"):
        registry.resolve("large-v9")


def test_registry_shares_one_instance_per_model_device_and_type(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    loads = []
    registry = ModelRegistry(
        tmp_path, "base", loader=lambda spec, d, c: loads.append((spec.name, d, c)) or object()
    )
    first = registry.get("base", "cpu", "int8")
    assert registry.get("whisper-base", "cpu", "int8") is first
    assert registry.get("", "cpu", "int8") is first
    assert registry.get("base", "cpu", "float32") is not first
    assert len(loads) == 2
    assert registry.is_loaded("base")


def test_compute_type_follows_device():
    assert auto_compute_type("auto", "cuda") == "float16"
    assert auto_compute_type("auto", "cpu") == "int8"
    assert auto_compute_type("int8_float16", "cuda") == "int8_float16"


# -- model lifecycle -------------------------------------------------------------------------


def test_idle_models_are_unloaded_but_never_while_in_use(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    now = [0.0]
    events = []
    registry = ModelRegistry(
        tmp_path,
        "base",
        loader=lambda *a: object(),
        idle_unload_s=60,
        on_change=lambda *a: events.append(a),
        clock=lambda: now[0],
    )
    with registry.lease("base", "cpu", "int8"):
        now[0] = 500.0
        assert registry.unload_idle() == []  # busy: a long request must not lose its model
    now[0] = 530.0
    assert registry.unload_idle() == []  # used 30 s ago
    now[0] = 561.0
    assert registry.unload_idle() == ["whisper-base"]
    assert not registry.is_loaded("base")
    assert events == [("whisper-base", "cpu", "int8", True), ("whisper-base", "cpu", "int8", False)]
    registry.get("base", "cpu", "int8")  # the next request loads it again
    assert registry.is_loaded("base")


def test_no_idle_unload_when_not_configured(tmp_path):
    _fake_model(tmp_path, "whisper-base")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: object())
    registry.get("base", "cpu", "int8")
    assert registry.unload_idle() == [] and registry.start_reaper() is None
    assert registry.unload_idle(force=True) == ["whisper-base"]


# -- admission queue -------------------------------------------------------------------------


def test_full_queue_is_refused_with_retry_after():
    import threading

    from asr_mesh.services.common.errors import Overloaded
    from asr_mesh.services.common.scheduler import WorkQueue

    depths = []
    queue = WorkQueue(workers=1, max_queued=1, on_change=lambda w, r: depths.append((w, r)))
    release, entered = threading.Event(), threading.Event()

    def hold():
        with queue.slot():
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    got = threading.Event()

    def wait_then_run():
        with queue.slot():
            got.set()

    waiter = threading.Thread(target=wait_then_run)
    waiter.start()
    for _ in range(1000):
        if queue.waiting:
            break
        threading.Event().wait(0.01)
    assert queue.waiting == 1  # else the slot below would queue instead of being refused
    with pytest.raises(Overloaded) as err:
        with queue.slot():
            pass
    assert err.value.retry_after_s >= 1.0
    assert (1, 1) in depths  # one queued, one running: what asr_queue_depth exports
    release.set()
    holder.join(5)
    waiter.join(5)
    assert got.is_set() and queue.running == 0 and queue.waiting == 0


# -- the transcriber with fake models --------------------------------------------------------


class FakeSegment:
    def __init__(
        self, start, end, text, *, seek=0, no_speech=0.01, logprob=-0.2, ratio=1.2, words=True
    ):
        self.start, self.end, self.text, self.seek = start, end, " " + text, seek
        self.no_speech_prob, self.avg_logprob, self.compression_ratio = no_speech, logprob, ratio
        tokens = text.split()
        step = (end - start) / max(len(tokens), 1)
        self.words = (
            [
                SimpleNamespace(
                    start=start + k * step,
                    end=start + (k + 1) * step,
                    word=" " + t,
                    probability=0.9,
                )
                for k, t in enumerate(tokens)
            ]
            if words
            else None
        )


class FakeModel:
    """Speaks only when VAD is off (like quiet speech VAD misses), or always with `always`."""

    supported_languages = ["pt", "en"]

    def __init__(self, text="fala baixa", always=False, no_speech=0.01):
        self.calls = []
        self.text, self.always, self.no_speech = text, always, no_speech

    def transcribe(self, audio, **kw):
        self.calls.append({**kw, "audio": audio})
        info = SimpleNamespace(language="pt", language_probability=1.0)
        if kw.get("vad_filter") and not self.always:
            return iter([]), info
        duration = len(audio) / 16000
        return iter([FakeSegment(0.0, duration, self.text, no_speech=self.no_speech)]), info

    def detect_language(self, audio):
        return "pt", 0.99, []


def fake_transcriber(tmp_path, model, **kw):
    from asr_mesh.services.transcription.core import Transcriber

    if not (tmp_path / "whisper-base").exists():
        _fake_model(tmp_path, "whisper-base")
    registry = ModelRegistry(tmp_path, "base", loader=lambda *a: model)
    return Transcriber(registry, "cpu", "int8", **kw)


def collect(transcriber, audio, **options):
    from asr_mesh.services.common.domain import Segment
    from asr_mesh.services.transcription.core import TranscriptionOptions, TranscriptionSummary

    events = list(transcriber.transcribe(audio, TranscriptionOptions(**options)))
    segments = [e for e in events if isinstance(e, Segment)]
    summary = next(e for e in events if isinstance(e, TranscriptionSummary))
    return segments, summary, events


def test_vad_fallback_decodes_without_vad_when_signal_has_energy(tmp_path):
    model = FakeModel()
    tone = (0.1 * np.sin(np.arange(16000 * 3) / 5.0) * 32768).astype(np.int16)
    segments, summary, _ = collect(fake_transcriber(tmp_path, model), tone)
    assert [s.text for s in segments] == ["fala baixa"] and summary.vad_fallback
    assert [c["vad_filter"] for c in model.calls] == [True, False]


def test_no_fallback_on_digital_silence_and_no_words_from_doubtful_fallback(tmp_path):
    model = FakeModel()
    segments, summary, _ = collect(fake_transcriber(tmp_path, model), np.zeros(16000 * 3, np.int16))
    assert segments == [] and not summary.vad_fallback and len(model.calls) == 1
    # Noise: energy, so the fallback runs, but the model doubts it is speech: no words.
    doubtful = FakeModel(text="Legendas pela comunidade", no_speech=0.7)
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(16000 * 3) * 32768).astype(np.int16)
    segments, summary, _ = collect(fake_transcriber(tmp_path, doubtful), noise)
    assert segments == [] and summary.vad_fallback


def test_short_audio_is_plain_faster_whisper_with_the_profile(tmp_path):
    model = FakeModel(always=True)
    transcriber = fake_transcriber(tmp_path, model)
    _, summary, _ = collect(transcriber, np.zeros(16000 * 5, np.int16), hotwords="Itaú")
    call = model.calls[0]
    assert (call["beam_size"], call["best_of"], call["temperature"]) == (
        5,
        5,
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    )
    assert call["hotwords"] == "Itaú" and call["vad_filter"] and call["language"] == "pt"
    assert (summary.profile, summary.strategy) == ("balanced", "sequential")
    collect(transcriber, np.zeros(16000 * 5, np.int16), profile="fast", temperatures=(0.0,))
    assert (model.calls[-1]["beam_size"], model.calls[-1]["temperature"]) == (1, [0.0])


def test_unknown_profile_and_bad_numbers_are_invalid(tmp_path):
    transcriber = fake_transcriber(tmp_path, FakeModel())
    for bad in ({"profile": "ultra"}, {"beam_size": -1}, {"temperatures": (3.0,)}):
        with pytest.raises(InvalidInput):
            collect(transcriber, np.zeros(1600, np.int16), **bad)


class FakePipeline:
    """Batched decoding: per clip one segment per sentence, except planned failures."""

    def __init__(self, drop_tail_of=(), fail=()):
        self.calls = []
        self.drop_tail_of, self.fail = set(drop_tail_of), set(fail)
        self.clip_count = 0

    def transcribe(self, audio, clip_timestamps, **kw):
        self.calls.append([round(c["end"] - c["start"], 2) for c in clip_timestamps])
        out = []
        for clip in clip_timestamps:
            index = self.clip_count
            self.clip_count += 1
            length = clip["end"] - clip["start"]
            sentences = max(1, round(length / 5))
            if index in self.drop_tail_of:
                sentences -= 1  # Whisper stops early: the last sentence is missing
            logprob = -1.6 if index in self.fail else -0.2  # improbable text: a failed window
            for k in range(sentences):
                out.append(
                    FakeSegment(
                        clip["start"] + 5 * k,
                        clip["start"] + 5 * k + 4.5,
                        f"frase {index}.{k}",
                        seek=round(clip["start"] * 100),
                        logprob=logprob,
                    )
                )
        return iter(out), None


def long_audio(seconds=300):
    return (0.1 * np.sin(np.arange(16000 * seconds) / 5.0) * 32768).astype(np.int16)


def sentence_vad(block):
    duration = len(block) / 16000
    return [(t, min(t + 4.8, duration)) for t in np.arange(0.1, duration - 1, 5.0)]


def test_long_audio_is_batched_and_a_dropped_tail_is_decoded_in_the_next_batch(tmp_path):
    pipeline = FakePipeline(drop_tail_of={1})
    batch_sizes = []
    transcriber = fake_transcriber(
        tmp_path,
        FakeModel(always=True),
        pipeline_factory=lambda m: pipeline,
        detect_speech=sentence_vad,
        on_batch=batch_sizes.append,
    )
    segments, summary, events = collect(
        transcriber, long_audio(300), batch_size=4, strategy="batched"
    )
    assert summary.strategy == "batched" and summary.batch_size == 4
    starts = [s.start for s in segments]
    assert starts == sorted(starts)  # tail decoded later, still emitted in time order
    assert [s.id for s in segments] == list(range(len(segments)))
    # Every sentence (5 s steps) is covered exactly once despite the dropped tail.
    covered = sorted(round(s.start / 5) for s in segments)
    assert covered == list(range(len(covered))) and len(covered) == 60
    assert all(w <= 30.0 for call in pipeline.calls for w in call)
    progress = [e.fraction for e in events if hasattr(e, "fraction")]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_a_failed_window_is_redone_with_temperature_fallback(tmp_path):
    model = FakeModel(always=True, text="texto refeito")
    transcriber = fake_transcriber(
        tmp_path,
        model,
        pipeline_factory=lambda m: FakePipeline(fail={0}),
        detect_speech=sentence_vad,
    )
    segments, summary, _ = collect(transcriber, long_audio(120), strategy="batched")
    assert summary.redecoded_windows == 1
    assert segments[0].text == "texto refeito"
    assert model.calls[0]["temperature"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert model.calls[0]["vad_filter"] is False


def test_max_quality_decodes_long_audio_sequentially(tmp_path):
    model = FakeModel(always=True)
    transcriber = fake_transcriber(
        tmp_path, model, pipeline_factory=lambda m: pytest.fail("batched")
    )
    _, summary, _ = collect(transcriber, long_audio(90), profile="max_quality")
    assert summary.strategy == "sequential" and model.calls[0]["vad_filter"]


def test_spans_for_vad_and_batches_carry_domain_attributes(tmp_path, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from asr_mesh.services.transcription import core

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(core, "tracer", provider.get_tracer("test"))
    transcriber = fake_transcriber(
        tmp_path,
        FakeModel(always=True),
        pipeline_factory=lambda m: FakePipeline(),
        detect_speech=sentence_vad,
    )
    collect(transcriber, long_audio(120), strategy="batched")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"transcription.decode", "transcription.vad", "transcription.batch"} <= set(spans)
    decode = spans["transcription.decode"].attributes
    for key in (
        "asr.audio.duration_s",
        "asr.rtf",
        "asr.model",
        "asr.device",
        "asr.compute_type",
        "asr.batch_size",
        "asr.queue_wait_s",
    ):
        assert key in decode, key
    assert spans["transcription.batch"].attributes["asr.batch_size"] >= 1
    assert any(e.name == "progress" for e in spans["transcription.decode"].events)
