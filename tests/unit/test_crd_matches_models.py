"""The CRD is generated from the models, is current, and agrees with them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from sidegate.policy import crd, models

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
    # rejected by both:
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
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(spec))
    assert model_accepts == (not errors), (spec, [e.message for e in errors])
