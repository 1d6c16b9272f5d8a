"""Hypothesis: the policy semantics hold for any policy set."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidegate import errors
from sidegate.policy import bundle, models, rules
from sidegate.sidecar import limiting, policies
from sidegate.sidecar.metrics import Metrics
from tests.policies import policy

NAMESPACES = ["team-a", "team-b"]
ACCOUNTS = ["app", "batch"]
TENANTS = ["acme", "globex", "free-tier"]
MODELS = ["gpt-4o", "gpt-4o-mini", "GPT-4O", "claude-3", "text-embedding-3", "llama"]
PATTERNS = ["*", "gpt-*", "gpt-4o", "GPT-4*", "claude-*", "*-mini", "text-?mbedding-*", "nomatch"]

subjects = st.lists(
    st.one_of(
        st.builds(lambda n: {"kind": "ServiceAccount", "name": n}, st.sampled_from(ACCOUNTS)),
        st.just({"kind": "Namespace", "name": "NS"}),
    ),
    max_size=3,
    unique_by=lambda s: (s["kind"], s["name"]),  # a subject twice is refused
)
tenant_lists = st.lists(st.sampled_from(TENANTS), min_size=1, max_size=2, unique=True)
rule = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(["Allow", "Deny"]),
        "models": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
    },
    optional={
        "actions": st.lists(st.sampled_from(list(models.ACTIONS)), min_size=1, max_size=3),
        "tenants": tenant_lists,
    },
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
        made = policy(
            f"p{index}",
            namespace=namespace,
            subjects=chosen,
            rules=draw(st.lists(rule, max_size=4)),
            limits=draw(limits),
        )
        allowed = draw(st.none() | st.lists(st.sampled_from(TENANTS), max_size=2, unique=True))
        if allowed is not None:
            made = with_allowed_tenants(made, allowed)
        found.append(made)
    return found


def with_allowed_tenants(made: models.RBACPolicy, allowed: list[str]) -> models.RBACPolicy:
    return made.model_copy(
        update={"spec": made.spec.model_copy(update={"allowed_tenants": allowed})}
    )


def with_rule(made: models.RBACPolicy, extra: dict[str, Any]) -> models.RBACPolicy:
    rebuilt = policy(
        made.metadata.name,
        namespace=made.metadata.namespace,
        subjects=[s.model_dump(by_alias=True) for s in made.spec.subjects],
        rules=[*(r.model_dump(by_alias=True, exclude_none=True) for r in made.spec.rules), extra],
        limits=made.spec.rate_limits.model_dump(by_alias=True, exclude_none=True)
        if made.spec.rate_limits
        else None,
    )
    if made.spec.allowed_tenants is not None:
        rebuilt = with_allowed_tenants(rebuilt, made.spec.allowed_tenants)
    return rebuilt


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
        changed = with_rule(found[0], deny)
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
    assert (a.allowed, a.reason, a.policy, a.limits, a.tenant_limits) == (
        b.allowed,
        b.reason,
        b.policy,
        b.limits,
        b.tenant_limits,
    )


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


# -- tenants: a claim never grants, never adds budget ------------------------------------

CLAIMS = [*TENANTS, "initech", "free-tierX1", "zz"]
claims = st.none() | st.sampled_from(CLAIMS)


@settings(max_examples=300)
@given(policy_sets(), callers, st.sampled_from(MODELS), st.sampled_from(list(models.ACTIONS)))
def test_a_caller_granted_by_no_policy_gets_nothing_whatever_tenant(
    found: list[models.RBACPolicy], caller: rules.Caller, model: str, action: str
) -> None:
    index = rules.PolicyIndex(bundle.to_bundle(found))
    unclaimed = rules.Caller(caller.namespace, caller.service_account)
    for tenant in CLAIMS:
        claimed = rules.Caller(caller.namespace, caller.service_account, tenant)
        decision = index.decide(claimed, model, action)
        if not index.applicable(unclaimed):
            assert (decision.allowed, decision.reason) == (False, rules.NO_POLICY)
        # Which policies apply never depends on the claim.
        assert [p.key for p in index.applicable(claimed)] == [
            p.key for p in index.applicable(unclaimed)
        ]


@settings(max_examples=200, deadline=None)
@given(policy_sets(), callers, st.lists(claims, min_size=1, max_size=40))
def test_claiming_tenants_never_adds_budget(
    found: list[models.RBACPolicy], caller: rules.Caller, sequence: list[str | None]
) -> None:
    """However a burst of requests spreads over claimed tenants, the service account gets no
    more requests than its own limits admit, and no more than the same burst unclaimed."""
    index = rules.PolicyIndex(bundle.to_bundle(found))
    base = rules.Caller(caller.namespace, caller.service_account)
    aggregate = index.decide(base, "gpt-4o", "chat").limits

    def admitted(tenants: list[str | None]) -> int:
        limiter = limiting.LocalLimiter(max_keys=1000, metrics=Metrics(), clock=lambda: 0.0)

        async def run() -> int:
            count = 0
            for number, tenant in enumerate(tenants):
                claimed = rules.Caller(base.namespace, base.service_account, tenant)
                decision = index.decide(claimed, "gpt-4o", "chat")
                assert decision.limits == aggregate  # the aggregate is the claim's too
                try:
                    await limiter.acquire(
                        limiting.budgets(claimed, decision), 10, f"request-{number}"
                    )
                except errors.RateLimited:
                    continue
                count += 1
            return count

        return asyncio.run(run())

    with_claims = admitted(sequence)
    for ceiling in (aggregate.requests_per_minute, aggregate.max_concurrent):
        if ceiling is not None:
            assert with_claims <= ceiling
    assert with_claims <= admitted([None] * len(sequence))


@settings(max_examples=300)
@given(policy_sets(), questions, st.sampled_from(CLAIMS))
def test_a_claim_outside_allowed_tenants_is_refused(
    found: list[models.RBACPolicy], question: Any, tenant: str
) -> None:
    caller, model, action = question
    claimed = rules.Caller(caller.namespace, caller.service_account, tenant)
    index = rules.PolicyIndex(bundle.to_bundle(found))
    listing = [
        p
        for p in found
        if p.spec.allowed_tenants is not None
        and tenant not in p.spec.allowed_tenants
        and f"{p.metadata.namespace}/{p.metadata.name}"
        in {q.key for q in index.applicable(claimed)}
    ]
    decision = index.decide(claimed, model, action)
    if listing:
        assert (decision.allowed, decision.reason) == (False, rules.TENANT_NOT_ALLOWED)
    else:
        assert decision.reason != rules.TENANT_NOT_ALLOWED


@settings(max_examples=300)
@given(policy_sets(), questions, st.sampled_from(TENANTS), st.data())
def test_a_tenant_deny_denies_that_tenant(
    found: list[models.RBACPolicy], question: Any, tenant: str, data: st.DataObject
) -> None:
    caller, model, action = question
    claimed = rules.Caller(caller.namespace, caller.service_account, tenant)
    keys = {p.key for p in rules.PolicyIndex(bundle.to_bundle(found)).applicable(claimed)}
    mine = [i for i, p in enumerate(found) if f"{p.metadata.namespace}/{p.metadata.name}" in keys]
    if not mine:
        return  # nothing applies: denied anyway (the property above)
    target = data.draw(st.sampled_from(mine))
    deny = {"effect": "Deny", "models": ["*"], "tenants": [tenant]}
    changed = [with_rule(p, deny) if i == target else p for i, p in enumerate(found)]
    index = rules.PolicyIndex(bundle.to_bundle(changed))
    assert not index.decide(claimed, model, action).allowed
    other = next(t for t in TENANTS if t != tenant)
    unrelated = rules.Caller(caller.namespace, caller.service_account, other)
    before = rules.PolicyIndex(bundle.to_bundle(found)).decide(unrelated, model, action)
    assert index.decide(unrelated, model, action).allowed == before.allowed  # others untouched
