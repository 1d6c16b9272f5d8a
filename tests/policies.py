"""Building RBACPolicy objects and bundles in tests, tersely."""

from __future__ import annotations

from typing import Any

from sidegate.policy import bundle, models, rules


def policy(
    name: str,
    *,
    namespace: str = "team-a",
    subjects: list[dict[str, Any]] | None = None,
    rules: list[dict[str, Any]] | None = None,
    limits: dict[str, Any] | None = None,
) -> models.RBACPolicy:
    spec: dict[str, Any] = {
        "subjects": subjects
        if subjects is not None
        else [{"kind": "ServiceAccount", "name": "app"}],
        "rules": rules or [],
    }
    if limits is not None:
        spec["rateLimits"] = limits
    return models.RBACPolicy.model_validate(
        {
            "apiVersion": "sidegate.io/v1alpha1",
            "kind": "RBACPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def allow(*patterns: str, actions: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"effect": "Allow", "models": list(patterns)}
    if actions:
        rule["actions"] = actions
    return rule


def deny(*patterns: str, actions: list[str] | None = None) -> dict[str, Any]:
    return {**allow(*patterns, actions=actions), "effect": "Deny"}


def index(*policies: models.RBACPolicy) -> rules.PolicyIndex:
    return rules.PolicyIndex(bundle.to_bundle(policies))


APP = rules.Caller("team-a", "app")
