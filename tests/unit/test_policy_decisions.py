"""The decision semantics of docs/policies.md, one edge case each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidegate.policy import models, rules
from tests.policies import APP, allow, deny, index, policy


def test_deny_by_default_without_any_policy() -> None:
    decision = index().decide(APP, "gpt-4o", "chat")
    assert not decision.allowed and decision.reason == rules.NO_POLICY


def test_deny_by_default_with_a_policy_that_allows_something_else() -> None:
    decision = index(policy("p", rules=[allow("claude-*")])).decide(APP, "gpt-4o", "chat")
    assert not decision.allowed and decision.reason == rules.NO_MATCHING_ALLOW


def test_allow_and_deny_on_the_same_model_deny_wins() -> None:
    same_policy = index(policy("p", rules=[allow("gpt-4o"), deny("gpt-4o")]))
    assert same_policy.decide(APP, "gpt-4o", "chat").reason == rules.DENIED_BY_RULE
    across = index(policy("a", rules=[allow("gpt-4o")]), policy("b", rules=[deny("gpt-4o")]))
    decision = across.decide(APP, "gpt-4o", "chat")
    assert decision.reason == rules.DENIED_BY_RULE and decision.policy == "team-a/b"


def test_overlapping_patterns() -> None:
    policies = index(policy("p", rules=[allow("gpt-*"), deny("gpt-4*"), allow("gpt-4o-mini")]))
    assert policies.decide(APP, "gpt-3.5-turbo", "chat").allowed
    assert not policies.decide(APP, "gpt-4o-mini", "chat").allowed  # the deny still covers it
    explained = policies.decide(APP, "gpt-4o-mini", "chat", explain=True)
    assert [(m.effect, m.pattern) for m in explained.matches] == [
        ("Deny", "gpt-4*"),
        ("Allow", "gpt-*"),
        ("Allow", "gpt-4o-mini"),
    ]


def test_actions_narrow_a_rule() -> None:
    policies = index(policy("p", rules=[allow("text-embedding-*", actions=["embeddings"])]))
    assert policies.decide(APP, "text-embedding-3-small", "embeddings").allowed
    assert not policies.decide(APP, "text-embedding-3-small", "chat").allowed


def test_case_cannot_sidestep_a_deny() -> None:
    policies = index(policy("p", rules=[allow("*"), deny("gpt-4o*")]))
    for spelling in ("gpt-4o", "GPT-4o", "Gpt-4O-mini"):
        assert not policies.decide(APP, spelling, "chat").allowed, spelling
    assert index(policy("p", rules=[allow("claude-*")])).decide(APP, "CLAUDE-3", "messages").allowed


def test_unknown_model_and_a_pattern_that_matches_nothing() -> None:
    policies = index(policy("p", rules=[allow("no-such-model-*")]))
    assert policies.decide(APP, "gpt-4o", "chat").reason == rules.NO_MATCHING_ALLOW
    assert not policies.decide(APP, "", "chat").allowed


def test_empty_subjects_apply_to_no_one() -> None:
    decision = index(policy("p", subjects=[], rules=[allow("*")])).decide(APP, "gpt-4o", "chat")
    assert decision.reason == rules.NO_POLICY


def test_subjects_service_account_and_namespace() -> None:
    policies = index(
        policy("sa", subjects=[{"kind": "ServiceAccount", "name": "app"}], rules=[allow("a")]),
        policy("ns", subjects=[{"kind": "Namespace", "name": "team-a"}], rules=[allow("b")]),
    )
    other_sa = rules.Caller("team-a", "batch")
    other_ns = rules.Caller("team-b", "app", "acme")
    assert policies.decide(APP, "a", "chat").allowed
    assert not policies.decide(other_sa, "a", "chat").allowed
    assert policies.decide(other_sa, "b", "chat").allowed
    assert not any(policies.decide(other_ns, m, "chat").allowed for m in "ab")


def test_a_tenant_subject_is_refused_with_the_migration() -> None:
    with pytest.raises(ValidationError, match="subjects of kind Tenant were removed"):
        policy("t", subjects=[{"kind": "Tenant", "name": "acme"}], rules=[allow("c")])


def test_a_tenant_claim_neither_grants_nor_widens() -> None:
    policies = index(
        policy("app", rules=[allow("a"), {**allow("b"), "tenants": ["acme"]}]),
    )
    stranger = rules.Caller("team-a", "batch", "acme")  # no policy of its own
    assert policies.decide(stranger, "b", "chat").reason == rules.NO_POLICY
    assert policies.decide(rules.Caller("team-a", "app", "acme"), "b", "chat").allowed
    assert not policies.decide(rules.Caller("team-a", "app", "other"), "b", "chat").allowed
    assert not policies.decide(APP, "b", "chat").allowed  # a scoped rule needs the claim
    assert policies.decide(rules.Caller("team-a", "app", "other"), "a", "chat").allowed


def test_a_tenant_deny_denies_that_tenant() -> None:
    policies = index(policy("app", rules=[allow("*"), {**deny("gpt-*"), "tenants": ["acme"]}]))
    acme = policies.decide(rules.Caller("team-a", "app", "acme"), "gpt-4o", "chat")
    assert (acme.allowed, acme.reason) == (False, rules.DENIED_BY_RULE)
    assert policies.decide(rules.Caller("team-a", "app", "globex"), "gpt-4o", "chat").allowed
    assert policies.decide(APP, "gpt-4o", "chat").allowed


def test_allowed_tenants_refuse_other_claims() -> None:
    listed = policy("app", rules=[allow("*")])
    listed = listed.model_copy(
        update={"spec": listed.spec.model_copy(update={"allowed_tenants": ["acme", "globex"]})}
    )
    policies = index(listed, policy("ns", subjects=[{"kind": "Namespace", "name": "team-a"}]))
    assert policies.decide(rules.Caller("team-a", "app", "acme"), "m", "chat").allowed
    assert policies.decide(APP, "m", "chat").allowed  # no claim: the service account itself
    refused = policies.decide(rules.Caller("team-a", "app", "initech"), "m", "chat")
    assert (refused.allowed, refused.reason, refused.policy) == (
        False,
        rules.TENANT_NOT_ALLOWED,
        "team-a/app",
    )


def test_a_policy_cannot_name_another_namespace() -> None:
    with pytest.raises(ValidationError, match="not the policy's namespace"):
        policy("p", subjects=[{"kind": "Namespace", "name": "team-b"}])


def test_tightest_limit_applies_and_overrides_are_sub_budgets() -> None:
    policies = index(
        policy(
            "base",
            subjects=[{"kind": "Namespace", "name": "team-a"}],
            rules=[allow("*")],
            limits={
                "requestsPerMinute": 100,
                "tokensPerMinute": 10_000,
                "tenantOverrides": [
                    {"tenant": "big", "requestsPerMinute": 1000},
                    {"tenant": "small", "requestsPerMinute": 5},
                ],
            },
        ),
        policy(
            "sa",
            limits={
                "requestsPerMinute": 500,
                "maxConcurrent": 3,
                "tenantOverrides": [{"tenant": "small", "requestsPerMinute": 7}],
            },
        ),
    )
    plain = policies.decide(APP, "m", "chat")
    expected = (100, 10_000, 3)
    limits = plain.limits
    assert (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent) == expected
    assert dict(limits.sources) == {
        "requests_per_minute": "team-a/base",
        "tokens_per_minute": "team-a/base",
        "max_concurrent": "team-a/sa",
    }
    assert not plain.tenant_limits.any
    for tenant in ("big", "small", "anything"):  # a claim never changes the aggregate
        assert policies.decide(rules.Caller("team-a", "app", tenant), "m", "chat").limits == limits
    big = policies.decide(rules.Caller("team-a", "app", "big"), "m", "chat").tenant_limits
    assert (big.requests_per_minute, big.tokens_per_minute) == (1000, None)
    small = policies.decide(rules.Caller("team-a", "app", "small"), "m", "chat").tenant_limits
    assert small.requests_per_minute == 5 and dict(small.sources) == {
        "requests_per_minute": "team-a/base"
    }


@pytest.mark.parametrize(
    "tenant", ["a\r\nX-Injected: 1", "x" * 64, "tenänt", "", "-leading", "a b", "../etc"]
)
def test_hostile_tenant_names_are_rejected(tenant: str) -> None:
    assert not rules.models.is_valid_tenant(tenant)
    with pytest.raises(ValidationError):
        policy("p", rules=[{**allow("*"), "tenants": [tenant]}])


def test_same_name_twice_is_refused() -> None:
    from sidegate import errors
    from sidegate.policy import bundle

    with pytest.raises(errors.BundleRejected, match="defined twice"):
        bundle.to_bundle([policy("p"), policy("p")])


def test_every_decision_carries_the_limits_the_tenant_budget_and_retention() -> None:
    """Whatever decides, and however it is found (the fast path or explain), the decision
    holds the caller's limits, the claimed tenant's sub-budget and the policy forbidding
    provider storage: the sidecar reads them off every decision it gets."""
    limited = policy(
        "a-limits",
        rules=[allow("gpt-*"), deny("o1")],
        limits={
            "requestsPerMinute": 100,
            "tenantOverrides": [
                {"tenant": "acme", "requestsPerMinute": 5},
                {"tenant": "initech", "requestsPerMinute": 7},  # but not an allowed tenant
            ],
        },
    )
    limited = limited.model_copy(
        update={"spec": limited.spec.model_copy(update={"allowed_tenants": ["acme", "globex"]})}
    )
    hipaa = policy("b-hipaa", rules=[allow("claude-*")])
    hipaa = hipaa.model_copy(
        update={
            "spec": hipaa.spec.model_copy(
                update={"retention": models.Retention(providerStorage="Forbidden")}
            )
        }
    )
    policies = index(limited, hipaa)
    limits = rules.EffectiveLimits(
        requests_per_minute=100, sources=(("requests_per_minute", "team-a/a-limits"),)
    )
    acme_budget = rules.EffectiveLimits(
        requests_per_minute=5, sources=(("requests_per_minute", "team-a/a-limits"),)
    )
    acme = rules.Caller("team-a", "app", "acme")
    kept = {"storage_forbidden_by": "team-a/b-hipaa"}
    deny_o1 = rules.RuleMatch("team-a/a-limits", 1, "Deny", "o1")
    for explain in (False, True):
        found = {
            model: policies.decide(caller, model, "chat", explain=explain)
            for caller, model in [(acme, "o1"), (acme, "gpt-4o"), (acme, "mistral")]
        }
        assert found["o1"] == rules.Decision(
            False,
            rules.DENIED_BY_RULE,
            "team-a/a-limits",
            limits,
            (deny_o1,) if explain else (),
            acme_budget,
            **kept,
        )
        assert found["gpt-4o"] == rules.Decision(
            True,
            rules.ALLOWED,
            "team-a/a-limits",
            limits,
            (rules.RuleMatch("team-a/a-limits", 0, "Allow", "gpt-*"),) if explain else (),
            acme_budget,
            **kept,
        )
        assert found["mistral"] == rules.Decision(
            False, rules.NO_MATCHING_ALLOW, None, limits, (), acme_budget, **kept
        )
        initech = rules.Caller("team-a", "app", "initech")
        initech_budget = rules.EffectiveLimits(
            requests_per_minute=7, sources=(("requests_per_minute", "team-a/a-limits"),)
        )
        assert policies.decide(initech, "gpt-4o", "chat", explain=explain) == rules.Decision(
            False, rules.TENANT_NOT_ALLOWED, "team-a/a-limits", limits, (), initech_budget, **kept
        )
        globex = policies.decide(rules.Caller("team-a", "app", "globex"), "o1", "chat")
        assert globex.tenant_limits == rules.NO_LIMITS and globex.limits == limits
        stranger = policies.decide(
            rules.Caller("team-b", "app", "acme"), "gpt-4o", "chat", explain=explain
        )
        assert stranger == rules.Decision(False, rules.NO_POLICY, None, rules.NO_LIMITS)
