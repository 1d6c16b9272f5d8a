"""The CRD is generated from the models, is current, and agrees with them: the same corpus is
accepted and refused by the models and by what the API server checks (the OpenAPI schema with
jsonschema, its CEL rules with cel-python, its list keys), and `kubectl explain` has a
description for every field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from sidegate.policy import crd, models
from tests.helpers import crd_schema

CRD_FILE = Path(__file__).parents[2] / "crds" / "rbacpolicy.yaml"


def test_checked_in_crd_is_current() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == crd.crd(), (
        "run: sidegate policy crd > crds/rbacpolicy.yaml"
    )


def strict(schema: Any) -> Any:
    """The schema as kubectl's strict field validation applies it: unknown fields rejected."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
            if node.pop("nullable", False):  # OpenAPI's nullable, in JSON Schema terms
                node["type"] = [node["type"], "null"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def structural_ok(node: Any, path: str = "", in_junctor: bool = False) -> None:
    """Kubernetes' structural-schema rules that bite most often: no $ref, no
    additionalProperties beside properties, every node typed outside oneOf/anyOf/allOf,
    and junctor branches that only narrow values (no types of their own)."""
    if isinstance(node, dict):
        assert "$ref" not in node and "additionalProperties" not in node, path
        if not in_junctor and ("properties" in node or "items" in node):
            assert "type" in node, f"{path}: typed"
        if in_junctor:
            assert "type" not in node, f"{path}: a junctor branch declares a type"
        for key, value in node.items():
            junctor = in_junctor or key in ("oneOf", "anyOf", "allOf")
            if isinstance(value, list) and key in ("oneOf", "anyOf", "allOf"):
                for index, branch in enumerate(value):
                    structural_ok(branch, f"{path}.{key}[{index}]", True)
            elif isinstance(value, dict) and key == "properties":
                for name, child in value.items():
                    structural_ok(child, f"{path}.{name}", junctor)
            elif isinstance(value, dict):
                structural_ok(value, f"{path}.{key}", junctor)


def test_schema_is_structural() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    structural_ok(schema)


SA = {"kind": "ServiceAccount", "name": "chatbot"}
CORPUS: list[dict[str, Any]] = [
    {},
    {"subjects": [SA], "rules": [{"effect": "Allow", "models": ["gpt-*"]}]},
    {
        "subjects": [SA],
        "allowedTenants": ["Acme_Corp.1", "globex"],
        "rules": [
            {
                "effect": "Deny",
                "models": ["*"],
                "actions": ["chat", "models.list"],
                "tenants": ["Acme_Corp.1"],
            }
        ],
    },
    {
        "subjects": [{"kind": "Namespace", "name": "team-a"}],
        "rateLimits": {
            "requestsPerMinute": 5,
            "tenantOverrides": [{"tenant": "x", "maxConcurrent": 2}],
        },
    },
    {"rateLimits": {"requestsPerMinute": None}},
    {"rateLimits": {"tenantOverrides": [{"tenant": "x", "maxConcurrent": None}]}},  # set
    {
        "subjects": [SA, {"kind": "Namespace", "name": "chatbot"}],  # same name, other kind
        "allowedTenants": ["acme", "Acme"],  # tenants are case-sensitive
        "rateLimits": {
            "tenantOverrides": [
                {"tenant": "a", "requestsPerMinute": 1},
                {"tenant": "b", "tokensPerMinute": 1},
            ]
        },
    },
    # rejected by both:
    {"subjects": [SA, SA]},
    {"allowedTenants": ["acme", "acme"]},
    {
        "rateLimits": {
            "tenantOverrides": [
                {"tenant": "a", "requestsPerMinute": 1},
                {"tenant": "a", "maxConcurrent": 2},
            ]
        }
    },
    {"rateLimits": {"tenantOverrides": [{"tenant": "x"}]}},  # limits nothing
    {"rateLimits": {"tenantOverrides": [{"tenant": "x", "requestPerMinute": 1}]}},  # typo
    {"subjects": [{"kind": "ServiceAccount", "name": "Chatbot"}]},
    {"subjects": [{"kind": "Tenant", "name": "acme"}]},  # removed: a claim never grants
    {"rules": [{"effect": "Allow", "models": ["x"], "tenants": ["bad tenant"]}]},
    {"rules": [{"effect": "Allow", "models": ["x"], "tenants": []}]},
    {"allowedTenants": ["a\r\nb"]},
    {"subjects": [{"kind": "Group", "name": "x"}]},
    {"subjects": [{"kind": "Namespace", "name": "a.b"}]},
    {"subjects": [{"kind": "ServiceAccount"}]},
    {"rules": [{"effect": "Permit", "models": ["x"]}]},
    {"rules": [{"effect": "Allow", "models": []}]},
    {"rules": [{"effect": "Allow", "models": ["bad model"]}]},
    {"rules": [{"effect": "Allow", "models": ["x"], "actions": ["delete"]}]},
    {"rules": [{"effect": "Allow", "models": ["x"], "colour": "blue"}]},
    {"rateLimits": {"requestsPerMinute": 0}},
    {"rateLimits": {"tokensPerMinute": -1}},
    {"rateLimits": {"maxConcurrent": "3"}},
    {"rateLimits": {"tenantOverrides": [{"requestsPerMinute": 1}]}},
    {"unknown": True},
]


@pytest.mark.parametrize("spec", CORPUS)
def test_crd_and_models_agree(spec: dict[str, Any]) -> None:
    schema = strict(
        crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    )
    try:
        models.RBACPolicySpec.model_validate(spec)
        model_accepts = True
    except ValidationError:
        model_accepts = False
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(spec)]
    errors += crd_schema.violations(schema, spec)
    assert model_accepts == (not errors), (spec, errors)


def test_a_pruned_typo_is_still_refused_by_the_cel_rule() -> None:
    """Without strict field validation the API server prunes an unknown field before the
    CEL rules run: a misspelt limit leaves an override with no limit, which its rule refuses."""
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pruned = {"rateLimits": {"tenantOverrides": [{"tenant": "x"}]}}
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(pruned))
    (problem,) = crd_schema.violations(schema, pruned)
    assert problem.startswith(".rateLimits.tenantOverrides[0]: a tenant override sets")
    assert [path for path, _rule in crd_schema.rules(schema)] == [".rateLimits.tenantOverrides[]"]


def schema_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for name, child in (node.get("properties") or {}).items():
        found.append((f"{path}.{name}", child))
        found.extend(schema_nodes(child, f"{path}.{name}"))
    if "items" in node:
        found.extend(schema_nodes(node["items"], f"{path}[]"))
    return found


def test_kubectl_explain_has_a_description_for_every_field() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"]
    nodes = schema_nodes(schema)
    assert len(nodes) > 30
    for path, node in nodes:
        assert node.get("description", "").strip(), f"{path} has no description"


def test_lists_with_keys_are_maps_and_their_keys_are_required_scalars() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    kinds = {
        path: node.get("x-kubernetes-list-type")
        for path, node in schema_nodes(schema)
        if node.get("type") == "array"
    }
    assert kinds[".spec.subjects"] == "map"
    assert kinds[".spec.rateLimits.tenantOverrides"] == "map"
    assert kinds[".status.conditions"] == "map"
    assert kinds[".spec.allowedTenants"] == "set"
    assert kinds[".spec.rules"] == "atomic"  # no key: rules are whole
    for path, node in schema_nodes(schema):
        if node.get("x-kubernetes-list-type") != "map":
            continue
        items = node["items"]
        # The API server's rules for map keys: required (or defaulted) scalar fields.
        for key in node["x-kubernetes-list-map-keys"]:
            assert key in items["required"], (path, key)
            assert items["properties"][key]["type"] in ("string", "integer", "boolean")
    keys = {
        path: node["x-kubernetes-list-map-keys"]
        for path, node in schema_nodes(schema)
        if node.get("x-kubernetes-list-type") == "map"
    }
    assert keys == {
        ".spec.subjects": ["kind", "name"],
        ".spec.rateLimits.tenantOverrides": ["tenant"],
        ".status.conditions": ["type"],
    }


def test_kubectl_shows_the_policies_in_their_category_with_the_reason() -> None:
    names = crd.crd()["spec"]["names"]
    # Not `all`: that is for workloads, and `kubectl delete all` would take the policies.
    assert names["categories"] == ["sidegate"]
    (version,) = crd.crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Message"]["priority"] == 1  # -o wide only
    assert list(columns) == ["Ready", "Reason", "Rules", "Age", "Message"]
