"""Bearer tokens on the gateway: the accept/refuse matrix through the SDK, reload, identity.

The gateway runs in process over TLS with fake downstream stages (tests/gateway/fakes.py);
the aio interceptor is checked on a grpc.aio server of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import FakeStages, tls, token_file  # noqa: F401 - fixtures

from asr.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from asr.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from asr_mesh.client.sdk import GatewayClient, TranscribeOptions
from asr_mesh.services.common.errors import PermissionDenied, Unauthenticated
from asr_mesh.services.common.security import (
    MISSING_TOKEN,
    AioBearerTokenInterceptor,
    SecurityConfigError,
    TokenFile,
    caller_identity,
    channel_credentials,
    default_label,
    token_digest,
)
from asr_mesh.services.gateway.server import GatewaySettings, create_server

pytestmark = pytest.mark.grpc


class IdentityStages(FakeStages):
    """Records who the chain ran for (the identity reaches the chain's worker thread)."""

    def transcribe(self, pcm, options, progress):
        self.caller = caller_identity.get()
        return super().transcribe(pcm, options, progress)


@pytest.fixture()
def gateway(tmp_path, tls, token_file, state_dir):  # noqa: F811
    stages = IdentityStages()
    settings = GatewaySettings(
        port=0,
        spool_dir=tmp_path,
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        auth_token_file=token_file,
    )
    handle = create_server(settings, stages_factory=lambda: stages)
    yield handle, stages
    handle.stop(0)


@pytest.fixture()
def audio(tmp_path) -> Path:
    path = tmp_path / "x.wav"
    path.write_bytes(b"RIFF" * 50)
    return path


def transcribe(handle, tls, audio: Path, token: str | None):  # noqa: F811
    with GatewayClient(handle.address, connect_timeout_s=5, ca_cert=tls.ca, token=token) as client:
        return client.transcribe(audio, TranscribeOptions(), timeout_s=20)


def test_right_token_is_served_and_its_label_is_the_callers_identity(gateway, tls, audio):  # noqa: F811
    handle, stages = gateway
    result = transcribe(handle, tls, audio, "alice-secret-token")
    assert [s.text for s in result.segments] == ["olá mundo"]
    assert stages.caller == "alice"
    transcribe(handle, tls, audio, "bob-secret-token")  # no label: a short hash of the token
    assert stages.caller == default_label(token_digest("bob-secret-token"))
    assert stages.caller.startswith("token-") and "bob" not in stages.caller


def test_no_token_is_unauthenticated_with_a_sentence(gateway, tls, audio):  # noqa: F811
    handle, stages = gateway
    with pytest.raises(Unauthenticated) as err:
        transcribe(handle, tls, audio, None)
    assert err.value.message == MISSING_TOKEN
    assert stages.calls == []  # refused before the upload was read


def test_wrong_token_is_permission_denied_with_a_sentence(gateway, tls, audio):  # noqa: F811
    handle, stages = gateway
    with pytest.raises(PermissionDenied) as err:
        transcribe(handle, tls, audio, "alice-secret-tokeN")
    assert "not one this gateway accepts" in err.value.message
    assert stages.calls == []


def test_a_malformed_authorization_header_is_unauthenticated(gateway, tls):  # noqa: F811
    handle, _ = gateway
    with grpc.secure_channel(handle.address, channel_credentials(tls.ca)) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListJobs(
                jobs_pb2.ListJobsRequest(),
                timeout=5,
                metadata=[("authorization", "Basic YWxpY2U6c2VjcmV0")],
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer <token>" in err.value.details()


def test_every_gateway_api_needs_the_token_and_health_does_not(gateway, tls):  # noqa: F811
    handle, _ = gateway
    with grpc.secure_channel(handle.address, channel_credentials(tls.ca)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            jobs_pb2_grpc.JobServiceStub(channel).ListJobs(jobs_pb2.ListJobsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.GatewayServiceStub(channel).StreamingTranscribe(iter([]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = jobs_pb2_grpc.JobServiceStub(channel).ListJobs(
            jobs_pb2.ListJobsRequest(),
            timeout=5,
            metadata=[("authorization", "Bearer alice-secret-token")],
        )
        assert list(listed.jobs) == []


def test_the_token_file_is_reread_when_it_changes(gateway, tls, audio, token_file):  # noqa: F811
    handle, stages = gateway
    transcribe(handle, tls, audio, "alice-secret-token")
    token_file.write_text("carol-new-token carol\n")
    stamp = time.time() + 5  # a new mtime even on a coarse clock
    os.utime(token_file, (stamp, stamp))
    with pytest.raises(PermissionDenied):  # revoked at once
        transcribe(handle, tls, audio, "alice-secret-token")
    transcribe(handle, tls, audio, "carol-new-token")
    assert stages.caller == "carol"


def test_a_token_is_never_sent_in_the_clear(gateway):
    with pytest.raises(SecurityConfigError, match="only over TLS"):
        GatewayClient(gateway[0].address, token="alice-secret-token")


def test_token_file_format_and_refusals(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n  t1   ops team # who\nt2\nt3\tbatch jobs\n")
    tokens = TokenFile(path)
    assert len(tokens) == 3
    assert tokens.identify("t3") == "batch jobs"
    assert tokens.identify("t1") == "ops team"
    assert tokens.identify("t2") == default_label(token_digest("t2"))
    assert tokens.identify("t4") is None and tokens.identify("") is None
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SecurityConfigError, match="holds no token"):
        TokenFile(empty)
    path.unlink()  # unreadable later: the last good set stays
    assert tokens.identify("t1") == "ops team"


def test_the_aio_interceptor_refuses_and_identifies_the_same_way(token_file):  # noqa: F811
    from grpc_health.v1 import health as health_module

    async def who(request: bytes, context) -> bytes:
        return caller_identity.get().encode()

    async def main() -> dict[str, str]:
        server = grpc.aio.server(interceptors=[AioBearerTokenInterceptor(TokenFile(token_file))])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "asr.test.v1.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
                )
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_module.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/asr.test.v1.Echo/Who")

                async def ask(name: str, metadata) -> None:
                    try:
                        seen[name] = (await call(b"", metadata=metadata, timeout=5)).decode()
                    except grpc.aio.AioRpcError as err:
                        seen[name] = f"{err.code().name}: {err.details()}"

                await asyncio.gather(
                    ask("none", None),
                    ask("wrong", [("authorization", "Bearer nope")]),
                    *[
                        ask(f"{who}{n}", [("authorization", f"Bearer {who}-secret-token")])
                        for n in range(5)
                        for who in ("alice", "bob")
                    ],
                )
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest()
                )
                seen["health"] = str(reply.status)
        finally:
            await server.stop(0)
        return seen

    seen = asyncio.run(main())
    assert seen["none"] == f"UNAUTHENTICATED: {MISSING_TOKEN}"
    assert seen["wrong"].startswith("PERMISSION_DENIED: the bearer token is not one")
    assert {seen[f"alice{n}"] for n in range(5)} == {"alice"}  # concurrent calls keep their own
    assert {seen[f"bob{n}"] for n in range(5)} == {default_label(token_digest("bob-secret-token"))}
    assert seen["health"] == str(health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize("enabled", [False, True])
def test_reflection_needs_no_token_only_when_it_is_served(token_file, enabled):  # noqa: F811
    from asr_mesh.services.common.security import Authenticator

    auth = Authenticator(TokenFile(token_file), reflection_enabled=enabled)
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    identity, error = auth.check(method, None)
    assert (error is None) == enabled
    assert auth.check("/grpc.health.v1.Health/Check", None) == ("", None)
    assert auth.check(
        "/asr.gateway.v1.GatewayService/Transcribe",
        [("authorization", "bearer alice-secret-token")],
    ) == ("alice", None)  # the scheme is case-insensitive


def test_serve_refuses_tokens_without_tls_and_an_empty_token_file(tmp_path, capsys):
    from asr_mesh.client import cli

    tokens = tmp_path / "tokens"
    tokens.write_text("tok\n")
    assert (
        cli.main(["serve", "--auth-token-file", str(tokens), "--state-dir", str(tmp_path / "s")])
        == 1
    )
    assert "--auth-token-file needs --tls" in capsys.readouterr().err
    tokens.write_text("# nobody yet\n")
    assert (
        cli.main(
            ["serve", "--tls", "--auth-token-file", str(tokens), "--state-dir", str(tmp_path / "s")]
        )
        == 1
    )
    assert "holds no token" in capsys.readouterr().err
    assert not (tmp_path / "s" / "mesh.json").exists()  # nothing was started


def test_clients_find_the_ca_and_token_from_flags_env_or_the_local_mesh(tmp_path, monkeypatch):
    import argparse
    import json

    from asr_mesh.client.security_args import client_security

    monkeypatch.delenv("ASR_TOKEN", raising=False)
    monkeypatch.delenv("ASR_CA_CERT", raising=False)
    state = tmp_path / "state"
    state.mkdir()
    (state / "mesh.json").write_text(
        json.dumps(
            {
                "gateway": [{"address": "127.0.0.1:5000"}],
                "supervisor": [{"tls_ca": "/state/tls/ca.pem"}],
            }
        )
    )
    args = argparse.Namespace(ca_cert=None, token=None, state_dir=state)
    assert client_security(args, "127.0.0.1:5000") == {
        "ca_cert": Path("/state/tls/ca.pem"),
        "token": None,
    }
    assert client_security(args, "10.0.0.9:50051") == {
        "ca_cert": None,
        "token": None,
    }  # another gateway
    monkeypatch.setenv("ASR_TOKEN", "from-env")
    monkeypatch.setenv("ASR_CA_CERT", "/env/ca.pem")
    assert client_security(args, "10.0.0.9:50051") == {
        "ca_cert": "/env/ca.pem",
        "token": "from-env",
    }
    flags = argparse.Namespace(ca_cert=Path("/flag/ca.pem"), token="from-flag", state_dir=state)
    assert client_security(flags, "127.0.0.1:5000") == {
        "ca_cert": Path("/flag/ca.pem"),
        "token": "from-flag",
    }
