"""Whisper features of long audio in blocks: the library's values, a fraction of its memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from faster_whisper import decode_audio
from faster_whisper.feature_extractor import FeatureExtractor

from services.transcription.features import BLOCK_FRAMES, BlockwiseFeatureExtractor


@pytest.fixture(scope="module")
def long_audio(corpus) -> np.ndarray:
    return decode_audio(str(corpus / "long" / "long.flac"))[: 16000 * 240]


def test_audio_up_to_a_block_takes_the_library_path_bit_for_bit(long_audio):
    library = FeatureExtractor()
    blockwise = BlockwiseFeatureExtractor.replacing(library)
    assert blockwise.block_frames == BLOCK_FRAMES
    for seconds in (0.5, 7.0, 240.0):
        clip = long_audio[: int(seconds * 16000)]
        assert np.array_equal(blockwise(clip), library(clip))
    assert np.array_equal(blockwise(long_audio, chunk_length=30), library(long_audio, chunk_length=30))


@pytest.mark.parametrize("block_frames", [3000, 7777])
def test_long_audio_in_blocks_gives_the_librarys_features(long_audio, block_frames):
    library = FeatureExtractor()
    expected = library(long_audio)
    got = BlockwiseFeatureExtractor.replacing(library, block_frames)(long_audio)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    # Identical spectra; the mel projection's float32 sums may round differently by one ulp.
    assert np.abs(got - expected).max() <= 1e-6


def test_blocks_bound_the_memory_of_long_audio(long_audio):
    def peak(extractor) -> int:
        tracemalloc.start()
        extractor(long_audio)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    library = FeatureExtractor()
    whole, blocks = peak(library), peak(BlockwiseFeatureExtractor.replacing(library, 3000))
    # numpy reports its buffers to tracemalloc; what is left is the audio and the features.
    assert blocks < whole / 3, (blocks, whole)
