"""Rate limits: requests and tokens per minute, and requests in flight, per caller.

Both backends implement one algorithm, a token bucket per caller and dimension: capacity
is the per-minute limit, refilled continuously at limit/60 a second. A caller may therefore
burst up to one minute's worth at once, and over any window of T seconds is admitted at most
``limit * (1 + T/60)`` (docs/policies.md). Tokens are reserved before the call (an estimate)
and settled after it with the usage the provider reported; the bucket may go into debt
when the answer used more than reserved.

``LocalLimiter`` keeps buckets in this process (bounded, idle callers forgotten);
``RedisLimiter`` keeps them in Redis, updated by Lua scripts so each check-and-take is
atomic across every replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from sidegate import errors
from sidegate.policy import rules
from sidegate.sidecar import credentials
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

_WINDOW = 60.0  # seconds: limits are per minute
# A concurrency slot whose holder vanished (a crashed replica) frees itself after this.
_LEASE_SECONDS = 900.0


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


# KEYS: requests bucket, tokens bucket, concurrency set.
# ARGV: rpm, tpm, max concurrent, token cost, member, lease seconds. 0 means no limit.
# Returns {admitted 0/1, dimension, requests level, tokens level, retry after} (as strings:
# Lua numbers would reach Python truncated to integers).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, member, lease = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local l, u = tonumber(v[1]), tonumber(v[2])
  if l == nil then return cap end
  return math.min(cap, l + math.max(0, now - u) * cap / 60)
end
local rl, tl = 0, 0
if rpm > 0 then rl = level(KEYS[1], rpm) end
if tpm > 0 then tl = level(KEYS[2], tpm); cost = math.min(cost, tpm) else cost = 0 end
if rpm > 0 and rl < 1 then
  return {0, 'requests', tostring(rl), tostring(tl), tostring((1 - rl) * 60 / rpm)}
end
if tpm > 0 and tl < cost then
  return {0, 'tokens', tostring(rl), tostring(tl), tostring((cost - tl) * 60 / tpm)}
end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - lease)
  if redis.call('ZCARD', KEYS[3]) >= most then
    return {0, 'concurrency', tostring(rl), tostring(tl), '1'}
  end
  redis.call('ZADD', KEYS[3], now, member)
  redis.call('EXPIRE', KEYS[3], math.ceil(lease))
end
if rpm > 0 then
  rl = rl - 1
  redis.call('HSET', KEYS[1], 'l', tostring(rl), 't', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  tl = tl - cost
  redis.call('HSET', KEYS[2], 'l', tostring(tl), 't', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
return {1, '', tostring(rl), tostring(tl), '0'}
"""

# KEYS: tokens bucket, concurrency set. ARGV: tpm, refund (may be negative), member.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, refund = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
if tpm > 0 and refund ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'l', 't')
  local l, u = tonumber(v[1]), tonumber(v[2])
  if l ~= nil then
    l = math.min(tpm, l + math.max(0, now - u) * tpm / 60 + refund)
    redis.call('HSET', KEYS[1], 'l', tostring(l), 't', tostring(now))
    redis.call('EXPIRE', KEYS[1], 120)
  end
end
return 1
"""


class RedisLimiter:
    """Global limits through Redis; the URL and password are re-read when their files change."""

    def __init__(
        self,
        *,
        url_file: Path,
        password_file: Path | None,
        timeout: float,
        key_prefix: str,
        fail_mode: str,
        metrics: Metrics,
    ) -> None:
        self.url_file = url_file
        self.password_file = password_file
        self._timeout = timeout
        self._prefix = key_prefix
        self._fail_open = fail_mode == "open"
        self._metrics = metrics
        self._client: aioredis.Redis | None = None
        self._acquire_script: object = None
        self._settle_script: object = None
        self._last_error_log = 0.0
        self._connection: tuple[str, str | None] | None = None

    def reload(self) -> None:
        """Connect with the URL and password in the files; keep the old client if they are bad."""
        try:
            url = credentials.read_key(self.url_file).reveal()
            password = (
                credentials.read_key(self.password_file).reveal() if self.password_file else None
            )
        except errors.CredentialRejected as exc:
            logger.error(
                "redis settings rejected, keeping the connection in force",
                extra={"reason": str(exc)},
            )
            return
        if not url.startswith(("redis://", "rediss://", "unix://")):
            logger.error(
                "redis url rejected: not redis://, rediss:// or unix://",
                extra={"file": str(self.url_file)},
            )
            return
        if self._connection == (url, password):
            return
        old = self._client
        self._client = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry_on_timeout=False,
        )
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._settle_script = self._client.register_script(_SETTLE)
        self._connection = (url, password)
        logger.info("redis connection settings loaded")
        if old is not None:
            asyncio.get_running_loop().create_task(old.aclose())

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}r:{key}", f"{self._prefix}t:{key}", f"{self._prefix}c:{key}"]

    def _unavailable(self, exc: BaseException) -> None:
        mode = "open" if self._fail_open else "closed"
        self._metrics.limiter_errors.labels(mode).inc()
        now = time.monotonic()
        if now - self._last_error_log > 5:  # one line per 5 s, not one per request
            self._last_error_log = now
            logger.error(
                "rate-limit backend unreachable, failing %s",
                mode,
                extra={"error": type(exc).__name__},
            )
        if not self._fail_open:
            raise LimiterUnavailable("rate limiting is unavailable; try again shortly") from None

    async def acquire(
        self, key: str, limits: rules.EffectiveLimits, tokens: int, member: str
    ) -> Reservation:
        rpm = limits.requests_per_minute or 0
        tpm = limits.tokens_per_minute or 0
        most = limits.max_concurrent or 0
        try:
            if self._acquire_script is None:
                raise redis.exceptions.ConnectionError("no redis settings loaded")
            result = await self._acquire_script(  # type: ignore[operator]
                keys=self._keys(key), args=[rpm, tpm, most, tokens, member, _LEASE_SECONDS]
            )
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            self._unavailable(exc)
            return Reservation(key, limits, 0, member, holds_slot=False, tracked=False)
        admitted, dimension, level, tokens_level, retry_after = (
            int(result[0]),
            _text(result[1]),
            float(result[2]),
            float(result[3]),
            float(result[4]),
        )
        if not admitted:
            self._metrics.rate_limited.labels(dimension).inc()
            raise rate_limited(dimension, limits, level, retry_after, tokens_level if tpm else None)
        return Reservation(
            key, limits, min(tokens, tpm) if tpm else 0, member, holds_slot=bool(most)
        )

    async def settle(self, reservation: Reservation, used_tokens: int | None) -> None:
        if not reservation.tracked:
            return
        tpm = reservation.limits.tokens_per_minute or 0
        refund = reservation.tokens - used_tokens if (tpm and used_tokens is not None) else 0
        if not refund and not reservation.holds_slot:
            return
        keys = self._keys(reservation.key)
        try:
            await self._settle_script(
                keys=[keys[1], keys[2]], args=[tpm, refund, reservation.member]
            )  # type: ignore[operator]
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            # The slot frees itself after its lease; the tokens settle as reserved.
            self._metrics.limiter_errors.labels("settle").inc()
            logger.warning(
                "could not settle a rate-limit reservation", extra={"error": type(exc).__name__}
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
