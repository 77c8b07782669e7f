"""The request options of the mesh, server side: defaults, enum ↔ name maps, one validation.

A request's options are one message, `asr.common.v1.RecognitionOptions`, grouped by the stage
that reads them: `audio` (preprocess), `transcription`, `diarization`, `output` (merge). The
gateway takes it from `TranscribeConfig.options`, or builds it from the deprecated flat fields
of older callers (`FLAT_FIELDS`, the one table of how they correspond), validates it and fills
in the defaults once (`effective`); from then on each stage's request is built from its own
sub-message. This module is the only place on the server side that writes a default or maps an
enum to a name; the client keeps its own in `asr_mesh.client.sdk`.

Protobuf messages only, no gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asr.common.v1 import document_pb2, options_pb2, quality_pb2
from asr.common.v1 import streaming_pb2 as common_streaming_pb2
from asr_mesh.client.flat_fields import FLAT_FIELDS
from asr_mesh.services.common.domain_errors import InvalidInput

DEFAULT_LANGUAGE = "pt-BR"
"""BCP-47 language when a request names none (the mesh is built for Brazilian Portuguese)."""
DEFAULT_FORMATS = (document_pb2.OUTPUT_FORMAT_JSON,)
"""Documents rendered when a request asks for none."""
DEFAULT_LOUDNESS_NORMALIZATION = False
"""EBU R128 before transcription. Off by default: on the tune split of the validation corpus
it raised clips WER well above plain faster-whisper's (`benchmarks/tune_level.py`, see
docs/benchmarks.md), and held-out audio showed the same; it also forces a whole-file filter
before transcription can start. Whisper's log-mel features are normalised per window, so the
absolute level matters far less than loudnorm's dynamic gain changes."""
DEFAULT_TRIM_SILENCE = False
"""Leading/trailing silence trimming. Off by default although it lowered WER on corpus-dev
(docs/benchmarks.md): it shifts every time offset by the cut lead-in, which the preprocess API
does not report, so subtitles would drift from the media."""

FORMAT_NAMES: dict[int, str] = {
    document_pb2.OUTPUT_FORMAT_JSON: "json",
    document_pb2.OUTPUT_FORMAT_SRT: "srt",
    document_pb2.OUTPUT_FORMAT_VTT: "vtt",
    document_pb2.OUTPUT_FORMAT_TXT: "txt",
    document_pb2.OUTPUT_FORMAT_RTTM: "rttm",
}
"""asr.common.v1.OutputFormat → the name the merge core and file extensions use."""
FORMAT_ENUMS: dict[str, int] = {name: value for value, name in FORMAT_NAMES.items()}

PROFILE_NAMES: dict[int, str] = {
    quality_pb2.QUALITY_PROFILE_UNSPECIFIED: "",
    quality_pb2.QUALITY_PROFILE_MAX_QUALITY: "max_quality",
    quality_pb2.QUALITY_PROFILE_BALANCED: "balanced",
    quality_pb2.QUALITY_PROFILE_FAST: "fast",
}
"""asr.common.v1.QualityProfile → the transcription core's profile name ("" = its default)."""
PROFILE_ENUMS: dict[str, int] = {name: value for value, name in PROFILE_NAMES.items()}

# FLAT_FIELDS (deprecated flat field → sub-message, field) is the client's table
# (asr_mesh.client.flat_fields): one place for both sides.

_SPEAKER_FIELDS = ("diarize", "num_speakers", "min_speakers", "max_speakers", "speaker_names")
_STREAMING_FIELDS = ("language_code", "model", "initial_prompt")
"""The TranscriptionOptions fields a streaming session reads; the others are batch-only."""


def _get(message: Any, field: str) -> Any:
    """A field's value as plain Python: scalar, list (repeated) or dict (map)."""
    value = getattr(message, field)
    if isinstance(value, (str, bool, int, float)):
        return value
    return dict(value) if hasattr(value, "items") else list(value)


def requested(config: Any) -> options_pb2.RecognitionOptions:
    """The options a TranscribeConfig asks for, as sent: `config.options` when set (it wins as a
    whole), else the deprecated flat fields moved into place. Neither validated nor defaulted."""
    if config.HasField("options"):
        chosen = options_pb2.RecognitionOptions()
        chosen.CopyFrom(config.options)
        return chosen
    built = options_pb2.RecognitionOptions()
    for flat, (part, field) in FLAT_FIELDS.items():
        if part == "audio" and not config.HasField(flat):
            continue  # unset: the gateway's default, filled in by `effective`
        _set(getattr(built, part), field, getattr(config, flat))
    return built


def _set(message: Any, field: str, value: Any) -> None:
    target = getattr(message, field)
    if isinstance(value, (str, bool, int, float)):
        setattr(message, field, value)
    elif hasattr(target, "update"):  # a map
        target.update(value)
    else:
        target.extend(value)


def speaker_options_asked(options: options_pb2.RecognitionOptions) -> list[str]:
    """The speaker options a request sets (by their flat names), for 'needs diarization'."""
    asked = []
    for flat in _SPEAKER_FIELDS:
        part, field = FLAT_FIELDS[flat]
        if _get(getattr(options, part), field):
            asked.append(flat)
    return asked


def effective(
    options: options_pb2.RecognitionOptions, *, nested: bool = True
) -> options_pb2.RecognitionOptions:
    """`options` validated, with every default the gateway owns filled in.

    Raises InvalidInput with a sentence naming the field (`config.options.<part>.<field>`, or
    the flat name with `nested=False`). Defaults filled: language (DEFAULT_LANGUAGE), formats
    (JSON, duplicates dropped), loudness normalisation and silence trimming (off). The quality
    profile stays unspecified when unset: the transcription service owns its default.
    """

    def name(flat: str) -> str:
        part, field = FLAT_FIELDS[flat]
        return f"config.options.{part}.{field}" if nested else f"config.{flat}"

    out = options_pb2.RecognitionOptions()
    out.CopyFrom(options)
    formats = list(out.output.formats) or list(DEFAULT_FORMATS)
    for value in formats:
        if value not in FORMAT_NAMES:
            raise InvalidInput(
                f"output format {value} is not one of {', '.join(FORMAT_ENUMS)}",
                field=name("output_formats"),
            )
    del out.output.formats[:]
    out.output.formats.extend(dict.fromkeys(formats))
    dia = out.diarization
    for flat in ("num_speakers", "min_speakers", "max_speakers"):
        if getattr(dia, FLAT_FIELDS[flat][1]) < 0:
            raise InvalidInput(f"{flat} must not be negative", field=name(flat))
    if not dia.enabled:
        asked = [f for f in speaker_options_asked(out) if f != "diarize"]
        # The requested formats, not the defaulted ones: RTTM is never a default.
        asked += (
            ["RTTM output"] if document_pb2.OUTPUT_FORMAT_RTTM in options.output.formats else []
        )
        if asked:  # silently ignoring them would hand back a transcript without what was asked
            what = "diarize=true" if not nested else "options.diarization.enabled=true"
            raise InvalidInput(f"{what} is needed for {', '.join(asked)}", field=name("diarize"))
    if dia.min_speakers and dia.max_speakers and dia.min_speakers > dia.max_speakers:
        raise InvalidInput(
            f"min_speakers ({dia.min_speakers}) is larger than max_speakers ({dia.max_speakers})",
            field=name("min_speakers"),
        )
    profile = out.transcription.quality_profile
    if profile not in PROFILE_NAMES:
        raise InvalidInput(
            f"unknown quality profile {profile}; choose from "
            f"{', '.join(n for n in PROFILE_ENUMS if n)}",
            field=name("quality_profile"),
        )
    out.transcription.language_code = out.transcription.language_code or DEFAULT_LANGUAGE
    if not out.audio.HasField("loudness_normalization"):
        out.audio.loudness_normalization = DEFAULT_LOUDNESS_NORMALIZATION
    if not out.audio.HasField("trim_silence"):
        out.audio.trim_silence = DEFAULT_TRIM_SILENCE
    return out


def from_config(config: Any) -> options_pb2.RecognitionOptions:
    """A TranscribeConfig's effective options (see `requested` and `effective`)."""
    return effective(requested(config), nested=config.HasField("options"))


# -- the stored form: job records and result-cache keys -----------------------------------


def to_flat_dict(options: options_pb2.RecognitionOptions) -> dict[str, Any]:
    """Effective options as the flat, JSON-able dict job records store and cache keys hash.

    The same keys and values the gateway stored before RecognitionOptions existed (formats and
    profile by name), so stored jobs and cached results stay valid across the change.
    """
    data: dict[str, Any] = {}
    for flat, (part, field) in FLAT_FIELDS.items():
        data[flat] = _get(getattr(options, part), field)
    data["formats"] = [FORMAT_NAMES[f] for f in data.pop("output_formats")]
    data["quality_profile"] = PROFILE_NAMES[data["quality_profile"]]
    return data


def from_flat_dict(data: Mapping[str, Any]) -> options_pb2.RecognitionOptions:
    """The inverse of `to_flat_dict` (unknown keys are ignored: a newer gateway's record)."""
    values = dict(data)
    values["output_formats"] = [FORMAT_ENUMS[f] for f in values.pop("formats", ("json",))]
    values["quality_profile"] = PROFILE_ENUMS[values.get("quality_profile", "")]
    out = options_pb2.RecognitionOptions()
    for flat, (part, field) in FLAT_FIELDS.items():
        if flat in values:
            _set(getattr(out, part), field, values[flat])
    return effective(out)


# -- streaming -----------------------------------------------------------------------------


def streaming_config(config: Any) -> Any:
    """A StreamingConfig with its shared `transcription` options folded into the fields the
    transcription service reads (language_code, model, initial_prompt), which it replaces as a
    whole. Batch-only options are refused: a streaming session decodes by its latency profile."""
    if not config.HasField("transcription"):
        return config
    shared = config.transcription
    batch_only = [
        field.name for field, _ in shared.ListFields() if field.name not in _STREAMING_FIELDS
    ]
    if batch_only:
        raise InvalidInput(
            f"config.transcription.{batch_only[0]} is for batch transcription only; a streaming "
            "session decodes by its latency_profile",
            field=f"config.transcription.{batch_only[0]}",
        )
    folded = common_streaming_pb2.StreamingConfig()
    folded.CopyFrom(config)
    folded.ClearField("transcription")
    for field in _STREAMING_FIELDS:
        setattr(folded, field, getattr(shared, field))
    return folded
