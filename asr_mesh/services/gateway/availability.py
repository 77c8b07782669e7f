"""Which backends this gateway can reach, so requests needing an absent one are refused early.

A backend is absent when its address is empty (a deployment without diarization) or, with a
mesh file (`ASR_GATEWAY_MESH_FILE`, the local supervisor's `mesh.json`), while that file does
not list it: the local mesh starts diarization only when a request asks for speakers. An
unreadable mesh file says nothing either way, so the backend counts as present and the call is
tried. Pure: no gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from asr.common.v1.options_pb2 import RecognitionOptions
from asr_mesh.services.common.domain_errors import Category, MeshError
from asr_mesh.services.common.options import speaker_options_asked


class ServiceNotConfigured(MeshError):
    """The request needs a backend this mesh does not run."""

    category = Category.FAILED_PRECONDITION
    reason = "SERVICE_NOT_CONFIGURED"


class Backends:
    def __init__(self, addresses: Mapping[str, str], mesh_file: Path | None = None):
        self._addresses = dict(addresses)
        self._mesh_file = mesh_file

    def present(self, name: str) -> bool:
        if not self._addresses.get(name):
            return False
        if self._mesh_file is None:
            return True
        try:
            table = json.loads(self._mesh_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        return not isinstance(table, dict) or bool(table.get(name))

    def require_diarization(self, options: RecognitionOptions) -> None:
        """Refuse request options that set speaker options when no diarization service runs."""
        asked = speaker_options_asked(options)
        if asked and not self.present("diarization"):
            raise ServiceNotConfigured(
                f"this mesh runs no diarization service, so it cannot label speakers (asked for: "
                f"{', '.join(asked)}); send the request without speaker options, or use a mesh "
                "with diarization (the asr CLI starts it for --diarize)",
                metadata={"service": "diarization"},
            )
