"""The RBACPolicy model's own checks, beyond field types and patterns: the namespace a policy
may name, tenant subjects (removed), one override per tenant, the tenant-name shape; each
refusal with the message a policy author sees (kubectl and the operator's status show it)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sidegate.policy import models


def document(spec: dict[str, Any], namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "sidegate.io/v1alpha1",
        "kind": "RBACPolicy",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": spec,
    }


def refusal(spec: dict[str, Any], namespace: str = "team-a") -> str:
    with pytest.raises(ValidationError) as caught:
        models.RBACPolicy.model_validate(document(spec, namespace))
    (error,) = caught.value.errors(include_url=False)
    return str(error["msg"])


def test_a_policy_names_only_its_own_namespace_and_the_index_says_which_subject() -> None:
    spec = {
        "subjects": [
            {"kind": "ServiceAccount", "name": "team-b"},  # a service account of team-a
            {"kind": "Namespace", "name": "team-a"},
            {"kind": "Namespace", "name": "team-b"},
        ]
    }
    assert refusal(spec) == (
        "Value error, spec.subjects[2]: namespace 'team-b' is not the policy's namespace 'team-a'"
    )
    spec["subjects"][1] = {"kind": "ServiceAccount", "name": "worker"}  # no duplicate
    accepted = models.RBACPolicy.model_validate(document(spec, namespace="team-b"))
    assert accepted.key == ("team-b", "p")
    assert len(accepted.spec.subjects) == 3


def test_tenant_subjects_are_refused_with_what_to_do_instead() -> None:
    message = refusal({"subjects": [{"kind": "Tenant", "name": "acme"}]})
    assert message == "Value error, " + models._TENANT_SUBJECT_REMOVED
    assert message.startswith("Value error, subjects of kind Tenant were removed")
    # anywhere in the list
    spec = {"subjects": [{"kind": "ServiceAccount", "name": "app"}, {"kind": "Tenant"}]}
    assert refusal(spec) == "Value error, " + models._TENANT_SUBJECT_REMOVED


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"subjects": None},
        {"subjects": []},
        {"subjects": [{"kind": "ServiceAccount", "name": "app"}]},
    ],
)
def test_specs_without_tenant_subjects_pass_that_check(spec: dict[str, Any]) -> None:
    if spec.get("subjects", []) is None:
        # null subjects are still refused, by the field's type, not as tenant subjects
        assert refusal(spec) == "Input should be a valid list"
        return
    assert models.RBACPolicySpec.model_validate(spec).rules == []


def test_a_spec_object_is_not_read_as_a_mapping() -> None:
    spec = models.RBACPolicySpec.model_validate({"subjects": [{"kind": "Namespace", "name": "a"}]})
    assert models.RBACPolicySpec.model_validate(spec) == spec
    # a non-mapping subject is left to the subject's own type check
    with pytest.raises(ValidationError, match=r"subjects\.0"):
        models.RBACPolicySpec.model_validate({"subjects": ["Tenant"]})


def test_one_override_per_tenant_case_sensitively() -> None:
    overrides = [
        {"tenant": "acme", "requestsPerMinute": 5},
        {"tenant": "globex", "requestsPerMinute": 6},
        {"tenant": "acme", "tokensPerMinute": 7},
    ]
    assert refusal({"rateLimits": {"tenantOverrides": overrides}}) == (
        "Value error, tenant 'acme' has two overrides"
    )
    distinct = [{"tenant": "acme", "requestsPerMinute": 5}, {"tenant": "Acme", "maxConcurrent": 1}]
    limits = models.RateLimits.model_validate({"tenantOverrides": distinct})
    assert [o.tenant for o in limits.tenant_overrides] == ["acme", "Acme"]
    assert models.RateLimits.model_validate({}).tenant_overrides == []


@pytest.mark.parametrize(
    ("tenant", "valid"),
    [
        ("a", True),
        ("Acme.Corp_eu-1", True),
        ("9" + "x" * 62, True),
        ("9" + "x" * 63, False),
        (".hidden", False),
        ("a/b", False),
        ("a\n", False),  # a regex $ would match before the newline
        ("a\nb", False),
        ("", False),
    ],
)
def test_tenant_names(tenant: str, valid: bool) -> None:
    assert models.is_valid_tenant(tenant) is valid
