"""Hypothesis: the policy semantics hold for any policy set."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidegate.policy import bundle, models, rules
from sidegate.sidecar import policies
from sidegate.sidecar.metrics import Metrics
from tests.policies import policy

NAMESPACES = ["team-a", "team-b"]
ACCOUNTS = ["app", "batch"]
TENANTS = ["acme", "globex"]
MODELS = ["gpt-4o", "gpt-4o-mini", "GPT-4O", "claude-3", "text-embedding-3", "llama"]
PATTERNS = ["*", "gpt-*", "gpt-4o", "GPT-4*", "claude-*", "*-mini", "text-?mbedding-*", "nomatch"]

subjects = st.lists(
    st.one_of(
        st.builds(lambda n: {"kind": "ServiceAccount", "name": n}, st.sampled_from(ACCOUNTS)),
        st.just({"kind": "Namespace", "name": "NS"}),
        st.builds(lambda n: {"kind": "Tenant", "name": n}, st.sampled_from(TENANTS)),
    ),
    max_size=3,
)
rule = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(["Allow", "Deny"]),
        "models": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    },
    optional={"actions": st.lists(st.sampled_from(list(models.ACTIONS)), min_size=1, max_size=3)},
)
limits = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "requestsPerMinute": st.integers(1, 1000),
        "tokensPerMinute": st.integers(1, 10**6),
        "maxConcurrent": st.integers(1, 50),
        "tenantOverrides": st.lists(
            st.builds(
                lambda t, r: {"tenant": t, "requestsPerMinute": r},
                st.sampled_from(TENANTS),
                st.integers(1, 1000),
            ),
            max_size=2,
            unique_by=lambda o: o["tenant"],
        ),
    },
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[models.RBACPolicy]:
    count = draw(st.integers(0, 6))
    found = []
    for index in range(count):
        namespace = draw(st.sampled_from(NAMESPACES))
        chosen = [
            {**s, "name": namespace} if s["kind"] == "Namespace" else s for s in draw(subjects)
        ]
        found.append(
            policy(
                f"p{index}",
                namespace=namespace,
                subjects=chosen,
                rules=draw(st.lists(rule, max_size=4)),
                limits=draw(limits),
            )
        )
    return found


callers = st.builds(
    rules.Caller,
    st.sampled_from(NAMESPACES),
    st.sampled_from(ACCOUNTS),
    st.none() | st.sampled_from(TENANTS),
)
questions = st.tuples(callers, st.sampled_from(MODELS), st.sampled_from(list(models.ACTIONS)))


def decide(
    found: list[models.RBACPolicy], question: tuple[rules.Caller, str, str]
) -> rules.Decision:
    return rules.PolicyIndex(bundle.to_bundle(found)).decide(*question)


@settings(max_examples=300)
@given(policy_sets(), questions, rule, st.sampled_from(NAMESPACES), subjects)
def test_adding_a_deny_rule_never_grants(
    found: list[models.RBACPolicy],
    question: Any,
    extra: dict[str, Any],
    namespace: str,
    who: list[dict[str, Any]],
) -> None:
    before = decide(found, question)
    deny = {**extra, "effect": "Deny"}
    who = [{**s, "name": namespace} if s["kind"] == "Namespace" else s for s in who]
    after_new_policy = decide(
        [*found, policy("extra-deny", namespace=namespace, subjects=who, rules=[deny])], question
    )
    assert not (after_new_policy.allowed and not before.allowed)
    if found:  # the deny added to an existing policy instead
        first = found[0]
        changed = policy(
            first.metadata.name,
            namespace=first.metadata.namespace,
            subjects=[s.model_dump(by_alias=True) for s in first.spec.subjects],
            rules=[*(r.model_dump(by_alias=True) for r in first.spec.rules), deny],
        )
        after_same_policy = decide([changed, *found[1:]], question)
        assert not (after_same_policy.allowed and not before.allowed)


@settings(max_examples=300)
@given(policy_sets(), questions, st.randoms(use_true_random=False))
def test_order_of_policies_never_changes_a_decision(
    found: list[models.RBACPolicy], question: Any, shuffler: Any
) -> None:
    shuffled = list(found)
    shuffler.shuffle(shuffled)
    a, b = decide(found, question), decide(shuffled, question)
    assert (a.allowed, a.reason, a.policy, a.limits) == (b.allowed, b.reason, b.policy, b.limits)


@settings(max_examples=100, deadline=None)
@given(policy_sets(), policy_sets(), st.lists(questions, min_size=1, max_size=5))
def test_no_cached_decision_outlives_its_bundle(
    first: list[models.RBACPolicy], second: list[models.RBACPolicy], asked: list[Any]
) -> None:
    sources = iter([first, second])

    def read() -> policies.Loaded:
        return policies.Loaded(rules.PolicyIndex(bundle.to_bundle(next(sources))))

    holder = policies.PolicyHolder(
        read, watch_directory=None, cache_ttl=3600, metrics=Metrics(), clock=lambda: 0.0
    )  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await holder.reload()
        for question in asked:  # fill the cache under the first bundle
            holder.decide(*question)
        assert await holder.reload()
        fresh = rules.PolicyIndex(bundle.to_bundle(second))
        for question in asked:
            assert holder.decide(*question) == fresh.decide(*question)

    asyncio.run(scenario())
