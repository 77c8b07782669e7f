"""deploy/k8s builds with `kubectl kustomize` and its output is schema-valid, offline.

Built-in kinds are validated strictly (unknown fields are errors) against the schemas that
PyPI's kubernetes-validate ships, for the oldest Kubernetes the manifests support and the
newest schema available. CRD kinds (KEDA ScaledObject, Prometheus Operator objects) have no
schema there: a small explicit check of the fields we rely on stands in for one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
from deploy_helpers import (
    K8S,
    KUBECTL,
    OVERLAYS,
    SERVICES,
    get,
    kustomize,
    objects,
    render,
    requires_kubectl,
)
from kubernetes_validate.utils import SchemaNotFoundError, all_versions

pytestmark = requires_kubectl

# Native gRPC probes are GA since 1.27, PodDisruptionBudget.unhealthyPodEvictionPolicy beta
# (on by default) since 1.27; 1.30 is the oldest release still maintained upstream.
OLDEST_SUPPORTED = "1.30.0"
NEWEST = all_versions()[-1]
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if p.is_dir())


def test_there_are_cpu_and_gpu_overlays() -> None:
    assert {"cpu", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_kustomize_builds(overlay: str) -> None:
    docs = render(overlay)
    keys = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate objects in the output"
    assert all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"), (
        "every namespaced object carries the namespace"
    )
    namespaces = objects(docs, "Namespace")
    assert len(namespaces) == 1
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {
        namespaces[0]["metadata"]["name"]
    }


def test_every_component_is_used_by_an_overlay() -> None:
    used = set()
    for overlay in OVERLAYS:
        text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text(encoding="utf-8")
        used |= set(re.findall(r"\.\./\.\./components/([\w-]+)", text))
    assert set(COMPONENTS) <= used, (
        f"components no overlay builds (untested): {set(COMPONENTS) - used}"
    )
    assert {"gpu", "tracing", "autoscaling"} <= set(COMPONENTS)


def _unique_builtin_docs() -> list[tuple[str, dict]]:
    seen: dict[str, tuple[str, dict]] = {}
    for overlay in ["base", *OVERLAYS]:
        for doc in render(overlay):
            if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
                continue
            seen.setdefault(json.dumps(doc, sort_keys=True), (overlay, doc))
    return list(seen.values())


@pytest.mark.parametrize("version", [OLDEST_SUPPORTED, NEWEST])
def test_builtin_objects_are_schema_valid(version: str) -> None:
    errors = []
    for overlay, doc in _unique_builtin_docs():
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError:
            errors.append(f"{where}: no schema for {doc['apiVersion']} in Kubernetes {version}")
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_validator_is_strict() -> None:
    """A typo'd field must fail: otherwise the schema test above could not catch one."""
    deployment = dict(get(render("cpu"), "Deployment", "merge"))
    deployment["spec"] = {**deployment["spec"], "replcas": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, NEWEST, strict=True)


# -- CRDs: explicit checks of the fields the manifests rely on ---------------------------------


def _check_scaled_object(doc: dict, docs: list[dict]) -> None:
    spec = doc["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    get(docs, "Deployment", target["name"])
    lo, hi = spec["minReplicaCount"], spec["maxReplicaCount"]
    assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi
    assert isinstance(spec["pollingInterval"], int) and isinstance(spec["cooldownPeriod"], int)
    if "fallback" in spec:
        assert isinstance(spec["fallback"]["failureThreshold"], int)
        assert lo <= spec["fallback"]["replicas"] <= hi
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    assert set(behavior) <= {"scaleUp", "scaleDown"}
    assert spec["triggers"], "a ScaledObject needs a trigger"
    for trigger in spec["triggers"]:
        assert set(trigger) <= {
            "type",
            "metadata",
            "metricType",
            "name",
            "authenticationRef",
            "useCachedMetrics",
        }
        assert trigger.get("metricType", "AverageValue") in {"AverageValue", "Value", "Utilization"}
        metadata = trigger["metadata"]
        # KEDA's trigger metadata is map[string]string: a YAML number or bool is rejected.
        assert all(isinstance(v, str) for v in metadata.values()), metadata
        if trigger["type"] == "prometheus":
            assert re.match(r"^https?://[\w.-]+(:\d+)?$", metadata["serverAddress"])
            assert metadata["query"].count("(") == metadata["query"].count(")")
            assert metadata["query"].count("{") == metadata["query"].count("}")
            float(metadata["threshold"])
            float(metadata.get("activationThreshold", "0"))


def _check_service_monitor(doc: dict, docs: list[dict]) -> None:
    spec = doc["spec"]
    assert set(spec) <= {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }
    selected = [
        s
        for s in objects(docs, "Service")
        if all(
            s["metadata"].get("labels", {}).get(k) == v
            for k, v in spec["selector"]["matchLabels"].items()
        )
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == sorted(SERVICES), (
        "the ServiceMonitor selects exactly the five services"
    )
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {
            "port",
            "path",
            "interval",
            "scrapeTimeout",
            "honorLabels",
            "relabelings",
            "metricRelabelings",
            "scheme",
        }
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {
                "sourceLabels",
                "targetLabel",
                "regex",
                "replacement",
                "action",
                "separator",
                "modulus",
            }


def _check_prometheus_rule(doc: dict, docs: list[dict]) -> None:
    for group in doc["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in rule) != ("record" in rule)
            assert rule["expr"].count("(") == rule["expr"].count(")")
            assert all(isinstance(v, str) for v in rule.get("labels", {}).values())


def _check_certificate(doc: dict, docs: list[dict]) -> None:
    spec = doc["spec"]
    assert set(spec) <= {
        "secretName",
        "commonName",
        "dnsNames",
        "ipAddresses",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
        "isCA",
        "secretTemplate",
    }
    assert re.match(r"^[a-z0-9-]+$", spec["secretName"])
    ref = spec["issuerRef"]
    assert (
        ref.get("group", "cert-manager.io") == "cert-manager.io"
        and ref.get("kind", "Issuer") == "Issuer"
    )
    get(docs, "Issuer", ref["name"])  # an Issuer of this build signs it
    for key in ("duration", "renewBefore"):
        assert re.match(r"^\d+h$", spec[key]), f"{key} in hours, as cert-manager parses it"
    assert int(spec["renewBefore"][:-1]) < int(spec["duration"][:-1])
    assert spec["privateKey"]["algorithm"] in {"RSA", "ECDSA", "Ed25519"}
    assert set(spec.get("usages", [])) <= {
        "digital signature",
        "key encipherment",
        "server auth",
        "client auth",
        "cert sign",
        "crl sign",
    }
    if not spec.get("isCA"):
        assert {"server auth", "client auth"} <= set(spec["usages"]), "mTLS: server and client"
        assert spec["dnsNames"] and all(re.match(r"^[a-z0-9.-]+$", n) for n in spec["dnsNames"])


def _check_issuer(doc: dict, docs: list[dict]) -> None:
    spec = doc["spec"]
    assert len(set(spec) & {"selfSigned", "ca", "acme", "vault", "venafi"}) == 1
    if "ca" in spec:  # the CA Issuer signs with a CA certificate this build makes
        assert any(
            c["spec"]["secretName"] == spec["ca"]["secretName"] and c["spec"].get("isCA")
            for c in objects(docs, "Certificate")
        )


CRD_CHECKS = {
    "ScaledObject": _check_scaled_object,
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
    "Certificate": _check_certificate,
    "Issuer": _check_issuer,
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_objects_are_well_formed(overlay: str) -> None:
    docs = render(overlay)
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if doc["kind"] in CRD_CHECKS:
            assert key in CRD_KINDS, f"unexpected apiVersion {key}"
            assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
            CRD_CHECKS[doc["kind"]](doc, docs)
        else:
            assert key not in CRD_KINDS


def test_changing_the_namespace_rewrites_every_address(tmp_path: Path) -> None:
    """Only `namespace:` changes; the replacements carry it into dns:/// targets, OTLP, KEDA."""
    assert KUBECTL
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for overlay in OVERLAYS:
        path = copy / "overlays" / overlay / "kustomization.yaml"
        text = path.read_text(encoding="utf-8")
        assert re.search(r"^namespace: asr$", text, re.M), f"{overlay} sets namespace: asr"
        path.write_text(
            re.sub(r"^namespace: asr$", "namespace: speech-prod", text, flags=re.M),
            encoding="utf-8",
        )
        out = json.dumps(kustomize(copy / "overlays" / overlay))
        assert ".asr." not in out and 'namespace=\\"asr\\"' not in out, (
            f"{overlay}: a string still names the namespace asr"
        )
        assert "speech-prod.svc.cluster.local" in out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_finds_every_transcription_replica_through_the_headless_service(
    overlay: str,
) -> None:
    """Fan-out needs one channel per replica: the address must be a DNS name whose answer lists
    every ready pod (a headless Service), not a ClusterIP that hides them behind one address."""
    from deploy_helpers import container_env, main_container, mesh_deployments

    from asr_mesh.services.gateway.replicas import split_target

    docs = render(overlay)
    service = get(docs, "Service", "transcription")
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get(
        "publishNotReadyAddresses"
    )
    env = container_env(docs, main_container(mesh_deployments(docs)["gateway"]))
    fixed, name = split_target(env["ASR_GATEWAY_TRANSCRIPTION_ADDRESS"])
    namespace = service["metadata"]["namespace"]
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert fixed == [] and name == f"transcription.{namespace}.svc.cluster.local:{port}"
    assert float(env["ASR_GATEWAY_FANOUT_ATTEMPTS"]) >= 2  # a lost replica's chunks are retried
    # Scale-down: a terminating replica finishes its chunks before it is killed.
    transcription = mesh_deployments(docs)["transcription"]
    grace = float(
        container_env(docs, main_container(transcription))["ASR_TRANSCRIPTION_GRACE_PERIOD_S"]
    )
    assert transcription["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    pdb = get(docs, "PodDisruptionBudget", "transcription")
    assert pdb["spec"]["maxUnavailable"] == 1
