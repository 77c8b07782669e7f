"""`asr stream FILE|-`: real-time recognition through the gateway's StreamingTranscribe.

    asr stream FILE|- [--server ADDR] [--realtime] [--profile low_latency|balanced|accurate]
                      [--format text|jsonl] [--language pt-BR] [--no-interim]

FILE is any audio ffmpeg reads (decoded to 16 kHz mono PCM on the fly); `-` reads raw 16 kHz
mono s16le PCM from stdin (for example `arecord -f S16_LE -r 16000 -c 1 | asr stream -`).
`--realtime` paces a file at real time, as a microphone would; without it the audio is sent
as fast as the service takes it. `text` shows the interim text updating in place (on a
terminal) and one line per utterance of final text; `jsonl` prints one event a line:
{"type": "interim"|"final", "text", "start", "end", "received_s"}, where received_s counts
seconds since the first audio was sent. Without --server a local mesh is started for the call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from google.protobuf import duration_pb2

from asr_mesh.client import security_args
from asr_mesh.client.errors import InvalidInput
from asr_mesh.client.sdk import DEFAULT_LANGUAGE

__all__ = ["CHUNK_BYTES", "CHUNK_S", "PcmSource", "TextView", "add_parser", "run"]

CHUNK_S = 0.1
CHUNK_BYTES = int(16000 * CHUNK_S) * 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stream", help="real-time recognition with interim and final results")
    p.add_argument(
        "source", metavar="FILE|-", help="audio file, or - for raw 16 kHz mono s16le PCM on stdin"
    )
    p.add_argument("--server", help="HOST:PORT of a running gateway (default: start a local mesh)")
    p.add_argument("--realtime", action="store_true", help="send a file at real-time pace")
    p.add_argument("--profile", choices=("low_latency", "balanced", "accurate"), default="balanced")
    p.add_argument("--format", choices=("text", "jsonl"), default="text", dest="output_format")
    p.add_argument("--language", default=DEFAULT_LANGUAGE, help="BCP-47 language of the speech")
    p.add_argument(
        "--model", default="", help="transcription model name (default: service default)"
    )
    p.add_argument("--no-interim", action="store_true", help="final results only")
    p.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("--state-dir", type=Path, help="local mesh state directory (traces, logs)")
    security_args.add_arguments(p)  # --ca-cert, --token


class PcmSource:
    """100 ms PCM chunks of the source. `sent_at` is the wall time the first chunk left; a
    decoding failure ends the chunks and is kept in `error` (an exception raised inside the
    request stream would only reach the caller as a bare CANCELLED)."""

    def __init__(self, source: str, realtime: bool):
        self.source, self.realtime = source, realtime
        self.sent_at: float | None = None
        self.error: InvalidInput | None = None
        if source != "-":
            if not Path(source).is_file():
                raise InvalidInput(f"{source}: no such file")
            if shutil.which("ffmpeg") is None:
                raise InvalidInput(
                    "ffmpeg is needed to decode audio files (or pipe raw PCM into `asr stream -`)"
                )

    def __iter__(self) -> Iterator[bytes]:
        proc: subprocess.Popen[bytes] | None = None
        stream: IO[bytes] | None
        if self.source == "-":
            stream = sys.stdin.buffer
        else:
            proc = subprocess.Popen(
                [
                    "ffmpeg",
                    "-nostdin",
                    "-v",
                    "error",
                    "-i",
                    self.source,
                    "-f",
                    "s16le",
                    "-ac",
                    "1",
                    "-ar",
                    "16000",
                    "-",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            stream = proc.stdout
        assert stream is not None  # a PIPE
        try:
            k = 0
            while chunk := stream.read(CHUNK_BYTES):
                chunk = chunk[: len(chunk) - len(chunk) % 2]
                if self.sent_at is None:
                    self.sent_at = time.monotonic()
                elif self.realtime:
                    wait = self.sent_at + k * CHUNK_S - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                k += 1
                yield chunk
            if proc is not None and proc.wait() != 0:
                assert proc.stderr is not None  # a PIPE
                lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
                self.error = InvalidInput(
                    f"{self.source}: ffmpeg cannot decode it "
                    f"({lines[-1] if lines else 'no audio stream'})"
                )
            elif k == 0:
                self.error = InvalidInput(f"{self.source}: no audio")
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


class TextView:
    """Interim text rewritten in place on a terminal; finals appended, one line per utterance."""

    def __init__(self, out: IO[str], interactive: bool) -> None:
        self.out, self.interactive = out, interactive
        self.line = ""  # final text of the current utterance
        self.shown = 0

    def _show(self, text: str) -> None:
        if not self.interactive:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        visible = text[-width:] if len(text) > width else text
        self.out.write("\r" + visible + " " * max(0, self.shown - len(visible)))
        self.out.flush()
        self.shown = len(visible)

    def interim(self, text: str) -> None:
        self._show(
            (self.line + " \x1b[2m" + text + "\x1b[0m") if text and self.interactive else self.line
        )

    def final(self, text: str, end_of_utterance: bool) -> None:
        self.line = f"{self.line} {text}".strip()
        if end_of_utterance:
            self._show(self.line)
            if not self.interactive:
                self.out.write(self.line)
            self.out.write("\n")
            self.out.flush()
            self.line, self.shown = "", 0
        else:
            self._show(self.line)


def run(args: argparse.Namespace) -> int:
    from asr_mesh.client.sdk import GatewayClient, StreamOptions

    options = StreamOptions(
        language_code=args.language,
        model=args.model,
        profile=args.profile,
        interim_results=not args.no_interim,
    )
    source = PcmSource(args.source, args.realtime)
    out = sys.stdout
    view = TextView(out, out.isatty())
    with ExitStack() as stack:
        address = args.server
        if not address:
            from asr_mesh.client.cli import _local_mesh

            local = argparse.Namespace(
                command="stream",
                state_dir=args.state_dir,
                no_reuse=False,
                quiet=args.output_format == "jsonl",
            )
            address = _local_mesh(stack, local, diarize=False)
        client = stack.enter_context(
            GatewayClient(
                address,
                connect_timeout_s=args.connect_timeout,
                **security_args.client_security(args, address),
            )
        )
        for event in client.stream(source, options):
            kind = event.WhichOneof("event")
            received = time.monotonic() - source.sent_at if source.sent_at else 0.0
            if kind == "interim":
                r = event.interim
                if args.output_format == "jsonl":
                    _jsonl(out, "interim", r.text, r.start_offset, r.end_offset, received)
                else:
                    view.interim(r.text)
            elif kind == "final":
                seg = event.final.segment
                if args.output_format == "jsonl":
                    _jsonl(out, "final", seg.text, seg.start_offset, seg.end_offset, received)
                else:
                    view.final(seg.text, event.final.end_of_utterance)
        if view.line:
            view.final("", True)
    if source.error is not None:
        raise source.error
    return 0


def _jsonl(
    out: IO[str],
    kind: str,
    text: str,
    start: duration_pb2.Duration,
    end: duration_pb2.Duration,
    received: float,
) -> None:
    out.write(
        json.dumps(
            {
                "type": kind,
                "text": text,
                "start": round(start.ToTimedelta().total_seconds(), 3),
                "end": round(end.ToTimedelta().total_seconds(), 3),
                "received_s": round(received, 3),
            },
            ensure_ascii=False,
        )
        + "\n"
    )
    out.flush()
