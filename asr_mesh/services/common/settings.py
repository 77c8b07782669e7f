"""Typed settings shared by every service, read once from the environment in `main()`.

Each service subclasses `ServerSettings` with its own prefix (`ASR_PREPROCESS_`, ...). Cores
never read `os.environ`: they receive values from these objects.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from asr_mesh.client.paths import default_state_dir  # the client reads the same directory


class ServerSettings(BaseSettings):
    """Settings every gRPC server of the mesh has."""

    model_config = SettingsConfigDict(env_prefix="ASR_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Interface to bind; 0.0.0.0 in containers.")
    port: int = Field(default=0, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    max_workers: int = Field(default=8, ge=1, description="Threads serving RPCs concurrently.")
    grace_period_s: float = Field(default=10.0, ge=0, description="Drain time on SIGTERM.")
    max_message_bytes: int = Field(
        default=64 << 20, ge=4 << 20, description="Largest gRPC message."
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        validation_alias=AliasChoices("ASR_STATE_DIR"),
        description="Directory for traces and runtime files.",
    )
    max_connection_age_s: float = Field(
        default=0.0,
        ge=0,
        description="Close client connections after this age (0 = never) so round-robin clients "
        "re-resolve DNS and find new pods.",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = off."
    )
    upload_idle_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="Refuse a request stream (DEADLINE_EXCEEDED) once no message has arrived for "
        "this long; 0 = wait forever. A caller that stalls would otherwise hold a worker. Measured "
        "between whole messages, so it also sets a floor on upload speed: the SDK's 256 KiB "
        "pieces need about 4.4 KB/s at the default.",
    )
    upload_min_bytes_per_s: float = Field(
        default=4096.0,
        ge=0,
        description="Event-loop servers (the gateway): once a request stream has been open for "
        "upload_rate_window_s, the bytes received over the last window must average at least "
        "this (a trickle that never pauses long is still cut, DEADLINE_EXCEEDED); 0 = no floor. "
        "Real-time streaming sessions are exempt.",
    )
    upload_rate_window_s: float = Field(
        default=20.0, gt=0, description="Window of upload_min_bytes_per_s."
    )
    upload_max_duration_s: float = Field(
        default=3600.0,
        ge=0,
        description="Event-loop servers: longest a request stream (an upload) may "
        "stay open; 0 = no limit. Real-time streaming sessions are exempt.",
    )
    parent_pid: int = Field(
        default=0,
        validation_alias=AliasChoices("ASR_PARENT_PID"),
        description="Set by the local supervisor: exit when that process dies.",
    )
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("ASR_LOG_LEVEL"))
    log_format: str = Field(
        default="json",
        pattern="^(json|text)$",
        validation_alias=AliasChoices("ASR_LOG_FORMAT"),
        description="json (structured, with trace ids) or text.",
    )
    # TLS, tokens and reflection: see asr_mesh/services/common/security.py and README "Security".
    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate chain of this server; with tls_key_file the port speaks TLS.",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle of the mesh: verifies client certificates, and the services "
        "this one calls (the gateway's channels use TLS when it is set).",
    )
    tls_require_client_cert: bool = Field(
        default=False,
        description="mTLS: refuse callers without a certificate signed by tls_ca_file "
        "(internal services: only mesh peers may call).",
    )
    tls_client_cert_file: Path | None = Field(
        default=None,
        description="Certificate this process shows to the services it calls; tls_cert_file if "
        "unset.",
    )
    tls_client_key_file: Path | None = Field(
        default=None, description="Key of tls_client_cert_file."
    )
    auth_token_file: Path | None = Field(
        default=None,
        description="Bearer tokens callers must send (one per line, '#' comments, optional "
        "label after the token); reread when the file changes. Unset: no token needed.",
    )
    reflection_enabled: bool = Field(
        default=False,
        description="Serve gRPC reflection (grpcurl, buf curl). Health is always served.",
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Also serve grpc.health.v1 alone, in plaintext, on this port "
        "(Kubernetes gRPC probes cannot speak TLS); 0 = off.",
    )
    # Bounded cost per request (asr_mesh/services/common/limits.py): the same caps on every service.
    cap_beam_size: int = Field(
        default=10, ge=1, description="Largest beam_size a request may ask for."
    )
    cap_best_of: int = Field(default=10, ge=1, description="Largest best_of a request may ask for.")
    cap_temperatures: int = Field(default=6, ge=1, description="Most temperature fallback steps.")
    cap_prompt_chars: int = Field(
        default=1000, ge=0, description="Longest initial_prompt, in characters."
    )
    cap_hotword_items: int = Field(
        default=100, ge=0, description="Most hotwords (whitespace-separated words)."
    )
    cap_hotwords_chars: int = Field(
        default=2000, ge=0, description="Longest hotwords string, in characters."
    )
    cap_speakers: int = Field(
        default=20, ge=1, description="Largest num/min/max_speakers a request may ask for."
    )

    @model_validator(mode="after")
    def _tls_files_pair_up(self) -> ServerSettings:
        prefix = str(self.model_config.get("env_prefix", "ASR_"))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError(f"{prefix}TLS_CERT_FILE and {prefix}TLS_KEY_FILE must be set together")
        if bool(self.tls_client_cert_file) != bool(self.tls_client_key_file):
            raise ValueError(
                f"{prefix}TLS_CLIENT_CERT_FILE and {prefix}TLS_CLIENT_KEY_FILE must be set together"
            )
        if self.tls_require_client_cert and not (self.tls_cert_file and self.tls_ca_file):
            raise ValueError(
                f"{prefix}TLS_REQUIRE_CLIENT_CERT needs {prefix}TLS_CERT_FILE, "
                f"{prefix}TLS_KEY_FILE and {prefix}TLS_CA_FILE"
            )
        return self


class QueuedServerSettings(ServerSettings):
    """A server whose requests wait in a WorkQueue (asr_mesh/services/common/scheduler.py).

    Every admitted request holds a server thread while it waits or works, so the thread pool
    must be larger than what the queue admits: refusals and health checks need free threads,
    or a full queue would look like a dead pod to Kubernetes.
    """

    num_workers: int = Field(default=1, ge=1, description="Requests worked on at once.")
    max_queued: int = Field(
        default=4, ge=0, description="Requests that may wait; beyond it RESOURCE_EXHAUSTED."
    )

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
