"""Conversions between domain dataclasses and protobuf messages (servicers only)."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2

from asr.common.v1 import audio_pb2, progress_pb2, transcript_pb2
from asr_mesh.services.common.domain import (
    MediaReport,
    ProgressUpdate,
    Segment,
    SpeakerTurn,
    TimeRange,
    Word,
)


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds → Duration, rounded to the microsecond."""
    value = duration_pb2.Duration()
    value.FromMicroseconds(round(max(seconds, 0.0) * 1_000_000))
    return value


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def word_to_proto(word: Word) -> transcript_pb2.Word:
    return transcript_pb2.Word(
        word=word.word,
        start_offset=duration(word.start),
        end_offset=duration(word.end),
        probability=word.probability,
        speaker=word.speaker,
    )


def word_from_proto(msg: transcript_pb2.Word) -> Word:
    return Word(
        start=seconds(msg.start_offset),
        end=seconds(msg.end_offset),
        word=msg.word,
        probability=msg.probability,
        speaker=msg.speaker,
    )


def segment_to_proto(segment: Segment) -> transcript_pb2.Segment:
    return transcript_pb2.Segment(
        id=segment.id,
        start_offset=duration(segment.start),
        end_offset=duration(segment.end),
        text=segment.text,
        words=[word_to_proto(w) for w in segment.words],
        speaker=segment.speaker,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        compression_ratio=segment.compression_ratio,
    )


def segment_from_proto(msg: transcript_pb2.Segment) -> Segment:
    return Segment(
        id=msg.id,
        start=seconds(msg.start_offset),
        end=seconds(msg.end_offset),
        text=msg.text,
        words=tuple(word_from_proto(w) for w in msg.words),
        speaker=msg.speaker,
        avg_logprob=msg.avg_logprob,
        no_speech_prob=msg.no_speech_prob,
        compression_ratio=msg.compression_ratio,
    )


def turn_to_proto(turn: SpeakerTurn) -> transcript_pb2.SpeakerTurn:
    return transcript_pb2.SpeakerTurn(
        speaker=turn.speaker, start_offset=duration(turn.start), end_offset=duration(turn.end)
    )


def turn_from_proto(msg: transcript_pb2.SpeakerTurn) -> SpeakerTurn:
    return SpeakerTurn(
        speaker=msg.speaker, start=seconds(msg.start_offset), end=seconds(msg.end_offset)
    )


def range_to_proto(rng: TimeRange) -> transcript_pb2.TimeRange:
    return transcript_pb2.TimeRange(start_offset=duration(rng.start), end_offset=duration(rng.end))


def progress_to_proto(stage: int, update: ProgressUpdate) -> progress_pb2.Progress:
    return progress_pb2.Progress(
        stage=stage,
        fraction=min(max(update.fraction, 0.0), 1.0),
        audio_processed=duration(update.audio_processed),
        audio_total=duration(update.audio_total),
        eta=duration(update.eta),
        message=update.message,
    )


def media_to_proto(report: MediaReport) -> audio_pb2.MediaInfo:
    return audio_pb2.MediaInfo(
        container=report.container,
        codec=report.codec,
        sample_rate_hz=report.sample_rate_hz,
        channels=report.channels,
        duration=duration(report.duration),
        bit_rate=report.bit_rate,
        size_bytes=report.size_bytes,
        has_video=report.has_video,
        estimated_processing=duration(report.estimated_processing)
        if report.estimated_processing > 0
        else None,
    )


def segments_to_proto(segments: Iterable[Segment]) -> list[transcript_pb2.Segment]:
    return [segment_to_proto(s) for s in segments]
