"""The offline default backend: silero voice activity + GE2E speaker embeddings + clustering.

Speech regions come from the silero VAD that ships with faster-whisper, run on 60 s chunks so its
working memory stays flat however long the audio; each region is cut into 1.6 s windows (the
span resemblyzer's GE2E encoder was trained on) every `hop` seconds; each window's embedding is
averaged with its neighbours in the same region (`context`); in noisy audio (estimated SNR under
15 dB) part of the file's mean embedding, the noise's common share, is removed (`center`); the
embeddings are clustered (see `clustering`), window labels vote on a 20 ms grid, short
flickers are absorbed and short pauses closed. Everything runs on the CPU and nothing is
downloaded: the encoder weights (`pretrained.pt`) ship inside the resemblyzer package. Memory:
one batch of mel windows and one 256-float embedding per window (about 9,000 per hour of speech)
on top of the audio itself.

Overlapped speech comes from an optional second pass (`overlap`, off unless `overlap.enabled`): a
1.6 s window covering a backchannel spoken over another voice is only slightly closer to the
second speaker's centroid (cosine 0.57-0.70) than ordinary windows are (up to 0.73 when the two
voices are similar), so no threshold on the clustering windows separates them; short windows
compared with the rest of their own turn do (see `overlap`). Overlaps found lie inside the
turns, so the exclusive turns are the same with or without them.

Per stage there is a span (`diarization.vad`, `diarization.embedding` with `asr.batch_size` and
the batch count, `diarization.clustering`); `progress` is called between chunks and batches,
and raises `Cancelled` once the caller has gone, which is where the work stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry import trace
from pyannote.core import Annotation, Segment

from asr_mesh.services.common.domain import SAMPLE_RATE
from asr_mesh.services.diarization.clustering import (
    ClusteringOptions,
    center,
    cluster_embeddings,
    fill_gaps,
    smooth_embeddings,
    smooth_runs,
)
from asr_mesh.services.diarization.core import SECONDARY_TRACK_PREFIX
from asr_mesh.services.diarization.overlap import OverlapOptions, detect_overlaps

BACKEND_NAME = "embedding-clustering"
WINDOW_FRAMES = 160  # resemblyzer partial utterance: 160 mel frames of 10 ms
MEL_HOP = SAMPLE_RATE // 100
GRID = 0.02  # seconds per vote cell
ENCODER_MODEL = "resemblyzer-ge2e"
tracer = trace.get_tracer(__name__)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class EmbeddingBackendOptions:
    """Tuning of the default backend (defaults tuned on corpus-dev, see the module docstring)."""

    hop: float = 0.4
    """Seconds between window starts; cost grows as 1/hop."""
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 200
    vad_speech_pad_ms: int = 60
    min_region: float = 0.25
    """Speech regions shorter than this carry no embedding; they take a neighbour's speaker."""
    min_turn: float = 0.6
    """Turns shorter than this that touch another turn are absorbed into it."""
    max_gap_fill: float = 1.0
    """Pauses shorter than this within one speaker's speech are closed."""
    turn_extension: float = 0.45
    """Turn edges grow this far into the surrounding silence (never past a pause's middle).
    The truth of audio made by the project's corpus generator (`../shared/tools/gen_corpus.py`,
    the way held-out audio is made) counts each utterance's quiet onset and release: 0.45 fits
    it. References that mark speech only (build/corpus-validate trims utterances) score better at
    0 (docs/benchmarks.md); ASR_DIARIZATION_TURN_EXTENSION_S=0."""
    batch_size: int = 64
    vad_chunk_s: float = 60.0
    """Voice activity runs on chunks this long, so its working memory does not grow with the
    audio (faster-whisper's silero copies and reshapes the whole input at once)."""
    context: int = 4
    """Each window's embedding is averaged with this many neighbours per side in its region
    (4, about 4.8 s of speech, chosen on the tune split: the six-voice talk counted 5 at 2)."""
    noisy_snr_db: float = 15.0
    """Below this estimated SNR (speech vs non-speech power) the audio counts as noisy: window
    embeddings are centred (`noisy_centering`) and cut at `noisy_threshold`. Fitted on the
    hard cases, where 10-12 dB white noise otherwise merges voices while clean and 25 dB files
    stay well above it (docs/benchmarks.md)."""
    centering: float = 0.5
    """Share of the file's mean embedding removed in audio not counted as noisy (see `center`;
    babble noise can hide every pause, so the SNR estimate misses it). 0.5 chosen on the tune
    split, dev and hard conversations (docs/benchmarks.md)."""
    noisy_centering: float = 0.4
    noisy_threshold: float = 0.35
    clustering: ClusteringOptions = field(default_factory=ClusteringOptions)
    overlap: OverlapOptions = field(default_factory=OverlapOptions)
    """Overlapped-speech pass (off by default; `overlap.enabled=True` switches it on, for about
    60% more time)."""


@dataclass
class Windows:
    """Speech windows of one file: region index, start and end (s) and GE2E embedding each."""

    region: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


def speech_regions(
    audio: np.ndarray, options: EmbeddingBackendOptions, progress: Progress = lambda f, m: None
) -> list[tuple[float, float]]:
    """Silero VAD (faster-whisper's copy) → speech regions in seconds, chunk by chunk.

    Chunks are cut on silero's 512-sample frames; a region that runs into the end of one chunk
    and one that starts with the next are joined when the gap is shorter than the minimum
    silence, so chunking changes nothing but the (few) regions on chunk edges.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0:
        return []
    vad = VadOptions(
        threshold=options.vad_threshold,
        min_silence_duration_ms=options.vad_min_silence_ms,
        speech_pad_ms=options.vad_speech_pad_ms,
    )
    chunk = max(512, int(options.vad_chunk_s * SAMPLE_RATE) // 512 * 512)
    join = (options.vad_min_silence_ms + 2 * options.vad_speech_pad_ms) / 1000
    regions: list[list[float]] = []
    for offset in range(0, len(audio), chunk):
        piece = audio[offset : offset + chunk]
        for stamp in get_speech_timestamps(piece, vad, sampling_rate=SAMPLE_RATE):
            start = (offset + stamp["start"]) / SAMPLE_RATE
            end = (offset + min(stamp["end"], len(piece))) / SAMPLE_RATE
            if (
                regions
                and offset
                and start - regions[-1][1] < join
                and start <= offset / SAMPLE_RATE + join
            ):
                regions[-1][1] = end
            else:
                regions.append([start, end])
        progress(0.1 * min(1.0, (offset + chunk) / len(audio)), "detecting speech")
    return [(s, e) for s, e in regions]


def estimate_snr_db(audio: np.ndarray, regions: list[tuple[float, float]]) -> float:
    """Speech power over non-speech power (dB), from the voice-activity regions; 99 if silent.

    Summed region by region and in 1 M-sample slices, so no copy of the audio is made.
    """
    total = sum(
        float(np.dot(audio[i : i + 2**20], audio[i : i + 2**20]))
        for i in range(0, len(audio), 2**20)
    )
    speech = 0.0
    speech_n = 0
    for start, end in regions:
        piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        speech += float(np.dot(piece, piece))
        speech_n += len(piece)
    rest_n = len(audio) - speech_n
    if speech_n == 0 or rest_n < SAMPLE_RATE // 10:
        return 99.0  # no pause to measure the background in: assume clean
    noise = max(total - speech, 0.0) / rest_n
    return float(min(99.0, 10 * np.log10(max(speech / speech_n, 1e-12) / max(noise, 1e-12))))


def window_starts(num_frames: int, hop_frames: int) -> list[int]:
    """Mel-frame offsets of windows covering `num_frames` (the last one flush with the end)."""
    if num_frames <= WINDOW_FRAMES:
        return [0]
    starts = list(range(0, num_frames - WINDOW_FRAMES + 1, hop_frames))
    if starts[-1] + WINDOW_FRAMES < num_frames:
        starts.append(num_frames - WINDOW_FRAMES)
    return starts


class VoiceEncoderEmbedder:
    """resemblyzer's pretrained GE2E encoder on the CPU, batched over mel windows.

    `on_batch(size)` is called with the size of each batch the encoder runs (for metrics).
    """

    def __init__(self, torch_threads: int = 0, on_batch: Callable[[int], None] | None = None):
        import torch
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import wav_to_mel_spectrogram

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        torch.manual_seed(0)
        self._torch = torch
        self._mel = wav_to_mel_spectrogram
        self._encoder = VoiceEncoder("cpu", verbose=False).eval()
        self._on_batch = on_batch or (lambda size: None)
        # librosa compiles its kernels on first use (seconds); pay that at startup, not per call.
        self.embed(np.stack([self.mel(np.zeros(SAMPLE_RATE, dtype=np.float32))[:WINDOW_FRAMES]]))

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """(frames, 40) mel spectrogram as the encoder expects it."""
        mel: np.ndarray = self._mel(wav)
        return mel

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """(batch, 160, 40) mels → (batch, 256) L2-normalised embeddings."""
        self._on_batch(len(mels))
        with self._torch.inference_mode():
            embeddings: np.ndarray = self._encoder(
                self._torch.from_numpy(np.ascontiguousarray(mels))
            ).numpy()
        return embeddings


class EmbeddingClusteringBackend:
    """Default offline backend; `annotate` returns a pyannote `Annotation` of speaker turns."""

    name = BACKEND_NAME

    def __init__(
        self,
        embedder: VoiceEncoderEmbedder | None = None,
        options: EmbeddingBackendOptions | None = None,
        torch_threads: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ):
        """`on_batch` goes to the encoder this backend builds.

        An injected `embedder` has its own.
        """
        self.options = options or EmbeddingBackendOptions()
        self.embedder = embedder or VoiceEncoderEmbedder(torch_threads, on_batch)

    def _windows(
        self, audio: np.ndarray, regions: list[tuple[float, float]], progress: Progress
    ) -> Windows:
        opts = self.options
        hop_frames = max(1, round(opts.hop * 100))
        out = Windows()
        pending: list[np.ndarray] = []
        total = sum(e - s for s, e in regions) or 1.0
        done = 0.0
        batches = 0

        def flush() -> None:
            nonlocal batches
            if pending:
                out.embeddings.extend(self.embedder.embed(np.stack(pending)))
                pending.clear()
                batches += 1

        for index, (start, end) in enumerate(regions):
            done += end - start
            if end - start < opts.min_region:
                continue
            first = int(start * SAMPLE_RATE)
            mel = self.embedder.mel(audio[first : int(end * SAMPLE_RATE)])
            for offset in window_starts(len(mel), hop_frames):
                window = mel[offset : offset + WINDOW_FRAMES]
                if len(window) < WINDOW_FRAMES:  # short region: zero-pad, as resemblyzer does
                    window = np.pad(window, ((0, WINDOW_FRAMES - len(window)), (0, 0)))
                pending.append(window)
                out.region.append(index)
                out.start.append(start + offset / 100)
                out.end.append(min(end, start + (offset + WINDOW_FRAMES) / 100))
                # Bounded memory: only one batch of mel windows is alive at a time.
                if len(pending) >= opts.batch_size:
                    flush()
                    progress(0.1 + 0.8 * done / total, "embedding speech windows")
        flush()
        trace.get_current_span().set_attributes(
            {
                "asr.batch_size": opts.batch_size,
                "asr.diarization.batches": batches,
                "asr.diarization.windows": len(out.embeddings),
            }
        )
        return out

    def annotate(
        self,
        audio: np.ndarray,
        min_speakers: int,
        max_speakers: int,
        progress: Progress = lambda f, m: None,
    ) -> Annotation:
        """Diarize float32 16 kHz mono audio with a speaker count within the bounds."""
        opts = self.options
        annotation = Annotation()
        regions, windows = self.embed_speech(audio, progress)
        if not windows.embeddings:
            return annotation
        snr = estimate_snr_db(audio, regions)
        labels, runs = self.label_windows(
            regions, windows, snr, len(audio) / SAMPLE_RATE, min_speakers, max_speakers
        )
        progress(0.95, "clustered speech windows")
        for index, (label, start, end) in enumerate(runs):
            annotation[Segment(start, end), f"turn{index}"] = int(label)
        if opts.overlap.enabled and labels.max() > 0:
            with tracer.start_as_current_span("diarization.overlap") as span:
                found = detect_overlaps(
                    audio,
                    regions,
                    runs,
                    self.embedder.mel,
                    self.embedder.embed,
                    opts.overlap,
                    opts.batch_size,
                    lambda: progress(0.97, "detecting overlapped speech"),
                )
                span.set_attribute("asr.diarization.overlaps", len(found))
            for index, (label, start, end) in enumerate(found):
                annotation[Segment(start, end), f"{SECONDARY_TRACK_PREFIX}{index}"] = int(label)
        return annotation

    def embed_speech(
        self, audio: np.ndarray, progress: Progress = lambda f, m: None
    ) -> tuple[list[tuple[float, float]], Windows]:
        """Voice activity, then one GE2E embedding per window of speech (the models' part)."""
        duration = len(audio) / SAMPLE_RATE
        with tracer.start_as_current_span(
            "diarization.vad",
            attributes={"asr.audio.duration_s": duration, "asr.diarization.backend": self.name},
        ) as span:
            regions = speech_regions(audio, self.options, progress)
            span.set_attributes(
                {
                    "asr.diarization.speech_regions": len(regions),
                    "asr.diarization.speech_s": sum(e - s for s, e in regions),
                }
            )
        progress(0.1, f"found {len(regions)} speech regions")
        with tracer.start_as_current_span(
            "diarization.embedding",
            attributes={"asr.model": ENCODER_MODEL, "asr.diarization.backend": self.name},
        ):
            windows = self._windows(audio, regions, progress)
        return regions, windows

    def label_windows(
        self,
        regions: list[tuple[float, float]],
        windows: Windows,
        snr: float,
        duration: float,
        min_speakers: int,
        max_speakers: int,
    ) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
        """Window embeddings → (window labels, smoothed (label, start, end) turns). No models."""
        opts = self.options
        noisy = snr < opts.noisy_snr_db
        with tracer.start_as_current_span(
            "diarization.clustering",
            attributes={
                "asr.diarization.min_speakers": min_speakers,
                "asr.diarization.max_speakers": max_speakers,
                "asr.diarization.snr_db": snr,
                "asr.diarization.noisy": noisy,
            },
        ) as span:
            embeddings = smooth_embeddings(
                np.stack(windows.embeddings), np.asarray(windows.region), opts.context
            )
            clustering = opts.clustering
            if noisy:
                embeddings = center(embeddings, opts.noisy_centering)
                clustering = replace(clustering, threshold=opts.noisy_threshold)
            elif opts.centering > 0:
                embeddings = center(embeddings, opts.centering)
            # Windows sharing audio or smoothing context are not each other's evidence.
            radius = 2 * opts.context + int(np.ceil(WINDOW_FRAMES / 100 / opts.hop))
            labels = cluster_embeddings(
                embeddings,
                min_speakers,
                max_speakers,
                clustering,
                groups=np.asarray(windows.region),
                radius=radius,
            )
            span.set_attributes(
                {
                    "asr.diarization.windows": len(labels),
                    "asr.diarization.speakers": int(labels.max()) + 1,
                }
            )
        return labels, self.runs_from_labels(regions, windows, labels, duration)

    def runs_from_labels(
        self,
        regions: list[tuple[float, float]],
        windows: Windows,
        labels: np.ndarray,
        duration: float,
    ) -> list[tuple[int, float, float]]:
        """Window labels → smoothed turns with this backend's options (`turns_from_labels`)."""
        return turns_from_labels(regions, windows, labels, duration, self.options)


def turns_from_labels(
    regions: list[tuple[float, float]],
    windows: Windows,
    labels: np.ndarray,
    duration: float,
    options: EmbeddingBackendOptions,
) -> list[tuple[int, float, float]]:
    """Window labels → (label, start, end) turns: Hann-weighted votes on a 20 ms grid per
    region (`_vote`), flickers under `min_turn` absorbed, pauses under `max_gap_fill` within a
    speaker closed, edges widened by `turn_extension`. Pure: no models."""
    runs = list(_vote(regions, windows, np.asarray(labels)))
    runs = smooth_runs(runs, options.min_turn)
    return fill_gaps(runs, options.max_gap_fill, options.turn_extension, duration)


def _vote(
    regions: list[tuple[float, float]], windows: Windows, labels: np.ndarray
) -> Iterator[tuple[int, float, float]]:
    """Per region, Hann-weighted window votes on a 20 ms grid → (label, start, end) runs."""
    k = int(labels.max()) + 1
    region_of = np.asarray(windows.region)
    starts, ends = np.asarray(windows.start), np.asarray(windows.end)
    # A region too short to embed takes the speaker of the previous region (or, before
    # any, of the first embedded one): a breath or a "sim" rarely changes the speaker.
    last_label = int(labels[0])
    for index, (start, end) in enumerate(regions):
        members = np.flatnonzero(region_of == index)
        if len(members) == 0:
            yield last_label, start, end
            continue
        cells = max(1, int(np.ceil((end - start) / GRID)))
        centres = start + (np.arange(cells) + 0.5) * GRID
        votes = np.zeros((cells, k))
        for w in members:
            span = max(ends[w] - starts[w], GRID)
            pos = (centres - starts[w]) / span
            inside = (pos >= 0) & (pos <= 1)
            # Hann weight: a window's centre says more about "now" than its edges.
            votes[inside, labels[w]] += 0.05 + np.sin(np.pi * pos[inside]) ** 2
        # Cells no window covers (region tail) inherit the nearest covered cell's vote.
        covered = votes.sum(axis=1) > 0
        if not covered.all():
            idx = np.where(covered, np.arange(cells), -1)
            idx = np.maximum.accumulate(idx)
            first = int(np.argmax(covered))
            idx[idx < 0] = first
            votes = votes[idx]
        cell_labels = np.argmax(votes, axis=1)
        change = np.flatnonzero(np.diff(cell_labels)) + 1
        bounds = [0, *change.tolist(), cells]
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield int(cell_labels[a]), start + a * GRID, min(end, start + b * GRID)
        last_label = int(cell_labels[-1])
