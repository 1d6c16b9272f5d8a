"""The chart's monitoring objects: a PodMonitor for the injected sidecars' metrics port, a
ServiceMonitor for the broker, a Grafana dashboard whose every query names a metric the code
really exports. All opt-in: none is rendered unless asked for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from prometheus_client.metrics import MetricWrapperBase

from sidegate.audit.metrics import AuditMetrics
from sidegate.broker.metrics import Metrics as BrokerMetrics
from sidegate.operator import injection
from sidegate.operator.metrics import Metrics as OperatorMetrics
from sidegate.policy import signing
from sidegate.sidecar import settings
from sidegate.sidecar.metrics import Metrics as SidecarMetrics
from tests.helpers import webhook_scope
from tests.security.test_chart import CHART, KUBERNETES, Refused, Render, one, pod_of

ALL_ON = (
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.operatorPodMonitor.enabled=true",
    "monitoring.dashboard.enabled=true",
)
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor"}
# Labels Prometheus adds to every scraped series (the target's), usable in `by (...)`.
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "le"}


def test_nothing_is_rendered_unless_asked_for(render: Render) -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-metrics")]


def test_every_rendered_object_is_valid(render: Render) -> None:
    for doc in render(*ALL_ON):
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            assert doc["kind"] in MONITORING_KINDS and doc["spec"]
            continue
        if doc["apiVersion"] == "cert-manager.io/v1":
            continue
        if doc["apiVersion"] == "kopf.dev/v1":  # checked against its CRD in test_chart.py
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_pod_monitor_scrapes_the_port_the_injector_names(render: Render) -> None:
    docs = render(*ALL_ON, "monitoring.podMonitor.labels.release=prometheus")
    monitor = one(docs, "PodMonitor", "sidegate-sidecars")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == injection.METRICS_PORT and endpoint["path"] == "/metrics"
    # It selects exactly the pods the injector is sent: the webhook's objectSelector.
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert spec["selector"] == hook["objectSelector"]
    # The injected sidecar, from the chart's rendered config, has that port, on the number
    # its own config listens on.
    key = signing.encode_public_key(signing.generate_private_key().public_key())
    sidecar_spec = injection.SidecarSpec(
        image="sidegate:1",
        config=one(docs, "ConfigMap", "sidegate-sidecar")["data"]["sidecar.yaml"],
        trusted_keys=(key,),
    )
    config = settings.parse(injection.sidecar_config(sidecar_spec), "sidecar.yaml", Path("/"))
    assert config.metrics is not None and config.metrics.host == "0.0.0.0"  # noqa: S104
    pod = {"metadata": {"labels": {injection.LABEL: "true"}}, "spec": {"containers": [{}]}}
    injected = injection.apply(pod, injection.inject(pod, sidecar_spec))
    (sidecar,) = injected["spec"]["initContainers"]
    assert {"name": endpoint["port"], "containerPort": config.metrics.port, "protocol": "TCP"} in (
        sidecar["ports"]
    )
    assert webhook_scope.selects(spec["selector"], injected["metadata"]["labels"])
    # The API and the admin API stay on loopback.
    assert config.listen.host == "127.0.0.1"


def test_a_pod_monitor_without_a_metrics_port_fails_the_render(refused: Refused) -> None:
    stderr = refused("monitoring.podMonitor.enabled=true", "sidecar.config.metrics=null")
    assert "needs sidecar.config.metrics (a map" in stderr


def test_a_metrics_section_of_defaults_renders_the_pod_monitor(render: Render) -> None:
    """`metrics: {}` turns the listener on at its default port (what `--set
    sidecar.config.metrics.port=null` leaves): the chart renders the PodMonitor, and the
    sidecar the injector makes from that config has the port it scrapes."""
    docs = render(*ALL_ON, "sidecar.config.metrics.port=null")
    rendered = one(docs, "ConfigMap", "sidegate-sidecar")["data"]["sidecar.yaml"]
    assert yaml.safe_load(rendered)["metrics"] == {}
    (endpoint,) = one(docs, "PodMonitor", "sidegate-sidecars")["spec"]["podMetricsEndpoints"]
    key = signing.encode_public_key(signing.generate_private_key().public_key())
    sidecar_spec = injection.SidecarSpec(image="sidegate:1", config=rendered, trusted_keys=(key,))
    config = settings.parse(injection.sidecar_config(sidecar_spec), "sidecar.yaml", Path("/"))
    assert config.metrics is not None and config.metrics.port == 9464
    pod = {"metadata": {"labels": {injection.LABEL: "true"}}, "spec": {"containers": [{}]}}
    (sidecar,) = injection.apply(pod, injection.inject(pod, sidecar_spec))["spec"]["initContainers"]
    assert {"name": endpoint["port"], "containerPort": 9464, "protocol": "TCP"} in sidecar["ports"]


def test_a_metrics_value_that_is_not_a_map_fails_with_the_charts_message(
    refused: Refused,
) -> None:
    for value in ("sidecar.config.metrics=true", "sidecar.config.metrics=9464"):
        stderr = refused("monitoring.podMonitor.enabled=true", value)
        assert "needs sidecar.config.metrics (a map" in stderr, stderr


def test_the_service_monitor_scrapes_the_brokers_probe_port_only(render: Render) -> None:
    docs = render(*ALL_ON)
    monitor = one(docs, "ServiceMonitor")
    selected = monitor["spec"]["selector"]["matchLabels"]
    services = [
        d
        for d in docs
        if d["kind"] == "Service" and selected.items() <= d["metadata"]["labels"].items()
    ]
    (service,) = services  # not the broker's TLS API Service
    (port,) = service["spec"]["ports"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    broker = pod_of(docs, "Deployment", "sidegate-broker")
    labels = one(docs, "Deployment", "sidegate-broker")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = broker["containers"]
    (probe,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert f"--probe-port={probe['containerPort']}" in container["args"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["sidegate-system"]}


def test_the_operator_pod_monitor_scrapes_every_operator_and_webhook_replica(
    render: Render,
) -> None:
    docs = render(
        *ALL_ON,
        "monitoring.operatorPodMonitor.labels.release=prometheus",
        "operator.metricsPort=9100",
    )
    monitor = one(docs, "PodMonitor", "sidegate-operator")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["sidegate-system"]}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    selected = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        and webhook_scope.selects(spec["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert sorted(selected) == ["sidegate-operator", "sidegate-webhook"]  # not the broker
    for name in selected:
        (container,) = pod_of(docs, "Deployment", name)["containers"]
        (port,) = [p for p in container["ports"] if p["name"] == endpoint["port"]]
        assert port["containerPort"] == 9100
        assert "--metrics-port=9100" in container["args"]
    # Off by default, like every monitoring object.
    assert not [
        d
        for d in render("monitoring.podMonitor.enabled=true")
        if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "sidegate-operator"
    ]


def dashboard(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(docs, "ConfigMap", "sidegate-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed: dict[str, Any] = json.loads(config_map["data"]["sidegate.json"])
    return parsed


def test_the_dashboard_config_map_is_what_grafana_looks_for(render: Render) -> None:
    shipped = json.loads((CHART / "dashboards" / "sidegate.json").read_text())
    assert dashboard(render(*ALL_ON)) == shipped
    moved = render(
        "monitoring.dashboard.enabled=true",
        "monitoring.dashboard.namespace=monitoring",
        "monitoring.dashboard.labels.grafana_dashboard=off",
        "monitoring.dashboard.annotations.grafana_folder=Sidegate",
    )
    config_map = one(moved, "ConfigMap", "sidegate-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Sidegate"}


def exported() -> dict[str, set[str]]:
    """Every sample name the sidecar (with its audit trail), the broker and the operator (with
    its webhook) expose, with the labels each carries, as Prometheus' text format names
    them."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    sidecar = SidecarMetrics()
    holders = (sidecar, AuditMetrics(sidecar.registry), BrokerMetrics(), OperatorMetrics())
    names: dict[str, set[str]] = {}
    for holder in holders:
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            (family,) = metric.describe()
            for suffix in suffixes[family.type]:
                names[family.name + suffix] = set(metric._labelnames)
    return names


def queries(document: dict[str, Any]) -> list[str]:
    found = [
        target["expr"]
        for panel in document["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in document["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


METRIC = re.compile(r"\bsidegate_[a-z_]+\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)|label_values\([^,]+, *([a-z_]+)\)")


def test_every_metric_the_dashboard_queries_is_exported(render: Render) -> None:
    names = exported()
    assert "sidegate_requests_total" in names and "sidegate_broker_answers_total" in names
    assert "sidegate_operator_leader" in names
    document = dashboard(render(*ALL_ON))
    expressions = queries(document)
    assert len(expressions) >= 20
    used: set[str] = set()
    for expression in expressions:
        metrics = METRIC.findall(expression)
        assert metrics, f"no Sidegate metric in {expression!r}"
        for name in metrics:
            assert name in names, f"{name} is not exported by the code ({expression!r})"
        used.update(metrics)
        available = set().union(*(names[m] for m in metrics)) | TARGET_LABELS
        for match in GROUPING.finditer(expression):
            grouping = match.group(1) if match.group(1) is not None else match.group(2)
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                assert label in available, f"{label!r} is no label of {metrics} ({expression!r})"
    # The dashboard shows every metric family: none added to the code and forgotten here.
    families = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in names}
    shown = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in used}
    assert families == shown, sorted(families - shown)
