"""The in-process rate limiter on a clock the test moves: the token buckets' exact levels, the
429's headers, what is charged to which budget, settling, and the bound on callers kept."""

from __future__ import annotations

import pytest

from sidegate import errors
from sidegate.policy import rules
from sidegate.sidecar import limiting
from sidegate.sidecar.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(
    rpm: int | None = None, tpm: int | None = None, most: int | None = None
) -> rules.EffectiveLimits:
    return rules.EffectiveLimits(rpm, tpm, most)


class Harness:
    def __init__(self, max_keys: int = 100) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.limiter = limiting.LocalLimiter(
            max_keys=max_keys, metrics=self.metrics, clock=self.clock
        )

    async def take(self, budgets: list[limiting.Budget], tokens: int = 0) -> limiting.Reservation:
        return await self.limiter.acquire(budgets, tokens, "member")

    async def refusal(self, budgets: list[limiting.Budget], tokens: int = 0) -> errors.RateLimited:
        with pytest.raises(errors.RateLimited) as caught:
            await self.take(budgets, tokens)
        return caught.value

    def refused(self, dimension: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidegate_rate_limited_total", {"dimension": dimension}
        )
        return value or 0.0


def decision(own: rules.EffectiveLimits, tenant: rules.EffectiveLimits) -> rules.Decision:
    return rules.Decision(True, "allowed", "ns/p", own, tenant_limits=tenant)


def test_a_request_is_charged_to_its_account_and_its_claimed_tenant() -> None:
    own, sub = limits(rpm=10), limits(tpm=100)
    caller = rules.Caller("team-a", "app", "acme")
    assert limiting.budgets(caller, decision(own, sub)) == (
        limiting.Budget("team-a/app", own),
        limiting.Budget("team-a/app/tenant/acme", sub),
    )
    assert limiting.budgets(caller, decision(own, rules.NO_LIMITS)) == (
        limiting.Budget("team-a/app", own),
    )
    assert limiting.budgets(caller, decision(rules.NO_LIMITS, sub)) == (
        limiting.Budget("team-a/app/tenant/acme", sub),
    )
    unclaimed = rules.Caller("team-a", "app")
    assert limiting.budgets(unclaimed, decision(own, sub)) == (limiting.Budget("team-a/app", own),)
    assert limiting.budgets(unclaimed, decision(rules.NO_LIMITS, sub)) == ()


def test_a_429_carries_retry_after_and_openai_s_rate_limit_headers() -> None:
    refusal = limiting.rate_limited("requests", limits(60, 1000), 0.25, 0.75, 500.5)
    assert refusal.message == "rate limit reached for requests per minute; retry after 1 s"
    assert refusal.code == "rate_limit_requests" and refusal.status == 429
    assert refusal.headers == {
        "retry-after": "1",
        "retry-after-ms": "750",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59.750s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "29.970s",
    }


def test_retry_after_rounds_up_to_at_least_one() -> None:
    tokens = limiting.rate_limited("tokens", limits(tpm=100), 0.0, 2.0001, 40.0)
    assert tokens.message == "rate limit reached for tokens per minute; retry after 3 s"
    assert tokens.code == "rate_limit_tokens"
    assert tokens.headers == {
        "retry-after": "3",
        "retry-after-ms": "2001",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "36.000s",
    }
    busy = limiting.rate_limited("concurrency", limits(most=2), 0.0, 0.0, None)
    assert busy.message == "rate limit reached for concurrent requests; retry after 1 s"
    assert busy.headers == {"retry-after": "1", "retry-after-ms": "1"}


def test_a_bucket_in_debt_reports_nothing_remaining() -> None:
    # a tokens refusal while the requests level is below zero (a Redis bucket can be):
    # nothing remains, and the reset counts from zero
    tokens = limiting.rate_limited("tokens", limits(60, 100), -0.5, 1.0, -20.0)
    assert tokens.headers["x-ratelimit-remaining-requests"] == "0"
    assert tokens.headers["x-ratelimit-reset-requests"] == "60.000s"
    assert tokens.headers["x-ratelimit-remaining-tokens"] == "0"
    assert tokens.headers["x-ratelimit-reset-tokens"] == "72.000s"
    # the requests dimension reports its own level as it is
    requests = limiting.rate_limited("requests", limits(60), -0.5, 1.0, None)
    assert requests.headers["x-ratelimit-reset-requests"] == "60.500s"
    assert limiting._reset(-3.0) == "0.000s"


async def test_requests_per_minute_refill_continuously() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(rpm=2))]
    await h.take(budget)
    await h.take(budget)
    refusal = await h.refusal(budget)
    assert refusal.code == "rate_limit_requests"
    assert refusal.headers == {
        "retry-after": "30",
        "retry-after-ms": "30000",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "60.000s",
    }
    assert h.refused("requests") == 1
    h.clock.now += 15
    assert (await h.refusal(budget)).headers["retry-after-ms"] == "15000"
    h.clock.now += 15
    await h.take(budget)
    h.clock.now += 600  # a long idle refills to the limit, no further
    await h.take(budget)
    await h.take(budget)
    await h.refusal(budget)
    assert h.refused("requests") == 3


async def test_tokens_per_minute_are_reserved_capped_and_refunded() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(tpm=100))]
    first = await h.take(budget, 60)
    assert first.tokens == (60,) and first.tracked and first.member == "member"
    refusal = await h.refusal(budget, 50)
    assert refusal.code == "rate_limit_tokens"
    assert refusal.headers["retry-after-ms"] == "6000"
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "40"
    assert h.refused("tokens") == 1
    await h.limiter.settle(first, 10)  # used 10 of the 60 reserved: 50 back
    second = await h.take(budget, 90)
    assert second.tokens == (90,)
    await h.limiter.settle(second, None)  # no usage reported: the estimate stands
    h.clock.now += 60
    big = await h.take(budget, 500)  # more than a minute's worth: charged one minute's worth
    assert big.tokens == (100,)
    await h.limiter.settle(big, 130)  # used more than reserved: the bucket goes into debt
    h.clock.now += 6
    refusal = await h.refusal(budget, 1)
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "0"
    # -30 after the settling, -20 six seconds later; 21 more to reach 1 at 100/60 a second
    assert refusal.headers["retry-after-ms"] == "12600"


async def test_a_refund_never_fills_past_the_limit() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(tpm=100))]
    reservation = await h.take(budget, 80)
    h.clock.now += 60
    await h.limiter.settle(reservation, 0)
    await h.take(budget, 100)
    assert (await h.refusal(budget, 1)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_concurrent_requests_are_counted_until_settled() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(most=1))]
    first = await h.take(budget)
    refusal = await h.refusal(budget)
    assert refusal.code == "rate_limit_concurrency" and refusal.headers["retry-after"] == "1"
    assert h.refused("concurrency") == 1
    await h.limiter.settle(first, None)
    second = await h.take(budget)
    await h.limiter.settle(second, None)
    await h.limiter.settle(second, None)  # twice: never below zero
    await h.take(budget)
    await h.refusal(budget)


async def test_a_refusal_by_any_budget_takes_nothing_from_the_others() -> None:
    h = Harness()
    own = limiting.Budget("ns/sa", limits(rpm=1, tpm=100, most=5))
    tenant = limiting.Budget("ns/sa/tenant/t", limits(tpm=10))
    await h.take([tenant], 8)
    refusal = await h.refusal([own, tenant], 5)
    assert refusal.code == "rate_limit_tokens"
    assert refusal.headers["x-ratelimit-limit-tokens"] == "10"
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "2"
    reservation = await h.take([own, tenant], 2)  # the account's request and tokens are intact
    assert reservation.tokens == (2, 2)
    assert reservation.budgets == (own, tenant)
    refusal = await h.refusal([own], 5)
    assert refusal.code == "rate_limit_requests"
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "98"


async def test_a_budget_without_a_dimension_never_refuses_on_it() -> None:
    h = Harness()
    only_tokens = [limiting.Budget("a", limits(tpm=1000))]
    for _ in range(50):
        await h.take(only_tokens, 1)
    only_requests = [limiting.Budget("b", limits(rpm=100))]
    assert (await h.take(only_requests, 10_000)).tokens == (0,)
    assert await h.take([], 5) == limiting.Reservation((), (), "member")


async def test_settling_a_forgotten_caller_is_harmless() -> None:
    h = Harness(max_keys=1)
    a = await h.take([limiting.Budget("a", limits(tpm=100, most=1))], 10)
    await h.take([limiting.Budget("b", limits(tpm=100))], 10)
    await h.limiter.settle(a, 0)
    assert list(h.limiter._states) == ["b"]


async def test_idle_callers_are_forgotten_first_and_the_bound_always_holds() -> None:
    h = Harness(max_keys=2)
    free = limits(rpm=1000)
    await h.take([limiting.Budget("a", free)])
    await h.take([limiting.Budget("b", free)])
    h.clock.now += 60  # both idle for a whole window: both go, not just the oldest
    await h.take([limiting.Budget("c", free)])
    assert list(h.limiter._states) == ["c"]
    h.clock.now += 1
    await h.take([limiting.Budget("d", free)])
    assert list(h.limiter._states) == ["c", "d"]
    h.clock.now += 59.5  # c idle for 60.5 s, d for 59.5 s: only c goes
    await h.take([limiting.Budget("e", free)])
    assert list(h.limiter._states) == ["d", "e"]


async def test_busy_callers_are_not_forgotten_as_idle_but_the_bound_wins() -> None:
    h = Harness(max_keys=2)
    busy = limits(most=10)
    await h.take([limiting.Budget("a", busy)])
    await h.take([limiting.Budget("b", busy)])
    h.clock.now += 120
    await h.take([limiting.Budget("a", busy)])  # a is used again: b is now the oldest
    await h.take([limiting.Budget("c", busy)])
    assert list(h.limiter._states) == ["a", "c"]
    await h.take([limiting.Budget("a", busy)])
    assert list(h.limiter._states) == ["c", "a"]


async def test_the_local_limiter_has_nothing_to_reload_or_close() -> None:
    h = Harness()
    assert h.limiter.files == ()
    assert h.limiter.reload() is None
    assert await h.limiter.close() is None
    unavailable = limiting.LimiterUnavailable("down")
    assert (unavailable.status, unavailable.error_type, unavailable.code) == (
        503,
        "api_error",
        "rate_limiter_unavailable",
    )


def test_a_token_level_without_a_token_limit_adds_no_token_headers() -> None:
    refusal = limiting.rate_limited("requests", limits(rpm=60), 0.0, 1.0, 5.0)
    assert sorted(refusal.headers) == [
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]


async def test_concurrency_counts_every_request_in_flight() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(most=2))]
    first = await h.take(budget)
    await h.take(budget)
    await h.refusal(budget)
    await h.limiter.settle(first, None)  # one slot back, not two
    await h.take(budget)
    await h.refusal(budget)


async def test_a_dimension_the_limits_drop_is_not_charged_meanwhile() -> None:
    """The same caller under changing policies: while a limit is gone, its bucket is left
    alone, so when it comes back the caller finds what it had (refilled), not a debt."""
    h = Harness()
    with_limits = [limiting.Budget("ns/sa", limits(rpm=1, tpm=10))]
    without = [limiting.Budget("ns/sa", limits(most=1000))]
    await h.take(with_limits, 10)
    for _ in range(5):
        await h.take(without, 10)
    h.clock.now += 60
    await h.take(with_limits, 10)


async def test_settling_goes_on_past_a_forgotten_budget() -> None:
    h = Harness(max_keys=2)
    one = limits(most=1)
    reservation = await h.take([limiting.Budget("a", one), limiting.Budget("b", one)])
    await h.take([limiting.Budget("c", limits(rpm=100))])  # both busy: the oldest, a, goes
    assert list(h.limiter._states) == ["b", "c"]
    await h.limiter.settle(reservation, None)
    await h.take([limiting.Budget("b", one)])  # b's slot was given back


async def test_every_refusal_reports_every_limited_dimension() -> None:
    h = Harness()
    budget = [limiting.Budget("ns/sa", limits(rpm=10, tpm=100, most=1))]
    await h.take(budget, 60)
    busy = await h.refusal(budget, 10)
    assert busy.code == "rate_limit_concurrency"
    expected = {
        "retry-after": "1",
        "retry-after-ms": "1000",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6.000s",
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "36.000s",
    }
    assert busy.headers == expected
    tokens = await h.refusal(budget, 50)  # tokens are checked before concurrency
    assert tokens.code == "rate_limit_tokens"
    assert tokens.headers == {**expected, "retry-after": "6", "retry-after-ms": "6000"}
