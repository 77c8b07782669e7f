"""`--ca-cert` and `--token` for every `asr` command that calls a gateway.

Defaults: `$ASR_CA_CERT` and `$ASR_TOKEN` (an environment variable keeps the token out of `ps`
and shell history). A local mesh started with `asr serve --tls` publishes its CA in mesh.json,
so calls to it need no `--ca-cert`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TypedDict

from asr_mesh.client.paths import MESH_FILE, resolve_state_dir

__all__ = [
    "CA_ENV",
    "TOKEN_ENV",
    "ClientSecurity",
    "add_arguments",
    "client_security",
    "local_mesh_ca",
]

TOKEN_ENV = "ASR_TOKEN"
CA_ENV = "ASR_CA_CERT"


class ClientSecurity(TypedDict):
    """GatewayClient's keyword arguments for TLS and the bearer token."""

    ca_cert: str | Path | None
    token: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca-cert",
        type=Path,
        metavar="PEM",
        help=f"CA certificate to verify a TLS gateway with (default: ${CA_ENV}; a local "
        "`asr serve --tls` mesh is found without it)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"bearer token for a gateway that requires one (default: ${TOKEN_ENV}, "
        "which keeps it out of the process list)",
    )


def local_mesh_ca(state_dir: Path | None, address: str) -> Path | None:
    """The CA of the local mesh in `state_dir` when `address` is its gateway and it runs TLS."""
    try:
        table = json.loads((resolve_state_dir(state_dir) / MESH_FILE).read_text())
        if table["gateway"][0]["address"] != address:
            return None
        ca = table["supervisor"][0].get("tls_ca")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return Path(ca) if ca else None


def client_security(args: argparse.Namespace, address: str) -> ClientSecurity:
    """GatewayClient keyword arguments (`ca_cert`, `token`) for these arguments and `address`."""
    ca = (
        getattr(args, "ca_cert", None)
        or os.environ.get(CA_ENV)
        or local_mesh_ca(getattr(args, "state_dir", None), address)
    )
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    return {"ca_cert": ca or None, "token": token}
