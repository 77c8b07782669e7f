"""components/http: the HTTP front door's Deployment, Service, Ingress, policies and image.

The policies every Deployment meets (resources, pod security, one PDB each) are checked for it
by test_deploy_policy.py already; this module checks what is particular to it.
"""

from __future__ import annotations

import os

import pytest
from deploy_helpers import (
    DOCKER,
    K8S,
    OVERLAYS,
    container_env,
    get,
    kustomize,
    main_container,
    matches,
    objects,
    pod_spec,
    render,
    requires_kubectl,
)
from test_deploy_images import project_extras, runtime_targets, stages_of
from test_deploy_policy import Endpoint, _allowed
from test_deploy_settings import DOCKER_ENV, check_env

HTTP_PORT = 8080
WITH_HTTP = [
    o
    for o in OVERLAYS
    if "components/http" in (K8S / "overlays" / o / "kustomization.yaml").read_text()
]


def test_an_overlay_deploys_the_front_door() -> None:
    assert "cpu" in WITH_HTTP


@requires_kubectl
@pytest.mark.parametrize("overlay", WITH_HTTP)
def test_deployment_service_and_ingress(overlay: str) -> None:
    docs = render(overlay)
    deployment = get(docs, "Deployment", "http")
    container = main_container(deployment)
    assert (
        container["image"].rsplit(":", 1)[0].endswith("asr-mesh/http") and ":" in container["image"]
    )
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": HTTP_PORT}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Ready only when the gateway is: /readyz checks it.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": HTTP_PORT}
    env = container_env(docs, container)
    check_env("http", env, f"{overlay}: http")
    assert env["ASR_HTTP_PORT"] == str(HTTP_PORT) and env["ASR_HTTP_HOST"] == "0.0.0.0"
    assert env["ASR_HTTP_GATEWAY_ADDRESS"].split(":")[-1] == "50051"
    assert (
        pod_spec(deployment)["terminationGracePeriodSeconds"]
        >= float(env["ASR_HTTP_GRACE_PERIOD_S"]) + 10
    )
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    service = get(docs, "Service", "http")
    assert matches(
        {"matchLabels": service["spec"]["selector"]},
        deployment["spec"]["template"]["metadata"]["labels"],
    )
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", HTTP_PORT, "http")
    ]
    ingress = get(docs, "Ingress", "http")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "http", "port": {"name": "http"}}
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.removesuffix("m")) * 2**20 >= int(env["ASR_HTTP_MAX_UPLOAD_BYTES"]), (
        "the ingress must not refuse what the service accepts"
    )


@requires_kubectl
@pytest.mark.parametrize("overlay", WITH_HTTP)
def test_network_policies_let_clients_in_and_http_reach_only_the_gateway(overlay: str) -> None:
    docs = render(overlay)
    namespace = objects(docs, "Namespace")[0]["metadata"]["name"]
    policies = objects(docs, "NetworkPolicy")
    pods = {
        d["metadata"]["name"]: Endpoint(
            d["metadata"]["name"], namespace, d["spec"]["template"]["metadata"]["labels"]
        )
        for d in objects(docs, "Deployment")
    }
    http, gateway = pods["http"], pods["gateway"]
    ingress_controller = Endpoint(
        "ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
    )
    dns = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
    assert _allowed(policies, ingress_controller, http, HTTP_PORT)
    assert _allowed(policies, http, gateway, 50051)
    assert _allowed(policies, http, dns, 53, "UDP")
    for backend in ("preprocess", "transcription", "diarization", "merge"):
        assert not _allowed(policies, http, pods[backend], 50051), f"http -> {backend}"
    assert not _allowed(policies, http, Endpoint("internet", None), 443)
    if "otel-collector" in pods:
        assert _allowed(policies, http, pods["otel-collector"], 4317)


@requires_kubectl
def test_component_builds_alone_with_base(tmp_path) -> None:
    """The component is self-contained on top of base (as a user adds it to another overlay)."""
    overlay = tmp_path / "with-http"
    overlay.mkdir()
    base, component = (os.path.relpath(K8S / part, overlay) for part in ("base", "components/http"))
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: speech\n"
        f"resources:\n  - {base}\ncomponents:\n  - {component}\n"
    )
    docs = kustomize(overlay)
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] in ("Deployment", "Ingress")} == {
        "speech"
    }
    assert get(docs, "Deployment", "http")


def test_dockerfile() -> None:
    stages = stages_of("http")
    assert project_extras(stages) == {"http"}
    target = runtime_targets(stages)[0]
    assert target.all("ENTRYPOINT")[-1] == '["python", "-m", "asr_mesh.services.http"]'
    assert any("ffmpeg" in run for run in target.all("RUN")), (
        "WebM/Opus live audio is decoded by ffmpeg"
    )
    assert target.all("USER")[-1].split(":")[0] == "10001"
    env = dict(DOCKER_ENV.findall((DOCKER / "http.Dockerfile").read_text(encoding="utf-8")))
    check_env("http", env, "http.Dockerfile")
