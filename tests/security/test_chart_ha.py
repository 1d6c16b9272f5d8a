"""The chart runs the operator as replicas with a leader (kopf peering): the peering CRD and
object it needs, the rights on them (and no more), and the flags that join the replicas."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidegate import cli
from tests.helpers import authorizing, binaries

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "sidegate"
BROKER_CERTIFICATE = ("Secret", "sidegate-broker-tls")
# The NetworkPolicies need the API server's address to render (test_chart.API_SERVER).
API_SERVER = ("--set", authorizing.API_SERVER)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    home = tmp_path_factory.mktemp("helm-home")
    helm = binaries.extract("helm", home)
    result = subprocess.run(
        [str(helm), "template", "sidegate", str(CHART), "-n", "sidegate-system", *API_SERVER],
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_peering_crd_is_installed_from_the_one_source() -> None:
    link = CHART / "crds" / "clusterkopfpeering.yaml"
    assert link.is_symlink()
    crd = yaml.safe_load(link.read_text())
    assert crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["spec"]["scope"] == "Cluster"  # one object, whatever --namespace serves


def test_replicas_elect_a_leader_in_their_release_s_own_peering(
    rendered: list[dict[str, Any]],
) -> None:
    (peering,) = [d for d in rendered if d["kind"] == "ClusterKopfPeering"]
    name = peering["metadata"]["name"]
    assert name == "sidegate-sidegate-system"  # release and namespace: never shared
    (deployment,) = [
        d
        for d in rendered
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "sidegate-operator"
    ]
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    parsed = cli.build_parser().parse_args(container["args"])
    assert parsed.peering == name and parsed.peering_lifetime == 60
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["SIDEGATE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_operator_may_touch_its_own_peering_only(rendered: list[dict[str, Any]]) -> None:
    (role,) = [
        d
        for d in rendered
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "sidegate-operator"
    ]
    rules = [r for r in role["rules"] if "kopf.dev" in r["apiGroups"]]
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames") or ())) for r in rules} == {
        (("list", "watch"), ()),
        (("get", "patch"), ("sidegate-sidegate-system",)),
    }
    assert all(r["resources"] == ["clusterkopfpeerings"] for r in rules)


def test_the_webhooks_have_replicas_of_their_own(rendered: list[dict[str, Any]]) -> None:
    """Two replicas apart from the operator (no leader: each answers), kept through node
    drains by a PodDisruptionBudget, behind the Service the webhook configurations call."""

    def one(kind: str, name: str) -> dict[str, Any]:
        (found,) = [d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == name]
        return found

    deployment = one("Deployment", "sidegate-webhook")
    assert deployment["spec"]["replicas"] == 2
    pods = deployment["spec"]["template"]
    assert pods["spec"]["serviceAccountName"] == "sidegate-webhook"
    labels = pods["metadata"]["labels"]
    budget = one("PodDisruptionBudget", "sidegate-webhook")["spec"]
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service", "sidegate-webhook")["spec"]
    assert service["selector"].items() <= labels.items()
    operator_pods = one("Deployment", "sidegate-operator")["spec"]["template"]
    assert not service["selector"].items() <= operator_pods["metadata"]["labels"].items()
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (hook,) = next(d for d in rendered if d["kind"] == kind)["webhooks"]
        assert hook["clientConfig"]["service"]["name"] == "sidegate-webhook"
    # It reads the published public keys, and nothing else.
    role = one("Role", "sidegate-webhook")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["sidegate-signing-public"],
            "verbs": ["get"],
        }
    ]
    assert not [
        d
        for d in rendered
        if d["kind"] == "ClusterRoleBinding"
        and any(s["name"] == "sidegate-webhook" for s in d["subjects"])
    ]


def render(home: Path, *sets: str) -> str:
    helm = binaries.extract("helm", home)
    flags = [*API_SERVER, *(flag for value in sets for flag in ("--set", value))]
    result = subprocess.run(
        [str(helm), "template", "sidegate", str(CHART), "-n", "sidegate-system", *flags],
        capture_output=True,
        text=True,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        check=True,
    )
    return result.stdout


def test_renders_hold_no_key_material_and_are_the_same_each_time(
    tmp_path: Path, rendered: list[dict[str, Any]]
) -> None:
    """GitOps renders with `helm template`: a CA generated per render would change the
    manifests every time (and roll the webhooks). The operator keeps the CA instead. (The
    broker's certificate is still generated by the chart: left out here.)"""

    def without_broker_certificate(text: str) -> list[dict[str, Any]]:
        docs = [d for d in yaml.safe_load_all(text) if d]
        return [d for d in docs if (d["kind"], d["metadata"]["name"]) != BROKER_CERTIFICATE]

    assert without_broker_certificate(render(tmp_path)) == without_broker_certificate(
        render(tmp_path)
    )
    assert [d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"] == [
        BROKER_CERTIFICATE[1]
    ]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (hook,) = next(d for d in rendered if d["kind"] == kind)["webhooks"]
        assert "caBundle" not in hook["clientConfig"]  # the operator sets it


def test_the_operator_keeps_the_webhook_certificate_unless_someone_else_does(
    tmp_path: Path,
) -> None:
    def operator_of(*sets: str) -> tuple[Any, set[str]]:
        docs = [d for d in yaml.safe_load_all(render(tmp_path, *sets)) if d]
        (deployment,) = [
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "sidegate-operator"
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        account = {"kind": "ServiceAccount", "name": "sidegate", "namespace": "sidegate-system"}
        bound = {
            d["roleRef"]["name"]
            for d in docs
            if d["kind"] == "ClusterRoleBinding" and account in d["subjects"]
        }
        webhooks = {
            f"{r['resources'][0]}/{r['resourceNames'][0]}:{','.join(r['verbs'])}"
            for d in docs
            if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound
            for r in d["rules"]
            if "admissionregistration.k8s.io" in r["apiGroups"]
        }
        return cli.build_parser().parse_args(container["args"]), webhooks

    kept, rights = operator_of()
    assert (
        kept.webhook_ca_secret,
        kept.webhook_tls_secret,
        kept.webhook_service,
        kept.mutating_webhook,
        kept.validating_webhook,
    ) == (
        "sidegate-webhook-ca",
        "sidegate-webhook-tls",
        "sidegate-webhook",
        "sidegate-inject",
        "sidegate-guard",
    )
    assert rights == {  # its own two configurations, get and patch, nothing else
        "mutatingwebhookconfigurations/sidegate-inject:get,patch",
        "validatingwebhookconfigurations/sidegate-guard:get,patch",
    }
    for sets in (
        ("certManager.enabled=true",),
        ("webhook.certificate.existingSecret=mine", "webhook.certificate.caBundle=Q0E="),
    ):
        other, rights = operator_of(*sets)
        assert other.webhook_ca_secret is None and rights == set()


def budgets(home: Path, *sets: str) -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(render(home, *sets)) if doc]
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodDisruptionBudget"}


@pytest.mark.parametrize("component", ["webhook", "broker"])
def test_a_single_replica_gets_no_disruption_budget(tmp_path: Path, component: str) -> None:
    """`minAvailable: 1` of one replica allows no eviction at all: `kubectl drain` of its
    node would retry for ever. One replica is a choice for small clusters (the pod is then
    down while it moves); the other Deployment keeps its budget."""
    found = budgets(tmp_path, f"{component}.replicas=1")
    other = "broker" if component == "webhook" else "webhook"
    assert f"sidegate-{component}" not in found
    assert found[f"sidegate-{other}"]["minAvailable"] == 1
    # Two or more replicas: the budget leaves at least one to evict.
    found = budgets(
        tmp_path, f"{component}.replicas=3", f"{component}.podDisruptionBudget.minAvailable=2"
    )
    assert found[f"sidegate-{component}"]["minAvailable"] == 2


@pytest.mark.parametrize("component", ["webhook", "broker"])
def test_a_budget_that_allows_no_eviction_fails_the_render(tmp_path: Path, component: str) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        render(tmp_path, f"{component}.podDisruptionBudget.minAvailable=2")  # of 2 replicas
    assert (
        f"{component}.podDisruptionBudget.minAvailable (2) must be below {component}.replicas (2)"
        in failed.value.stderr
    )
