"""Retention in policy: which callers' requests the provider may not keep, and explain."""

from __future__ import annotations

from sidegate.policy import bundle, explaining, models, rules
from tests.policies import APP, allow, policy


def forbidding(name: str, subjects: list[dict[str, str]] | None = None) -> models.RBACPolicy:
    plain = policy(name, subjects=subjects, rules=[allow("*")])
    spec = plain.spec.model_copy(
        update={"retention": models.Retention(providerStorage="Forbidden")}
    )
    return plain.model_copy(update={"spec": spec})


def index_of(*policies: models.RBACPolicy) -> rules.PolicyIndex:
    return rules.PolicyIndex(bundle.to_bundle(policies))


def test_any_applicable_policy_forbidding_storage_forbids_it() -> None:
    allowing = policy("a-allow", rules=[allow("gpt-*")])
    found = index_of(allowing, forbidding("z-retention", subjects=[]))
    assert found.decide(APP, "gpt-4o", "responses").storage_forbidden_by is None
    found = index_of(allowing, forbidding("z-retention"))
    decision = found.decide(APP, "gpt-4o", "responses")
    assert decision.allowed and decision.storage_forbidden_by == "team-a/z-retention"
    # Whatever the decision: a denied request is refused anyway, but explain still says it.
    denied = found.decide(rules.Caller("team-a", "other"), "gpt-4o", "responses")
    assert denied.storage_forbidden_by is None


def test_explain_shows_it() -> None:
    found = index_of(forbidding("hipaa"))
    answer = explaining.explain(found, APP, "gpt-4o", "responses")
    assert answer["retention"] == {"providerStorage": "Forbidden", "policy": "team-a/hipaa"}
    assert "provider storage: Forbidden (from team-a/hipaa)" in explaining.as_text(answer)
    plain = explaining.explain(index_of(policy("p", rules=[allow("*")])), APP, "x", "chat")
    assert plain["retention"] == {"providerStorage": "Allowed", "policy": None}
    assert "provider storage: Allowed" in explaining.as_text(plain)


def test_bundles_without_retention_keep_their_hash() -> None:
    plain = policy("p", rules=[allow("*")])
    encoded = bundle.to_bundle([plain]).policies[0].model_dump(by_alias=True, exclude_none=True)
    assert "retention" not in encoded
