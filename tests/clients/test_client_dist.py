"""The client distribution really builds, installs and works on its own.

`uv venv` + `uv pip install ./clients` into a fresh venv (the wheel's build hook generates the
gRPC stubs), then, in that venv and outside the checkout: importing the client pulls in neither
the server nor its libraries, `asr --help` works, `asr transcribe` without --server says in one
line that the server is not installed, and `asr transcribe FILE --server ADDR` against a real
in-process gateway (fake stages) writes the transcript.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = [pytest.mark.packaging, pytest.mark.grpc]

REPO = Path(__file__).resolve().parents[2]


def _fake_stages() -> type:
    """tests/gateway/fakes.py's FakeStages: the gateway's real servicer, stand-in stages."""
    spec = importlib.util.spec_from_file_location(
        "gateway_fakes", REPO / "tests" / "gateway" / "fakes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeStages


def _uv() -> str:
    uv = Path(sys.executable).with_name("uv")  # make setup installs uv into the venv
    found = str(uv) if uv.exists() else shutil.which("uv")
    if not found:
        pytest.fail("uv not found next to the test interpreter or on PATH (make setup installs it)")
    return found


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No PYTHONPATH (it would put the checkout, and so the server, on the path), a private
    state directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "ASR_SERVER")
    }
    env["ASR_STATE_DIR"] = str(tmp_path / "state")
    return env


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client-venv")
    venv = root / "venv"
    env = _clean_env(root)
    uv = _uv()
    subprocess.run(
        [uv, "venv", "-q", "--python", sys.executable, str(venv)],
        check=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    done = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            str(REPO / "clients"),
        ],
        env=env,
        cwd=root,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture()
def gateway(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    handle = create_server(GatewaySettings(port=0, spool_dir=spool), stages_factory=_fake_stages())
    yield handle.address
    handle.stop(0)


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=_clean_env(cwd),
        stdin=subprocess.DEVNULL,
    )


def test_the_client_alone_imports_without_the_server(client_venv, tmp_path):
    program = (
        "import sys\n"
        "import asr_mesh.client\n"
        "from asr_mesh.client import GatewayClient, TranscribeOptions, InvalidAudio\n"
        "from asr.gateway.v1 import gateway_service_pb2_grpc\n"
        "import asr_mesh.client.cli\n"
        "heavy = [m for m in ('asr_mesh.services', 'clients', 'torch', 'numpy', 'pydantic',\n"
        "                     'faster_whisper') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "try:\n"
        "    import asr_mesh.services\n"
        "except ModuleNotFoundError:\n"
        "    print('no server')\n"
    )
    done = run(client_venv, "python", "-c", program, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "no server"
    freeze = subprocess.run(
        [_uv(), "pip", "freeze", "--python", str(client_venv / "bin" / "python")],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(tmp_path),
    )
    installed = {line.split("==")[0].split(" @ ")[0].lower() for line in freeze.stdout.splitlines()}
    assert "asr-mesh-client" in installed and "asr-mesh" not in installed
    assert not installed & {"torch", "numpy", "pydantic-settings", "faster-whisper", "ctranslate2"}


def test_asr_help_and_the_missing_server_sentence(client_venv, tmp_path):
    helped = run(client_venv, "asr", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "transcribe" in helped.stdout
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    local = run(client_venv, "asr", "transcribe", "x.wav", cwd=tmp_path)
    assert local.returncode != 0
    lines = local.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in local.stderr, local.stderr
    assert lines[0].startswith(
        "asr: `asr transcribe` without --server runs a local mesh, which "
        "needs the server package (asr-mesh), and it is not installed"
    )


def test_transcribe_against_a_real_gateway(client_venv, gateway, tmp_path):
    audio = tmp_path / "talk.wav"
    audio.write_bytes(b"RIFF" + b"\0" * 64)
    out = tmp_path / "out"
    done = run(
        client_venv,
        "asr",
        "transcribe",
        str(audio),
        "--server",
        gateway,
        "--format",
        "srt,json",
        "-o",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "talk.wav: 1.0 s of audio" in done.stderr
    # The fake merge stage renders "<format>:<transcript>": what the gateway sent, written as is.
    assert (out / "talk.srt").read_text(encoding="utf-8") == "srt:olá mundo"
    assert (out / "talk.json").read_text(encoding="utf-8") == "json:olá mundo"
