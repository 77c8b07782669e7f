"""Fake stages for gateway tests: real chain logic, no downstream services."""

from __future__ import annotations

import threading
import time

from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, ProgressUpdate, Segment, SpeakerTurn, Word
from asr_mesh.services.gateway.pipeline import (
    Decoded,
    Diarization,
    Merged,
    RenderedDocument,
    Transcript,
)


class FakeStages:
    def __init__(
        self,
        fail: dict[str, Exception] | None = None,
        slow_diarization_s: float = 0.0,
        document_chars: int = 0,
    ):
        self.fail = fail or {}
        self.document_chars = document_chars
        self.slow_diarization_s = slow_diarization_s
        self.calls: list[str] = []
        self.threads: dict[str, str] = {}
        self.cancelled = threading.Event()
        self.overlap = threading.Barrier(2, timeout=5)

    def _enter(self, stage: str) -> None:
        self.calls.append(stage)
        self.threads[stage] = threading.current_thread().name
        if stage in self.fail:
            raise self.fail[stage]

    def preprocess(self, upload, options, progress):
        self._enter("preprocess")
        data = upload.read_bytes()
        progress(MediaReport(container="wav", codec="pcm_s16le", size_bytes=len(data)))
        return Decoded(media=MediaReport(container="wav"), pcm=b"\0\0" * 16000, duration=1.0)

    def transcribe(self, pcm, options, progress):
        if options.diarize:
            self.overlap.wait()  # proves transcription and diarization run at the same time
        self._enter("transcription")
        self.options = options
        progress(ProgressUpdate(0.5, 0.5, 1.0))
        words = (Word(0.0, 0.4, "olá", 0.9), Word(0.5, 0.9, "mundo", 0.8))
        return Transcript(
            [convert.segment_to_proto(Segment(0, 0.0, 0.9, "olá mundo", words))], "pt-BR", "base"
        )

    def diarize(self, pcm, options, progress):
        self.overlap.wait()
        self._enter("diarization")
        deadline = time.monotonic() + self.slow_diarization_s
        while time.monotonic() < deadline and not self.cancelled.is_set():
            time.sleep(0.01)
        return Diarization([SpeakerTurn("SPEAKER_00", 0.0, 1.0)], 1, "fake")

    def merge(self, transcript, diarization, options, duration, trace_id):
        self._enter("merge")
        body = (
            "ação " * (self.document_chars // 5)
            if self.document_chars
            else transcript.segments[0].text
        )
        docs = [RenderedDocument(f, f"{f}:{body}", f, "text/plain") for f in options.formats]
        speakers = ["SPEAKER_00"] if diarization else []
        return Merged(transcript.segments, speakers, docs)

    def cancel(self) -> None:
        self.cancelled.set()
