"""`asr`: transcribe files through the mesh, or run the mesh.

    asr transcribe FILE [FILE ...] [--diarize] [--format json,srt,vtt,txt,rttm] [-o DIR]
                   [--language pt-BR] [--model NAME] [--num-speakers N] [--server HOST:PORT]
    asr serve [--state-dir DIR]

Without --server, `transcribe` starts the local mesh (the same separate service processes) for
the call and stops it afterwards. Errors are one line per file on stderr; the exit code is 1
when any input failed, 2 for usage errors, 130 when interrupted. Never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from asr.common.v1 import progress_pb2  # noqa: E402
from clients.sdk import FORMATS, GatewayClient, TranscribeOptions  # noqa: E402
from services.common.errors import MeshError  # noqa: E402

STAGE_LABELS = {
    progress_pb2.STAGE_UPLOAD: "upload",
    progress_pb2.STAGE_PREPROCESS: "decode",
    progress_pb2.STAGE_TRANSCRIPTION: "transcribe",
    progress_pb2.STAGE_DIARIZATION: "diarize",
    progress_pb2.STAGE_MERGE: "merge",
}

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _formats(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format {unknown[0] if unknown else value!r}; "
                                         f"choose from {','.join(FORMATS)}")
    return names


def _speaker_name(value: str) -> tuple[str, str]:
    label, sep, name = value.partition("=")
    if not sep or not label or not name:
        raise argparse.ArgumentTypeError("expected LABEL=NAME, for example SPEAKER_00=Ana")
    return label, name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="PT-BR speech transcription mesh.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio or video files")
    t.add_argument("files", nargs="+", type=Path, metavar="FILE")
    t.add_argument("--diarize", action="store_true", help="label who spoke when")
    t.add_argument("--format", type=_formats, default=("json",), help="comma list of json,srt,vtt,txt,rttm")
    t.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where to write outputs")
    t.add_argument("--language", default="pt-BR", help="BCP-47 language (pt, pt-BR, en…) or auto")
    t.add_argument("--model", default="", help="transcription model name (default: service default)")
    t.add_argument("--num-speakers", type=int, default=0, help="exact speaker count, if known")
    t.add_argument("--min-speakers", type=int, default=0)
    t.add_argument("--max-speakers", type=int, default=0)
    t.add_argument("--speaker-name", type=_speaker_name, action="append", default=[],
                   metavar="LABEL=NAME", help="display name for a speaker label (repeatable)")
    t.add_argument("--server", help="HOST:PORT of a running gateway (default: start a local mesh)")
    t.add_argument("--state-dir", type=Path, help="local mesh state directory (traces, logs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("serve", help="run the mesh locally until interrupted")
    s.add_argument("--state-dir", type=Path, help="state directory (traces, logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "transcribe":
            return transcribe(args)
        return serve(args)
    except KeyboardInterrupt:
        err_console.print("asr: interrupted")
        return 130
    except MeshError as exc:
        err_console.print(f"asr: {exc.message}")
        return 1
    except Exception as exc:  # the promise: one readable line, never a traceback
        err_console.print(f"asr: unexpected error: {type(exc).__name__}: {exc}")
        return 1


def _local_mesh(stack: ExitStack, state_dir: Path | None, quiet: bool):
    from services.supervisor import LocalMesh

    mesh = LocalMesh(state_dir=state_dir)
    if quiet:
        mesh.start()
    else:
        with err_console.status("starting the local mesh (loading models)…"):
            mesh.start()
    stack.callback(mesh.stop)
    return mesh


def transcribe(args: argparse.Namespace) -> int:
    options = TranscribeOptions(
        language_code=args.language, diarize=args.diarize, num_speakers=args.num_speakers,
        min_speakers=args.min_speakers, max_speakers=args.max_speakers, model=args.model,
        formats=args.format, speaker_names=dict(args.speaker_name),
    )
    failures = 0
    inputs: list[Path] = []
    for path in args.files:
        if not path.is_file():
            err_console.print(f"asr: {path}: no such file")
            failures += 1
        else:
            inputs.append(path)
    if not inputs:
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        address = args.server or _local_mesh(stack, args.state_dir, args.quiet).gateway_address
        client = stack.enter_context(GatewayClient(address))
        for path in inputs:
            try:
                result = _transcribe_one(client, path, options, quiet=args.quiet)
            except MeshError as exc:
                err_console.print(f"asr: {path}: {exc.message}")
                failures += 1
                continue
            written = _write_outputs(result, path, args.output_dir)
            speakers = f", {len(result.speakers)} speakers" if args.diarize else ""
            duration = result.audio_duration.seconds + result.audio_duration.nanos / 1e9
            err_console.print(
                f"{path.name}: {duration:.1f} s of audio{speakers} → {', '.join(str(p) for p in written)}"
                f"  (trace {result.trace_id or 'off'})"
            )
    return 1 if failures else 0


def _transcribe_one(client: GatewayClient, path: Path, options: TranscribeOptions, quiet: bool):
    if quiet:
        return client.transcribe(path, options)
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[int, int] = {}

        def on_event(response) -> None:
            if response.WhichOneof("payload") != "progress":
                return
            event = response.progress
            label = STAGE_LABELS.get(event.stage, "work")
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(f"{path.name[:18]} {label}", total=1.0)
            bar.update(tasks[event.stage], completed=event.fraction)

        return client.transcribe(path, options, on_event=on_event)


def _write_outputs(result, source: Path, out_dir: Path) -> list[Path]:
    written = []
    for document in result.documents:
        target = out_dir / f"{source.stem}.{document.file_extension}"
        target.write_text(document.content, encoding="utf-8")
        written.append(target)
    return written


def serve(args: argparse.Namespace) -> int:
    from services.supervisor import LocalMesh

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalMesh(state_dir=args.state_dir) as mesh:
        print(f"gateway listening on {mesh.gateway_address}", flush=True)
        err_console.print(f"state directory {mesh.state_dir}; press Ctrl-C to stop")
        try:
            while not stop.wait(0.5):
                for service in mesh.services.values():
                    if service.process.poll() is not None:
                        err_console.print(f"asr: the {service.name} service exited; see {service.log_path}")
                        return 1
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
