"""The chart's NetworkPolicies, least privilege: out, DNS only to the DNS pods and the API
server only at its configured addresses (no CIDR fails the render, unless any address is
asked for explicitly); in, the broker's API only from injected pods of the namespaces the
injector serves, the webhook and probe ports. Checked on the rendered policies, with label
selectors matched as the API server matches them."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from sidegate.operator import injection
from tests.helpers import webhook_scope
from tests.security.test_chart import CHART, KUBERNETES, Helm, Refused, Render, one, pod_of

POLICIES = ("sidegate-operator", "sidegate-broker", "sidegate-cleanup")
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
API_PORTS = [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
NO_CIDR = "networkPolicy.apiServerCIDRs=null"


def egress(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(docs, "NetworkPolicy", name)["spec"]["egress"]
    return rules


def test_egress_is_dns_pods_and_the_api_servers_addresses_only(render: Render) -> None:
    docs = render("networkPolicy.apiServerCIDRs={10.0.0.1/32,10.0.0.2/32}")
    for name in POLICIES:
        assert set(one(docs, "NetworkPolicy", name)["spec"]["policyTypes"]) == {
            "Ingress",
            "Egress",
        }
        dns, api = egress(docs, name)
        assert dns == {"to": [KUBE_DNS], "ports": DNS_PORTS}, name
        assert api == {
            "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}],
            "ports": API_PORTS,
        }, name
        # No rule without a destination: nothing open to every address.
        assert all(rule.get("to") for rule in egress(docs, name))
        kubernetes_validate.validate(one(docs, "NetworkPolicy", name), KUBERNETES, strict=True)


def test_no_api_server_address_fails_the_render_with_what_to_do(helm: Helm) -> None:
    base = ("template", "sidegate", str(CHART), "-n", "sidegate-system", "--set", NO_CIDR)
    refused = helm(*base)
    assert refused.returncode != 0
    assert "networkPolicy.apiServerCIDRs is empty" in refused.stderr
    assert "kubectl get endpointslices -n default" in refused.stderr
    assert "networkPolicy.allowAnyAPIServerAddress=true" in refused.stderr
    # Without NetworkPolicies there is nothing to narrow, and nothing is asked.
    assert helm(*base, "--set", "networkPolicy.enabled=false").returncode == 0


def test_any_address_is_an_explicit_opt_in_on_the_api_ports_only(render: Render) -> None:
    docs = render(NO_CIDR, "networkPolicy.allowAnyAPIServerAddress=true")
    for name in POLICIES:
        dns, api = egress(docs, name)
        assert dns["to"] == [KUBE_DNS]
        assert api == {"ports": API_PORTS}  # any address, these ports only
    # A CIDR given wins over the opt-in.
    docs = render("networkPolicy.allowAnyAPIServerAddress=true")
    assert egress(docs, "sidegate-broker")[1]["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]


def test_dns_peers_are_configurable(render: Render) -> None:
    docs = render("networkPolicy.dns[0].ipBlock.cidr=169.254.20.10/32")
    for name in POLICIES:
        assert egress(docs, name)[0]["to"] == [{"ipBlock": {"cidr": "169.254.20.10/32"}}]
        kubernetes_validate.validate(one(docs, "NetworkPolicy", name), KUBERNETES, strict=True)


OPTED_IN = {"sidegate.io/injection": "enabled"}


@pytest.mark.parametrize(
    ("namespace", "namespace_labels", "pod_labels", "allowed"),
    [
        ("team-a", OPTED_IN, {injection.LABEL: "true", "app": "web"}, True),
        ("team-a", OPTED_IN, {"app": "web"}, False),  # not injected: no sidecar to call it
        ("team-a", OPTED_IN, {injection.LABEL: "false"}, False),
        ("team-b", {}, {injection.LABEL: "true"}, False),  # a namespace the injector skips
        ("kube-system", OPTED_IN, {injection.LABEL: "true"}, False),
        ("sidegate-system", OPTED_IN, {injection.LABEL: "true"}, False),
    ],
)
def test_the_brokers_api_is_reachable_from_injected_pods_only(
    render: Render,
    namespace: str,
    namespace_labels: dict[str, str],
    pod_labels: dict[str, str],
    allowed: bool,
) -> None:
    docs = render()
    api, probe = one(docs, "NetworkPolicy", "sidegate-broker")["spec"]["ingress"]
    assert api["ports"] == [{"port": "https", "protocol": "TCP"}]
    namespace_labels = {"kubernetes.io/metadata.name": namespace, **namespace_labels}
    admitted = any(
        webhook_scope.selects(peer["namespaceSelector"], namespace_labels)
        and webhook_scope.selects(peer["podSelector"], pod_labels)
        for peer in api["from"]
    )
    assert admitted is allowed
    # Exactly the pods the injector is sent: the namespaces and the label of its webhook.
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    sent = webhook_scope.selects(hook["namespaceSelector"], namespace_labels)
    assert admitted is (sent and webhook_scope.selects(hook["objectSelector"], pod_labels))
    # The probe port (health, readiness, metrics) has no from: the kubelet and a scraper.
    assert probe == {"ports": [{"port": "probe", "protocol": "TCP"}]}


def test_the_operator_takes_only_its_health_and_metrics_ports_and_the_webhook_its_own(
    render: Render,
) -> None:
    """The webhooks have pods of their own: the operator's take the kubelet's probes and a
    scraper (from anywhere, as the broker's probe port) only."""
    metrics = {"port": "metrics", "protocol": "TCP"}
    for values in ((), ("webhook.enabled=false",)):
        (rule,) = one(render(*values), "NetworkPolicy", "sidegate-operator")["spec"]["ingress"]
        assert rule == {"ports": [{"port": "health", "protocol": "TCP"}, metrics]}
    webhook = one(render(), "NetworkPolicy", "sidegate-webhook")["spec"]
    (rule,) = webhook["ingress"]
    assert rule == {
        "ports": [
            {"port": "health", "protocol": "TCP"},
            {"port": "webhook", "protocol": "TCP"},
            metrics,
        ]
    }
    # Each named port is one the pods declare.
    for deployment in ("sidegate-operator", "sidegate-webhook"):
        (container,) = pod_of(render(), "Deployment", deployment)["containers"]
        assert "metrics" in {port["name"] for port in container["ports"]}
    # The same least-privilege egress as every Sidegate pod: DNS pods, the API server's CIDRs.
    assert (
        webhook["egress"] == one(render(), "NetworkPolicy", "sidegate-operator")["spec"]["egress"]
    )
    assert not any(
        d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "sidegate-webhook"
        for d in render("webhook.enabled=false")
    )
    assert one(render(), "NetworkPolicy", "sidegate-cleanup")["spec"]["ingress"] == []


def test_a_metrics_port_that_is_taken_fails_the_render(refused: Refused) -> None:
    """The health port (kopf's liveness) and the webhook's port are in the same pods."""
    for port in ("8080", "8443"):
        stderr = refused(
            "networkPolicy.apiServerCIDRs={203.0.113.10/32}", f"operator.metricsPort={port}"
        )
        assert f"operator.metricsPort {port} is taken" in stderr, stderr
