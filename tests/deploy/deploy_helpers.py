"""Shared helpers of the deploy tests: render kustomizations, index objects, read env, selectors.

Not a conftest (the deploy folder has none by design): test modules import it by name, which
pytest's default import mode allows (the test's folder is put on sys.path).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"

SERVICES = ("gateway", "preprocess", "transcription", "diarization", "merge")
FRONT_DOORS = ("http",)
"""Optional services in front of the gateway (components/http): HTTP, not gRPC; checked by
test_deploy_http.py, and by the policies every Deployment must meet."""
BACKENDS = ("preprocess", "transcription", "diarization", "merge")
OVERLAYS = tuple(
    sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
)
GPU_OVERLAYS = tuple(o for o in OVERLAYS if o.startswith("gpu"))
CPU_OVERLAYS = tuple(o for o in OVERLAYS if not o.startswith("gpu"))
GRPC_PORT, METRICS_PORT = 50051, 9464
PART_OF = "app.kubernetes.io/part-of"
NAME = "app.kubernetes.io/name"

KUBECTL = shutil.which("kubectl")
requires_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not on PATH (it bundles kustomize); the CI image has it — install kubectl "
    "to check deploy/k8s",
)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH` parsed into objects (fails the test with kustomize's message)."""
    return [dict(d) for d in _kustomize_cached(str(path))]


@functools.cache
def _kustomize_cached(path: str) -> tuple[dict[str, Any], ...]:
    if KUBECTL is None:
        pytest.skip("kubectl not on PATH")
    proc = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects of an overlay (`base` renders deploy/k8s/base)."""
    return kustomize(K8S / "base" if overlay == "base" else K8S / "overlays" / overlay)


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def get(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def mesh_deployments(docs: list[dict]) -> dict[str, dict]:
    """The five gRPC services' Deployments by service name (front doors left out)."""
    found = {
        d["metadata"]["name"]: d
        for d in objects(docs, "Deployment")
        if d["spec"]["template"]["metadata"].get("labels", {}).get(PART_OF) == "asr-mesh"
        and d["metadata"]["name"] not in FRONT_DOORS
    }
    assert sorted(found) == sorted(SERVICES), f"mesh Deployments: {sorted(found)}"
    return found


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def all_containers(deployment: dict) -> list[dict]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(deployment: dict) -> dict:
    containers = pod_spec(deployment)["containers"]
    by_name = {c["name"]: c for c in containers}
    return by_name.get(deployment["metadata"]["name"], containers[0])


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps in order, then env (literal values)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: only configMapRef envFrom sources are expected"
        data = get(docs, "ConfigMap", ref["name"]).get("data", {})
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<valueFrom>")
    return env


def matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions; {} matches all)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (cores or bytes)."""
    match = _QUANTITY.match(str(value))
    assert match and match.group(2) in _SUFFIX, f"unparsable quantity {value!r}"
    return float(match.group(1)) * _SUFFIX[match.group(2)]
