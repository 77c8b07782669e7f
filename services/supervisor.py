"""Runs the whole mesh locally: each service its own process on loopback, gateway last.

Every service binds port 0 and prints `ASR_READY service=<name> port=<port>` once it serves
(the transcription service only after its model is loaded), so nothing races for fixed ports.
Children get SIGTERM on `stop()` (they drain, then exit) and, on Linux, die with this process if
it is killed, so a crashed CLI or test never leaves services behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import MeshError
from services.common.server import READY_PREFIX
from services.common.settings import default_state_dir

BACKENDS = ("preprocess", "transcription", "diarization", "merge")
SERVICES = (*BACKENDS, "gateway")


class MeshStartError(MeshError):
    """A service of the local mesh did not come up."""


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen
    log_path: Path
    port: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"



class LocalMesh:
    """Start with `with LocalMesh() as mesh:`; `mesh.gateway_address` is where to call."""

    def __init__(
        self,
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 180.0,
        python: str = sys.executable,
    ):
        self.state_dir = Path(state_dir or default_state_dir())
        self._env = dict(env or {})
        self._timeout = startup_timeout_s
        self._python = python
        self.services: dict[str, ServiceProcess] = {}

    @property
    def gateway_address(self) -> str:
        return self.services["gateway"].address

    def __enter__(self) -> LocalMesh:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start every service and return the gateway's address."""
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for name in BACKENDS:
                self._spawn(name, {})
            self._wait(BACKENDS)
            self._spawn("gateway", {
                f"ASR_GATEWAY_{name.upper()}_ADDRESS": self.services[name].address for name in BACKENDS
            })
            self._wait(("gateway",))
        except BaseException:
            self.stop(grace_s=2)
            raise
        return self.gateway_address

    def _spawn(self, name: str, extra_env: dict[str, str]) -> None:
        env = {
            **os.environ,
            "PYANNOTE_METRICS_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "ASR_STATE_DIR": str(self.state_dir),
            # The child arms PR_SET_PDEATHSIG itself (services.common.server): a preexec_fn here
            # would run Python in the forked child of a process that has started gRPC threads.
            "ASR_PARENT_PID": str(os.getpid()),
            f"ASR_{name.upper()}_HOST": "127.0.0.1",
            f"ASR_{name.upper()}_PORT": "0",
            **self._env,
            **extra_env,
        }
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        process = subprocess.Popen(
            [self._python, "-m", f"services.{name}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
        log_file.close()
        service = ServiceProcess(name, process, log_path)
        self.services[name] = service
        threading.Thread(target=self._read_stdout, args=(service,), daemon=True).start()

    @staticmethod
    def _read_stdout(service: ServiceProcess) -> None:
        for raw in service.process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(READY_PREFIX) and not service.ready.is_set():
                fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
                service.port = int(fields.get("port", 0))
                service.ready.set()

    def _wait(self, names: tuple[str, ...]) -> None:
        deadline = time.monotonic() + self._timeout
        for name in names:
            service = self.services[name]
            while not service.ready.wait(0.1):
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
        order = [s for s in reversed(SERVICES) if s in self.services]
        for name in order:
            process = self.services[name].process
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name in order:
            process = self.services[name].process
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
