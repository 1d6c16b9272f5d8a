"""Global rate limits through Redis: the same token buckets as ``limiting.LocalLimiter``,
kept in Redis and updated by Lua scripts, so each check-and-take is atomic across every
replica. Imported only when the config asks for Redis (redis-py costs ~15 MB of memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions

from sidegate import errors
from sidegate.policy import rules
from sidegate.redact import Secret
from sidegate.sidecar import credentials
from sidegate.sidecar.limiting import LimiterUnavailable, Reservation, rate_limited
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

# A concurrency slot whose holder vanished (a crashed replica) frees itself after this.
_LEASE_SECONDS = 900.0

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
        url_file: Path | None,
        password_file: Path | None,
        timeout: float,
        key_prefix: str,
        fail_mode: str,
        metrics: Metrics,
    ) -> None:
        self.url_file = url_file
        self.password_file = password_file
        self.files = tuple(p for p in (url_file, password_file) if p is not None)
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
        assert self.url_file is not None  # only file-backed settings are reloaded
        try:
            url = credentials.read_key(self.url_file)
            password = credentials.read_key(self.password_file) if self.password_file else None
        except errors.CredentialRejected as exc:
            logger.error(
                "redis settings rejected, keeping the connection in force",
                extra={"reason": str(exc)},
            )
            return
        self.use(url, password)

    def use(self, url_secret: Secret, password_secret: Secret | None) -> None:
        """Connect with this URL and password (from the files, or delivered by the broker)."""
        url = url_secret.reveal()
        password = password_secret.reveal() if password_secret is not None else None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            logger.error("redis url rejected: not redis://, rediss:// or unix://")
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
