"""Rendering a `MergeResult` as JSON, SRT, WebVTT, TXT and RTTM documents. Pure.

Every document is a `str` (sent as UTF-8) in Unicode NFC; accented PT-BR text and file names are
written literally (JSON with `ensure_ascii=False`).

JSON document (`render_json`), times in seconds rounded to the millisecond; documented for users
in docs/json-schema.md, with a JSON Schema in docs/transcript.schema.json that the tests validate
every produced document against::

    {
      "version": 1,
      "recording_id": "reunião.flac",        # MergeRequest.recording_id
      "trace_id": "4bf92f35...",              # MergeRequest.trace_id
      "language": "pt-BR",                    # MergeRequest.language_code (BCP-47)
      "duration": 12.5,                       # audio duration; transcript end when not given
      "speakers": ["SPEAKER_00", "SPEAKER_01"],   # order of first appearance
      "speaker_names": {"SPEAKER_00": "Ana"},     # display names given for known labels only
      "segments": [
        {"id": 0, "start": 0.0, "end": 2.1, "speaker": "SPEAKER_00" | null,
         "text": "Olá, tudo bem?",
         "avg_logprob": -0.2, "no_speech_prob": 0.01, "compression_ratio": 1.1,
         "words": [{"start": 0.0, "end": 0.4, "word": "Olá,", "probability": 0.98,
                    "speaker": "SPEAKER_00" | null}]}
      ],
      "turns": [{"speaker": "SPEAKER_00", "start": 0.0, "end": 2.3}]   # exclusive, relabelled
    }

`speaker` is null when no diarization ran. `words` is empty for segments recognised without word
timestamps.

TXT (`render_txt`): one paragraph per speaker turn (consecutive segments of one speaker),
`SPEAKER_00: text` or `Ana: text`, paragraphs separated by a blank line. Without speakers a
paragraph ends at a pause of `paragraph_pause_s` (2 s) or more and has no label.

RTTM (`render_rttm`): `SPEAKER <file-id> 1 <start> <dur> <NA> <NA> <label> <NA> <NA>`, one line per
exclusive, relabelled diarization turn, because turns are the diarizer's answer (speech without
recognised words included) and are what DER is scored on. Only when no turns were given but the
segments carry speakers (a caller supplied them) are lines built from the segments instead; with
neither, the document is empty. The file id is the recording id with whitespace replaced by `_`
(RTTM fields are whitespace-separated), or `recording` when none was given. Labels, never display
names, are written, since names may hold spaces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry import trace

from asr_mesh.services.common.domain import Segment, SpeakerTurn
from asr_mesh.services.merge.core import (
    DEFAULT_OPTIONS,
    DocumentInfo,
    MergeOptions,
    MergeResult,
    OutputFormat,
    RenderedDocument,
    nfc,
)
from asr_mesh.services.merge.subtitles import render_srt, render_vtt

JSON_SCHEMA_VERSION = 1

_tracer = trace.get_tracer(__name__)

_FILE_INFO: dict[OutputFormat, tuple[str, str]] = {
    OutputFormat.JSON: ("json", "application/json"),
    OutputFormat.SRT: ("srt", "application/x-subrip"),
    OutputFormat.VTT: ("vtt", "text/vtt"),
    OutputFormat.TXT: ("txt", "text/plain"),
    OutputFormat.RTTM: ("rttm", "text/x-rttm"),
}


def _t(seconds: float) -> float:
    return float(round(seconds, 3))


def transcript_end(result: MergeResult) -> float:
    """Latest time any segment or turn reaches (the duration when the request gave none)."""
    ends = [s.end for s in result.segments] + [t.end for t in result.turns]
    return max(ends, default=0.0)


def render_json(result: MergeResult, info: DocumentInfo) -> str:
    """The JSON document described in the module docstring."""
    names = {
        label: info.display_name(label)
        for label in result.speakers
        if info.display_name(label) != label
    }
    document = {
        "version": JSON_SCHEMA_VERSION,
        "recording_id": nfc(info.recording_id),
        "trace_id": info.trace_id,
        "language": info.language,
        "duration": _t(info.duration if info.duration > 0 else transcript_end(result)),
        "speakers": list(result.speakers),
        "speaker_names": names,
        "segments": [
            {
                "id": seg.id,
                "start": _t(seg.start),
                "end": _t(seg.end),
                "speaker": seg.speaker or None,
                "text": seg.text,
                "avg_logprob": round(seg.avg_logprob, 4),
                "no_speech_prob": round(seg.no_speech_prob, 4),
                "compression_ratio": round(seg.compression_ratio, 4),
                "words": [
                    {
                        "start": _t(w.start),
                        "end": _t(w.end),
                        "word": w.word,
                        # float32 on the wire: round away the 0.899999976 noise.
                        "probability": round(w.probability, 4),
                        "speaker": w.speaker or None,
                    }
                    for w in seg.words
                ],
            }
            for seg in result.segments
        ],
        "turns": [
            {"speaker": t.speaker, "start": _t(t.start), "end": _t(t.end)} for t in result.turns
        ],
    }
    return nfc(json.dumps(document, ensure_ascii=False, indent=2)) + "\n"


def render_txt(segments: Sequence[Segment], info: DocumentInfo, options: MergeOptions) -> str:
    """Plain text, one labelled paragraph per speaker turn (see module docstring)."""
    paragraphs: list[tuple[str, list[str]]] = []
    last_end = 0.0
    for seg in segments:
        same_turn = (
            bool(paragraphs)
            and paragraphs[-1][0] == seg.speaker
            and (bool(seg.speaker) or seg.start - last_end < options.paragraph_pause_s)
        )
        if same_turn:
            paragraphs[-1][1].append(seg.text)
        else:
            paragraphs.append((seg.speaker, [seg.text]))
        last_end = max(last_end, seg.end)
    blocks = [
        (f"{info.display_name(speaker)}: " if speaker else "") + " ".join(texts)
        for speaker, texts in paragraphs
    ]
    return nfc("\n\n".join(blocks) + "\n") if blocks else ""


def rttm_file_id(recording_id: str) -> str:
    """RTTM file id: the recording id with whitespace replaced, or "recording"."""
    return "_".join(nfc(recording_id).split()) or "recording"


def render_rttm(result: MergeResult, info: DocumentInfo) -> str:
    """NIST RTTM speaker lines from the turns (or from segments' speakers; see module doc)."""
    rows: list[SpeakerTurn] = list(result.turns)
    if not rows:
        for seg in result.segments:
            if not seg.speaker:
                continue
            if rows and rows[-1].speaker == seg.speaker and rows[-1].end >= seg.start:
                rows[-1] = SpeakerTurn(seg.speaker, rows[-1].start, max(rows[-1].end, seg.end))
            else:
                rows.append(SpeakerTurn(seg.speaker, seg.start, seg.end))
    file_id = rttm_file_id(info.recording_id)
    lines = [
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
        for t in rows
        if t.end > t.start
    ]
    return "".join(line + "\n" for line in lines)


def render_document(
    result: MergeResult, fmt: OutputFormat, info: DocumentInfo, options: MergeOptions
) -> RenderedDocument:
    """Render one format, in a `merge.render` span (attributes: format, size, cues or lines)."""
    with _tracer.start_as_current_span("merge.render") as span:
        span.set_attributes(
            {
                "asr.format": fmt.value,
                "asr.segments": len(result.segments),
                "asr.speakers": len(result.speakers),
            }
        )
        if fmt is OutputFormat.JSON:
            content = render_json(result, info)
        elif fmt is OutputFormat.SRT:
            content = render_srt(result.segments, info, options)
        elif fmt is OutputFormat.VTT:
            content = render_vtt(result.segments, info, options)
        elif fmt is OutputFormat.TXT:
            content = render_txt(result.segments, info, options)
        else:
            content = render_rttm(result, info)
        content = nfc(content)
        span.set_attribute("asr.document.bytes", len(content.encode("utf-8")))
        if fmt in (OutputFormat.SRT, OutputFormat.VTT):
            # Exact: "-->" inside words is written "->" (SRT) or "--&gt;" (VTT).
            span.set_attribute("asr.cues", content.count(" --> "))
        elif fmt is OutputFormat.RTTM:
            span.set_attribute("asr.rttm.lines", content.count("\n"))
    extension, media_type = _FILE_INFO[fmt]
    return RenderedDocument(fmt, content, extension, media_type)


def render_documents(
    result: MergeResult,
    formats: Sequence[OutputFormat],
    info: DocumentInfo,
    options: MergeOptions = DEFAULT_OPTIONS,
) -> list[RenderedDocument]:
    """Render each requested format once, in the order first requested."""
    return [render_document(result, fmt, info, options) for fmt in dict.fromkeys(formats)]
