"""The tls and cert-manager components: every hop TLS, mTLS inside, tokens at the gateway.

What a typo would silently break in a cluster: a file path outside the mounted Secret, a
certificate that does not name the address the gateway dials (every handshake fails), a
Secret nobody mounts or nobody makes, an internal service left open to any caller.
"""

from __future__ import annotations

import posixpath

import pytest
from deploy_helpers import (
    BACKENDS,
    OVERLAYS,
    SERVICES,
    container_env,
    main_container,
    mesh_deployments,
    objects,
    pod_spec,
    render,
    requires_kubectl,
)

pytestmark = requires_kubectl

TLS_OVERLAYS = [o for o in OVERLAYS if o.endswith("-tls")]


def test_there_is_a_tls_overlay() -> None:
    assert TLS_OVERLAYS, "an overlay builds the tls and cert-manager components"


def _mounted_secrets(deployment: dict) -> dict[str, tuple[str, dict]]:
    """mountPath -> (secret name, volume) for the main container's Secret mounts."""
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    found = {}
    for mount in main_container(deployment).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" in volume:
            assert mount.get("readOnly"), f"{mount['mountPath']}: Secrets are mounted read-only"
            found[mount["mountPath"]] = (volume["secret"]["secretName"], volume)
    return found


def _secret_file(deployment: dict, path: str) -> tuple[str, str]:
    """(Secret, key) that `path` reads inside the container; fails when no Secret holds it."""
    directory, key = posixpath.split(path)
    mounts = _mounted_secrets(deployment)
    assert directory in mounts, f"{path}: no Secret mounted at {directory}"
    secret, volume = mounts[directory]
    items = volume["secret"].get("items")
    if items:
        by_path = {item["path"]: item["key"] for item in items}
        assert key in by_path, f"{path}: not among the Secret's items"
        key = by_path[key]
    return secret, key


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_every_service_serves_tls_from_its_own_secret(overlay: str) -> None:
    docs = render(overlay)
    certificates = {c["spec"]["secretName"]: c for c in objects(docs, "Certificate")}
    for name, deployment in mesh_deployments(docs).items():
        env = container_env(docs, main_container(deployment))
        prefix = f"ASR_{name.upper()}_"
        files = {
            k: _secret_file(deployment, env[prefix + k])
            for k in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")
        }
        assert {secret for secret, _ in files.values()} == {f"{name}-tls"}
        assert {k: key for k, (_, key) in files.items()} == {
            "TLS_CERT_FILE": "tls.crt",
            "TLS_KEY_FILE": "tls.key",
            "TLS_CA_FILE": "ca.crt",
        }  # cert-manager's keys
        assert f"{name}-tls" in certificates, f"nothing makes the Secret {name}-tls"
        assert env.get(prefix + "REFLECTION_ENABLED", "false") == "false"
        if name == "gateway":
            assert env.get(prefix + "TLS_REQUIRE_CLIENT_CERT", "false") == "false", (
                "callers of the gateway authenticate with tokens, not certificates"
            )
            assert _secret_file(deployment, env[prefix + "AUTH_TOKEN_FILE"]) == (
                "gateway-auth-tokens",
                "tokens",
            )
        else:
            assert env[prefix + "TLS_REQUIRE_CLIENT_CERT"] == "true", (
                f"{name} must accept only mesh peers"
            )
            assert prefix + "AUTH_TOKEN_FILE" not in env


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_certificates_name_what_the_gateway_dials(overlay: str) -> None:
    docs = render(overlay)
    certificates = {c["spec"]["secretName"]: c["spec"] for c in objects(docs, "Certificate")}
    gateway = mesh_deployments(docs)["gateway"]
    env = container_env(docs, main_container(gateway))
    namespace = gateway["metadata"]["namespace"]
    for backend in BACKENDS:
        target = env[f"ASR_GATEWAY_{backend.upper()}_ADDRESS"].removeprefix("dns:///")
        host = target.rsplit(":", 1)[0]
        assert host == f"{backend}.{namespace}.svc.cluster.local"
        assert host in certificates[f"{backend}-tls"]["dnsNames"], (
            f"the {backend} certificate lacks {host}"
        )
    for service in SERVICES:
        assert (
            f"{service}.{namespace}.svc.cluster.local" in certificates[f"{service}-tls"]["dnsNames"]
        )
        assert certificates[f"{service}-tls"]["issuerRef"]["name"] == "asr-mesh-ca"


@pytest.mark.parametrize("overlay", TLS_OVERLAYS)
def test_plaintext_health_is_for_the_kubelet_only(overlay: str) -> None:
    docs = render(overlay)
    for service in objects(docs, "Service"):
        if service["metadata"]["name"] in SERVICES:
            assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}, (
                "the health-only port is not published by the Service"
            )


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_reflection_is_off_in_every_overlay(overlay: str) -> None:
    docs = render(overlay)
    for name, deployment in mesh_deployments(docs).items():
        env = container_env(docs, main_container(deployment))
        assert env.get(f"ASR_{name.upper()}_REFLECTION_ENABLED", "false") == "false", name
