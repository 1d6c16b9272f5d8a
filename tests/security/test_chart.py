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
from sidegate.sidecar import settings
from tests.helpers import binaries

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "sidegate"
CHECKOV = ROOT / "tools" / "checkov" / ".venv" / "bin" / "checkov"
KUBERNETES = "1.35"
DIGEST = "sha256:" + "ab" * 32

Helm = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm-home")
    binary = binaries.extract("helm", home)
    environment = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=environment, check=False
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


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


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
        ("webhook.certificate.existingSecret=my-tls", "webhook.failurePolicy=Ignore"),
        ("networkPolicy.apiServerCIDRs={10.0.0.1/32}",),
    ],
)
def test_every_rendered_manifest_passes_kubernetes_validate(
    render: Render, sets: tuple[str, ...]
) -> None:
    docs = render(*sets)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_refuses_unknown_keys_and_bad_values(helm: Helm) -> None:
    for bad in ("operator.colour=blue", "webhook.failurePolicy=Sometimes", "sidecar.mode=both"):
        result = helm("template", "x", str(CHART), "--set", bad)
        assert result.returncode != 0 and "values don't meet the specifications" in result.stderr


def test_the_chart_installs_the_crd_from_the_one_source(helm: Helm) -> None:
    link = CHART / "crds" / "rbacpolicy.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "crds" / "rbacpolicy.yaml").resolve()
    result = helm("show", "crds", str(CHART))
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout) == yaml.safe_load(link.read_text())


def test_operator_args_are_flags_the_cli_accepts(render: Render) -> None:
    for sets in ((), ("webhook.enabled=false", "operator.watchNamespaces={a}")):
        deployment = one(render(*sets), "Deployment")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        parsed = cli.build_parser().parse_args(container["args"])
        assert parsed.command == "operator"
        if not sets:
            assert parsed.webhook_port == 8443 and parsed.sidecar_mode == "native"
            assert parsed.credential_source_label == ("sidegate.io/credentials", "source")
            assert parsed.sidecar_resources == {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            }
            assert parsed.sidecar_port == 4000


def test_the_default_sidecar_config_is_valid(render: Render) -> None:
    config_map = one(render(), "ConfigMap")
    parsed = settings.parse(
        config_map["data"]["sidecar.yaml"],
        "values.yaml sidecar.config",
        Path("/"),
        {"SIDEGATE_NAMESPACE": "team-a", "SIDEGATE_SERVICE_ACCOUNT": "app"},
    )
    assert parsed.policy.bundle_file == Path("/var/run/sidegate/bundle/bundle.json")
    assert parsed.admin is not None and parsed.listen.port == 4000


def test_the_operator_runs_hardened(render: Render) -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["livenessProbe"] and container["readinessProbe"]


def test_the_cluster_role_is_least_privilege(render: Render) -> None:
    role = one(render(), "ClusterRole")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert verbs[("", "secrets")] == {"get", "list", "watch", "create", "patch"}  # no delete
    assert verbs[("sidegate.io", "rbacpolicies")] == {"get", "list", "watch", "patch"}
    assert ("", "pods") not in verbs  # the webhook answers; it needs no rights on pods


def test_the_webhook_is_tls_and_left_out_of_system_namespaces(render: Render) -> None:
    docs = render()
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["clientConfig"]["service"]["path"] == "/inject"
    assert hook["clientConfig"]["caBundle"] == one(docs, "Secret")["data"]["ca.crt"]
    (excluded,) = hook["namespaceSelector"]["matchExpressions"]
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"sidegate-system", "kube-system"}
    policy = one(docs, "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_an_image_digest_pins_operator_and_sidecar(render: Render) -> None:
    (container,) = one(render(f"image.digest={DIGEST}"), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == f"sidegate@{DIGEST}"
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
