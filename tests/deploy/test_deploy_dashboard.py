"""deploy/grafana/asr-mesh.json and the PromQL in deploy/ use metrics the services really export.

The exported series names are derived from the Prometheus registry in
asr_mesh/services/common/metrics.py (counters gain `_total`, histograms `_bucket`/`_sum`/`_count`),
so a renamed metric or a typo in a panel, an alert or the KEDA query fails here rather than as an
empty graph in production.
"""

from __future__ import annotations

import json
import re

import pytest
from deploy_helpers import DEPLOY, K8S

DASHBOARD = DEPLOY / "grafana" / "asr-mesh.json"
METRIC = re.compile(r"\b(asr_[a-z0-9_]+)\b")
# Issue 6's metric set: the dashboard must show each of them.
REQUIRED = {
    "asr_grpc_server_requests_total",
    "asr_grpc_server_request_duration_seconds_bucket",
    "asr_grpc_server_in_flight_requests",
    "asr_real_time_factor_bucket",
    "asr_queue_depth",
    "asr_model_loaded",
    "asr_batch_size_bucket",
    "asr_cache_requests_total",
    "asr_audio_processed_seconds_total",
}


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, from the services' registry."""
    from asr_mesh.services.common.metrics import REGISTRY

    series: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):  # every registered metric family
        labels = set(getattr(collector, "_labelnames", ()))
        kind, name = collector._type, collector._name
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
            "summary": ["_sum", "_count", ""],
        }[kind]
        for suffix in suffixes:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


def test_registry_holds_the_issue_6_metrics() -> None:
    assert REQUIRED <= set(exported_series())


def test_dashboard_is_valid_and_complete() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    used = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    assert REQUIRED <= used, f"not on the dashboard: {REQUIRED - used}"
    text = " ".join(dashboard_exprs())
    assert 'result="hit"' in text, "cache hit ratio"
    assert "by (service, method, code)" in text, "request rate by method and status"


def _check_exprs(exprs: list[str], where: str) -> None:
    series = exported_series()
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for name in METRIC.findall(expr):
            assert name in series, f"{where}: {name} is not exported (known: {sorted(series)})"
        # Label matchers on a metric must name labels it has (plus the scrape's own labels).
        for name, matchers in re.findall(r"\b(asr_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in series[name] | {"namespace", "pod", "job", "instance", "node"}, (
                    f"{where}: {name} has no label {label!r}"
                )


def test_dashboard_queries_use_real_metrics_and_labels() -> None:
    _check_exprs(dashboard_exprs(), "dashboard")


@pytest.mark.parametrize(
    "path",
    [
        K8S / "components" / "monitoring" / "prometheusrule.yaml",
        K8S / "components" / "autoscaling" / "scaledobject-transcription.yaml",
    ],
)
def test_alerts_and_keda_query_use_real_metrics(path) -> None:
    import yaml

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if doc["kind"] == "PrometheusRule":
        exprs = [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]
    else:
        exprs = [t["metadata"]["query"] for t in doc["spec"]["triggers"]]
    assert exprs
    _check_exprs(exprs, path.name)
