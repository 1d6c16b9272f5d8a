"""The API server's RBAC authorizer, for the chart's service accounts, in the emulator.

kmock authorises everything; a real API server refuses whatever its caller's Roles and
ClusterRoles do not allow. Here the chart is rendered with helm (once per process), its
Roles, ClusterRoles and their bindings are read, and a request carrying a service account's
token is allowed only as kube-apiserver's RBAC authorizer would allow it: a rule matches
when its apiGroups, resources (``plural`` or ``plural/subresource``), verbs and, when set,
resourceNames match; a Role's rules hold only in its own namespace; a ClusterRole bound by
a ClusterRoleBinding holds everywhere. Discovery (``/api``, ``/apis``, ``/version``) is
allowed to every authenticated caller, as ``system:discovery`` is.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import binaries

CHART = Path(__file__).parents[2] / "charts" / "sidegate"
RELEASE = "sidegate-system"


@dataclasses.dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        return (
            group in self.groups
            and resource in self.resources
            and verb in self.verbs
            and (not self.names or (name is not None and name in self.names))
        )


@dataclasses.dataclass(frozen=True)
class Grants:
    """What one service account may do: everywhere, and per namespace."""

    cluster: tuple[Rule, ...]
    namespaced: dict[str, tuple[Rule, ...]]

    def allows(
        self, verb: str, group: str, resource: str, namespace: str | None, name: str | None
    ) -> bool:
        rules = [*self.cluster, *(self.namespaced.get(namespace, ()) if namespace else ())]
        return any(rule.allows(verb, group, resource, name) for rule in rules)


def _rules(role: dict[str, Any]) -> tuple[Rule, ...]:
    return tuple(
        Rule(
            frozenset(rule.get("apiGroups") or []),
            frozenset(rule.get("resources") or []),
            frozenset(rule.get("verbs") or []),
            frozenset(rule.get("resourceNames") or []),
        )
        for rule in role.get("rules") or []
    )


def grants(docs: Iterable[dict[str, Any]], namespace: str, account: str) -> Grants:
    """The rules the rendered manifests bind to ``namespace/account``."""
    docs = list(docs)
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    cluster: list[Rule] = []
    namespaced: dict[str, list[Rule]] = {}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding.get("subjects", []):
            continue
        ref = binding["roleRef"]
        where = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], where if ref["kind"] == "Role" else None, ref["name"])]
        if binding["kind"] == "ClusterRoleBinding":
            cluster.extend(_rules(role))
        else:
            namespaced.setdefault(where, []).extend(_rules(role))
    return Grants(tuple(cluster), {ns: tuple(rules) for ns, rules in namespaced.items()})


API_SERVER = "networkPolicy.apiServerCIDRs={203.0.113.10/32}"  # a documentation address


@functools.cache
def rendered_chart() -> tuple[dict[str, Any], ...]:
    """The chart as `helm template` renders it into the release namespace."""
    with tempfile.TemporaryDirectory() as home:
        helm = binaries.extract("helm", Path(home))
        result = subprocess.run(
            # The chart needs the API server's address for its NetworkPolicies.
            [str(helm), "template", "sidegate", str(CHART), "-n", RELEASE, "--set", API_SERVER],
            capture_output=True,
            text=True,
            env={"HOME": home, "PATH": os.environ.get("PATH", "")},
            check=True,
        )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def operator_grants() -> Grants:
    return grants(rendered_chart(), RELEASE, "sidegate")


def broker_grants() -> Grants:
    return grants(rendered_chart(), RELEASE, "sidegate-broker")


def webhook_grants() -> Grants:
    """The webhook Deployment's account (`sidegate operator --webhook-only`)."""
    return grants(rendered_chart(), RELEASE, "sidegate-webhook")


def cleanup_grants() -> Grants:
    """The pre-delete hook's account (its rights exist only while the hook runs)."""
    return grants(rendered_chart(), RELEASE, "sidegate-cleanup")


def forbidden(verb: str, group: str, resource: str, namespace: str | None) -> dict[str, Any]:
    """The Status a real API server answers with (403)."""
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{resource} is forbidden: cannot {verb} resource "{resource}" in API group '
        f'"{group}" {where}',
        "reason": "Forbidden",
        "details": {"kind": resource},
        "code": 403,
    }
