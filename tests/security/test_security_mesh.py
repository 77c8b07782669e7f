"""The whole CLI path over TLS and tokens: `asr serve --tls --auth-token-file`, then the clients.

Every service runs as its own process with TLS, the internal ones requiring the mesh's client
certificate; the gateway requires a token. One mesh serves every check of the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr_mesh.services.common.security import MISSING_TOKEN, channel_credentials

pytestmark = pytest.mark.mesh

REPO = Path(__file__).resolve().parents[2]
ASR = [sys.executable, "-m", "asr_mesh.client.cli"]
TOKEN = "mesh-test-token-1f2e"


@pytest.fixture(scope="module")
def secure_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure-mesh")
    state = root / "state"
    tokens = root / "tokens"
    tokens.write_text(f"# the test's caller\n{TOKEN} tester\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ASR_TOKEN", "ASR_CA_CERT")}
    serve = subprocess.Popen(
        [
            *ASR,
            "serve",
            "--tls",
            "--auth-token-file",
            str(tokens),
            "--no-diarization",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        line = serve.stdout.readline()
        assert line.startswith("gateway listening on "), line + serve.stderr.read()
        yield {
            "address": line.split()[-1],
            "state": state,
            "root": root,
            "env": env,
            "ca": state / "tls" / "ca.pem",
        }
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()


def asr(mesh, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ASR, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env={**mesh["env"], **env},
    )


def test_transcribe_with_the_ca_and_a_token_succeeds(secure_mesh, corpus, tmp_path):
    out = tmp_path / "out"
    proc = asr(
        secure_mesh,
        "transcribe",
        str(corpus / "asr" / "001.flac"),
        "-o",
        str(out),
        "--quiet",
        "--server",
        secure_mesh["address"],
        "--ca-cert",
        str(secure_mesh["ca"]),
        "--token",
        TOKEN,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "001.json").is_file()


def test_the_local_mesh_ca_and_asr_token_need_no_flags(secure_mesh, corpus, tmp_path):
    """Without --server the CLI finds the running `asr serve --tls` mesh and its CA."""
    proc = asr(
        secure_mesh,
        "transcribe",
        str(corpus / "asr" / "001.flac"),
        "-o",
        str(tmp_path),
        "--quiet",
        "--state-dir",
        str(secure_mesh["state"]),
        ASR_TOKEN=TOKEN,
    )
    assert proc.returncode == 0, proc.stderr
    proc = asr(
        secure_mesh, "jobs", "list", "--state-dir", str(secure_mesh["state"]), ASR_TOKEN=TOKEN
    )
    assert proc.returncode == 0, proc.stderr


def test_no_token_and_a_wrong_token_are_refused_in_one_line(secure_mesh, corpus, tmp_path):
    common = ["--server", secure_mesh["address"], "--ca-cert", str(secure_mesh["ca"])]
    proc = asr(
        secure_mesh,
        "transcribe",
        str(corpus / "asr" / "001.flac"),
        "-o",
        str(tmp_path),
        "--quiet",
        *common,
    )
    assert proc.returncode == 1 and MISSING_TOKEN in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = asr(secure_mesh, "submit", str(corpus / "asr" / "001.flac"), *common, "--token", "nope")
    assert proc.returncode == 1 and "not one this gateway accepts" in proc.stderr, proc.stderr
    proc = asr(secure_mesh, "jobs", "list", *common, ASR_TOKEN="nope")
    assert proc.returncode == 1 and "not one this gateway accepts" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.json"))


def test_plaintext_to_the_tls_gateway_fails_in_one_line(secure_mesh, corpus, tmp_path):
    proc = asr(
        secure_mesh,
        "transcribe",
        str(corpus / "asr" / "001.flac"),
        "-o",
        str(tmp_path),
        "--quiet",
        "--server",
        secure_mesh["address"],
        "--connect-timeout",
        "3",
    )
    assert proc.returncode == 1 and "cannot reach the gateway" in proc.stderr, proc.stderr
    proc = asr(secure_mesh, "jobs", "list", "--server", secure_mesh["address"], "--token", TOKEN)
    assert proc.returncode == 1 and "only over TLS" in proc.stderr, proc.stderr


def test_internal_services_refuse_callers_without_the_mesh_certificate(secure_mesh):
    import json

    table = json.loads((secure_mesh["state"] / "mesh.json").read_text())
    tls_dir = secure_mesh["state"] / "tls"
    for name in ("preprocess", "transcription", "merge"):
        address = table[name][0]["address"]
        with grpc.secure_channel(address, channel_credentials(secure_mesh["ca"])) as channel:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, name
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        with grpc.secure_channel(
            address,
            channel_credentials(secure_mesh["ca"], tls_dir / "mesh.pem", tls_dir / "mesh.key"),
        ) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
