"""Settings of the HTTP front door (environment: ASR_HTTP_*, plus ASR_STATE_DIR and OTEL_*)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from asr_mesh.services.common.settings import ServerSettings


class HttpSettings(ServerSettings):
    """Environment: ASR_HTTP_* (host, port, gateway_address, max_upload_bytes, api_tokens, ...)."""

    model_config = SettingsConfigDict(env_prefix="ASR_HTTP_", extra="ignore")

    gateway_address: str = Field("127.0.0.1:50050", description="The gateway's gRPC address.")
    max_upload_bytes: int = Field(
        1 << 30,
        gt=0,
        description="Largest request body (multipart upload) accepted; beyond it 413, counted "
        "while the body streams in, so nothing of an oversized upload reaches the gateway.",
    )
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer tokens; when set, every /v1 call needs "
        "`Authorization: Bearer <token>` (WebSocket: `?token=`). Empty: no authentication.",
    )
    gateway_ca_file: str = Field(
        "", description="PEM CA that signed a TLS gateway's certificate (empty: plaintext gateway)."
    )
    gateway_token: str = Field(
        "",
        description="Bearer token this front door presents to a gateway that requires one "
        "(needs gateway_ca_file: tokens travel only over TLS).",
    )
    gateway_connect_timeout_s: float = Field(
        5.0, gt=0, description="How long to wait for the gateway before answering 503."
    )
    request_timeout_s: float = Field(
        3600.0, gt=0, description="Deadline of one transcription through the gateway."
    )
    stream_config_timeout_s: float = Field(
        10.0, gt=0, description="A WebSocket must send its JSON config within this long."
    )
    ffmpeg: str = Field("ffmpeg", description="ffmpeg binary that decodes WebM/Ogg Opus streams.")
    page_enabled: bool = Field(True, description="Serve the live-captions page at /.")

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
