"""A template process the local mesh forks its services from (the zygote pattern).

Every service of the mesh starts by importing the same libraries: gRPC, protobuf, pydantic
settings, OpenTelemetry, Prometheus, numpy and the generated stubs (about 1.1 CPU-seconds and
40-50 MB per process, more than a service's own code). Started as separate interpreters, the
four services of a local mesh pay that four times, at once, on the same cores, while the
request that started the mesh waits. `python -m asr_mesh.services.prefork FD` imports them once and
then forks each service from itself on request: a forked service starts with those modules already
in memory (shared copy-on-write with the template and its siblings) and goes straight to its own
`__main__`. Android's zygote, gunicorn's `--preload` and `multiprocessing`'s forkserver do the
same.

Rules that make forking safe here:
- The template is single-threaded and never creates a gRPC channel, server or event loop, and
  loads no model: it only imports. Services create all of that after the fork.
- A child gets the environment the supervisor chose for it (`os.environ` replaced before the
  service's code runs), stdin from /dev/null, stdout/stderr on pipes the supervisor passed
  (SCM_RIGHTS), and a process title `PYTHON -m asr_mesh.services.<name>` so `ps` and the
  supervisor's stale-process check see which service it is. Its parent is the template: it dies with
  it (PR_SET_PDEATHSIG through ASR_PARENT_PID, as with a spawned service), and the template dies
  with the supervisor.
- Libraries that are heavy and used by one service only (CTranslate2, torch, FastAPI) are not
  preloaded: a mesh without diarization must not carry torch.

`python -m asr_mesh.services.prefork --fd FD --for preprocess,transcription,...`: it forks only
those services. Protocol (a SOCK_SEQPACKET socket inherited as FD; one JSON message a packet):
  supervisor → template: {"op": "spawn", "id": N, "module": "asr_mesh.services.merge", "env": {...}}
                         with two file descriptors (the child's stdout and stderr)
  template → supervisor: {"op": "ready", "pid": P} once the imports are done;
                         {"op": "spawned", "id": N, "pid": C} or {"op": "failed", "id": N,
                         "error": "..."}; {"op": "exit", "pid": C, "code": K} when a child
                         exits (K as subprocess reports it: negative for a signal).
The template exits when the supervisor closes its end.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Iterable
from typing import Any

PRELOAD = (
    "numpy",
    "grpc",
    "grpc_health.v1.health",
    "google.protobuf",
    "pydantic_settings",
    "prometheus_client",
    "opentelemetry.sdk.trace",
    "opentelemetry.instrumentation.grpc",
    "asr_mesh.services.common.server",
    "asr_mesh.services.common.aio",
    "asr.preprocess.v1.preprocess_service_pb2_grpc",
    "asr.transcription.v1.transcription_service_pb2_grpc",
    "asr.diarization.v1.diarization_service_pb2_grpc",
    "asr.merge.v1.merge_service_pb2_grpc",
    "asr.gateway.v1.gateway_service_pb2_grpc",
)
"""What every service imports anyway (checked by a test: each is in a service's import tree)."""

MAX_MESSAGE = 1 << 20
_REAP_INTERVAL_S = 0.05


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _become(module: str, env: dict[str, str], out_fd: int, err_fd: int) -> int:
    """In the forked child: turn into `python -m module` and run it; returns its exit code."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in {devnull, out_fd, err_fd} - {0, 1, 2}:
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        # Before the environment is replaced (setproctitle finds argv through it). With
        # SPT_NOENV (set for the template) the title is written over argv only, so the
        # template's command line is made long enough for any service's.
        import setproctitle

        setproctitle.setproctitle(f"{sys.executable} -m {module}")
    except ImportError:  # the title is for people and stale-process checks; not required
        pass
    os.environ.clear()
    os.environ.update(env)
    import runpy

    sys.argv = [module]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _spawn(
    sock: socket.socket, request: dict[str, Any], fds: list[int], allowed: frozenset[str]
) -> None:
    module = str(request.get("module", ""))
    problem = ""
    if len(fds) != 2:
        problem = "expected 2 descriptors (stdout, stderr)"
    elif module not in allowed:
        problem = f"{module!r} is not one of the services this template forks"
    if problem:
        for fd in fds:
            os.close(fd)
        _send(sock, {"op": "failed", "id": request.get("id"), "error": problem})
        return
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sock.close()
            code = _become(module, dict(request["env"]), fds[0], fds[1])
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - the pipe may be gone; exiting anyway
                    pass
            os._exit(code)
    for fd in fds:
        os.close(fd)
    _send(sock, {"op": "spawned", "id": request.get("id"), "pid": pid})


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"op": "exit", "pid": pid, "code": _exit_code(status)})


def serve(sock: socket.socket, services: Iterable[str]) -> None:
    """Import PRELOAD, say ready, then fork children on request until the supervisor hangs up.

    Only `asr_mesh.services.<name>` for a name in `services` is forked.
    """
    allowed = frozenset(f"asr_mesh.services.{name}" for name in services)
    for name in PRELOAD:
        importlib.import_module(name)
    _send(sock, {"op": "ready", "pid": os.getpid()})
    while True:
        readable, _, _ = select.select([sock], [], [], _REAP_INTERVAL_S)
        _reap(sock)
        if not readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
        if not data:
            return  # the supervisor closed its end (or died): stop; children follow (PDEATHSIG)
        request = json.loads(data)
        if request.get("op") == "spawn":
            _spawn(sock, request, fds, allowed)


def main(argv: list[str] | None = None) -> int:
    """`python -m asr_mesh.services.prefork --fd FD --for a,b,c` (started by the local mesh)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m asr_mesh.services.prefork", description=__doc__
    )
    parser.add_argument("--fd", type=int, required=True, help="the supervisor's socket")
    parser.add_argument("--for", dest="services", required=True, help="services it may fork")
    args = parser.parse_args(argv)
    from asr_mesh.services.common.server import die_with_parent

    die_with_parent(int(os.environ.get("ASR_PREFORK_PARENT_PID", "0") or 0))
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock, args.services.split(","))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the supervisor went away
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
