"""Merge service: settings, `create_server` factory and `main()`."""

from __future__ import annotations

import logging

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from asr.merge.v1 import merge_service_pb2 as pb
from asr.merge.v1 import merge_service_pb2_grpc as pb_grpc
from asr_mesh.services.common.server import ServerHandle, build_server, run_service
from asr_mesh.services.common.settings import ServerSettings
from asr_mesh.services.merge.core import PAUSE_SPLIT_S, MergeOptions
from asr_mesh.services.merge.servicer import MergeServicer

SERVICE = "merge"
log = logging.getLogger(__name__)


class MergeSettings(ServerSettings):
    """Environment: ASR_MERGE_* (plus ASR_STATE_DIR and OTEL_*)."""

    model_config = SettingsConfigDict(env_prefix="ASR_MERGE_", extra="ignore")

    pause_split_s: float = Field(
        PAUSE_SPLIT_S, gt=0, description="Pause that starts a new segment."
    )
    max_line_chars: int = Field(
        42, ge=10, description="Longest subtitle line, speaker prefix included."
    )
    max_lines: int = Field(2, ge=1, le=2, description="Lines per subtitle cue.")
    min_cue_s: float = Field(
        0.7, gt=0, description="Shortest time a cue stays on screen, where possible."
    )
    max_cue_s: float = Field(7.0, gt=0, description="Longest time a cue stays on screen.")
    inverse_text_normalization: bool = Field(
        False, description="PT-BR ITN for every request, not only those that ask for it."
    )

    def merge_options(self) -> MergeOptions:
        """The core's options from these settings."""
        return MergeOptions(
            pause_split_s=self.pause_split_s,
            max_line_chars=self.max_line_chars,
            max_lines=self.max_lines,
            min_cue_s=self.min_cue_s,
            max_cue_s=self.max_cue_s,
            inverse_text_normalization=self.inverse_text_normalization,
        )


def create_server(settings: MergeSettings) -> ServerHandle:
    """Start a merge server (tests pass port 0)."""
    servicer = MergeServicer(settings.merge_options())
    return build_server(
        settings,
        register=lambda server: pb_grpc.add_MergeServiceServicer_to_server(servicer, server),
        service_names=[pb.DESCRIPTOR.services_by_name["MergeService"].full_name],
    )


def main() -> None:
    run_service(SERVICE, MergeSettings, create_server)


if __name__ == "__main__":
    main()
