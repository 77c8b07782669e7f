"""The offline default backend: silero voice activity + GE2E speaker embeddings + clustering.

Speech regions come from the silero VAD that ships with faster-whisper; each region is cut into
1.6 s windows (the span resemblyzer's GE2E encoder was trained on) every `hop` seconds; window
embeddings are clustered (see `clustering`), window labels vote on a 20 ms grid, short flickers
are absorbed and short pauses closed. Everything runs on the CPU and nothing is downloaded:
the encoder weights (`pretrained.pt`) ship inside the resemblyzer package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pyannote.core import Annotation, Segment

from services.common.domain import SAMPLE_RATE
from services.diarization.clustering import (
    ClusteringOptions,
    cluster_embeddings,
    fill_gaps,
    smooth_runs,
)

BACKEND_NAME = "embedding-clustering"
WINDOW_FRAMES = 160  # resemblyzer partial utterance: 160 mel frames of 10 ms
MEL_HOP = SAMPLE_RATE // 100
GRID = 0.02  # seconds per vote cell

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
    """Turn edges grow this far into the surrounding silence (never past a pause's middle)."""
    batch_size: int = 64
    clustering: ClusteringOptions = field(default_factory=ClusteringOptions)


@dataclass
class _Windows:
    region: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


def speech_regions(audio: np.ndarray, options: EmbeddingBackendOptions) -> list[tuple[float, float]]:
    """Silero VAD (faster-whisper's copy) → speech regions in seconds."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0:
        return []
    stamps = get_speech_timestamps(
        audio,
        VadOptions(
            threshold=options.vad_threshold,
            min_silence_duration_ms=options.vad_min_silence_ms,
            speech_pad_ms=options.vad_speech_pad_ms,
        ),
        sampling_rate=SAMPLE_RATE,
    )
    return [(s["start"] / SAMPLE_RATE, min(s["end"], len(audio)) / SAMPLE_RATE) for s in stamps]


def window_starts(num_frames: int, hop_frames: int) -> list[int]:
    """Mel-frame offsets of windows covering `num_frames` (the last one flush with the end)."""
    if num_frames <= WINDOW_FRAMES:
        return [0]
    starts = list(range(0, num_frames - WINDOW_FRAMES + 1, hop_frames))
    if starts[-1] + WINDOW_FRAMES < num_frames:
        starts.append(num_frames - WINDOW_FRAMES)
    return starts


class VoiceEncoderEmbedder:
    """resemblyzer's pretrained GE2E encoder on the CPU, batched over mel windows."""

    def __init__(self, torch_threads: int = 0):
        import torch
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import wav_to_mel_spectrogram

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        torch.manual_seed(0)
        self._torch = torch
        self._mel = wav_to_mel_spectrogram
        self._encoder = VoiceEncoder("cpu", verbose=False).eval()
        # librosa compiles its kernels on first use (seconds); pay that at startup, not per call.
        self.embed(np.stack([self.mel(np.zeros(SAMPLE_RATE, dtype=np.float32))[:WINDOW_FRAMES]]))

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """(frames, 40) mel spectrogram as the encoder expects it."""
        return self._mel(wav)

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """(batch, 160, 40) mels → (batch, 256) L2-normalised embeddings."""
        with self._torch.inference_mode():
            return self._encoder(self._torch.from_numpy(np.ascontiguousarray(mels))).numpy()


class EmbeddingClusteringBackend:
    """Default offline backend; `annotate` returns a pyannote `Annotation` of speaker turns."""

    name = BACKEND_NAME

    def __init__(self, embedder: VoiceEncoderEmbedder | None = None,
                 options: EmbeddingBackendOptions | None = None, torch_threads: int = 0):
        self.options = options or EmbeddingBackendOptions()
        self.embedder = embedder or VoiceEncoderEmbedder(torch_threads)

    def _windows(self, audio: np.ndarray, regions: list[tuple[float, float]], progress: Progress) -> _Windows:
        opts = self.options
        hop_frames = max(1, round(opts.hop * 100))
        out = _Windows()
        pending: list[np.ndarray] = []
        total = sum(e - s for s, e in regions) or 1.0
        done = 0.0

        def flush() -> None:
            if pending:
                out.embeddings.extend(self.embedder.embed(np.stack(pending)))
                pending.clear()

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
        return out

    def annotate(self, audio: np.ndarray, min_speakers: int, max_speakers: int,
                 progress: Progress = lambda f, m: None) -> Annotation:
        """Diarize float32 16 kHz mono audio with a speaker count within the bounds."""
        opts = self.options
        annotation = Annotation()
        regions = speech_regions(audio, opts)
        progress(0.1, f"found {len(regions)} speech regions")
        windows = self._windows(audio, regions, progress)
        if not windows.embeddings:
            return annotation
        labels = cluster_embeddings(np.stack(windows.embeddings), min_speakers, max_speakers, opts.clustering)
        progress(0.95, "clustered speech windows")
        runs = list(self._vote(regions, windows, labels))
        runs = smooth_runs(runs, opts.min_turn)
        runs = fill_gaps(runs, opts.max_gap_fill, opts.turn_extension, len(audio) / SAMPLE_RATE)
        for label, start, end in runs:
            annotation[Segment(start, end)] = int(label)
        return annotation

    def _vote(self, regions, windows: _Windows, labels: np.ndarray) -> Iterator[tuple[int, float, float]]:
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
