"""Runs the mesh locally: each service its own process on loopback, supervised, reusable.

Addresses. Before starting anything the supervisor reserves one loopback port per service (it
binds a socket with SO_REUSEADDR and keeps it, never listening). A service binds its reserved
port (gRPC sets SO_REUSEADDR too, and Linux lets a listening socket share a port with bound,
non-listening ones), while any other program's bind to it fails. So every address is known
before any process runs: all services, gateway included, start at once, and a service that
dies is restarted on the port it had, where the gateway's channel reconnects. Each service still
prints `ASR_READY service=<name> port=<port>` once it serves (transcription only after its
model is loaded; the local mesh skips its warm-up run, which would cost about what the waiting
request's first window costs); that line is what "ready" means.

Replicas. `LocalMesh(transcription_replicas=N)` (`asr serve --transcription-replicas N`, or
`ASR_LOCAL_TRANSCRIPTION_REPLICAS` for the background mesh and `LocalMesh()`'s default) runs N
transcription processes, each on its own reserved port and supervised on its own (a dead one is
restarted alone). The gateway gets them all as one comma-separated list,
`ASR_GATEWAY_TRANSCRIPTION_ADDRESS=127.0.0.1:p1,127.0.0.1:p2,...` (a single `host:port` when N
is 1). Unless `ASR_TRANSCRIPTION_CPU_THREADS` is set, N > 1 replicas share the machine's cores
(each gets cores // N threads, at least 1), and a set `ASR_TRANSCRIPTION_METRICS_PORT` P gives
replica i the port P + i. A running mesh keeps the count it was started with: a CLI call that
finds one with another count reuses it and says so on stderr (`asr serve --stop` to change it).

Only what is asked for runs: `LocalMesh(services=...)` starts a subset (the CLI leaves out
diarization unless a request asks for speakers). The diarization port is reserved and given to
the gateway anyway, and `ensure("diarization")` starts the service later on it.

`<state dir>/mesh.json` (rewritten atomically on every change) maps each running service to a
list of its processes, `{"gateway": [{"pid": 123, "address": "127.0.0.1:50051", "state":
"ready", "restarts": 0, ...}], ...}`, plus a "supervisor" entry for this process. Every service
has one entry except transcription, which has one per replica, in replica order, each with its
own address, pid, state and restarts and a `"replica": i` (0-based) field. The gateway
reads it (`ASR_GATEWAY_MESH_FILE`) to learn which backends exist: a service that is not listed
is absent, and the gateway refuses options that need it with a sentence.

Forking. Services are forked from a template process (`asr_mesh.services.prefork`, see its
docstring) that imported the libraries they all use once; `ASR_LOCAL_MESH_PREFORK=false` spawns an
interpreter per service instead (and the mesh falls back to that if the template cannot start).
A forked service is the template's child, so its exit code reaches the supervisor as a message
(`ForkedProcess`); if the template itself dies its services die with it (PR_SET_PDEATHSIG) and
are forked again from a new one once they are gone. Since a forked service's /proc/PID/environ is
the template's, each mesh.json entry lists the `settings` the supervisor gave that process.

Supervision. `supervise_once()` (called in a loop by `asr serve`, or by a thread from
`start_supervision()`) restarts a service that exited on its own, with exponential backoff
(0.5 s doubling to 30 s, reset after a minute of uptime); one dead child never stops the mesh.

A mesh shared between CLI calls (`use_local_mesh`). `asr transcribe` without --server takes
`<state dir>/mesh.lock` (fcntl, exclusive) and reads mesh.json: a live mesh (supervisor alive,
gateway accepting connections) is reused; a stale one (dead supervisor, gateway unreachable) is
killed and forgotten; if none is left it starts `python -m asr_mesh.services.supervisor` in its own
session and waits until mesh.json shows the services ready. To get a service the running mesh lacks
(diarization), the CLI drops an empty file `<state dir>/requests/<service>`; the supervisor
polls that directory, starts the service and lists it in mesh.json once ready, which is what the
CLI waits for. Files and locks need no server, survive any crash of either side, and a request
left by a CLI that died is harmless. While it uses the mesh the CLI holds a shared lock on
`<state dir>/mesh.users` and touches it afterwards; a background supervisor stops itself when
nobody holds that lock and it has not been touched for `ASR_LOCAL_MESH_IDLE_S` (default 300 s),
deciding under mesh.lock so that a CLI never picks a mesh that is shutting down. Children get
SIGTERM on stop (they drain, then exit) and die with the supervisor if it is killed
(PR_SET_PDEATHSIG); with `ASR_LOCAL_MESH_OWNER_PID` set, a background supervisor also stops when
that process (a test run, say) is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from asr_mesh.client.paths import MESH_FILE, resolve_state_dir
from asr_mesh.services.common.domain_errors import MeshError

# asr_mesh.services.common.server prints it; not imported (it pulls in gRPC)
READY_PREFIX = "ASR_READY"
BACKENDS = ("preprocess", "transcription", "diarization", "merge")
SERVICES = (*BACKENDS, "gateway")
FRONT_DOORS = ("http",)
"""Optional services in front of the gateway: started only when asked (`http_port`)."""
ALL_SERVICES = (*SERVICES, *FRONT_DOORS)
WITHOUT_DIARIZATION = ("preprocess", "transcription", "merge", "gateway")
IDLE_ENV = "ASR_LOCAL_MESH_IDLE_S"
REPLICAS_ENV = "ASR_LOCAL_TRANSCRIPTION_REPLICAS"
MAX_REPLICAS = 64
REPLICATED = ("transcription",)
"""Services that may run as several processes (the gateway spreads work over a list of them)."""
OWNER_ENV = "ASR_LOCAL_MESH_OWNER_PID"
DEFAULT_IDLE_S = 300.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0

log = logging.getLogger(__name__)


class MeshStartError(MeshError):
    """A service of the local mesh did not come up."""


def replica_key(name: str, replica: int) -> str:
    return name if replica == 0 else f"{name}-{replica}"


def transcription_replica_count(value: str | int | None = None) -> int:
    """The number of transcription processes.

    `value`, else $ASR_LOCAL_TRANSCRIPTION_REPLICAS, else 1.
    """
    source = "--transcription-replicas" if value is not None else REPLICAS_ENV
    raw = value if value is not None else os.environ.get(REPLICAS_ENV, "").strip() or 1
    try:
        count = int(raw)
    except ValueError:
        raise MeshError(f"{source} must be a whole number of processes, not {raw!r}") from None
    if not 1 <= count <= MAX_REPLICAS:
        raise MeshError(f"{source} must be between 1 and {MAX_REPLICAS}, not {count}")
    return count


def reserve_port(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, non-listening socket holding a port (0: a free one) for a service.

    See the module doc.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MeshStartError(f"cannot use port {port} on {host}: {exc.strerror}") from None
    return sock


PREFORK_ENV = "ASR_LOCAL_MESH_PREFORK"
"""`false` starts every service as its own interpreter instead of forking it
(asr_mesh.services.prefork)."""


def prefork_enabled() -> bool:
    return os.environ.get(PREFORK_ENV, "true").strip().lower() not in ("0", "false", "no", "off")


class ForkedProcess:
    """A service forked by the template process: the part of `subprocess.Popen` the mesh uses.

    It is the template's child, not ours, so its exit code comes as a message from the template
    (`Prefork`), not from waitpid.
    """

    def __init__(self, pid: int, stdout: IO[bytes], stderr: IO[bytes]):
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _set_exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"services (pid {self.pid})", timeout or 0)
        return self.returncode if self.returncode is not None else -1

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _bury_orphan(child: ForkedProcess, grace_s: float = 10.0) -> None:
    """A service whose template died got SIGTERM with it (PR_SET_PDEATHSIG) and is no longer
    anybody's child we can wait for: report it exited only once it is gone (its port free for
    the restart), SIGKILLing it after `grace_s`."""
    code = -signal.SIGTERM
    deadline = time.monotonic() + grace_s
    while not _gone(child.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            code = -signal.SIGKILL
            deadline = time.monotonic() + grace_s
        time.sleep(0.05)
    child._set_exit(code)


class PreforkError(MeshError):
    """The template process could not start or fork."""


class Prefork:
    """The supervisor's end of `asr_mesh.services.prefork`: start it, ask it for services, learn
    exits."""

    def __init__(self, python: str, env: dict[str, str], log_path: Path, timeout_s: float = 60.0):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._reply_ready = threading.Condition()
        self._next_id = 0
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self.alive = True
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                # --for names every service: it bounds what the template forks, and it makes
                # the command line long enough for a child's title (SPT_NOENV,
                # asr_mesh.services.prefork).
                [
                    python,
                    "-m",
                    "asr_mesh.services.prefork",
                    "--fd",
                    str(theirs.fileno()),
                    "--for",
                    ",".join(ALL_SERVICES),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={
                    **env,
                    "PYTHONUNBUFFERED": "1",
                    "SPT_NOENV": "1",
                    "ASR_PREFORK_PARENT_PID": str(os.getpid()),
                },
            )
        theirs.close()
        self._ready = threading.Event()
        threading.Thread(target=self._listen, daemon=True, name="prefork-listener").start()

    def _listen(self) -> None:
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                message = json.loads(data)
                op = message.get("op")
                if op == "ready":
                    self._ready.set()
                elif op == "exit":
                    pid, code = int(message["pid"]), int(message["code"])
                    with self._lock:
                        child = self._children.pop(pid, None)
                        if child is None:
                            self._early_exits[pid] = code
                    if child is not None:
                        child._set_exit(code)
                else:
                    with self._reply_ready:
                        self._replies[int(message.get("id", -1))] = message
                        self._reply_ready.notify_all()
        except (OSError, ValueError) as exc:
            log.warning("lost the prefork template: %s", exc)
        self.alive = False
        self._ready.set()
        with self._reply_ready:
            self._reply_ready.notify_all()
        with self._lock:
            orphans = list(self._children.values())
            self._children.clear()
        for child in orphans:
            threading.Thread(
                target=_bury_orphan, args=(child,), daemon=True, name=f"orphan-{child.pid}"
            ).start()

    def spawn(self, module: str, env: dict[str, str]) -> ForkedProcess:
        """Fork `python -m module` with `env`; its stdout and stderr come back as pipes."""
        if not self._ready.wait(self._timeout) or not self.alive:
            raise PreforkError(
                f"the prefork template (pid {self.process.pid}) did not start; "
                f"exit code {self.process.poll()}"
            )
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self._reply_ready:
                self._next_id += 1
                request_id = self._next_id
            request = {"op": "spawn", "id": request_id, "module": module, "env": env}
            socket.send_fds(self._sock, [json.dumps(request).encode()], [out_w, err_w])
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            raise PreforkError(f"the prefork template is gone: {exc}") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        with self._reply_ready:
            got = self._reply_ready.wait_for(
                lambda: request_id in self._replies or not self.alive, self._timeout
            )
            reply = self._replies.pop(request_id, None)
        if not got or reply is None or reply.get("op") != "spawned":
            for fd in (out_r, err_r):
                os.close(fd)
            why = (reply or {}).get("error") or "no answer"
            raise PreforkError(f"the prefork template could not fork {module}: {why}")
        pid = int(reply["pid"])
        child = ForkedProcess(pid, os.fdopen(out_r, "rb"), os.fdopen(err_r, "rb"))
        with self._lock:
            early = self._early_exits.pop(pid, None)
            if early is None:
                self._children[pid] = child
        if early is not None:
            child._set_exit(early)
        return child

    def close(self, timeout_s: float = 5.0) -> None:
        """Hang up; the template exits (its remaining children get SIGTERM)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | ForkedProcess
    """The last one started (it may have exited since)."""
    replica: int = 0
    """Which of the service's processes this is (0-based; only transcription has more than one)."""
    ready: threading.Event = field(default_factory=threading.Event)
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    """When a dead process is due to be started again (None while it runs)."""
    last_exit: int | None = None
    ready_s: float = 0.0
    """Seconds from spawn to the ready line, last start."""
    settings: dict[str, str] = field(default_factory=dict)
    """The `ASR_<SERVICE>_*` variables the supervisor set for this process (its port, the
    gateway's backend addresses, a replica's threads): listed in mesh.json, since a forked
    service's /proc/PID/environ shows its template's environment, not its own."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state(self) -> str:
        if self.restart_at is not None:
            return "restarting"
        return "ready" if self.ready.is_set() else "starting"

    @property
    def key(self) -> str:
        """Its key in `LocalMesh.services`: the service name, `name-i` for replica i > 0."""
        return replica_key(self.name, self.replica)

    def describe(self) -> dict:
        entry = {
            "pid": self.process.pid,
            "address": self.address,
            "state": self.state,
            "restarts": self.restarts,
            "log": str(self.log_path),
        }
        if self.name in REPLICATED:
            entry["replica"] = self.replica
        if self.settings:
            entry["settings"] = dict(self.settings)
        if self.ready.is_set():
            entry["ready_s"] = round(self.ready_s, 3)
        if self.last_exit is not None:
            entry["last_exit"] = self.last_exit
        return entry


class LocalMesh:
    """Start with `with LocalMesh() as mesh:`; `mesh.gateway_address` is where to call.

    `services` picks what runs (default: all five); `mesh_file` is where the process table is
    kept (default `<state dir>/mesh.json`); `transcription_replicas` is how many transcription
    processes run (default: $ASR_LOCAL_TRANSCRIPTION_REPLICAS, else 1).
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 180.0,
        python: str = sys.executable,
        services: Iterable[str] = SERVICES,
        mesh_file: Path | None = None,
        http_port: int | None = None,
        transcription_replicas: int | None = None,
    ):
        self.state_dir = resolve_state_dir(state_dir)
        self.replicas = {name: 1 for name in ALL_SERVICES}
        self.replicas["transcription"] = transcription_replica_count(transcription_replicas)
        self._env = dict(env or {})
        self._timeout = startup_timeout_s
        self._python = python
        wanted = set(services) | {"gateway"}
        unknown = wanted - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {SERVICES}")
        self._initial = [name for name in SERVICES if name in wanted]
        self._http_port = http_port
        """The HTTP front door's port (0 = a free one); None: no HTTP service."""
        if http_port is not None:
            self._initial.append("http")
        self.mesh_file = Path(mesh_file) if mesh_file else self.state_dir / MESH_FILE
        self.services: dict[str, ServiceProcess] = {}
        self._prefork: Prefork | None = None
        self._use_prefork = prefork_enabled()
        """Fork services from one template process (asr_mesh.services.prefork) instead of starting
        an interpreter each: the libraries every service imports are loaded once."""
        self._reserved: dict[str, socket.socket] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.extra: dict[str, list[dict]] = {
            "supervisor": [
                {
                    "pid": os.getpid(),
                    "start_ticks": start_ticks(os.getpid()),
                    "address": "",
                    "state": "ready",
                    "kind": "embedded",
                }
            ],
        }
        """More entries for mesh.json: the process supervising the mesh (this one) lists itself."""

    # -- addresses --------------------------------------------------------------------------

    def port_of(self, name: str, replica: int = 0) -> int:
        return self._reserved[replica_key(name, replica)].getsockname()[1]

    def address_of(self, name: str, replica: int = 0) -> str:
        return f"127.0.0.1:{self.port_of(name, replica)}"

    def addresses_of(self, name: str) -> list[str]:
        """Every replica's HOST:PORT, in replica order."""
        return [self.address_of(name, i) for i in range(self.replicas[name])]

    def _keys(self, names: Iterable[str]) -> list[str]:
        """The process keys of `names` (a service with N replicas has N)."""
        return [replica_key(name, i) for name in names for i in range(self.replicas[name])]

    def replicas_of(self, name: str) -> list[ServiceProcess]:
        """The running processes of service `name`, in replica order."""
        with self._lock:
            return [self.services[key] for key in self._keys([name]) if key in self.services]

    @property
    def gateway_address(self) -> str:
        return self.address_of("gateway")

    @property
    def http_address(self) -> str:
        """HOST:PORT of the HTTP front door ("" when it is not part of this mesh)."""
        return self.address_of("http") if "http" in self._reserved else ""

    # -- start and stop ---------------------------------------------------------------------

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start the chosen services at once, wait until all serve.

        Returns the gateway's address.
        """
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for key in self._keys(SERVICES):
                self._reserved[key] = reserve_port()
            if self._http_port is not None:
                self._reserved["http"] = reserve_port(port=self._http_port)
            with self._lock:
                for key in self._keys(self._initial):
                    self._spawn(key)
            self._wait(self._keys(self._initial))
            self.write_mesh_file()
        except BaseException:
            self.stop(grace_s=2)
            raise
        return self.gateway_address

    def ensure(self, name: str, wait: bool = True) -> None:
        """Start `name` if it is not running yet (diarization on demand); optionally wait for it."""
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}")
        with self._lock:
            if name not in self.services:
                for key in self._keys([name]):
                    self._spawn(key)
                self.write_mesh_file()
        if wait:
            self._wait(self._keys([name]))
            self.write_mesh_file()

    def _env_for(self, name: str, replica: int = 0) -> dict[str, str]:
        env = {
            **os.environ,
            "PYANNOTE_METRICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "ASR_STATE_DIR": str(self.state_dir),
            # The child arms PR_SET_PDEATHSIG itself (asr_mesh.services.common.server): a preexec_fn
            # here would run Python in the forked child of a process that has started gRPC threads.
            "ASR_PARENT_PID": str(os.getpid()),
            f"ASR_{name.upper()}_HOST": "127.0.0.1",
            f"ASR_{name.upper()}_PORT": str(self.port_of(name, replica)),
            # No warm-up run: a local request is usually waiting for this start, and the warm-up
            # (a whole 30 s window through the encoder) costs about what its first window does.
            "ASR_TRANSCRIPTION_WARM_UP": os.environ.get("ASR_TRANSCRIPTION_WARM_UP", "false"),
            **self._env,
        }
        if self.replicas[name] > 1:
            env.update(self._replica_env(name, replica, env))
        if name == "gateway":
            # Every replica, comma-separated (one HOST:PORT when there is one): the gateway
            # spreads work over them.
            env.update(
                {
                    f"ASR_GATEWAY_{b.upper()}_ADDRESS": ",".join(self.addresses_of(b))
                    for b in BACKENDS
                }
            )
            env["ASR_GATEWAY_MESH_FILE"] = str(self.mesh_file)
        if name == "http":
            env["ASR_HTTP_GATEWAY_ADDRESS"] = self.gateway_address
        return env

    def _replica_env(self, name: str, replica: int, env: dict[str, str]) -> dict[str, str]:
        """What replica `replica` of a service run N times needs besides its port (module doc)."""
        prefix = f"ASR_{name.upper()}_"
        extra = {}
        if not env.get(f"{prefix}CPU_THREADS"):
            extra[f"{prefix}CPU_THREADS"] = str(
                max((os.cpu_count() or 1) // self.replicas[name], 1)
            )
        metrics = env.get(f"{prefix}METRICS_PORT", "").strip()
        if metrics.isdigit() and int(metrics):
            extra[f"{prefix}METRICS_PORT"] = str(int(metrics) + replica)
        return extra

    def _spawn(self, key: str) -> None:
        known = self.services.get(key)
        if known is None:
            name, _, index = key.partition("-")
            replica = int(index or 0)
        else:
            name, replica = known.name, known.replica
        # stderr (the service's logs) goes through a pump into a size-capped, rotated file: a mesh
        # that runs for weeks must not fill the disk (~12 KB of logs a request).
        env = self._env_for(name, replica)
        prefix = f"ASR_{name.upper()}_"
        settings = {
            key: value
            for key, value in sorted(env.items())
            if key.startswith(prefix) and os.environ.get(key) != value
        }
        process = self._start_process(name, env)
        stdout, stderr = process.stdout, process.stderr
        assert stdout is not None and stderr is not None  # both pipes
        if known is None:
            # Listed once it has a process: a first spawn that failed leaves nothing to
            # supervise, and `ensure` may try that service again.
            service = self.services[key] = ServiceProcess(
                name,
                self.port_of(name, replica),
                self.state_dir / "logs" / f"{key}.log",
                process,
                replica=replica,
            )
        else:
            service = known
            service.process = process
        service.settings = settings
        service.ready = threading.Event()
        service.started_at = time.monotonic()
        service.restart_at = None
        threading.Thread(
            target=self._read_stdout,
            args=(service, stdout, service.ready),
            daemon=True,
            name=f"ready-{key}",
        ).start()
        threading.Thread(
            target=pump_log,
            args=(stderr, service.log_path),
            daemon=True,
            name=f"log-{key}",
        ).start()

    def _start_process(
        self, name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes] | ForkedProcess:
        """`python -m asr_mesh.services.<name>`: forked from the template when it works, else
        spawned."""
        if self._use_prefork:
            try:
                prefork = self._prefork_template()
                # Its parent is the template: it dies with it (PR_SET_PDEATHSIG).
                return prefork.spawn(
                    f"asr_mesh.services.{name}", {**env, "ASR_PARENT_PID": str(prefork.process.pid)}
                )
            except PreforkError as exc:
                log.warning("%s; starting %s as its own interpreter", exc, name)
        return subprocess.Popen(
            [self._python, "-m", f"asr_mesh.services.{name}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _prefork_template(self) -> Prefork:
        """The template process, started (again, if it died) on first use."""
        if self._prefork is None or not self._prefork.alive:
            if self._prefork is not None:
                log.warning("the prefork template exited; starting a new one")
                self._prefork.close(timeout_s=1)
            self._prefork = Prefork(
                self._python,
                {
                    **os.environ,
                    "PYANNOTE_METRICS_ENABLED": "false",
                    "ASR_STATE_DIR": str(self.state_dir),
                    **self._env,
                },
                self.state_dir / "logs" / "prefork.log",
                timeout_s=self._timeout,
            )
            self.extra["supervisor"][0]["prefork_pid"] = self._prefork.process.pid
        return self._prefork

    def _read_stdout(
        self, service: ServiceProcess, stdout: IO[bytes], ready: threading.Event
    ) -> None:
        for raw in stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(READY_PREFIX) and not ready.is_set():
                fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
                if int(fields.get("port", 0)) != service.port:
                    log.warning(
                        "%s reported port %s, expected %d",
                        service.key,
                        fields.get("port"),
                        service.port,
                    )
                service.ready_s = time.monotonic() - service.started_at
                ready.set()
                if not self._stopping.is_set():
                    self.write_mesh_file()
        stdout.close()

    def _wait(self, keys: Iterable[str]) -> None:
        deadline = time.monotonic() + self._timeout
        for key in keys:
            service = self.services[key]
            name = (
                service.name
                if service.replica == 0
                else f"{service.name} (replica {service.replica})"
            )
            while not service.ready.wait(0.05):
                code = service.process.poll()
                if code is not None:
                    raise MeshStartError(
                        f"the {name} service exited with code {code} while starting; "
                        f"see {service.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise MeshStartError(
                        f"the {name} service did not become ready within {self._timeout:.0f} s; "
                        f"log {service.log_path}"
                    )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every service (gateway first so it stops taking work), then reap."""
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)
        with self._lock:
            order = [k for k in self._keys(reversed(ALL_SERVICES)) if k in self.services]
            for key in order:
                process = self.services[key].process
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for key in order:
                process = self.services[key].process
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._prefork is not None:
                self._prefork.close()
                self._prefork = None
            self._forget_mesh_file()
            for sock in self._reserved.values():
                sock.close()
            self._reserved.clear()

    # -- supervision ------------------------------------------------------------------------

    def supervise_once(self) -> list[str]:
        """Restart processes that exited on their own (with backoff); returns the keys of those
        restarted (`transcription-2` for replica 2, see `ServiceProcess.key`).

        Also starts services asked for through `<state dir>/requests/` (when this mesh is the
        one `<state dir>/mesh.json` describes).
        """
        restarted: list[str] = []
        if self.mesh_file == self.state_dir / MESH_FILE:
            self._serve_requests()
        with self._lock:
            if self._stopping.is_set():
                return restarted
            now = time.monotonic()
            for service in self.services.values():
                code = service.process.poll()
                if code is None:
                    continue
                if service.restart_at is None:  # just noticed: schedule a restart
                    uptime = now - service.started_at
                    service.backoff_s = (
                        BACKOFF_FIRST_S
                        if uptime > BACKOFF_RESET_AFTER_S or not service.backoff_s
                        else min(service.backoff_s * 2, BACKOFF_MAX_S)
                    )
                    service.restart_at = now + service.backoff_s
                    service.last_exit = code
                    log.warning(
                        "the %s service (pid %d) exited with code %s; restarting in %.1f s on %s",
                        service.key,
                        service.process.pid,
                        code,
                        service.backoff_s,
                        service.address,
                    )
                    self.write_mesh_file()
                elif now >= service.restart_at:
                    service.restarts += 1
                    self._spawn(service.key)
                    restarted.append(service.key)
                    self.write_mesh_file()
        return restarted

    def _serve_requests(self) -> None:
        requests = self.state_dir / "requests"
        try:
            names = [p.name for p in requests.iterdir()]
        except OSError:
            return
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (requests / name).unlink()
            if name in SERVICES and name not in self.services:
                log.info("starting the %s service on request", name)
                self.ensure(name, wait=False)

    def start_supervision(self, interval_s: float = 0.2) -> None:
        """Supervise from a background thread until `stop()` (for meshes run inside a program)."""

        def loop() -> None:
            while not self._stopping.wait(interval_s):
                self.supervise_once()

        self._supervisor = threading.Thread(target=loop, daemon=True, name="mesh-supervisor")
        self._supervisor.start()

    # -- mesh.json --------------------------------------------------------------------------

    def describe(self) -> dict[str, list[dict]]:
        with self._lock:
            table = {
                name: [p.describe() for p in self.replicas_of(name)]
                for name in ALL_SERVICES
                if name in self.services
            }
        return {**self.extra, **table}

    def write_mesh_file(self) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            write_json_atomic(self.mesh_file, self.describe())

    def _forget_mesh_file(self) -> None:
        """Remove mesh.json if it still describes this mesh (a newer one may have replaced it)."""
        table = read_mesh_file(self.mesh_file)
        gateway = (table or {}).get("gateway") or [{}]
        if "gateway" in self._reserved and gateway[0].get("address") == self.gateway_address:
            with contextlib.suppress(FileNotFoundError):
                self.mesh_file.unlink()


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(temporary, path)


def read_mesh_file(path: Path) -> dict[str, list[dict]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the background mesh shared by CLI calls ------------------------------------------------
# (`default_state_dir`, `resolve_state_dir`: asr_mesh.client.paths, shared with the client)


def idle_timeout_s() -> float:
    try:
        return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    except ValueError:
        raise MeshError(
            f"{IDLE_ENV} must be a number of seconds, not {os.environ[IDLE_ENV]!r}"
        ) from None


def mesh_lock(state_dir: Path) -> contextlib.AbstractContextManager[int]:
    """Hold `<state dir>/mesh.lock` (exclusive) while choosing, starting or stopping a mesh."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    return _flock(Path(state_dir) / "mesh.lock", fcntl.LOCK_EX)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def start_ticks(pid: int) -> int:
    """When `pid` started (clock ticks since boot): with the pid, names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _reachable(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


@dataclass
class MeshInfo:
    """A running mesh as mesh.json describes it."""

    table: dict[str, list[dict]]

    @property
    def supervisor_pid(self) -> int:
        return int((self.table.get("supervisor") or [{}])[0].get("pid", 0))

    @property
    def killable_supervisor(self) -> bool:
        """Whether the supervisor is an `asr serve` (never signal a program that embeds a mesh)."""
        return (self.table.get("supervisor") or [{}])[0].get(
            "kind"
        ) == "serve" and self.supervisor_alive()

    def supervisor_alive(self) -> bool:
        """The supervisor runs (the same process: a reused pid has another start time)."""
        entry = (self.table.get("supervisor") or [{}])[0]
        pid = int(entry.get("pid", 0))
        return pid_alive(pid) and start_ticks(pid) == entry.get("start_ticks")

    @property
    def gateway_address(self) -> str:
        return (self.table.get("gateway") or [{}])[0].get("address", "")

    def state(self, name: str) -> str:
        """The service's state: "ready" when every replica is, else the first other state."""
        states = [entry.get("state", "") for entry in self.table.get(name) or []]
        return next((state for state in states if state != "ready"), "ready") if states else ""

    def replicas(self, name: str) -> int:
        """How many processes run service `name` (transcription may have several)."""
        return len(self.table.get(name) or [])

    def pids(self) -> list[tuple[str, int]]:
        """(service, pid) of every listed process, replicas included."""
        return [
            (name, int(entry.get("pid", 0)))
            for name, entries in self.table.items()
            if isinstance(entries, list)
            for entry in entries
        ]


class LocalMeshSupervisor:
    """What `asr serve` and the background mesh run: a LocalMesh kept alive, listed in mesh.json,
    asked for more via files.

    With `idle_s` it stops after that long without users (see the module doc); `background`
    marks the mesh as one the CLI started (and may stop). Call `run()`; SIGTERM stops it.
    """

    def __init__(
        self,
        state_dir: Path,
        services: Iterable[str] = SERVICES,
        idle_s: float | None = None,
        owner_pid: int = 0,
        env: dict[str, str] | None = None,
        http_port: int | None = None,
        tls_ca: Path | None = None,
        transcription_replicas: int | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.mesh = LocalMesh(
            state_dir=self.state_dir,
            services=services,
            env=env,
            http_port=http_port,
            transcription_replicas=transcription_replicas,
        )
        self.idle_s = idle_s
        self.owner_pid = owner_pid
        self.stop_requested = threading.Event()
        self.mesh.extra["supervisor"][0].update(kind="serve", idle_s=idle_s or 0)
        if tls_ca:  # `asr serve --tls`: CLI calls to this mesh verify its gateway with this CA
            self.mesh.extra["supervisor"][0]["tls_ca"] = str(tls_ca)
        self._started = time.time()

    def start(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "requests").mkdir(exist_ok=True)
        return self.mesh.start()

    def run(self, on_tick: Callable[[], None] | None = None, interval_s: float = 0.2) -> str:
        """Supervise until stopped; returns why it stopped ("signal", "idle", "owner gone")."""
        reason = "signal"
        try:
            while not self.stop_requested.wait(interval_s):
                self.mesh.supervise_once()
                if on_tick:
                    on_tick()
                if self.owner_pid and not pid_alive(self.owner_pid):
                    reason = "owner gone"
                    break
                if self._idle_and_forgotten():
                    reason = "idle"
                    break
        finally:
            self.mesh.stop()
        return reason

    def _idle_and_forgotten(self) -> bool:
        """True (and mesh.json removed, so no CLI picks this mesh) once idle long enough."""
        if not self.idle_s:  # no idle timeout
            return False
        users = self.state_dir / "mesh.users"
        try:
            last_use = max(users.stat().st_mtime, self._started)
        except FileNotFoundError:
            last_use = self._started
        if time.time() - last_use < self.idle_s:
            return False
        lock_fd = os.open(self.state_dir / "mesh.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a CLI is choosing or starting a mesh right now
                return False
            users_fd = os.open(users, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a CLI is using the mesh
                    return False
            finally:
                os.close(users_fd)
            self.mesh._stopping.set()  # no rewrite of mesh.json from here on
            self.mesh._forget_mesh_file()
            return True
        finally:
            os.close(lock_fd)


def live_mesh(state_dir: Path, settle_s: float = 20.0) -> MeshInfo | None:
    """The mesh registered in `state_dir` if it is alive; a stale one is stopped and forgotten.

    Call with mesh.lock held. A gateway the supervisor is restarting gets `settle_s` to return.
    """
    mesh_file = state_dir / MESH_FILE
    table = read_mesh_file(mesh_file)
    if table is None:
        return None
    info = MeshInfo(table)
    deadline = time.monotonic() + settle_s
    while info.supervisor_alive():
        if info.gateway_address and _reachable(info.gateway_address):
            return info
        if time.monotonic() > deadline or info.state("gateway") == "ready":
            break  # a ready gateway that refuses connections is hung, not starting
        time.sleep(0.2)
        info = MeshInfo(read_mesh_file(mesh_file) or table)
    _kill_stale(info)
    with contextlib.suppress(FileNotFoundError):
        mesh_file.unlink()
    return None


def _kill_stale(info: MeshInfo) -> None:
    """Stop what is left of a mesh that no longer works (only processes it lists, by pid)."""
    pids = []
    if info.killable_supervisor:
        pids.append(info.supervisor_pid)
    for name, pid in info.pids():
        if name in ALL_SERVICES and pid_alive(pid) and f"asr_mesh.services.{name}" in _cmdline(pid):
            pids.append(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


LOG_MAX_BYTES = 10 << 20
"""Default size of a service's log file before it is rotated (ASR_LOG_MAX_BYTES)."""
LOG_BACKUPS = 3
"""Rotated generations kept (`<service>.log.1` … `.3`; ASR_LOG_BACKUPS)."""


def _env_int(name: str, default: int, minimum: int) -> int:
    try:
        return max(int(os.environ.get(name, default)), minimum)
    except ValueError:
        log.warning("%s=%r is not a number; using %d", name, os.environ.get(name), default)
        return default


def pump_log(stream, path: Path, max_bytes: int | None = None, backups: int | None = None) -> None:
    """Copy a child's stderr, line by line, into `path`, rotating it at `max_bytes` and keeping
    `backups` older generations (logging.handlers.RotatingFileHandler). Ends with the stream."""
    from logging.handlers import RotatingFileHandler

    handler = RotatingFileHandler(
        path,
        maxBytes=max_bytes or _env_int("ASR_LOG_MAX_BYTES", LOG_MAX_BYTES, 4096),
        backupCount=backups if backups is not None else _env_int("ASR_LOG_BACKUPS", LOG_BACKUPS, 0),
        encoding="utf-8",
        errors="replace",
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
    except (OSError, ValueError):  # the pipe closed under us: the child is gone
        pass
    finally:
        handler.close()


def _start_background(
    state_dir: Path, services: Iterable[str], python: str, replicas: int
) -> subprocess.Popen:
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "logs" / "supervisor.log"
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            # This module, not `asr serve`: the CLI's imports (rich, the SDK) would delay every
            # start.
            [
                python,
                "-m",
                "asr_mesh.services.supervisor",
                "--state-dir",
                str(state_dir),
                "--services",
                ",".join(services),
                "--transcription-replicas",
                str(replicas),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # its own session: Ctrl-C in this terminal does not reach it
            env={**os.environ, "PYANNOTE_METRICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"},
            cwd=Path(__file__).resolve().parents[2],
        )


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _wait_for(
    state_dir: Path, names: Iterable[str], timeout_s: float, daemon: subprocess.Popen | None = None
) -> MeshInfo:
    """Wait until mesh.json lists `names` as ready."""
    names = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        table = read_mesh_file(state_dir / MESH_FILE)
        info = MeshInfo(table) if table else None
        if info and (daemon is None or info.supervisor_pid == daemon.pid):
            if all(info.state(n) == "ready" for n in names):
                return info
            for name in names:
                for entry in info.table.get(name) or []:
                    if (
                        entry.get("state") == "restarting"
                    ):  # it died while starting: say so, do not loop
                        raise MeshStartError(
                            f"the {name} service exited with code {entry.get('last_exit')} "
                            f"while starting; see {entry.get('log')}"
                        )
        if daemon is not None and daemon.poll() is not None:
            tail = _log_tail(state_dir / "logs" / "supervisor.log")
            raise MeshStartError(
                f"the local mesh could not start: {tail or f'exit code {daemon.returncode}'}"
            )
        if info is None and daemon is None:
            raise MeshStartError("the local mesh stopped while waiting for it")
        if time.monotonic() > deadline:
            raise MeshStartError(
                f"the local mesh did not become ready within {timeout_s:.0f} s; "
                f"see {state_dir / 'logs'}"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def use_local_mesh(
    state_dir: Path | None = None,
    services: Iterable[str] = WITHOUT_DIARIZATION,
    timeout_s: float = 180.0,
    python: str = sys.executable,
    on_start: Callable[[str], None] | None = None,
    transcription_replicas: int | None = None,
    on_mismatch: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """The gateway address of a background mesh in `state_dir` running `services`.

    Reuses a live one (starting missing services in it), or starts one; the mesh keeps running
    afterwards. `on_start(what)` is told when something has to be started (for a progress line).
    A new mesh runs `transcription_replicas` transcription processes (default:
    $ASR_LOCAL_TRANSCRIPTION_REPLICAS, else 1). A live mesh is reused whatever its count; when
    a count was asked for (argument or environment) and the mesh has another, `on_mismatch` gets
    a sentence saying so.
    """
    asked = transcription_replicas is not None or bool(os.environ.get(REPLICAS_ENV, "").strip())
    replicas = transcription_replica_count(transcription_replicas)
    state_dir = resolve_state_dir(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    services = [name for name in SERVICES if name in set(services) | {"gateway"}]
    users_fd = os.open(state_dir / "mesh.users", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _flock(state_dir / "mesh.lock", fcntl.LOCK_EX):
            info = live_mesh(state_dir)
            if info is None:
                if on_start:
                    on_start("the local mesh")
                daemon = _start_background(state_dir, services, python, replicas)
                info = _wait_for(state_dir, services, timeout_s, daemon)
            elif asked and on_mismatch and info.replicas("transcription") not in (0, replicas):
                running = info.replicas("transcription")
                on_mismatch(
                    f"using the running local mesh with {running} transcription "
                    f"replica{'s' if running > 1 else ''}, not the {replicas} asked for "
                    f"(`asr serve --stop`, then call again, to change it)"
                )
            missing = [name for name in services if info.state(name) != "ready"]
            if missing:
                if on_start:
                    on_start(" and ".join(f"the {name} service" for name in missing))
                (state_dir / "requests").mkdir(exist_ok=True)
                for name in missing:
                    (state_dir / "requests" / name).touch()
                info = _wait_for(state_dir, missing, timeout_s)
            fcntl.flock(users_fd, fcntl.LOCK_SH)  # before mesh.lock is released: see the module doc
            os.utime(users_fd)
        yield info.gateway_address
    finally:
        with contextlib.suppress(OSError):
            os.utime(users_fd)
        os.close(users_fd)


def stop_local_mesh(state_dir: Path | None = None, timeout_s: float = 30.0) -> int | None:
    """Stop the mesh registered in `state_dir`; returns its supervisor's pid (None if none ran)."""
    state_dir = resolve_state_dir(state_dir)
    if not state_dir.is_dir():
        return None
    with _flock(state_dir / "mesh.lock", fcntl.LOCK_EX):
        table = read_mesh_file(state_dir / MESH_FILE)
        if table is None:
            return None
        info = MeshInfo(table)
        pid = info.supervisor_pid
        if info.killable_supervisor:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        _kill_stale(info)  # anything that outlived it
        with contextlib.suppress(FileNotFoundError):
            (state_dir / MESH_FILE).unlink()
        return pid


def main(argv: list[str] | None = None) -> int:
    """The background mesh: `python -m asr_mesh.services.supervisor --state-dir DIR --services
    a,b,...`.

    Started by `use_local_mesh` (which holds mesh.lock until it is ready); stops after
    ASR_LOCAL_MESH_IDLE_S without users, on SIGTERM (`asr serve --stop`), or when the process
    named by ASR_LOCAL_MESH_OWNER_PID is gone.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m asr_mesh.services.supervisor", description=main.__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument(
        "--idle-timeout", type=float, help=f"default: {IDLE_ENV} or {DEFAULT_IDLE_S:.0f}"
    )
    parser.add_argument(
        "--transcription-replicas", help=f"transcription processes (default: {REPLICAS_ENV} or 1)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s supervisor: %(message)s"
    )
    try:
        idle_s = args.idle_timeout if args.idle_timeout is not None else idle_timeout_s()
        owner = int(os.environ.get(OWNER_ENV, "0") or 0)
        runner = LocalMeshSupervisor(
            args.state_dir,
            args.services.split(","),
            idle_s=idle_s,
            owner_pid=owner,
            transcription_replicas=transcription_replica_count(args.transcription_replicas),
        )
        address = runner.start()
    except (MeshError, ValueError, OSError) as exc:
        print(f"asr: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
        return 1
    stop = runner.stop_requested
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"gateway listening on {address}", flush=True)
    log.info("local mesh stopped (%s)", runner.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
