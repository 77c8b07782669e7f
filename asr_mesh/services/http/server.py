"""The HTTP service process: uvicorn serving `create_app(settings)`; `create_server` for tests.

`create_server(settings)` binds the socket itself (port 0 picks a free one; SO_REUSEADDR so the
local supervisor's reserved port can be taken), runs uvicorn in a thread and returns a handle
with the bound port, like the gRPC services' factories. `main()` is `python -m
asr_mesh.services.http`: settings from ASR_HTTP_*, logs and traces like every service, `ASR_READY
service=http port=N`.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from asr_mesh.services.common.server import run_service
from asr_mesh.services.http.app import create_app
from asr_mesh.services.http.settings import HttpSettings

SERVICE = "http"


@dataclass
class HttpServerHandle:
    """A started HTTP server: `port`, `address`, `url`, and `stop(grace)`."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    host: str
    app: FastAPI

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in flight finish within `grace` seconds, then exit."""
        # uvicorn annotates int | None, but hands the value to asyncio.wait_for as seconds,
        # where a float is what it takes.
        self.server.config.timeout_graceful_shutdown = grace or 0.1  # type: ignore[assignment]
        self.server.should_exit = True
        self.thread.join((grace or 0) + 10)
        self.app.state.close()


def create_server(settings: HttpSettings) -> HttpServerHandle:
    """Start the HTTP service on `settings.host:settings.port` (0 = a free port)."""
    app = create_app(settings)
    sock = socket.socket(
        socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws_max_size=4 << 20,
        timeout_graceful_shutdown=settings.grace_period_s,  # type: ignore[arg-type] # seconds, see stop
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn"
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise OSError(f"the HTTP server did not start on {settings.host}:{settings.port}")
        time.sleep(0.02)
    return HttpServerHandle(server, thread, sock.getsockname()[1], settings.host, app)


def main() -> None:
    run_service(SERVICE, HttpSettings, create_server)


if __name__ == "__main__":
    main()
