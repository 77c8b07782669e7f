"""Whisper's log-mel features of long audio in blocks, so memory follows the block, not the file.

faster-whisper computes the features of the whole input at once: for an hour of audio the framed
signal, its complex spectrum (in double precision) and the magnitudes are several gigabytes at
their peak (a transcription replica reached 4.1 GB on a 1-hour file in one call, over a 4 GiB pod
limit). The features themselves are small (80 floats per 10 ms: 115 MB for an hour), and each
frame depends only on its own 25 ms of audio, except for one global step (values are floored at
the file's maximum minus 8). So the spectrum is computed in blocks of frames and the floor applied
at the end.

Audio up to `BLOCK_FRAMES` (30 minutes) takes the library's own code path, so its features are
bit-identical to plain faster-whisper's. Beyond it, the spectra are identical (checked) but the
mel projection is a matrix product whose floating-point summation order depends on the matrix
width, so values may differ from the library's by one unit in the last place (1e-7 relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

BLOCK_FRAMES = 180_000
"""Frames (10 ms each) per block: 30 minutes, about 1 GB of intermediate arrays at its peak."""


class BlockwiseFeatureExtractor(FeatureExtractor):
    """`FeatureExtractor` with the same output, computed `block_frames` frames at a time."""

    block_frames = BLOCK_FRAMES

    @classmethod
    def replacing(cls, extractor: FeatureExtractor,
                  block_frames: int = BLOCK_FRAMES) -> BlockwiseFeatureExtractor:
        """This class with `extractor`'s settings (n_fft, hop, mel filters, chunk length)."""
        blockwise = cls.__new__(cls)
        blockwise.__dict__.update(extractor.__dict__)
        blockwise.block_frames = block_frames
        return blockwise

    def __call__(self, waveform: np.ndarray, padding: int = 160,
                 chunk_length: Any = None) -> np.ndarray:
        n_fft, hop = self.n_fft, self.hop_length
        frames = 1 + (len(waveform) + padding) // hop  # as the library's centred STFT makes them
        if frames - 1 <= self.block_frames:
            return super().__call__(waveform, padding=padding, chunk_length=chunk_length)
        if chunk_length is not None:
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // hop
        waveform = waveform.astype(np.float32, copy=False)
        if padding:
            waveform = np.pad(waveform, (0, padding))
        centred = np.pad(waveform, (n_fft // 2, n_fft // 2), mode="reflect")
        window = np.hanning(n_fft + 1)[:-1].astype("float32")
        kept = 1 + (len(centred) - n_fft) // hop - 1  # the library drops the last frame
        out = np.empty((self.mel_filters.shape[0], kept), dtype=np.float32)
        for first in range(0, kept, self.block_frames):
            last = min(first + self.block_frames, kept)
            piece = centred[first * hop : (last - 1) * hop + n_fft]
            spectrum = self.stft(piece, n_fft, hop, window=window, center=False,
                                 return_complex=True).astype("complex64")
            mel = self.mel_filters @ (np.abs(spectrum) ** 2)
            out[:, first:last] = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
        np.maximum(out, out.max() - 8.0, out=out)
        out += 4.0
        out /= 4.0
        return out
