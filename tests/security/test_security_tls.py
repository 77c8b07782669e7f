"""TLS and mTLS on real in-process servers: who gets in, who is refused, and what stays open.

The merge service stands in for every internal service (they all start through
`asr_mesh.services.common.server.build_server`); the gateway's side is its `Downstream` channels.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError
from security_helpers import other_ca, tls  # noqa: F401 - fixtures

from asr.merge.v1 import merge_service_pb2 as merge_pb
from asr.merge.v1 import merge_service_pb2_grpc as merge_grpc
from asr_mesh.services.common.security import (
    SecurityConfigError,
    channel_credentials,
    downstream_credentials,
)
from asr_mesh.services.gateway.downstream import Downstream
from asr_mesh.services.gateway.server import GatewaySettings
from asr_mesh.services.merge.server import MergeSettings, create_server

pytestmark = pytest.mark.grpc


def health(channel: grpc.Channel) -> str:
    """ "SERVING", or the status code name of the refusal."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.RpcError as err:
        return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def merge(channel: grpc.Channel) -> str:
    try:
        merge_grpc.MergeServiceStub(channel).Merge(
            merge_pb.MergeRequest(language_code="pt-BR"), timeout=5
        )
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


@pytest.fixture()
def server(request, tls):  # noqa: F811
    """A merge server; `request.param`: extra settings."""
    extra = getattr(request, "param", {})
    handle = create_server(
        MergeSettings(port=0, max_workers=2, **extra(tls) if callable(extra) else extra)
    )
    yield handle
    handle.stop(0)


def tls_only(files):
    return {"tls_cert_file": files.cert, "tls_key_file": files.key}


def mtls(files):
    return {**tls_only(files), "tls_ca_file": files.ca, "tls_require_client_cert": True}


def secure(port: int, creds: grpc.ChannelCredentials, host: str = "127.0.0.1") -> grpc.Channel:
    return grpc.secure_channel(f"{host}:{port}", creds)


@pytest.mark.parametrize("server", [tls_only], indirect=True)
def test_tls_server_accepts_a_client_that_trusts_its_ca_and_refuses_the_rest(server, tls, other_ca):  # noqa: F811
    with secure(server.port, channel_credentials(tls.ca)) as channel:
        assert health(channel) == "SERVING"
        assert merge(channel) == "OK"
    with secure(server.port, channel_credentials(tls.ca), host="localhost") as channel:
        assert health(channel) == "SERVING"  # the certificate names localhost too
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert health(channel) == "UNAVAILABLE"  # plaintext to a TLS port
    with secure(server.port, channel_credentials(other_ca.ca)) as channel:
        assert health(channel) == "UNAVAILABLE"  # a CA that did not sign the server


@pytest.mark.parametrize("server", [mtls], indirect=True)
def test_internal_service_with_mtls_accepts_only_mesh_peers(server, tls, other_ca):  # noqa: F811
    with secure(server.port, channel_credentials(tls.ca, tls.cert, tls.key)) as channel:
        assert merge(channel) == "OK"
    with secure(server.port, channel_credentials(tls.ca)) as channel:
        assert merge(channel) == "UNAVAILABLE"  # no client certificate
        assert health(channel) == "UNAVAILABLE"
    with secure(server.port, channel_credentials(tls.ca, other_ca.cert, other_ca.key)) as channel:
        assert merge(channel) == "UNAVAILABLE"  # a certificate of another CA
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert merge(channel) == "UNAVAILABLE"


@pytest.mark.parametrize("server", [mtls], indirect=True)
def test_the_gateways_channels_use_its_client_certificate(server, tls, state_dir):  # noqa: F811
    address = f"127.0.0.1:{server.port}"
    settings = GatewaySettings(
        port=0, tls_cert_file=tls.cert, tls_key_file=tls.key, tls_ca_file=tls.ca
    )
    with_tls = Downstream("", "", "", address, credentials=downstream_credentials(settings))
    without = Downstream("", "", "", address)
    try:
        with_tls.merge.Merge(merge_pb.MergeRequest(language_code="pt-BR"), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            without.merge.Merge(merge_pb.MergeRequest(language_code="pt-BR"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        with_tls.close()
        without.close()
    assert downstream_credentials(GatewaySettings(port=0)) is None  # no CA: plaintext, as before


def test_health_port_serves_plaintext_health_only(tls, state_dir):  # noqa: F811
    from asr_mesh.services.supervisor import reserve_port

    holder = reserve_port()
    port = holder.getsockname()[1]
    handle = create_server(MergeSettings(port=0, max_workers=2, health_port=port, **mtls(tls)))
    try:
        assert handle.health_port == port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert health(channel) == "SERVING"  # what a Kubernetes gRPC probe sees
            assert merge(channel) == "UNIMPLEMENTED"  # nothing else is on the plaintext port
        handle.set_serving(False)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert health(channel) == "NOT_SERVING"  # the same health as the TLS port
    finally:
        handle.stop(0)
        holder.close()


def list_services(channel: grpc.Channel) -> list[str] | str:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    try:
        [answer] = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
    except grpc.RpcError as err:
        return err.code().name
    return [s.name for s in answer.list_services_response.service]


def test_reflection_is_off_by_default_and_on_when_enabled(state_dir):
    off = create_server(MergeSettings(port=0, max_workers=2))
    on = create_server(MergeSettings(port=0, max_workers=2, reflection_enabled=True))
    try:
        with grpc.insecure_channel(off.address) as channel:
            assert list_services(channel) == "UNIMPLEMENTED"
            assert health(channel) == "SERVING"  # health is always served
        with grpc.insecure_channel(on.address) as channel:
            assert "asr.merge.v1.MergeService" in list_services(channel)
    finally:
        off.stop(0)
        on.stop(0)


def test_tls_settings_that_cannot_work_are_refused_with_the_variable_names(tls):  # noqa: F811
    with pytest.raises(ValidationError, match="ASR_MERGE_TLS_CERT_FILE and ASR_MERGE_TLS_KEY_FILE"):
        MergeSettings(tls_cert_file=tls.cert)
    with pytest.raises(ValidationError, match="ASR_MERGE_TLS_REQUIRE_CLIENT_CERT needs"):
        MergeSettings(tls_cert_file=tls.cert, tls_key_file=tls.key, tls_require_client_cert=True)
    missing = MergeSettings(
        port=0, tls_cert_file=tls.cert.parent / "missing.pem", tls_key_file=tls.key
    )
    with pytest.raises(SecurityConfigError, match="cannot read the TLS certificate .*missing.pem"):
        create_server(missing)


def test_local_ca_is_made_once_and_reused(tmp_path):
    from asr_mesh.services.common.local_ca import ensure_local_tls

    first = ensure_local_tls(tmp_path / "tls")
    stamp = first.cert.read_bytes(), first.ca.read_bytes()
    again = ensure_local_tls(tmp_path / "tls")
    assert (again.cert.read_bytes(), again.ca.read_bytes()) == stamp
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "tls" / "ca.key").unlink()  # a CA without its key cannot sign: make all anew
    (tmp_path / "tls" / "ca.pem").unlink()
    renewed = ensure_local_tls(tmp_path / "tls")
    assert renewed.ca.read_bytes() != stamp[1] and renewed.cert.read_bytes() != stamp[0]


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, state_dir):
    import shutil

    from asr_mesh.services.common.local_ca import ensure_local_tls

    first, second = ensure_local_tls(tmp_path / "a"), ensure_local_tls(tmp_path / "b")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("ca.pem", "mesh.pem", "mesh.key"):
        shutil.copy(first.cert.parent / name, live / name)
    handle = create_server(
        MergeSettings(
            port=0,
            max_workers=2,
            tls_cert_file=live / "mesh.pem",
            tls_key_file=live / "mesh.key",
            tls_ca_file=live / "ca.pem",
        )
    )
    try:
        with secure(handle.port, channel_credentials(first.ca)) as channel:
            assert merge(channel) == "OK"
        for name in ("ca.pem", "mesh.pem", "mesh.key"):  # what a Secret update does, file by file
            shutil.copy(second.cert.parent / name, live / name)
        with secure(handle.port, channel_credentials(second.ca)) as channel:
            assert merge(channel) == "OK"  # new connections get the renewed certificate
        with secure(handle.port, channel_credentials(first.ca)) as channel:
            assert merge(channel) == "UNAVAILABLE"
    finally:
        handle.stop(0)


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        (
            {
                "ASR_MERGE_TLS_CERT_FILE": "/nonexistent/mesh.pem",
                "ASR_MERGE_TLS_KEY_FILE": "/nonexistent/mesh.key",
            },
            "merge: invalid configuration: cannot read the TLS certificate /nonexistent/mesh.pem",
        ),
        (
            {"ASR_MERGE_TLS_REQUIRE_CLIENT_CERT": "true"},
            "ASR_MERGE_TLS_REQUIRE_CLIENT_CERT needs ASR_MERGE_TLS_CERT_FILE",
        ),
    ],
)
def test_a_service_with_unusable_tls_settings_exits_with_a_sentence(tmp_path, env, sentence):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    proc = subprocess.run(
        [sys.executable, "-m", "asr_mesh.services.merge"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo,
        stdin=subprocess.DEVNULL,
        env={**clean, "ASR_STATE_DIR": str(tmp_path), **env},
    )
    assert proc.returncode == 2
    assert sentence in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_aio_server_binds_the_same_credentials(tls):  # noqa: F811
    """The grpc.aio gateway uses the same `server_credentials` and `bind`."""
    import asyncio

    from grpc_health.v1 import health as health_module

    from asr_mesh.services.common.security import bind, open_aio_channel, server_credentials

    settings = MergeSettings(port=0, **mtls(tls))

    async def main() -> list[str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_module.aio.HealthServicer(), server)
        port = bind(server, "127.0.0.1:0", server_credentials(settings))
        await server.start()
        seen = []
        try:
            for creds in (
                channel_credentials(tls.ca, tls.cert, tls.key),
                channel_credentials(tls.ca),
            ):
                async with open_aio_channel(f"127.0.0.1:{port}", credentials=creds) as channel:
                    try:
                        await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=5
                        )
                        seen.append("SERVING")
                    except grpc.aio.AioRpcError as err:
                        seen.append(err.code().name)
        finally:
            await server.stop(0)
        return seen

    assert asyncio.run(main()) == ["SERVING", "UNAVAILABLE"]
