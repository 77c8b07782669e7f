"""Pure pieces of the HTTP front door: OpenAI form validation, response shapes, error mapping.

No web framework and no gRPC here: the app (asr_mesh/services/http/app.py) turns a parsed form into
a `TranscriptionRequest`, asks the gateway, and renders the mesh's own transcript JSON (see
docs/json-schema.md) into the shape OpenAI's `/v1/audio/transcriptions` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from asr_mesh.services.common.options import DEFAULT_LANGUAGE

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
DEFAULT_MODEL_ALIASES = frozenset({"whisper-1", ""})
"""OpenAI model names that mean "the mesh's default model"."""

AUDIO_MEDIA_PREFIXES = ("audio/", "video/")
AUDIO_MEDIA_TYPES = frozenset(
    {"application/octet-stream", "application/ogg", "application/x-flac", ""}
)
"""File part media types accepted as audio (clients often send octet-stream or nothing)."""

LANGUAGE_NAMES = {
    "pt": "portuguese",
    "en": "english",
    "es": "spanish",
    "fr": "french",
    "de": "german",
    "it": "italian",
    "ja": "japanese",
    "zh": "chinese",
    "ru": "russian",
    "nl": "dutch",
}
"""verbose_json's `language` is Whisper's English name for the language (OpenAI does the same)."""

# HTTP status for each gRPC status name (google.rpc.Code's documented HTTP mapping), and OpenAI's
# error `type`: the one table of the service.
STATUS_TABLE: dict[str, tuple[int, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "NOT_FOUND": (404, "invalid_request_error"),
    "ALREADY_EXISTS": (409, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout"),
    "CANCELLED": (499, "cancelled"),
    "UNIMPLEMENTED": (501, "server_error"),
    "INTERNAL": (500, "server_error"),
    "UNKNOWN": (500, "server_error"),
    "DATA_LOSS": (500, "server_error"),
    "ABORTED": (409, "server_error"),
}
REASON_STATUS: dict[str, int] = {"LIMIT_EXCEEDED": 413}
"""Error reasons (google.rpc.ErrorInfo) whose HTTP status is more precise than their code's."""


class HttpError(Exception):
    """An error the HTTP layer itself finds (bad form, too large, no token), OpenAI-shaped."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def http_error_for(
    status_name: str, reason: str, message: str, retry_after_s: float | None = None, field: str = ""
) -> HttpError:
    """The HTTP error for a gRPC status (by name) and the mesh's error reason."""
    status, kind = STATUS_TABLE.get(status_name, (500, "server_error"))
    status = REASON_STATUS.get(reason, status)
    headers = {}
    if status == 429:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s or 1.0)))
    if status == 503:
        headers["Retry-After"] = "1"
    return HttpError(
        status,
        message,
        type=kind,
        param=field or None,
        code=(reason or status_name).lower(),
        headers=headers,
    )


@dataclass(frozen=True)
class TranscriptionRequest:
    """A validated `/v1/audio/transcriptions` (or `/v1/jobs`) form, without the file."""

    model: str = ""
    language: str = DEFAULT_LANGUAGE
    prompt: str = ""
    temperature: float | None = None
    response_format: str = "json"
    granularities: tuple[str, ...] = ("segment",)
    diarize: bool = False
    num_speakers: int = 0
    min_speakers: int = 0
    max_speakers: int = 0
    no_cache: bool = False
    """Run the chain even when the gateway's result cache has this file (extension field)."""

    def mesh_formats(self) -> tuple[str, ...]:
        """What to ask the mesh to render for this response format."""
        return {"srt": ("srt",), "vtt": ("vtt",)}.get(self.response_format, ("json",))


def _one(form: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name) or []
    if len(values) > 1:
        raise HttpError(
            400,
            f"'{name}' was given {len(values)} times; give it once",
            param=name,
            code="invalid_value",
        )
    return values[0].strip() if values else default


def _bool(form: Mapping[str, list[str]], name: str) -> bool:
    raw = _one(form, name, "false").lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off", ""):
        return False
    raise HttpError(
        400, f"'{name}' must be true or false, not {raw!r}", param=name, code="invalid_value"
    )


def _count(form: Mapping[str, list[str]], name: str) -> int:
    raw = _one(form, name, "0")
    try:
        value = int(raw or "0")
    except ValueError:
        raise HttpError(
            400, f"'{name}' must be a whole number, not {raw!r}", param=name, code="invalid_value"
        ) from None
    if not 0 <= value <= 64:
        raise HttpError(
            400, f"'{name}' must be between 0 and 64, not {value}", param=name, code="invalid_value"
        )
    return value


def parse_transcription_form(form: Mapping[str, list[str]]) -> TranscriptionRequest:
    """Validate the text fields of an OpenAI transcription form (name → list of values).

    Raises `HttpError(400)` with OpenAI's `param` naming the field at fault.
    """
    response_format = _one(form, "response_format", "json").lower()
    if response_format not in RESPONSE_FORMATS:
        raise HttpError(
            400,
            f"response_format {response_format!r} is not supported; choose from "
            f"{', '.join(RESPONSE_FORMATS)}",
            param="response_format",
            code="invalid_value",
        )
    granularities = tuple(
        dict.fromkeys(
            g.strip().lower()
            for g in [
                *form.get("timestamp_granularities[]", []),
                *form.get("timestamp_granularities", []),
            ]
            if g.strip()
        )
    )
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise HttpError(
            400,
            f"timestamp_granularities {unknown[0]!r} is not supported; choose from word, segment",
            param="timestamp_granularities",
            code="invalid_value",
        )
    if granularities and response_format != "verbose_json":
        raise HttpError(
            400,
            "timestamp_granularities needs response_format=verbose_json",
            param="timestamp_granularities",
            code="invalid_value",
        )
    raw_temperature = _one(form, "temperature")
    temperature = None
    if raw_temperature:
        try:
            temperature = float(raw_temperature)
        except ValueError:
            raise HttpError(
                400,
                f"temperature must be a number, not {raw_temperature!r}",
                param="temperature",
                code="invalid_value",
            ) from None
        if not 0.0 <= temperature <= 1.0:
            raise HttpError(
                400,
                f"temperature must be between 0 and 1, not {temperature:g}",
                param="temperature",
                code="invalid_value",
            )
    language = _one(form, "language") or DEFAULT_LANGUAGE
    primary = language.replace("_", "-").split("-")[0]
    if language.lower() != "auto" and (not primary.isalpha() or len(primary) not in (2, 3)):
        raise HttpError(
            400,
            f"language {language!r} is not an ISO-639-1 code (like 'pt') or a "
            "BCP-47 tag (like 'pt-BR')",
            param="language",
            code="invalid_value",
        )
    model = _one(form, "model")
    num, low, high = (
        _count(form, name) for name in ("num_speakers", "min_speakers", "max_speakers")
    )
    diarize = _bool(form, "diarize") or bool(num or low or high)
    if low and high and low > high:
        raise HttpError(
            400,
            f"min_speakers ({low}) is larger than max_speakers ({high})",
            param="min_speakers",
            code="invalid_value",
        )
    return TranscriptionRequest(
        model="" if model.lower() in DEFAULT_MODEL_ALIASES else model,
        language=language,
        prompt=_one(form, "prompt"),
        temperature=temperature,
        response_format=response_format,
        granularities=granularities or ("segment",),
        diarize=diarize,
        num_speakers=num,
        min_speakers=low,
        max_speakers=high,
        no_cache=_bool(form, "no_cache"),
    )


def check_file_media_type(media_type: str, filename: str) -> None:
    """Refuse a file part that says it is not audio or video (before any byte reaches the mesh)."""
    kind = (media_type or "").split(";")[0].strip().lower()
    if kind.startswith(AUDIO_MEDIA_PREFIXES) or kind in AUDIO_MEDIA_TYPES:
        return
    raise HttpError(
        400,
        f"file {filename!r} has content type {kind!r}, which is not audio or video; "
        "send an audio file (wav, mp3, m4a, ogg, flac, webm, ...)",
        param="file",
        code="invalid_file_format",
    )


def transcript_text(mesh_json: Mapping) -> str:
    """The whole transcript as one line: the segments' texts joined by spaces."""
    return " ".join(s["text"].strip() for s in mesh_json.get("segments", []) if s["text"].strip())


def to_openai_json(mesh_json: Mapping) -> dict:
    """`response_format=json`: `{"text": ...}`."""
    return {"text": transcript_text(mesh_json)}


def to_verbose_json(mesh_json: Mapping, request: TranscriptionRequest) -> dict:
    """`response_format=verbose_json` in OpenAI's shape, filled from the mesh's transcript JSON.

    Fields the mesh has no figure for are filled honestly: `tokens` is empty (the mesh does not
    return token ids), `seek` is the segment start in Whisper's 10 ms frames, `temperature` is the
    one asked for (0 when unset). Diarized segments and words also carry `speaker`, which OpenAI
    clients ignore.
    """
    language_code = str(mesh_json.get("language") or request.language)
    primary = language_code.split("-")[0].lower()
    segments = []
    for index, seg in enumerate(mesh_json.get("segments", [])):
        item = {
            "id": index,
            "seek": int(round(float(seg["start"]) * 100)),
            "start": float(seg["start"]),
            "end": float(seg["end"]),
            "text": seg["text"],
            "tokens": [],
            "temperature": request.temperature or 0.0,
            "avg_logprob": float(seg.get("avg_logprob") or 0.0),
            "compression_ratio": float(seg.get("compression_ratio") or 0.0),
            "no_speech_prob": float(seg.get("no_speech_prob") or 0.0),
        }
        if seg.get("speaker"):
            item["speaker"] = seg["speaker"]
        segments.append(item)
    body = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(primary, language_code),
        "duration": float(mesh_json.get("duration") or 0.0),
        "text": transcript_text(mesh_json),
    }
    if "segment" in request.granularities:
        body["segments"] = segments
    if "word" in request.granularities:
        words = []
        for seg in mesh_json.get("segments", []):
            for word in seg.get("words", []):
                item = {
                    "word": word["word"],
                    "start": float(word["start"]),
                    "end": float(word["end"]),
                }
                if word.get("speaker"):
                    item["speaker"] = word["speaker"]
                words.append(item)
        body["words"] = words
    return body
