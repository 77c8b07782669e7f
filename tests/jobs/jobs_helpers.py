"""Shared pieces of the job tests: a real redis-server per session, stores, controllable stages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from asr_mesh.services.common import convert
from asr_mesh.services.common.domain import MediaReport, ProgressUpdate, Segment, Word
from asr_mesh.services.common.errors import Cancelled, InvalidAudio
from asr_mesh.services.gateway.pipeline import (
    Decoded,
    Diarization,
    Merged,
    RenderedDocument,
    Transcript,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a free loopback port, no persistence, stopped by `stop()`."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make system-deps installs it from Debian)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        self.client = client

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # nothing to persist: no save, no AOF
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class ScriptedStages:
    """Stages of a chain whose output depends on the uploaded bytes; transcription can be slowed
    down (`work_s`) or made to fail, and notices `cancel()` like the gRPC adapters do."""

    def __init__(self, work_s: float = 0.0, fail: Exception | None = None):
        self.work_s = work_s
        self.fail = fail
        self.runs = 0
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def __call__(self):  # the gateway's stages_factory: one per request, same state shared
        return self

    def preprocess(self, upload, options, progress):
        data = Path(upload).read_bytes()
        if self.fail is not None:
            raise self.fail
        progress(MediaReport(container="wav", size_bytes=len(data)))
        self._text = data.decode("utf-8", "replace").strip() or "vazio"
        return Decoded(media=MediaReport(container="wav"), pcm=b"\0\0" * 1600, duration=2.0)

    def transcribe(self, pcm, options, progress):
        self.runs += 1
        self.started.set()
        deadline = time.monotonic() + self.work_s
        while time.monotonic() < deadline:
            if self.cancelled.is_set():
                raise Cancelled("the chain was cancelled")
            progress(ProgressUpdate(1 - (deadline - time.monotonic()) / self.work_s, 1.0, 2.0))
            time.sleep(0.02)
        words = tuple(
            Word(0.1 * i, 0.1 * i + 0.08, w, 0.9) for i, w in enumerate(self._text.split())
        )
        return Transcript(
            [convert.segment_to_proto(Segment(0, 0.0, 2.0, self._text, words))],
            "pt-BR",
            "scripted",
        )

    def diarize(self, pcm, options, progress):
        return Diarization([], 1, "scripted")

    def merge(self, transcript, diarization, options, duration, trace_id):
        docs = [
            RenderedDocument(f, f"{f}: {transcript.segments[0].text}", f, "text/plain")
            for f in options.formats
        ]
        return Merged(transcript.segments, [], docs)

    def cancel(self) -> None:
        self.cancelled.set()


def bad_audio() -> InvalidAudio:
    return InvalidAudio("the upload is not audio: no audio stream found")
