"""What `explain` says decided: the deciding policy, every matching rule, the limits' sources.

Callers are named by service account and namespace only (tenant semantics are being changed
on their own). Policies are applied in namespace/name order, so "first" below means that.
"""

from __future__ import annotations

from sidegate.policy import explaining, models, rules
from tests.policies import APP, allow, deny, index, policy

NAMESPACE = [{"kind": "Namespace", "name": "team-a"}]
ACCOUNT = [{"kind": "ServiceAccount", "name": "app"}]


def three_policies() -> rules.PolicyIndex:
    return index(
        policy("a-allow", subjects=NAMESPACE, rules=[allow("gpt-*"), allow("*-mini")]),
        policy("b-deny", subjects=ACCOUNT, rules=[allow("x"), deny("gpt-4o*", "o1")]),
        policy(
            "c-deny",
            subjects=[*ACCOUNT, *NAMESPACE],
            rules=[deny("GPT-4O-MINI")],
            limits={"requestsPerMinute": 7},
        ),
    )


def test_the_first_deny_decides_and_every_match_is_listed() -> None:
    answer = explaining.explain(three_policies(), APP, "gpt-4o-mini", "chat")
    assert answer["decision"] == "denied" and answer["reason"] == rules.DENIED_BY_RULE
    assert answer["decidingPolicy"] == "team-a/b-deny"
    assert answer["applicablePolicies"] == ["team-a/a-allow", "team-a/b-deny", "team-a/c-deny"]
    assert answer["matchingRules"] == [
        {"policy": "team-a/a-allow", "rule": 0, "effect": "Allow", "pattern": "gpt-*"},
        {"policy": "team-a/a-allow", "rule": 1, "effect": "Allow", "pattern": "*-mini"},
        {"policy": "team-a/b-deny", "rule": 1, "effect": "Deny", "pattern": "gpt-4o*"},
        {"policy": "team-a/c-deny", "rule": 0, "effect": "Deny", "pattern": "GPT-4O-MINI"},
    ]
    assert answer["limits"] == {"requestsPerMinute": {"value": 7, "policy": "team-a/c-deny"}}
    assert answer["bundleHash"] == three_policies().hash
    # Without explain the same policy decides, found the fast way.
    fast = three_policies().decide(APP, "gpt-4o-mini", "chat")
    assert (fast.allowed, fast.reason, fast.policy) == (
        False,
        rules.DENIED_BY_RULE,
        "team-a/b-deny",
    )
    assert fast.matches == ()


def test_the_first_allow_decides_when_nothing_denies() -> None:
    policies = three_policies()
    other_account = rules.Caller("team-a", "batch")  # namespace subjects only
    answer = explaining.explain(policies, other_account, "GPT-4o", "chat")
    assert answer["decision"] == "allowed" and answer["decidingPolicy"] == "team-a/a-allow"
    assert answer["applicablePolicies"] == ["team-a/a-allow", "team-a/c-deny"]
    assert answer["matchingRules"] == [
        {"policy": "team-a/a-allow", "rule": 0, "effect": "Allow", "pattern": "gpt-*"}
    ]
    later = index(
        policy("a-none", subjects=NAMESPACE, rules=[allow("claude-*")]),
        policy("b-allow", subjects=ACCOUNT, rules=[deny("o1"), allow("o3", "gpt-*")]),
        policy("c-allow", subjects=ACCOUNT, rules=[allow("*")]),
    )
    for explain in (False, True):
        decision = later.decide(APP, "gpt-4o", "chat", explain=explain)
        assert (decision.allowed, decision.policy) == (True, "team-a/b-allow"), explain
    matches = later.decide(APP, "gpt-4o", "chat", explain=True).matches
    assert [(m.policy, m.rule, m.effect, m.pattern) for m in matches] == [
        ("team-a/b-allow", 1, "Allow", "gpt-*"),
        ("team-a/c-allow", 0, "Allow", "*"),
    ]


def test_no_match_and_no_policy_name_no_deciding_policy() -> None:
    policies = three_policies()
    answer = explaining.explain(policies, APP, "claude-3", "messages")
    assert answer["decision"] == "denied" and answer["reason"] == rules.NO_MATCHING_ALLOW
    assert answer["decidingPolicy"] is None and answer["matchingRules"] == []
    stranger = explaining.explain(policies, rules.Caller("team-b", "app"), "gpt-4o", "chat")
    assert stranger["reason"] == rules.NO_POLICY and stranger["applicablePolicies"] == []
    assert stranger["limits"] == {} and stranger["decidingPolicy"] is None


def test_the_text_form() -> None:
    policies = three_policies()
    denied = explaining.explain(policies, APP, "gpt-4o-mini", "chat")
    assert explaining.as_text(denied) == "\n".join(
        [
            "DENIED: gpt-4o-mini for team-a/app, action chat",
            "  reason: denied_by_rule: a Deny rule matches (a Deny wins over every Allow)",
            "  deciding policy: team-a/b-deny",
            "  applicable policies: team-a/a-allow, team-a/b-deny, team-a/c-deny",
            "  matching rules:",
            "    team-a/a-allow rules[0]: Allow gpt-*",
            "    team-a/a-allow rules[1]: Allow *-mini",
            "    team-a/b-deny rules[1]: Deny gpt-4o*",
            "    team-a/c-deny rules[0]: Deny GPT-4O-MINI",
            "  limits in force (the service account's, over all its tenants):",
            "    requestsPerMinute: 7 (from team-a/c-deny)",
            "  provider storage: Allowed",
        ]
    )
    nobody = explaining.explain(policies, rules.Caller("team-b", "app"), "m", "embeddings")
    assert explaining.as_text(nobody) == "\n".join(
        [
            "DENIED: m for team-b/app, action embeddings",
            "  reason: no_policy_for_caller: no policy applies to this caller (deny by default)",
            "  applicable policies: none",
            "  limits in force: none",
            "  provider storage: Allowed",
        ]
    )


def test_the_text_form_names_the_callers_tenant() -> None:
    answer = explaining.explain(
        three_policies(), rules.Caller("team-b", "app", "acme"), "m", "chat"
    )
    assert explaining.as_text(answer).splitlines()[0] == (
        "DENIED: m for team-b/app (tenant acme), action chat"
    )


def test_a_tenants_sub_budget_and_forbidden_storage_are_shown_with_their_policies() -> None:
    limits = {
        "requestsPerMinute": 100,
        "tenantOverrides": [
            {"tenant": "acme", "requestsPerMinute": 5, "tokensPerMinute": 1000},
            {"tenant": "other", "maxConcurrent": 1},
        ],
    }
    limited = policy("a-limits", rules=[allow("gpt-*")], limits=limits)
    forbidding = policy("b-hipaa", rules=[allow("*")])
    forbidding = forbidding.model_copy(
        update={
            "spec": forbidding.spec.model_copy(
                update={"retention": models.Retention(providerStorage="Forbidden")}
            )
        }
    )
    answer = explaining.explain(
        index(limited, forbidding), rules.Caller("team-a", "app", "acme"), "gpt-4o", "responses"
    )
    assert answer["limits"] == {"requestsPerMinute": {"value": 100, "policy": "team-a/a-limits"}}
    assert answer["tenantLimits"] == {
        "requestsPerMinute": {"value": 5, "policy": "team-a/a-limits"},
        "tokensPerMinute": {"value": 1000, "policy": "team-a/a-limits"},
    }
    assert answer["retention"] == {"providerStorage": "Forbidden", "policy": "team-a/b-hipaa"}
    assert explaining.as_text(answer).splitlines()[-6:] == [
        "  limits in force (the service account's, over all its tenants):",
        "    requestsPerMinute: 100 (from team-a/a-limits)",
        "  tenant acme sub-budget (inside the limits above):",
        "    requestsPerMinute: 5 (from team-a/a-limits)",
        "    tokensPerMinute: 1000 (from team-a/a-limits)",
        "  provider storage: Forbidden (from team-a/b-hipaa): Responses requests go with "
        "store: false; store: true and background: true are refused",
    ]
    # Without a tenant claim, or with one that has no override: no sub-budget line.
    for caller in (APP, rules.Caller("team-a", "app", "nobody")):
        plain = explaining.explain(index(limited), caller, "gpt-4o", "chat")
        assert plain["tenantLimits"] == {}
        assert plain["retention"] == {"providerStorage": "Allowed", "policy": None}
        assert explaining.as_text(plain).splitlines()[-3:] == [
            "  limits in force (the service account's, over all its tenants):",
            "    requestsPerMinute: 100 (from team-a/a-limits)",
            "  provider storage: Allowed",
        ]
