"""The public surface of the client distribution (asr_mesh.client): the names a user imports.

Adding a name is fine; removing or renaming one of these breaks callers, so it fails here.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "src" / "asr_mesh" / "client"

PUBLIC = {
    "asr_mesh.client": {
        "GatewayClient",
        "GatewayUnreachable",
        "StreamOptions",
        "TranscribeOptions",
        "Transcription",
        "FORMATS",
        "Category",
        "MeshError",
        "InvalidInput",
        "InvalidAudio",
        "LimitExceeded",
        "UnknownModel",
        "Overloaded",
        "DependencyUnavailable",
        "Draining",
        "DependencyFailed",
        "DeadlineExceeded",
        "UploadStalled",
        "Cancelled",
        "InternalError",
        "NotFound",
        "FailedPrecondition",
        "Unauthenticated",
        "PermissionDenied",
        "from_rpc_error",
        "SecurityConfigError",
        "__version__",
    },
    "asr_mesh.client.flat_fields": {"FLAT_FIELDS"},
    "asr_mesh.client.sdk": {
        "GatewayClient",
        "GatewayUnreachable",
        "StreamOptions",
        "TranscribeOptions",
        "Transcription",
        "FORMATS",
        "FINAL_JOB_STATES",
        "FLAT_FIELDS",
        "DEFAULT_ATTEMPTS",
        "DEFAULT_LANGUAGE",
        "UPLOAD_CHUNK_BYTES",
    },
    "asr_mesh.client.errors": {
        "Category",
        "MeshError",
        "InvalidInput",
        "InvalidAudio",
        "LimitExceeded",
        "UnknownModel",
        "Overloaded",
        "DependencyUnavailable",
        "Draining",
        "DependencyFailed",
        "DeadlineExceeded",
        "UploadStalled",
        "Cancelled",
        "InternalError",
        "NotFound",
        "FailedPrecondition",
        "Unauthenticated",
        "PermissionDenied",
        "KNOWN",
        "BY_REASON",
        "GENERAL",
        "rebuild",
    },
    "asr_mesh.client.status": {
        "ERROR_DOMAIN",
        "STATUS_OF",
        "category_of",
        "from_rpc_error",
        "status_code",
    },
    "asr_mesh.client.security": {
        "AUTH_METADATA_KEY",
        "BearerTokenAuth",
        "SecurityConfigError",
        "channel_credentials",
        "client_channel",
        "read_pem",
    },
    "asr_mesh.client.tracing": {"traced_channel"},
    "asr_mesh.client.paths": {
        "MESH_FILE",
        "STATE_DIR_ENV",
        "default_state_dir",
        "resolve_state_dir",
    },
    "asr_mesh.client.cli": {"ServerNotInstalled", "build_parser", "main"},
    "asr_mesh.client.traces": {
        "Span",
        "Trace",
        "load_spans",
        "match_traces",
        "recent_traces",
        "print_waterfall",
        "trace_json",
        "save_png",
    },
}

CLIENT_METHODS = {
    "transcribe",
    "transcribe_file",
    "stream",
    "submit_job",
    "submit_job_file",
    "get_job",
    "watch_job",
    "list_jobs",
    "cancel_job",
    "delete_job",
    "job_results",
    "wait_job",
    "close",
    "__enter__",
    "__exit__",
}
TRANSCRIBE_OPTIONS = {
    "language_code",
    "diarize",
    "num_speakers",
    "min_speakers",
    "max_speakers",
    "model",
    "formats",
    "speaker_names",
    "temperatures",
    "quality_profile",
    "best_of",
    "hotwords",
    "inverse_text_normalization",
    "loudness_normalization",
    "trim_silence",
    "beam_size",
    "initial_prompt",
    "no_cache",
}
STREAM_OPTIONS = {
    "language_code",
    "model",
    "profile",
    "interim_results",
    "endpoint_silence_s",
    "endpointing",
    "max_session_s",
    "initial_prompt",
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_every_public_name_is_in_all_and_resolves(module_name):
    module = importlib.import_module(module_name)
    missing = PUBLIC[module_name] - set(module.__all__)
    assert not missing, f"{module_name}.__all__ lost {sorted(missing)}"
    for name in module.__all__:  # and nothing in __all__ is stale
        assert getattr(module, name) is not None, f"{module_name}.{name}"


def test_the_package_reexports_the_same_objects_as_its_modules():
    import asr_mesh.client as client
    from asr_mesh.client import errors, sdk, security, status

    assert client.GatewayClient is sdk.GatewayClient
    assert client.InvalidAudio is errors.InvalidAudio
    assert client.from_rpc_error is status.from_rpc_error
    assert client.SecurityConfigError is security.SecurityConfigError
    with pytest.raises(AttributeError):
        client.NoSuchName  # noqa: B018


def test_star_import_gives_the_public_names():
    namespace: dict = {}
    exec("from asr_mesh.client import *", namespace)
    assert PUBLIC["asr_mesh.client"] <= set(namespace)


def test_gateway_client_methods_and_option_fields():
    from asr_mesh.client import GatewayClient, StreamOptions, TranscribeOptions

    assert CLIENT_METHODS <= set(dir(GatewayClient))
    assert TRANSCRIBE_OPTIONS <= {f.name for f in dataclasses.fields(TranscribeOptions)}
    assert STREAM_OPTIONS <= {f.name for f in dataclasses.fields(StreamOptions)}


def test_the_server_sees_the_client_classes_and_one_status_table():
    """asr_mesh.services.common.* re-export the client's objects: one class per error, one table."""
    from asr_mesh.client import errors, security, status
    from asr_mesh.services.common import domain_errors
    from asr_mesh.services.common import errors as server_errors
    from asr_mesh.services.common import security as server_security

    assert domain_errors.InvalidAudio is errors.InvalidAudio
    assert server_errors.InvalidAudio is errors.InvalidAudio
    assert server_errors.STATUS_OF is status.STATUS_OF
    assert server_errors.from_rpc_error is status.from_rpc_error
    assert server_security.SecurityConfigError is security.SecurityConfigError
    assert server_security.client_channel is security.client_channel


def _package_of(module: str) -> str:
    """The top-level name, or `asr_mesh.<x>` for the namespace the two distributions share."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "asr_mesh" else parts[0]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {_package_of(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(_package_of(node.module))
            if node.module == "asr_mesh":  # from asr_mesh import services
                names |= {f"asr_mesh.{alias.name}" for alias in node.names}
    return names


def test_no_module_of_the_client_imports_the_server_or_its_libraries():
    """Statically, so a lazy import inside a function is caught too. Only cli.py may import
    `asr_mesh.services`, and only inside the functions of the commands that run a local mesh (after
    `_supervisor` found the server, or said in one line that it is missing)."""
    files = sorted(CLIENT_SRC.rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        imported = _imported_modules(path)
        forbidden = imported & {
            "clients",
            "torch",
            "numpy",
            "pydantic",
            "pydantic_settings",
            "faster_whisper",
            "ctranslate2",
            "prometheus_client",
        }
        assert not forbidden, f"{path.name} imports {forbidden}"
        if path.name != "cli.py":
            assert "asr_mesh.services" not in imported, f"{path.name} imports the server"
    tree = ast.parse((CLIENT_SRC / "cli.py").read_text(encoding="utf-8"))
    server_users = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):
            if (
                isinstance(node, ast.ImportFrom)
                and _package_of(node.module or "") == "asr_mesh.services"
            ):
                server_users.add(function.name)
    assert server_users == {"_supervisor", "_serve_security"}
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not {m for m in top_level if m and _package_of(m) == "asr_mesh.services"}


def test_the_errors_module_pulls_in_neither_grpc_nor_the_sdk():
    """The server's cores import the errors through asr_mesh.services.common.domain_errors: the
    package's lazy __init__ must keep that free of gRPC."""
    program = (
        "import sys, asr_mesh.client.errors, asr_mesh.client.paths\n"
        "pulled = [m for m in ('grpc', 'asr_mesh.client.sdk', 'rich') if m in sys.modules]\n"
        "sys.exit(f'pulled {pulled}' if pulled else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_server_requires_this_client_version():
    """The root pyproject pins asr-mesh-client to the version the client declares (its
    __init__.__version__, read by hatch): a bump of one without the other fails here."""
    import tomllib

    from asr_mesh.client import __version__

    root = tomllib.loads((CLIENT_SRC.parents[3] / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [r for r in root["project"]["dependencies"] if r.startswith("asr-mesh-client")]
    assert pins == [f"asr-mesh-client=={__version__}"]
    client = tomllib.loads((CLIENT_SRC.parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    assert client["project"]["name"] == "asr-mesh-client"
    assert client["tool"]["hatch"]["version"]["path"] == "src/asr_mesh/client/__init__.py"
