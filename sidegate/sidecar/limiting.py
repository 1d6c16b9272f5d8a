"""Rate limits: requests and tokens per minute, and requests in flight, per caller.

Both backends implement one algorithm, a token bucket per caller and dimension: capacity
is the per-minute limit, refilled continuously at limit/60 a second. A caller may therefore
burst up to one minute's worth at once, and over any window of T seconds is admitted at most
``limit * (1 + T/60)`` (docs/policies.md). Tokens are reserved before the call (an estimate)
and settled after it with the usage the provider reported; the bucket may go into debt
when the answer used more than reserved.

``LocalLimiter`` (here) keeps buckets in this process (bounded, idle callers forgotten);
``redis_limiting.RedisLimiter`` keeps them in Redis, updated by Lua scripts so each
check-and-take is atomic across every replica.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sidegate import errors
from sidegate.policy import rules
from sidegate.sidecar.metrics import Metrics

_WINDOW = 60.0  # seconds: limits are per minute


class LimiterUnavailable(errors.RequestError):
    status = 503
    error_type = "api_error"
    code = "rate_limiter_unavailable"


@dataclasses.dataclass(slots=True)
class Reservation:
    key: str
    limits: rules.EffectiveLimits
    tokens: int  # reserved
    member: str  # the concurrency slot's id
    holds_slot: bool
    tracked: bool = True  # False when a failed-open backend admitted without counting


def _reset(seconds: float) -> str:
    return f"{max(seconds, 0):.3f}s"


def rate_limited(
    dimension: str,
    limits: rules.EffectiveLimits,
    level: float,
    retry_after: float,
    tokens_level: float | None,
) -> errors.RateLimited:
    """The 429 with Retry-After and OpenAI's x-ratelimit-* headers."""
    headers: dict[str, str] = {
        "retry-after": str(max(1, math.ceil(retry_after))),
        "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
    }
    if limits.requests_per_minute:
        rpm = limits.requests_per_minute
        remaining = level if dimension == "requests" else max(level, 0)
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(0, math.floor(remaining)))
        headers["x-ratelimit-reset-requests"] = _reset((rpm - remaining) * _WINDOW / rpm)
    if limits.tokens_per_minute and tokens_level is not None:
        tpm = limits.tokens_per_minute
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tokens_level)))
        headers["x-ratelimit-reset-tokens"] = _reset((tpm - tokens_level) * _WINDOW / tpm)
    what = {
        "requests": "requests per minute",
        "tokens": "tokens per minute",
        "concurrency": "concurrent requests",
    }
    return errors.RateLimited(
        f"rate limit reached for {what[dimension]}; retry after {headers['retry-after']} s",
        code=f"rate_limit_{dimension}",
        headers=headers,
    )


class Limiter(Protocol):
    # Files the limiter's settings live in, re-read by reload() when they change.
    files: tuple[Path, ...]

    def reload(self) -> None: ...

    async def acquire(
        self, key: str, limits: rules.EffectiveLimits, tokens: int, member: str
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, used_tokens: int | None) -> None: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(slots=True)
class _Bucket:
    level: float
    updated: float

    def refill(self, capacity: int, now: float) -> float:
        self.level = min(capacity, self.level + (now - self.updated) * capacity / _WINDOW)
        self.updated = now
        return self.level


@dataclasses.dataclass(slots=True)
class _CallerState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    in_flight: int = 0
    seen: float = 0.0


class LocalLimiter:
    files: tuple[Path, ...] = ()

    def reload(self) -> None:
        return None

    def __init__(
        self, *, max_keys: int, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._states: OrderedDict[str, _CallerState] = OrderedDict()
        self._max_keys = max_keys
        self._metrics = metrics
        self._clock = clock

    def _state(self, key: str, now: float) -> _CallerState:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self._max_keys:
                self._forget_idle(now)
            state = self._states[key] = _CallerState(seen=now)
        else:
            self._states.move_to_end(key)
        state.seen = now
        return state

    def _forget_idle(self, now: float) -> None:
        # A caller idle for a whole window has full buckets: forgetting it changes nothing.
        # Oldest first; if every caller is busy, the oldest idle-less ones go anyway.
        for key in list(self._states):
            state = self._states[key]
            if now - state.seen < _WINDOW or state.in_flight:
                break
            del self._states[key]
        while len(self._states) >= self._max_keys:
            self._states.popitem(last=False)

    async def acquire(
        self, key: str, limits: rules.EffectiveLimits, tokens: int, member: str
    ) -> Reservation:
        now = self._clock()
        state = self._state(key, now)
        rpm, tpm, most = limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent
        level = tokens_level = 0.0
        if rpm:
            state.requests = state.requests or _Bucket(rpm, now)
            level = state.requests.refill(rpm, now)
        if tpm:
            state.tokens = state.tokens or _Bucket(tpm, now)
            tokens_level = state.tokens.refill(tpm, now)
        cost = min(tokens, tpm) if tpm else 0
        refusal: errors.RateLimited | None = None
        if rpm and level < 1:
            refusal = rate_limited(
                "requests",
                limits,
                level,
                (1 - level) * _WINDOW / rpm,
                tokens_level if tpm else None,
            )
        elif tpm and tokens_level < cost:
            refusal = rate_limited(
                "tokens", limits, level, (cost - tokens_level) * _WINDOW / tpm, tokens_level
            )
        elif most and state.in_flight >= most:
            refusal = rate_limited("concurrency", limits, level, 1.0, tokens_level if tpm else None)
        if refusal is not None:
            self._metrics.rate_limited.labels(str(refusal.code).removeprefix("rate_limit_")).inc()
            raise refusal
        if state.requests is not None and rpm:
            state.requests.level -= 1
        if state.tokens is not None and tpm:
            state.tokens.level -= cost
        if most:
            state.in_flight += 1
        return Reservation(key, limits, cost, member, holds_slot=bool(most))

    async def settle(self, reservation: Reservation, used_tokens: int | None) -> None:
        state = self._states.get(reservation.key)
        if state is None:
            return
        if reservation.holds_slot:
            state.in_flight = max(0, state.in_flight - 1)
        tpm = reservation.limits.tokens_per_minute
        if used_tokens is not None and tpm and state.tokens is not None:
            state.tokens.refill(tpm, self._clock())
            state.tokens.level = min(tpm, state.tokens.level + reservation.tokens - used_tokens)

    async def close(self) -> None:
        return None
