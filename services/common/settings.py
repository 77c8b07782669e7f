"""Typed settings shared by every service, read once from the environment in `main()`.

Each service subclasses `ServerSettings` with its own prefix (`ASR_PREPROCESS_`, ...). Cores
never read `os.environ`: they receive values from these objects.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    """Where a local mesh keeps traces and runtime files (`ASR_STATE_DIR` overrides it)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "asr-mesh"


class ServerSettings(BaseSettings):
    """Settings every gRPC server of the mesh has."""

    model_config = SettingsConfigDict(env_prefix="ASR_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    max_workers: int = Field(8, ge=1, description="Threads serving RPCs concurrently.")
    grace_period_s: float = Field(10.0, ge=0, description="Drain time on SIGTERM.")
    max_message_bytes: int = Field(64 << 20, ge=4 << 20, description="Largest gRPC message.")
    state_dir: Path = Field(
        default_factory=default_state_dir,
        validation_alias=AliasChoices("ASR_STATE_DIR"),
        description="Directory for traces and runtime files.",
    )
    max_connection_age_s: float = Field(
        0.0, ge=0,
        description="Close client connections after this age (0 = never) so round-robin clients "
        "re-resolve DNS and find new pods.",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off.")
    upload_idle_timeout_s: float = Field(
        60.0, ge=0,
        description="Refuse a request stream (DEADLINE_EXCEEDED) once no message has arrived for "
        "this long; 0 = wait forever. A caller that stalls would otherwise hold a worker. Measured "
        "between whole messages, so it also sets a floor on upload speed: the SDK's 256 KiB "
        "pieces need about 4.4 KB/s at the default.",
    )
    upload_min_bytes_per_s: float = Field(
        4096.0, ge=0,
        description="Event-loop servers (the gateway): once a request stream has been open for "
        "upload_rate_window_s, the bytes received over the last window must average at least this "
        "(a trickle that never pauses long is still cut, DEADLINE_EXCEEDED); 0 = no floor. Real-time "
        "streaming sessions are exempt.",
    )
    upload_rate_window_s: float = Field(20.0, gt=0, description="Window of upload_min_bytes_per_s.")
    upload_max_duration_s: float = Field(
        3600.0, ge=0, description="Event-loop servers: longest a request stream (an upload) may "
        "stay open; 0 = no limit. Real-time streaming sessions are exempt.",
    )
    parent_pid: int = Field(
        0, validation_alias=AliasChoices("ASR_PARENT_PID"),
        description="Set by the local supervisor: exit when that process dies.",
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("ASR_LOG_LEVEL"))
    log_format: str = Field(
        "json", pattern="^(json|text)$", validation_alias=AliasChoices("ASR_LOG_FORMAT"),
        description="json (structured, with trace ids) or text.",
    )


class QueuedServerSettings(ServerSettings):
    """A server whose requests wait in a WorkQueue (services/common/scheduler.py).

    Every admitted request holds a server thread while it waits or works, so the thread pool
    must be larger than what the queue admits: refusals and health checks need free threads,
    or a full queue would look like a dead pod to Kubernetes.
    """

    num_workers: int = Field(1, ge=1, description="Requests worked on at once.")
    max_queued: int = Field(4, ge=0, description="Requests that may wait; beyond it RESOURCE_EXHAUSTED.")

    @model_validator(mode="after")
    def _threads_outnumber_admitted_work(self) -> QueuedServerSettings:
        needed = self.num_workers + self.max_queued + 2
        if self.max_workers < needed:
            raise ValueError(
                f"max_workers ({self.max_workers}) must be at least num_workers + max_queued + 2 "
                f"({needed}): each admitted request holds a server thread, and refusals and "
                "health checks need free ones"
            )
        return self
