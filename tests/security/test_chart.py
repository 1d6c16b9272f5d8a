"""The Helm chart: lint, render, validate against Kubernetes' schemas, scan with checkov, and
check what a security reviewer would: least privilege, hardened pods, one CRD source."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidegate import cli
from sidegate.operator import injection
from sidegate.policy import signing
from sidegate.sidecar import settings
from tests.helpers import authorizing, binaries, webhook_scope

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "sidegate"
CHECKOV = ROOT / "tools" / "checkov" / ".venv" / "bin" / "checkov"
KUBERNETES = "1.35"
DIGEST = "sha256:" + "ab" * 32

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


# The chart refuses NetworkPolicies without the API server's address (or an explicit opt-in
# to any address): every render here is of a cluster whose API server is at this address,
# given first so a test's own --set overrides it (`networkPolicy.apiServerCIDRs=null`).
API_SERVER = ("--set", authorizing.API_SERVER)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm-home")
    binary = binaries.extract("helm", home)
    environment = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        if command in ("template", "install", "lint", "upgrade"):
            rest = [*API_SERVER, *rest]
        return subprocess.run(
            [str(binary), command, *rest],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )

    return run


@pytest.fixture(scope="module")
def render(helm: Helm) -> Render:
    def run(*sets: str) -> list[dict[str, Any]]:
        flags = [flag for value in sets for flag in ("--set", value)]
        result = helm("template", "sidegate", str(CHART), "-n", "sidegate-system", *flags)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return run


Refused = Callable[..., str]


@pytest.fixture(scope="module")
def refused(helm: Helm) -> Refused:
    """A render that must fail: its error output, for the message a user would read."""

    def run(*sets: str) -> str:
        flags = [flag for value in sets for flag in ("--set", value)]
        result = helm("template", "sidegate", str(CHART), "-n", "sidegate-system", *flags)
        assert result.returncode != 0, "the chart rendered"
        return result.stderr

    return run


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return found


def pod_of(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, kind, name)["spec"]["template"]["spec"]
    return spec


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
    return {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_lint_strict_is_clean(helm: Helm) -> None:
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("sidecar.mode=container",),
        ("webhook.enabled=false", "networkPolicy.enabled=false"),
        (f"image.digest={DIGEST}", "operator.watchNamespaces={team-a,team-b}"),
        (
            "webhook.certificate.existingSecret=my-tls",
            "webhook.certificate.caBundle=Y2E=",
            "webhook.failurePolicy=Ignore",
        ),
        ("networkPolicy.apiServerCIDRs={10.0.0.1/32}",),
        ("userIds=platform",),
        ("broker.certificate.existingSecret=broker-tls", "broker.replicas=3"),
        ("certManager.enabled=true",),
        (
            "certManager.enabled=true",
            "certManager.issuerRef.kind=ClusterIssuer",
            "certManager.issuerRef.name=corp-ca",
        ),
    ],
)
def test_every_rendered_manifest_passes_kubernetes_validate(
    render: Render, sets: tuple[str, ...]
) -> None:
    """cert-manager's and kopf's kinds are not Kubernetes' own: checked for their shape here
    instead (kopf's peering object against the CRD the chart installs)."""
    docs = render(*sets)
    assert docs
    for doc in docs:
        if doc["apiVersion"] == "cert-manager.io/v1":
            assert doc["kind"] in ("Certificate", "Issuer") and doc["spec"]
            continue
        if doc["apiVersion"] == "kopf.dev/v1":
            assert doc["kind"] == "ClusterKopfPeering" and "namespace" not in doc["metadata"]
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    if "certManager.enabled=true" in sets:
        names = {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
        assert {"sidegate-webhook-tls", "sidegate-broker-tls"} <= names
        assert not [d for d in docs if d["kind"] == "Secret"]  # cert-manager makes them
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            annotations = one(docs, kind)["metadata"]["annotations"]
            assert annotations["cert-manager.io/inject-ca-from"] == (
                "sidegate-system/sidegate-webhook"
            )


def test_the_schema_refuses_unknown_keys_and_bad_values(helm: Helm) -> None:
    for bad in ("operator.colour=blue", "webhook.failurePolicy=Sometimes", "sidecar.mode=both"):
        result = helm("template", "x", str(CHART), "--set", bad)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr


def test_the_chart_installs_the_crd_from_the_one_source(helm: Helm) -> None:
    link = CHART / "crds" / "rbacpolicy.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "crds" / "rbacpolicy.yaml").resolve()
    result = helm("show", "crds", str(CHART))
    assert result.returncode == 0
    shown = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert yaml.safe_load(link.read_text()) in shown


def test_operator_args_are_flags_the_cli_accepts(render: Render) -> None:
    for sets in ((), ("webhook.enabled=false", "operator.watchNamespaces={a}")):
        docs = render(*sets)
        (container,) = pod_of(docs, "Deployment", "sidegate-operator")["containers"]
        parsed = cli.build_parser().parse_args(container["args"])
        assert parsed.command == "operator" and not parsed.webhook_port  # no webhook here
        if not sets:
            (container,) = pod_of(docs, "Deployment", "sidegate-webhook")["containers"]
            parsed = cli.build_parser().parse_args(container["args"])
            assert parsed.webhook_only and parsed.peering is None
            assert parsed.webhook_port == 8443 and parsed.sidecar_mode == "native"
            assert parsed.credential_source_label == ("sidegate.io/credentials", "source")
            assert parsed.sidecar_resources == {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            }
            assert parsed.sidecar_port == 4000
            assert parsed.broker_ca_file == "/etc/sidegate/broker-ca/ca.crt"


def test_broker_and_cleanup_args_are_flags_the_cli_accepts(render: Render) -> None:
    docs = render()
    (broker,) = pod_of(docs, "Deployment", "sidegate-broker")["containers"]
    parsed = cli.build_parser().parse_args(broker["args"])
    assert parsed.command == "broker" and parsed.audience == "sidegate"
    assert parsed.listen_port == 8443 and parsed.probe_port == 8080
    (operator,) = pod_of(docs, "Deployment", "sidegate-webhook")["containers"]
    # The broker accepts exactly the image the webhook injects.
    assert f"--sidecar-image={parsed.sidecar_image}" in operator["args"]
    # ...and exactly the config it injects: the same ConfigMap and the same CA, mounted.
    assert f"--sidecar-config={parsed.sidecar_config}" in operator["args"]
    broker_pod, operator_pod = (
        pod_of(docs, "Deployment", name) for name in ("sidegate-broker", "sidegate-webhook")
    )

    def source(pod: dict[str, Any], container: dict[str, Any], path: str) -> Any:
        (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        return volume.get("configMap", {}).get("name") or volume["secret"]["secretName"]

    assert source(broker_pod, broker, parsed.sidecar_config) == source(
        operator_pod, operator, parsed.sidecar_config
    )
    operator_ca = cli.build_parser().parse_args(operator["args"]).broker_ca_file
    assert parsed.ca_file.endswith("/ca.crt") and operator_ca.endswith("/ca.crt")
    assert source(broker_pod, broker, parsed.ca_file) == source(operator_pod, operator, operator_ca)
    (cleanup,) = pod_of(docs, "Job", "sidegate-cleanup")["containers"]
    parsed = cli.build_parser().parse_args(cleanup["args"])
    assert parsed.command == "operator" and parsed.action == "cleanup"
    assert parsed.stop_deployment == "sidegate-operator"


def test_the_default_sidecar_config_is_valid_and_uses_the_broker(render: Render) -> None:
    """As the operator injects it (the keys and the CA filled in): valid, fed by the chart's
    broker Service, no file of keys, bundle or token anywhere."""
    docs = render()
    config_map = one(docs, "ConfigMap")
    spec = injection.SidecarSpec(
        image="sidegate:1",
        config=config_map["data"]["sidecar.yaml"],
        trusted_keys=(signing.encode_public_key(signing.generate_private_key().public_key()),),
        broker_ca_pem=one(docs, "Secret", "sidegate-broker-tls")["data"]["ca.crt"],
    )
    parsed = settings.parse(
        injection.sidecar_config(spec),
        "values.yaml sidecar.config",
        Path("/"),
        {"SIDEGATE_NAMESPACE": "team-a", "SIDEGATE_SERVICE_ACCOUNT": "app"},
    )
    assert parsed.broker is not None and parsed.credentials is None
    service = one(docs, "Service", "sidegate-broker")
    (port,) = service["spec"]["ports"]
    assert parsed.broker.url == f"https://sidegate-broker.sidegate-system.svc:{port['port']}"
    assert parsed.broker.token_file == Path("/var/run/sidegate/token/token")
    assert parsed.policy.bundle_file is None and parsed.policy.directory is None
    assert parsed.admin is not None and parsed.admin.token_file is None
    assert parsed.listen.port == 4000


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Deployment", "sidegate-operator"),
        ("Deployment", "sidegate-webhook"),
        ("Deployment", "sidegate-broker"),
        ("Job", "sidegate-cleanup"),
    ],
)
def test_every_pod_runs_hardened(render: Render, kind: str, name: str) -> None:
    pod = pod_of(render(), kind, name)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    if kind == "Deployment":
        assert container["livenessProbe"] and container["readinessProbe"]


def test_user_ids_left_to_the_platform_are_set_nowhere(render: Render) -> None:
    """userIds=platform (OpenShift's restricted SCC assigns uids from the namespace's range
    and refuses a fixed one): no pod or container of the chart, and no injected sidecar,
    names a uid, gid or fsGroup; runAsNonRoot stays."""
    ids = {"runAsUser", "runAsGroup", "fsGroup"}
    for sets in ((), ("userIds=platform",)):
        docs = render(*sets)
        for kind, name in (
            ("Deployment", "sidegate-operator"),
            ("Deployment", "sidegate-webhook"),
            ("Deployment", "sidegate-broker"),
            ("Job", "sidegate-cleanup"),
        ):
            pod = pod_of(docs, kind, name)
            contexts = [pod["securityContext"], *(c["securityContext"] for c in pod["containers"])]
            assert all(c["runAsNonRoot"] is True for c in contexts)
            named = [ids & set(c) for c in contexts]
            assert all(named) if not sets else not any(named)
        # The injecting process is the webhook Deployment's.
        (webhook,) = pod_of(docs, "Deployment", "sidegate-webhook")["containers"]
        parsed = cli.build_parser().parse_args(webhook["args"])
        assert parsed.sidecar_user == ("platform" if sets else "fixed")


def test_the_override_bounds_reach_the_webhook(render: Render, helm: Helm) -> None:
    """sidecarOverrides: the maximums and levels a pod's sidegate.io/sidecar-* annotations may
    ask for; "" refuses that override; the schema refuses what is not a quantity."""
    sets = ("sidecarOverrides.maxCpu=", "sidecarOverrides.logLevels={INFO,ERROR}")
    for values, cpu, levels in (
        ((), "1", "DEBUG,INFO,WARNING,ERROR"),
        (sets, "", "INFO,ERROR"),
    ):
        (webhook,) = pod_of(render(*values), "Deployment", "sidegate-webhook")["containers"]
        parsed = cli.build_parser().parse_args(webhook["args"])
        assert (parsed.sidecar_max_cpu, parsed.sidecar_max_memory) == (cpu, "1Gi")
        assert parsed.sidecar_log_levels == levels
    for bad in ("sidecarOverrides.maxMemory=lots", "sidecarOverrides.logLevels={TRACE}"):
        result = helm("template", "x", str(CHART), "--set", bad)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr


def test_the_broker_is_replicated_spread_and_disruption_safe(render: Render) -> None:
    docs = render()
    deployment = one(docs, "Deployment", "sidegate-broker")
    assert deployment["spec"]["replicas"] == 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one(docs, "PodDisruptionBudget", "sidegate-broker")
    assert budget["spec"]["minAvailable"] == 1
    selected = budget["spec"]["selector"]["matchLabels"]
    assert (
        selected.items() <= labels.items() and selected["app.kubernetes.io/component"] == "broker"
    )
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selected
    service = one(docs, "Service", "sidegate-broker")
    assert service["spec"]["selector"] == selected
    # The webhook pods get the broker's CA, never its private key.
    volumes = {v["name"]: v for v in pod_of(docs, "Deployment", "sidegate-webhook")["volumes"]}
    assert volumes["broker-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_rbac_is_least_privilege_and_secrets_stay_in_the_release_namespace(
    render: Render,
) -> None:
    """Nothing cluster-wide on Secrets for anyone: the operator and the broker each hold a
    Role in the release namespace; the cleanup hook's rights exist only while it runs."""
    docs = render()
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        assert not {r for rule in role["rules"] for r in rule["resources"]} & {
            "secrets",
            "configmaps",
        }, role["metadata"]["name"]
    operator = rules_of(one(docs, "ClusterRole", "sidegate-operator"))
    assert operator[("sidegate.io", "rbacpolicies")] == {"get", "list", "watch", "patch"}
    assert operator[("sidegate.io", "rbacpolicies/status")] == {"get", "patch"}
    assert ("", "pods") not in operator  # the webhook answers; it needs no rights on pods
    operator_role = one(docs, "Role", "sidegate-operator")
    assert operator_role["metadata"]["namespace"] == "sidegate-system"
    assert rules_of(operator_role) == {
        ("", "secrets"): {"get", "list", "watch", "create", "patch"},  # no delete
        ("", "configmaps"): {"get", "create", "patch"},
    }
    broker_role = one(docs, "Role", "sidegate-broker")
    assert broker_role["metadata"]["namespace"] == "sidegate-system"
    assert rules_of(broker_role) == {
        ("", "secrets"): {"get", "list", "watch"},
        ("", "configmaps"): {"get", "list", "watch"},
    }
    assert rules_of(one(docs, "ClusterRole", "sidegate-broker")) == {
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("", "pods"): {"get"},
    }
    for kind, name, account in (
        ("RoleBinding", "sidegate-operator", "sidegate"),
        ("RoleBinding", "sidegate-broker", "sidegate-broker"),
        ("ClusterRoleBinding", "sidegate-broker", "sidegate-broker"),
    ):
        (subject,) = one(docs, kind, name)["subjects"]
        assert subject == {
            "kind": "ServiceAccount",
            "name": account,
            "namespace": "sidegate-system",
        }
    hook = [d for d in docs if d["metadata"]["name"] == "sidegate-cleanup"]
    assert {d["kind"] for d in hook} == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "NetworkPolicy",
        "Job",
    }
    for doc in hook:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert rules_of(one(docs, "ClusterRole", "sidegate-cleanup")) == {
        ("sidegate.io", "rbacpolicies"): {"list", "patch"}
    }
    (deployments,) = [
        rule
        for rule in one(docs, "Role", "sidegate-cleanup")["rules"]
        if "apps" in rule["apiGroups"]
    ]
    assert deployments["resourceNames"] == ["sidegate-operator"]


def test_the_webhooks_are_tls_and_left_out_of_system_namespaces(render: Render) -> None:
    ca = "Q0EgUEVN"  # the installer's own CA (the default, the operator's, is in test_chart_ha)
    docs = render("webhook.certificate.existingSecret=mine", f"webhook.certificate.caBundle={ca}")
    paths = {"MutatingWebhookConfiguration": "/inject", "ValidatingWebhookConfiguration": "/guard"}
    for kind, path in paths.items():
        (hook,) = one(docs, kind)["webhooks"]
        assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
        assert hook["clientConfig"]["service"]["path"] == path
        assert hook["clientConfig"]["caBundle"] == ca
        (excluded,) = hook["namespaceSelector"]["matchExpressions"]
        assert excluded["operator"] == "NotIn"
        assert set(excluded["values"]) == {
            "sidegate-system",
            "kube-system",
            "kube-public",
            "kube-node-lease",
        }
    (guard,) = one(docs, "ValidatingWebhookConfiguration")["webhooks"]
    # The injector only where namespaces opted in; the guard everywhere: a namespace admin
    # needs no label to exec into a sidecar or run a hand-made one.
    (injector,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert injector["namespaceSelector"]["matchLabels"] == {"sidegate.io/injection": "enabled"}
    assert "matchLabels" not in guard["namespaceSelector"]
    # Pod UPDATE too: a running pod's container image may be changed, not the sidecar's.
    assert {(r["resources"][0], tuple(r["operations"])) for r in guard["rules"]} == {
        ("pods", ("CREATE", "UPDATE")),
        ("pods/ephemeralcontainers", ("UPDATE",)),
        ("pods/exec", ("CONNECT",)),
    }
    for name in ("sidegate-operator", "sidegate-webhook", "sidegate-broker"):
        policy = one(docs, "NetworkPolicy", name)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # The broker's API is for injected pods (tests/security/test_chart_network.py).
    api, probe = one(docs, "NetworkPolicy", "sidegate-broker")["spec"]["ingress"]
    assert api["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert probe == {"ports": [{"port": "probe", "protocol": "TCP"}]}


ENABLED = {"sidegate.io/injection": "enabled"}


def labelled(labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "app", "labels": labels, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


def test_only_pods_labelled_for_injection_are_sent_to_the_injector(render: Render) -> None:
    """An operator outage (failurePolicy Fail) holds up the pods that ask for the sidecar and
    no others: the API server does not send the rest, so they never wait for the webhook."""
    (hook,) = one(render(), "MutatingWebhookConfiguration")["webhooks"]
    assert hook["reinvocationPolicy"] == "IfNeeded"  # init containers added later get the env

    def sent(pod: dict[str, Any], namespace: str = "team-a", *groups: str) -> bool:
        request = webhook_scope.request(pod, groups=groups)
        return webhook_scope.sent(hook, namespace, ENABLED, request)

    asking = labelled({injection.LABEL: "true"})
    assert sent(asking)
    assert not webhook_scope.sent(hook, "team-a", {}, webhook_scope.request(asking))
    assert not sent(labelled({}))
    assert not sent(labelled({"app": "web"}))
    assert not sent(labelled({injection.LABEL: "false"}))
    assert not sent(labelled({}, annotations={injection.LABEL: "true"}))  # the old opt-in
    for system in ("kube-system", "kube-public", "kube-node-lease", "sidegate-system"):
        assert not sent(asking, system)
    assert not sent(asking, "team-a", "system:nodes")  # a kubelet's mirror pod


POD_SHAPES: list[dict[str, Any]] = [
    labelled({}),
    labelled({injection.LABEL: "true"}),
    {"metadata": {}, "spec": {"containers": [{"name": "sidegate", "image": "x"}]}},
    {
        "metadata": {},
        "spec": {
            "containers": [{"name": "app"}],
            "initContainers": [{"name": "sidegate", "restartPolicy": "Always"}],
        },
    },
    {
        "metadata": {},
        "spec": {"containers": [{"name": "app"}], "ephemeralContainers": [{"name": "sidegate"}]},
    },
    {
        "metadata": {},
        "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "sidegate-spool"}]},
    },
    {
        "metadata": {},
        "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "cache", "emptyDir": {}}]},
    },
]


def token_pod(audience: str | None) -> dict[str, Any]:
    token: dict[str, Any] = {"path": "t"}
    if audience is not None:
        token["audience"] = audience
    sources = [{"configMap": {"name": "c"}}, {"serviceAccountToken": token}]
    return {
        "metadata": {},
        "spec": {
            "containers": [{"name": "app"}],
            "volumes": [{"name": "mine", "projected": {"sources": sources}}],
        },
    }


@pytest.mark.parametrize("audience", ["sidegate", "llm-broker"])
def test_the_guard_is_sent_exactly_the_pods_the_operator_judges(
    render: Render, audience: str
) -> None:
    """The guard has no objectSelector (a pod need not carry the label to carry Sidegate's
    token): its matchCondition sends what injection.carries_sidegate would look at, and
    nothing else, so ordinary pods never wait for it."""
    (hook,) = one(render(f"broker.audience={audience}"), "ValidatingWebhookConfiguration")[
        "webhooks"
    ]
    assert "objectSelector" not in hook
    spec = injection.SidecarSpec(image="sidegate:1", config="{}", audience=audience)
    injected = injection.apply(labelled({}), injection.inject(labelled({}), spec))
    pods = [
        *POD_SHAPES,
        injected,
        token_pod(audience),
        token_pod("other"),
        token_pod(None),
    ]
    for pod in pods:
        request = webhook_scope.request(pod)
        expected = injection.carries_sidegate(pod, audience)
        assert webhook_scope.sent(hook, "team-a", ENABLED, request) is expected, pod
    assert webhook_scope.sent(hook, "team-a", ENABLED, webhook_scope.request(injected))
    assert not webhook_scope.sent(hook, "team-a", ENABLED, webhook_scope.request(labelled({})))

    def exec_sent(options: dict[str, Any]) -> bool:
        request = webhook_scope.request({"kind": "PodExecOptions", **options}, "exec")
        return webhook_scope.sent(hook, "team-a", ENABLED, request)

    assert exec_sent({"container": "sidegate", "command": ["sh"]})
    assert exec_sent({"command": ["sh"]})  # no container named: the handler decides
    assert not exec_sent({"container": "app", "command": ["sh"]})


@pytest.mark.parametrize(
    "sets", [(), ("sidecar.mode=container", "certManager.enabled=true", "operator.replicas=2")]
)
def test_kubectl_kustomize_accepts_the_rendered_chart(
    helm: Helm, tmp_path: Path, sets: tuple[str, ...]
) -> None:
    """GitOps pipelines run the rendered chart through kustomize, which refuses a mapping
    with a key twice (e.g. a label from two helpers); the locked kubectl's own kustomize."""
    flags = [flag for value in sets for flag in ("--set", value)]
    result = helm("template", "sidegate", str(CHART), "-n", "sidegate-system", *flags)
    assert result.returncode == 0, result.stderr
    (tmp_path / "rendered.yaml").write_text(result.stdout)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [rendered.yaml]\ncommonLabels: {team: platform}\n"
    )
    (tmp_path / "bin").mkdir()
    kubectl = binaries.extract("kubectl", tmp_path / "bin")
    built = subprocess.run(
        [str(kubectl), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")},
        check=False,
    )
    assert built.returncode == 0, built.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc}
    assert {"Deployment", "MutatingWebhookConfiguration"} <= kinds


def test_an_existing_certificate_without_a_ca_bundle_fails_the_render(helm: Helm) -> None:
    """A webhook with no caBundle cannot be called: with failurePolicy Fail every labelled
    pod would be refused. `helm template` cannot look the Secret up, so it must fail loudly;
    a caBundle, or cert-manager injecting one, makes it render."""
    base = ["template", "sidegate", str(CHART), "-n", "sidegate-system"]
    missing = helm(*base, "--set", "webhook.certificate.existingSecret=my-tls")
    assert missing.returncode != 0
    assert "needs webhook.certificate.caBundle" in missing.stderr
    for extra in (
        ["--set", "webhook.certificate.caBundle=Y2E="],
        ["--set", "certManager.enabled=true"],
        ["--set-string", "webhook.annotations.cert-manager\\.io/inject-ca-from=ns/cert"],
    ):
        rendered = helm(*base, "--set", "webhook.certificate.existingSecret=my-tls", *extra)
        assert rendered.returncode == 0, (extra, rendered.stderr)


def test_an_image_digest_pins_every_pod_and_the_sidecar(render: Render) -> None:
    docs = render(f"image.digest={DIGEST}")
    for kind, name in (
        ("Deployment", "sidegate-operator"),
        ("Deployment", "sidegate-webhook"),
        ("Deployment", "sidegate-broker"),
        ("Job", "sidegate-cleanup"),
    ):
        (container,) = pod_of(docs, kind, name)["containers"]
        assert container["image"] == f"sidegate@{DIGEST}"
        if name in ("sidegate-webhook", "sidegate-broker"):
            assert f"--sidecar-image=sidegate@{DIGEST}" in container["args"]


def checkov(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHECKOV.exists(), "scripts/test syncs tools/checkov (its own lock) before the tests"
    return subprocess.run(
        [str(CHECKOV), *args, "--skip-download", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )


def test_checkov_finds_nothing_in_the_rendered_chart(helm: Helm, tmp_path: Path) -> None:
    """Offline checkov has no severities, so every failed check counts; the accepted ones
    are skipped in the templates with their reasons (checkov.io/skip annotations)."""
    result = helm("template", "sidegate", str(CHART), "-n", "sidegate-system", "--include-crds")
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(result.stdout)
    scan = checkov("-f", str(rendered), "--framework", "kubernetes")
    assert scan.returncode == 0 and "Failed checks: 0" in scan.stdout, scan.stdout + scan.stderr


def test_checkov_finds_nothing_in_the_dockerfile() -> None:
    scan = checkov("-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile")
    assert scan.returncode == 0 and "Failed checks: 0" in scan.stdout, scan.stdout + scan.stderr


def test_notes_tell_the_next_steps(helm: Helm) -> None:
    result = helm("install", "sidegate", str(CHART), "-n", "sidegate-system", "--dry-run=client")
    assert result.returncode == 0, result.stderr
    notes = result.stdout[result.stdout.index("NOTES:") :]
    assert "label secret llm-keys sidegate.io/credentials=source" in notes
    assert "kubectl label namespace team-a sidegate.io/injection=enabled\n" in notes
    assert "http://127.0.0.1:4000/v1" in notes
    assert "-n sidegate-system get secret sidegate-admin-team-a" in notes
    assert "nothing is copied into application namespaces" in notes


def test_the_emulator_holds_the_operator_to_the_rendered_rbac() -> None:
    """The authorizer the kmock tests run the operator under: Secrets in the release
    namespace, never elsewhere nor cluster-wide; no delete; policies everywhere."""
    grants = authorizing.operator_grants()
    assert grants.allows("watch", "", "secrets", "sidegate-system", None)
    assert grants.allows("patch", "", "secrets", "sidegate-system", "sidegate-bundle-team-a")
    assert not grants.allows("delete", "", "secrets", "sidegate-system", "sidegate-credentials")
    assert not grants.allows("get", "", "secrets", "team-a", "anything")
    assert not grants.allows("list", "", "secrets", None, None)
    assert grants.allows("list", "sidegate.io", "rbacpolicies", None, None)
    assert grants.allows("patch", "sidegate.io", "rbacpolicies/status", "team-a", "p")
    cleanup = authorizing.cleanup_grants()
    assert cleanup.allows("patch", "apps", "deployments", "sidegate-system", "sidegate-operator")
    assert not cleanup.allows("patch", "apps", "deployments", "sidegate-system", "other")


def test_only_kubelets_may_request_tokens_for_the_brokers_audience(render: Render) -> None:
    """A token `kubectl create token --audience sidegate --bound-object-kind Pod` makes is
    indistinguishable from the kubelet's in a TokenReview: the chart refuses such requests
    at admission, in every namespace."""
    docs = render()
    policy = one(docs, "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["serviceaccounts/token"],
    }
    assert "namespaceSelector" not in spec["matchConstraints"]  # every namespace
    (validation,) = spec["validations"]
    expression = " ".join(validation["expression"].split())
    assert "a == 'sidegate'" in expression
    assert "request.userInfo.username.startsWith('system:node:')" in expression
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    audience = render("broker.audience=llm-broker")
    assert (
        "a == 'llm-broker'"
        in one(audience, "ValidatingAdmissionPolicy")["spec"]["validations"][0]["expression"]
    )
    off = render("broker.tokenRequestPolicy.enabled=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
