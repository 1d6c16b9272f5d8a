"""PolicyIndex bookkeeping that decisions and explain rely on: which policies apply and in
what order, what a decision carries on every path, the index's size and bundle hash.
(Subjects here are service accounts and namespaces; tenants are tested with their rules.)"""

from __future__ import annotations

from sidegate.policy import bundle, explaining, rules
from tests.policies import APP, allow, deny, policy

NAMESPACE = [{"kind": "Namespace", "name": "team-a"}]
ACCOUNT = [{"kind": "ServiceAccount", "name": "app"}]


def test_size_and_hash_and_building_from_a_stream_of_policies() -> None:
    compiled = bundle.to_bundle(
        [policy("a", rules=[allow("x")]), policy("b", subjects=NAMESPACE, rules=[deny("y")])]
    )
    whole = rules.PolicyIndex(compiled)
    streamed = rules.PolicyIndex.from_policies(compiled.hash, iter(compiled.policies))
    for index in (whole, streamed):
        assert (index.size, index.hash) == (2, compiled.hash)
        assert explaining.explain(index, APP, "x", "chat")["bundleHash"] == compiled.hash
        assert [index.decide(APP, m, "chat").reason for m in "xyz"] == [
            rules.ALLOWED,
            rules.DENIED_BY_RULE,
            rules.NO_MATCHING_ALLOW,
        ]
    assert rules.PolicyIndex(bundle.empty()).size == 0


def test_policies_found_through_different_subjects_are_taken_in_name_order() -> None:
    # "b" applies through the caller's account, "a" through its namespace: "a" comes first.
    both = rules.PolicyIndex(
        bundle.to_bundle(
            [
                policy("a", subjects=NAMESPACE, rules=[deny("m")]),
                policy("b", subjects=ACCOUNT, rules=[deny("m")]),
            ]
        )
    )
    assert both.decide(APP, "m", "chat").policy == "team-a/a"
    assert [p.key for p in both.applicable(APP)] == ["team-a/a", "team-a/b"]
    # One policy naming the caller twice (account and namespace) applies once.
    twice = rules.PolicyIndex(
        bundle.to_bundle([policy("c", subjects=[*ACCOUNT, *NAMESPACE], rules=[allow("m")])])
    )
    assert [p.key for p in twice.applicable(APP)] == ["team-a/c"]
    assert len(twice.decide(APP, "m", "chat", explain=True).matches) == 1


def test_every_decision_path_gives_a_bool_a_reason_and_the_limits() -> None:
    index = rules.PolicyIndex(
        bundle.to_bundle(
            [
                policy("a", rules=[allow("ok", "no")], limits={"maxConcurrent": 4}),
                policy("b", subjects=NAMESPACE, rules=[deny("no")], limits={"maxConcurrent": 4}),
            ]
        )
    )
    limits = rules.EffectiveLimits(max_concurrent=4, sources=(("max_concurrent", "team-a/a"),))
    for explain in (False, True):
        cases = {
            "ok": (True, rules.ALLOWED, "team-a/a"),
            "no": (False, rules.DENIED_BY_RULE, "team-a/b"),
            "other": (False, rules.NO_MATCHING_ALLOW, None),
        }
        for model, (allowed, reason, deciding) in cases.items():
            decision = index.decide(APP, model, "chat", explain=explain)
            assert decision.allowed is allowed, (model, explain)
            assert (decision.reason, decision.policy) == (reason, deciding), (model, explain)
            # an equal limit in two policies is credited to the first by name
            assert decision.limits == limits, (model, explain)
        nobody = index.decide(rules.Caller("team-b", "app"), "ok", "chat", explain=explain)
        assert nobody.allowed is False and nobody.reason == rules.NO_POLICY
        assert nobody.limits == rules.NO_LIMITS and nobody.policy is None
