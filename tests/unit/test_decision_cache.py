"""DecisionCache answers exactly as its index would, for as long as its TTL says, in bounded
memory. Its expectations are the index's own answers, so they hold whatever the rules say."""

from __future__ import annotations

import itertools

from sidegate.policy import caching, rules
from tests.policies import allow, deny, index, policy


def varied_index() -> rules.PolicyIndex:
    """Every part of a question changes the answer: namespace, account, tenant, model, action."""
    return index(
        policy(
            "a",
            subjects=[{"kind": "ServiceAccount", "name": "app"}],
            rules=[allow("gpt-*", actions=["chat"]), deny("gpt-4o")],
            limits={
                "requestsPerMinute": 10,
                "tenantOverrides": [{"tenant": "big", "requestsPerMinute": 99}],
            },
        ),
        policy("b", namespace="team-b", rules=[allow("*")]),
    )


def test_every_part_of_the_question_is_part_of_the_key() -> None:
    cache = caching.DecisionCache(varied_index(), ttl=60, clock=lambda: 0.0)
    callers = [
        rules.Caller(ns, sa, tenant)
        for ns, sa, tenant in itertools.product(
            ("team-a", "team-b"), ("app", "batch"), (None, "big")
        )
    ]
    questions = list(
        itertools.product(callers, ("gpt-4", "gpt-4o", "GPT-4"), ("chat", "embeddings"))
    )
    answers = {cache.index.decide(*q) for q in questions}
    assert len(answers) >= 5  # the questions really do get different answers
    for _ in range(2):  # the second round is served from the cache
        assert [cache.decide(*q) for q in questions] == [cache.index.decide(*q) for q in questions]
    assert len(cache) == len(questions)


def test_an_entry_lives_for_ttl_seconds_exactly() -> None:
    now = [100.0]
    cache = caching.DecisionCache(varied_index(), ttl=10, clock=lambda: now[0])
    caller = rules.Caller("team-a", "app")
    first = cache.decide(caller, "gpt-4", "chat")
    now[0] = 109.999
    assert cache.decide(caller, "gpt-4", "chat") is first
    now[0] = 110.0  # expired at now + ttl
    fresh = cache.decide(caller, "gpt-4", "chat")
    assert fresh is not first and fresh == first


def test_a_zero_ttl_caches_nothing() -> None:
    cache = caching.DecisionCache(varied_index(), ttl=0, clock=lambda: 0.0)
    caller = rules.Caller("team-a", "app")
    first = cache.decide(caller, "gpt-4", "chat")
    assert cache.decide(caller, "gpt-4", "chat") is not first and len(cache) == 0
    short = caching.DecisionCache(varied_index(), ttl=0.5, clock=lambda: 0.0)
    assert short.decide(caller, "gpt-4", "chat") is short.decide(caller, "gpt-4", "chat")


def test_a_full_cache_is_emptied_before_the_next_entry() -> None:
    cache = caching.DecisionCache(varied_index(), ttl=60, clock=lambda: 0.0, max_entries=10)
    caller = rules.Caller("team-a", "app")
    for i in range(10):
        cache.decide(caller, f"model-{i}", "chat")
    assert len(cache) == 10
    cache.decide(caller, "model-10", "chat")
    assert len(cache) == 1
    assert caching.DecisionCache(varied_index(), ttl=1, clock=lambda: 0.0)._max_entries == 65_536


def test_dismantle_empties_the_cache_and_its_index() -> None:
    cache = caching.DecisionCache(varied_index(), ttl=60, clock=lambda: 0.0)
    caller = rules.Caller("team-a", "app")
    assert cache.decide(caller, "gpt-4", "chat").allowed
    cache.dismantle()
    assert len(cache) == 0
    assert cache.index.decide(caller, "gpt-4", "chat").reason == rules.NO_POLICY
