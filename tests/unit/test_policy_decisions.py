"""The decision semantics of docs/policies.md, one edge case each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidegate.policy import rules
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


def test_subjects_service_account_namespace_and_tenant() -> None:
    policies = index(
        policy("sa", subjects=[{"kind": "ServiceAccount", "name": "app"}], rules=[allow("a")]),
        policy("ns", subjects=[{"kind": "Namespace", "name": "team-a"}], rules=[allow("b")]),
        policy("t", subjects=[{"kind": "Tenant", "name": "acme"}], rules=[allow("c")]),
    )
    other_sa = rules.Caller("team-a", "batch")
    acme = rules.Caller("team-a", "batch", "acme")
    other_ns = rules.Caller("team-b", "app", "acme")
    assert policies.decide(APP, "a", "chat").allowed
    assert not policies.decide(other_sa, "a", "chat").allowed
    assert policies.decide(other_sa, "b", "chat").allowed
    assert not policies.decide(other_sa, "c", "chat").allowed
    assert policies.decide(acme, "c", "chat").allowed
    assert not any(policies.decide(other_ns, m, "chat").allowed for m in "abc")


def test_a_policy_cannot_name_another_namespace() -> None:
    with pytest.raises(ValidationError, match="not the policy's namespace"):
        policy("p", subjects=[{"kind": "Namespace", "name": "team-b"}])


def test_tightest_limit_applies_and_an_override_replaces_its_own_default() -> None:
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
        policy("sa", limits={"requestsPerMinute": 500, "maxConcurrent": 3}),
    )
    plain = policies.decide(APP, "m", "chat").limits
    assert (plain.requests_per_minute, plain.tokens_per_minute, plain.max_concurrent) == (
        100,
        10_000,
        3,
    )
    assert dict(plain.sources) == {
        "requests_per_minute": "team-a/base",
        "tokens_per_minute": "team-a/base",
        "max_concurrent": "team-a/sa",
    }
    big = policies.decide(rules.Caller("team-a", "app", "big"), "m", "chat").limits
    assert big.requests_per_minute == 500  # override lifts base to 1000; sa's 500 is tighter
    assert big.tokens_per_minute == 10_000  # not overridden: base default stays
    small = policies.decide(rules.Caller("team-a", "app", "small"), "m", "chat").limits
    assert small.requests_per_minute == 5


@pytest.mark.parametrize(
    "tenant", ["a\r\nX-Injected: 1", "x" * 64, "tenänt", "", "-leading", "a b", "../etc"]
)
def test_hostile_tenant_names_are_rejected(tenant: str) -> None:
    assert not rules.models.is_valid_tenant(tenant)
    with pytest.raises(ValidationError):
        policy("p", subjects=[{"kind": "Tenant", "name": tenant}])


def test_same_name_twice_is_refused() -> None:
    from sidegate import errors
    from sidegate.policy import bundle

    with pytest.raises(errors.BundleRejected, match="defined twice"):
        bundle.to_bundle([policy("p"), policy("p")])
