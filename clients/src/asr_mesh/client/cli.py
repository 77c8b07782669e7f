"""`asr`: transcribe files through the mesh, or run the mesh.

    asr transcribe FILE [FILE ...] [--diarize] [--format json,srt,vtt,txt,rttm] [-o DIR]
                   [--language pt-BR] [--model NAME] [--num-speakers N] [--server HOST:PORT]
    asr serve [--state-dir DIR] [--no-diarization] [--idle-timeout S] [--http-port N]
              [--transcription-replicas N] | asr serve --stop
    asr trace list | asr trace show TRACE_ID [--format json] [--png FILE]

Without --server, `transcribe` uses the local mesh of the state directory: it reuses a running
one, or starts one in the background (only the services the request needs; diarization is added
when a later call asks for speakers) and leaves it running until it has been idle for
ASR_LOCAL_MESH_IDLE_S seconds (default 300) or `asr serve --stop`. `--no-reuse` (or
ASR_LOCAL_MESH_REUSE=0) starts a private mesh for the call and stops it afterwards. A mesh the CLI
starts runs ASR_LOCAL_TRANSCRIPTION_REPLICAS transcription processes (default 1); a running mesh
with another count is reused, with one line on stderr saying so. How meshes are
found, shared and supervised: asr_mesh/services/supervisor.py. Errors are one line per file on
stderr; the exit code is 1 when any input failed, 2 for usage errors, 130 when interrupted. Never a
traceback.

The commands that call a gateway (`transcribe --server`, `stream --server`, `submit`, `jobs`)
and `trace` need only the client distribution (asr-mesh-client). Those that run a local mesh
(`transcribe`/`stream` without --server, `serve`) need the server distribution (asr-mesh); without
it they say so in one line and exit 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

from asr.common.v1 import progress_pb2  # noqa: E402
from asr_mesh.client import (  # noqa: E402
    jobs_cli,
    security_args,
    stream_cli,
)
from asr_mesh.client.errors import Category, MeshError  # noqa: E402
from asr_mesh.client.paths import default_state_dir  # noqa: E402
from asr_mesh.client.sdk import (  # noqa: E402
    DEFAULT_LANGUAGE,
    FORMATS,
    GatewayClient,
    GatewayUnreachable,
    TranscribeOptions,
    Transcription,
)

__all__ = ["ServerNotInstalled", "build_parser", "main"]

SERVER_DIST = "asr-mesh"
"""The server distribution: the local mesh (`asr_mesh.services`), which this client distribution
lacks."""

STAGE_LABELS = {
    progress_pb2.STAGE_UPLOAD: "upload",
    progress_pb2.STAGE_PREPROCESS: "decode",
    progress_pb2.STAGE_TRANSCRIPTION: "transcribe",
    progress_pb2.STAGE_DIARIZATION: "diarize",
    progress_pb2.STAGE_MERGE: "merge",
}

# markup=False: file names and service messages are user text ("Reunião [final].mp3").
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _formats(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown format {unknown[0] if unknown else value!r}; choose from {','.join(FORMATS)}"
        )
    return names


def _speaker_name(value: str) -> tuple[str, str]:
    label, sep, name = value.partition("=")
    if not sep or not label or not name:
        raise argparse.ArgumentTypeError("expected LABEL=NAME, for example SPEAKER_00=Ana")
    return label, name


class ServerNotInstalled(MeshError):
    """A command that runs a local mesh, where only the client distribution is installed."""

    category = Category.FAILED_PRECONDITION
    reason = "SERVER_NOT_INSTALLED"

    def __init__(self, what: str, *, or_server: bool = True):
        instead = "pass --server HOST:PORT to use a running gateway, or " if or_server else ""
        super().__init__(
            f"{what} runs a local mesh, which needs the server package ({SERVER_DIST}), and it is "
            f"not installed: {instead}install the server (pip install '.[all]' from the "
            "repository; see its README)"
        )


def _supervisor(what: str, *, or_server: bool = True) -> ModuleType:
    """`asr_mesh.services.supervisor` (the local mesh), or `ServerNotInstalled` naming `what` needs
    it."""
    try:
        from asr_mesh.services import supervisor
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[:2] != ["asr_mesh", "services"]:
            raise  # the server is there but broken: not this sentence
        raise ServerNotInstalled(what, or_server=or_server) from None
    return supervisor


def _replicas(value: str) -> int:
    try:
        supervisor = _supervisor("`asr serve`", or_server=False)
    except ServerNotInstalled:  # `asr serve` says so once it runs; parse the number only
        try:
            return int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    try:
        return int(supervisor.transcription_replica_count(value))
    except MeshError as exc:
        raise argparse.ArgumentTypeError(
            exc.message.removeprefix("--transcription-replicas ")
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="PT-BR speech transcription mesh.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio or video files")
    t.add_argument("files", nargs="+", type=Path, metavar="FILE")
    t.add_argument("--diarize", action="store_true", help="label who spoke when")
    t.add_argument(
        "--format", type=_formats, default=("json",), help="comma list of json,srt,vtt,txt,rttm"
    )
    t.add_argument(
        "-o", "--output-dir", type=Path, default=Path("."), help="where to write outputs"
    )
    t.add_argument(
        "--language", default=DEFAULT_LANGUAGE, help="BCP-47 language (pt, pt-BR, en…) or auto"
    )
    t.add_argument(
        "--model", default="", help="transcription model name (default: service default)"
    )
    t.add_argument("--num-speakers", type=int, default=0, help="exact speaker count, if known")
    t.add_argument("--min-speakers", type=int, default=0)
    t.add_argument("--max-speakers", type=int, default=0)
    t.add_argument(
        "--profile",
        choices=("max_quality", "balanced", "fast"),
        default="",
        help="transcription quality profile (default: balanced; see README)",
    )
    t.add_argument(
        "--hotwords", default="", help="names or jargon to expect, as a hint to the model"
    )
    t.add_argument(
        "--itn",
        action="store_true",
        help='write spoken numbers, money, dates and times as digits ("doze por cento" → "12%%")',
    )
    t.add_argument(
        "--loudnorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="EBU R128 loudness normalisation before transcription (gateway default: off)",
    )
    t.add_argument(
        "--trim-silence",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut leading/trailing silence; shifts all time offsets (gateway default: off)",
    )
    t.add_argument(
        "--speaker-name",
        type=_speaker_name,
        action="append",
        default=[],
        metavar="LABEL=NAME",
        help="display name for a speaker label (repeatable)",
    )
    t.add_argument("--server", help="HOST:PORT of a running gateway (default: start a local mesh)")
    t.add_argument(
        "--connect-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="give up when the gateway cannot be reached within this time",
    )
    t.add_argument(
        "--max-attempts",
        type=int,
        default=6,
        metavar="N",
        help="attempts per file when the gateway is busy (queue full) or briefly "
        "unavailable; waits follow its retry hint with exponential backoff",
    )
    t.add_argument("--state-dir", type=Path, help="local mesh state directory (traces, logs)")
    t.add_argument(
        "--no-reuse",
        action="store_true",
        default=os.environ.get("ASR_LOCAL_MESH_REUSE", "1").strip().lower() in ("0", "false", "no"),
        help="start a private local mesh for this call and stop it afterwards "
        "(default: reuse or start the shared background mesh; ASR_LOCAL_MESH_REUSE=0)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--no-cache", action="store_true", help="run the chain even if the result cache has this"
    )
    security_args.add_arguments(t)  # --ca-cert, --token
    jobs_cli.add_parsers(sub, t)  # asr submit, asr jobs …

    stream_cli.add_parser(sub)
    s = sub.add_parser("serve", help="run the mesh locally until interrupted (or stop it: --stop)")
    s.add_argument("--state-dir", type=Path, help="state directory (traces, logs)")
    s.add_argument(
        "--stop", action="store_true", help="stop the mesh running in the state directory"
    )
    s.add_argument(
        "--no-diarization",
        action="store_true",
        help="leave diarization out (started later if a local CLI call asks for speakers)",
    )
    s.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long without CLI calls (default: never)",
    )
    s.add_argument(
        "--http-port",
        type=int,
        metavar="N",
        help="also start the HTTP front door (OpenAI-compatible REST, live captions page) "
        "on 127.0.0.1:N; 0 picks a free port",
    )
    s.add_argument(
        "--transcription-replicas",
        type=_replicas,
        metavar="N",
        help="transcription processes, each on its own port; the gateway spreads calls "
        "over them, and with ASR_GATEWAY_FANOUT_MIN_S set the chunks of one long file "
        "(default: ASR_LOCAL_TRANSCRIPTION_REPLICAS or 1)",
    )
    s.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port and mTLS between the services, with a local CA made under "
        "<state dir>/tls/ (clients verify with tls/ca.pem)",
    )
    s.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="callers must send one of the bearer tokens in FILE (one per line; needs --tls)",
    )

    tr = sub.add_parser("trace", help="inspect traces recorded by the local mesh")
    trace_sub = tr.add_subparsers(dest="trace_command", required=True)
    tl = trace_sub.add_parser("list", help="recent traces with their durations")
    tl.add_argument("--state-dir", type=Path, help="state directory the mesh wrote traces to")
    tl.add_argument("--limit", type=int, default=20)
    ts = trace_sub.add_parser("show", help="where the time went in one trace (waterfall)")
    ts.add_argument("trace_id", help="trace id, or a unique prefix of one")
    ts.add_argument("--state-dir", type=Path, help="state directory the mesh wrote traces to")
    ts.add_argument("--format", choices=("text", "json"), default="text", dest="output_format")
    ts.add_argument("--png", type=Path, metavar="FILE", help="also draw the waterfall into a PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "transcribe":
            return transcribe(args)
        if args.command == "trace":
            return trace_command(args)
        if args.command in jobs_cli.COMMANDS:
            return jobs_cli.run(args)
        if args.command == "stream":
            return stream_cli.run(args)
        return serve(args)
    except KeyboardInterrupt:
        err_console.print("asr: interrupted")
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MeshError as exc:
        err_console.print(f"asr: {exc.message}")
        return 1
    except Exception as exc:  # the promise: one readable line, never a traceback
        err_console.print(f"asr: unexpected error: {type(exc).__name__}: {exc}")
        return 1


def _local_mesh(stack: ExitStack, args: argparse.Namespace, diarize: bool) -> str:
    """The gateway address of a local mesh running what the request needs (see the docstring).

    `args` needs `state_dir`, `no_reuse` and `quiet` (`asr transcribe` and `asr stream` have them).
    """
    supervisor = _supervisor(f"`asr {getattr(args, 'command', 'transcribe')}` without --server")

    services = supervisor.SERVICES if diarize else supervisor.WITHOUT_DIARIZATION
    if not args.no_reuse:

        def on_start(what: str) -> None:
            if not args.quiet:
                err_console.print(
                    f"starting {what} (it stays up for later calls; `asr serve --stop` stops it)"
                )

        def on_mismatch(sentence: str) -> None:
            err_console.print(f"asr: {sentence}")

        return str(
            stack.enter_context(
                supervisor.use_local_mesh(
                    args.state_dir, services, on_start=on_start, on_mismatch=on_mismatch
                )
            )
        )
    state_dir = supervisor.resolve_state_dir(args.state_dir)
    mesh = supervisor.LocalMesh(
        state_dir=state_dir,
        services=services,
        mesh_file=state_dir / "runtime" / f"mesh-{os.getpid()}.json",
    )
    stack.callback(mesh.stop)
    if args.quiet:
        mesh.start()
    else:
        with err_console.status("starting a private local mesh (loading models)…"):
            mesh.start()
    mesh.start_supervision()  # a service that dies during the call is restarted
    return str(mesh.gateway_address)


def transcribe(args: argparse.Namespace) -> int:
    options = jobs_cli.options_from_args(args)  # the same mapping as `asr submit`
    failures = 0
    inputs: list[Path] = []
    stems: dict[str, Path] = {}
    for path in args.files:
        problem = _input_problem(path)
        if not problem and path.stem in stems:
            problem = (
                f"its outputs would overwrite those of {stems[path.stem]} (same name); rename one"
            )
        if problem:
            err_console.print(f"asr: {path}: {problem}")
            failures += 1
        else:
            stems[path.stem] = path
            inputs.append(path)
    if not inputs:
        return 1
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err_console.print(
            f"asr: {args.output_dir}: cannot create the output directory: {exc.strerror}"
        )
        return 1
    with ExitStack() as stack:
        address = args.server or _local_mesh(stack, args, options.diarize)
        client = stack.enter_context(
            GatewayClient(
                address,
                connect_timeout_s=args.connect_timeout,
                max_attempts=args.max_attempts,
                **security_args.client_security(args, address),
            )
        )
        for index, path in enumerate(inputs):
            try:
                result = _transcribe_one(client, path, options, quiet=args.quiet)
            except GatewayUnreachable as exc:  # the same for every file: say it once and stop
                left = len(inputs) - index
                err_console.print(
                    f"asr: {exc.message}; {left} file{'s' if left > 1 else ''} not transcribed"
                )
                failures += left
                break
            except MeshError as exc:
                err_console.print(f"asr: {path}: {exc.message}")
                failures += 1
                continue
            try:
                written = _write_outputs(result, path, args.output_dir)
            except OSError as exc:
                err_console.print(
                    f"asr: {path}: cannot write outputs to {args.output_dir}: {exc.strerror}"
                )
                failures += 1
                continue
            speakers = f", {len(result.speakers)} speakers" if options.diarize else ""
            duration = result.audio_duration.seconds + result.audio_duration.nanos / 1e9
            err_console.print(
                f"{path.name}: {duration:.1f} s of audio{speakers} → "
                f"{', '.join(str(p) for p in written)}  (trace {result.trace_id or 'off'})"
            )
    return 1 if failures else 0


def _input_problem(path: Path) -> str:
    """Why an input cannot be sent, in a few words ("" when it can)."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return ""


def _transcribe_one(
    client: GatewayClient, path: Path, options: TranscribeOptions, quiet: bool
) -> Transcription:
    if quiet:
        return client.transcribe(path, options)
    columns = (
        TextColumn("{task.description:<28}", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[int, TaskID] = {}

        def on_event(response: Any) -> None:
            if response.WhichOneof("payload") == "media_info":
                bar.console.print(_media_line(path, response.media_info), markup=False)
            if response.WhichOneof("payload") != "progress":
                return
            event = response.progress
            label = STAGE_LABELS.get(event.stage, "work")
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(f"{path.name[:18]} {label}", total=1.0)
            bar.update(tasks[event.stage], completed=event.fraction)

        return client.transcribe(path, options, on_event=on_event)


def _media_line(path: Path, info: Any) -> str:
    """What the preprocess service found, and its estimate of the processing time."""
    seconds = info.duration.seconds + info.duration.nanos / 1e9
    line = (
        f"{path.name}: {seconds:.1f} s of {info.codec or 'audio'} in "
        f"{info.container.split(',')[0]}, {info.sample_rate_hz} Hz, {info.channels} ch"
    )
    if info.HasField("estimated_processing"):
        estimate = info.estimated_processing.seconds + info.estimated_processing.nanos / 1e9
        line += (
            f"; estimated processing ≈ {estimate:.0f} s"
            if estimate >= 1
            else "; estimated processing < 1 s"
        )
    return line


def _write_outputs(result: Transcription, source: Path, out_dir: Path) -> list[Path]:
    written = []
    for document in result.documents:
        target = out_dir / f"{source.stem}.{document.file_extension}"
        target.write_text(document.content, encoding="utf-8")
        written.append(target)
    return written


def trace_command(args: argparse.Namespace) -> int:
    from asr_mesh.client import traces

    state_dir = args.state_dir or default_state_dir()
    out = Console(highlight=False)
    if not out.is_terminal:  # piped: full ids and bars rather than an 80-column squeeze
        out = Console(highlight=False, width=200)
    if args.trace_command == "list":
        found = traces.recent_traces(state_dir, args.limit)
        if not found:
            err_console.print(f"asr: no traces in {state_dir / 'traces'}")
            return 1
        table = Table(title=f"recent traces in {state_dir / 'traces'}")
        for column in ("trace id", "started", "seconds", "spans", "services", "status"):
            table.add_column(column, no_wrap=True)
        for trace in found:
            started = datetime.fromtimestamp(trace.start_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(
                trace.trace_id,
                started,
                f"{trace.duration_s:.3f}",
                str(len(trace.spans)),
                str(len(trace.services)),
                "ERROR" if trace.failed else "ok",
            )
        out.print(table)
        return 0
    matches = traces.match_traces(state_dir, args.trace_id)
    if len(matches) != 1:
        what = "no trace" if not matches else f"{len(matches)} traces start with"
        err_console.print(
            f"asr: {what} {args.trace_id!r} in {state_dir / 'traces'} (see `asr trace list`)"
        )
        return 1
    trace = matches[0]
    if args.output_format == "json":
        print(traces.trace_json(trace))
    else:
        traces.print_waterfall(trace, out)
    if args.png:
        traces.save_png(trace, args.png)
        err_console.print(f"waterfall written to {args.png}")
    return 0


def _serve_security(
    args: argparse.Namespace, state_dir: Path, supervisor: ModuleType
) -> tuple[dict[str, str], Path | None]:
    """The services' TLS and token settings for `asr serve --tls / --auth-token-file` (called
    once `_supervisor` found the server)."""
    from asr_mesh.client.security import SecurityConfigError
    from asr_mesh.services.common.security import TokenFile

    env: dict[str, str] = {}
    ca = None
    if args.auth_token_file:
        if not args.tls:
            raise SecurityConfigError(
                "--auth-token-file needs --tls: a bearer token must not travel in the clear"
            )
        TokenFile(args.auth_token_file)  # refuse a missing or empty file here, with a sentence
        env["ASR_GATEWAY_AUTH_TOKEN_FILE"] = str(args.auth_token_file.resolve())
    if args.tls:
        from asr_mesh.services.common.local_ca import ensure_local_tls, tls_env

        files = ensure_local_tls(state_dir / "tls")
        env.update(tls_env(files, supervisor.SERVICES))
        env["ASR_HTTP_GATEWAY_CA_FILE"] = str(files.ca)  # the front door's hop to the gateway
        ca = files.ca
    return env, ca


def serve(args: argparse.Namespace) -> int:
    supervisor = _supervisor("`asr serve`", or_server=False)

    state_dir = supervisor.resolve_state_dir(args.state_dir)
    if args.stop:
        pid = supervisor.stop_local_mesh(state_dir)
        err_console.print(
            f"stopped the local mesh in {state_dir} (supervisor pid {pid})"
            if pid
            else f"no local mesh is running in {state_dir}"
        )
        return 0
    services = supervisor.WITHOUT_DIARIZATION if args.no_diarization else supervisor.SERVICES
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        err_console.print(f"asr: --http-port must be between 0 and 65535, not {args.http_port}")
        return 2
    env, ca = _serve_security(args, state_dir, supervisor)
    runner = supervisor.LocalMeshSupervisor(
        state_dir,
        services,
        idle_s=args.idle_timeout,
        env=env,
        tls_ca=ca,
        http_port=args.http_port,
        transcription_replicas=args.transcription_replicas,
    )
    with supervisor.mesh_lock(state_dir):
        running = supervisor.live_mesh(state_dir)
        if running is not None:
            err_console.print(
                f"asr: a local mesh is already running in {state_dir} (gateway "
                f"{running.gateway_address}); use it, or stop it with `asr serve --stop`"
            )
            return 1
        address = runner.start()
    stop = runner.stop_requested  # from here on a signal stops the mesh in order
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"gateway listening on {address}", flush=True)
    if runner.mesh.http_address:
        print(f"http listening on {runner.mesh.http_address}", flush=True)
    if runner.mesh.replicas["transcription"] > 1:
        err_console.print(
            f"{runner.mesh.replicas['transcription']} transcription replicas on "
            + ", ".join(runner.mesh.addresses_of("transcription"))
        )
    if args.tls:
        err_console.print(
            f"TLS on; clients verify with --ca-cert {state_dir / 'tls' / 'ca.pem'}"
            + (
                "; a bearer token is required (--token or ASR_TOKEN)"
                if args.auth_token_file
                else ""
            )
        )
    err_console.print(f"state directory {state_dir}; press Ctrl-C to stop")
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
