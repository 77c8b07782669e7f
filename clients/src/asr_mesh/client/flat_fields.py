"""How the deprecated flat fields of asr.gateway.v1.TranscribeConfig map onto the nested
asr.common.v1.RecognitionOptions. Pure data, no gRPC: the SDK mirrors options into the flat
fields with it (for older gateways) and the gateway reads older callers' flat fields with it.
"""

from __future__ import annotations

__all__ = ["FLAT_FIELDS"]

FLAT_FIELDS: dict[str, tuple[str, str]] = {
    "loudness_normalization": ("audio", "loudness_normalization"),
    "trim_silence": ("audio", "trim_silence"),
    "language_code": ("transcription", "language_code"),
    "model": ("transcription", "model"),
    "quality_profile": ("transcription", "quality_profile"),
    "beam_size": ("transcription", "beam_size"),
    "best_of": ("transcription", "best_of"),
    "temperatures": ("transcription", "temperatures"),
    "initial_prompt": ("transcription", "initial_prompt"),
    "hotwords": ("transcription", "hotwords"),
    "diarize": ("diarization", "enabled"),
    "num_speakers": ("diarization", "num_speakers"),
    "min_speakers": ("diarization", "min_speakers"),
    "max_speakers": ("diarization", "max_speakers"),
    "output_formats": ("output", "formats"),
    "speaker_names": ("output", "speaker_names"),
    "inverse_text_normalization": ("output", "inverse_text_normalization"),
}
"""Deprecated flat TranscribeConfig field → (RecognitionOptions sub-message, field), as in
asr.gateway.v1.TranscribeConfig's comments. The one table: the gateway reads older callers'
flat fields with it too (asr_mesh.services.common.options)."""
