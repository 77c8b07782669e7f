"""Where a local mesh keeps its files, as the client reads them (no server code needed).

`asr jobs`, `asr trace` and the `--ca-cert` default read what a local mesh (`asr serve`)
publishes in its state directory; the server's supervisor writes there using these same names.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MESH_FILE", "STATE_DIR_ENV", "default_state_dir", "resolve_state_dir"]

MESH_FILE = "mesh.json"
"""The table of a running local mesh (addresses, pids, its TLS CA), in its state directory."""
STATE_DIR_ENV = "ASR_STATE_DIR"


def default_state_dir() -> Path:
    """Where a local mesh keeps traces and runtime files by default (~/.local/state/asr-mesh)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "asr-mesh"


def resolve_state_dir(state_dir: Path | None = None) -> Path:
    """`state_dir`, else $ASR_STATE_DIR, else the default (~/.local/state/asr-mesh)."""
    return Path(state_dir or os.environ.get(STATE_DIR_ENV) or default_state_dir())
