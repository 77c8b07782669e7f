"""`asr submit` and `asr jobs …`: durable jobs on a running gateway (registered by cli.py).

    asr submit FILE [FILE ...] [transcribe options] [--server HOST:PORT]
                                           → "<job id>\\t<file>" per file
    asr jobs list [--state running] [--limit N]
    asr jobs watch ID                      progress bars until the job is final
    asr jobs get ID [--wait] [-o DIR] [--format srt,json]   writes DIR/<input stem>.<format>
    asr jobs cancel ID | asr jobs delete ID

The gateway is `--server`, else `$ASR_SERVER`, else the one `asr serve` published in
`<state dir>/mesh.json`. Waiting (`get --wait`, `watch`) rides out a gateway restart: the
client reconnects until `--timeout`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from asr.gateway.v1 import jobs_pb2 as jpb
from asr_mesh.client import security_args
from asr_mesh.client.errors import DependencyUnavailable, InvalidInput, MeshError
from asr_mesh.client.paths import MESH_FILE, resolve_state_dir
from asr_mesh.client.sdk import (
    FINAL_JOB_STATES,
    GatewayClient,
    GatewayUnreachable,
    TranscribeOptions,
)

__all__ = [
    "COMMANDS",
    "STATES",
    "STATE_NAMES",
    "add_parsers",
    "options_from_args",
    "run",
    "server_address",
]

COMMANDS = ("submit", "jobs")
STATES = {
    "queued": jpb.JOB_STATE_QUEUED,
    "running": jpb.JOB_STATE_RUNNING,
    "succeeded": jpb.JOB_STATE_SUCCEEDED,
    "failed": jpb.JOB_STATE_FAILED,
    "cancelled": jpb.JOB_STATE_CANCELLED,
}
STATE_NAMES = {value: name for name, value in STATES.items()}
_NOT_FOR_SUBMIT = {"help", "files", "output_dir"}


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], transcribe: argparse.ArgumentParser
) -> None:
    """Add `submit` (with every option of `transcribe`) and `jobs` to the `asr` parser."""
    s = sub.add_parser("submit", help="queue files as durable jobs on a running gateway")
    s.add_argument("files", nargs="+", type=Path, metavar="FILE")
    for (
        action
    ) in transcribe._actions:  # the same option objects, as argparse's `parents` shares them
        if action.dest not in _NOT_FOR_SUBMIT:
            s._add_action(action)

    j = sub.add_parser("jobs", help="list, watch, fetch, cancel or delete jobs")
    jobs = j.add_subparsers(dest="jobs_command", required=True)
    parsers = {
        "list": jobs.add_parser("list", help="jobs, newest first"),
        "watch": jobs.add_parser("watch", help="progress of one job until it is final"),
        "get": jobs.add_parser("get", help="write a finished job's documents"),
        "cancel": jobs.add_parser("cancel", help="stop a job"),
        "delete": jobs.add_parser("delete", help="delete a job with its input and results"),
    }
    for name, p in parsers.items():
        if name != "list":
            p.add_argument("job_id", metavar="ID")
        p.add_argument(
            "--server", help="HOST:PORT of the gateway (default: $ASR_SERVER or `asr serve`'s)"
        )
        p.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS")
        p.add_argument(
            "--state-dir", type=Path, help="state directory of `asr serve` (to find its gateway)"
        )
        security_args.add_arguments(p)  # --ca-cert, --token
    parsers["list"].add_argument("--state", choices=tuple(STATES), help="only jobs in this state")
    parsers["list"].add_argument("--limit", type=int, default=50, help="at most this many jobs")
    for name in ("watch", "get"):
        parsers[name].add_argument(
            "--timeout",
            type=float,
            default=24 * 3600.0,
            metavar="SECONDS",
            help="give up waiting after this long (gateway restarts are waited out)",
        )
        parsers[name].add_argument("--quiet", action="store_true", help="no progress bar")
    g = parsers["get"]
    g.add_argument("--wait", action="store_true", help="wait until the job is final")
    g.add_argument(
        "-o", "--output-dir", type=Path, default=Path("."), help="where to write outputs"
    )
    g.add_argument(
        "--format", type=_format_list, default=(), help="only these of the rendered documents"
    )


def _format_list(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip().lower() for p in value.split(",") if p.strip()))


def run(args: argparse.Namespace) -> int:
    if args.command == "submit":
        return submit(args)
    address = server_address(args)
    with GatewayClient(
        address,
        connect_timeout_s=args.connect_timeout,
        **security_args.client_security(args, address),
    ) as client:
        return {"list": list_jobs, "watch": watch, "get": get, "cancel": cancel, "delete": delete}[
            args.jobs_command
        ](client, args)


def server_address(args: argparse.Namespace) -> str:
    if args.server:
        return str(args.server)
    if os.environ.get("ASR_SERVER"):
        return os.environ["ASR_SERVER"]
    published = resolve_state_dir(args.state_dir) / MESH_FILE
    try:
        return str(json.loads(published.read_text())["gateway"][0]["address"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise InvalidInput(
            "no gateway to send jobs to: pass --server HOST:PORT (or set ASR_SERVER, "
            "or start one with `asr serve`)"
        ) from None


def options_from_args(args: argparse.Namespace) -> TranscribeOptions:
    """The options `asr transcribe` and `asr submit` send for these arguments."""
    # Asking for speakers (a count, names, an RTTM) is asking for diarization.
    wants_speakers = bool(
        args.num_speakers
        or args.min_speakers
        or args.max_speakers
        or args.speaker_name
        or "rttm" in args.format
    )
    return TranscribeOptions(
        language_code=args.language,
        diarize=args.diarize or wants_speakers,
        num_speakers=args.num_speakers,
        min_speakers=args.min_speakers,
        max_speakers=args.max_speakers,
        model=args.model,
        formats=args.format,
        speaker_names=dict(args.speaker_name),
        inverse_text_normalization=args.itn,
        quality_profile=args.profile,
        hotwords=args.hotwords,
        loudness_normalization=args.loudnorm,
        trim_silence=args.trim_silence,
        no_cache=getattr(args, "no_cache", False),
    )


def submit(args: argparse.Namespace) -> int:
    from asr_mesh.client.cli import _input_problem, err_console

    options = options_from_args(args)
    failures = 0
    inputs = []
    for path in args.files:
        problem = _input_problem(path)
        if problem:
            err_console.print(f"asr: {path}: {problem}")
            failures += 1
        else:
            inputs.append(path)
    if not inputs:
        return 1
    address = server_address(args)
    with GatewayClient(
        address,
        connect_timeout_s=args.connect_timeout,
        **security_args.client_security(args, address),
    ) as client:
        for index, path in enumerate(inputs):
            try:
                job = client.submit_job(path, options)
            except GatewayUnreachable as exc:
                left = len(inputs) - index
                err_console.print(
                    f"asr: {exc.message}; {left} file{'s' if left > 1 else ''} not submitted"
                )
                return 1
            except MeshError as exc:
                err_console.print(f"asr: {path}: {exc.message}")
                failures += 1
                continue
            print(f"{job.job_id}\t{path}", flush=True)
    return 1 if failures else 0


def _describe(job: jpb.Job) -> str:
    state = STATE_NAMES.get(job.state, "?")
    if job.state == jpb.JOB_STATE_RUNNING:
        state += f" {job.fraction * 100:.0f}%"
    if job.state in (jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED) and job.error.message:
        state += f": {job.error.message}"
    if job.state == jpb.JOB_STATE_SUCCEEDED and job.result.cache_hit:
        state += " (from the result cache)"
    return state


def list_jobs(client: GatewayClient, args: argparse.Namespace) -> int:
    found: list[jpb.Job] = []
    token = ""
    while len(found) < args.limit:
        page, token = client.list_jobs(
            state=STATES.get(args.state or "", 0),
            page_size=min(args.limit - len(found), 1000),
            page_token=token,
        )
        found += page
        if not token:
            break
    for job in found:
        created = datetime.fromtimestamp(job.create_time.seconds).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{job.job_id}\t{created}\t{_describe(job)}\t{job.filename}")
    return 0


def _follow(client: GatewayClient, job_id: str, timeout_s: float, quiet: bool) -> jpb.Job:
    """Progress bars until the job is final; a dropped stream or a restarting gateway is
    re-joined."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from asr_mesh.client.cli import STAGE_LABELS, err_console

    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description:<24}", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task(job_id[:8], total=1.0)
        while True:
            try:
                for job in client.watch_job(job_id):
                    stage = STAGE_LABELS.get(job.progress.stage, STATE_NAMES.get(job.state, ""))
                    bar.update(task, completed=job.fraction, description=f"{job_id[:8]} {stage}")
                    if job.state in FINAL_JOB_STATES:
                        return job
            except DependencyUnavailable:
                pass  # the gateway restarts: re-open the stream below
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(
                    f"gave up following job {job_id} after {timeout_s:.0f} s"
                )
            time.sleep(0.5)


def watch(client: GatewayClient, args: argparse.Namespace) -> int:
    job = _follow(client, args.job_id, args.timeout, args.quiet)
    print(f"{job.job_id}\t{_describe(job)}")
    return 0 if job.state == jpb.JOB_STATE_SUCCEEDED else 1


def get(client: GatewayClient, args: argparse.Namespace) -> int:
    from asr_mesh.client.cli import err_console

    job = (
        _follow(client, args.job_id, args.timeout, args.quiet)
        if args.wait
        else client.get_job(args.job_id)
    )
    if job.state != jpb.JOB_STATE_SUCCEEDED:
        hint = "" if job.state in FINAL_JOB_STATES else "; add --wait to wait for it"
        err_console.print(f"asr: job {job.job_id} is {_describe(job)}{hint}")
        return 1
    result = client.job_results(job.job_id)
    documents = result.documents
    if args.format:
        have = {d.file_extension: d for d in documents}
        missing = [f for f in args.format if f not in have]
        if missing:
            err_console.print(
                f"asr: job {job.job_id} has no {', '.join(missing)} document (it rendered "
                f"{', '.join(have) or 'none'}; submit again with --format)"
            )
            return 1
        documents = [have[f] for f in args.format]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(job.filename).stem or job.job_id
    written = []
    for document in documents:
        target = args.output_dir / f"{stem}.{document.file_extension}"
        target.write_text(document.content, encoding="utf-8")
        written.append(str(target))
    err_console.print(f"{job.filename}: {', '.join(written)}  (trace {job.trace_id or 'off'})")
    return 0


def cancel(client: GatewayClient, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job_id)
    print(f"{job.job_id}\t{_describe(job)}")
    return 0


def delete(client: GatewayClient, args: argparse.Namespace) -> int:
    client.delete_job(args.job_id)
    print(f"{args.job_id}\tdeleted")
    return 0


if __name__ == "__main__":  # pragma: no cover - `asr` is the entry point
    sys.exit("use `asr submit` or `asr jobs`")
