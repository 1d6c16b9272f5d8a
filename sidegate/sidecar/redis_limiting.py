"""Global rate limits through Redis: the same token buckets as ``limiting.LocalLimiter``,
kept in Redis and updated by Lua scripts, so each check-and-take is atomic across every
replica. Imported only when the config asks for Redis (redis-py costs ~15 MB of memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions

from sidegate import errors
from sidegate.redact import Secret
from sidegate.sidecar import credentials, limiting
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

# A concurrency slot whose holder vanished (a crashed replica) frees itself after this.
_LEASE_SECONDS = 900.0

# A request is charged to one or more budgets (limiting.budgets); all are checked before
# any is taken from, in one script, so a refusal by one leaves the others untouched.
# KEYS: per budget, its requests bucket, tokens bucket and concurrency set.
# ARGV: member, lease seconds, then per budget rpm, tpm, max concurrent, token cost
# (0 means no limit).
# Returns {admitted 0/1, dimension, requests level, tokens level, retry after, budget index}
# (as strings: Lua numbers would reach Python truncated to integers).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local member, lease = ARGV[1], tonumber(ARGV[2])
local n = #KEYS / 3
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local l, u = tonumber(v[1]), tonumber(v[2])
  if l == nil then return cap end
  return math.min(cap, l + math.max(0, now - u) * cap / 60)
end
local plan = {}
for i = 1, n do
  local k, a = (i - 1) * 3, 2 + (i - 1) * 4
  local rpm, tpm, most = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cost = tonumber(ARGV[a + 4])
  local rl, tl = 0, 0
  if rpm > 0 then rl = level(KEYS[k + 1], rpm) end
  if tpm > 0 then tl = level(KEYS[k + 2], tpm); cost = math.min(cost, tpm) else cost = 0 end
  if rpm > 0 and rl < 1 then
    return {0, 'requests', tostring(rl), tostring(tl), tostring((1 - rl) * 60 / rpm), tostring(i)}
  end
  if tpm > 0 and tl < cost then
    return {0, 'tokens', tostring(rl), tostring(tl), tostring((cost - tl) * 60 / tpm), tostring(i)}
  end
  if most > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now - lease)
    if redis.call('ZCARD', KEYS[k + 3]) >= most then
      return {0, 'concurrency', tostring(rl), tostring(tl), '1', tostring(i)}
    end
  end
  plan[i] = {rpm, tpm, most, cost, rl, tl}
end
local rl, tl = 0, 0
for i = 1, n do
  local k, p = (i - 1) * 3, plan[i]
  rl, tl = p[5], p[6]
  if p[3] > 0 then
    redis.call('ZADD', KEYS[k + 3], now, member)
    redis.call('EXPIRE', KEYS[k + 3], math.ceil(lease))
  end
  if p[1] > 0 then
    rl = rl - 1
    redis.call('HSET', KEYS[k + 1], 'l', tostring(rl), 't', tostring(now))
    redis.call('EXPIRE', KEYS[k + 1], 120)
  end
  if p[2] > 0 then
    tl = tl - p[4]
    redis.call('HSET', KEYS[k + 2], 'l', tostring(tl), 't', tostring(now))
    redis.call('EXPIRE', KEYS[k + 2], 120)
  end
end
return {1, '', tostring(rl), tostring(tl), '0', '0'}
"""

# KEYS: per budget, its tokens bucket and concurrency set.
# ARGV: member, then per budget tpm and refund (may be negative).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local member = ARGV[1]
for i = 1, #KEYS / 2 do
  local tokens, slots = KEYS[(i - 1) * 2 + 1], KEYS[(i - 1) * 2 + 2]
  local tpm, refund = tonumber(ARGV[i * 2]), tonumber(ARGV[i * 2 + 1])
  redis.call('ZREM', slots, member)
  if tpm > 0 and refund ~= 0 then
    local v = redis.call('HMGET', tokens, 'l', 't')
    local l, u = tonumber(v[1]), tonumber(v[2])
    if l ~= nil then
      l = math.min(tpm, l + math.max(0, now - u) * tpm / 60 + refund)
      redis.call('HSET', tokens, 'l', tostring(l), 't', tostring(now))
      redis.call('EXPIRE', tokens, 120)
    end
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

    @property
    def client(self) -> aioredis.Redis:
        """The connection in force, for the response owners (``redis_ownership``)."""
        if self._client is None:
            raise redis.exceptions.ConnectionError("no redis settings loaded")
        return self._client

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
            raise limiting.LimiterUnavailable(
                "rate limiting is unavailable; try again shortly"
            ) from None

    async def acquire(
        self, budgets: Sequence[limiting.Budget], tokens: int, member: str
    ) -> limiting.Reservation:
        keys: list[str] = []
        args: list[object] = [member, _LEASE_SECONDS]
        for budget in budgets:
            limits = budget.limits
            keys += self._keys(budget.key)
            args += [
                limits.requests_per_minute or 0,
                limits.tokens_per_minute or 0,
                limits.max_concurrent or 0,
                tokens,
            ]
        try:
            if self._acquire_script is None:
                raise redis.exceptions.ConnectionError("no redis settings loaded")
            result = await self._acquire_script(keys=keys, args=args)  # type: ignore[operator]
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            self._unavailable(exc)
            return limiting.Reservation(tuple(budgets), (0,) * len(budgets), member, tracked=False)
        admitted, dimension, level, tokens_level, retry_after, refusing = (
            int(result[0]),
            _text(result[1]),
            float(result[2]),
            float(result[3]),
            float(result[4]),
            int(_text(result[5])),
        )
        if not admitted:
            limits = budgets[refusing - 1].limits
            self._metrics.rate_limited.labels(dimension).inc()
            raise limiting.rate_limited(
                dimension,
                limits,
                level,
                retry_after,
                tokens_level if limits.tokens_per_minute else None,
            )
        costs = tuple(
            min(tokens, b.limits.tokens_per_minute) if b.limits.tokens_per_minute else 0
            for b in budgets
        )
        return limiting.Reservation(tuple(budgets), costs, member)

    async def settle(self, reservation: limiting.Reservation, used_tokens: int | None) -> None:
        if not reservation.tracked:
            return
        keys: list[str] = []
        args: list[object] = [reservation.member]
        work = False
        for budget, reserved in zip(reservation.budgets, reservation.tokens, strict=True):
            tpm = budget.limits.tokens_per_minute or 0
            refund = reserved - used_tokens if (tpm and used_tokens is not None) else 0
            work = work or bool(refund) or bool(budget.limits.max_concurrent)
            bucket_keys = self._keys(budget.key)
            keys += [bucket_keys[1], bucket_keys[2]]
            args += [tpm, refund]
        if not work:
            return
        try:
            await self._settle_script(keys=keys, args=args)  # type: ignore[operator]
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
