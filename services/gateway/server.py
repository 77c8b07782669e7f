"""Gateway service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.gateway.v1 import gateway_service_pb2 as pb
from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from services.common.server import ServerHandle, build_server, run_service
from services.common.settings import ServerSettings
from services.gateway.downstream import Deadlines, Downstream, GrpcStages
from services.gateway.pipeline import Stages
from services.gateway.servicer import GatewayServicer
from services.gateway.streaming import StreamBridge

SERVICE = "gateway"


class GatewaySettings(ServerSettings):
    """Environment: ASR_GATEWAY_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_GATEWAY_", extra="ignore")

    preprocess_address: str = Field("127.0.0.1:50051", description="host:port or dns:///name:port")
    transcription_address: str = Field("127.0.0.1:50052")
    diarization_address: str = Field("127.0.0.1:50053")
    merge_address: str = Field("127.0.0.1:50054")
    max_upload_bytes: int = Field(2 << 30, gt=0, description="Largest upload accepted.")
    spool_dir: Path | None = Field(None, description="Where uploads are spooled; system temp if unset.")
    preprocess_deadline_s: float = Field(
        1800.0, gt=0, description="Decoding a 4-hour file with loudnorm takes ~190 s on 2 cores.")
    deadline_base_s: float = Field(60.0, gt=0, description="Fixed part of the per-hop deadlines.")
    transcription_deadline_per_audio_s: float = Field(2.0, gt=0, description="Seconds per audio second.")
    diarization_deadline_per_audio_s: float = Field(1.0, gt=0, description="Seconds per audio second.")
    merge_deadline_s: float = Field(60.0, gt=0)

    def deadlines(self) -> Deadlines:
        return Deadlines(
            preprocess_s=self.preprocess_deadline_s,
            base_s=self.deadline_base_s,
            transcription_per_audio_s=self.transcription_deadline_per_audio_s,
            diarization_per_audio_s=self.diarization_deadline_per_audio_s,
            merge_s=self.merge_deadline_s,
        )


def create_server(settings: GatewaySettings, stages_factory: Callable[[], Stages] | None = None) -> ServerHandle:
    """Start a gateway; tests may inject `stages_factory` to replace the downstream services."""
    if stages_factory is None:
        downstream = Downstream(
            settings.preprocess_address, settings.transcription_address,
            settings.diarization_address, settings.merge_address, settings.max_message_bytes,
        )
        deadlines = settings.deadlines()

        def stages_factory() -> Stages:
            return GrpcStages(downstream, deadlines)

    bridge = StreamBridge(settings.transcription_address, settings.max_message_bytes)
    servicer = GatewayServicer(stages_factory, settings.max_upload_bytes, settings.spool_dir, bridge)
    handle = build_server(
        settings,
        register=lambda server: pb_grpc.add_GatewayServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["GatewayService"].full_name],
    )
    handle.on_stop.append(bridge.close)
    return handle


def main() -> None:
    run_service(SERVICE, GatewaySettings, create_server)


if __name__ == "__main__":
    main()
