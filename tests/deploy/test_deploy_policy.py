"""Policy checks on the rendered manifests of every overlay (the rules of issue 7).

Probes, resources, pod security, GPU placement, PDBs, load balancing, autoscaling, tracing and
scraping wiring. NetworkPolicies are checked by evaluating them: a small model of Kubernetes'
semantics decides which connections the rendered policies admit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from deploy_helpers import (
    BACKENDS,
    CPU_OVERLAYS,
    DOCKER,
    FRONT_DOORS,
    GPU_OVERLAYS,
    GRPC_PORT,
    METRICS_PORT,
    NAME,
    OVERLAYS,
    PART_OF,
    SERVICES,
    all_containers,
    container_env,
    get,
    main_container,
    matches,
    mesh_deployments,
    objects,
    pod_spec,
    quantity,
    render,
    requires_kubectl,
)

pytestmark = requires_kubectl

ALL = ["base", *OVERLAYS]
GPU = "nvidia.com/gpu"


def _namespace(docs: list[dict]) -> str:
    return objects(docs, "Namespace")[0]["metadata"]["name"]


# -- probes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_native_grpc_probes_on_every_service(overlay: str) -> None:
    docs = render(overlay)
    for name, deployment in mesh_deployments(docs).items():
        container = main_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # With TLS (components/tls) the probes, which cannot speak TLS, ask a plaintext port
        # that serves health alone (ASR_<SERVICE>_HEALTH_PORT).
        health_port = int(container_env(docs, container).get(f"ASR_{name.upper()}_HEALTH_PORT", 0))
        expected = {"grpc": GRPC_PORT, "metrics": METRICS_PORT} | (
            {"health": health_port} if health_port else {}
        )
        assert ports == expected, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe)
            assert spec, f"{name}: no {probe}"
            assert set(spec) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}, (
                f"{name}: {probe} must be a native gRPC probe"
            )
            assert spec["grpc"]["port"] == (health_port or GRPC_PORT)
            # "" (or no service) = the server's overall status, set NOT_SERVING while loading.
            assert spec["grpc"].get("service", "") == ""
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= 60, f"{name}: startup probe allows only {budget}s"
        liveness = container["livenessProbe"]
        assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 60, (
            f"{name}: liveness must tolerate a minute of slow health answers under load"
        )


@pytest.mark.parametrize("overlay", ALL)
def test_startup_probe_covers_model_load(overlay: str) -> None:
    docs = render(overlay)
    container = main_container(mesh_deployments(docs)["transcription"])
    env = container_env(docs, container)
    assert env["ASR_TRANSCRIPTION_PRELOAD"] == "true", (
        "the model loads before SERVING, so the startup probe (not traffic) waits for it"
    )
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, (
        "a large model (and a cold GPU) may take minutes to load"
    )


# -- resources and pod security --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for deployment in objects(render(overlay), "Deployment"):
        for container in all_containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request and limit, f"{where}: {resource} request and limit required"
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request > limit"


@pytest.mark.parametrize("overlay", ALL)
def test_pod_security(overlay: str) -> None:
    for deployment in objects(render(overlay), "Deployment"):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("runAsUser", 1) != 0, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token needed"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in all_containers(deployment):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where


@pytest.mark.parametrize("overlay", ALL)
def test_writable_tmp_and_state_dir_are_empty_dirs(overlay: str) -> None:
    docs = render(overlay)
    for name, deployment in mesh_deployments(docs).items():
        container = main_container(deployment)
        env = container_env(docs, container)
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in ("/tmp", env["ASR_STATE_DIR"]):
            assert path in mounts, f"{name}: nothing writable at {path}"
            assert not mounts[path].get("readOnly")
            volume = volumes[mounts[path]["name"]]
            assert "emptyDir" in volume and volume["emptyDir"].get("sizeLimit"), (
                f"{name}: {path} must be a size-limited emptyDir"
            )
        for key in ("ASR_GATEWAY_SPOOL_DIR", "ASR_PREPROCESS_TEMP_DIR"):
            if key in env:
                assert env[key] in mounts and not mounts[env[key]].get("readOnly"), key


@pytest.mark.parametrize("overlay", ALL)
def test_termination_grace_outlasts_the_drain(overlay: str) -> None:
    docs = render(overlay)
    for name, deployment in mesh_deployments(docs).items():
        env = container_env(docs, main_container(deployment))
        drain = float(env[f"ASR_{name.upper()}_GRACE_PERIOD_S"])
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= drain + 10, name


# -- GPU placement ----------------------------------------------------------------------------------


def _gpu_limit(container: dict) -> int:
    resources = container.get("resources", {})
    assert GPU not in resources.get("requests", {}) or resources["requests"][GPU] == resources.get(
        "limits", {}
    ).get(GPU), "GPU request != limit"
    return int(resources.get("limits", {}).get(GPU, 0))


def _wants_gpu_nodes(deployment: dict) -> bool:
    spec = pod_spec(deployment)
    return any("nvidia" in key for key in spec.get("nodeSelector", {})) or any(
        "nvidia" in t.get("key", "") for t in spec.get("tolerations", [])
    )


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_gpu_only_on_transcription(overlay: str) -> None:
    docs = render(overlay)
    deployments = mesh_deployments(docs)
    transcription = deployments["transcription"]
    container = main_container(transcription)
    assert _gpu_limit(container) == 1
    spec = pod_spec(transcription)
    assert spec["nodeSelector"], "GPU pods must land on GPU nodes"
    assert any(t["key"] == GPU and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    env = container_env(docs, container)
    assert env["ASR_TRANSCRIPTION_DEVICE"] == "cuda"
    assert env["ASR_TRANSCRIPTION_COMPUTE_TYPE"] == "float16"
    assert container["image"].split(":")[0].endswith("transcription-cuda")
    for deployment in objects(docs, "Deployment"):
        if deployment is transcription:
            continue
        name = deployment["metadata"]["name"]
        assert all(_gpu_limit(c) == 0 for c in all_containers(deployment)), f"{name} takes a GPU"
        assert not _wants_gpu_nodes(deployment), f"{name} is scheduled onto GPU nodes"
        env = container_env(docs, main_container(deployment))
        assert "cuda" not in {v for k, v in env.items() if k.endswith("_DEVICE")}, name


@pytest.mark.parametrize("overlay", ["base", *CPU_OVERLAYS])
def test_no_gpu_anywhere_on_cpu(overlay: str) -> None:
    docs = render(overlay)
    for deployment in objects(docs, "Deployment"):
        assert all(_gpu_limit(c) == 0 for c in all_containers(deployment))
        assert not _wants_gpu_nodes(deployment)
    container = main_container(mesh_deployments(docs)["transcription"])
    env = container_env(docs, container)
    assert env["ASR_TRANSCRIPTION_DEVICE"] == "cpu"
    assert env["ASR_TRANSCRIPTION_COMPUTE_TYPE"] == "int8"
    assert int(env["ASR_TRANSCRIPTION_CPU_THREADS"]) >= 1, (
        "0 would use every core of the node, not the container's share"
    )
    assert "-cuda" not in container["image"]


# -- availability: PDBs, replicas, autoscaling ------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_one_pdb_per_service(overlay: str) -> None:
    docs = render(overlay)
    pdbs = objects(docs, "PodDisruptionBudget")
    for name, deployment in mesh_deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if matches(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{name}: {len(covering)} PDBs select its pods"
        spec = covering[0]["spec"]
        # maxUnavailable keeps node drains possible with a single replica.
        assert spec.get("maxUnavailable") == 1 and "minAvailable" not in spec, name
    for deployment in objects(docs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(matches(p["spec"]["selector"], labels) for p in pdbs) == 1, deployment[
            "metadata"
        ]["name"]


def _autoscaled(docs: list[dict]) -> dict[str, dict]:
    found = {}
    for hpa in objects(docs, "HorizontalPodAutoscaler"):
        found[hpa["spec"]["scaleTargetRef"]["name"]] = hpa
    for scaled in objects(docs, "ScaledObject"):
        name = scaled["spec"]["scaleTargetRef"]["name"]
        assert name not in found, f"{name} has both an HPA and a ScaledObject"
        found[name] = scaled
    return found


@pytest.mark.parametrize("overlay", ALL)
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(overlay: str) -> None:
    docs = render(overlay)
    autoscaled = _autoscaled(docs)
    for name, deployment in mesh_deployments(docs).items():
        if name in autoscaled:
            assert "replicas" not in deployment["spec"], (
                f"{name}: spec.replicas would reset the autoscaler on every apply"
            )


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_autoscaling(overlay: str) -> None:
    docs = render(overlay)
    deployments = mesh_deployments(docs)
    autoscaled = _autoscaled(docs)
    assert set(autoscaled) == set(SERVICES)
    for name in ("gateway", "preprocess", "diarization", "merge"):
        hpa = autoscaled[name]
        if (
            name == "gateway" and hpa["kind"] == "ScaledObject"
        ):  # components/jobs: CPU + job backlog
            triggers = {t["type"]: t for t in hpa["spec"]["triggers"]}
            assert 0 < float(triggers["cpu"]["metadata"]["value"]) <= 90
            streams = [
                t["metadata"] for t in hpa["spec"]["triggers"] if t["type"] == "redis-streams"
            ]
            assert {m["stream"] for m in streams} == {"asr:jobs:queue"}
            assert {m["consumerGroup"] for m in streams} == {"runners"}
            assert all(
                m["address"] == f"redis.{_namespace(docs)}.svc.cluster.local:6379" for m in streams
            )
            continue
        assert hpa["kind"] == "HorizontalPodAutoscaler" and hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        metrics = hpa["spec"]["metrics"]
        assert [(m["type"], m["resource"]["name"]) for m in metrics] == [("Resource", "cpu")]
        assert 0 < metrics[0]["resource"]["target"]["averageUtilization"] <= 90
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # Utilisation is relative to the request: it must exist.
        assert main_container(deployments[name])["resources"]["requests"]["cpu"]
    scaled = autoscaled["transcription"]
    assert scaled["kind"] == "ScaledObject"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert re.search(r'\basr_queue_depth\{[^}]*service="transcription"', query), query
    assert f'namespace="{_namespace(docs)}"' in query


# -- load balancing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_headless_services_and_client_side_round_robin_targets(overlay: str) -> None:
    docs = render(overlay)
    namespace = _namespace(docs)
    deployments = mesh_deployments(docs)
    for name, deployment in deployments.items():
        service = get(docs, "Service", name)
        assert service["spec"].get("clusterIP") == "None", (
            f"{name}: headless, so DNS lists every pod for round_robin"
        )
        assert matches(
            {"matchLabels": service["spec"]["selector"]},
            deployment["spec"]["template"]["metadata"]["labels"],
        )
        ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
        assert ports["grpc"] == (GRPC_PORT, "grpc") and ports["metrics"] == (
            METRICS_PORT,
            "metrics",
        )
        env = container_env(docs, main_container(deployment))
        prefix = f"ASR_{name.upper()}_"
        assert (env[prefix + "HOST"], env[prefix + "PORT"], env[prefix + "METRICS_PORT"]) == (
            "0.0.0.0",
            str(GRPC_PORT),
            str(METRICS_PORT),
        )
    gateway_env = container_env(docs, main_container(deployments["gateway"]))
    for backend in BACKENDS:
        address = gateway_env[f"ASR_GATEWAY_{backend.upper()}_ADDRESS"]
        assert address == f"dns:///{backend}.{namespace}.svc.cluster.local:{GRPC_PORT}", address


# -- observability wiring -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_metrics_scrape_configuration(overlay: str) -> None:
    for name, deployment in mesh_deployments(render(overlay)).items():
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(METRICS_PORT), name
        assert annotations.get("prometheus.io/path") == "/metrics", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_traces_go_to_the_collector(overlay: str) -> None:
    docs = render(overlay)
    namespace = _namespace(docs)
    collector = get(docs, "Service", "otel-collector")
    assert 4317 in {p["port"] for p in collector["spec"]["ports"]}
    get(docs, "Deployment", "jaeger")
    collector_config = next(
        c
        for c in objects(docs, "ConfigMap")
        if c["metadata"]["name"].startswith("otel-collector-config")
    )
    assert "jaeger:4317" in collector_config["data"]["config.yaml"]
    for name, deployment in mesh_deployments(docs).items():
        env = container_env(docs, main_container(deployment))
        assert env["OTEL_TRACES_EXPORTER"] == "otlp", name
        assert (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"]
            == f"http://otel-collector.{namespace}.svc.cluster.local:4317"
        ), name
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"


def test_base_alone_exports_no_traces() -> None:
    """Without the tracing component the local file exporter would fill the state emptyDir."""
    docs = render("base")
    for deployment in mesh_deployments(docs).values():
        assert container_env(docs, main_container(deployment))["OTEL_TRACES_EXPORTER"] == "none"


# -- images --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL)
def test_one_image_per_service_with_a_dockerfile(overlay: str) -> None:
    docs = render(overlay)
    images = {}
    for name, deployment in mesh_deployments(docs).items():
        image = main_container(deployment)["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin a tag ({image})"
        assert repo.rsplit("/", 1)[-1] in {name, f"{name}-cuda"}, f"{name} runs {image}"
        assert (DOCKER / f"{name}.Dockerfile").is_file()
        images[name] = repo
    assert len(set(images.values())) == len(SERVICES), "each service has its own image"
    for deployment in objects(docs, "Deployment"):
        for container in all_containers(deployment):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            if "asr-mesh/" in image:
                component = image.rsplit("/", 1)[-1].split(":")[0].removesuffix("-cuda")
                assert (DOCKER / f"{component}.Dockerfile").is_file(), image


# -- network policies, evaluated ------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or, with namespace None, an address outside the cluster."""

    name: str
    namespace: str | None
    labels: dict = field(default_factory=dict, hash=False, compare=False)


def _ns_labels(namespace: str) -> dict:
    return {"kubernetes.io/metadata.name": namespace}


def _peer_matches(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return other.namespace is None  # the mesh's policies use none; treat as "outside"
    if other.namespace is None:
        return False
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    ns_ok = (
        matches(ns_sel, _ns_labels(other.namespace))
        if ns_sel is not None
        else other.namespace == policy_ns
    )
    pod_ok = matches(pod_sel, other.labels) if pod_sel is not None else True
    return ns_ok and pod_ok


def _rule_admits(
    rule: dict, peers_key: str, policy_ns: str, other: Endpoint, port: int, protocol: str
) -> bool:
    peers = rule.get(peers_key)
    if peers and not any(_peer_matches(p, policy_ns, other) for p in peers):
        return False
    ports = rule.get("ports")
    if not ports:
        return True
    for item in ports:
        assert isinstance(item.get("port", 0), int), "named ports are not used by the mesh"
        if item.get("protocol", "TCP") == protocol and item.get("port", port) <= port <= item.get(
            "endPort", item.get("port", port)
        ):
            return True
    return False


def _policy_types(policy: dict) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _allowed(
    policies: list[dict],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str = "TCP",
    sides: tuple[str, ...] = ("Egress", "Ingress"),
) -> bool:
    """Whether the policies admit src -> dst:port (both ends, or only the `sides` given)."""

    def side(pod: Endpoint, direction: str, other: Endpoint) -> bool:
        if pod.namespace is None:
            return True
        selecting = [
            p
            for p in policies
            if p["metadata"]["namespace"] == pod.namespace
            and direction in _policy_types(p)
            and matches(p["spec"]["podSelector"], pod.labels)
        ]
        if not selecting:
            return True
        key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        return any(
            _rule_admits(rule, peers, p["metadata"]["namespace"], other, port, protocol)
            for p in selecting
            for rule in p["spec"].get(key) or []
        )

    return ("Egress" not in sides or side(src, "Egress", dst)) and (
        "Ingress" not in sides or side(dst, "Ingress", src)
    )


@pytest.mark.parametrize("overlay", ALL)
def test_network_policies_allow_only_the_mesh_paths(overlay: str) -> None:
    docs = render(overlay)
    namespace = _namespace(docs)
    policies = objects(docs, "NetworkPolicy")
    assert any(
        p["spec"]["podSelector"] == {}
        and set(_policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ), "a default deny-all policy"
    pods = {
        d["metadata"]["name"]: Endpoint(
            d["metadata"]["name"], namespace, d["spec"]["template"]["metadata"]["labels"]
        )
        for d in objects(docs, "Deployment")
    }
    mesh = [pods[s] for s in SERVICES]
    client = Endpoint("client", "clients", {"app": "client"})
    prometheus = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = Endpoint("stranger", "default", {"app": "curious"})
    dns = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
    internet = Endpoint("internet", None)

    def allowed(src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return _allowed(policies, src, dst, port, protocol)

    def accepts(src: Endpoint, dst: Endpoint, port: int) -> bool:
        """dst's ingress policies alone (defence in depth: each end must refuse on its own)."""
        return _allowed(policies, src, dst, port, sides=("Ingress",))

    gateway = pods["gateway"]
    assert allowed(client, gateway, GRPC_PORT), "clients -> gateway"
    assert not allowed(client, gateway, METRICS_PORT)
    for backend in BACKENDS:
        assert allowed(gateway, pods[backend], GRPC_PORT), f"gateway -> {backend}"
        assert not accepts(client, pods[backend], GRPC_PORT), f"client -> {backend}"
        assert not allowed(pods[backend], gateway, GRPC_PORT), f"{backend} -> gateway"
        for other in BACKENDS:
            if other != backend:
                assert not allowed(pods[backend], pods[other], GRPC_PORT), f"{backend} -> {other}"
                assert not accepts(pods[other], pods[backend], GRPC_PORT), f"{other} -> {backend}"
    for pod in mesh:
        assert allowed(prometheus, pod, METRICS_PORT), f"scrape {pod.name}"
        assert not accepts(stranger, pod, METRICS_PORT), f"{pod.name} metrics from anywhere"
        assert allowed(pod, dns, 53, "UDP") and allowed(pod, dns, 53, "TCP"), f"{pod.name} DNS"
        assert not allowed(pod, internet, 443), f"{pod.name} -> internet"
        assert not allowed(pod, stranger, GRPC_PORT), f"{pod.name} -> other namespaces"
    if "otel-collector" in pods:
        collector, jaeger = pods["otel-collector"], pods["jaeger"]
        for pod in mesh:
            assert allowed(pod, collector, 4317), f"{pod.name} -> collector"
            assert not allowed(pod, jaeger, 4317), f"{pod.name} bypasses the collector"
        assert allowed(collector, jaeger, 4317)
        assert not allowed(collector, internet, 443)
        assert not allowed(stranger, collector, 4317)
        assert not allowed(jaeger, collector, 4317)
    else:
        assert overlay == "base"
    assert {p for p in pods if pods[p].labels.get(PART_OF) == "asr-mesh"} - set(FRONT_DOORS) == set(
        SERVICES
    )
    assert all(pods[s].labels[NAME] == s for s in SERVICES)
